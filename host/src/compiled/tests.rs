//! Tests of the compiled cache on real files, with real engines and components.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

use super::artifact::ARTIFACT_HEADER;
use super::memo::{file_identity, verified_key};
use super::*;
use crate::NamespaceOptions;

/// The racy window in tests (`CompiledOptions::racy`): a file changed more recently than this is
/// not remembered.
const RACY: Duration = Duration::from_millis(300);

/// How many artifact MACs `cc` computed.
fn macs_checked(cc: &ComponentCache) -> u64 {
    cc.inner.macs_checked.load(Ordering::Relaxed)
}

/// A stand-in for the platform's mapping (through the `Mapper` seam), each pretence on while a
/// test runs a closure: every file on a filesystem that is not local; no `/proc` (wasmtime
/// cannot open an artifact file again); every attempt to open one again failing with `EMFILE`
/// (too many open files: a failure that passes).
#[derive(Default)]
struct Pretend {
    not_local: std::sync::atomic::AtomicBool,
    no_proc: std::sync::atomic::AtomicBool,
    transient: std::sync::atomic::AtomicBool,
}

impl Mapper for Pretend {
    fn can_map(&self, file: &File) -> bool {
        !self.not_local.load(Ordering::Relaxed) && Native.can_map(file)
    }

    fn can_reopen(&self) -> bool {
        !self.no_proc.load(Ordering::Relaxed) && Native.can_reopen()
    }

    unsafe fn deserialize_open(&self, engine: &Engine, kind: Kind, file: &File) -> wasmtime::Result<Artifact> {
        if self.no_proc.load(Ordering::Relaxed) {
            return Err(wasmtime::Error::msg("pretending there is no /proc"));
        }
        if self.transient.load(Ordering::Relaxed) {
            return Err(wasmtime::Error::new(std::io::Error::from_raw_os_error(
                rustix::io::Errno::MFILE.raw_os_error(),
            )));
        }
        // SAFETY: forwarded to the caller.
        unsafe { Native.deserialize_open(engine, kind, file) }
    }
}

/// A component exporting `answer: func() -> u32` that returns `n`.
fn component_wat(n: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const {n}))
            (core instance $i (instantiate $m))
            (func (export "answer") (result u32) (canon lift (core func $i "f"))))"#
    ))
    .unwrap()
}

fn engine() -> Engine {
    Engine::new(&Config::new()).unwrap()
}

fn answer(engine: &Engine, component: &Component) -> u32 {
    let mut store = Store::new(engine, ());
    let instance = Linker::new(engine).instantiate(&mut store, component).unwrap();
    let f = instance.get_typed_func::<(), (u32,)>(&mut store, "answer").unwrap();
    f.call(&mut store, ()).unwrap().0
}

struct Fixture {
    dir: tempfile::TempDir,
    cache: FileCache,
    pretend: Arc<Pretend>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path().join("cache")).unwrap();
        Fixture {
            dir,
            cache,
            pretend: Arc::default(),
        }
    }
    /// The options of the fixture's caches: the default, with the tests' racy window.
    fn options() -> CompiledOptions {
        CompiledOptions {
            racy: RACY,
            ..CompiledOptions::default()
        }
    }
    /// A fresh `ComponentCache`: nothing in memory, as in a new process.
    fn compiled(&self, engine: &Engine) -> ComponentCache {
        self.compiled_with(engine, Fixture::options())
    }
    /// A fresh `ComponentCache` with `options`.
    fn compiled_with(&self, engine: &Engine, options: CompiledOptions) -> ComponentCache {
        ComponentCache::with_mapper(&self.cache, engine, options, self.pretend.clone())
    }
    /// Runs `f` with the pretence `flag` of the fixture's caches on.
    fn pretending<T>(&self, flag: fn(&Pretend) -> &std::sync::atomic::AtomicBool, f: impl FnOnce() -> T) -> T {
        flag(&self.pretend).store(true, Ordering::Relaxed);
        let r = f();
        flag(&self.pretend).store(false, Ordering::Relaxed);
        r
    }
    /// Runs `f` as if every file were on a filesystem that is not local.
    fn pretending_not_local<T>(&self, f: impl FnOnce() -> T) -> T {
        self.pretending(|p| &p.not_local, f)
    }
    /// Runs `f` as if `/proc` were not mounted.
    fn pretending_no_proc<T>(&self, f: impl FnOnce() -> T) -> T {
        self.pretending(|p| &p.no_proc, f)
    }
    /// Runs `f` as if every attempt to open an artifact file again failed with `EMFILE`.
    fn pretending_transient_failure<T>(&self, f: impl FnOnce() -> T) -> T {
        self.pretending(|p| &p.transient, f)
    }
    /// Compiles `wasm` into the cache, as a first run does, and returns its artifact's key.
    fn stored(&self, engine: &Engine, wasm: &[u8]) -> Key {
        let cc = self.compiled(engine);
        cc.load::<Component>(wasm).unwrap();
        cc.key(Kind::Component, wasm)
    }
    fn artifact_path(&self, key: &Key) -> std::path::PathBuf {
        let hex = key.to_string();
        self.dir
            .path()
            .join("cache")
            .join(COMPILED_NAMESPACE)
            .join(&hex[..2])
            .join(hex)
    }
}

