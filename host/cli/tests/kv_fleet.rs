//! `wasi:keyvalue` buckets shared by a fleet through Redis (`run --remote`, `kv --remote`),
//! against a real `redis-server` on a free loopback port: hosts are processes with cache
//! directories of their own, sharing nothing but the server.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::serve::Server;
use common::*;
use filecache_host::kv::RedisEngine;
use filecache_tests::{http_keyvalue_wasm, keyvalue_draft2_wasm, keyvalue_wasm};

/// A fleet: the server and the fleet key file.
struct Fleet {
    redis: RedisServer,
    key_file: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let key_file = tmp.path().join("fleet.key");
        std::fs::write(&key_file, [42u8; 32]).unwrap();
        Fleet {
            redis: RedisServer::start(),
            key_file,
            _tmp: tmp,
        }
    }

    /// `--remote URL --remote-key-file FILE --remote-timeout 5s`: a call to the live server gets
    /// 5 s rather than the default 500 ms, so that a pause of a loaded machine is not a failed
    /// call; the tests of deadlines give their own.
    fn flags(&self) -> Vec<String> {
        vec![
            "--remote".into(),
            self.redis.url(),
            "--remote-key-file".into(),
            self.key_file.display().to_string(),
            "--remote-timeout".into(),
            "5s".into(),
        ]
    }

    /// `filecache run` of `wasm` on `host` with the fleet's flags and `extra`, not waited for.
    fn spawn(&self, host: &TestCache, wasm: &std::path::Path, extra: &[&str], args: &[&str]) -> Child {
        filecache()
            .arg("run")
            .arg("--cache-dir")
            .arg(host.dir())
            .args(self.flags())
            .args(extra)
            .arg(wasm)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn run(&self, host: &TestCache, wasm: &std::path::Path, extra: &[&str], args: &[&str]) -> String {
        let out = self.spawn(host, wasm, extra, args).wait_with_output().unwrap();
        assert_success(&out, &format!("{} {args:?}", wasm.display()));
        stdout(&out)
    }

    /// `filecache kv --remote … ARGS` on `host`.
    fn kv(&self, host: &TestCache, args: &[&str]) -> std::process::Output {
        let flags = self.flags();
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        host.cli("kv", &all)
    }
}

/// No key-value database was made in `host`'s cache directory: the buckets are not copied.
fn assert_no_local_bucket(host: &TestCache) {
    let local: Vec<_> = files_under(&host.dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("kv.sqlite3"))
        .collect();
    assert!(local.is_empty(), "a local copy of a bucket: {local:?}");
}

#[test]
fn four_processes_on_two_hosts_increment_one_counter_to_exactly_1000_and_a_third_host_reads_it() {
    let fleet = Fleet::start();
    let hosts = [TestCache::new(), TestCache::new()];
    let children: Vec<Child> = (0..4)
        .map(|i| {
            fleet.spawn(
                &hosts[i % 2],
                keyvalue_wasm(),
                &[],
                &["increment", "together", "1", "250"],
            )
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_success(&out, "increment");
        assert!(stdout(&out).starts_with("value "), "{}", stdout(&out));
    }
    let third = TestCache::new();
    let out = fleet.kv(&third, &["get", "together"]);
    assert_success(&out, "kv get");
    assert_eq!(stdout(&out), "1000");
    assert_eq!(
        fleet.run(&third, keyvalue_wasm(), &[], &["get", "together"]),
        "value 1000\n"
    );
    for host in hosts.iter().chain([&third]) {
        assert_no_local_bucket(host);
    }
    // Without --remote, the same host has its own (empty) local bucket.
    let out = third.run(keyvalue_wasm(), &[], &["get", "together"]);
    assert_success(&out, "local get");
    assert_eq!(stdout(&out), "none\n");
}

#[test]
fn cas_loops_from_two_hosts_are_exact_and_kv_writes_what_guests_read() {
    let fleet = Fleet::start();
    let hosts = [TestCache::new(), TestCache::new()];
    let children: Vec<Child> = (0..4)
        .map(|i| fleet.spawn(&hosts[i % 2], keyvalue_draft2_wasm(), &[], &["cas-loop", "n", "100"]))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_success(&out, "cas-loop");
    }
    let out = fleet.kv(&hosts[0], &["get", "n"]);
    assert_success(&out, "kv get");
    assert_eq!(stdout(&out), "400");
    // `kv --remote set` writes the shared bucket of the namespace given, as guests see it.
    assert_success(
        &fleet.kv(&hosts[1], &["--namespace", "other", "set", "greeting", "hello"]),
        "kv set",
    );
    assert_eq!(
        fleet.run(
            &hosts[0],
            keyvalue_wasm(),
            &["--namespace", "other"],
            &["get", "greeting"]
        ),
        "value hello\n"
    );
    assert_eq!(
        stdout(&fleet.kv(&hosts[0], &["--namespace", "other", "list"])),
        "greeting\n"
    );
    assert_no_local_bucket(&hosts[0]);
}

