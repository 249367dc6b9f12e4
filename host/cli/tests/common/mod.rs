//! Helpers shared by the end-to-end tests.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};

#[cfg(unix)]
pub mod serve;

pub use filecache_tests::{
    RedisServer, brotli_assets_wasm, contract_wasm, demo_assets_dir, hostile_wasm, markdown_wasm,
};

/// Waits (at most `within`) for `child` to end: its status, or `None` if it is still running.
pub fn wait_within(child: &mut Child, within: std::time::Duration) -> Option<ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The `filecache` binary built for these tests.
pub fn filecache() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_filecache"));
    cmd.env_remove("FILECACHE_DIR").env("FILECACHE_LOG", "warn");
    cmd
}

/// A fresh cache directory (inside a temporary directory that also holds other test files).
pub struct TestCache {
    pub tmp: tempfile::TempDir,
}

impl TestCache {
    pub fn new() -> TestCache {
        TestCache {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }
    /// `filecache run --cache-dir DIR FLAGS... WASM ARGS...`
    pub fn run(&self, wasm: &Path, flags: &[&str], args: &[&str]) -> Output {
        filecache()
            .arg("run")
            .arg("--cache-dir")
            .arg(self.dir())
            .args(flags)
            .arg(wasm)
            .args(args)
            .output()
            .unwrap()
    }
    /// Runs a contract scenario and requires it to pass.
    pub fn contract(&self, flags: &[&str], args: &[&str]) -> Output {
        let out = self.run(contract_wasm(), flags, args);
        assert_success(&out, &format!("contract {args:?} with {flags:?}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("ok {}", args[0])),
            "no `ok {}` line in:\n{stdout}",
            args[0]
        );
        out
    }
    /// `filecache SUBCOMMAND --cache-dir DIR ARGS...`
    pub fn cli(&self, subcommand: &str, args: &[&str]) -> Output {
        filecache()
            .arg(subcommand)
            .arg("--cache-dir")
            .arg(self.dir())
            .args(args)
            .output()
            .unwrap()
    }
    /// `filecache stats --json`, required to succeed.
    pub fn stats_json(&self) -> serde_json::Value {
        let out = self.cli("stats", &["--json"]);
        assert_success(&out, "stats --json");
        serde_json::from_slice(&out.stdout).unwrap()
    }
    /// Namespace `name`'s object in `filecache stats --json`.
    pub fn namespace_stats(&self, name: &str) -> serde_json::Value {
        namespace_in(&self.stats_json(), name).clone()
    }
    /// The file of the entry for `seed` (key = SHA-256 of the seed string) in `namespace`.
    pub fn entry_file(&self, namespace: &str, seed: &str) -> PathBuf {
        let key = filecache_host::Key::digest(seed.as_bytes()).to_string();
        self.dir().join(namespace).join(&key[..2]).join(key)
    }
}

/// Namespace `name`'s object in the output of `filecache stats --json` (a panic showing all of
/// it when there is none).
pub fn namespace_in<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no namespace {name} in {stats:#}"))
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The usage counter in the `state` file of the namespace at `dir`, as the store left it.
pub fn usage_counter(dir: &Path) -> u64 {
    let state = std::fs::read(dir.join("state")).unwrap();
    assert_eq!(&state[..8], b"FCUSAGE1", "the state file starts with its magic");
    u64::from_le_bytes(state[8..16].try_into().unwrap())
}

/// What the entry files present in the namespace at `dir` cost, each charged as the store charges
/// it (its size rounded up to 4 KiB).
pub fn entry_files_charge(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 2 && p.is_dir())
        .flat_map(|shard| files_under(&shard))
        .map(|f| filecache_host::entry::charge_for_file(std::fs::metadata(f).unwrap().len()))
        .sum()
}

/// A tmpfs mounted for a test (which needs root, as in CI), unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `4m`) at `at`, or says why it could not.
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "filecache-test"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    /// Makes it read-only.
    pub fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount read-only failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The page every plugin kit's example renders (Python and JavaScript), and the HTML it must give.
pub const PAGE_MD: &str = r#"# Notes on *caching*

A plugin keeps `expensive <results>` between runs: **rendered pages**, _compressed assets_ and
[parsed indexes](https://example.com/indexes).  
Second line after a hard break; snake_case_stays as it is.

## What it stores

- content by key
- checked on every read
  1. CRC32C
  2. the key in the header
- written atomically

> A miss is `ok(none)`.
> A damaged entry is a miss too.

```python
def key(parts):
    return sha256(b"".join(parts))
```

| size | get | add |
|:-----|----:|:---:|
| 1 KiB | 2.1x | 2.4x |
| 1 MiB | 7.8x |

---

![diagram](docs/flow.svg) and <https://example.com/more>

## What it stores
"#;

pub const PAGE_HTML: &str = r#"<h1 id="notes-on-caching">Notes on <em>caching</em></h1>
<p>A plugin keeps <code>expensive &lt;results&gt;</code> between runs: <strong>rendered pages</strong>, <em>compressed assets</em> and
<a href="https://example.com/indexes">parsed indexes</a>.<br>
Second line after a hard break; snake_case_stays as it is.</p>
<h2 id="what-it-stores">What it stores</h2>
<ul>
<li>content by key</li>
<li>checked on every read
<ol>
<li>CRC32C</li>
<li>the key in the header</li>
</ol></li>
<li>written atomically</li>
</ul>
<blockquote>
<p>A miss is <code>ok(none)</code>.
A damaged entry is a miss too.</p>
</blockquote>
<pre><code class="language-python">def key(parts):
    return sha256(b&quot;&quot;.join(parts))
</code></pre>
<table>
<thead>
<tr><th style="text-align:left">size</th><th style="text-align:right">get</th><th style="text-align:center">add</th></tr>
</thead>
<tbody>
<tr><td style="text-align:left">1 KiB</td><td style="text-align:right">2.1x</td><td style="text-align:center">2.4x</td></tr>
<tr><td style="text-align:left">1 MiB</td><td style="text-align:right">7.8x</td><td style="text-align:center"></td></tr>
</tbody>
</table>
<hr>
<p><img src="docs/flow.svg" alt="diagram"> and <a href="https://example.com/more">https://example.com/more</a></p>
<h2 id="what-it-stores-1">What it stores</h2>
"#;
