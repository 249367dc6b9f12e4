//! The `entry` target: an arbitrary entry file planted in a namespace and read back every way.

use std::path::Path;

use super::Bytes;
use crate::entry::{HEADER_LEN, Header, Layout};
use crate::{Error, FileCache, Key, NamespaceOptions};

/// The key every planted entry is looked up under.
pub(super) fn entry_key() -> Key {
    Key::digest(b"fuzzed entry")
}

/// The format, checked independently of the store's code: the content if `file` is a valid entry
/// for `key`. A file that starts with the magic has its header first (flags 0); any other has it
/// last (flags 1). The header (format version 2) gives the content's length and the block size;
/// the block table follows the content, one CRC32C per block, and its own CRC32C is in the header.
pub(super) fn valid_content<'a>(file: &'a [u8], key: &Key) -> Option<&'a [u8]> {
    if file.len() < HEADER_LEN {
        return None;
    }
    let (h, body, flags) = if file.starts_with(b"FCACHE\r\n") {
        let (h, body) = file.split_at(HEADER_LEN);
        (h, body, 0)
    } else {
        let (body, h) = file.split_at(file.len() - HEADER_LEN);
        (h, body, 1)
    };
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
    let header_crc = crc32c::crc32c_append(crc32c::crc32c(&h[..28]), &h[32..]);
    let shift = h[14];
    let header_ok = h[..8] == *b"FCACHE\r\n"
        && u32_at(8) == 2
        && h[12..14] == [flags, 0]
        && (9..=20).contains(&shift)
        && h[15] == 0
        && u32_at(28) == header_crc
        && h[32..] == *key.as_bytes();
    if !header_ok {
        return None;
    }
    let len = u64::from_le_bytes(h[16..24].try_into().unwrap());
    let block = 1u64 << shift;
    let table_len = len.div_ceil(block) * 4;
    if len.checked_add(table_len) != Some(body.len() as u64) {
        return None;
    }
    let (content, table) = body.split_at(len as usize);
    if u32_at(24) != crc32c::crc32c(table) {
        return None;
    }
    let blocks_ok = content
        .chunks(block as usize)
        .zip(table.chunks(4))
        .all(|(b, crc)| crc32c::crc32c(b).to_le_bytes() == crc);
    blocks_ok.then_some(content)
}

/// An entry file as the store writes it, in blocks of `1 << shift` bytes: the header for
/// `content` under `key`, then `content`, then the block table; or, with `trailing` (and content
/// that neither is empty nor starts with the magic, as the store's writer requires), `content`,
/// the table, then the header.
pub(super) fn entry_file(key: Key, content: &[u8], trailing: bool, shift: u8) -> Vec<u8> {
    let layout = if trailing && !content.is_empty() && !content.starts_with(&crate::entry::MAGIC) {
        Layout::Trailing
    } else {
        Layout::Leading
    };
    crate::entry::encode_file(key, content, layout, shift)
}

/// Builds the entry file a fuzz input describes, and the content it was made from (if it was).
/// First byte: bit 0 set = a valid entry of the rest's content, then damaged by up to 3 edits
/// (byte changes, a truncation, appended bytes); bit 1 set = written under another key; bit 2
/// set = with a trailing header; bit 3 set = in blocks of 512 bytes (the smallest a reader
/// accepts: small inputs span several), else of 64 KiB, as the store writes. Otherwise the rest
/// is the file, raw.
fn planted_file(data: &[u8]) -> (Vec<u8>, Option<&[u8]>) {
    let mut input = Bytes(data);
    let mode = input.u8();
    if mode & 1 == 0 {
        return (input.0.to_vec(), None);
    }
    let edits: Vec<(u8, u16, u8)> = (0..input.u8() % 4)
        .map(|_| (input.u8(), input.u16(), input.u8()))
        .collect();
    let content = input.0;
    let key = if mode & 2 == 0 {
        entry_key()
    } else {
        Key::digest(b"another key")
    };
    let shift = if mode & 8 != 0 {
        crate::entry::MIN_BLOCK_SHIFT
    } else {
        crate::entry::BLOCK_SHIFT
    };
    let mut file = entry_file(key, content, mode & 4 != 0, shift);
    for (kind, pos, value) in edits {
        let at = pos as usize % (file.len() + 1);
        match kind % 3 {
            0 if at < file.len() => file[at] ^= value.max(1),
            1 => file.truncate(at),
            _ => file.extend(std::iter::repeat_n(value, pos as usize % 16 + 1)),
        }
    }
    (file, Some(content))
}