#[test]
fn compiles_once_then_maps_the_stored_artifact() {
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(7);
    let (compiled, s) = f.compiled(&engine).load::<Component>(&wasm).unwrap();
    assert_eq!((s, answer(&engine, &compiled)), (Source::Compiled, 7));

    let cc = f.compiled(&engine);
    let (c, s) = cc.load::<Component>(&wasm).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 7));
    let key = cc.key(Kind::Component, &wasm);
    #[cfg(target_os = "linux")]
    assert!(
        mapped_lines(inode(f.artifact_path(&key))) > 0,
        "a hit maps the artifact's file"
    );
    // The same cache again: the component in memory.
    assert_eq!(cc.load::<Component>(&wasm).unwrap().1, Source::Memory);
    let counts = cc.counts();
    assert_eq!((counts.hits, counts.misses, counts.rejected), (1, 1, 0));

    // The artifact starts its file, as wasmtime wrote it; the headers follow it.
    let bytes = std::fs::read(f.artifact_path(&key)).unwrap();
    let artifact = compiled.serialize().unwrap();
    assert_eq!(bytes[..artifact.len()], artifact[..]);
    assert_eq!(
        bytes.len(),
        artifact.len() + ARTIFACT_HEADER + table_len(&bytes) + crate::entry::HEADER_LEN
    );

    // Another component is another key.
    let (c, s) = cc.load::<Component>(&component_wat(8)).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 8));
}

#[test]
fn modules_are_cached_apart_from_components() {
    let f = Fixture::new();
    let engine = engine();
    let wasm = wat::parse_str("(module (func (export \"f\") (result i32) i32.const 5))").unwrap();
    f.compiled(&engine).load::<Module>(&wasm).unwrap();
    let cc = f.compiled(&engine);
    let (m, _) = cc.load::<Module>(&wasm).unwrap();
    let mut store = Store::new(&engine, ());
    let i = wasmtime::Instance::new(&mut store, &m, &[]).unwrap();
    assert_eq!(
        i.get_typed_func::<(), i32>(&mut store, "f")
            .unwrap()
            .call(&mut store, ())
            .unwrap(),
        5
    );
    assert_eq!(cc.counts().hits, 1);
    assert_ne!(cc.key(Kind::Module, &wasm), cc.key(Kind::Component, &wasm));
}

/// Every byte of the headers, and bytes all through the artifact, flipped one at a time; and
/// truncations at many lengths: each load gives a working component, recompiling when needed.
#[test]
fn damaged_artifacts_are_rejected_and_recompiled() {
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(11);
    let key = f.stored(&engine, &wasm);
    let path = f.artifact_path(&key);
    let good = std::fs::read(&path).unwrap();
    // Both headers follow the artifact (the store's block table between them, which the
    // compiled cache does not read: its MAC covers the content): every byte of the headers,
    // and of the ELF header.
    let store_header = good.len() - crate::entry::HEADER_LEN;
    let content_len = good.len() - crate::entry::HEADER_LEN - table_len(&good);
    let headers = content_len - ARTIFACT_HEADER;
    let mut positions: Vec<usize> = (0..64)
        .chain(headers..content_len)
        .chain(store_header..good.len())
        .collect();
    positions.extend((64..headers).step_by(97));
    for &at in &positions {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        let (c, s) = f.compiled(&engine).load::<Component>(&wasm).unwrap();
        assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 11), "flip at {at}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "recompiled and stored again (flip at {at})"
        );
    }
    for len in (0..good.len()).step_by(211) {
        std::fs::write(&path, &good[..len]).unwrap();
        let (c, s) = f.compiled(&engine).load::<Component>(&wasm).unwrap();
        assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 11), "truncated to {len}");
    }
}

