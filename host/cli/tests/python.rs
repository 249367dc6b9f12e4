//! The Python plugin kit (`guest/python/`) end to end.
//!
//! The example plugin is built from source with the pinned componentize-py
//! (`guest/python/build.sh`, which installs it from PyPI into the target folder the first time),
//! into `target/tmp/python-kit/`, under a hash of every input: a rerun with nothing changed
//! reuses it. It then runs through the real `filecache run`: a Markdown page rendered on a miss and
//! served on a hit, and every error of the contract as a Python plugin sees it. Without Python 3
//! (with `venv`) or without access to PyPI the tests fail, saying so; they are never skipped.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the kit's builds go: `target/tmp/python-kit`.
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-kit")
}

/// Every file below `dir` except generated ones, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == "__pycache__"))
        .collect();
    files.sort();
    files
}

/// Runs `guest/python/build.sh OUT [APP_DIR]`, the toolchain installed under the workspace's
/// target folder.
fn build(out: &Path, app: Option<&Path>) -> Output {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("guest/python/build.sh"))
        .arg(out)
        .env("CARGO_TARGET_DIR", target);
    if let Some(app) = app {
        cmd.arg(app);
    }
    cmd.output().expect("cannot run bash for guest/python/build.sh")
}

/// The example plugin, built from source once per change of its inputs, and a cache directory
/// holding its compiled code, which the tests share (each in its own namespace) so that the 18 MB
/// component is compiled once, not once per test.
struct Example {
    wasm: PathBuf,
    cache_dir: PathBuf,
}

fn example() -> &'static Example {
    static EXAMPLE: OnceLock<Example> = OnceLock::new();
    EXAMPLE.get_or_init(|| {
        let root = root();
        let mut inputs = sources(&root.join("guest/python"));
        inputs.push(root.join("wit/cache.wit"));
        inputs.push(root.join("Cargo.lock")); // the wasmtime-wasi version, for the WASI WIT files
        let mut hasher = DefaultHasher::new();
        for path in &inputs {
            path.strip_prefix(&root).unwrap().hash(&mut hasher);
            std::fs::read(path).unwrap().hash(&mut hasher);
        }
        let wasm = work_dir().join(format!("example-{:016x}.wasm", hasher.finish()));
        if !wasm.exists() {
            let out = build(&wasm, None);
            assert!(
                out.status.success(),
                "building the Python example failed ({:?}). guest/python/build.sh installs componentize-py \
                 from PyPI (guest/python/requirements.txt) into target/python-kit/venv: it needs python3 \
                 with venv and pip, and access to PyPI.\n--- stderr\n{}",
                out.status,
                stderr(&out)
            );
        }
        let cache_dir = work_dir().join("cache");
        let out = filecache()
            .arg("compile")
            .arg("--cache-dir")
            .arg(&cache_dir)
            .arg(&wasm)
            .output()
            .unwrap();
        assert_success(&out, "filecache compile (the Python example)");
        Example { wasm, cache_dir }
    })
}

impl Example {
    /// `filecache run` in a namespace of its own, emptied first.
    fn run(&self, namespace: &str, flags: &[&str], args: &[&str]) -> Output {
        let clear = filecache()
            .args(["clear", "--cache-dir"])
            .arg(&self.cache_dir)
            .args(["--namespace", namespace])
            .output()
            .unwrap();
        assert_success(&clear, "filecache clear");
        self.run_again(namespace, flags, args)
    }

    /// `filecache run` in `namespace`, as it is.
    fn run_again(&self, namespace: &str, flags: &[&str], args: &[&str]) -> Output {
        filecache()
            .arg("run")
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(["--namespace", namespace])
            .args(flags)
            .arg(&self.wasm)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `selftest ARGS...` and requires it to pass, with every line of `expected` printed.
    fn selftest(&self, namespace: &str, flags: &[&str], args: &[&str], expected: &[&str]) {
        let out = self.run(namespace, flags, &[&["selftest"], args].concat());
        assert_success(&out, &format!("selftest {args:?} with {flags:?}"));
        let text = stdout(&out);
        for line in expected
            .iter()
            .copied()
            .chain([format!("selftest {}: passed", args[0]).as_str()])
        {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "no line starting with {line:?} in:\n{text}"
            );
        }
    }
}

/// The line of the example's standard error about one file: "miss PATH: ..." or "hit PATH: ...".
fn status_line(out: &Output) -> String {
    stderr(out)
        .lines()
        .find(|l| l.starts_with("miss ") || l.starts_with("hit "))
        .unwrap_or_else(|| panic!("no miss/hit line in:\n{}", stderr(out)))
        .to_string()
}

