//! Failures on demand at chosen points of the engine's write path, for tests (feature
//! `fault-injection`, and this crate's own tests). Armed per thread, so that tests running in
//! parallel do not strike each other. Without the feature, every check compiles to nothing.

/// Where a failure can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Point {
    /// Inside a write transaction, after its rows are written, before `COMMIT`.
    BeforeCommit,
    /// The import of old records: after its transaction committed, before their files go.
    ImportCommitted,
    /// The import: after the first old record file is removed.
    ImportRemovedOne,
}

#[cfg(any(test, feature = "fault-injection"))]
mod armed {
    use super::Point;
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<Option<Point>> = const { Cell::new(None) };
    }

    /// Makes the next check of `point` on this thread fail (once), until the guard is dropped.
    pub fn inject(point: Point) -> Guard {
        ARMED.with(|a| a.set(Some(point)));
        Guard(())
    }

    /// Disarms on drop.
    pub struct Guard(());

    impl Drop for Guard {
        fn drop(&mut self) {
            ARMED.with(|a| a.set(None));
        }
    }

    pub(crate) fn check(point: Point) -> std::io::Result<()> {
        ARMED.with(|a| {
            if a.get() == Some(point) {
                a.set(None);
                Err(std::io::Error::other(format!("injected failure at {point:?}")))
            } else {
                Ok(())
            }
        })
    }
}

#[cfg(any(test, feature = "fault-injection"))]
pub(crate) use armed::check;
#[cfg(any(test, feature = "fault-injection"))]
pub use armed::{Guard, inject};

#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn check(_: Point) -> std::io::Result<()> {
    Ok(())
}
