//! A small file that other processes change in place, read through a shared mapping instead of
//! a system call: the key-value generation, read before every key-value `get`, where a `pread`
//! was about half of a cached read. Linux only; elsewhere [`MappedWords::map`] gives `None` and
//! callers read the file.
//!
//! # Truncation
//!
//! A page of a shared file mapping that lies wholly past the end of its file faults with
//! `SIGBUS`, which would kill the process if anyone (a user, a script, a damaged-file repair)
//! truncated the file while it is mapped. So the first mapping installs a process-wide `SIGBUS`
//! handler, chained to whatever handler was there before (wasmtime's trap handler, std's): a
//! fault inside one of these pages maps a page of zeros over it, marks that mapping lost, and
//! returns, so the interrupted read completes (reading zeros, which no caller takes for a valid
//! value) and every later read of that mapping goes back to the file. Any other fault is passed
//! on to the previous handler untouched (tested in a child process: a fault in a foreign mapping
//! still kills it with `SIGBUS`). The handler only loads and stores atomics and calls `mmap`.
//!
//! Mappings are recorded in a fixed table of 1024 pages; when it is full, `map` declines
//! and the caller reads the file, as it would on another platform.

use std::fs::File;

/// The first two little-endian `u64`s of a file, read through a shared, read-only mapping of its
/// first page.
pub(crate) struct MappedWords {
    #[cfg(target_os = "linux")]
    imp: linux::Mapping,
}

impl MappedWords {
    /// Maps the first page of `file` if it holds at least 16 bytes now; `None` when it does not,
    /// when the platform has no such mappings, or when the mapping cannot be made.
    pub(crate) fn map(file: &File) -> Option<MappedWords> {
        #[cfg(target_os = "linux")]
        {
            linux::Mapping::new(file).map(|imp| MappedWords { imp })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = file;
            None
        }
    }