#[test]
fn a_value_forged_into_redis_without_the_fleet_key_is_not_served() {
    let fleet = Fleet::start();
    let host = TestCache::new();
    assert_success(&fleet.kv(&host, &["set", "genuine", "yes"]), "kv set");
    // A host without the key writes a well-framed value; a raw one is planted with redis-cli.
    let out = host.cli("kv", &["--remote", &fleet.redis.url(), "set", "forged", "planted"]);
    assert_success(&out, "kv set without the key");
    let raw = String::from_utf8(RedisEngine::redis_key("default", "raw")).unwrap();
    fleet.redis.cli(&["SET", &raw, "planted"]);
    for key in ["forged", "raw"] {
        let got = fleet.run(&host, keyvalue_wasm(), &[], &["get", key]);
        assert!(
            got.starts_with("error other: ") && got.contains("refused"),
            "{key}: {got}"
        );
        assert!(!got.contains("planted"), "{got}");
        let out = fleet.kv(&host, &["get", key]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    }
    assert_eq!(
        fleet.run(&host, keyvalue_wasm(), &[], &["get", "genuine"]),
        "value yes\n"
    );
}

#[test]
fn the_quota_holds_across_hosts() {
    let fleet = Fleet::start();
    let (a, b) = (TestCache::new(), TestCache::new());
    let quota = ["--quota", "4096"];
    assert_eq!(
        fleet.run(&a, keyvalue_wasm(), &quota, &["set-size", "a", "3000"]),
        "ok\n"
    );
    // 3000 bytes and their key and frame are charged on the server: another host cannot add 3000.
    let refused = fleet.run(&b, keyvalue_wasm(), &quota, &["set-size", "b", "3000"]);
    assert!(refused.starts_with("error other: quota exceeded"), "{refused}");
    assert_eq!(
        fleet.run(&b, keyvalue_wasm(), &quota, &["set-size", "b", "900"]),
        "ok\n"
    );
    assert_eq!(
        fleet.run(&a, keyvalue_wasm(), &quota, &["get", "b"]).len(),
        "value \n".len() + 900
    );
    // The value limit is the host's --max-entry-size.
    let big = fleet.run(
        &a,
        keyvalue_wasm(),
        &["--max-entry-size", "100"],
        &["set-size", "c", "101"],
    );
    assert!(big.starts_with("error other: "), "{big}");
}

#[test]
fn with_redis_dead_or_stalled_calls_fail_on_time_and_the_run_ends_cleanly() {
    let mut fleet = Fleet::start();
    let host = TestCache::new();
    assert_eq!(
        fleet.run(&host, keyvalue_wasm(), &[], &["increment", "n", "1", "3"]),
        "value 3\n"
    );
    fleet.redis.kill();
    let start = Instant::now();
    let out = fleet.spawn(&host, keyvalue_wasm(), &[], &["increment", "n", "1", "3"]);
    let out = out.wait_with_output().unwrap();
    assert_success(&out, "increment with Redis dead");
    let got = stdout(&out);
    assert!(got.starts_with("error other: ") && got.contains("Redis"), "{got}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    let log = stderr(&out);
    assert!(
        log.contains("key-value call failed; the guest got `other`") && !log.contains("carries on"),
        "{log}"
    );
    assert_no_local_bucket(&host);

    // A server that accepts connections and never answers: the compiled-code lookups and the
    // call each fail at the operation's deadline (500 ms) or at once once the breaker opens.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let start = Instant::now();
    let out = host.run(keyvalue_wasm(), &["--remote", &url], &["get", "n"]);
    assert_success(&out, "get with Redis stalled");
    assert!(stdout(&out).starts_with("error other: "), "{}", stdout(&out));
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
}

#[test]
fn stats_remote_lists_the_fleets_buckets_with_keys_and_bytes() {
    let fleet = Fleet::start();
    let (a, b) = (TestCache::new(), TestCache::new());
    assert_eq!(
        fleet.run(&a, keyvalue_wasm(), &[], &["increment", "visits", "1", "3"]),
        "value 3\n"
    );
    assert_success(
        &fleet.kv(&b, &["--namespace", "other", "set", "greeting", "hello"]),
        "kv set",
    );
    // Host b never ran the default namespace's plugin: the fleet's buckets are listed all the same.
    std::fs::create_dir_all(b.dir()).unwrap();
    let url = fleet.redis.url();
    let out = b.cli("stats", &["--json", "--remote", &url, "--remote-timeout", "2s"]);
    assert_success(&out, "stats --json --remote");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let buckets = json["remote"]["buckets"].as_array().unwrap();
    let names: Vec<&str> = buckets.iter().map(|b| b["namespace"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "other"], "{json}");
    assert_eq!(buckets[0]["keys"], 1);
    assert_eq!(buckets[1]["keys"], 1);
    // Bytes are what the quota is charged: the key and the framed value (32-byte MAC included).
    let greeting = buckets[1]["bytes"].as_u64().unwrap();
    assert!(greeting > ("greeting".len() + "hello".len() + 32) as u64, "{json}");
    assert_eq!(json["remote"]["server"], url.as_str());

    let out = b.cli("stats", &["--remote", &url]);
    assert_success(&out, "stats --remote");
    let table = stdout(&out);
    assert!(table.contains("key-value buckets in Redis"), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("other "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(line.split_whitespace().nth(1), Some("1"), "{table}");
    // Without --remote, nothing of Redis.
    assert!(!stdout(&b.cli("stats", &[])).contains("Redis"));

    // A server that cannot be reached fails the command, naming it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled = format!("redis://{}", listener.local_addr().unwrap());
    let out = b.cli("stats", &["--remote", &stalled, "--remote-timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot list the key-value buckets") && err.contains("(200 ms"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn remote_timeout_is_how_long_a_stalled_server_may_take_in_run_and_kv() {
    // A server that accepts connections (the kernel's backlog) and never answers. Without a fleet
    // key nothing else of the run reaches it (compiled code is not shared): the one key-value
    // call fails at the deadline given, 1500 ms, not at the default 500 ms.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let host = TestCache::new();
    let timeout = ["--remote", url.as_str(), "--remote-timeout", "1500ms"];
    let start = Instant::now();
    let out = host.run(keyvalue_wasm(), &timeout, &["get", "n"]);
    let took = start.elapsed();
    assert_success(&out, "get with Redis stalled");
    let got = stdout(&out);
    assert!(got.starts_with("error other: ") && got.contains("(1500 ms"), "{got}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "{took:?}"
    );
    // The one failed call is logged once, as what it is: no cache-tier "carries on" line.
    let log = stderr(&out);
    assert_eq!(
        log.matches("key-value call failed; the guest got `other` (no local fallback)")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("(1500 ms") && !log.contains("carries on"), "{log}");

    let start = Instant::now();
    let out = host.cli("kv", &[&timeout[..], &["get", "n"]].concat());
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The error, once, and no cache-tier line: `kv` has no local tier to carry on with.
    let err = stderr(&out);
    assert!(err.contains("(1500 ms") && !err.contains("carries on"), "{err}");
    assert_eq!(err.matches("no complete answer").count(), 1, "{err}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );

    // A zero timeout, or one without --remote, is refused before anything is tried.
    for (flags, expect) in [
        (
            &["--remote", url.as_str(), "--remote-timeout", "0"][..],
            "a timeout of 0",
        ),
        (&["--remote", url.as_str(), "--remote-timeout", "0ms"], "a timeout of 0"),
        (
            &["--remote", url.as_str(), "--remote-timeout", "soon"],
            "not a duration",
        ),
        (&["--remote-timeout", "2s"], "--remote"),
    ] {
        let out = host.cli("kv", &[flags, &["get", "n"]].concat());
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert!(stderr(&out).contains(expect), "{flags:?}: {}", stderr(&out));
    }
    drop(listener);
}

#[test]
fn two_serve_hosts_behind_a_balancer_share_one_counter() {
    let fleet = Fleet::start();
    let hosts = [TestCache::new(), TestCache::new()];
    let flags = fleet.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let servers: Vec<Server> = hosts
        .iter()
        .map(|h| Server::start(&h.dir(), http_keyvalue_wasm(), &flags))
        .collect();
    for i in 0..20 {
        let response = servers[i % 2].post("/kv/incr/visits", b"");
        assert_eq!(response.status, 200, "{response:?}");
    }
    let out = fleet.kv(&hosts[0], &["get", "visits"]);
    assert_success(&out, "kv get");
    assert_eq!(stdout(&out), "20");
    let response = servers[1].post("/kv/incr/visits", b"");
    assert!(response.text().contains("21"), "{response:?}");
    for host in &hosts {
        assert_no_local_bucket(host);
    }
}
