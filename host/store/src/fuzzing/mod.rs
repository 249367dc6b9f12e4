//! The fuzz targets' logic, shared by the cargo-fuzz targets in `fuzz/`, by the test that
//! replays their committed corpus (what CI runs), and by the model-based property test.
//!
//! Not part of the API: built for the crate's tests or with the `fuzzing` feature. Each target
//! panics when the store breaks a promise; it never panics on any input otherwise.
//!
//! - [`entry`]: an arbitrary entry file — raw bytes, or a valid entry damaged in a few places —
//!   is planted in a namespace and read back with `get`, `open`, `contains` and `verify`. An
//!   independent check of the format decides what must happen: a valid file is served exactly,
//!   anything else is a miss (or `corrupt` at the end of a read) and is removed.
//! - [`store_ops`]: a sequence of operations (add, get, open, streamed and abandoned writes,
//!   delete, contains, reopen, writes during which an injected disk fault strikes, and the
//!   key-value records of the same namespace: set, get, delete) is run against a namespace and
//!   against [`Model`], which must agree after every step. The model test adds operations the
//!   fuzz input does not encode: damage to an entry file, `verify`, `gc`, `clear`, and writes
//!   and reads through a second handle on the namespace with a smaller entry-size limit.

mod entry;
mod model;
mod store_ops;

pub use entry::entry;
pub use model::Model;
pub use store_ops::{KEYS, MAX_LEN, Op, QUOTA, SECOND_LIMIT, check_ops, decode_ops, store_ops};

/// A little reader of fuzz input: every read succeeds, with zeros past the end.
pub(super) struct Bytes<'a>(pub(super) &'a [u8]);

impl Bytes<'_> {
    pub(super) fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub(super) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::entry::{entry_file, entry_key, header_fools_contains, valid_content};
    use super::*;
    use crate::{FileCache, Key, NamespaceOptions};

    /// Every input of the committed corpus of `target` (`fuzz/corpus/<target>/`).
    fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        inputs.sort();
        assert!(
            inputs.len() >= 10,
            "the corpus of {target} has only {} inputs",
            inputs.len()
        );
        inputs
    }

    #[test]
    fn entry_corpus_replays() {
        for (name, input) in corpus("entry") {
            let r = std::panic::catch_unwind(|| entry(&input));
            assert!(r.is_ok(), "fuzz/corpus/entry/{name} fails");
        }
    }

    #[test]
    fn store_ops_corpus_replays() {
        for (name, input) in corpus("store_ops") {
            if let Err(e) = check_ops(&decode_ops(&input)) {
                panic!("fuzz/corpus/store_ops/{name}: {e}");
            }
        }
    }

    /// The entry target on generated inputs of every mode (valid, damaged, another key, either
    /// header layout), beyond the committed corpus: whatever the file, the store's answer is the
    /// independent check's.
    #[test]
    fn entry_target_on_generated_inputs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400u64 {
            // Half in blocks of 512 bytes (bit 3), most of those spanning several blocks.
            let small_blocks = case & 8 != 0;
            let len = (next() % if small_blocks { 2500 } else { 300 }) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(mode) = data.first_mut() {
                // Mostly valid entries (bit 0), half with a trailing header (bit 2), few edits.
                *mode = (case as u8 & 0b1110) | u8::from(case % 5 != 0);
            }
            if let Some(edits) = data.get_mut(1) {
                *edits = (case % 3) as u8;
            }
            entry(&data);
        }
    }

    #[test]
    fn the_independent_format_check_agrees_with_the_encoder() {
        let key = entry_key();
        let content = b"some content";
        let mut file = entry_file(key, content, false, crate::entry::BLOCK_SHIFT);
        assert_eq!(valid_content(&file, &key), Some(&content[..]));
        assert_eq!(valid_content(&file, &Key::digest(b"other")), None);
        file[70] ^= 1;
        assert_eq!(valid_content(&file, &key), None);
        // With a trailing header, as `create_trailing` writes it.
        let ns_dir = tempfile::tempdir().unwrap();
        let ns = FileCache::open(ns_dir.path())
            .unwrap()
            .namespace("t", NamespaceOptions::default())
            .unwrap();
        let mut w = ns.create_trailing(&key).unwrap();
        w.write(content).unwrap();
        w.commit().unwrap();
        let hex = key.to_string();
        let written = std::fs::read(ns_dir.path().join("t").join(&hex[..2]).join(&hex)).unwrap();
        let mut file = entry_file(key, content, true, crate::entry::BLOCK_SHIFT);
        assert_eq!(file, written, "the model writes what the store writes");
        assert_eq!(valid_content(&file, &key), Some(&content[..]));
        assert!(header_fools_contains(&file, &key));
        file[3] ^= 1;
        assert_eq!(valid_content(&file, &key), None);
    }
}
