//! `wasi:keyvalue@0.2.0-draft`: `store` (u64 cursors), `atomics` (`increment` by a `u64`),
//! `batch`.

use wasmtime::component::Resource;

use super::host::{add_to_linker_fns, store_and_batch};
use super::{BucketHandle, KeyValueError, KeyValueView, work};
use crate::run::{run_async, run_sync};

mod sync_gen {
    wasmtime::component::bindgen!({
        path: "wit/deps/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: trappable },
        with: { "wasi:keyvalue/store.bucket": crate::keyvalue::BucketHandle },
        trappable_error_type: { "wasi:keyvalue/store.error" => crate::keyvalue::KeyValueError },
    });
}

mod async_gen {
    wasmtime::component::bindgen!({
        path: "wit/deps/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": crate::keyvalue::BucketHandle },
        trappable_error_type: { "wasi:keyvalue/store.error" => crate::keyvalue::KeyValueError },
    });
}

/// The host traits of one set of generated bindings; `$kw` is `async` or nothing, `$run` runs
/// store work (`run_sync` or `run_async`).
macro_rules! host_impl {
    ($g:ident, [$($kw:tt)*], $run:ident) => {
        store_and_batch!($g, [$($kw)*], $run, u64, work::position, std::convert::identity);

        impl $g::wasi::keyvalue::atomics::Host for KeyValueView<'_> {
            $($kw)* fn increment(&mut self, b: Resource<BucketHandle>, key: String, delta: u64) -> Result<u64, KeyValueError> {
                Ok($run!(self.table.get(&b)?.0 => |bucket| bucket.increment_u64(&key, delta))?)
            }
        }
    };
}

host_impl!(sync_gen, [], run_sync);
host_impl!(async_gen, [async], run_async);

add_to_linker_fns!();
