//! The host functions both drafts share (`store` and `batch`) and the error mapping, written once
//! for both drafts and for both kinds of bindings (see `crate::run`).

/// The guest's `error` of one set of generated bindings (each has its own type) for an
/// [`KeyValueError`](super::KeyValueError); a trap stays a trap.
macro_rules! wit_error {
    ($g:ident, $err:expr) => {{
        use $crate::keyvalue::KeyValueError;
        use $g::wasi::keyvalue::store::Error as E;
        match $err {
            KeyValueError::NoSuchStore => Ok(E::NoSuchStore),
            KeyValueError::AccessDenied => Ok(E::AccessDenied),
            KeyValueError::Other(m) => Ok(E::Other(m)),
            KeyValueError::Trap(e) => Err(e),
        }
    }};
}

/// `store` (but for the draft's cursor type) and `batch`, for the generated bindings `$g`: `$kw`
/// is `async` or nothing, `$run` runs store work (`run_sync` or `run_async`), `$cursor` is the
/// draft's cursor type, `$position` turns one into a position (`Result<u64, KeyValueError>`) and `$next`
/// a next position into one.
macro_rules! store_and_batch {
    ($g:ident, [$($kw:tt)*], $run:ident, $cursor:ty, $position:path, $next:path) => {
        impl $g::wasi::keyvalue::store::Host for $crate::keyvalue::KeyValueView<'_> {
            $($kw)* fn open(
                &mut self,
                identifier: String,
            ) -> Result<wasmtime::component::Resource<$crate::keyvalue::BucketHandle>, $crate::keyvalue::KeyValueError> {
                self.open_bucket(&identifier)
            }

            fn convert_error(
                &mut self,
                err: $crate::keyvalue::KeyValueError,
            ) -> wasmtime::Result<$g::wasi::keyvalue::store::Error> {
                $crate::keyvalue::host::wit_error!($g, err)
            }
        }

        impl $g::wasi::keyvalue::store::HostBucket for $crate::keyvalue::KeyValueView<'_> {
            $($kw)* fn get(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
                key: String,
            ) -> Result<Option<Vec<u8>>, $crate::keyvalue::KeyValueError> {
                Ok($run!(self.table.get(&b)?.0 => |bucket| bucket.get(&key))?)
            }

            $($kw)* fn set(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
                key: String,
                value: Vec<u8>,
            ) -> Result<(), $crate::keyvalue::KeyValueError> {
                Ok($run!(self.table.get(&b)?.0 => |bucket| bucket.set(&key, &value))?)
            }

            $($kw)* fn delete(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
                key: String,
            ) -> Result<(), $crate::keyvalue::KeyValueError> {
                Ok($run!(self.table.get(&b)?.0 => |bucket| bucket.delete(&key))?)
            }

            $($kw)* fn exists(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
                key: String,
            ) -> Result<bool, $crate::keyvalue::KeyValueError> {
                Ok($run!(self.table.get(&b)?.0 => |bucket| bucket.exists(&key))?)
            }

            $($kw)* fn list_keys(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
                cursor: Option<$cursor>,
            ) -> Result<$g::wasi::keyvalue::store::KeyResponse, $crate::keyvalue::KeyValueError> {
                let from = $position(cursor)?;
                let page = $run!(self.table.get(&b)?.0 => |bucket| bucket.list_keys(from, $crate::keyvalue::PAGE_SIZE))?;
                Ok($g::wasi::keyvalue::store::KeyResponse {
                    keys: page.keys,
                    cursor: page.next.map($next),
                })
            }

            $($kw)* fn drop(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
            ) -> wasmtime::Result<()> {
                self.table.delete(b)?;
                self.ctx.handles.give();
                Ok(())
            }
        }

        impl $g::wasi::keyvalue::batch::Host for $crate::keyvalue::KeyValueView<'_> {
            $($kw)* fn get_many(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
                keys: Vec<String>,
            ) -> Result<Vec<Option<(String, Vec<u8>)>>, $crate::keyvalue::KeyValueError> {
                let max = self.ctx.max_call_bytes;
                $run!(self.table.get(&b)?.0 => |bucket| $crate::keyvalue::work::get_many(bucket, keys, max))
            }

            $($kw)* fn set_many(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
                key_values: Vec<(String, Vec<u8>)>,
            ) -> Result<(), $crate::keyvalue::KeyValueError> {
                Ok($run!(self.table.get(&b)?.0 => |bucket| bucket.set_many(&key_values))?)
            }

            $($kw)* fn delete_many(
                &mut self,
                b: wasmtime::component::Resource<$crate::keyvalue::BucketHandle>,
                keys: Vec<String>,
            ) -> Result<(), $crate::keyvalue::KeyValueError> {
                Ok($run!(self.table.get(&b)?.0 => |bucket| bucket.delete_many(&keys))?)
            }
        }
    };
}

/// A draft's `add_to_linker_sync` and `add_to_linker_async`, over its bindings `sync_gen` and
/// `async_gen`.
macro_rules! add_to_linker_fns {
    () => {
        pub(super) fn add_to_linker_sync<T: 'static>(
            linker: &mut wasmtime::component::Linker<T>,
            getter: fn(&mut T) -> $crate::keyvalue::KeyValueView<'_>,
        ) -> wasmtime::Result<()> {
            $crate::keyvalue::host::add_interfaces!(sync_gen, linker, getter)
        }

        pub(super) fn add_to_linker_async<T: Send + 'static>(
            linker: &mut wasmtime::component::Linker<T>,
            getter: fn(&mut T) -> $crate::keyvalue::KeyValueView<'_>,
        ) -> wasmtime::Result<()> {
            $crate::keyvalue::host::add_interfaces!(async_gen, linker, getter)
        }
    };
}

/// Adds `store`, `atomics` and `batch` of the generated bindings `$g` to `$linker`.
macro_rules! add_interfaces {
    ($g:ident, $linker:ident, $getter:ident) => {{
        use $crate::keyvalue::HasKeyValue;
        use $g::wasi::keyvalue::{atomics, batch, store};
        store::add_to_linker::<T, HasKeyValue>($linker, $getter)?;
        atomics::add_to_linker::<T, HasKeyValue>($linker, $getter)?;
        batch::add_to_linker::<T, HasKeyValue>($linker, $getter)
    }};
}

pub(super) use {add_interfaces, add_to_linker_fns, store_and_batch, wit_error};
