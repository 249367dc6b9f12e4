//! The demo plugin end to end: the first run computes, the second is served from the cache, and
//! what it serves is exactly what it computed.

mod common;

use common::*;

#[test]
fn demo_second_run_hits_and_outputs_are_identical() {
    let cache = TestCache::new();
    let out1 = cache.tmp.path().join("out1");
    let out2 = cache.tmp.path().join("out2");
    std::fs::create_dir(&out1).unwrap();
    std::fs::create_dir(&out2).unwrap();
    let assets = demo_assets_dir();
    let dir = |host: &std::path::Path, guest: &str| format!("{}::{guest}", host.display());
    // Quality 5 keeps the test quick; the README's demo uses 11.
    let run = |out: &std::path::Path| {
        let o = cache.run(
            brotli_assets_wasm(),
            &["--dir", &dir(assets, "/assets"), "--dir", &dir(out, "/out")],
            &["--quality", "5", "/assets", "/out"],
        );
        assert_success(&o, "brotli-assets");
        stdout(&o)
    };
    let first = run(&out1);
    let second = run(&out2);
    let misses = first.lines().filter(|l| l.starts_with("miss")).count();
    assert!(misses > 10, "first run:\n{first}");
    assert!(
        second.lines().filter(|l| l.starts_with("miss")).count() == 0,
        "second run:\n{second}"
    );
    let hits = second.lines().filter(|l| l.starts_with("hit")).count();
    assert_eq!(
        hits,
        first
            .lines()
            .filter(|l| l.starts_with("hit") || l.starts_with("miss"))
            .count()
    );

    // Every output is identical across runs and decompresses to its input.
    let mut checked = 0;
    for entry in files_under(assets) {
        let rel = entry.strip_prefix(assets).unwrap();
        let br = format!("{}.br", rel.display());
        let a = std::fs::read(out1.join(&br)).unwrap();
        let b = std::fs::read(out2.join(&br)).unwrap();
        assert_eq!(a, b, "{br} differs between the computed and the cached run");
        let mut plain = Vec::new();
        brotli_decompressor::BrotliDecompress(&mut &a[..], &mut plain).unwrap();
        assert_eq!(
            plain,
            std::fs::read(&entry).unwrap(),
            "{br} does not decompress to its input"
        );
        checked += 1;
    }
    assert!(checked > 10);
}