/// A writer that tracing can log into, for checking what was logged.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn an_artifact_made_under_another_secret_is_rejected_before_deserializing() {
    // Two caches, two secrets. An entry copied from one into the other has valid checksums
    // (the store's header and CRC) but no valid MAC.
    let (a, b) = (Fixture::new(), Fixture::new());
    let engine = engine();
    let wasm = component_wat(13);
    a.compiled(&engine).load::<Component>(&wasm).unwrap();
    b.compiled(&engine).load::<Component>(&component_wat(14)).unwrap(); // creates b's secret
    let key = a.compiled(&engine).key(Kind::Component, &wasm);
    std::fs::create_dir_all(b.artifact_path(&key).parent().unwrap()).unwrap();
    std::fs::copy(a.artifact_path(&key), b.artifact_path(&key)).unwrap();
    assert_eq!(
        b.cache
            .reserved_namespace(COMPILED_NAMESPACE, NamespaceOptions::default())
            .unwrap()
            .verify_entry(&key)
            .unwrap(),
        None,
        "the planted entry passes the store's own checks"
    );

    let ((c, s), log) = logged(|| b.compiled(&engine).load::<Component>(&wasm).unwrap());
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 13));
    assert!(log.contains("not authenticated by this cache's secret"), "{log}");
    assert!(
        !log.contains("does not load on this engine"),
        "deserialize was never tried:\n{log}"
    );
    assert_eq!(b.compiled(&engine).counts().rejected, 1);
}

#[test]
fn an_artifact_of_another_engine_configuration_is_deleted_and_recompiled() {
    let f = Fixture::new();
    let engine = engine();
    let mut other = Config::new();
    other.consume_fuel(true);
    let other = Engine::new(&other).unwrap();
    let wasm = component_wat(17);
    // The other engine's artifact, authenticated by this cache, under this engine's key: as if
    // the configuration had changed without the key noticing.
    let foreign = Component::new(&other, &wasm).unwrap();
    let cc = f.compiled(&engine);
    let key = cc.key(Kind::Component, &wasm);
    cc.inner.store(Kind::Component, &key, &Artifact::Component(foreign));

    let ((c, s), log) = logged(|| f.compiled(&engine).load::<Component>(&wasm).unwrap());
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 17));
    assert!(log.contains("does not load on this engine"), "{log}");
    // Replaced by this engine's own artifact, which now loads.
    assert_eq!(f.compiled(&engine).load::<Component>(&wasm).unwrap().1, Source::Disk);
}

#[test]
fn concurrent_loads_of_one_component_compile_it_once() {
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(19);
    let cc = f.compiled(&engine);
    let sources: Vec<Source> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| cc.load::<Component>(&wasm).unwrap().1))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Compiled).count(),
        1,
        "{sources:?}"
    );
    assert_eq!(cc.counts().misses, 1);
}

/// Sets the file's modification time to `mtime`, then waits out the racy window.
fn age(path: &std::path::Path, mtime: std::time::SystemTime) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(mtime).unwrap();
    std::thread::sleep(RACY + Duration::from_millis(50));
}

