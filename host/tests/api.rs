//! The public API as an embedder meets it: the context builder refuses what it would otherwise
//! ignore, and every way of loading a compiled component returns the same shape.

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use filecache_host::bindings::BuildError;
use filecache_host::compiled::{CompiledOptions, ComponentCache, Source};
use filecache_host::{FileCache, FileCacheCtx, NamespaceOptions};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Module, Store};

fn namespace(tmp: &tempfile::TempDir) -> filecache_host::Namespace {
    FileCache::open(tmp.path())
        .unwrap()
        .namespace("api", NamespaceOptions::default())
        .unwrap()
}

#[test]
fn the_builder_names_what_is_missing() {
    let err = FileCacheCtx::builder().max_handles(4).build().unwrap_err();
    assert!(matches!(err, BuildError::NoStore), "{err:?}");
    let message = err.to_string();
    for method in ["namespace()", "namespace_dir()", "store()"] {
        assert!(message.contains(method), "{message}");
    }
}

#[test]
fn the_builder_refuses_settings_it_would_ignore() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = namespace(&tmp);
    let store: std::sync::Arc<dyn filecache_host::EntryStore> = std::sync::Arc::new(ns.clone());

    let err = FileCacheCtx::builder()
        .namespace(ns.clone())
        .quota(1 << 20)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::SettingIgnored {
                setting: "quota",
                source_method: "namespace"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("quota()"), "{err}");
    // The order does not matter: a limit set before the store is refused too.
    let err = FileCacheCtx::builder()
        .read_only(true)
        .store(store.clone())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::SettingIgnored {
                setting: "read_only",
                source_method: "store"
            }
        ),
        "{err:?}"
    );
    for build in [
        FileCacheCtx::builder().namespace(ns.clone()).max_entry_size(1).build(),
        FileCacheCtx::builder()
            .namespace(ns.clone())
            .durability(filecache_host::Durability::Sync)
            .build(),
    ] {
        assert!(matches!(build, Err(BuildError::SettingIgnored { .. })), "{build:?}");
    }
    // Two stores: the second would silently replace the first.
    let err = FileCacheCtx::builder()
        .namespace(ns.clone())
        .store(store.clone())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::TwoStores {
                first: "namespace",
                second: "store"
            }
        ),
        "{err:?}"
    );

    // What is allowed: max_handles with any store, limits with namespace_dir.
    let ctx = FileCacheCtx::builder().store(store).max_handles(3).build().unwrap();
    assert_eq!((ctx.max_handles(), ctx.open_handles()), (3, 0));
    std::fs::create_dir(tmp.path().join("bare")).unwrap();
    let dir = Dir::open_ambient_dir(tmp.path().join("bare"), ambient_authority()).unwrap();
    FileCacheCtx::builder()
        .namespace_dir(dir)
        .quota(1 << 20)
        .max_entry_size(1 << 10)
        .read_only(false)
        .durability(filecache_host::Durability::Relaxed)
        .build()
        .unwrap();
}

fn component_wat(n: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const {n}))
            (core instance $i (instantiate $m))
            (func (export "answer") (result u32) (canon lift (core func $i "f"))))"#
    ))
    .unwrap()
}

fn answer(engine: &Engine, component: &Component) -> u32 {
    let mut store = Store::new(engine, ());
    let instance = Linker::new(engine).instantiate(&mut store, component).unwrap();
    let f = instance.get_typed_func::<(), (u32,)>(&mut store, "answer").unwrap();
    f.call(&mut store, ()).unwrap().0
}

/// Bytes, a path, a directory handle and a relative path, an open file: one shape, one cache.
#[test]
fn every_load_returns_the_component_and_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path().join("cache")).unwrap();
    let engine = Engine::default();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(plugins.join("a.wasm"), component_wat(1)).unwrap();
    std::fs::write(plugins.join("b.wasm"), component_wat(2)).unwrap();
    std::fs::write(plugins.join("c.wasm"), component_wat(3)).unwrap();
    let fresh = || ComponentCache::new(&cache, &engine, CompiledOptions::default());

    let (c, s): (Component, Source) = fresh().load::<Component>(&component_wat(4)).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 4));
    let (c, s) = fresh().load::<Component>(&component_wat(4)).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 4));

    let (c, s) = fresh().load_file::<Component>(plugins.join("a.wasm")).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 1));
    let (c, s) = fresh().load_file::<Component>(plugins.join("a.wasm")).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 1));

    let dir = Dir::open_ambient_dir(&plugins, ambient_authority()).unwrap();
    let (c, s) = fresh().load_file_at::<Component>(&dir, "b.wasm").unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 2));
    let shared = fresh();
    let (c, s) = shared.load_file_at::<Component>(&dir, "b.wasm").unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 2));
    let (_, s) = shared.load_file_at::<Component>(&dir, "b.wasm").unwrap();
    assert_eq!(s, Source::Memory);
    // The directory handle is a capability: nothing outside it can be named.
    std::fs::write(tmp.path().join("outside.wasm"), component_wat(9)).unwrap();
    let err = fresh().load_file_at::<Component>(&dir, "../outside.wasm").unwrap_err();
    assert!(format!("{err:#}").contains("outside.wasm"), "{err:#}");

    // An open file, read from its start whatever its position.
    let mut file = std::fs::File::open(plugins.join("c.wasm")).unwrap();
    std::io::Read::read_exact(&mut file, &mut [0u8; 4]).unwrap();
    let (c, s) = fresh().load_open_file::<Component>(&file).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 3));
    let (c, s) = fresh().load_open_file::<Component>(&file).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 3));

    // Modules have the same four.
    let module = wat::parse_str(r#"(module (func (export "f") (result i32) i32.const 5))"#).unwrap();
    std::fs::write(plugins.join("m.wasm"), &module).unwrap();
    let (_, s) = fresh().load::<Module>(&module).unwrap();
    assert_eq!(s, Source::Compiled);
    assert_eq!(
        fresh().load_file::<Module>(plugins.join("m.wasm")).unwrap().1,
        Source::Disk
    );
    assert_eq!(fresh().load_file_at::<Module>(&dir, "m.wasm").unwrap().1, Source::Disk);
    let file = std::fs::File::open(plugins.join("m.wasm")).unwrap();
    assert_eq!(fresh().load_open_file::<Module>(&file).unwrap().1, Source::Disk);
}

/// `with_remote` cannot silently keep another tier: on a cache (or a clone) that has one, it
/// fails.
#[cfg(feature = "remote")]
#[test]
fn with_remote_refuses_a_second_tier() {
    use filecache_host::remote::{RemoteOptions, RemoteTier};
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let engine = Engine::default();
    let tier = || RemoteTier::new(RemoteOptions::new("redis://127.0.0.1:1")).unwrap();
    let compiled = ComponentCache::new(&cache, &engine, CompiledOptions::default());
    let clone = compiled.clone();
    let compiled = compiled.with_remote(tier()).unwrap();
    let err = clone.with_remote(tier()).unwrap_err();
    assert!(err.to_string().contains("already has a remote tier"), "{err}");
    assert!(compiled.with_remote(tier()).is_err());
}
