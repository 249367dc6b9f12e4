//! A real `redis-server` for tests, on a free loopback port, killed when dropped.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process started for one test: no persistence, loopback only.
///
/// ```no_run
/// let redis = filecache_tests::RedisServer::start();
/// let url = redis.url(); // redis://127.0.0.1:PORT
/// assert_eq!(redis.cli(&["DBSIZE"]), "0");
/// ```
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

fn require(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is not installed (or not on PATH): the remote-tier tests run a real Redis server. \
         Install it with `apt-get install -y redis-server` (.ci/run does this)."
    );
}

impl RedisServer {
    /// Starts a server and waits until it answers. Panics with the reason if it cannot.
    pub fn start() -> RedisServer {
        require("redis-server");
        require("redis-cli");
        let mut last_error = String::new();
        // A port found free may be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("cannot find a free loopback port")
                .port();
            match RedisServer::start_on(port) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start redis-server: {last_error}");
    }

    /// Kills the server (if it runs) and starts a new one, empty, on the same port: a server
    /// that died and came back where its clients look. Like [`RedisServer::start`]'s, the new
    /// server dies with the test, and it is ours (not another test's that took the port
    /// meanwhile). Panics if it cannot start.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        *self = RedisServer::start_on(port)
            .unwrap_or_else(|e| panic!("cannot start redis-server again on port {port}: {e}"));
    }

    /// Starts a server on `port` and waits (at most 10 s) until it answers.
    fn start_on(port: u16) -> Result<RedisServer, String> {
        let mut command = Command::new("redis-server");
        die_with_parent(&mut command);
        let mut child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().expect("redis-server output");
                return Err(format!(
                    "redis-server exited with {status}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let mut server = RedisServer {
                    child: Some(child),
                    port,
                };
                // The port was free when found, but another test may have started its own
                // server on it first (ours then fails to bind): answer only for our process.
                let pid = server.child.as_ref().map(Child::id);
                let error = match server.try_cli(&["INFO", "server"]) {
                    Ok(info) if info_pid(&info) == pid => return Ok(server),
                    Ok(_) => format!("port {port} was taken by another redis-server"),
                    Err(e) => format!("redis-server did not answer INFO: {e}"),
                };
                server.kill();
                return Err(error);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-server did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        self.try_cli_stdin(args, None)
    }

    fn try_cli_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(input.map(|_| "-x"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run redis-cli: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        if let Some(input) = input {
            stdin
                .write_all(input)
                .map_err(|e| format!("cannot write to redis-cli: {e}"))?;
        }
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| format!("redis-cli: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || stdout.starts_with("ERR") || stdout.starts_with("Could not connect") {
            return Err(format!(
                "redis-cli {args:?} failed ({}): {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(stdout)
    }

    /// Runs `redis-cli -p PORT ARGS...` and returns its output, trimmed. Panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`RedisServer::cli`], with `input` as the last argument (`redis-cli -x`): for binary
    /// values, e.g. `cli_with_value(&["SET", key], bytes)`.
    pub fn cli_with_value(&self, args: &[&str], input: &[u8]) -> String {
        self.try_cli_stdin(args, Some(input)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `DBSIZE`: how many keys the server holds.
    pub fn dbsize(&self) -> u64 {
        let out = self.cli(&["DBSIZE"]);
        out.parse()
            .unwrap_or_else(|_| panic!("unexpected DBSIZE answer {out:?}"))
    }

    /// Kills the server (SIGKILL) and waits for it; later connections are refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `process_id` line of `INFO server`.
fn info_pid(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

/// Makes the server die with the thread that started it (the test), even when the test process
/// is killed (a timeout) and no `Drop` runs: no orphaned servers.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl is one.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
