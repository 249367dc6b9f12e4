//! End-to-end regression tests for the findings of the adversarial review (issue 11), each
//! named after its finding.

mod common;

use common::*;

fn namespace_counts(cache: &TestCache, namespace: &str) -> (u64, u64) {
    let out = cache.cli("stats", &["--json"]);
    assert_success(&out, "stats --json");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ns = json["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == namespace)
        .unwrap_or_else(|| panic!("no namespace {namespace} in {json}"));
    (ns["hits"].as_u64().unwrap(), ns["misses"].as_u64().unwrap())
}

/// Finding 2: a plugin's hits and misses are counted per namespace, exactly, and add up over
/// runs (before, only the compiled-code namespaces and remote events were).
#[test]
fn stats_show_exact_hits_and_misses_of_a_plugin_namespace() {
    let cache = TestCache::new();
    cache.contract(&["--namespace", "plugin"], &["gets", "s", "10", "5"]);
    assert_eq!(namespace_counts(&cache, "plugin"), (10, 5));
    cache.contract(&["--namespace", "plugin"], &["gets", "s", "10", "5"]);
    assert_eq!(namespace_counts(&cache, "plugin"), (20, 10), "runs add up");
    cache.contract(&["--namespace", "other"], &["gets", "o", "3", "1"]);
    assert_eq!(namespace_counts(&cache, "other"), (3, 1), "each namespace its own");
    assert_eq!(namespace_counts(&cache, "plugin"), (20, 10));
}
