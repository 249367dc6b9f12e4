//! End-to-end tests of `wasi:keyvalue` through `filecache run` and `filecache kv`: guests built
//! against the vendored WIT (both versions), several processes at once, kills.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use filecache_tests::{keyvalue_draft2_wasm, keyvalue_wasm};

fn kv(cache: &TestCache, args: &[&str]) -> String {
    let out = cache.cli("kv", args);
    assert_success(&out, &format!("kv {args:?}"));
    stdout(&out)
}

fn run_ok(cache: &TestCache, wasm: &std::path::Path, flags: &[&str], args: &[&str]) -> String {
    let out = cache.run(wasm, flags, args);
    assert_success(&out, &format!("{} {args:?} with {flags:?}", wasm.display()));
    stdout(&out)
}

#[test]
fn wasmtimes_own_test_program_runs_unchanged_and_its_data_persists() {
    let cache = TestCache::new();
    // wasmtime's test presets `atomics_key` to 5 in its in-memory store; here it is seeded.
    kv(&cache, &["set", "atomics_key", "5"]);
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &[], &["wasmtime-main"]),
        "ok wasmtime-main\n"
    );
    // The next run (another process) sees what this one left.
    assert_eq!(kv(&cache, &["get", "atomics_key"]), "6");
    let mut keys: Vec<String> = kv(&cache, &["list"]).lines().map(String::from).collect();
    keys.sort();
    assert_eq!(keys, ["atomics_key", "b1"]);
    assert_eq!(run_ok(&cache, keyvalue_wasm(), &[], &["get", "b1"]), "value v1\n");
    // The same program run a second time fails its own assertion (7, not 6): nothing was reset.
    let again = cache.run(keyvalue_wasm(), &[], &["wasmtime-main"]);
    assert!(!again.status.success());
    assert_eq!(kv(&cache, &["get", "atomics_key"]), "7");
}

#[test]
fn draft2_guest_and_both_versions_share_one_bucket() {
    let cache = TestCache::new();
    assert_eq!(run_ok(&cache, keyvalue_draft2_wasm(), &[], &["basics"]), "ok basics\n");
    assert_eq!(run_ok(&cache, keyvalue_wasm(), &[], &["get", "c"]), "value 3\n");
    assert_eq!(run_ok(&cache, keyvalue_wasm(), &[], &["get", "n"]), "value 2\n");
    run_ok(&cache, keyvalue_wasm(), &[], &["set", "from-draft", "x"]);
    assert_eq!(
        run_ok(&cache, keyvalue_draft2_wasm(), &[], &["get", "from-draft"]),
        "value x\n"
    );
    // Namespaces are separate buckets.
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &["--namespace", "other"], &["get", "c"]),
        "none\n"
    );
}