/// A verified artifact file is remembered by identity, so a later load need not compute its MAC;
/// any write to the file (even one that keeps its size and puts its mtime back) changes its
/// identity and is caught by the MAC before the code runs; a forged memo is ignored.
#[test]
fn verified_artifacts_are_remembered_by_identity_and_any_change_is_still_caught() {
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(31);
    let key = f.stored(&engine, &wasm);
    let path = f.artifact_path(&key);
    let load = || {
        let cc = f.compiled(&engine);
        let (c, s) = cc.load::<Component>(&wasm).unwrap();
        (s, answer(&engine, &c), macs_checked(&cc))
    };

    // Old enough that its timestamps can be trusted: verified once more, then remembered.
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    age(&path, old);
    assert_eq!(load(), (Source::Disk, 31, 1), "verified, then remembered");
    assert_eq!(load(), (Source::Disk, 31, 0), "remembered: no MAC");
    assert_eq!(load(), (Source::Disk, 31, 0));

    // One byte of the code rewritten in place, size kept and the mtime put back, and loaded
    // at once: the change time differs, so the MAC runs, and rejects it.
    let good = std::fs::read(&path).unwrap();
    let at = good.len() / 2;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.write_at(&[good[at] ^ 0x01], at as u64).unwrap();
        file.set_modified(old).unwrap();
    }
    let (s, n, macs) = load();
    assert_eq!((s, n, macs), (Source::Compiled, 31, 1), "the change is caught");
    assert_eq!(std::fs::read(&path).unwrap(), good, "recompiled and stored again");

    // A forged memo (a record without the right MAC) for the new file is ignored.
    age(&path, old);
    let meta = std::fs::metadata(&path).unwrap();
    let identity = file_identity(&meta).unwrap().0;
    let digests = f
        .cache
        .reserved_namespace(DIGESTS_NAMESPACE, NamespaceOptions::default())
        .unwrap();
    digests.add(&verified_key(&identity, &key), &[0u8; 32]).unwrap();
    assert_eq!(load(), (Source::Disk, 31, 1), "a forged memo is not trusted");
    assert_eq!(load(), (Source::Disk, 31, 0), "the real one is");
    // A memo of this file for another key does not vouch for it either.
    let other = f.compiled(&engine).key(Kind::Component, &component_wat(32));
    assert!(!f.compiled(&engine).inner.remembered_verified(&identity, &other));
}

#[test]
fn component_files_are_remembered_by_identity_and_rehashed_when_changed() {
    let f = Fixture::new();
    let engine = engine();
    let path = f.dir.path().join("c.wasm");
    std::fs::write(&path, component_wat(21)).unwrap();
    // Old enough that its timestamps can be trusted.
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    age(&path, old);
    assert_eq!(
        f.compiled(&engine).load_file::<Component>(&path).unwrap().1,
        Source::Compiled
    );
    let digests = f
        .cache
        .reserved_namespace(DIGESTS_NAMESPACE, NamespaceOptions::default())
        .unwrap();
    assert_eq!(digests.scan(0).unwrap().entries, 1, "the digest is remembered");
    let (c, s) = f.compiled(&engine).load_file::<Component>(&path).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 21));

    // Rewritten in place (same inode) with other code, even with the old mtime put back: the
    // change time differs, so it is hashed again.
    std::fs::write(&path, component_wat(22)).unwrap();
    age(&path, old);
    let (c, s) = f.compiled(&engine).load_file::<Component>(&path).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 22));
    assert_eq!(
        digests.scan(0).unwrap().entries,
        2,
        "the new identity is remembered too"
    );

    // A file changed just now is not remembered (its timestamps may not show the next change).
    // "Just now" is within a window of a minute here, not the fixture's 300 ms, which a loaded
    // machine can spend between the write and the load's check.
    std::fs::write(&path, component_wat(23)).unwrap();
    let minute = CompiledOptions {
        racy: Duration::from_secs(60),
        ..Fixture::options()
    };
    f.compiled_with(&engine, minute).load_file::<Component>(&path).unwrap();
    assert_eq!(digests.scan(0).unwrap().entries, 2);

    // A forged memo (a digest record without the MAC) is ignored.
    let meta = std::fs::metadata(&path).unwrap();
    let mut record = *Key::digest(component_wat(21)).as_bytes();
    record[0] ^= 1;
    let mut forged = record.to_vec();
    forged.extend_from_slice(&[0u8; 32]);
    digests.add(&file_identity(&meta).unwrap().0, &forged).unwrap();
    let (c, _) = f.compiled(&engine).load_file::<Component>(&path).unwrap();
    assert_eq!(answer(&engine, &c), 23);
}

