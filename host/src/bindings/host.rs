//! The host functions of `filecache:cache/cache`, each written once and stamped into the
//! synchronous and the asynchronous bindings (see `crate::run`): synchronous ones do their
//! storage work on the calling thread, asynchronous ones on tokio's blocking pool.

use wasmtime::component::Resource;

use super::generated;
use super::{CacheError, FileCacheCtx, FileCacheView, ReaderHandle, WriterHandle, committed, key, lock, read_len};
use crate::run::{TaskFailed, run_async, run_sync};

impl From<TaskFailed> for CacheError {
    fn from(e: TaskFailed) -> CacheError {
        CacheError::Trap(wasmtime::Error::new(e))
    }
}

/// A handle slot taken for a writer still being made: given back when dropped (if the writer
/// cannot be made, or if an asynchronous call is dropped while it waits).
struct SlotGuard<'a>(&'a FileCacheCtx);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.give_slot();
    }
}

/// The host traits of one set of generated bindings; `$kw` is `async` or nothing, `$run` runs
/// storage work (`run_sync` or `run_async`).
macro_rules! host_impl {
    ($g:ident, [$($kw:tt)*], $run:ident) => {
        super::answer_into!(generated::$g::filecache::cache::cache::Error);

        impl generated::$g::filecache::cache::cache::Host for FileCacheView<'_> {
            fn convert_error(&mut self, err: CacheError) -> wasmtime::Result<generated::$g::filecache::cache::cache::Error> {
                Ok(err.into_answer()?.into())
            }

            $($kw)* fn get(&mut self, k: Vec<u8>) -> Result<Option<Vec<u8>>, CacheError> {
                let k = key(&k)?;
                Ok($run!(self.ctx.store => |store| store.get(&k))?)
            }

            $($kw)* fn open(&mut self, k: Vec<u8>) -> Result<Option<Resource<ReaderHandle>>, CacheError> {
                let k = key(&k)?;
                // A miss holds no handle, so it is answered as a miss even when every slot is taken.
                let Some(reader) = $run!(self.ctx.store => |store| store.open(&k))? else {
                    return Ok(None);
                };
                self.ctx.take_slot()?;
                self.push(ReaderHandle::new(reader)).map(Some)
            }

            $($kw)* fn add(&mut self, k: Vec<u8>, content: Vec<u8>) -> Result<(), CacheError> {
                let k = key(&k)?;
                Ok($run!(self.ctx.store => |store| store.add(&k, &content))?)
            }

            $($kw)* fn create(&mut self, k: Vec<u8>) -> Result<Resource<WriterHandle>, CacheError> {
                let k = key(&k)?;
                self.ctx.take_slot()?;
                let slot = SlotGuard(self.ctx);
                let writer = $run!(self.ctx.store => |store| store.create(&k))?;
                std::mem::forget(slot);
                self.push(WriterHandle::new(writer))
            }

            $($kw)* fn delete(&mut self, k: Vec<u8>) -> Result<(), CacheError> {
                let k = key(&k)?;
                Ok($run!(self.ctx.store => |store| store.delete(&k))?)
            }

            $($kw)* fn contains(&mut self, k: Vec<u8>) -> Result<bool, CacheError> {
                let k = key(&k)?;
                Ok($run!(self.ctx.store => |store| store.contains(&k))?)
            }
        }

        impl generated::$g::filecache::cache::cache::HostReader for FileCacheView<'_> {
            $($kw)* fn size(&mut self, this: Resource<ReaderHandle>) -> wasmtime::Result<u64> {
                Ok(self.table.get(&this)?.size)
            }

            $($kw)* fn read(&mut self, this: Resource<ReaderHandle>, len: u64) -> Result<Vec<u8>, CacheError> {
                let max = read_len(len);
                Ok($run!(self.table.get(&this)?.reader => |reader| lock(reader).read_chunk(max))?)
            }

            $($kw)* fn drop(&mut self, this: Resource<ReaderHandle>) -> wasmtime::Result<()> {
                self.table.delete(this)?;
                self.ctx.give_slot();
                Ok(())
            }
        }

        impl generated::$g::filecache::cache::cache::HostWriter for FileCacheView<'_> {
            $($kw)* fn write(&mut self, this: Resource<WriterHandle>, bytes: Vec<u8>) -> Result<(), CacheError> {
                $run!(self.table.get(&this)?.writer => |writer| {
                    let mut writer = lock(writer);
                    Ok(writer.as_mut().ok_or_else(committed)?.write(&bytes)?)
                })
            }

            $($kw)* fn commit(&mut self, this: Resource<WriterHandle>) -> Result<(), CacheError> {
                let handle = self.table.delete(this)?;
                self.ctx.give_slot();
                $run!(move || {
                    let writer = lock(&handle.writer).take().ok_or_else(committed)?;
                    Ok(writer.commit()?)
                })
            }

            $($kw)* fn drop(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<()> {
                // Dropping the writer discards its temporary file (a removal: storage work);
                // nothing becomes visible.
                let handle = self.table.delete(this)?;
                self.ctx.give_slot();
                $run!(move || drop(handle));
                Ok(())
            }
        }
    };
}

host_impl!(sync, [], run_sync);
host_impl!(asynchronous, [async], run_async);
