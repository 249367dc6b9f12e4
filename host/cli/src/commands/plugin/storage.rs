//! Opening what a plugin instance gets (the cache, its namespace, the granted buckets: on SQLite
//! locally or on Redis with `--remote`), and the per-instance contexts made from it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use filecache_host::compiled::ComponentCache;
use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::kv::{Bucket, RedisEngine};
use filecache_host::remote::TieredStore;
use filecache_host::{EntryStore, FileCacheCtx, FileCacheView, Namespace};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::load::with_remote;
use super::{Loaded, Plugin};
use crate::common::open_cache;
use crate::limits::MemoryLimit;

impl Plugin {
    /// Creates the cache if it does not exist yet (storing the component's code compiled in
    /// memory), and opens the namespace and the granted buckets: call it once the component's
    /// imports are resolved.
    pub fn open_storage(mut self, loaded: &Loaded) -> Result<Storage> {
        let cache = match self.cache.take() {
            Some(c) => c,
            None => open_cache(&self.cache_dir)?,
        };
        if let Some(bytes) = self.compiled_in_memory.take() {
            let compiled = with_remote(
                ComponentCache::new(&cache, &loaded.engine, self.compiled_options),
                &self.remote,
            )?;
            let _ = compiled.insert(&bytes, &loaded.component);
        }
        let namespace = cache.namespace(&self.args.namespace, self.options).with_context(|| {
            format!(
                "cannot open namespace {:?} in {}",
                self.args.namespace,
                self.cache_dir.display()
            )
        })?;
        // With --remote, buckets live on the server, shared by every host, never copied here.
        let bucket = |name: &str, ns: &Namespace| -> Result<Bucket> {
            Ok(match &self.remote {
                Some(remote) => Bucket::from_engine(Arc::new(RedisEngine::new(remote.clone(), name, &self.options)?)),
                None => Bucket::new(ns.clone()),
            })
        };
        let own = bucket(&self.args.namespace, &namespace)?;
        let mut granted = Vec::new();
        for name in &self.args.buckets {
            let ns = cache
                .namespace(name, self.options)
                .with_context(|| format!("cannot open --bucket {name:?} in {}", self.cache_dir.display()))?;
            granted.push((name.clone(), ns.clone(), bucket(name, &ns)?));
        }
        let store: Arc<dyn EntryStore> = match self.remote {
            Some(remote) => Arc::new(TieredStore::new(namespace.clone(), remote)?),
            None => Arc::new(namespace.clone()),
        };
        Ok(Storage {
            own,
            namespace,
            granted,
            store,
            max_handles: self.args.max_handles,
            dirs: self.dirs,
            envs: self.envs,
        })
    }
}

/// The opened storage a plugin instance gets: made once, and a context for each instance made
/// from it cheaply (`serve` makes one per request).
pub struct Storage {
    namespace: Namespace,
    own: Bucket,
    granted: Vec<(String, Namespace, Bucket)>,
    store: Arc<dyn EntryStore>,
    max_handles: usize,
    dirs: Vec<(PathBuf, String)>,
    envs: Vec<(String, String)>,
}

impl Storage {
    /// A `filecache:cache` context for one instance: its own handle budget over the shared store.
    pub fn cache_ctx(&self) -> Result<FileCacheCtx> {
        Ok(FileCacheCtx::builder()
            .store(Arc::clone(&self.store))
            .max_handles(self.max_handles)
            .build()?)
    }

    /// A `wasi:keyvalue` context for one instance: its own bucket and the granted ones, drawing
    /// on the handle budget of the instance's `cache` context (one budget for cache readers and
    /// writers, buckets and cas handles).
    pub fn kv_ctx(&self, cache: &FileCacheCtx) -> KeyValueCtx {
        let mut kv = KeyValueCtx::builder().bucket(self.own.clone());
        for (name, _, bucket) in &self.granted {
            kv = kv.grant(name.clone(), bucket.clone());
        }
        kv.handle_budget(cache.handle_budget()).build()
    }

    /// The plugin's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The namespaces of the granted buckets.
    pub fn bucket_namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.granted.iter().map(|(_, ns, _)| ns)
    }

    /// A WASI context builder for one instance, with the `--env` variables and `--dir`
    /// directories (the caller adds arguments and standard I/O).
    pub fn wasi(&self) -> Result<WasiCtxBuilder> {
        let mut wasi = WasiCtxBuilder::new();
        for (k, v) in &self.envs {
            wasi.env(k, v);
        }
        for (host, guest) in &self.dirs {
            wasi.preopened_dir(host, guest, FsPerms::ReadWrite)
                .map_err(|e| anyhow!("cannot open --dir {}: {e:#}", host.display()))?;
        }
        Ok(wasi)
    }
}

/// One instance's store data, for `run` and `serve` alike: WASI, the cache and key-value
/// contexts (one handle budget), the resource table they share, the memory limit, and what the
/// command adds (`X`: nothing for `run`, the `wasi:http` context for `serve`).
pub struct Instance<X = ()> {
    wasi: WasiCtx,
    cache: FileCacheCtx,
    kv: KeyValueCtx,
    pub table: ResourceTable,
    pub memory: MemoryLimit,
    pub extra: X,
}

impl Storage {
    /// A fresh instance's store data over this storage: `wasi` built by the caller from
    /// [`wasi`](Self::wasi), `table` with whatever capacity the command sets.
    pub fn instance<X>(
        &self,
        wasi: WasiCtx,
        table: ResourceTable,
        memory: MemoryLimit,
        extra: X,
    ) -> Result<Instance<X>> {
        let cache = self.cache_ctx()?;
        Ok(Instance {
            wasi,
            kv: self.kv_ctx(&cache),
            cache,
            table,
            memory,
            extra,
        })
    }
}

impl<X: Send + 'static> WasiView for Instance<X> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl<X: Send + 'static> Instance<X> {
    fn cache_view(&mut self) -> FileCacheView<'_> {
        FileCacheView::new(&self.cache, &mut self.table)
    }

    fn kv_view(&mut self) -> KeyValueView<'_> {
        KeyValueView::new(&self.kv, &mut self.table)
    }
}

/// Links `filecache:cache` and `wasi:keyvalue` (both drafts), synchronous, as `run` calls them.
pub fn add_to_linker_sync<X: Send + 'static>(linker: &mut Linker<Instance<X>>) -> Result<()> {
    filecache_host::add_to_linker(linker, Instance::<X>::cache_view)?;
    filecache_host::keyvalue::add_to_linker(linker, Instance::<X>::kv_view)?;
    Ok(())
}

/// Links `filecache:cache` and `wasi:keyvalue` (both drafts), asynchronous, as `serve` calls
/// them.
pub fn add_to_linker_async<X: Send + 'static>(linker: &mut Linker<Instance<X>>) -> Result<()> {
    filecache_host::add_to_linker_async(linker, Instance::<X>::cache_view)?;
    filecache_host::keyvalue::add_to_linker_async(linker, Instance::<X>::kv_view)?;
    Ok(())
}
