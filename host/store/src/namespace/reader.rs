//! Streamed reads: a reader that checks each block of an entry before it returns any byte of it.

use std::io;

use super::Namespace;
use super::file::{CONTENT_MISMATCH, Lookup, RawEntry, SMALL_ENTRY, TABLE_MISMATCH, Unreadable, read_error};
use crate::entry::{CRC_LEN, Checksum, block_count, table_len};
use crate::sys;
use crate::{EntryReader, Error, Key, Result};

/// The most a single read returns, whatever the caller asks for.
pub const MAX_READ_CHUNK: usize = 1 << 20;
/// How much of the block table a reader holds at a time: the CRCs of 1,024 blocks (64 MiB of
/// content at 64 KiB blocks).
const TABLE_WINDOW: usize = 4096;

impl Namespace {
    /// A reader over the content stored under `key`, or `None` on a miss.
    pub fn open(&self, key: &Key) -> Result<Option<FileReader>> {
        let found = self.lookup_reader(key, true).map(Lookup::found);
        if let Ok(found) = &found {
            self.count_use(found.is_some());
        }
        found
    }

    /// Opens a reader, telling a miss from an entry removed as damaged; `is_use` tells whether
    /// this counts as a use for LRU (`verify` does not). The header and the whole block table
    /// are checked before the reader is returned.
    pub(super) fn lookup_reader(&self, key: &Key, is_use: bool) -> Result<Lookup<FileReader>> {
        self.lookup_checked(key)?.then(|entry| {
            let (fh, layout) = (entry.header, entry.layout);
            let mut reader = FileReader {
                ns: self.for_operation(),
                entry,
                start: layout.content_start(),
                table_start: layout.table_start(fh.header.len),
                len: fh.header.len,
                shift: fh.block_shift,
                block: Vec::new(),
                block_at: 0,
                served: 0,
                crcs: Vec::new(),
                crcs_from: 0,
                first: None,
                failed: None,
            };
            match reader.check_table(fh.header.crc) {
                Ok(()) => {}
                Err(Unreadable::Damaged(reason)) => {
                    return Ok(self.discard(&key.hex(), reader.entry.checked(), reason));
                }
                Err(Unreadable::Io(e)) => return Err(read_error(&key.hex(), e)),
            }
            if is_use {
                self.touch(&reader.entry.file, &reader.entry.meta);
            }
            Ok(Lookup::Found(reader))
        })
    }
}

/// A verifying reader over one entry, from [`Namespace::open`]. Also an [`io::Read`].
///
/// The entry's header and block table are checked when it is opened. Each block of the content
/// (64 KiB) is read whole and checked against its CRC32C before any byte of it is returned: a
/// block that does not match ends the read with [`Error::Corrupt`] (and the entry is removed),
/// and none of its bytes is ever returned, so every byte a reader returns is a byte that was
/// written. A reader holds at most one block (a partly returned one, or the only block of a small
/// entry, read at open with its table and checked by the first read) and a 4 KiB window of the
/// block table, whatever the entry's size.
pub struct FileReader {
    ns: Namespace,
    /// The entry file, its header checked.
    entry: RawEntry,
    /// Where the content starts in the file.
    start: u64,
    /// Where the block table starts in the file.
    table_start: u64,
    len: u64,
    /// The block size, as its base-2 logarithm.
    shift: u8,
    /// The checked block being returned (empty when blocks go straight to the caller), at
    /// `block_at` in the content, of which `served` bytes have been returned.
    block: Vec<u8>,
    block_at: u64,
    served: usize,
    /// A window of the block table: the CRCs of the blocks from `crcs_from`.
    crcs: Vec<u8>,
    crcs_from: u64,
    /// The content of a small entry of one block (at most 16 KiB), read at open together with
    /// its table (they are adjacent: one system call instead of two), not yet checked: it is checked against its CRC
    /// by the first read, before any byte of it is returned.
    first: Option<Vec<u8>>,
    failed: Option<&'static str>,
}

impl FileReader {
    /// The content's length in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// How many bytes of content have been returned.
    fn pos(&self) -> u64 {
        self.block_at + self.served as u64
    }

    fn fail(&mut self, reason: &'static str) -> Error {
        self.failed = Some(reason);
        self.ns.corrupt(&self.entry, reason)
    }

