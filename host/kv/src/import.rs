//! Buckets written by earlier versions (one file per record under the namespace's `kv/`) are
//! imported into the database when it is first opened, then their files are removed.
//!
//! ```text
//! <namespace>/kv/<first byte of digest, hex>/<SHA-256 digest of the key, hex>
//!     offset size  field
//!          0    8  magic "FCKVREC\n"
//!          8    4  format version (1), little-endian
//!         12    4  key length in bytes, little-endian
//!         16    8  value length in bytes, little-endian
//!         24    8  generation (random per write)
//!         32    4  CRC32C of the key and the value
//!         36    4  CRC32C of the header (bytes 0..36 and 40..64)
//!         40   24  zero
//!         64    …  key (UTF-8), then value
//! <namespace>/kv-generation   the old read cache's generation (removed too)
//! ```
//!
//! Crash safety: every record is inserted, and the import marked done, in one transaction; the
//! files are removed only after it committed. A crash before the commit leaves the files (the
//! next open imports them again, from the start); a crash after it leaves the database complete
//! and marked, and the next open only finishes removing the files (never importing them again,
//! which could bring back a key deleted since). A record that fails its checks is left out and
//! logged, as a read of it would have reported and removed it; nothing in a record can make the
//! import panic or allocate more than the record file's size.

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;
use filecache_store::Key;
use filecache_store::entry::Checksum;

/// The directory of old records, in the namespace directory.
pub const RECORDS_DIR: &str = "kv";
/// The old read cache's generation file.
pub(crate) const GENERATION_FILE: &str = "kv-generation";
const HEADER_LEN: usize = 64;
const MAGIC: [u8; 8] = *b"FCKVREC\n";
const VERSION: u32 = 1;

fn header_crc(b: &[u8]) -> u32 {
    let mut c = Checksum::default();
    c.update(&b[..36]);
    c.update(&b[40..HEADER_LEN]);
    c.value()
}

/// An old-format record file holding `key` and `value` (for tests of the import, and tools that
/// make such files).
pub fn encode_record(key: &[u8], value: &[u8], generation: u64) -> Vec<u8> {
    let mut crc = Checksum::default();
    crc.update(key);
    crc.update(value);
    let mut b = vec![0u8; HEADER_LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(key.len() as u32).to_le_bytes());
    b[16..24].copy_from_slice(&(value.len() as u64).to_le_bytes());
    b[24..32].copy_from_slice(&generation.to_le_bytes());
    b[32..36].copy_from_slice(&crc.value().to_le_bytes());
    let h = header_crc(&b);
    b[36..40].copy_from_slice(&h.to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    b
}

/// Checks a whole old record file's bytes (named `name`, the hex digest of its key); its key and
/// value. Every length is checked against the bytes there are before it is used.
pub(crate) fn decode_record<'a>(name: &Key, bytes: &'a [u8]) -> Result<(&'a str, &'a [u8]), &'static str> {
    let Some(b) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err("shorter than a header");
    };
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    if b[..8] != MAGIC {
        return Err("not a key-value record (bad magic)");
    }
    if u32_at(36) != header_crc(b) {
        return Err("header checksum mismatch");
    }
    if u32_at(8) != VERSION {
        return Err("unknown format version");
    }
    if b[40..].iter().any(|&x| x != 0) {
        return Err("unknown flags in header");
    }
    let key_len = u64::from(u32_at(12));
    let value_len = u64_at(16);
    let body = &bytes[HEADER_LEN..];
    if key_len.checked_add(value_len) != Some(body.len() as u64) {
        return Err("length does not match the file's size");
    }
    let (key, value) = body.split_at(key_len as usize);
    let mut crc = Checksum::default();
    crc.update(key);
    crc.update(value);
    if crc.value() != u32_at(32) {
        return Err("content checksum mismatch");
    }
    if Key::digest(key) != *name {
        return Err("written under another key");
    }
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8")?;
    Ok((key, value))
}

