//! `wasi:keyvalue@0.2.0-draft2`: `store` (string cursors), `atomics` (`increment` by an `s64`,
//! the `cas` resource and `swap`), `batch`.

use wasmtime::component::Resource;

use super::{BucketHandle, CasHandle, Error, HasKeyValue, KeyValueView, blocking, inline, work};

mod sync_gen {
    wasmtime::component::bindgen!({
        path: "wit/deps/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::keyvalue::BucketHandle,
            "wasi:keyvalue/atomics.cas": crate::keyvalue::CasHandle,
        },
        trappable_error_type: { "wasi:keyvalue/store.error" => crate::keyvalue::Error },
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
        trappable_error_type: { "wasi:keyvalue/store.error" => crate::keyvalue::Error },
    });
}

/// The host traits of one set of generated bindings; `$kw` is `async` or nothing, `$run` runs
/// store work (inline, or on a blocking thread).
macro_rules! host_impl {
    ($g:ident, [$($kw:tt)*], $run:ident) => {
        impl $g::wasi::keyvalue::store::Host for KeyValueView<'_> {
            $($kw)* fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, Error> {
                self.open_bucket(&identifier)
            }

            fn convert_error(&mut self, err: Error) -> wasmtime::Result<$g::wasi::keyvalue::store::Error> {
                to_wit_error!($g, err)
            }
        }

        impl $g::wasi::keyvalue::store::HostBucket for KeyValueView<'_> {
            $($kw)* fn get(&mut self, b: Resource<BucketHandle>, key: String) -> Result<Option<Vec<u8>>, Error> {
                $run!(self, b, |bucket| Ok(bucket.get(&key)?))
            }

            $($kw)* fn set(&mut self, b: Resource<BucketHandle>, key: String, value: Vec<u8>) -> Result<(), Error> {
                $run!(self, b, |bucket| Ok(bucket.set(&key, &value)?))
            }

            $($kw)* fn delete(&mut self, b: Resource<BucketHandle>, key: String) -> Result<(), Error> {
                $run!(self, b, |bucket| Ok(bucket.delete(&key)?))
            }

            $($kw)* fn exists(&mut self, b: Resource<BucketHandle>, key: String) -> Result<bool, Error> {
                $run!(self, b, |bucket| Ok(bucket.exists(&key)?))
            }

            $($kw)* fn list_keys(
                &mut self,
                b: Resource<BucketHandle>,
                cursor: Option<String>,
            ) -> Result<$g::wasi::keyvalue::store::KeyResponse, Error> {
                let bucket = self.bucket(&b)?;
                let from = work::parse_cursor(cursor)?;
                let page = $run!(move || Ok(bucket.list_keys(from, super::PAGE_SIZE)?))?;
                Ok($g::wasi::keyvalue::store::KeyResponse {
                    keys: page.keys,
                    cursor: page.next.map(work::format_cursor),
                })
            }

            $($kw)* fn drop(&mut self, b: Resource<BucketHandle>) -> wasmtime::Result<()> {
                self.table.delete(b)?;
                self.ctx.handles.give();
                Ok(())
            }
        }

        impl $g::wasi::keyvalue::atomics::HostCas for KeyValueView<'_> {
            $($kw)* fn new(&mut self, b: Resource<BucketHandle>, key: String) -> Result<Resource<CasHandle>, Error> {
                let bucket = self.bucket(&b)?;
                // Read for its version only: the handle never holds the value.
                let handle = $run!(move || {
                    let cas = work::cas_read(&bucket, &key)?;
                    Ok(CasHandle { version: cas.version(), bucket, key })
                })?;
                self.push(handle)
            }

            /// The value now. When it is no longer the version the handle holds, the handle takes
            /// the new version: `swap` then succeeds only if the value is still the one returned
            /// here.
            $($kw)* fn current(&mut self, c: Resource<CasHandle>) -> Result<Option<Vec<u8>>, Error> {
                let (bucket, key) = {
                    let h = self.table.get(&c)?;
                    (h.bucket.clone(), h.key.clone())
                };
                let cas = $run!(move || work::cas_read(&bucket, &key))?;
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
            $($kw)* fn increment(&mut self, b: Resource<BucketHandle>, key: String, delta: i64) -> Result<i64, Error> {
                $run!(self, b, |bucket| Ok(bucket.increment_i64(&key, delta)?))
            }

            $($kw)* fn swap(
                &mut self,
                c: Resource<CasHandle>,
                value: Vec<u8>,
            ) -> wasmtime::Result<Result<(), $g::wasi::keyvalue::atomics::CasError>> {
                use $g::wasi::keyvalue::atomics::CasError;
                let CasHandle { bucket, key, version } = match self.remove(c) {
                    Ok(h) => h,
                    Err(Error::Trap(e)) => return Err(e),
                    Err(e) => return Ok(Err(CasError::StoreError(to_wit_error!($g, e)?))),
                };
                let (b2, k2) = (bucket.clone(), key.clone());
                let swapped = $run!(move || Ok(b2.engine().swap(&k2, version, &value)?));
                match swapped {
                    Ok(Ok(())) => Ok(Ok(())),
                    Ok(Err(now)) => {
                        let handle = CasHandle { bucket, key, version: now.map(|(_, v)| v) };
                        match self.push(handle) {
                            Ok(handle) => Ok(Err(CasError::CasFailed(handle))),
                            Err(e) => Ok(Err(CasError::StoreError(to_wit_error!($g, e)?))),
                        }
                    }
                    Err(e) => Ok(Err(CasError::StoreError(to_wit_error!($g, e)?))),
                }
            }
        }

        impl $g::wasi::keyvalue::batch::Host for KeyValueView<'_> {
            $($kw)* fn get_many(
                &mut self,
                b: Resource<BucketHandle>,
                keys: Vec<String>,
            ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
                let bucket = self.bucket(&b)?;
                let max = self.ctx.max_call_bytes;
                $run!(move || work::get_many(&bucket, keys, max))
            }

            $($kw)* fn set_many(&mut self, b: Resource<BucketHandle>, key_values: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
                let bucket = self.bucket(&b)?;
                $run!(move || work::set_many(&bucket, key_values))
            }

            $($kw)* fn delete_many(&mut self, b: Resource<BucketHandle>, keys: Vec<String>) -> Result<(), Error> {
                let bucket = self.bucket(&b)?;
                $run!(move || work::delete_many(&bucket, keys))
            }
        }
    };
}

macro_rules! to_wit_error {
    ($g:ident, $err:expr) => {{
        use $g::wasi::keyvalue::store::Error as E;
        match $err {
            Error::NoSuchStore => Ok(E::NoSuchStore),
            Error::AccessDenied => Ok(E::AccessDenied),
            Error::Other(m) => Ok(E::Other(m)),
            Error::Trap(e) => Err(e),
        }
    }};
}

host_impl!(sync_gen, [], run_sync);
host_impl!(async_gen, [async], run_async);

pub(super) fn add_to_linker_sync<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    getter: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    use sync_gen::wasi::keyvalue::{atomics, batch, store};
    store::add_to_linker::<T, HasKeyValue>(linker, getter)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, getter)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, getter)
}

pub(super) fn add_to_linker_async<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    getter: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    use async_gen::wasi::keyvalue::{atomics, batch, store};
    store::add_to_linker::<T, HasKeyValue>(linker, getter)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, getter)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, getter)
}
