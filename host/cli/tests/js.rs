//! The JavaScript plugin kit (`guest/js/`) end to end, on both engines.
//!
//! The example plugin is built from source with the pinned tools (`guest/js/build.sh`, which
//! installs componentize-js and jco from npm into the target folder the first time): with
//! componentize-js (SpiderMonkey), with jco's QuickJS backend, and with QuickJS's non-async runtime,
//! each into `target/tmp/js-kit/` under a hash of every input, so a rerun with nothing changed
//! reuses them. Each then runs through the real `filecache run`: a Markdown page rendered on a miss
//! and served on a hit, and every error of the contract as a JavaScript plugin sees it. Without
//! Node.js and npm, or without access to the npm registry, the tests fail, saying so; they are
//! never skipped.

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

/// Where the kit's builds go: `target/tmp/js-kit`.
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-kit")
}

/// The engines `guest/js/build.sh` builds with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    /// componentize-js: SpiderMonkey, ~13 MB.
    SpiderMonkey,
    /// jco's QuickJS backend, ~2 MB; uses component-model async built-ins.
    QuickJs,
    /// jco's QuickJS backend with its non-async runtime.
    QuickJsSync,
}

impl Engine {
    fn flag(self) -> Option<&'static str> {
        match self {
            Engine::SpiderMonkey => None,
            Engine::QuickJs => Some("--quickjs"),
            Engine::QuickJsSync => Some("--quickjs-sync"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Engine::SpiderMonkey => "spidermonkey",
            Engine::QuickJs => "quickjs",
            Engine::QuickJsSync => "quickjs-sync",
        }
    }
}

/// Every file below `dir` except installed ones, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == "node_modules"))
        .collect();
    files.sort();
    files
}

/// Runs `guest/js/build.sh [FLAG] OUT [APP.js]`, the tools installed under the workspace's target
/// folder.
fn build(engine: Engine, out: &Path, app: Option<&Path>) -> Output {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("guest/js/build.sh"))
        .env("CARGO_TARGET_DIR", target);
    cmd.args(engine.flag()).arg(out);
    if let Some(app) = app {
        cmd.arg(app);
    }
    cmd.output().expect("cannot run bash for guest/js/build.sh")
}

/// The example plugin built with one engine, once per change of its inputs, and a cache directory
/// holding its compiled code, which the tests share (each in its own namespace) so that the
/// component is compiled once, not once per test.
struct Example {
    wasm: PathBuf,
    cache_dir: PathBuf,
    engine: Engine,
}