#[test]
fn the_example_renders_on_a_miss_and_serves_the_same_page_on_a_hit() {
    let example = example();
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(docs.path().join("page.md"), PAGE_MD).unwrap();
    let dir = format!("{}::/docs", docs.path().display());
    let flags = ["--dir", &dir];

    let first = example.run("py-render", &flags, &["render", "/docs/page.md"]);
    assert_success(&first, "render (first run)");
    assert_eq!(stdout(&first), PAGE_HTML);
    let line = status_line(&first);
    let sizes = format!(
        "/docs/page.md: {} bytes of Markdown -> {} bytes of HTML in ",
        PAGE_MD.len(),
        PAGE_HTML.len()
    );
    assert!(line.starts_with(&format!("miss {sizes}")), "{line}");

    let second = example.run_again("py-render", &flags, &["render", "/docs/page.md"]);
    assert_success(&second, "render (second run)");
    assert_eq!(stdout(&second), PAGE_HTML);
    let line = status_line(&second);
    assert!(line.starts_with(&format!("hit {sizes}")), "{line}");

    // The key is the renderer and the source: a changed page is a miss, then a hit.
    let changed = format!("{PAGE_MD}\nOne more *line*.\n");
    std::fs::write(docs.path().join("page.md"), &changed).unwrap();
    let third = example.run_again("py-render", &flags, &["render", "/docs/page.md"]);
    assert_success(&third, "render (changed page)");
    assert_eq!(stdout(&third), format!("{PAGE_HTML}<p>One more <em>line</em>.</p>\n"));
    assert!(status_line(&third).starts_with("miss "), "{}", stderr(&third));
    let fourth = example.run_again("py-render", &flags, &["render", "/docs/page.md"]);
    assert!(status_line(&fourth).starts_with("hit "), "{}", stderr(&fourth));
    assert_eq!(stdout(&fourth), stdout(&third));
}

#[test]
fn selftest_the_contract_invalid_keys_streams_and_memoize() {
    let mut expected = vec![
        "ok key of no parts",
        "ok key of one empty part",
        "ok part boundaries matter",
        "ok Key(31 bytes) raises InvalidKey",
    ];
    let calls: Vec<String> = [0, 31, 33]
        .iter()
        .flat_map(|n| {
            ["get", "open", "add", "create", "delete", "contains"]
                .map(|f| format!("ok {f}({n} bytes) raises InvalidKey: the cache key is not exactly 32 bytes"))
        })
        .collect();
    expected.extend(calls.iter().map(String::as_str));
    expected.extend([
        "ok miss is None",
        "ok add then get",
        "ok add replaces",
        "ok delete (twice)",
        "ok nothing visible before commit",
        "ok commit closes the writer",
        "ok reader.size() == 3158073",
        "ok read and readinto",
        "ok one read returns at most 1 MiB",
        "ok read() to the end gives the exact content",
        "ok read at the end is empty",
        "ok with releases the reader",
        "ok a writer closed without commit leaves nothing",
        "ok a writer left by an exception leaves nothing",
        "ok memoize: miss, then hit",
        "ok get outside the run raises NotRunningError: filecache: the cache can only be used while the plugin runs",
    ]);
    example().selftest("py-contract", &[], &["contract"], &expected);
}

#[test]
fn selftest_too_large_under_max_entry_size() {
    example().selftest(
        "py-too-large",
        &["--max-entry-size", "1KiB"],
        &["too-large"],
        &[
            "ok add(2 KiB) raises TooLarge: the cache entry exceeds the maximum entry size of 1024 bytes",
            "ok too-large carries the limit, 1024",
            "ok an entry of exactly the limit fits",
            "ok writer: commit past the limit raises TooLarge",
            "ok the writer is closed after a failed commit",
            "ok writer: 1 MiB write raises TooLarge",
            "ok writer: commit after too-large raises TooLarge",
            "ok a failed writer leaves the earlier entry",
            "ok memoize: a value too large to store is computed each time",
        ],
    );
}

#[test]
fn selftest_read_only() {
    example().selftest(
        "py-read-only",
        &["--read-only"],
        &["read-only"],
        &[
            "ok add raises ReadOnly: the cache is read-only",
            "ok create raises ReadOnly",
            "ok delete raises ReadOnly",
            "ok reads still work (miss)",
            "ok memoize computes when the cache refuses to store",
        ],
    );
}

#[test]
fn selftest_too_many_handles_under_max_handles() {
    example().selftest(
        "py-handles",
        &["--max-handles", "4"],
        &["too-many-handles", "4"],
        &[
            "ok 4 writers open",
            "ok writer 5 raises TooManyHandles: too many cache readers and writers are open",
            "ok closing a writer gives its slot back",
            "ok committing gives the slots back",
            "ok 4 readers open",
            "ok reader 5 raises TooManyHandles",
            "ok 12 with-blocks of readers and writers, each released",
        ],
    );
}

#[test]
fn a_failing_main_exits_non_zero_with_its_message() {
    let out = example().run("py-usage", &[], &["no-such-command"]);
    assert!(!out.status.success(), "an unknown command succeeded:\n{}", stdout(&out));
    assert!(
        stderr(&out).contains("unknown command 'no-such-command'"),
        "{}",
        stderr(&out)
    );
}

/// componentize-py runs top-level code at build time: the kit refuses the cache there, so the
/// mistake fails the build with a message saying why, instead of a dead handle at run time.
#[test]
fn using_the_cache_in_top_level_code_fails_the_build_clearly() {
    example(); // the toolchain is installed
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("app.py"),
        "import filecache\n\
         CACHED = filecache.get(filecache.Key.from_parts('too early'))\n\
         def main(args):\n    return 0\n\
         Run = filecache.command(main)\n",
    )
    .unwrap();
    let out = build(&app.path().join("bad.wasm"), Some(app.path()));
    assert!(
        !out.status.success(),
        "a plugin using the cache at import time was built"
    );
    let text = stderr(&out);
    assert!(
        text.contains("NotRunningError") && text.contains("not in top-level code"),
        "the build failed without saying why:\n{text}"
    );
    assert!(!app.path().join("bad.wasm").exists());
}
