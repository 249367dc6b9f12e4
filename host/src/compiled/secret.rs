//! The per-cache secret that authenticates compiled code.
//!
//! Deserializing an artifact runs its native code, so the cache only loads artifacts that carry a
//! MAC under a secret only this user can read: `<cache root>/compiled.key`, 32 random bytes, mode
//! 0600, created on first use. A key file that others could read or write, or that is not ours,
//! is not trusted: it is replaced by a new one (which makes every stored artifact fail its check
//! and be recompiled).

use std::io::{Read, Write};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};

use super::sys;
use crate::{Error, Result};
use filecache_store::IoContext;

/// The key file's name in the cache root.
pub const SECRET_FILE: &str = "compiled.key";
const SECRET_LEN: usize = 32;

/// Keys derived from the cache's secret, one per use.
#[derive(Clone)]
pub(crate) struct Secret {
    /// Authenticates compiled artifacts.
    pub(crate) artifact: [u8; 32],
    /// Authenticates remembered digests of component files.
    pub(crate) digest: [u8; 32],
    /// Authenticates incremental-compilation entries.
    #[cfg(feature = "incremental")]
    pub(crate) incremental: [u8; 32],
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    fn derive(raw: &[u8; SECRET_LEN]) -> Secret {
        Secret {
            artifact: blake3::derive_key("filecache 2026-11 compiled artifact MAC", raw),
            digest: blake3::derive_key("filecache 2026-11 component digest memo MAC", raw),
            #[cfg(feature = "incremental")]
            incremental: blake3::derive_key("filecache 2026-11 incremental compilation MAC", raw),
        }
    }

    /// Reads the cache's secret, creating it if there is none (or replacing an untrustworthy
    /// one). Fails if the cache root cannot be written and holds no usable secret.
    pub(crate) fn load_or_create(root: &Dir) -> Result<Secret> {
        match read(root, true)? {
            Some(raw) => Ok(Secret::derive(&raw)),
            None => Ok(Secret::derive(&create(root)?)),
        }
    }
}

/// The secret, if there is a trustworthy one. An untrustworthy one is reported (once: `warn` is
/// false when `create` looks again) and will be replaced; a directory in its place is an error
/// that says what to do, since replacing it would mean deleting what someone put there.
fn read(root: &Dir, warn: bool) -> Result<Option<[u8; SECRET_LEN]>> {
    let mut oo = OpenOptions::new();
    oo.read(true).follow(FollowSymlinks::No);
    sys::nonblocking(&mut oo);
    let file = match root.open_with(SECRET_FILE, &oo) {
        Ok(f) => f.into_std(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if sys::is_symlink_error(&e) => {
            if warn {
                tracing::warn!("the cache's secret {SECRET_FILE} is a symlink: not trusted, replacing it");
            }
            return Ok(None);
        }
        // (Linux opens a directory for reading; Windows refuses it.)
        Err(_) if root.symlink_metadata(SECRET_FILE).is_ok_and(|m| m.is_dir()) => {
            return Err(directory_in_the_way());
        }
        Err(e) => return Err(Error::io(format!("cannot open the cache's secret {SECRET_FILE}"), e)),
    };
    let meta = file
        .metadata()
        .context(|| format!("cannot stat the cache's secret {SECRET_FILE}"))?;
    if meta.is_dir() {
        return Err(directory_in_the_way());
    }
    let why_not = if !meta.is_file() {
        Some("not a regular file")
    } else if let Err(why) = sys::check_private(&meta, 0o077) {
        Some(why)
    } else if meta.len() != SECRET_LEN as u64 {
        Some("of the wrong size")
    } else {
        None
    };
    if let Some(why) = why_not {
        if warn {
            tracing::warn!(
                "the cache's secret {SECRET_FILE} is {why}: not trusted, replacing it (stored compiled code will be \
                 compiled afresh)"
            );
        }
        return Ok(None);
    }
    let mut raw = [0u8; SECRET_LEN];
    (&file)
        .read_exact(&mut raw)
        .context(|| format!("cannot read the cache's secret {SECRET_FILE}"))?;
    Ok(Some(raw))
}

/// A directory where the secret belongs: not ours to delete, so the user is told what to do.
fn directory_in_the_way() -> Error {
    Error::io(
        format!("{SECRET_FILE} in the cache directory is a directory, where the cache keeps its secret"),
        std::io::Error::other("remove that directory, and the next run creates a new secret"),
    )
}

/// Writes a new secret atomically (temporary file, fsync, rename), unless another process got
/// there first, whose secret is then used.
fn create(root: &Dir) -> Result<[u8; SECRET_LEN]> {
    let mut raw = [0u8; SECRET_LEN];
    getrandom::fill(&mut raw)
        .map_err(|e| Error::io("cannot draw a random secret", std::io::Error::other(e.to_string())))?;
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    let tmp = format!("{SECRET_FILE}.{}.tmp", hex::encode(nonce));
    let mut oo = OpenOptions::new();
    oo.write(true).create_new(true).follow(FollowSymlinks::No);
    sys::owner_only(&mut oo);
    let ctx = || format!("cannot write the cache's secret {SECRET_FILE}");
    let result = (|| {
        let mut file = root.open_with(&tmp, &oo)?.into_std();
        file.write_all(&raw)?;
        file.sync_all()?;
        // Linking never replaces: if a key appeared since we looked, another process created
        // it, and everyone must agree on one key. Only an untrustworthy one is replaced.
        match root.hard_link(&tmp, root, SECRET_FILE) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Ok(Some(theirs)) = read(root, false) {
                    return Ok(Some(theirs));
                }
                root.rename(&tmp, root, SECRET_FILE)?;
            }
            Err(e) => return Err(e),
        }
        // The new name must survive power loss too; if the root cannot be fsynced, the key works
        // now and may be lost, which only costs recompiles (a new key), so it is not an error.
        if let Err(e) = sys::sync_dir(root) {
            tracing::warn!("cannot fsync the cache directory after creating {SECRET_FILE}: {e}");
        }
        Ok(None)
    })();
    let _ = root.remove_file(&tmp);
    match result {
        Ok(Some(theirs)) => Ok(theirs),
        Ok(None) => Ok(raw),
        Err(e) => Err(Error::io(ctx(), e)),
    }
}

