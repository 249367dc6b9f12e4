//! The asynchronous host functions: storage and remote work on tokio's blocking pool, so that the
//! executor's worker threads never wait on a disk or a network.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::generated::asynchronous::filecache::cache::cache as wit;
use super::{CacheError, FileCacheCtx, FileCacheView, ReaderHandle, WriterHandle, committed, key, lock, read_len};
use crate::EntryStore;

super::answer_into!(wit::Error);

/// Runs `work` on tokio's blocking pool and waits for it without blocking the executor; outside
/// a tokio runtime, runs it here. A panic in `work` (a bug) traps the guest.
async fn off_thread<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> Result<R, CacheError> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(work)
            .await
            .map_err(|e| CacheError::Trap(wasmtime::Error::msg(format!("a cache operation failed: {e}")))),
        Err(_) => Ok(work()),
    }
}

/// A handle slot taken for a writer still being made: given back when dropped.
struct SlotGuard<'a>(&'a FileCacheCtx);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.give_slot();
    }
}

impl FileCacheView<'_> {
    fn store(&self) -> Arc<dyn EntryStore> {
        Arc::clone(&self.ctx.store)
    }
}

impl wit::Host for FileCacheView<'_> {
    fn convert_error(&mut self, err: CacheError) -> wasmtime::Result<wit::Error> {
        Ok(err.into_answer()?.into())
    }

    async fn get(&mut self, k: Vec<u8>) -> Result<Option<Vec<u8>>, CacheError> {
        let (k, store) = (key(&k)?, self.store());
        Ok(off_thread(move || store.get(&k)).await??)
    }

    async fn open(&mut self, k: Vec<u8>) -> Result<Option<Resource<ReaderHandle>>, CacheError> {
        let (k, store) = (key(&k)?, self.store());
        // A miss holds no handle, so it is answered as a miss even when every slot is taken.
        let Some(reader) = off_thread(move || store.open(&k)).await?? else {
            return Ok(None);
        };
        self.ctx.take_slot()?;
        self.push(ReaderHandle::new(reader)).map(Some)
    }

    async fn add(&mut self, k: Vec<u8>, content: Vec<u8>) -> Result<(), CacheError> {
        let (k, store) = (key(&k)?, self.store());
        Ok(off_thread(move || store.add(&k, &content)).await??)
    }

    async fn create(&mut self, k: Vec<u8>) -> Result<Resource<WriterHandle>, CacheError> {
        let (k, store) = (key(&k)?, self.store());
        self.ctx.take_slot()?;
        // Given back if the writer cannot be made, or if the call is dropped while it waits.
        let slot = SlotGuard(self.ctx);
        let writer = off_thread(move || store.create(&k)).await??;
        std::mem::forget(slot);
        self.push(WriterHandle::new(writer))
    }

    async fn delete(&mut self, k: Vec<u8>) -> Result<(), CacheError> {
        let (k, store) = (key(&k)?, self.store());
        Ok(off_thread(move || store.delete(&k)).await??)
    }

    async fn contains(&mut self, k: Vec<u8>) -> Result<bool, CacheError> {
        let (k, store) = (key(&k)?, self.store());
        Ok(off_thread(move || store.contains(&k)).await??)
    }
}

impl wit::HostReader for FileCacheView<'_> {
    async fn size(&mut self, this: Resource<ReaderHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.size)
    }

    async fn read(&mut self, this: Resource<ReaderHandle>, len: u64) -> Result<Vec<u8>, CacheError> {
        let reader = Arc::clone(&self.table.get(&this)?.reader);
        let max = read_len(len);
        Ok(off_thread(move || lock(&reader).read_chunk(max)).await??)
    }

    async fn drop(&mut self, this: Resource<ReaderHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.ctx.give_slot();
        Ok(())
    }
}

impl wit::HostWriter for FileCacheView<'_> {
    async fn write(&mut self, this: Resource<WriterHandle>, bytes: Vec<u8>) -> Result<(), CacheError> {
        let writer = Arc::clone(&self.table.get(&this)?.writer);
        off_thread(move || -> Result<(), CacheError> {
            Ok(lock(&writer).as_mut().ok_or_else(committed)?.write(&bytes)?)
        })
        .await?
    }

    async fn commit(&mut self, this: Resource<WriterHandle>) -> Result<(), CacheError> {
        let handle = self.table.delete(this)?;
        self.ctx.give_slot();
        off_thread(move || -> Result<(), CacheError> {
            let writer = lock(&handle.writer).take().ok_or_else(committed)?;
            Ok(writer.commit()?)
        })
        .await?
    }

    async fn drop(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<()> {
        // Dropping the writer discards its temporary file (a removal: storage work, off the
        // executor); nothing becomes visible.
        let handle = self.table.delete(this)?;
        self.ctx.give_slot();
        off_thread(move || drop(handle)).await.map_err(|e| match e {
            CacheError::Trap(e) => e,
            e => wasmtime::Error::msg(e.to_string()),
        })
    }
}
