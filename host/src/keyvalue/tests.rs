//! Unit tests of the parts that need no guest: opening buckets, errors, cursors.

use super::*;
use filecache_store::{FileCache, NamespaceOptions};

#[test]
fn open_answers_access_denied_for_anything_not_granted() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let own = Bucket::new(cache.namespace("own", NamespaceOptions::default()).unwrap());
    let other = Bucket::new(cache.namespace("other", NamespaceOptions::default()).unwrap());
    let ctx = KeyValueCtx::builder().bucket(own).grant("other", other).build();
    assert!(format!("{:?}", ctx.open("").unwrap()).contains("\"own\""));
    assert!(format!("{:?}", ctx.open("other").unwrap()).contains("\"other\""));
    for id in ["own", "default", "..", "a/b", ".compiled", "OTHER"] {
        assert!(matches!(ctx.open(id), Err(KeyValueError::AccessDenied)), "{id:?}");
    }
    let none = KeyValueCtx::builder().build();
    assert!(matches!(none.open(""), Err(KeyValueError::AccessDenied)));
}

#[test]
fn read_only_is_access_denied_and_the_rest_is_other_with_the_reason() {
    assert!(matches!(
        KeyValueError::from(kv::Error::Store(filecache_store::Error::ReadOnly)),
        KeyValueError::AccessDenied
    ));
    let e = KeyValueError::from(kv::Error::Store(filecache_store::Error::TooLarge { limit: 10 }));
    assert!(
        matches!(&e, KeyValueError::Other(m) if m.contains("maximum entry size is 10")),
        "{e:?}"
    );
    let e = KeyValueError::from(kv::Error::Store(filecache_store::Error::QuotaExceeded {
        needed: 5,
        quota: 4,
    }));
    assert!(matches!(&e, KeyValueError::Other(m) if m.contains("quota")), "{e:?}");
}

#[test]
fn draft2_cursors_round_trip_and_garbage_is_refused() {
    for n in [0, 1, 0xdead_beef, u64::MAX] {
        assert_eq!(work::parse_cursor(Some(work::format_cursor(n))).unwrap(), n);
    }
    assert_eq!(work::parse_cursor(None).unwrap(), 0);
    for bad in [
        "",
        "0",
        "zzzzzzzzzzzzzzzz",
        "DEADBEEFDEADBEEF",
        "+000000000000001",
        "00000000000000000",
    ] {
        assert!(
            matches!(work::parse_cursor(Some(bad.into())), Err(KeyValueError::Other(_))),
            "{bad:?}"
        );
    }
}
