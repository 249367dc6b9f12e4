//! Fault injection for tests: makes the Nth I/O operation of the store's write path fail.
//!
//! The store calls [`check`] just before each operation that can fail on a full or failing disk
//! (creating, locking and writing the temporary file, setting its time, fsync, the namespace
//! lock, the usage counter, the fan-out directory, the rename, the directory fsync). In a normal
//! build `check` is an inlined `Ok(())`: the hooks cost nothing and the module's public half does
//! not exist. Built for the crate's own tests, or with the `fault-injection` feature (for the
//! fuzzers), [`inject`] arms a plan for the calling thread — the store works on its caller's
//! thread, so tests running in parallel do not disturb each other.

/// An operation of the write path that a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// Creating a temporary file.
    CreateTemp,
    /// Locking it (the lock tells a live writer from a dead one).
    LockTemp,
    /// A write of content (or of the header's placeholder) to it.
    Write,
    /// Writing the final header at its start.
    WriteHeader,
    /// Setting its modification time (its recency).
    SetTime,
    /// fsync of the new entry (durable mode).
    SyncFile,
    /// Taking the namespace lock.
    LockNamespace,
    /// Writing the usage counter.
    UpdateCounter,
    /// Creating a fan-out directory.
    CreateShard,
    /// The rename that publishes the entry.
    Rename,
    /// fsync of a directory (durable mode).
    SyncDir,
    /// Opening a fan-out directory during a scan (not of the write path: a scan must fail,
    /// never skip what it cannot see).
    OpenShard,
}

#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn check(_: Point) -> std::io::Result<()> {
    Ok(())
}

#[cfg(any(test, feature = "fault-injection"))]
pub(crate) use armed::check;
#[cfg(any(test, feature = "fault-injection"))]
pub use armed::{Guard, Hit, hits, inject, inject_at};

#[cfg(any(test, feature = "fault-injection"))]
mod armed {
    use std::cell::RefCell;
    use std::io;

    use super::Point;

    /// One operation that reached a hook while a plan was armed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Hit {
        /// Which operation.
        pub point: Point,
        /// Whether the plan made it fail.
        pub failed: bool,
    }

    struct Plan {
        /// Fail every operation at this point only (see [`inject_at`]); `None` for a plan of the
        /// write path, which never counts the points outside it.
        only: Option<Point>,
        nth: u64,
        errno: i32,
        persistent: bool,
        seen: u64,
        hits: Vec<Hit>,
    }

    thread_local! {
        static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
    }

    /// Disarms the plan when dropped.
    #[must_use = "the plan is disarmed when the guard is dropped"]
    pub struct Guard(());

    impl Drop for Guard {
        fn drop(&mut self) {
            PLAN.with(|p| p.borrow_mut().take());
        }
    }

    /// Arms a plan on the calling thread: the `nth` hooked operation from now on (counting from 1)
    /// fails with the OS error `errno` (e.g. `libc::ENOSPC`), and with `persistent` so does every
    /// later one, as on a disk that stays full. `nth == 0` records the operations without failing
    /// any.
    pub fn inject(nth: u64, errno: i32, persistent: bool) -> Guard {
        PLAN.with(|p| {
            *p.borrow_mut() = Some(Plan {
                only: None,
                nth,
                errno,
                persistent,
                seen: 0,
                hits: Vec::new(),
            })
        });
        Guard(())
    }

    /// Arms a plan on the calling thread that fails every operation at `point` with the OS error
    /// `errno`, and no other (for the points outside the write path, such as
    /// [`Point::OpenShard`], which plans of [`inject`] do not count).
    pub fn inject_at(point: Point, errno: i32) -> Guard {
        PLAN.with(|p| {
            *p.borrow_mut() = Some(Plan {
                only: Some(point),
                nth: 0,
                errno,
                persistent: true,
                seen: 0,
                hits: Vec::new(),
            })
        });
        Guard(())
    }

    /// The hooked operations this thread has reached since the plan was armed, in order.
    pub fn hits() -> Vec<Hit> {
        PLAN.with(|p| p.borrow().as_ref().map(|p| p.hits.clone()).unwrap_or_default())
    }

    pub(crate) fn check(point: Point) -> io::Result<()> {
        PLAN.with(|p| {
            let mut p = p.borrow_mut();
            let Some(plan) = p.as_mut() else { return Ok(()) };
            let failed = match plan.only {
                Some(only) => point == only,
                // Plans of the write path do not see the points outside it.
                None if point == Point::OpenShard => return Ok(()),
                None => {
                    plan.seen += 1;
                    plan.nth != 0 && (plan.seen == plan.nth || (plan.persistent && plan.seen > plan.nth))
                }
            };
            plan.hits.push(Hit { point, failed });
            if failed {
                Err(io::Error::from_raw_os_error(plan.errno))
            } else {
                Ok(())
            }
        })
    }
}
