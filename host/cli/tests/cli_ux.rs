//! The CLI as a new user meets it (issue 26): logs free of escape codes when piped and each
//! problem said once, exit codes a script can rely on, counts and columns that read right,
//! progress bars that never show `0/0`.

mod common;

use common::*;

/// The lines of stderr that mention `needle`.
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

fn assert_no_escape_codes(text: &str) {
    assert!(!text.contains('\x1b'), "escape codes in piped output:\n{text:?}");
}

/// `filecache ARGS...` run on a pseudo-terminal (util-linux `script`), with `env` set: what a
/// person at a terminal sees, stdout and stderr together.
#[cfg(target_os = "linux")]
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    use std::process::{Command, Output};

    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = quote(env!("CARGO_BIN_EXE_filecache"));
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("FILECACHE_DIR")
        .env_remove("NO_COLOR")
        .env("FILECACHE_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd
        .output()
        .expect("util-linux `script` runs a command on a pseudo-terminal");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_directory_in_place_of_compiled_key_is_one_clear_message_and_the_run_goes_on() {
    let cache = TestCache::new();
    std::fs::create_dir_all(cache.dir().join("compiled.key")).unwrap();
    let out = cache.run(contract_wasm(), &[], &["basics"]);
    assert_success(&out, "a run with a directory for compiled.key");
    let err = stderr(&out);
    assert_no_escape_codes(&err);
    let said = lines_with(&err, "compiled.key");
    assert_eq!(said.len(), 1, "said once:\n{err}");
    assert!(
        said[0].contains("is a directory") && said[0].contains("remove that directory"),
        "says what is wrong and what to do:\n{err}"
    );
    // Nothing else is logged about it, and the directory is left as it was (not ours to delete).
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{err}");
    assert!(cache.dir().join("compiled.key").is_dir());
}

#[test]
#[cfg(unix)]
fn an_untrusted_compiled_key_is_reported_once_without_escape_codes_when_piped() {
    use std::os::unix::fs::PermissionsExt;

    let cache = TestCache::new();
    cache.contract(&[], &["basics"]);
    let key = cache.dir().join("compiled.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cache.contract(&[], &["basics"]);
    let err = stderr(&out);
    assert_no_escape_codes(&err);
    let said = lines_with(&err, "compiled.key");
    assert_eq!(said.len(), 1, "said once:\n{err}");
    assert!(said[0].contains("readable or writable by other users"), "{err}");
    // Its consequence, the stored artifact rejected and removed, is said once too.
    assert_eq!(lines_with(&err, "not authenticated").len(), 1, "{err}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
}

/// Colour at a terminal (so the piped test above proves something), none with `NO_COLOR`.
#[test]
#[cfg(target_os = "linux")]
fn logs_are_coloured_only_at_a_terminal_and_no_color_is_respected() {
    let cache = TestCache::new();
    std::fs::create_dir_all(cache.dir().join("compiled.key")).unwrap();
    let dir = cache.dir();
    let args = [
        "run",
        "--cache-dir",
        dir.to_str().unwrap(),
        contract_wasm().to_str().unwrap(),
        "basics",
    ];
    let coloured = on_a_terminal(&args, &[]);
    assert!(coloured.contains("compiled.key"), "{coloured}");
    assert!(coloured.contains('\x1b'), "no colour at a terminal:\n{coloured:?}");
    let plain = on_a_terminal(&args, &[("NO_COLOR", "1")]);
    assert!(plain.contains("compiled.key"), "{plain}");
    assert_no_escape_codes(&plain);
}

#[test]
fn verify_exits_1_when_it_found_damage_and_2_on_an_error() {
    let cache = TestCache::new();
    cache.contract(&["--namespace", "one"], &["put", "s1", "3000"]);
    cache.contract(&["--namespace", "one"], &["put", "s2", "3000"]);
    let clean = cache.cli("verify", &[]);
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));

    let path = cache.entry_file("one", "s2");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let damaged = cache.cli("verify", &[]);
    assert_eq!(damaged.status.code(), Some(1), "{}", stderr(&damaged));
    assert!(stdout(&damaged).contains("1 corrupt (removed)"), "{}", stdout(&damaged));
    assert!(!path.exists());
    // The damage is gone: the next check is clean.
    let again = cache.cli("verify", &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));

    // A cache that cannot be checked at all is an error, not an answer.
    let file = cache.tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let error = filecache().args(["verify", "--cache-dir"]).arg(&file).output().unwrap();
    assert_eq!(error.status.code(), Some(2), "{}", stderr(&error));
    assert!(stderr(&error).starts_with("error: "), "{}", stderr(&error));

    let help = filecache().args(["verify", "--help"]).output().unwrap();
    assert_success(&help, "verify --help");
    assert!(
        stdout(&help).contains("Exit status: 0 if every entry passed; 1 if damaged entries were found"),
        "{}",
        stdout(&help)
    );
}

