//! Streaming access to entries: [`Reader`] and [`Writer`].

use std::cell::OnceCell;
use std::io;

use crate::{Error, MAX_CHUNK, raw};

/// How many bytes a [`Writer`] gathers before it hands them to the host.
const WRITE_BUFFER: usize = 64 << 10;

/// The most [`Reader::read_all`] reserves up front from the entry's announced size.
const MAX_PREALLOC: u64 = 64 << 20;

/// A stream over one entry's content, made by [`open`](crate::open).
///
/// Implements [`io::Read`], asking the host for at most 1 MiB ([`MAX_CHUNK`]) per call. The host
/// checks each block of the content (64 KiB) before it returns any byte of it: the first read
/// that touches a damaged block fails with [`Error::Corrupt`] (reported through `io::Read` as
/// [`io::ErrorKind::InvalidData`] with the `Error` inside), so every byte returned is a byte that
/// was written. Only a reader that reached the end (a read returned `Ok(0)`) has seen the whole
/// content, so read to the end, as [`Read::read_to_end`](io::Read::read_to_end) and
/// [`Reader::read_all`] do.
///
/// Dropping the reader closes it and gives its handle back to the host.
///
/// ```no_run
/// use std::io::Read;
/// use filecache_guest::{open, Key};
///
/// let key = Key::from_parts(&[b"log"]);
/// if let Some(mut reader) = open(&key)? {
///     let mut text = String::new();
///     reader.read_to_string(&mut text)?;
///     println!("{} bytes: {text}", text.len());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Reader {
    inner: raw::Reader,
    size: OnceCell<u64>,
    state: ReadState,
}

impl Reader {
    pub(crate) fn new(inner: raw::Reader) -> Reader {
        Reader {
            inner,
            size: OnceCell::new(),
            state: ReadState::default(),
        }
    }

    /// The entry's content length in bytes (asked of the host once).
    ///
    /// ```no_run
    /// # let key = filecache_guest::Key::from_parts(&[]);
    /// if let Some(reader) = filecache_guest::open(&key)? {
    ///     println!("{key} holds {} bytes", reader.size());
    /// }
    /// # Ok::<(), filecache_guest::Error>(())
    /// ```
    pub fn size(&self) -> u64 {
        *self.size.get_or_init(|| self.inner.size())
    }

    /// Reads the rest of the entry, in chunks of at most 1 MiB, and closes the reader.
    ///
    /// ```no_run
    /// # let key = filecache_guest::Key::from_parts(&[]);
    /// if let Some(reader) = filecache_guest::open(&key)? {
    ///     let content: Vec<u8> = reader.read_all()?;
    /// }
    /// # Ok::<(), filecache_guest::Error>(())
    /// ```
    pub fn read_all(mut self) -> Result<Vec<u8>, Error> {
        let mut content = Vec::with_capacity(self.size().min(MAX_PREALLOC) as usize);
        let inner = &self.inner;
        self.state.read_to_end(&mut content, |len| Ok(inner.read(len)?))?;
        Ok(content)
    }
}

impl io::Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let inner = &self.inner;
        Ok(self.state.read(buf, |len| Ok(inner.read(len)?))?)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let inner = &self.inner;
        Ok(self.state.read_to_end(buf, |len| Ok(inner.read(len)?))?)
    }
}

/// The host-independent part of [`Reader`], so that it can be tested natively.
#[derive(Debug, Default)]
struct ReadState {
    /// Bytes the host returned beyond what the caller's buffer could take (only if the host
    /// answers with more than was asked for), and how many of them were handed out.
    spill: Vec<u8>,
    spill_pos: usize,
    /// The host answered with an empty list: the end of the entry.
    eof: bool,
}

impl ReadState {
    fn read(&mut self, buf: &mut [u8], mut fetch: impl FnMut(u64) -> Result<Vec<u8>, Error>) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.spill_pos < self.spill.len() {
            let spill = &self.spill[self.spill_pos..];
            let n = spill.len().min(buf.len());
            buf[..n].copy_from_slice(&spill[..n]);
            self.spill_pos += n;
            if self.spill_pos == self.spill.len() {
                self.spill = Vec::new();
                self.spill_pos = 0;
            }
            return Ok(n);
        }
        if self.eof {
            return Ok(0);
        }
        let chunk = fetch(buf.len().min(MAX_CHUNK) as u64)?;
        if chunk.is_empty() {
            self.eof = true;
            return Ok(0);
        }
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n < chunk.len() {
            self.spill = chunk;
            self.spill_pos = n;
        }
        Ok(n)
    }

    fn read_to_end(
        &mut self,
        out: &mut Vec<u8>,
        mut fetch: impl FnMut(u64) -> Result<Vec<u8>, Error>,
    ) -> Result<usize, Error> {
        let start = out.len();
        out.extend_from_slice(&self.spill[self.spill_pos..]);
        self.spill = Vec::new();
        self.spill_pos = 0;
        while !self.eof {
            let chunk = fetch(MAX_CHUNK as u64)?;
            if chunk.is_empty() {
                self.eof = true;
            } else if out.is_empty() && out.capacity() < chunk.len() {
                *out = chunk;
            } else {
                out.extend_from_slice(&chunk);
            }
        }
        Ok(out.len() - start)
    }
}

