//! An arbitrary (or a valid but damaged) entry file, read back every way the store offers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| filecache_store::fuzzing::entry(data));
