//! Building a [`FileCacheCtx`]: [`FileCacheCtxBuilder`], and why a build fails.

use std::sync::Arc;

use cap_std::fs::Dir;

use super::{DEFAULT_MAX_HANDLES, FileCacheCtx, HandleBudget};
use crate::{Durability, EntryStore, Namespace, NamespaceOptions};

/// Why [`FileCacheCtxBuilder::build`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No store was given.
    #[error(
        "no store was given to the FileCacheCtx builder: call namespace(), namespace_dir() or store() before build()"
    )]
    NoStore,
    /// Two stores were given.
    #[error("the FileCacheCtx builder was given two stores ({first}() and then {second}()); give it one")]
    TwoStores {
        /// The method that gave the first.
        first: &'static str,
        /// The method that gave the second.
        second: &'static str,
    },
    /// A limit was set that only applies to a namespace the builder opens itself.
    #[error(
        "{setting}() applies only to a namespace the builder opens (namespace_dir()); the store given to \
         {source_method}() keeps its own settings: set them where it is opened (NamespaceOptions)"
    )]
    SettingIgnored {
        /// The builder method whose setting would have been ignored.
        setting: &'static str,
        /// The method that gave the store.
        source_method: &'static str,
    },
    /// The namespace directory could not be opened.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

/// What the context serves: the store given to the builder.
enum Served {
    Namespace(Namespace),
    Dir(Dir),
    Store(Arc<dyn EntryStore>),
}

impl Served {
    fn method(&self) -> &'static str {
        match self {
            Served::Namespace(_) => "namespace",
            Served::Dir(_) => "namespace_dir",
            Served::Store(_) => "store",
        }
    }
}

/// Builds a [`FileCacheCtx`].
///
/// Give it exactly one store: an opened [`Namespace`] ([`namespace`](Self::namespace)), any
/// [`EntryStore`] ([`store`](Self::store)), or a namespace directory it opens itself
/// ([`namespace_dir`](Self::namespace_dir)). The limit setters ([`max_entry_size`](Self::max_entry_size),
/// [`quota`](Self::quota), [`read_only`](Self::read_only), [`durability`](Self::durability)) apply
/// only to the last: with another store, [`build`](Self::build) fails naming the setting, rather
/// than ignore it. [`max_handles`](Self::max_handles) applies to every kind.
///
/// ```no_run
/// use filecache_host::{FileCache, FileCacheCtx, NamespaceOptions};
/// let cache = FileCache::open("/var/cache/my-host")?;
/// let ctx = FileCacheCtx::builder()
///     .namespace(cache.namespace("my-plugin", NamespaceOptions::default())?)
///     .max_handles(16)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Or directly on a namespace directory, with limits:
///
/// ```no_run
/// use cap_std::{ambient_authority, fs::Dir};
/// use filecache_host::FileCacheCtx;
/// let dir = Dir::open_ambient_dir("/var/cache/my-host/my-plugin", ambient_authority())?;
/// let ctx = FileCacheCtx::builder()
///     .namespace_dir(dir)
///     .max_entry_size(1 << 20)
///     .quota(100 << 20)
///     .read_only(true)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// What `build` refuses:
///
/// ```
/// use filecache_host::FileCacheCtx;
/// use filecache_host::bindings::BuildError;
/// let err = FileCacheCtx::builder().max_handles(4).build().unwrap_err();
/// assert!(matches!(err, BuildError::NoStore));
/// assert!(err.to_string().contains("namespace_dir()"));
/// ```
pub struct FileCacheCtxBuilder {
    source: Option<Served>,
    /// A second store, remembered so that `build` can say so.
    extra_source: Option<&'static str>,
    options: NamespaceOptions,
    /// The limit setters called, in order.
    limits_set: Vec<&'static str>,
    max_handles: usize,
}

impl Default for FileCacheCtxBuilder {
    fn default() -> Self {
        FileCacheCtxBuilder::new()
    }
}