    /// The two words as they are in the file now (each read atomically, the pair not: a writer
    /// may change them between the two reads), or `None` once the page was lost to a truncation
    /// (read the file instead, for as long as this mapping lives).
    pub(crate) fn read(&self) -> Option<(u64, u64)> {
        #[cfg(target_os = "linux")]
        {
            self.imp.read()
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::cell::UnsafeCell;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::Once;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    /// How many mappings can exist at once (one per open key-value bucket).
    pub(super) const SLOTS: usize = 1024;
    /// The address of each live mapping's page (0: a free slot).
    static PAGES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    /// Whether each slot's page was lost to a truncation (and replaced by zeros).
    static LOST: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
    static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
    static INSTALL: Once = Once::new();
    static INSTALLED: AtomicBool = AtomicBool::new(false);

    /// The `SIGBUS` disposition before ours: read (and stored here) before ours is installed,
    /// so that a fault we pass on never finds it unwritten.
    struct Previous(UnsafeCell<libc::sigaction>);
    // SAFETY: written only inside `INSTALL.call_once`, before the handler that reads it exists.
    unsafe impl Sync for Previous {}
    static PREVIOUS: Previous = Previous(UnsafeCell::new(unsafe { std::mem::zeroed() }));

    fn install() -> bool {
        INSTALL.call_once(|| {
            PAGE_SIZE.store(rustix::param::page_size(), Ordering::Relaxed);
            // SAFETY: a zeroed `sigaction` is valid; the handler is async-signal-safe (atomics
            // and `mmap`) and chains to the previous disposition, stored by this very call.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigbus as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(libc::SIGBUS, std::ptr::null(), PREVIOUS.0.get()) == 0
                    && libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0
                {
                    INSTALLED.store(true, Ordering::Release);
                }
            }
        });
        INSTALLED.load(Ordering::Acquire)
    }

    unsafe extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid `siginfo_t` for a fault.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = addr & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
        if page != 0 {
            for (slot, lost) in PAGES.iter().zip(&LOST) {
                if slot.load(Ordering::Acquire) != page {
                    continue;
                }
                // SAFETY: `page` is one of our own read-only mappings, still mapped (a slot is
                // cleared before its page is unmapped); it is replaced, in one step, by zeros.
                let zeros = unsafe {
                    libc::mmap(
                        page as *mut libc::c_void,
                        PAGE_SIZE.load(Ordering::Relaxed),
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if zeros != libc::MAP_FAILED {
                    lost.store(true, Ordering::Release);
                    return;
                }
            }
        }
        // Not ours: the previous disposition decides, as if we were not here.
        // SAFETY: written before this handler was installed (see `Previous`).
        let previous = unsafe { &*PREVIOUS.0.get() };
        if previous.sa_sigaction == libc::SIG_DFL || previous.sa_sigaction == libc::SIG_IGN {
            // Restore it and return: the faulting instruction runs again and takes it.
            // SAFETY: a disposition the process had before.
            unsafe { libc::sigaction(signal, previous, std::ptr::null_mut()) };
        } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous handler was installed with this signature.
            let handler: unsafe extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(previous.sa_sigaction) };
            unsafe { handler(signal, info, context) };
        } else {
            // SAFETY: as above, the one-argument kind.
            let handler: unsafe extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(previous.sa_sigaction) };
            unsafe { handler(signal) };
        }
    }

    pub(super) struct Mapping {
        page: *mut libc::c_void,
        slot: usize,
    }

    // SAFETY: the mapping is read-only and read only through atomics.
    unsafe impl Send for Mapping {}
    unsafe impl Sync for Mapping {}

    impl Mapping {
        pub(super) fn new(file: &File) -> Option<Mapping> {
            if file.metadata().ok()?.len() < 16 || !install() {
                return None;
            }
            let len = PAGE_SIZE.load(Ordering::Relaxed);
            // SAFETY: a fresh shared read-only mapping of an open file; nothing else refers to it.
            let page = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if page == libc::MAP_FAILED {
                return None;
            }
            for (i, slot) in PAGES.iter().enumerate() {
                if slot
                    .compare_exchange(0, page as usize, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    // Nothing has read the page yet, so nothing can have faulted on it.
                    LOST[i].store(false, Ordering::Release);
                    return Some(Mapping { page, slot: i });
                }
            }
            // SAFETY: mapped above, never shared.
            unsafe { libc::munmap(page, len) };
            None
        }

        pub(super) fn read(&self) -> Option<(u64, u64)> {
            let words = self.page as *const AtomicU64;
            // SAFETY: the page is mapped for as long as `self` lives, page-aligned (so both
            // words are aligned), and readable; a fault while reading it (the file truncated) is
            // turned into zeros by `on_sigbus`, which then marks the slot lost.
            let (a, b) = unsafe {
                (
                    (*words).load(Ordering::Acquire),
                    (*words.add(1)).load(Ordering::Acquire),
                )
            };
            if LOST[self.slot].load(Ordering::Acquire) {
                return None;
            }
            Some((u64::from_le(a), u64::from_le(b)))
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // The slot is freed first, so that the handler never replaces a page that is no
            // longer ours (nothing reads this one any more).
            PAGES[self.slot].store(0, Ordering::Release);
            // SAFETY: our mapping, no longer used.
            unsafe { libc::munmap(self.page, PAGE_SIZE.load(Ordering::Relaxed)) };
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    fn words(a: u64, b: u64) -> Vec<u8> {
        [a.to_le_bytes(), b.to_le_bytes()].concat()
    }

    /// A file holding `bytes` in a fresh temporary directory (kept alive by the first half).
    fn file_holding(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("g");
        std::fs::write(&path, bytes).unwrap();
        (d, path)
    }

    #[test]
    fn a_mapping_sees_writes_made_through_other_handles_at_once() {
        let (_d, path) = file_holding(&words(1, 2));
        let m = MappedWords::map(&File::open(&path).unwrap()).expect("a mapping");
        assert_eq!(m.read(), Some((1, 2)));
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        other.write_all_at(&words(7, !7), 0).unwrap();
        assert_eq!(m.read(), Some((7, !7)));
    }

    #[test]
    fn a_file_too_short_is_not_mapped() {
        let (_d, path) = file_holding(&[1u8; 15]);
        assert!(MappedWords::map(&File::open(&path).unwrap()).is_none());
    }

    #[test]
    fn a_truncated_file_loses_its_mapping_instead_of_killing_the_process() {
        let (_d, path) = file_holding(&words(3, 4));
        let m = MappedWords::map(&File::open(&path).unwrap()).expect("a mapping");
        let other = MappedWords::map(&File::open(&path).unwrap()).expect("a second mapping");
        assert_eq!(m.read(), Some((3, 4)));
        std::fs::File::create(&path).unwrap(); // truncated to nothing
        assert_eq!(m.read(), None, "lost");
        // Written again: the lost mapping stays lost (its reader reads the file), and the other
        // mapping (which never faulted) then reads the new words.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(&words(5, 6))
            .unwrap();
        assert_eq!(m.read(), None);
        assert_eq!(other.read(), Some((5, 6)));
    }

    /// A fault in memory that is not one of these mappings still kills the process with
    /// `SIGBUS` once the handler is installed: it is passed on, not swallowed.
    #[test]
    fn a_fault_elsewhere_still_kills_with_sigbus() {
        if let Some(path) = std::env::var_os("FILECACHE_SIGBUS_CHILD") {
            let file = File::open(&path).unwrap();
            let _ours = MappedWords::map(&file).expect("a mapping (installs the handler)");
            // A foreign mapping of the same file, then the file truncated: reading it faults.
            // SAFETY: a fresh mapping read once; the fault it takes is the point of the test.
            unsafe {
                let foreign = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    {
                        use std::os::fd::AsRawFd;
                        file.as_raw_fd()
                    },
                    0,
                ) as *const u8;
                assert_ne!(foreign as *mut libc::c_void, libc::MAP_FAILED);
                std::fs::File::create(&path).unwrap();
                std::ptr::read_volatile(foreign);
            }
            std::process::exit(0);
        }
        let (_d, path) = file_holding(&words(1, 2));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sys::mapped::tests::a_fault_elsewhere_still_kills_with_sigbus",
                "--nocapture",
            ])
            .env("FILECACHE_SIGBUS_CHILD", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
    }
}