/// A new entry being streamed in, made by [`create`](crate::create).
///
/// Implements [`io::Write`]. Small writes are gathered into a 64 KiB buffer, so that many tiny
/// writes do not each cross into the host; large ones go to the host in chunks of at most 1 MiB.
/// [`flush`](io::Write::flush) hands the buffer to the host but makes nothing visible: only
/// [`Writer::commit`] does. A writer dropped without `commit` (or [`discard`](Writer::discard)ed)
/// leaves nothing behind.
///
/// Errors surface through `io::Write` as [`io::Error`]s carrying the cache [`Error`]. Once the
/// entry passes the namespace's size limit every write and the commit fail with
/// [`Error::TooLarge`].
///
/// ```no_run
/// use std::io::Write;
/// use filecache_guest::{create, Key};
///
/// let mut writer = create(&Key::from_parts(&[b"squares"]))?;
/// for i in 0u64..10_000 {
///     writer.write_all(&(i * i).to_le_bytes())?;
/// }
/// writer.commit()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Writer {
    inner: raw::Writer,
    state: WriteBuffer,
}

impl Writer {
    pub(crate) fn new(inner: raw::Writer) -> Writer {
        Writer {
            inner,
            state: WriteBuffer::default(),
        }
    }

    /// Hands any buffered bytes to the host, then makes the entry visible under its key,
    /// atomically, replacing any earlier entry.
    ///
    /// ```no_run
    /// use std::io::Write;
    ///
    /// let mut writer = filecache_guest::create(&filecache_guest::Key::from_parts(&[b"k"]))?;
    /// writer.write_all(b"content")?;
    /// writer.commit()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit(mut self) -> Result<(), Error> {
        let inner = &self.inner;
        self.state.flush(|bytes| Ok(inner.write(bytes)?))?;
        Ok(raw::Writer::commit(self.inner)?)
    }

    /// `write_all` with the cache's own error.
    pub(crate) fn write_bytes(&mut self, mut data: &[u8]) -> Result<(), Error> {
        let inner = &self.inner;
        while !data.is_empty() {
            let n = self.state.write(data, |bytes| Ok(inner.write(bytes)?))?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Abandons the entry: nothing is stored. The same as dropping the writer.
    ///
    /// ```no_run
    /// let writer = filecache_guest::create(&filecache_guest::Key::from_parts(&[b"k"]))?;
    /// writer.discard();
    /// # Ok::<(), filecache_guest::Error>(())
    /// ```
    pub fn discard(self) {}
}

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner = &self.inner;
        Ok(self.state.write(buf, |bytes| Ok(inner.write(bytes)?))?)
    }

    fn flush(&mut self) -> io::Result<()> {
        let inner = &self.inner;
        Ok(self.state.flush(|bytes| Ok(inner.write(bytes)?))?)
    }
}

/// The host-independent part of [`Writer`], so that it can be tested natively.
#[derive(Debug, Default)]
struct WriteBuffer {
    buf: Vec<u8>,
}