/// The inode number of the file at `path`.
#[cfg(target_os = "linux")]
fn inode(path: impl AsRef<std::path::Path>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Lines of `/proc/self/maps` that map the file with inode `ino` (a mapping split by `mprotect`
/// shows as several lines).
#[cfg(target_os = "linux")]
fn mapped_lines(ino: u64) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(&ino.to_string()))
        .count()
}

#[test]
#[cfg(target_os = "linux")]
fn mapped_compiled_code_is_unmapped_once_nothing_made_from_it_lives() {
    // Issue 11 finding 7: a process that makes a `ComponentCache` per request must not
    // accumulate mappings of the artifact. wasmtime owns each mapping now and unmaps it with the
    // last component made from it.
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(31);
    let key = f.stored(&engine, &wasm);
    let ino = inode(f.artifact_path(&key));
    for _ in 0..20 {
        let (c, s) = f.compiled(&engine).load::<Component>(&wasm).unwrap();
        assert_eq!((s, answer(&engine, &c)), (Source::Disk, 31));
    }
    assert_eq!(mapped_lines(ino), 0, "20 caches, one after another, left mappings");
    let live: Vec<_> = (0..3)
        .map(|_| f.compiled(&engine).load::<Component>(&wasm).unwrap().0)
        .collect();
    for c in &live {
        assert_eq!(answer(&engine, c), 31);
    }
    assert!(mapped_lines(ino) >= 3, "each live component maps the file");
    drop(live);
    assert_eq!(mapped_lines(ino), 0, "mappings of components gone are left");
}

/// A component whose core module's memory starts with `len` bytes of data (bytes `i % 251`),
/// exporting `byte: func(at: u32) -> u32`.
fn component_with_data(len: usize) -> Vec<u8> {
    let data: String = (0..len).map(|i| format!("\\{:02x}", i % 251)).collect();
    let pages = len.div_ceil(65536) + 1;
    wat::parse_str(format!(
        r#"(component
            (core module $m
                (memory {pages})
                (data (i32.const 0) "{data}")
                (func (export "byte") (param i32) (result i32) local.get 0 i32.load8_u))
            (core instance $i (instantiate $m))
            (func (export "byte") (param "at" u32) (result u32) (canon lift (core func $i "byte"))))"#
    ))
    .unwrap()
}

#[test]
#[cfg(target_os = "linux")]
fn the_initial_memory_of_a_loaded_component_is_mapped_from_the_artifact_file() {
    // The point of the layout: wasmtime maps a module's initial linear memory from the artifact
    // file copy-on-write, instead of copying it into a fresh memfd on every load (11.9 MB for
    // a componentize-py plugin).
    let f = Fixture::new();
    let engine = engine();
    let len = 1 << 20;
    let wasm = component_with_data(len);
    let key = f.stored(&engine, &wasm);
    let ino = inode(f.artifact_path(&key));
    let (c, s) = f.compiled(&engine).load::<Component>(&wasm).unwrap();
    assert_eq!(s, Source::Disk);
    let loaded = mapped_lines(ino);
    let mut store = Store::new(&engine, ());
    let instance = Linker::new(&engine).instantiate(&mut store, &c).unwrap();
    let byte = instance.get_typed_func::<(u32,), (u32,)>(&mut store, "byte").unwrap();
    for at in [0u32, 1, 250, 251, 65_535, 65_536, len as u32 - 1] {
        assert_eq!(byte.call(&mut store, (at,)).unwrap().0, at % 251, "byte {at}");
    }
    assert!(
        mapped_lines(ino) > loaded,
        "the instance's memory is not mapped from the artifact file ({loaded} lines before instantiating)"
    );
    assert_eq!(byte.call(&mut store, (len as u32,)).unwrap().0, 0, "past the data");
}