#[test]
fn counts_read_in_the_singular_and_long_namespace_names_keep_the_columns() {
    let cache = TestCache::new();
    let long = "a-namespace-name-much-longer-than-thirty-two-characters-0123456"; // 63
    let flags = ["--no-compile-cache", "--namespace", long];
    cache.contract(&flags, &["put", "s1", "1000"]);
    assert_success(&cache.cli("kv", &["--namespace", long, "set", "k", "v"]), "kv set");
    assert_success(&cache.cli("compile", &[contract_wasm().to_str().unwrap()]), "compile");
    let out = cache.cli("stats", &[]);
    assert_success(&out, "stats");
    let text = stdout(&out);
    assert!(text.contains("compiled code: 1 artifact ("), "{text}");
    assert!(text.contains("0 loads from the cache, 1 compile,"), "{text}");
    assert!(text.contains(&format!("key-value data of {long}: 1 key (")), "{text}");

    // Header, the namespace's row and the total: the entries column ends at one place.
    let table: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("namespace ") || l.starts_with(long) || l.starts_with("total "))
        .collect();
    assert_eq!(table.len(), 3, "{text}");
    let entries_end = |l: &str| {
        let name_end = if l.starts_with(long) {
            long.len()
        } else {
            l.find(' ').unwrap()
        };
        let rest = l[name_end..].trim_start();
        let column_start = l.len() - rest.len();
        column_start + rest.find(' ').unwrap_or(rest.len())
    };
    let ends: Vec<usize> = table.iter().map(|l| entries_end(l)).collect();
    assert!(ends.iter().all(|&e| e == ends[0]), "columns shifted: {ends:?}\n{text}");
    assert!(table[1].starts_with(&format!("{long} ")), "{text}");
}

#[test]
fn gc_and_verify_count_one_entry_in_the_singular() {
    let cache = TestCache::new();
    cache.contract(&["--no-compile-cache"], &["put", "s1", "1000"]);
    let verify = cache.cli("verify", &[]);
    assert_success(&verify, "verify");
    assert!(
        stdout(&verify).starts_with("checked 1 entry: 1 ok"),
        "{}",
        stdout(&verify)
    );
    let gc = cache.cli("gc", &["--max-size", "0"]);
    assert_success(&gc, "gc");
    assert!(
        stdout(&gc).starts_with("removed 1 entry (") && stdout(&gc).contains("reclaimed 0 temporary files"),
        "{}",
        stdout(&gc)
    );
}

/// At a terminal, `verify` and `gc` draw a bar with the real total, never `0/0`.
#[test]
#[cfg(target_os = "linux")]
fn progress_bars_never_show_an_empty_total() {
    let cache = TestCache::new();
    for i in 0..3 {
        cache.contract(&["--no-compile-cache"], &["put", &format!("s{i}"), "1000"]);
    }
    let dir = cache.dir();
    let dir = dir.to_str().unwrap();
    let verify = on_a_terminal(&["verify", "--cache-dir", dir], &[]);
    assert!(verify.contains("checked 3 entries"), "{verify}");
    assert!(verify.contains("verify ["), "no bar drawn at a terminal:\n{verify:?}");
    assert!(!verify.contains("0/0"), "an empty bar was drawn:\n{verify:?}");
    let gc = on_a_terminal(&["gc", "--cache-dir", dir, "--max-size", "0"], &[]);
    assert!(gc.contains("removed 3 entries"), "{gc}");
    assert!(!gc.contains("0/0"), "an empty bar was drawn:\n{gc:?}");
}

