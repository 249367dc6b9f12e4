//! Fault injection for tests: makes the Nth I/O operation of the store's write path fail, or
//! makes one kind of operation misbehave the way disks and kernels do.
//!
//! The store calls [`check`] just before each operation that can fail on a full or failing disk
//! (creating, locking and writing the temporary file, setting its time, fsync, the namespace
//! lock, the usage counter, the fan-out directory, the rename, the directory fsync). The lowest
//! I/O helpers (`crate::sys`) add hooks of their own: [`after`] once an operation is done (a
//! rename or fsync that happened and still reported an error), [`len`] before a read or write
//! moves bytes (a short read or write, an error in the middle of a read), and a [`check`] before
//! each removal of an entry file. In a normal build every hook is an inlined no-op: the hooks
//! cost nothing and the module's public half does not exist. Built for the crate's own tests, or
//! with the `fault-injection` feature (for the fuzzers), [`inject`] arms a plan for the calling
//! thread — the store works on its caller's thread, so tests running in parallel do not disturb
//! each other.

/// An operation of the write path that a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// Creating a temporary file.
    CreateTemp,
    /// Locking it (the lock tells a live writer from a dead one).
    LockTemp,
    /// A write of content (or of the header's placeholder) to it. For plans of [`inject_fault`]
    /// with [`Fault::Short`]: every write the store makes (content, header, usage counter).
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
    /// Removing an entry file (a delete, an eviction, `clear`, `gc`, the removal of a damaged
    /// entry). Not of the write path's plans ([`inject`]), whose numbering it would shift.
    RemoveFile,
    /// A read of a file's bytes (entries, headers, the state and counters files). Not of the
    /// write path's plans.
    Read,
}

/// What an armed plan of [`inject_fault`] does to the operations it strikes.
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with this OS error before it does anything (a full disk, `EIO`).
    Fail(i32),
    /// The operation is done, and then reported as failed with this OS error: a rename that
    /// happened, an fsync that ran (or an unlink that removed the file) but answered an error.
    /// Struck at the hooks of `crate::sys`' rename, fsync and unlink.
    FailAfterDone(i32),
    /// A read or write moves only part of its bytes (half, at least one) and says so, as the
    /// kernel may: the caller must carry on from there.
    Short,
}

#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn check(_: Point) -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn after<T>(_: Point, done: std::io::Result<T>) -> std::io::Result<T> {
    done
}

#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn len(_: Point, len: usize) -> std::io::Result<usize> {
    Ok(len)
}

#[cfg(any(test, feature = "fault-injection"))]
pub use armed::{Guard, Hit, hits, inject, inject_at, inject_fault};
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) use armed::{after, check, len};

#[cfg(any(test, feature = "fault-injection"))]
mod armed {
    use std::cell::RefCell;
    use std::io;

    use super::{Fault, Point};