    /// Reads the whole block table a window at a time, checks it against the header's CRC
    /// (`expected`), and keeps its first window.
    fn check_table(&mut self, expected: u32) -> std::result::Result<(), Unreadable> {
        let table_len = table_len(self.len, self.shift);
        if self.len > 0 && self.len <= (1u64 << self.shift).min(SMALL_ENTRY as u64) {
            // A small entry of one block: the content and its CRC in one read (larger, the copy
            // out of the reader would cost more than the system call it saves).
            // Into spare capacity: zeroing the buffer first was pure overhead on every small open.
            let want = (self.len + table_len) as usize;
            let mut both = Vec::with_capacity(want);
            while both.len() < want {
                let at = self.start + both.len() as u64;
                match sys::read_spare(&self.entry.file, &mut both, at) {
                    Ok(0) => return Err(Unreadable::Damaged("truncated")),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Unreadable::from_read(e)),
                }
            }
            let table = both.split_off(self.len as usize);
            if Checksum::of(&table) != expected {
                return Err(Unreadable::Damaged(TABLE_MISMATCH));
            }
            self.crcs = table;
            self.crcs_from = 0;
            self.first = Some(both);
            return Ok(());
        }
        let read = |buf: &mut [u8], at: u64| {
            sys::read_exact_at(&self.entry.file, buf, self.table_start + at).map_err(Unreadable::from_read)
        };
        let mut first = vec![0u8; table_len.min(TABLE_WINDOW as u64) as usize];
        read(&mut first, 0)?;
        let mut crc = Checksum::default();
        crc.update(&first);
        let mut at = first.len() as u64;
        let mut rest = Vec::new();
        while at < table_len {
            rest.resize((table_len - at).min(TABLE_WINDOW as u64) as usize, 0);
            read(&mut rest, at)?;
            crc.update(&rest);
            at += rest.len() as u64;
        }
        if crc.value() != expected {
            return Err(Unreadable::Damaged(TABLE_MISMATCH));
        }
        self.crcs = first;
        self.crcs_from = 0;
        Ok(())
    }

    /// The CRC of block `index`, from the table window (read again where it does not hold it).
    fn crc_of(&mut self, index: u64) -> Result<u32> {
        let held = (self.crcs.len() / CRC_LEN) as u64;
        if index < self.crcs_from || index >= self.crcs_from + held {
            let blocks = block_count(self.len, self.shift);
            let n = blocks.saturating_sub(index).min((TABLE_WINDOW / CRC_LEN) as u64) as usize;
            self.crcs.resize(n * CRC_LEN, 0);
            self.crcs_from = index;
            if let Err(e) = sys::read_exact_at(
                &self.entry.file,
                &mut self.crcs,
                self.table_start + index * CRC_LEN as u64,
            ) {
                self.crcs.clear();
                return Err(self.read_failed(e));
            }
        }
        let i = (index - self.crcs_from) as usize * CRC_LEN;
        match self.crcs.get(i..i + CRC_LEN) {
            Some(crc) => Ok(u32::from_le_bytes(crc.try_into().expect("4 bytes"))),
            None => Err(self.fail("truncated")),
        }
    }

    fn read_failed(&mut self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.fail("truncated")
        } else {
            Error::io(format!("cannot read entry {}", self.entry.key()), e)
        }
    }

    /// Reads the whole blocks of content at `at` (a block boundary) into `dst`, and checks each
    /// against its CRC. On failure `dst` is zeroed: nothing unchecked is left in it.
    fn read_blocks(&mut self, at: u64, dst: &mut [u8]) -> Result<()> {
        if let Err(e) = sys::read_exact_at(&self.entry.file, dst, self.start + at) {
            dst.fill(0);
            return Err(self.read_failed(e));
        }
        let block_len = 1usize << self.shift;
        let first = at >> self.shift;
        let mut result = Ok(());
        for (i, block) in dst.chunks(block_len).enumerate() {
            match self.crc_of(first + i as u64) {
                Ok(crc) if crc == Checksum::of(block) => {}
                Ok(_) => {
                    result = Err(self.fail(CONTENT_MISMATCH));
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            dst.fill(0);
        }
        result
    }

    /// Reads into `buf`, returning how many bytes: as many as it holds, fewer only at the end of
    /// the content; 0 at the end. Every byte returned is from a block that was checked whole
    /// against its CRC before any byte of it was returned; a block that fails ends the read with
    /// [`Error::Corrupt`] (and every later call answers the same).
    pub fn read_into(&mut self, buf: &mut [u8]) -> Result<usize> {
        if let Some(reason) = self.failed {
            return Err(Error::Corrupt {
                key: self.entry.key().to_string(),
                reason,
            });
        }
        let want = (buf.len() as u64).min(self.len - self.pos()) as usize;
        let block_len = 1usize << self.shift;
        let mut got = 0;
        while got < want {
            if self.served < self.block.len() {
                let n = (self.block.len() - self.served).min(want - got);
                buf[got..got + n].copy_from_slice(&self.block[self.served..self.served + n]);
                self.served += n;
                got += n;
                continue;
            }
            if let Some(mut first) = self.first.take() {
                // The one block, read at open: checked before any byte of it is returned.
                if Checksum::of(&first) != self.crc_of(0)? {
                    first.fill(0);
                    return Err(self.fail(CONTENT_MISMATCH));
                }
                self.block = first;
                self.block_at = 0;
                self.served = 0;
                continue;
            }
            let next = self.pos();
            let left = self.len - next;
            let room = (want - got) as u64;
            if room >= left.min(block_len as u64) {
                // Whole blocks, straight into the caller's buffer (no copy).
                let n = if room >= left {
                    left
                } else {
                    room >> self.shift << self.shift
                } as usize;
                self.read_blocks(next, &mut buf[got..got + n])?;
                self.block.clear();
                self.block_at = next + n as u64;
                self.served = 0;
                got += n;
                continue;
            }
            // Part of a block: it is read whole into the reader, checked, and returned from there.
            let mut block = std::mem::take(&mut self.block);
            block.resize(left.min(block_len as u64) as usize, 0);
            let read = self.read_blocks(next, &mut block);
            self.block = block;
            if let Err(e) = read {
                self.block.clear();
                return Err(e);
            }
            self.block_at = next;
            self.served = 0;
        }
        Ok(got)
    }

    /// Reads at most `max` bytes (never more than 1 MiB); an empty vector at the end.
    pub fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let want = (max.min(MAX_READ_CHUNK) as u64).min(self.len - self.pos()) as usize;
        let mut buf = vec![0u8; want];
        let n = self.read_into(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl EntryReader for FileReader {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        FileReader::read_chunk(self, max)
    }
}

impl io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_into(buf).map_err(io::Error::from)
    }
}