impl std::fmt::Debug for FileCacheCtxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCacheCtxBuilder")
            .field("source", &self.source.as_ref().map(Served::method))
            .field("options", &self.options)
            .field("max_handles", &self.max_handles)
            .finish_non_exhaustive()
    }
}

impl FileCacheCtxBuilder {
    /// A builder with the default limits and no store yet.
    pub fn new() -> Self {
        FileCacheCtxBuilder {
            source: None,
            extra_source: None,
            options: NamespaceOptions::default(),
            limits_set: Vec::new(),
            max_handles: DEFAULT_MAX_HANDLES,
        }
    }

    fn set_source(&mut self, served: Served) -> &mut Self {
        if self.source.is_some() {
            self.extra_source.get_or_insert(served.method());
        } else {
            self.source = Some(served);
        }
        self
    }

    /// Serves an opened namespace, with the options it was opened with.
    pub fn namespace(&mut self, namespace: Namespace) -> &mut Self {
        self.set_source(Served::Namespace(namespace))
    }

    /// Serves the namespace whose directory is `dir`, opened by [`build`](Self::build) with the
    /// limits set on this builder.
    pub fn namespace_dir(&mut self, dir: Dir) -> &mut Self {
        self.set_source(Served::Dir(dir))
    }

    /// Serves any [`EntryStore`] (a tiered store, say), with its own settings.
    pub fn store(&mut self, store: Arc<dyn EntryStore>) -> &mut Self {
        self.set_source(Served::Store(store))
    }

    fn limit(&mut self, name: &'static str) -> &mut Self {
        self.limits_set.push(name);
        self
    }

    /// The largest entry, in bytes of content (only with [`namespace_dir`](Self::namespace_dir)).
    pub fn max_entry_size(&mut self, bytes: u64) -> &mut Self {
        self.options.max_entry_size = bytes;
        self.limit("max_entry_size")
    }

    /// The namespace's quota in bytes (only with [`namespace_dir`](Self::namespace_dir)).
    pub fn quota(&mut self, bytes: u64) -> &mut Self {
        self.options.quota = bytes;
        self.limit("quota")
    }

    /// Refuses writes (only with [`namespace_dir`](Self::namespace_dir)).
    pub fn read_only(&mut self, read_only: bool) -> &mut Self {
        self.options.read_only = read_only;
        self.limit("read_only")
    }

    /// Whether writes are fsynced (only with [`namespace_dir`](Self::namespace_dir)).
    pub fn durability(&mut self, durability: Durability) -> &mut Self {
        self.options.durability = durability;
        self.limit("durability")
    }

    /// How many readers and writers may be held through the context at once (default
    /// [`DEFAULT_MAX_HANDLES`]); see the [module docs](super#limits) on what that means per instance.
    pub fn max_handles(&mut self, max: usize) -> &mut Self {
        self.max_handles = max;
        self
    }

    /// Builds the context. Fails if no store or two stores were given, if a limit was set that
    /// the given store would ignore, or if the namespace directory cannot be opened. The builder
    /// is left empty (its store is moved into the context).
    pub fn build(&mut self) -> Result<FileCacheCtx, BuildError> {
        let source = self.source.take().ok_or(BuildError::NoStore)?;
        if let Some(second) = self.extra_source.take() {
            return Err(BuildError::TwoStores {
                first: source.method(),
                second,
            });
        }
        if !matches!(source, Served::Dir(_))
            && let Some(setting) = self.limits_set.first()
        {
            return Err(BuildError::SettingIgnored {
                setting,
                source_method: source.method(),
            });
        }
        let store: Arc<dyn EntryStore> = match source {
            Served::Namespace(ns) => Arc::new(ns),
            Served::Dir(dir) => Arc::new(Namespace::open_dir(dir, self.options)?),
            Served::Store(store) => store,
        };
        Ok(FileCacheCtx {
            store,
            handles: HandleBudget::new(self.max_handles),
        })
    }
}