/// Plants `file` as the entry for [`entry_key`] in namespace `ns` of the cache at `root`.
fn plant(root: &Path, ns: &str, file: &[u8]) -> std::path::PathBuf {
    let hex = entry_key().to_string();
    let shard = root.join(ns).join(&hex[..2]);
    std::fs::create_dir_all(&shard).expect("create a fan-out directory");
    let path = shard.join(hex);
    std::fs::write(&path, file).expect("plant an entry file");
    path
}

/// The entry-file target: see the module documentation.
pub fn entry(data: &[u8]) {
    // The header codec: whatever decodes re-encodes to the same bytes.
    if let Some(bytes) = data.get(..HEADER_LEN) {
        let bytes: [u8; HEADER_LEN] = bytes.try_into().unwrap();
        if let Ok(h) = Header::decode(&bytes) {
            assert_eq!(h.encode(), bytes, "a header decoded from bytes it does not encode to");
        }
        for layout in [Layout::Leading, Layout::Trailing] {
            if let Ok(fh) = Header::decode_as(&bytes, layout) {
                let again = fh.header.encode_as(layout, fh.block_shift);
                assert_eq!(again, bytes, "an entry header decoded from bytes it does not encode to");
            }
        }
    }
    let (file, original) = planted_file(data);
    let key = entry_key();
    let expected = valid_content(&file, &key);
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let root = tmp.path().join("cache");
    let cache = FileCache::open(&root).expect("open the cache");
    let ns = cache
        .namespace("fuzz", NamespaceOptions::default())
        .expect("open a namespace");

    plant(&root, "fuzz", &file);
    assert_eq!(
        ns.contains(&key).expect("contains answers"),
        header_fools_contains(&file, &key)
    );
    let path = plant(&root, "fuzz", &file);
    match ns.get(&key).expect("get answers") {
        Some(got) => assert_eq!(Some(&got[..]), expected, "get served bytes of an invalid entry"),
        None => {
            assert!(expected.is_none(), "get missed a valid entry");
            assert!(!path.exists(), "a damaged entry was not removed");
        }
    }

    let path = plant(&root, "fuzz", &file);
    let chunk = (data.len() % 97 + 1) * 13;
    match ns.open(&key).expect("open answers") {
        None => {
            assert!(expected.is_none(), "open missed a valid entry");
            assert!(!path.exists(), "a damaged entry was not removed");
        }
        Some(mut reader) => {
            let mut got = Vec::new();
            let end = loop {
                match reader.read_chunk(chunk) {
                    Ok(c) if c.is_empty() => break Ok(()),
                    Ok(c) => got.extend(c),
                    Err(e) => break Err(e),
                }
            };
            // Whatever the damage, a reader never serves a byte that was not written: what it
            // served, before the end or before `corrupt`, is the start of the original content.
            if let Some(original) = original {
                assert!(
                    original.starts_with(&got),
                    "a reader served a byte that was not written (at {} of the {} served)",
                    got.iter()
                        .zip(original)
                        .position(|(a, b)| a != b)
                        .unwrap_or(original.len()),
                    got.len()
                );
            }
            match end {
                Ok(()) => assert_eq!(Some(&got[..]), expected, "a reader served an invalid entry"),
                Err(Error::Corrupt { .. }) => {
                    assert!(expected.is_none(), "a reader refused a valid entry");
                    assert!(!path.exists(), "a damaged entry was not removed");
                }
                Err(e) => panic!("a reader failed with {e}"),
            }
        }
    }

    plant(&root, "fuzz", &file);
    let report = cache.verify(&mut |_| {}).expect("verify answers");
    assert_eq!(report.checked, 1);
    assert_eq!(report.removed, u64::from(expected.is_none()), "verify judged wrongly");
}

/// `contains` reads only the header: it also accepts an entry whose header is valid but whose
/// content is damaged.
pub(super) fn header_fools_contains(file: &[u8], key: &Key) -> bool {
    if file.len() < HEADER_LEN {
        return false;
    }
    let (h, layout) = if file.starts_with(b"FCACHE\r\n") {
        (&file[..HEADER_LEN], Layout::Leading)
    } else {
        (&file[file.len() - HEADER_LEN..], Layout::Trailing)
    };
    matches!(Header::decode_as(h.try_into().unwrap(), layout),
        Ok(fh) if fh.header.key == *key && fh.file_len() == Some(file.len() as u64))
}