impl WriteBuffer {
    fn write(&mut self, data: &[u8], mut send: impl FnMut(&[u8]) -> Result<(), Error>) -> Result<usize, Error> {
        if self.buf.len() + data.len() > WRITE_BUFFER {
            self.flush(&mut send)?;
        }
        if data.len() >= WRITE_BUFFER {
            let n = data.len().min(MAX_CHUNK);
            send(&data[..n])?;
            return Ok(n);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(WRITE_BUFFER);
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self, mut send: impl FnMut(&[u8]) -> Result<(), Error>) -> Result<(), Error> {
        if !self.buf.is_empty() {
            send(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A fake host entry answering reads the way `reader.read` is specified to.
    struct FakeEntry {
        content: Vec<u8>,
        pos: usize,
        /// Answer `corrupt` instead of the read that would reach the end.
        corrupt: bool,
        /// Ignore `len` and return this many bytes (a misbehaving host).
        overshoot: Option<usize>,
        asked: Vec<u64>,
    }

    impl FakeEntry {
        fn new(len: usize) -> FakeEntry {
            FakeEntry {
                content: (0..len).map(|i| (i % 251) as u8).collect(),
                pos: 0,
                corrupt: false,
                overshoot: None,
                asked: Vec::new(),
            }
        }

        fn read(&mut self, len: u64) -> Result<Vec<u8>, Error> {
            self.asked.push(len);
            assert!(len as usize <= MAX_CHUNK, "asked for {len} bytes");
            let want = self.overshoot.unwrap_or(len as usize);
            let end = (self.pos + want).min(self.content.len());
            if self.corrupt && end == self.content.len() && end > self.pos {
                return Err(Error::Corrupt);
            }
            let chunk = self.content[self.pos..end].to_vec();
            self.pos = end;
            Ok(chunk)
        }
    }

    #[test]
    fn reads_in_chunks_up_to_the_end() {
        let mut entry = FakeEntry::new(3 * MAX_CHUNK + 5);
        let mut state = ReadState::default();
        let mut out = Vec::new();
        let n = state.read_to_end(&mut out, |len| entry.read(len)).unwrap();
        assert_eq!(n, entry.content.len());
        assert_eq!(out, entry.content);
        assert_eq!(entry.asked, vec![MAX_CHUNK as u64; 5]);
        // The end is sticky: the host is not asked again.
        let mut buf = [0u8; 10];
        assert_eq!(state.read(&mut buf, |_| panic!("asked again")), Ok(0));
    }

    #[test]
    fn small_buffers_ask_for_small_reads() {
        let mut entry = FakeEntry::new(10);
        let mut state = ReadState::default();
        let mut buf = [0u8; 4];
        let mut out = Vec::new();
        loop {
            let n = state.read(&mut buf, |len| entry.read(len)).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, entry.content);
        assert_eq!(entry.asked, vec![4, 4, 4, 4]);
        assert_eq!(state.read(&mut [], |_| panic!("asked for nothing")), Ok(0));
    }

    #[test]
    fn huge_buffers_ask_for_at_most_one_mib() {
        let mut entry = FakeEntry::new(2 * MAX_CHUNK);
        let mut state = ReadState::default();
        let mut buf = vec![0u8; 3 * MAX_CHUNK];
        assert_eq!(state.read(&mut buf, |len| entry.read(len)), Ok(MAX_CHUNK));
        assert_eq!(entry.asked, vec![MAX_CHUNK as u64]);
    }

    #[test]
    fn extra_bytes_from_the_host_are_kept() {
        let mut entry = FakeEntry::new(100);
        entry.overshoot = Some(30);
        let mut state = ReadState::default();
        let mut buf = [0u8; 8];
        let mut out = Vec::new();
        for _ in 0..5 {
            let n = state.read(&mut buf, |len| entry.read(len)).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        state.read_to_end(&mut out, |len| entry.read(len)).unwrap();
        assert_eq!(out, entry.content);
    }

    #[test]
    fn corrupt_entries_are_invalid_data() {
        let mut entry = FakeEntry::new(MAX_CHUNK + 10);
        entry.corrupt = true;
        let mut state = ReadState::default();
        let mut out = Vec::new();
        let err = state.read_to_end(&mut out, |len| entry.read(len)).unwrap_err();
        assert_eq!(err, Error::Corrupt);
        assert_eq!(out.len(), MAX_CHUNK);
        let io_err = io::Error::from(err);
        assert_eq!(io_err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn small_writes_are_buffered() {
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut state = WriteBuffer::default();
        let mut expected = Vec::new();
        for i in 0..100_000u32 {
            let bytes = [(i % 256) as u8; 3];
            expected.extend_from_slice(&bytes);
            let n = state
                .write(&bytes, |b| {
                    sent.push(b.to_vec());
                    Ok(())
                })
                .unwrap();
            assert_eq!(n, 3);
        }
        state
            .flush(|b| {
                sent.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(sent.len(), expected.len().div_ceil(WRITE_BUFFER - WRITE_BUFFER % 3));
        assert!(sent.iter().all(|chunk| chunk.len() <= WRITE_BUFFER));
        assert_eq!(sent.concat(), expected);
        // Flushing an empty buffer sends nothing.
        state.flush(|_| panic!("sent an empty write")).unwrap();
    }

    #[test]
    fn large_writes_go_straight_through_in_chunks() {
        let mut sent: Vec<usize> = Vec::new();
        let mut state = WriteBuffer::default();
        let mut send = |b: &[u8]| {
            sent.push(b.len());
            Ok(())
        };
        assert_eq!(state.write(b"head", &mut send), Ok(4));
        let big = vec![1u8; 2 * MAX_CHUNK + 1];
        let mut rest = &big[..];
        while !rest.is_empty() {
            let n = state.write(rest, &mut send).unwrap();
            rest = &rest[n..];
        }
        state.flush(&mut send).unwrap();
        assert_eq!(sent, vec![4, MAX_CHUNK, MAX_CHUNK, 1]);
    }

    #[test]
    fn failed_writes_consume_nothing() {
        let mut state = WriteBuffer::default();
        let mut fail = VecDeque::from([Err(Error::TooLarge { limit: 5 })]);
        let mut send = |_: &[u8]| fail.pop_front().unwrap_or(Ok(()));
        assert_eq!(state.write(&[0; 10], &mut send), Ok(10));
        let err = state.write(&vec![0; WRITE_BUFFER], &mut send);
        assert_eq!(err, Err(Error::TooLarge { limit: 5 }));
        assert_eq!(state.buf.len(), 10);
    }
}
