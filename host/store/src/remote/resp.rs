//! The remote tier's connection to Redis: the few commands it sends (`AUTH`, `SELECT`, `PING`,
//! `GETRANGE`, `SET`, `DEL`, and for key-value buckets `SCAN`, `EVALSHA`) in RESP2, over a
//! blocking TCP socket.
//!
//! Written here rather than taken from a client library for two bounds a hostile or stalled
//! server must not get past, which a general client cannot give:
//!
//! - **A deadline per operation.** Each operation (its request and its whole reply) must end by
//!   a deadline set when it starts; every read and write on the socket is given only the time
//!   left, so a server that trickles a byte just inside each socket timeout still fails the
//!   operation on time.
//! - **A bound on every reply.** Each operation says how long a reply it can use (for a value,
//!   the largest entry asked for, with its header and MAC); a bulk reply declaring more is
//!   refused from its length line, before any of it is read, and a line (a status, an error, a
//!   length) longer than [`MAX_LINE`] is refused too. What is read grows with what arrives, never
//!   with what is declared.
//!
//! A connection that failed in any way is dropped by its caller: its state is unknown.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::MIN_TRANSFER_RATE;

/// The longest line (status, error, integer or length) accepted from the server.
pub(super) const MAX_LINE: usize = 4096;

/// How much of a bulk reply is allocated ahead of the bytes that arrive (and read at once).
const BULK_STEP: usize = 256 << 10;

/// The deepest nesting of arrays accepted in a reply.
const MAX_DEPTH: usize = 4;

/// What each element of an array reply costs of the reply's byte bound, on top of its bytes (so
/// that an array of empty elements is bounded too).
const ELEMENT_COST: u64 = 16;

/// A server's reply to one command.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `+OK`, `+PONG`.
    Status(String),
    /// `:n`.
    Integer(i64),
    /// `$n` and its bytes; `None` for the nil reply (`$-1`, and the nil array `*-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` and its elements.
    Array(Vec<Reply>),
    /// `-ERR …`: the server refused the command (the connection is sound). Only
    /// [`RemoteTier::command`](super::RemoteTier::command) answers it as a reply; the tier's own
    /// operations take it as a failure.
    Error(String),
}

/// How a reply failed, for messages: a refusal of the server (`-ERR …`) is an error of the
/// operation, as much as a broken or hostile connection.
fn server_error(message: &str) -> io::Error {
    io::Error::other(format!("the server answered an error: {message}"))
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn timed_out(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no complete answer within the operation's deadline ({} ms, and more only for bytes that moved)",
            timeout.as_millis()
        ),
    )
}

/// The length of an array or bulk reply (`what`) from its header line; `None` for a negative one
/// (the nil reply).
fn length(rest: &str, what: &str) -> io::Result<Option<u64>> {
    let n: i64 = rest
        .parse()
        .map_err(|_| protocol_error(format!("a malformed {what} length {rest:?}")))?;
    Ok(u64::try_from(n).ok())
}

/// One connection to the server.
pub(super) struct Connection {
    stream: TcpStream,
    /// Bytes read from the socket and not consumed yet: `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    /// When the current operation started, how long it is given, and how many bytes it has
    /// moved (each earns time at [`MIN_TRANSFER_RATE`]; see [`left`](Self::left)).
    start: Instant,
    given: Duration,
    moved: u64,
}

impl Connection {
    /// Connects to `host:port` and authenticates (`AUTH`, with `username` if given) and selects
    /// `db`, all by `timeout` from now.
    pub(super) fn connect(
        host: &str,
        port: u16,
        username: Option<&str>,
        password: Option<&str>,
        db: i64,
        timeout: Duration,
    ) -> io::Result<Connection> {
        let start = Instant::now();
        let mut last = None;
        let mut stream = None;
        for addr in (host, port).to_socket_addrs()? {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match stream {
            Some(s) => s,
            None => return Err(last.unwrap_or_else(|| timed_out(timeout))),
        };
        stream.set_nodelay(true)?;
        let mut c = Connection {
            stream,
            buf: Vec::new(),
            pos: 0,
            start,
            given: timeout,
            moved: 0,
        };
        if let Some(password) = password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            c.exchange(&args, 0)?;
        }
        if db != 0 {
            c.exchange(&[b"SELECT", db.to_string().as_bytes()], 0)?;
        }
        Ok(c)
    }

