//! `wasi:keyvalue@0.2.0-draft2`: `store` (string cursors), `atomics` (`increment` by an `s64`,
//! the `cas` resource and `swap`), `batch`.

use wasmtime::component::Resource;

use super::host::{add_to_linker_fns, store_and_batch, wit_error};
use super::{BucketHandle, CasHandle, KeyValueError, KeyValueView, work};
use crate::run::{run_async, run_sync};

mod sync_gen {
    wasmtime::component::bindgen!({
        path: "wit/deps/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::keyvalue::BucketHandle,
            "wasi:keyvalue/atomics.cas": crate::keyvalue::CasHandle,
        },
        trappable_error_type: { "wasi:keyvalue/store.error" => crate::keyvalue::KeyValueError },
    });
}

mod async_gen {
    wasmtime::component::bindgen!({
        path: "wit/deps/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::keyvalue::BucketHandle,
            "wasi:keyvalue/atomics.cas": crate::keyvalue::CasHandle,
        },
        trappable_error_type: { "wasi:keyvalue/store.error" => crate::keyvalue::KeyValueError },
    });
}

/// The host traits of one set of generated bindings; `$kw` is `async` or nothing, `$run` runs
/// store work (`run_sync` or `run_async`).
macro_rules! host_impl {
    ($g:ident, [$($kw:tt)*], $run:ident) => {
        store_and_batch!($g, [$($kw)*], $run, String, work::parse_cursor, work::format_cursor);

        impl $g::wasi::keyvalue::atomics::HostCas for KeyValueView<'_> {
            $($kw)* fn new(&mut self, b: Resource<BucketHandle>, key: String) -> Result<Resource<CasHandle>, KeyValueError> {
                // Read for its version only: the handle never holds the value.
                let k = key.clone();
                let cas = $run!(self.table.get(&b)?.0 => |bucket| bucket.cas(&k))?;
                let handle = CasHandle { version: cas.version(), bucket: self.bucket(&b)?, key };
                self.push(handle)
            }

            /// The value now. When it is no longer the version the handle holds, the handle takes
            /// the new version: `swap` then succeeds only if the value is still the one returned
            /// here.
            $($kw)* fn current(&mut self, c: Resource<CasHandle>) -> Result<Option<Vec<u8>>, KeyValueError> {
                let cas = {
                    let h = self.table.get(&c)?;
                    let key = h.key.clone();
                    $run!(h.bucket => |bucket| bucket.cas(&key))?
                };
                self.table.get_mut(&c)?.version = cas.version();
                Ok(cas.current().map(<[u8]>::to_vec))
            }

            $($kw)* fn drop(&mut self, c: Resource<CasHandle>) -> wasmtime::Result<()> {
                self.table.delete(c)?;
                self.ctx.handles.give();
                Ok(())
            }
        }

        impl $g::wasi::keyvalue::atomics::Host for KeyValueView<'_> {
            $($kw)* fn increment(&mut self, b: Resource<BucketHandle>, key: String, delta: i64) -> Result<i64, KeyValueError> {
                Ok($run!(self.table.get(&b)?.0 => |bucket| bucket.increment_i64(&key, delta))?)
            }

            $($kw)* fn swap(
                &mut self,
                c: Resource<CasHandle>,
                value: Vec<u8>,
            ) -> wasmtime::Result<Result<(), $g::wasi::keyvalue::atomics::CasError>> {
                use $g::wasi::keyvalue::atomics::CasError;
                let CasHandle { bucket, key, version } = match self.remove(c) {
                    Ok(h) => h,
                    Err(KeyValueError::Trap(e)) => return Err(e),
                    Err(e) => return Ok(Err(CasError::StoreError(wit_error!($g, e)?))),
                };
                let k = key.clone();
                let swapped = $run!(bucket => |bucket| bucket.engine().swap(&k, version, &value));
                match swapped {
                    Ok(Ok(())) => Ok(Ok(())),
                    Ok(Err(now)) => {
                        let handle = CasHandle { bucket, key, version: now.map(|(_, v)| v) };
                        match self.push(handle) {
                            Ok(handle) => Ok(Err(CasError::CasFailed(handle))),
                            Err(e) => Ok(Err(CasError::StoreError(wit_error!($g, e)?))),
                        }
                    }
                    Err(e) => Ok(Err(CasError::StoreError(wit_error!($g, KeyValueError::from(e))?))),
                }
            }
        }
    };
}

host_impl!(sync_gen, [], run_sync);
host_impl!(async_gen, [async], run_async);

add_to_linker_fns!();