/// A keyed BLAKE3 MAC over `parts`, in order.
pub(crate) fn mac(key: &[u8; 32], parts: &[&[u8]]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    for p in parts {
        if p.len() >= PARALLEL_FROM {
            h.update_rayon(p);
        } else {
            h.update(p);
        }
    }
    h.finalize()
}

/// From this size, hashing is split across threads.
const PARALLEL_FROM: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_fsync_of_the_cache_root_succeeds() {
        // Issue 11 finding 8: the key file's fsync of the cache root went to cap-std's `O_PATH`
        // handle, which always fails (EBADF), and the error was dropped.
        let d = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(d.path(), cap_std::ambient_authority()).unwrap();
        sys::sync_dir(&root).expect("the cache root can be fsynced");
        Secret::load_or_create(&root).unwrap();
    }

    #[test]
    fn a_directory_in_its_place_is_an_error_that_says_what_to_do_and_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(d.path(), cap_std::ambient_authority()).unwrap();
        std::fs::create_dir(d.path().join(SECRET_FILE)).unwrap();
        std::fs::write(d.path().join(SECRET_FILE).join("notes"), b"someone's").unwrap();
        let e = Secret::load_or_create(&root).unwrap_err().full_message();
        assert!(
            e.contains("is a directory") && e.contains("remove that directory"),
            "{e}"
        );
        assert!(d.path().join(SECRET_FILE).join("notes").is_file());
        // No temporary key file left beside it.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    #[cfg(unix)]
    fn created_once_owner_only_and_replaced_when_untrustworthy() {
        use std::os::unix::fs::PermissionsExt;

        let d = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(d.path(), cap_std::ambient_authority()).unwrap();
        let a = Secret::load_or_create(&root).unwrap();
        let path = d.path().join(SECRET_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = Secret::load_or_create(&root).unwrap();
        assert_eq!(a.artifact, b.artifact, "the same secret on a second open");
        assert_ne!(a.artifact, a.digest, "derived keys differ per use");

        // Readable by others: not trusted, so replaced.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Secret::load_or_create(&root).unwrap();
        assert_ne!(a.artifact, c.artifact);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        // Wrong size, or a symlink: replaced too.
        std::fs::write(&path, b"short").unwrap();
        let e = Secret::load_or_create(&root).unwrap();
        assert_ne!(c.artifact, e.artifact);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        Secret::load_or_create(&root).unwrap();
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