    /// Sends the command `args` and reads its reply, all within `timeout` from now, plus the
    /// time the bytes moved so far take at [`MIN_TRANSFER_RATE`]; a bulk reply longer than
    /// `max_bulk` bytes is refused unread.
    pub(super) fn query(&mut self, args: &[&[u8]], max_bulk: u64, timeout: Duration) -> io::Result<Reply> {
        match self.query_any(args, max_bulk, timeout)? {
            Reply::Error(message) => Err(server_error(&message)),
            reply => Ok(reply),
        }
    }

    /// As [`query`](Self::query), but an error reply of the server is answered as
    /// [`Reply::Error`]; `max_bulk` bounds the bytes of every bulk string in the reply together
    /// (and each array element costs [`ELEMENT_COST`] of it).
    pub(super) fn query_any(&mut self, args: &[&[u8]], max_bulk: u64, timeout: Duration) -> io::Result<Reply> {
        self.start = Instant::now();
        self.given = timeout;
        self.moved = 0;
        self.send(args)?;
        let mut budget = max_bulk;
        self.reply(max_bulk, &mut budget, 0)
    }

    fn exchange(&mut self, args: &[&[u8]], max_bulk: u64) -> io::Result<Reply> {
        self.send(args)?;
        let mut budget = max_bulk;
        match self.reply(max_bulk, &mut budget, 0)? {
            Reply::Error(message) => Err(server_error(&message)),
            reply => Ok(reply),
        }
    }

