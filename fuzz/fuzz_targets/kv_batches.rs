//! Sequences of key-value operations (batches above all) on real SQLite buckets, against a model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| filecache_kv::fuzzing::kv_batches(data));