#[test]
fn four_processes_incrementing_250_times_each_make_exactly_1000() {
    let cache = TestCache::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            filecache()
                .args(["run", "--cache-dir"])
                .arg(cache.dir())
                .arg(keyvalue_wasm())
                .args(["increment", "together", "1", "250"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_success(&out, "increment");
    }
    assert_eq!(kv(&cache, &["get", "together"]), "1000");
}

#[test]
fn four_processes_doing_cas_loops_are_exact() {
    let cache = TestCache::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            filecache()
                .args(["run", "--cache-dir"])
                .arg(cache.dir())
                .arg(keyvalue_draft2_wasm())
                .args(["cas-loop", "n", "100"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut retries = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_success(&out, "cas-loop");
        retries += stdout(&out)
            .trim()
            .strip_prefix("retries ")
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    eprintln!("{retries} swaps failed and were retried");
    assert_eq!(kv(&cache, &["get", "n"]), "400");
}

#[test]
fn list_keys_pages_2500_keys_in_both_versions() {
    let cache = TestCache::new();
    run_ok(&cache, keyvalue_wasm(), &[], &["fill", "key-", "2500"]);
    let out = cache.run(keyvalue_wasm(), &[], &["list"]);
    assert_success(&out, "list");
    assert!(stderr(&out).contains("3 pages"), "{}", stderr(&out));
    let mut listed: Vec<String> = stdout(&out).lines().map(String::from).collect();
    let in_order = listed.clone();
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), 2500);
    let mut expected: Vec<String> = (0..2500).map(|i| format!("key-{i}")).collect();
    expected.sort();
    assert_eq!(listed, expected);
    // The draft2 guest (string cursors) and the shell list the same keys in the same order.
    let draft2: Vec<String> = run_ok(&cache, keyvalue_draft2_wasm(), &[], &["list"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(draft2, in_order);
    let shell: Vec<String> = kv(&cache, &["list"]).lines().map(String::from).collect();
    assert_eq!(shell, in_order);
}

#[test]
fn odd_keys_round_trip_and_name_no_file() {
    let cache = TestCache::new();
    assert_eq!(run_ok(&cache, keyvalue_wasm(), &[], &["odd-keys"]), "ok odd-keys\n");
    let escaped = kv(&cache, &["list", "--escape"]);
    assert_eq!(escaped.lines().count(), 10, "{escaped}");
    assert!(escaped.lines().any(|l| l == r#""nul\0inside""#), "{escaped}");
    assert!(escaped.lines().any(|l| l == r#""""#), "{escaped}");
    for f in files_under(&cache.dir().join("default")) {
        let rel = f
            .strip_prefix(cache.dir().join("default"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            [
                "state",
                "counters",
                "data-bytes",
                "kv.sqlite3",
                "kv.sqlite3-wal",
                "kv.sqlite3-shm"
            ]
            .contains(&rel.as_str()),
            "unexpected file {rel}"
        );
    }
    assert!(!cache.tmp.path().join("etc").exists());
}

#[test]
fn limits_read_only_and_denied_buckets() {
    let cache = TestCache::new();
    let limits = ["--max-entry-size", "1KiB", "--quota", "3KiB"];
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &limits, &["set-size", "a", "1024"]),
        "ok\n"
    );
    let over = run_ok(&cache, keyvalue_wasm(), &limits, &["set-size", "b", "1025"]);
    assert!(over.starts_with("error other: entry too large"), "{over}");
    assert_eq!(run_ok(&cache, keyvalue_wasm(), &limits, &["get", "b"]), "none\n");
    for k in ["c", "d"] {
        assert_eq!(
            run_ok(&cache, keyvalue_wasm(), &limits, &["set-size", k, "1000"]),
            "ok\n"
        );
    }
    let full = run_ok(&cache, keyvalue_wasm(), &limits, &["set-size", "e", "1000"]);
    assert!(full.starts_with("error other: quota exceeded"), "{full}");
    assert_eq!(run_ok(&cache, keyvalue_wasm(), &limits, &["get", "e"]), "none\n");

    let ro = ["--read-only"];
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &ro, &["set", "a", "x"]),
        "error access-denied\n"
    );
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &ro, &["delete", "a"]),
        "error access-denied\n"
    );
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &ro, &["increment", "n", "1", "1"]),
        "error access-denied\n"
    );
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &ro, &["get", "c"]).len(),
        "value \n".len() + 1000
    );

    // Buckets other than the run's own: only those granted.
    for id in ["other", "default", "..", "a/b", ".compiled"] {
        assert_eq!(
            run_ok(&cache, keyvalue_wasm(), &[], &["open", id]),
            "error access-denied\n",
            "{id}"
        );
    }
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &["--bucket", "other"], &["open", "other"]),
        "ok\n"
    );
    let shared = ["--bucket", "shared", "--env", "IDENTIFIER=shared"];
    assert_eq!(
        run_ok(&cache, keyvalue_wasm(), &shared, &["set", "k", "in shared"]),
        "ok\n"
    );
    assert_eq!(kv(&cache, &["get", "--namespace", "shared", "k"]), "in shared");
    assert_eq!(run_ok(&cache, keyvalue_wasm(), &[], &["get", "k"]), "none\n");
    let bad = cache.run(keyvalue_wasm(), &["--bucket", "../x"], &["open", "../x"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("invalid --bucket"), "{}", stderr(&bad));
}