    /// The time left before the operation's deadline: its timeout, plus the time the bytes it
    /// moved so far would take at [`MIN_TRANSFER_RATE`] (so a large value moving at a fair
    /// rate is not cut short, and a trickle gains nothing); an error once it has passed.
    fn left(&self) -> io::Result<Duration> {
        let deadline = self.start + self.given + transfer_time(self.moved);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(self.given));
        }
        Ok(left)
    }

    /// Writes the command, each write given only the time left.
    fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut head = format!("*{}\r\n", args.len()).into_bytes();
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(args.len() * 3);
        let mut lengths = Vec::with_capacity(args.len());
        for a in args {
            lengths.push(format!("${}\r\n", a.len()).into_bytes());
        }
        for (a, len) in args.iter().zip(&lengths) {
            pieces.push(len);
            pieces.push(a);
            pieces.push(b"\r\n");
        }
        // Small pieces are gathered into one write; a large argument (a value) is written
        // from where it is, not copied.
        for piece in pieces {
            if piece.len() < BULK_STEP {
                head.extend_from_slice(piece);
                continue;
            }
            self.write_all(&std::mem::take(&mut head))?;
            self.write_all(piece)?;
        }
        self.write_all(&head)
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.stream.set_write_timeout(Some(self.left()?))?;
            match self.stream.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    self.moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(timed_out(self.given)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads more bytes into the buffer, given only the time left; an error at end of stream.
    fn fill(&mut self) -> io::Result<()> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        let n = self.read_some(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads at least one byte into `into`, given only the time left; an error at end of
    /// stream.
    fn read_some(&mut self, into: &mut [u8]) -> io::Result<usize> {
        loop {
            self.stream.set_read_timeout(Some(self.left()?))?;
            match self.stream.read(into) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ));
                }
                Ok(n) => {
                    self.moved += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(timed_out(self.given)),
                Err(e) => return Err(e),
            }
        }
    }

    /// One line, without its CRLF; at most [`MAX_LINE`] bytes.
    fn line(&mut self) -> io::Result<String> {
        let mut searched = self.pos;
        loop {
            if let Some(at) = self.buf[searched..].windows(2).position(|w| w == b"\r\n") {
                let end = searched + at;
                let line = String::from_utf8_lossy(&self.buf[self.pos..end]).into_owned();
                self.pos = end + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > MAX_LINE {
                return Err(protocol_error(format!("a reply line longer than {MAX_LINE} bytes")));
            }
            // Where the search resumes (a CR may end what is there), from the unread start,
            // which `fill` may move.
            let resume = self.buf.len().saturating_sub(1).max(self.pos) - self.pos;
            self.fill()?;
            searched = self.pos + resume;
        }
    }

    /// Whether every byte the server sent was part of a reply: a connection with more (a
    /// reply nobody asked for) is not used again.
    pub(super) fn is_clean(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Reads one reply, its bulk strings taking at most `budget` bytes (of `max_bulk` asked
    /// for), nested at most [`MAX_DEPTH`] deep.
    fn reply(&mut self, max_bulk: u64, budget: &mut u64, depth: usize) -> io::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            "*" => {
                let Some(n) = length(rest, "array")? else {
                    return Ok(Reply::Bulk(None));
                };
                if depth >= MAX_DEPTH {
                    return Err(protocol_error(format!("arrays nested deeper than {MAX_DEPTH}")));
                }
                let cost = n.saturating_mul(ELEMENT_COST);
                if cost > *budget {
                    return Err(protocol_error(format!(
                        "an array of {n} elements in a reply of at most {max_bulk} bytes"
                    )));
                }
                *budget -= cost;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.reply(max_bulk, budget, depth + 1)?);
                }
                Ok(Reply::Array(items))
            }
            ":" => rest
                .parse()
                .map(Reply::Integer)
                .map_err(|_| protocol_error(format!("a malformed integer reply {rest:?}"))),
            "$" => {
                let Some(len) = length(rest, "bulk")? else {
                    return Ok(Reply::Bulk(None));
                };
                if len > *budget {
                    return Err(protocol_error(format!(
                        "a reply of {len} bytes to a request for at most {max_bulk}"
                    )));
                }
                *budget -= len;
                let len = usize::try_from(len)
                    .map_err(|_| protocol_error(format!("a reply of {len} bytes, too large to hold here")))?;
                self.bulk(len).map(|b| Reply::Bulk(Some(b)))
            }
            _ => Err(protocol_error(format!(
                "an unexpected reply {:?}",
                line.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// `len` bytes and their CRLF. The buffer grows with what arrives.
    fn bulk(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let buffered = (self.buf.len() - self.pos).min(len);
        let mut out = Vec::with_capacity(len.min(BULK_STEP).max(buffered));
        out.extend_from_slice(&self.buf[self.pos..self.pos + buffered]);
        self.pos += buffered;
        // (Read through a zeroed scratch buffer rather than into `out` resized: `vec![0; n]` is
        // one zeroed allocation, where `resize` fills byte by byte in an unoptimised build.)
        let mut scratch = vec![0u8; (len - out.len()).min(BULK_STEP)];
        while out.len() < len {
            let want = (len - out.len()).min(scratch.len());
            let n = self.read_some(&mut scratch[..want])?;
            out.extend_from_slice(&scratch[..n]);
        }
        while self.buf.len() - self.pos < 2 {
            self.fill()?;
        }
        if &self.buf[self.pos..self.pos + 2] != b"\r\n" {
            return Err(protocol_error("a bulk reply not ended by CRLF".into()));
        }
        self.pos += 2;
        Ok(out)
    }
}

/// How long `bytes` take at [`MIN_TRANSFER_RATE`].
fn transfer_time(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / MIN_TRANSFER_RATE as f64)
}

/// Whether a socket error is its timeout expiring (`WouldBlock` on Unix, `TimedOut` on Windows).
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}