/// Every error exits 2, so that 1 stays an answer: `kv get` of a missing key is 1, a failure 2.
#[test]
fn errors_exit_2_and_a_missing_key_exits_1() {
    let cache = TestCache::new();
    assert_success(&cache.cli("kv", &["set", "k", "v"]), "kv set");
    let missing = cache.cli("kv", &["get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    let error = cache.cli("kv", &["--namespace", "Not.Valid", "get", "k"]);
    assert_eq!(error.status.code(), Some(2), "{}", stderr(&error));
    assert!(stderr(&error).starts_with("error: "), "{}", stderr(&error));
    // Usage errors (clap's own) are 2 as well.
    let usage = cache.cli("gc", &["--max-size", "lots"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
}

/// Every file and directory below `dir`, relative, sorted: what a command must leave as it was.
fn listing(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Item 2: `kv list` prints every key on one line, escaped, and never stops half-way; `kv get`,
/// `set` and `delete` take the form it prints.
#[test]
fn kv_list_escapes_control_characters_and_the_other_commands_read_that_form() {
    let cache = TestCache::new();
    // Keys written by a guest (the empty key, NUL inside, a 4096-byte one, unicode) ...
    let out = cache.run(filecache_tests::keyvalue_wasm(), &[], &["odd-keys"]);
    assert_success(&out, "odd-keys");
    // ... and by the shell: a newline, a backslash, an escape character.
    for (key, value) in [("two\\nlines", "n"), ("back\\\\slash", "b"), ("esc\\u{1b}[0m", "e")] {
        assert_success(&cache.cli("kv", &["set", key, value]), &format!("kv set {key}"));
    }
    let list = cache.cli("kv", &["list"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    let text = stdout(&list);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 13, "one line per key:\n{text:?}");
    for expected in [
        "two\\nlines",
        "back\\\\slash",
        "esc\\u{1b}[0m",
        "nul\\0inside",
        "",
        "a/b",
    ] {
        assert!(lines.contains(&expected), "{expected:?} not listed:\n{text:?}");
    }
    assert!(!text.contains('\x1b') && !text.contains('\0'), "{text:?}");
    // Every listed line names its key: `kv get` of it finds the value.
    for line in &lines {
        let get = cache.cli("kv", &["get", line]);
        assert_eq!(get.status.code(), Some(0), "kv get {line:?}: {}", stderr(&get));
    }
    assert_eq!(stdout(&cache.cli("kv", &["get", "two\\nlines"])), "n");
    assert_eq!(stdout(&cache.cli("kv", &["get", "back\\\\slash"])), "b");
    // The guest sees the shell's key with its real newline.
    assert_success(&cache.cli("kv", &["delete", "two\\nlines"]), "kv delete");
    assert_eq!(cache.cli("kv", &["get", "two\\nlines"]).status.code(), Some(1));
    // A backslash that starts no escape is refused, before anything is written.
    let bad = cache.cli("kv", &["set", "C:\\path", "v"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("write a backslash itself as \\\\"),
        "{}",
        stderr(&bad)
    );
    let help = cache.cli("kv", &["list", "--help"]);
    assert!(stdout(&help).contains("a newline \\n"), "{}", stdout(&help));
}

/// Item 4: `stats`, `kv get`, `kv list` and `verify` on a cache or namespace that does not exist
/// say so (exit 2) and create nothing; `clear` of what does not exist succeeds and creates
/// nothing; on an existing cache, looking leaves every file as it was (no SQLite -wal or -shm).
#[test]
fn commands_that_only_look_create_nothing() {
    let cache = TestCache::new();
    let dir = cache.dir();
    for args in [
        &["stats"][..],
        &["stats", "--json"],
        &["verify"],
        &["gc", "--max-size", "1GiB"],
        &["kv", "get", "k"],
        &["kv", "list"],
    ] {
        let out = cache.cli(args[0], &args[1..]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("there is no cache at"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!dir.exists(), "{args:?} created the cache directory");
    }
    let help = cache.cli("gc", &["--help"]);
    assert!(
        stdout(&help).contains("2 on an error, including a cache directory that does not exist"),
        "{}",
        stdout(&help)
    );
    for args in [&["clear"][..], &["clear", "--namespace", "a"], &["kv", "delete", "k"]] {
        let out = cache.cli(args[0], &args[1..]);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!dir.exists(), "{args:?} created the cache directory");
    }
    // A refused run creates nothing either: a text file named .wasm.
    let text = cache.tmp.path().join("notes.wasm");
    std::fs::write(&text, "hello\n").unwrap();
    assert_eq!(cache.run(&text, &[], &[]).status.code(), Some(2));
    assert!(!dir.exists());

    // An existing cache: a namespace with entries and no database, one with a database (closed,
    // its -wal and -shm gone), one that is an empty directory.
    cache.contract(&["--no-compile-cache", "--namespace", "plain"], &["put", "s1", "1000"]);
    assert_success(&cache.cli("kv", &["--namespace", "data", "set", "k", "v"]), "kv set");
    std::fs::create_dir(dir.join("empty")).unwrap();
    let before = listing(&dir);
    assert!(before.contains(&"data/kv.sqlite3".to_string()), "{before:?}");
    assert!(
        !before.iter().any(|f| f.ends_with("-wal") || f.ends_with("-shm")),
        "{before:?}"
    );
    for ns in ["plain", "data", "empty"] {
        for args in [
            &["stats"][..],
            &["stats", "--json"],
            &["kv", "--namespace", ns, "get", "k"],
            &["kv", "--namespace", ns, "list"],
        ] {
            let out = cache.cli(args[0], &args[1..]);
            assert!(out.status.code() != Some(2), "{args:?}: {}", stderr(&out));
            assert_eq!(listing(&dir), before, "{args:?} changed the cache directory");
        }
    }
    assert_eq!(stdout(&cache.cli("kv", &["--namespace", "data", "get", "k"])), "v");
    // `verify` with nothing to repair creates nothing: no database, no namespace, and not the
    // lock file and temporary directory a namespace gets when it is written (the empty one has
    // neither).
    let out = cache.cli("verify", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(listing(&dir), before, "verify changed the cache directory");
    // A namespace that does not exist: an error for looking, nothing to do for clearing.
    let missing = cache.cli("kv", &["--namespace", "typo", "list"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("there is no namespace \"typo\"") && stderr(&missing).contains("data, empty, plain"),
        "{}",
        stderr(&missing)
    );
    assert_eq!(
        cache.cli("kv", &["--namespace", "typo", "get", "k"]).status.code(),
        Some(2)
    );
    let clear = cache.cli("clear", &["--namespace", "typo"]);
    assert_success(&clear, "clear a missing namespace");
    assert!(stdout(&clear).contains("nothing to remove"), "{}", stdout(&clear));
    assert_eq!(listing(&dir), before);
}

/// Item 5: a text file named .wasm is neither a component nor a module: one line, no parser
/// error, no backtrace even with RUST_BACKTRACE=1.
#[test]
fn a_text_file_named_wasm_is_said_to_be_neither_component_nor_module() {
    let cache = TestCache::new();
    let text = cache.tmp.path().join("readme.wasm");
    std::fs::write(&text, "(this is not wasm)\n").unwrap();
    for sub in ["run", "compile"] {
        let out = filecache()
            .env("RUST_BACKTRACE", "1")
            .arg(sub)
            .arg("--cache-dir")
            .arg(cache.dir())
            .arg(&text)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(
                "is not a valid WebAssembly component: it is neither a component nor a core module, it is text"
            ),
            "{sub}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{sub}: {err}");
        assert!(!cache.dir().exists(), "{sub} created the cache");
    }
}

/// Item 5: `compile` of a component that `run` cannot link compiles it and warns, naming what is
/// missing and what to use.
#[test]
fn compile_warns_about_components_run_cannot_run() {
    let cache = TestCache::new();
    let out = cache.cli("compile", &[filecache_tests::http_hello_wasm().to_str().unwrap()]);
    assert_success(&out, "compile an HTTP handler");
    let err = stderr(&out);
    assert!(
        err.starts_with("warning: compiled, but `filecache run` will refuse it:") && err.contains("filecache serve"),
        "{err}"
    );
    // A component that imports an interface nobody provides.
    let wat = cache.tmp.path().join("needs-more.wat");
    std::fs::write(
        &wat,
        r#"(component
            (import "example:missing/api" (instance (export "f" (func))))
        )"#,
    )
    .unwrap();
    let out = cache.cli("compile", &[wat.to_str().unwrap()]);
    assert_success(&out, "compile a component with an unknown import");
    let err = stderr(&out);
    assert!(
        err.contains("`filecache run` cannot run") && err.contains("example:missing/api"),
        "{err}"
    );
    // A command run can run: no warning.
    let out = cache.cli("compile", &[contract_wasm().to_str().unwrap()]);
    assert_success(&out, "compile the contract guest");
    assert_eq!(stderr(&out), "");
}

/// Item 6: `-W max-memory-size`, `-W timeout`, `-W fuel` are enforced by wasmtime and say which
/// limit stopped the run; `-W help` lists them.
#[test]
fn w_limits_stop_a_run_that_exceeds_them_with_a_clear_message() {
    let cache = TestCache::new();
    let hostile = filecache_tests::hostile_wasm();
    // Within the limit, and without one, the guest takes its 32 MiB.
    let fine = cache.run(hostile, &["-W", "max-memory-size=128MiB"], &["grow-memory", "32MiB"]);
    assert_success(&fine, "grow-memory under the limit");
    let over = cache.run(hostile, &["-W", "max-memory-size=16MiB"], &["grow-memory", "32MiB"]);
    assert_eq!(over.status.code(), Some(134), "{}", stderr(&over));
    assert!(
        stderr(&over).contains("was stopped: it asked for")
            && stderr(&over).contains("over -W max-memory-size (16777216 bytes"),
        "{}",
        stderr(&over)
    );

    let start = std::time::Instant::now();
    let timeout = cache.run(hostile, &["-W", "timeout=300ms"], &["spin"]);
    assert_eq!(timeout.status.code(), Some(134), "{}", stderr(&timeout));
    assert!(
        stderr(&timeout).contains("ran longer than -W timeout (300ms)"),
        "{}",
        stderr(&timeout)
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(60));

    let fuel = cache.run(hostile, &["-W", "fuel=5000000"], &["spin"]);
    assert_eq!(fuel.status.code(), Some(134), "{}", stderr(&fuel));
    assert!(
        stderr(&fuel).contains("used up its fuel (-W fuel=5000000)"),
        "{}",
        stderr(&fuel)
    );
    // Enough fuel for a short task: it runs.
    let enough = cache.run(
        hostile,
        &["-W", "fuel=10000000000,timeout=60s"],
        &["grow-memory", "1MiB"],
    );
    assert_success(&enough, "grow-memory with fuel and a timeout to spare");

    let help = filecache().args(["run", "-W", "help"]).output().unwrap();
    assert_success(&help, "-W help");
    for listed in [
        "-W max-memory-size=SIZE",
        "-W timeout=DURATION",
        "-W fuel=N",
        "-W threads[=y|n]",
    ] {
        assert!(stdout(&help).contains(listed), "{listed}: {}", stdout(&help));
    }
    let unknown = filecache()
        .args(["run", "-W", "fuel-limit=3", "x.wasm"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("`-W help` lists"), "{}", stderr(&unknown));
}

/// Item 6: `--quota -1` and `--quota 0` are refused with a message that says what to do.
#[test]
fn a_negative_or_zero_quota_is_refused_with_a_useful_message() {
    let cache = TestCache::new();
    let negative = cache.run(contract_wasm(), &["--quota", "-1"], &["basics"]);
    assert_eq!(negative.status.code(), Some(2), "{}", stderr(&negative));
    assert!(
        stderr(&negative).contains("a quota cannot be negative"),
        "{}",
        stderr(&negative)
    );
    let zero = cache.run(contract_wasm(), &["--quota", "0"], &["basics"]);
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
    assert!(stderr(&zero).contains("--read-only"), "{}", stderr(&zero));
    assert!(!cache.dir().exists());
}

/// Item 6: `-W timeout` ends a run whatever the guest is doing, not only while it runs
/// WebAssembly code: a guest asleep in a host call, or reading a standard input that stays open,
/// is stopped at the limit with the same message and exit code 134 as a spinning one. What it
/// committed stays; what it had not committed leaves nothing behind; its hit is counted.
#[test]
fn w_timeout_stops_a_run_waiting_in_a_host_call() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let cache = TestCache::new();
    let hostile = filecache_tests::hostile_wasm();
    let flags = |timeout: &'static str| ["--namespace", "timeout", "-W", timeout];
    let says_timeout = |err: &str| {
        assert!(err.contains("was stopped: it ran longer than -W timeout (1s)"), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    };
    // A 60 s sleep in a host call, cut at about 1 s (the bound leaves room for a loaded machine).
    let start = Instant::now();
    let slept = cache.run(hostile, &flags("timeout=1s"), &["sleep", "60000"]);
    let elapsed = start.elapsed();
    assert_eq!(slept.status.code(), Some(134), "{}", stderr(&slept));
    says_timeout(&stderr(&slept));
    assert!(stdout(&slept).contains("holding a writer"), "{}", stdout(&slept));
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    // The committed entry is there and reads back; the uncommitted writer left no entry and no
    // temporary file; the run's hit reached the counters.
    assert!(cache.entry_file("timeout", "hostile/kept").is_file());
    assert!(!cache.entry_file("timeout", "hostile/pending").exists());
    let tmp = cache.dir().join("timeout").join("tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let stats = cache.namespace_stats("timeout");
    assert_eq!(
        (stats["entries"].as_u64(), stats["hits"].as_u64()),
        (Some(1), Some(1)),
        "{stats:#}"
    );
    // Within the limit, the same run ends and commits its writer.
    let fine = cache.run(hostile, &flags("timeout=60s"), &["sleep", "10"]);
    assert_success(&fine, "sleep 10 ms under -W timeout=60s");
    assert!(cache.entry_file("timeout", "hostile/pending").is_file());

    // Blocked on a standard input that is never closed (wasmtime-wasi reads it on a thread of
    // its own), and on a FIFO with no writer in a --dir (a read on tokio's blocking pool, which
    // cannot be cancelled: the run leaves it behind after its grace period).
    let fifo_dir = cache.tmp.path().join("fifo");
    std::fs::create_dir(&fifo_dir).unwrap();
    let fifo = std::ffi::CString::new(fifo_dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let dir = format!("{}::/data", fifo_dir.display());
    for (what, extra, args) in [
        ("reading stdin", None, ["read-stdin", ""]),
        ("reading a FIFO", Some(dir.as_str()), ["read-file", "/data/fifo"]),
    ] {
        let mut run = filecache();
        run.arg("run")
            .arg("--cache-dir")
            .arg(cache.dir())
            .args(flags("timeout=1s"));
        if let Some(dir) = extra {
            run.args(["--dir", dir]);
        }
        let mut child = run
            .arg(hostile)
            .args(args.iter().filter(|a| !a.is_empty()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let Some(status) = wait_within(&mut child, Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("a run {what} under -W timeout=1s still running after 30 s");
        };
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert_eq!(status.code(), Some(134), "{what}: {}", stderr(&out));
        says_timeout(&stderr(&out));
    }
}
