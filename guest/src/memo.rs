//! Memoizing computations through the cache.

use std::convert::Infallible;
use std::fmt;

use crate::{Error, Key};

/// Whether a memoized value came from the cache.
///
/// ```
/// use filecache_guest::Outcome;
///
/// assert!(Outcome::Hit.is_hit());
/// assert_eq!(Outcome::Miss.to_string(), "miss");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The value was found in the cache; the computation did not run.
    Hit,
    /// The value was not in the cache (or could not be read from it) and was computed.
    Miss,
}

impl Outcome {
    /// `true` for [`Outcome::Hit`].
    ///
    /// ```
    /// assert!(!filecache_guest::Outcome::Miss.is_hit());
    /// ```
    pub const fn is_hit(self) -> bool {
        matches!(self, Outcome::Hit)
    }

    /// `"hit"` or `"miss"`.
    ///
    /// ```
    /// assert_eq!(filecache_guest::Outcome::Hit.as_str(), "hit");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A memoized computation: a key, and how its entry moves to and from the cache.
///
/// The cache is best effort here: a failed lookup (any [`Error`], including a corrupt entry) counts
/// as a miss, and a failed store is ignored once the value is computed, so memoizing never fails
/// because of the cache. Errors of the computation itself are never cached.
///
/// By default the entry moves in one call each way ([`get`](crate::get) and
/// [`add`](crate::add)). [`Memo::streamed`] moves it through a [`Reader`](crate::Reader) and a
/// [`Writer`](crate::Writer) instead ([`open`](crate::open) and [`create`](crate::create)), in
/// chunks of at most 1 MiB, which spares the host a single large transfer: worth it for values
/// of more than about a megabyte.
///
/// [`memoize`], [`memoize_status`] and [`try_memoize`] are shorthands for the common cases.
///
/// ```no_run
/// use filecache_guest::{Memo, Outcome};
///
/// let input = vec![0u8; 8 << 20];
/// let (value, outcome) = Memo::new(&[b"checksum-tool 2", &input])
///     .streamed(input.len() > 1 << 20)
///     .run(|| input.chunks(4096).map(|c| c.len() as u8).collect());
/// println!("{outcome}: {} bytes", value.len());
/// ```
#[derive(Debug, Clone)]
pub struct Memo {
    key: Key,
    streamed: bool,
}

impl Memo {
    /// Memoizes under [`Key::from_parts(key_parts)`](Key::from_parts).
    ///
    /// ```no_run
    /// let memo = filecache_guest::Memo::new(&[b"tool 1", b"input"]);
    /// ```
    pub fn new(key_parts: &[&[u8]]) -> Memo {
        Memo::with_key(Key::from_parts(key_parts))
    }

    /// Memoizes under an already derived key.
    ///
    /// ```no_run
    /// use filecache_guest::{Key, Memo};
    ///
    /// let memo = Memo::with_key(Key::from_bytes([0; 32]));
    /// ```
    pub fn with_key(key: Key) -> Memo {
        Memo { key, streamed: false }
    }

    /// Whether to move the entry through a reader and writer (`true`) or in one call each way
    /// (`false`, the default).
    ///
    /// ```no_run
    /// let memo = filecache_guest::Memo::new(&[b"tool 1", b"big input"]).streamed(true);
    /// ```
    pub fn streamed(mut self, streamed: bool) -> Memo {
        self.streamed = streamed;
        self
    }

    /// The key the value is stored under.
    ///
    /// ```
    /// use filecache_guest::{Key, Memo};
    ///
    /// assert_eq!(Memo::new(&[b"a"]).key(), &Key::from_parts(&[b"a"]));
    /// ```
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Returns the cached value, or runs `compute`, stores its result and returns it.
    ///
    /// ```no_run
    /// let (value, outcome) = filecache_guest::Memo::new(&[b"answer"]).run(|| b"42".to_vec());
    /// ```
    pub fn run(self, compute: impl FnOnce() -> Vec<u8>) -> (Vec<u8>, Outcome) {
        match self.try_run(|| Ok::<_, Infallible>(compute())) {
            Ok(result) => result,
            Err(never) => match never {},
        }
    }

    /// Like [`Memo::run`] for a computation that can fail: its error is returned, and nothing is
    /// stored.
    ///
    /// ```no_run
    /// let (value, _) = filecache_guest::Memo::new(&[b"config"])
    ///     .try_run(|| std::fs::read("/config/settings.json"))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_run<E>(self, compute: impl FnOnce() -> Result<Vec<u8>, E>) -> Result<(Vec<u8>, Outcome), E> {
        if let Some(value) = self.lookup() {
            return Ok((value, Outcome::Hit));
        }
        let value = compute()?;
        // Best effort: a value that cannot be stored is still the right answer.
        let _ = self.store(&value);
        Ok((value, Outcome::Miss))
    }

    fn lookup(&self) -> Option<Vec<u8>> {
        if self.streamed {
            crate::open(&self.key).ok()??.read_all().ok()
        } else {
            crate::get(&self.key).ok()?
        }
    }

    fn store(&self, value: &[u8]) -> Result<(), Error> {
        if self.streamed {
            let mut writer = crate::create(&self.key)?;
            writer.write_bytes(value)?;
            writer.commit()
        } else {
            crate::add(&self.key, value)
        }
    }
}

/// Returns the value cached under [`Key::from_parts(key_parts)`](Key::from_parts), or runs
/// `compute`, caches its result and returns it.
///
/// Best effort: any cache error is treated as a miss (on lookup) or ignored (on store), so this
/// never fails. Put everything the result depends on into `key_parts`.
///
/// ```no_run
/// let input = b"hello";
/// let upper = filecache_guest::memoize(&[b"uppercase v1", input], || input.to_ascii_uppercase());
/// assert_eq!(upper, b"HELLO");
/// ```
pub fn memoize(key_parts: &[&[u8]], compute: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    Memo::new(key_parts).run(compute).0
}

/// Like [`memoize`], and also tells whether the value came from the cache.
///
/// ```no_run
/// use filecache_guest::{memoize_status, Outcome};
///
/// let (value, outcome) = memoize_status(&[b"uppercase v1", b"hello"], || b"HELLO".to_vec());
/// match outcome {
///     Outcome::Hit => println!("from the cache"),
///     Outcome::Miss => println!("computed"),
/// }
/// ```
pub fn memoize_status(key_parts: &[&[u8]], compute: impl FnOnce() -> Vec<u8>) -> (Vec<u8>, Outcome) {
    Memo::new(key_parts).run(compute)
}

/// Like [`memoize`] for a computation that can fail: its error is returned and nothing is cached.
/// Cache errors are still ignored.
///
/// ```no_run
/// let parsed = filecache_guest::try_memoize(&[b"parse v1", b"12345"], || {
///     let n: u64 = "12345".parse()?;
///     Ok::<_, std::num::ParseIntError>(n.to_le_bytes().to_vec())
/// })?;
/// # Ok::<(), std::num::ParseIntError>(())
/// ```
pub fn try_memoize<E>(key_parts: &[&[u8]], compute: impl FnOnce() -> Result<Vec<u8>, E>) -> Result<Vec<u8>, E> {
    Ok(Memo::new(key_parts).try_run(compute)?.0)
}