#[test]
fn kill_during_set_many_leaves_the_whole_batch_old_or_new_and_listing_consistent() {
    let cache = TestCache::new();
    const N: &str = "3000";
    run_ok(&cache, keyvalue_wasm(), &[], &["set-many", "p", N, "old"]);
    let mut seen = std::collections::BTreeSet::new();
    let mut round = 0u64;
    // Eight rounds; more (at most 14) while every kill came before the batch committed.
    while round < 8 || (seen.len() < 2 && round < 14) {
        let mut child = filecache()
            .args(["run", "--cache-dir"])
            .arg(cache.dir())
            .arg(keyvalue_wasm())
            .args(["set-many", "p", N, &format!("new{round}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first, "started\n");
        // 5 to 145 ms; then, where the batch takes longer than that (a loaded machine: every
        // kill came before the commit), twice as long each round, up to 9.3 s.
        let delay = if round < 8 { 5 + 20 * round } else { 145 << (round - 7) };
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The guest checks that list-keys and get agree on every key.
        let out = run_ok(&cache, keyvalue_wasm(), &[], &["check-many", "p", N]);
        // A batch is one transaction: every key holds the same value, old or new.
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "round {round}: a torn batch\n{out}");
        let (value, count) = lines[0].rsplit_once(' ').unwrap();
        assert!(value == "old" || value.starts_with("new"), "round {round}: {value:?}");
        assert_eq!(count, N, "round {round}: keys missing\n{out}");
        seen.insert(value.to_string());
        let verify = cache.cli("verify", &[]);
        assert_success(&verify, "verify");
        assert!(stdout(&verify).contains(" 0 corrupt"), "{}", stdout(&verify));
        round += 1;
    }
    // Some kills came before a batch committed and some after: the kills landed at different
    // points (else the test proved nothing).
    assert!(
        seen.len() > 1,
        "every kill of {round} rounds left the same value: {seen:?}"
    );
}

#[test]
fn stats_verify_gc_and_clear_cover_keyvalue_data() {
    let cache = TestCache::new();
    kv(&cache, &["set", "a", "1"]);
    let value = cache.tmp.path().join("value");
    std::fs::write(&value, vec![7u8; 5000]).unwrap();
    kv(&cache, &["set", "big", "--file", value.to_str().unwrap()]);
    assert_eq!(kv(&cache, &["get", "big"]).len(), 5000);
    let ns = cache.namespace_stats("default");
    assert_eq!(ns["kv_keys"], 2);
    assert_eq!(ns["kv_bytes"], 1 + 1 + 3 + 5000);
    // gc counts key-value data but never removes it.
    assert_success(&cache.cli("gc", &["--max-size", "0"]), "gc");
    assert_eq!(kv(&cache, &["get", "a"]), "1");
    // verify reads every row; a damaged one is removed and reported.
    let db = rusqlite::Connection::open(cache.dir().join("default/kv.sqlite3")).unwrap();
    db.execute(
        "UPDATE kv SET value = zeroblob(5000) WHERE key = CAST('big' AS BLOB)",
        [],
    )
    .unwrap();
    drop(db);
    let verify = stdout(&cache.cli("verify", &[]));
    assert!(verify.contains("default/kv:\"big\""), "{verify}");
    assert!(verify.contains("1 corrupt"), "{verify}");
    let gone = cache.cli("kv", &["get", "big"]);
    assert!(!gone.status.success());
    // Issue 26: clear removes cache entries only, and says what it kept.
    let cleared = stdout(&cache.cli("clear", &["--namespace", "default"]));
    assert!(cleared.contains("removed 0 cache entries"), "{cleared}");
    assert!(
        cleared.contains("kept key-value data: 1 key in 1 namespace"),
        "{cleared}"
    );
    let cleared = stdout(&cache.cli("clear", &[]));
    assert!(cleared.contains("kept key-value data"), "{cleared}");
    assert_eq!(kv(&cache, &["get", "a"]), "1");
    // With --include-kv, the bucket goes too, said separately.
    let cleared = stdout(&cache.cli("clear", &["--include-kv", "--namespace", "default"]));
    assert!(
        cleared.contains("removed 0 cache entries from namespace default"),
        "{cleared}"
    );
    assert!(
        cleared.contains("removed the key-value bucket of namespace default (1 key)"),
        "{cleared}"
    );
    assert_eq!(kv(&cache, &["list"]), "");
    let ns = cache.namespace_stats("default");
    assert_eq!((ns["kv_keys"].as_u64(), ns["kv_bytes"].as_u64()), (Some(0), Some(0)));
    // Values from stdin.
    let mut child = filecache()
        .args(["kv", "--cache-dir"])
        .arg(cache.dir())
        .args(["set", "piped"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from stdin").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(kv(&cache, &["get", "piped"]), "from stdin");
}

#[test]
fn keyvalue_with_an_unreachable_remote_fails_and_never_falls_back_to_a_local_bucket() {
    // With --remote, buckets live in Redis (tests/kv_fleet.rs): one that cannot be reached is an
    // error of each call, never a local copy.
    let cache = TestCache::new();
    let out = cache.run(
        keyvalue_wasm(),
        &["--remote", "redis://127.0.0.1:9"],
        &["set", "k", "v"],
    );
    assert_success(&out, "set with an unreachable remote");
    assert!(
        stdout(&out).starts_with("error other: ") && stdout(&out).contains("127.0.0.1:9"),
        "{}",
        stdout(&out)
    );
    assert!(!cache.dir().join("default/kv.sqlite3").exists());
}