#[test]
#[cfg(target_os = "linux")]
fn mapped_compiled_code_an_artifact_rejected_before_or_by_deserializing_is_not_left_mapped() {
    // Issue 11 finding 7.
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(32);
    let key = f.stored(&engine, &wasm);
    let path = f.artifact_path(&key);

    // Damaged: fails its MAC after it was mapped for checking.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let ino = inode(&path);
    let (_, s) = f.compiled(&engine).load::<Component>(&wasm).unwrap();
    assert_eq!(s, Source::Compiled, "the damaged artifact was rejected");
    assert_eq!(mapped_lines(ino), 0, "a rejected artifact stays mapped");

    // Authenticated but not an artifact wasmtime accepts: refused by `deserialize_file`.
    let cc = f.compiled(&engine);
    cc.inner.store_bytes(Kind::Component, &key, &vec![0x5a; 3 * 4096]);
    let ino = inode(&path);
    let ((_, s), log) = logged(|| cc.load::<Component>(&wasm).unwrap());
    assert_eq!(s, Source::Compiled, "the garbage artifact was rejected");
    assert!(log.contains("does not load on this engine"), "{log}");
    assert_eq!(mapped_lines(ino), 0, "an artifact wasmtime refused stays mapped");
}

#[test]
#[cfg(target_os = "linux")]
fn mapped_compiled_code_only_from_local_filesystems() {
    // Issue 11 finding 7: on NFS, SMB, FUSE, 9p or overlayfs a mapped page may be impossible
    // to read back later (SIGBUS long after the MAC check), so artifacts there are read instead.
    let local = tempfile::tempfile().unwrap();
    assert!(Native.can_map(&local), "a temporary file on ext4/tmpfs is local");
    let proc = std::fs::File::open("/proc/self/stat").unwrap();
    assert!(!Native.can_map(&proc), "procfs is not known to be local");

    // A cache on a filesystem that is not local loads from disk without mapping.
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(33);
    let key = f.stored(&engine, &wasm);
    let ino = inode(f.artifact_path(&key));
    let (c, s) = f.pretending_not_local(|| f.compiled(&engine).load::<Component>(&wasm).unwrap());
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 33));
    assert_eq!(mapped_lines(ino), 0, "mapped from a filesystem that is not local");
    let (c, s) = f.compiled(&engine).load::<Component>(&wasm).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 33));
    assert!(mapped_lines(ino) > 0, "mapped from a local one");
}

#[test]
#[cfg(target_os = "linux")]
fn without_proc_a_mapped_load_falls_back_to_copying_and_rejects_nothing() {
    // wasmtime opens the checked file again as `/proc/self/fd/N`; where `/proc` is not mounted,
    // the artifact is read, checked again, and copied instead, and later loads copy at once.
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(41);
    let key = f.stored(&engine, &wasm);
    let ino = inode(f.artifact_path(&key));
    let cc = f.compiled(&engine);
    let ((c, s), log) = logged(|| f.pretending_no_proc(|| cc.load::<Component>(&wasm).unwrap()));
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 41));
    assert!(log.contains("loading compiled code by copying"), "{log}");
    assert_eq!(mapped_lines(ino), 0, "copied, not mapped");
    assert!(!cc.inner.zero_copy.load(Ordering::Relaxed), "later loads copy at once");
    let (c, s) = cc.load::<Component>(&component_wat(42)).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 42));
    let (c, s) = f.compiled(&engine).load::<Component>(&component_wat(42)).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 42));
    assert_eq!(cc.counts().rejected, 0);
}

#[test]
fn an_entry_with_its_header_first_is_not_an_artifact() {
    // Artifact entries keep the store's header after the content; the same bytes stored as an
    // ordinary entry (header first: the artifact no longer starts the file) are refused before
    // anything else is read, and compiled afresh.
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(43);
    let key = f.stored(&engine, &wasm);
    let path = f.artifact_path(&key);
    let file = std::fs::read(&path).unwrap();
    let content = &file[..file.len() - crate::entry::HEADER_LEN - table_len(&file)];
    let ns = f
        .cache
        .reserved_namespace(COMPILED_NAMESPACE, NamespaceOptions::default())
        .unwrap();
    ns.add(&key, content).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap()[..8],
        *b"FCACHE\r\n",
        "stored with a leading header"
    );
    let ((c, s), log) = logged(|| f.compiled(&engine).load::<Component>(&wasm).unwrap());
    assert_eq!((s, answer(&engine, &c)), (Source::Compiled, 43));
    assert!(log.contains("not an artifact entry"), "{log}");
    assert_eq!(std::fs::read(&path).unwrap(), file, "stored again as an artifact entry");
}

