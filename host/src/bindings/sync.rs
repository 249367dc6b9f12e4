//! The synchronous host functions: storage work on the calling thread.

use wasmtime::component::Resource;

use super::generated::sync::filecache::cache::cache as wit;
use super::{CacheError, FileCacheView, ReaderHandle, WriterHandle, committed, key, lock, read_len};

super::answer_into!(wit::Error);

impl wit::Host for FileCacheView<'_> {
    fn convert_error(&mut self, err: CacheError) -> wasmtime::Result<wit::Error> {
        Ok(err.into_answer()?.into())
    }

    fn get(&mut self, k: Vec<u8>) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.ctx.store.get(&key(&k)?)?)
    }

    fn open(&mut self, k: Vec<u8>) -> Result<Option<Resource<ReaderHandle>>, CacheError> {
        // A miss holds no handle, so it is answered as a miss even when every slot is taken.
        let Some(reader) = self.ctx.store.open(&key(&k)?)? else {
            return Ok(None);
        };
        self.ctx.take_slot()?;
        self.push(ReaderHandle::new(reader)).map(Some)
    }

    fn add(&mut self, k: Vec<u8>, content: Vec<u8>) -> Result<(), CacheError> {
        Ok(self.ctx.store.add(&key(&k)?, &content)?)
    }

    fn create(&mut self, k: Vec<u8>) -> Result<Resource<WriterHandle>, CacheError> {
        let k = key(&k)?;
        self.ctx.take_slot()?;
        match self.ctx.store.create(&k) {
            Ok(writer) => self.push(WriterHandle::new(writer)),
            Err(e) => {
                self.ctx.give_slot();
                Err(e.into())
            }
        }
    }

    fn delete(&mut self, k: Vec<u8>) -> Result<(), CacheError> {
        Ok(self.ctx.store.delete(&key(&k)?)?)
    }

    fn contains(&mut self, k: Vec<u8>) -> Result<bool, CacheError> {
        Ok(self.ctx.store.contains(&key(&k)?)?)
    }
}

impl wit::HostReader for FileCacheView<'_> {
    fn size(&mut self, this: Resource<ReaderHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.size)
    }

    fn read(&mut self, this: Resource<ReaderHandle>, len: u64) -> Result<Vec<u8>, CacheError> {
        let reader = &self.table.get(&this)?.reader;
        Ok(lock(reader).read_chunk(read_len(len))?)
    }

    fn drop(&mut self, this: Resource<ReaderHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.ctx.give_slot();
        Ok(())
    }
}

impl wit::HostWriter for FileCacheView<'_> {
    fn write(&mut self, this: Resource<WriterHandle>, bytes: Vec<u8>) -> Result<(), CacheError> {
        let writer = &self.table.get(&this)?.writer;
        Ok(lock(writer).as_mut().ok_or_else(committed)?.write(&bytes)?)
    }

    fn commit(&mut self, this: Resource<WriterHandle>) -> Result<(), CacheError> {
        let handle = self.table.delete(this)?;
        self.ctx.give_slot();
        let writer = lock(&handle.writer).take().ok_or_else(committed)?;
        Ok(writer.commit()?)
    }

    fn drop(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<()> {
        // Dropping the writer discards its temporary file: nothing becomes visible.
        self.table.delete(this)?;
        self.ctx.give_slot();
        Ok(())
    }
}