/// An old record file found in the namespace.
pub(crate) struct OldRecord {
    /// Its path under the namespace directory.
    pub rel: String,
    pub digest: Key,
}

/// Whether the namespace has old records to import or remove.
pub(crate) fn has_old_records(dir: &Dir) -> bool {
    matches!(dir.symlink_metadata(RECORDS_DIR), Ok(m) if m.is_dir())
        || matches!(dir.symlink_metadata(GENERATION_FILE), Ok(m) if m.is_file())
}

/// Every old record file (not read).
pub(crate) fn old_records(dir: &Dir) -> std::io::Result<Vec<OldRecord>> {
    let mut out = Vec::new();
    let top = match dir.symlink_metadata(RECORDS_DIR) {
        Ok(m) if m.is_dir() => dir.open_dir_nofollow(RECORDS_DIR)?,
        _ => return Ok(out),
    };
    for shard in top.entries()? {
        let shard = shard?;
        let name = shard.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) || !shard.file_type()?.is_dir() {
            continue;
        }
        let sub = top.open_dir_nofollow(name)?;
        for entry in sub.entries()? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else { continue };
            if let Some(digest) = Key::from_hex(file_name) {
                out.push(OldRecord {
                    rel: format!("{RECORDS_DIR}/{name}/{file_name}"),
                    digest,
                });
            }
        }
    }
    Ok(out)
}

/// Reads an old record file, refusing one over `most` bytes (never allocating more), and
/// anything but a regular file.
pub(crate) fn read_old(dir: &Dir, rel: &str, most: u64) -> std::io::Result<Result<Vec<u8>, &'static str>> {
    use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
    use std::io::Read;
    let mut oo = cap_std::fs::OpenOptions::new();
    oo.read(true).follow(FollowSymlinks::No);
    let file = match dir.open_with(rel, &oo) {
        Ok(f) => f,
        Err(_) => return Ok(Err("not a regular file")),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err("not a regular file"));
    }
    if meta.len() > most {
        return Ok(Err("larger than any record"));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(most).read_to_end(&mut buf)?;
    Ok(Ok(buf))
}

/// Removes the old records' files and directories (after their import committed).
pub(crate) fn remove_old(dir: &Dir, records: &[OldRecord]) -> std::io::Result<()> {
    for (i, r) in records.iter().enumerate() {
        match dir.remove_file_or_symlink(&r.rel) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if i == 0 {
            crate::fault::check(crate::fault::Point::ImportRemovedOne)?;
        }
    }
    match dir.remove_dir_all(RECORDS_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match dir.remove_file_or_symlink(GENERATION_FILE) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_byte_flip_refused() {
        let rec = encode_record(b"the key", b"the value", 42);
        let name = Key::digest(b"the key");
        assert_eq!(decode_record(&name, &rec), Ok(("the key", &b"the value"[..])));
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x10;
            assert!(decode_record(&name, &bad).is_err(), "flip in byte {i} accepted");
        }
        assert!(decode_record(&name, &rec[..rec.len() - 1]).is_err());
        assert!(decode_record(&Key::digest(b"other"), &rec).is_err());
    }

    /// Issue 22 finding 7: lengths that overflow or exceed the file never panic (the old reader
    /// added `key_len + value_len` unchecked, then sliced).
    #[test]
    fn crafted_lengths_are_refused_without_panicking() {
        for (key_len, value_len) in [
            (u32::MAX, u64::MAX),
            (u32::MAX, 0),
            (0, u64::MAX),
            (7, u64::MAX - 6),
            (100, 0),
            (0, 100),
        ] {
            let mut rec = encode_record(b"the key", b"the value", 1);
            rec[12..16].copy_from_slice(&key_len.to_le_bytes());
            rec[16..24].copy_from_slice(&value_len.to_le_bytes());
            let h = header_crc(&rec);
            rec[36..40].copy_from_slice(&h.to_le_bytes());
            let got = decode_record(&Key::digest(b"the key"), &rec);
            assert_eq!(
                got,
                Err("length does not match the file's size"),
                "{key_len} {value_len}"
            );
        }
    }
}