/// The length of the store's block table in an artifact entry file (header last).
fn table_len(file: &[u8]) -> usize {
    use crate::entry::{HEADER_LEN, Header, Layout};
    let header = file[file.len() - HEADER_LEN..].try_into().unwrap();
    Header::decode_as(header, Layout::Trailing).unwrap().table_len() as usize
}

/// Issue 22, finding 3: on a filesystem that is not local, timestamps may be the server's to set
/// (sshfs reports the mtime as the ctime), so an artifact rewritten with its times put back keeps
/// its identity there. The verified-by-identity memo must then be neither used nor recorded: the
/// MAC runs on every load.
#[test]
#[cfg(target_os = "linux")]
fn finding_22_3_off_local_filesystems_the_mac_runs_on_every_load() {
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(51);
    let key = f.stored(&engine, &wasm);
    let path = f.artifact_path(&key);
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    age(&path, old);
    let digests = f
        .cache
        .reserved_namespace(DIGESTS_NAMESPACE, NamespaceOptions::default())
        .unwrap();
    let remembered = || digests.scan(0).unwrap().entries;
    let load = || {
        let cc = f.compiled(&engine);
        let ((c, s), log) = logged(|| f.pretending_not_local(|| cc.load::<Component>(&wasm).unwrap()));
        (s, answer(&engine, &c), macs_checked(&cc), log)
    };

    // Not local: verified in full every time, and nothing remembered.
    let before = remembered();
    for _ in 0..2 {
        let (s, n, macs, _) = load();
        assert_eq!((s, n, macs), (Source::Disk, 51, 1), "the MAC runs");
    }
    assert_eq!(remembered(), before, "no memo recorded off a local filesystem");

    // The server's view: the artifact rewritten in place with its identity unchanged. Here the
    // kernel moves the ctime, so the memo this cache would hold for the (new) identity is
    // planted, as if the times had been put back.
    let good = std::fs::read(&path).unwrap();
    let at = good.len() / 2;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.write_at(&[good[at] ^ 0x01], at as u64).unwrap();
        file.set_modified(old).unwrap();
    }
    age(&path, old);
    let (identity, changed) = file_identity(&std::fs::metadata(&path).unwrap()).unwrap();
    let cc = f.compiled(&engine);
    cc.inner.remember_verified(&identity, changed, &key);
    assert!(cc.inner.remembered_verified(&identity, &key), "the memo is in place");
    let (s, n, macs, log) = load();
    assert_eq!((s, n, macs), (Source::Compiled, 51, 1), "the rewrite is caught:\n{log}");
    assert!(log.contains("not authenticated by this cache's secret"), "{log}");
    assert_eq!(std::fs::read(&path).unwrap(), good, "recompiled and stored again");
}

/// Issue 22, finding 5: a hit counts itself without waiting for the namespace lock, which a
/// process stopped while holding it (here another open file description of `state`) would hold
/// for ever; the hit is still counted, on disk once the lock is free.
#[test]
#[cfg(unix)]
fn finding_22_5_a_hit_never_waits_for_the_namespace_lock_to_count_itself() {
    let f = Fixture::new();
    let engine = engine();
    let wasm = component_wat(53);
    f.stored(&engine, &wasm);
    let state = std::fs::File::options()
        .read(true)
        .write(true)
        .open(f.dir.path().join("cache").join(COMPILED_NAMESPACE).join("state"))
        .unwrap();
    state.lock().unwrap();
    let cc = f.compiled(&engine);
    let start = std::time::Instant::now();
    let (c, s) = cc.load::<Component>(&wasm).unwrap();
    let took = start.elapsed();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 53));
    // The lock is waited for up to 30 s (`LOCK_WAIT`); a hit takes milliseconds.
    assert!(took < Duration::from_secs(10), "the hit waited for the lock: {took:?}");
    assert_eq!(cc.counts().hits, 1, "counted in memory meanwhile");
    assert_eq!(f.compiled(&engine).counts().hits, 0, "not on disk yet");

    // Once the lock is free, the next count takes it at once and writes both.
    state.unlock().unwrap();
    let (_, s) = cc.load::<Component>(&component_wat(54)).unwrap();
    assert_eq!(s, Source::Compiled);
    let on_disk = f.compiled(&engine).counts();
    assert_eq!((on_disk.hits, on_disk.misses), (1, 2));
}

