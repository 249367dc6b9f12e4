//! The compiled-component cache end to end: the real CLI compiling real components once,
//! loading them afterwards, and surviving damage, read-only filesystems and concurrent runs.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// `(entries, hits, misses, rejected)` of the `.compiled` namespace.
fn compiled_counts(cache: &TestCache) -> (u64, u64, u64, u64) {
    let json = cache.stats_json();
    let ns = json["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == ".compiled")
        .cloned()
        .unwrap_or_default();
    let n = |f: &str| ns[f].as_u64().unwrap_or(0);
    (n("entries"), n("hits"), n("misses"), n("rejected"))
}

#[test]
fn runs_compile_once_and_compile_warms_ahead() {
    let cache = TestCache::new();
    // A fresh cache directory: compiled in memory, stored once the run could start.
    cache.contract(&[], &["absent", "x"]);
    assert_eq!(compiled_counts(&cache), (1, 0, 1, 0));
    cache.contract(&[], &["absent", "x"]);
    cache.contract(&["--namespace", "other"], &["absent", "x"]);
    assert_eq!(compiled_counts(&cache), (1, 2, 1, 0));
    // Not using the cache touches nothing of it.
    cache.contract(&["--no-compile-cache"], &["absent", "x"]);
    assert_eq!(compiled_counts(&cache), (1, 2, 1, 0));

    // `compile` warms the cache for `run`: the same engine configuration, so the same key.
    let out = cache.cli("compile", &[hostile_wasm().to_str().unwrap()]);
    assert_success(&out, "compile");
    assert!(stdout(&out).contains("compiled component"), "{}", stdout(&out));
    let out = cache.cli("compile", &[hostile_wasm().to_str().unwrap()]);
    assert!(stdout(&out).contains("already compiled"), "{}", stdout(&out));
    assert_eq!(compiled_counts(&cache), (2, 3, 2, 0));
    let out = cache.run(hostile_wasm(), &[], &["miss-loop", "10"]);
    assert_success(&out, "hostile miss-loop");
    assert_eq!(compiled_counts(&cache), (2, 4, 2, 0));

    // Core modules compile too (they cannot be run, but an embedder may load them).
    let core = cache.tmp.path().join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module (func (export \"f\")))").unwrap()).unwrap();
    let out = cache.cli("compile", &[core.to_str().unwrap()]);
    assert!(stdout(&out).contains("compiled module"), "{}", stdout(&out));
    let out = cache.cli("compile", &[cache.tmp.path().join("nope.wasm").to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("cannot read component"));

    let text = stdout(&cache.cli("stats", &[]));
    assert!(
        text.contains("compiled code: 3 artifacts") && text.contains("4 loads from the cache, 3 compiles"),
        "{text}"
    );
    // --incremental works on a warm cache, and on a cold one.
    cache.contract(&["--incremental"], &["absent", "x"]);
    let cold = TestCache::new();
    cold.contract(&["--incremental"], &["absent", "x"]);
    assert!(cold.dir().join(".incremental").is_dir());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A way to damage a file's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

/// Every file the compiled cache keeps (artifact, remembered digest, their namespaces' state
/// and counters, the secret), flipped or truncated, one at a time: the next run still passes;
/// a damaged artifact, or a damaged secret (under which no artifact authenticates), is rejected
/// (a warning says so, or the store found the entry damaged) and the component compiled afresh,
/// and damage to any other file recompiles nothing.
#[test]
fn every_file_of_the_compiled_cache_damaged_the_next_run_is_still_right() {
    let pristine = TestCache::new();
    pristine.contract(&[], &["absent", "x"]);
    pristine.contract(&[], &["absent", "x"]); // remembers the component's digest
    let root = pristine.dir();
    let mut files: Vec<PathBuf> = files_under(&root.join(".compiled"));
    files.extend(files_under(&root.join(".compiled-digests")));
    files.push(root.join("compiled.key"));
    let artifacts = files
        .iter()
        .filter(|p| p.parent().unwrap().file_name().unwrap().len() == 2)
        .count();
    assert_eq!(artifacts, 2, "one artifact and one remembered digest: {files:?}");
    let artifact = files
        .iter()
        .find(|p| p.starts_with(root.join(".compiled")) && p.parent().unwrap().file_name().unwrap().len() == 2)
        .unwrap()
        .strip_prefix(&root)
        .unwrap()
        .to_path_buf();

    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let len = std::fs::metadata(file).unwrap().len() as usize;
        let damages: [(&str, Damage); 3] = [
            ("flip first byte", Box::new(|b| b[0] ^= 0x01)),
            ("flip middle byte", Box::new(move |b| b[len / 2] ^= 0x80)),
            ("truncate to half", Box::new(move |b| b.truncate(len / 2))),
        ];
        for (what, damage) in &damages {
            let cache = TestCache::new();
            copy_dir(&root, &cache.dir());
            let target = cache.dir().join(rel);
            let mut bytes = std::fs::read(&target).unwrap();
            if bytes.is_empty() {
                continue;
            }
            damage(&mut bytes);
            std::fs::write(&target, &bytes).unwrap();
            let before = std::fs::read(cache.dir().join(&artifact)).unwrap();
            let out = cache.run(contract_wasm(), &[], &["absent", "x"]);
            assert_success(&out, &format!("run after {what} of {}", rel.display()));
            assert!(stdout(&out).contains("ok absent"));
            // Compiled afresh: the artifact file holds other bytes (a damaged one is replaced by
            // a whole one, one under a damaged secret by one under the new secret).
            let (is_artifact, is_secret) = (rel == artifact, rel == Path::new("compiled.key"));
            let recompiled = std::fs::read(cache.dir().join(&artifact)).unwrap() != before;
            assert_eq!(
                recompiled,
                is_artifact || is_secret,
                "recompiled after {what} of {}: {}",
                rel.display(),
                stderr(&out)
            );
            // Rejected by its authentication (a truncated artifact is refused by the store first,
            // as a damaged entry, which the recompile shows).
            // (Said once, by the store removing the entry with its reason.)
            let rejected = warnings(&out)
                .iter()
                .any(|w| w.contains("not authenticated by this cache's secret"));
            let truncated_artifact = is_artifact && *what == "truncate to half";
            assert_eq!(
                rejected,
                is_secret || (is_artifact && !truncated_artifact),
                "rejection after {what} of {}: {}",
                rel.display(),
                stderr(&out)
            );
            // And the run after that is a hit again (the cache repaired itself).
            let (entries, hits_before, ..) = compiled_counts(&cache);
            assert_eq!(entries, 1, "after {what} of {}", rel.display());
            cache.contract(&[], &["absent", "x"]);
            assert_eq!(
                compiled_counts(&cache).1,
                hits_before + 1,
                "after {what} of {}",
                rel.display()
            );
        }
    }
}

fn warnings(out: &std::process::Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(String::from)
        .collect()
}

#[test]
fn a_read_only_cache_directory_still_runs_with_one_warning() {
    // Populated while writable, then read-only: compiled code is still loaded from it.
    let cache = TestCache::new();
    let mount = Tmpfs::mount(&cache.dir(), "64m").expect("this test mounts a tmpfs (it runs as root in CI)");
    cache.contract(&[], &["put", "kept", "1000"]);
    mount.remount_read_only();
    let out = cache.contract(&[], &["read-only-check", "kept", "1000"]);
    assert_eq!(warnings(&out).len(), 1, "{}", stderr(&out));
    assert!(warnings(&out)[0].contains("cannot be written"), "{}", stderr(&out));
    assert_eq!(compiled_counts(&cache).0, 1);

    // Empty and read-only: no secret can be made, so everything is compiled in memory.
    let empty = TestCache::new();
    let mount = Tmpfs::mount(&empty.dir(), "64m").expect("this test mounts a tmpfs (it runs as root in CI)");
    mount.remount_read_only();
    let out = empty.contract(&[], &["read-only"]);
    assert_eq!(warnings(&out).len(), 1, "{}", stderr(&out));
    let out = empty.contract(&["--read-only"], &["read-only"]);
    assert_eq!(warnings(&out).len(), 1, "{}", stderr(&out));
    drop(mount);
}

/// Three processes compile one component at once and all publish it: each succeeds without a
/// warning, one artifact is stored, and it verifies. The overlap is forced and then checked: the
/// test holds the `.compiled` namespace's lock (its `flock` on `state`), so no process can publish
/// until it lets go; it lets go only once all three have compiled and hold a temporary file of the
/// artifact at the same instant, each waiting to rename it into place. So every process compiled
/// before any published (three misses, no hit), however late the machine's load lets one start.
#[test]
fn processes_compiling_the_same_component_at_once_all_succeed() {
    use filecache_host::{FileCache, NamespaceOptions};
    let cache = TestCache::new();
    let compiled = cache.dir().join(".compiled");
    FileCache::open(cache.dir())
        .unwrap()
        .reserved_namespace(".compiled", NamespaceOptions::default())
        .unwrap();
    // A namespace gets its `state` with its first write: made here, as a writer would.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(compiled.join("state"))
        .unwrap();
    lock.lock().unwrap();
    let mut children: Vec<_> = (0..3)
        .map(|i| {
            filecache()
                .arg("run")
                .arg("--cache-dir")
                .arg(cache.dir())
                .args(["--namespace", &format!("p{i}")])
                .arg(contract_wasm())
                .arg("basics")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Waiting for the three: at most 20 s after the first has its temporary file (a process
    // waits 30 s for the lock before it gives up storing), at most 5 minutes in all.
    let start = std::time::Instant::now();
    let mut first_waiting = None;
    let mut most_at_once = 0;
    while most_at_once < 3 {
        let waiting = std::fs::read_dir(compiled.join("tmp")).map(|d| d.count()).unwrap_or(0);
        most_at_once = most_at_once.max(waiting);
        if waiting > 0 && first_waiting.is_none() {
            first_waiting = Some(std::time::Instant::now());
        }
        let ended = children.iter_mut().any(|c| c.try_wait().unwrap().is_some());
        let late = first_waiting.is_some_and(|t| t.elapsed() > std::time::Duration::from_secs(20))
            || start.elapsed() > std::time::Duration::from_secs(300);
        if ended || late {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    lock.unlock().unwrap();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_success(&out, "concurrent run");
        assert!(warnings(&out).is_empty(), "{}", stderr(&out));
    }
    assert_eq!(
        most_at_once, 3,
        "the three processes were never all between compiling and publishing at once"
    );
    let (entries, hits, misses, rejected) = compiled_counts(&cache);
    assert_eq!((entries, hits, misses, rejected), (1, 0, 3, 0));
    let out = cache.cli("verify", &[]);
    assert_success(&out, "verify");
    assert!(stdout(&out).contains("0 corrupt"), "{}", stdout(&out));
}

#[test]
fn a_plain_command_component_runs_and_its_code_is_cached() {
    let cache = TestCache::new();
    for _ in 0..2 {
        let out = cache.run(markdown_wasm(), &[], &[]);
        assert_success(&out, "markdown");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json[0]["links"][0], "https://webassembly.org", "{json}");
    }
    assert_eq!(compiled_counts(&cache), (1, 1, 1, 0));
}