    /// One operation that reached a hook while a plan was armed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Hit {
        /// Which operation.
        pub point: Point,
        /// Whether the plan made it fail (or, for [`Fault::Short`], cut it short).
        pub failed: bool,
    }

    struct Plan {
        /// Strike only operations at this point (see [`inject_fault`]); `None` for a plan of
        /// the write path, which never counts the points outside it.
        only: Option<Point>,
        fault: Fault,
        nth: u64,
        persistent: bool,
        seen: u64,
        hits: Vec<Hit>,
    }

    /// Where in an operation a hook is.
    #[derive(PartialEq)]
    enum Stage {
        Before,
        Moving,
        Done,
    }

    impl Fault {
        /// The stage at which this fault strikes an operation at `point`.
        fn stage(self, point: Point) -> Stage {
            match self {
                // Reads have no hook before them, only the one as they move bytes.
                Fault::Fail(_) if point == Point::Read => Stage::Moving,
                Fault::Fail(_) => Stage::Before,
                Fault::Short => Stage::Moving,
                Fault::FailAfterDone(_) => Stage::Done,
            }
        }
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

    fn arm(plan: Plan) -> Guard {
        PLAN.with(|p| *p.borrow_mut() = Some(plan));
        Guard(())
    }

    /// Arms a plan on the calling thread: the `nth` hooked operation of the write path from now
    /// on (counting from 1) fails with the OS error `errno` (e.g. `libc::ENOSPC`), and with
    /// `persistent` so does every later one, as on a disk that stays full. `nth == 0` records
    /// the operations without failing any.
    pub fn inject(nth: u64, errno: i32, persistent: bool) -> Guard {
        arm(Plan {
            only: None,
            fault: Fault::Fail(errno),
            nth,
            persistent,
            seen: 0,
            hits: Vec::new(),
        })
    }

    /// Arms a plan on the calling thread that fails every operation at `point` with the OS error
    /// `errno`, and no other (for the points outside the write path, such as
    /// [`Point::OpenShard`], which plans of [`inject`] do not count).
    pub fn inject_at(point: Point, errno: i32) -> Guard {
        inject_fault(point, Fault::Fail(errno), 1, true)
    }

    /// Arms a plan on the calling thread that strikes the `nth` operation at `point` from now on
    /// (counting from 1; with `persistent`, every later one too) with `fault`, and no other
    /// operation. `nth == 0` records the operations at `point` without striking any.
    pub fn inject_fault(point: Point, fault: Fault, nth: u64, persistent: bool) -> Guard {
        arm(Plan {
            only: Some(point),
            fault,
            nth,
            persistent,
            seen: 0,
            hits: Vec::new(),
        })
    }

    /// The hooked operations this thread has reached since the plan was armed, in order.
    pub fn hits() -> Vec<Hit> {
        PLAN.with(|p| p.borrow().as_ref().map(|p| p.hits.clone()).unwrap_or_default())
    }

    /// Whether the plan strikes this operation (counting and recording it); `None` when no
    /// armed plan looks at `point` at `stage`.
    fn strike(point: Point, stage: Stage) -> Option<Fault> {
        PLAN.with(|p| {
            let mut p = p.borrow_mut();
            let plan = p.as_mut()?;
            match plan.only {
                Some(only) if only != point || plan.fault.stage(point) != stage => return None,
                Some(_) => {}
                // Plans of the write path see only the points of the write path, before each.
                None if stage != Stage::Before
                    || matches!(point, Point::OpenShard | Point::RemoveFile | Point::Read) =>
                {
                    return None;
                }
                None => {}
            }
            plan.seen += 1;
            let failed = plan.nth != 0 && (plan.seen == plan.nth || (plan.persistent && plan.seen > plan.nth));
            plan.hits.push(Hit { point, failed });
            failed.then_some(plan.fault)
        })
    }

    /// Before an operation at `point`: an error if the plan fails it.
    pub(crate) fn check(point: Point) -> io::Result<()> {
        match strike(point, Stage::Before) {
            Some(Fault::Fail(errno)) => Err(io::Error::from_raw_os_error(errno)),
            _ => Ok(()),
        }
    }

    /// After an operation at `point` that answered `done`: an error in its place if the plan
    /// reports this one failed although it happened.
    pub(crate) fn after<T>(point: Point, done: io::Result<T>) -> io::Result<T> {
        // An operation that failed by itself is not counted: it did not happen.
        let value = done?;
        match strike(point, Stage::Done) {
            Some(Fault::FailAfterDone(errno)) => Err(io::Error::from_raw_os_error(errno)),
            _ => Ok(value),
        }
    }

    /// Before a read or write at `point` of `len` bytes: how many it may move (fewer if the
    /// plan cuts it short), or the error a read fails with.
    pub(crate) fn len(point: Point, len: usize) -> io::Result<usize> {
        match strike(point, Stage::Moving) {
            Some(Fault::Short) if len > 1 => Ok(len / 2),
            Some(Fault::Fail(errno)) => Err(io::Error::from_raw_os_error(errno)),
            _ => Ok(len),
        }
    }
}