fn example(engine: Engine) -> &'static Example {
    static EXAMPLES: [OnceLock<Example>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    EXAMPLES[engine as usize].get_or_init(|| {
        let root = root();
        let mut inputs = sources(&root.join("guest/js"));
        inputs.push(root.join("wit/cache.wit"));
        inputs.push(root.join("Cargo.lock")); // the wasmtime-wasi version, for the WASI WIT files
        let mut hasher = DefaultHasher::new();
        for path in &inputs {
            path.strip_prefix(&root).unwrap().hash(&mut hasher);
            std::fs::read(path).unwrap().hash(&mut hasher);
        }
        let wasm = work_dir().join(format!("example-{}-{:016x}.wasm", engine.name(), hasher.finish()));
        if !wasm.exists() {
            let out = build(engine, &wasm, None);
            assert!(
                out.status.success(),
                "building the JavaScript example ({}) failed ({:?}). guest/js/build.sh installs \
                 componentize-js and jco from npm (guest/js/package-lock.json, `npm ci`) into \
                 target/js-kit/tools: it needs node and npm, and access to the npm registry.\n--- stderr\n{}",
                engine.name(),
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
        assert_success(
            &out,
            &format!("filecache compile (the JavaScript example, {})", engine.name()),
        );
        Example {
            wasm,
            cache_dir,
            engine,
        }
    })
}

impl Example {
    fn namespace(&self, name: &str) -> String {
        format!("js-{}-{name}", self.engine.name())
    }

    /// `filecache run` in a namespace of its own, emptied first.
    fn run(&self, name: &str, flags: &[&str], args: &[&str]) -> Output {
        let clear = filecache()
            .args(["clear", "--cache-dir"])
            .arg(&self.cache_dir)
            .args(["--namespace", &self.namespace(name)])
            .output()
            .unwrap();
        assert_success(&clear, "filecache clear");
        self.run_again(name, flags, args)
    }

    /// `filecache run` in the namespace, as it is.
    fn run_again(&self, name: &str, flags: &[&str], args: &[&str]) -> Output {
        filecache()
            .arg("run")
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(["--namespace", &self.namespace(name)])
            .args(flags)
            .arg(&self.wasm)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `selftest ARGS...` and requires it to pass, with every line of `expected` printed.
    fn selftest(&self, flags: &[&str], args: &[&str], expected: &[&str]) {
        let out = self.run(args[0], flags, &[&["selftest"], args].concat());
        assert_success(
            &out,
            &format!("selftest {args:?} with {flags:?} on {}", self.engine.name()),
        );
        let text = stdout(&out);
        for line in expected
            .iter()
            .copied()
            .chain([format!("selftest {}: passed", args[0]).as_str()])
        {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "no line starting with {line:?} on {}:\n{text}",
                self.engine.name()
            );
        }
    }

    /// Renders the page twice (a miss, then a hit), then a changed page (a miss, then a hit).
    fn render_miss_then_hit(&self, flags: &[&str]) {
        let docs = tempfile::tempdir().unwrap();
        std::fs::write(docs.path().join("page.md"), PAGE_MD).unwrap();
        let dir = format!("{}::/docs", docs.path().display());
        let flags = [flags, &["--dir", &dir]].concat();
        let what = |run: &str| format!("render ({run}) on {}", self.engine.name());

        let first = self.run("render", &flags, &["render", "/docs/page.md"]);
        assert_success(&first, &what("first run"));
        assert_eq!(stdout(&first), PAGE_HTML);
        let line = status_line(&first);
        let sizes = format!(
            "/docs/page.md: {} bytes of Markdown -> {} bytes of HTML in ",
            PAGE_MD.len(),
            PAGE_HTML.len()
        );
        assert!(line.starts_with(&format!("miss {sizes}")), "{line}");

        let second = self.run_again("render", &flags, &["render", "/docs/page.md"]);
        assert_success(&second, &what("second run"));
        assert_eq!(stdout(&second), PAGE_HTML);
        let line = status_line(&second);
        assert!(line.starts_with(&format!("hit {sizes}")), "{line}");

        // The key is the renderer and the source: a changed page is a miss, then a hit.
        let changed = format!("{PAGE_MD}\nOne more *line*.\n");
        std::fs::write(docs.path().join("page.md"), &changed).unwrap();
        let third = self.run_again("render", &flags, &["render", "/docs/page.md"]);
        assert_success(&third, &what("changed page"));
        assert_eq!(stdout(&third), format!("{PAGE_HTML}<p>One more <em>line</em>.</p>\n"));
        assert!(status_line(&third).starts_with("miss "), "{}", stderr(&third));
        let fourth = self.run_again("render", &flags, &["render", "/docs/page.md"]);
        assert!(status_line(&fourth).starts_with("hit "), "{}", stderr(&fourth));
        assert_eq!(stdout(&fourth), stdout(&third));
    }

    fn selftest_contract(&self) {
        let mut expected = vec![
            "ok key of no parts",
            "ok key of one empty part",
            "ok part boundaries matter",
            "ok new Key(31 bytes) throws InvalidKey",
        ];
        let calls: Vec<String> = [0, 31, 33]
            .iter()
            .flat_map(|n| {
                ["get", "open", "add", "create", "delete", "contains"]
                    .map(|f| format!("ok {f}({n} bytes) throws InvalidKey: the cache key is not exactly 32 bytes"))
            })
            .collect();
        expected.extend(calls.iter().map(String::as_str));
        expected.extend([
            "ok miss is null",
            "ok add then get",
            "ok add replaces",
            "ok delete (twice)",
            "ok nothing visible before commit",
            "ok commit closes the writer",
            "ok reader.size() === 3158073",
            "ok read(10)",
            "ok one read returns at most 1 MiB",
            "ok readAll() gives the exact rest",
            "ok read at the end is empty",
            "ok withReader releases the reader",
            "ok using: read to the end",
            "ok using releases the reader",
            "ok withWriter: an exception leaves nothing",
            "ok a writer closed without commit leaves nothing",
            "ok using: a writer left without commit leaves nothing",
            "ok withWriter commits",
            "ok memoize: miss, then hit",
            "ok get outside the run throws NotRunningError: filecache: get can only be used while the plugin runs",
        ]);
        self.selftest(&[], &["contract"], &expected);
    }

    fn selftest_too_large(&self) {
        self.selftest(
            &["--max-entry-size", "1KiB"],
            &["too-large"],
            &[
                "ok add(2 KiB) throws TooLarge: the cache entry exceeds the maximum entry size of 1024 bytes",
                "ok too-large carries the limit, 1024",
                "ok an entry of exactly the limit fits",
                "ok writer: commit past the limit throws TooLarge",
                "ok the writer is closed after a failed commit",
                "ok writer: 1 MiB write throws TooLarge",
                "ok writer: commit after too-large throws TooLarge",
                "ok a failed writer leaves the earlier entry",
                "ok memoize: a value too large to store is computed each time",
            ],
        );
    }

    fn selftest_read_only(&self) {
        self.selftest(
            &["--read-only"],
            &["read-only"],
            &[
                "ok add throws ReadOnly: the cache is read-only",
                "ok create throws ReadOnly",
                "ok delete throws ReadOnly",
                "ok reads still work (miss)",
                "ok memoize computes when the cache refuses to store",
            ],
        );
    }

    fn selftest_too_many_handles(&self) {
        self.selftest(
            &["--max-handles", "4"],
            &["too-many-handles", "4"],
            &[
                "ok 4 writers open",
                "ok writer 5 throws TooManyHandles: too many cache readers and writers are open",
                "ok closing a writer gives its slot back",
                "ok committing gives the slots back",
                "ok 4 readers open",
                "ok reader 5 throws TooManyHandles",
                "ok 12 withReader/withWriter calls, each released",
            ],
        );
    }

    fn a_failing_main_exits_non_zero(&self) {
        let out = self.run("usage", &[], &["no-such-command"]);
        assert!(
            !out.status.success(),
            "an unknown command succeeded on {}:\n{}",
            self.engine.name(),
            stdout(&out)
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("unknown command no-such-command"),
            "{}",
            stderr(&out)
        );
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
fn spidermonkey_renders_on_a_miss_and_serves_the_same_page_on_a_hit() {
    example(Engine::SpiderMonkey).render_miss_then_hit(&[]);
}

#[test]
fn spidermonkey_selftest_the_contract_invalid_keys_streams_and_memoize() {
    example(Engine::SpiderMonkey).selftest_contract();
}

#[test]
fn spidermonkey_selftest_too_large_under_max_entry_size() {
    example(Engine::SpiderMonkey).selftest_too_large();
}

#[test]
fn spidermonkey_selftest_read_only() {
    example(Engine::SpiderMonkey).selftest_read_only();
}

#[test]
fn spidermonkey_selftest_too_many_handles_under_max_handles() {
    example(Engine::SpiderMonkey).selftest_too_many_handles();
}

#[test]
fn spidermonkey_a_failing_main_exits_with_1_and_its_message() {
    example(Engine::SpiderMonkey).a_failing_main_exits_non_zero();
}

/// jco's QuickJS output uses component-model async built-ins (`task.cancel`), which
/// `filecache run` enables by default, as `wasmtime run` does.
#[test]
fn quickjs_renders_on_a_miss_and_serves_the_same_page_on_a_hit() {
    example(Engine::QuickJs).render_miss_then_hit(&[]);
}

#[test]
fn quickjs_selftest_every_mode() {
    let example = example(Engine::QuickJs);
    example.selftest_contract();
    example.selftest_too_large();
    example.selftest_read_only();
    example.selftest_too_many_handles();
    example.a_failing_main_exits_non_zero();
}

/// Without component-model async the default QuickJS output is refused, saying why, and the
/// non-async runtime (`build.sh --quickjs-sync`) runs.
#[test]
fn quickjs_without_component_model_async_needs_the_sync_runtime() {
    let flags = ["-W", "component-model-async=n"];
    let refused = example(Engine::QuickJs).run("no-async", &flags, &["selftest", "contract"]);
    assert!(
        !refused.status.success(),
        "ran without component-model async:\n{}",
        stdout(&refused)
    );
    assert!(
        stderr(&refused).contains("requires the component model async feature"),
        "{}",
        stderr(&refused)
    );
    let sync = example(Engine::QuickJsSync);
    sync.render_miss_then_hit(&flags);
    sync.selftest(
        &[&flags[..], &["--read-only"]].concat(),
        &["read-only"],
        &["ok add throws ReadOnly"],
    );
}

/// Both tools run top-level code at build time: the kit refuses the cache there, so the mistake
/// fails the build with a message saying why, instead of a dead handle at run time.
#[test]
fn using_the_cache_in_top_level_code_fails_the_build_clearly() {
    example(Engine::SpiderMonkey); // the tools are installed
    let app = tempfile::tempdir().unwrap();
    // A plugin of its own, with a copy of the kit beside it, as docs/kits/javascript.md describes.
    std::fs::copy(
        root().join("guest/js/src/filecache.js"),
        app.path().join("filecache.js"),
    )
    .unwrap();
    std::fs::write(
        app.path().join("app.js"),
        "import * as cache from \"./filecache.js\";\n\
         const early = cache.get(cache.Key.fromParts(\"too early\"));\n\
         export const run = cache.command(() => 0);\n",
    )
    .unwrap();
    for engine in [Engine::SpiderMonkey, Engine::QuickJs] {
        let wasm = app.path().join(format!("bad-{}.wasm", engine.name()));
        let out = build(engine, &wasm, Some(&app.path().join("app.js")));
        assert!(
            !out.status.success(),
            "a plugin using the cache at build time was built with {}",
            engine.name()
        );
        let text = stderr(&out);
        assert!(
            text.contains("get can only be used while the plugin runs") && text.contains("not in top-level code"),
            "the {} build failed without saying why:\n{text}",
            engine.name()
        );
        assert!(!wasm.exists());
    }
}
