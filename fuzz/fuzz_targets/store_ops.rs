//! Sequences of store operations, some struck by injected disk faults, against a model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| filecache_store::fuzzing::store_ops(data));