/// Issue 22, finding 8: one failure to open an artifact file again that passes (`EMFILE`) costs
/// that load a copy, and does not turn zero copy off for the life of the process.
#[test]
#[cfg(target_os = "linux")]
fn finding_22_8_a_passing_failure_to_map_does_not_turn_zero_copy_off() {
    let f = Fixture::new();
    let engine = engine();
    let (a, b) = (component_wat(55), component_wat(56));
    let key = f.stored(&engine, &a);
    f.stored(&engine, &b);
    let cc = f.compiled(&engine);
    let (c, s) = f.pretending_transient_failure(|| cc.load::<Component>(&a).unwrap());
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 55), "loaded by copying");
    assert!(cc.inner.zero_copy.load(Ordering::Relaxed), "zero copy stays on");
    drop(c);
    assert_eq!(mapped_lines(inode(f.artifact_path(&key))), 0, "a copy, not mapped");
    let key_b = cc.key(Kind::Component, &b);
    let (c, s) = cc.load::<Component>(&b).unwrap();
    assert_eq!((s, answer(&engine, &c)), (Source::Disk, 56));
    assert!(mapped_lines(inode(f.artifact_path(&key_b))) > 0, "the next load maps");

    // Failures that do not pass (ZERO_COPY_ATTEMPTS in a row) turn it off.
    let cc = f.compiled(&engine);
    f.pretending_transient_failure(|| {
        cc.load::<Component>(&a).unwrap();
        cc.inner.loaded.lock().unwrap().clear();
        cc.load::<Component>(&a).unwrap();
        assert!(cc.inner.zero_copy.load(Ordering::Relaxed));
        cc.inner.loaded.lock().unwrap().clear();
        cc.load::<Component>(&a).unwrap();
    });
    assert!(
        !cc.inner.zero_copy.load(Ordering::Relaxed),
        "three in a row turn it off"
    );
}

/// Issue 22, finding 1 (the compiled cache's part): remembered digests and verifications, one
/// file per file identity, are bounded in number; the least recently used go first.
#[test]
#[cfg(unix)]
fn finding_22_1_remembered_digests_are_bounded_in_number() {
    let f = Fixture::new();
    let engine = engine();
    let options = CompiledOptions {
        max_remembered: 8,
        ..Fixture::options()
    };
    let cc = f.compiled_with(&engine, options);
    let digests = f
        .cache
        .reserved_namespace(DIGESTS_NAMESPACE, NamespaceOptions::default())
        .unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    let paths: Vec<_> = (0..40u32)
        .map(|i| {
            let path = f.dir.path().join(format!("c{i}.wasm"));
            std::fs::write(&path, component_wat(100 + i)).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(old).unwrap();
            path
        })
        .collect();
    std::thread::sleep(RACY + Duration::from_millis(50));
    let mut most = 0;
    for path in &paths {
        cc.load_file::<Component>(path).unwrap();
        most = most.max(digests.scan(0).unwrap().entries);
    }
    // Checked at the first record, then every 8 / 4 = 2: at most 8 + 2 between checks.
    assert!(most <= 10, "{most} remembered under a bound of 8");
    assert!(digests.scan(0).unwrap().entries >= 6, "not all forgotten");
    // The most recent is remembered: found by identity, without reading the file.
    let last = paths.last().unwrap();
    let identity = file_identity(&std::fs::metadata(last).unwrap()).unwrap().0;
    assert_eq!(cc.inner.remembered_digest(&identity), Some(sha256(&component_wat(139))));
    // The first is forgotten.
    let identity = file_identity(&std::fs::metadata(&paths[0]).unwrap()).unwrap().0;
    assert_eq!(cc.inner.remembered_digest(&identity), None);
}
