//! The verified-identity memo (`.compiled-digests`): what is remembered by file identity so that a
//! warm load neither reads a component file nor computes an artifact's MAC again.
//!
//! Two kinds of record, each authenticated by a MAC under the secret of remembered digests:
//! a component file's SHA-256 under the file's identity, and the fact that an artifact file of a
//! given identity was verified in full as the artifact for a key. A file's identity includes its
//! change time, which any write changes and no user can set, so a file written since is hashed
//! or verified in full again.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::load::Disk;
use super::secret::mac;
use super::{Inner, sys};
use crate::Key;

/// A file changed this recently may change again within the same timestamp tick, so what is
/// known of it is not remembered (git's "racy" rule). Two seconds covers the coarsest timestamps
/// in use, FAT's.
pub(super) const RACY: Duration = Duration::from_secs(2);

/// What the MAC of a remembered verification starts with (apart from remembered digests, which
/// share the secret).
const VERIFIED_LABEL: &[u8] = b"filecache verified artifact v1\0";

/// A key naming a file's identity: device, inode, size, modification and change times (any
/// write to the file changes its change time, which no user can set), and when it last changed.
/// `None` where the platform cannot tell (see `sys::identity`): the file is then hashed.
pub(super) fn file_identity(meta: &std::fs::Metadata) -> Option<(Key, SystemTime)> {
    let (fields, changed) = sys::identity(meta)?;
    let mut h = Sha256::new();
    h.update(b"filecache file identity v1\0");
    for v in fields {
        h.update(v.to_le_bytes());
    }
    Some((Key::new(h.finalize().into()), changed))
}

/// The MAC a memo of a verified artifact file carries: of its identity and its key, under the
/// secret of remembered digests.
fn verified_tag(disk: &Disk, identity: &Key, key: &Key) -> blake3::Hash {
    mac(
        &disk.secret.digest,
        &[VERIFIED_LABEL, identity.as_bytes(), key.as_bytes()],
    )
}

/// Where the memo of a verified artifact file lives in the digests namespace.
pub(super) fn verified_key(identity: &Key, key: &Key) -> Key {
    let mut h = Sha256::new();
    h.update(VERIFIED_LABEL);
    h.update(identity.as_bytes());
    h.update(key.as_bytes());
    Key::new(h.finalize().into())
}

impl Inner {
    /// The digest remembered for a file identity, if its record is authentic.
    pub(super) fn remembered_digest(&self, identity: &Key) -> Option<[u8; 32]> {
        let disk = self.disk.as_ref()?;
        let record = disk.digests.get(identity).ok()??;
        let (digest, tag) = record.split_at_checked(32)?;
        let expected = mac(&disk.secret.digest, &[identity.as_bytes(), digest]);
        (tag.len() == 32 && expected == blake3::Hash::from_bytes(tag.try_into().ok()?))
            .then(|| digest.try_into().ok())?
    }

    /// Whether the artifact file of identity `identity` was verified in full as the artifact for
    /// `key` before: a record under a key derived from both, holding a MAC of both.
    pub(super) fn remembered_verified(&self, identity: &Key, key: &Key) -> bool {
        let Some(disk) = self.disk.as_ref() else {
            return false;
        };
        let Ok(Some(record)) = disk.digests.get(&verified_key(identity, key)) else {
            return false;
        };
        <[u8; 32]>::try_from(record.as_slice())
            .is_ok_and(|tag| verified_tag(disk, identity, key) == blake3::Hash::from_bytes(tag))
    }

    /// Remembers that the artifact file of identity `identity` was verified in full as the
    /// artifact for `key`, unless it changed too recently for its timestamps to tell a later
    /// change apart.
    pub(super) fn remember_verified(&self, identity: &Key, changed: SystemTime, key: &Key) {
        self.remember(changed, "a verified artifact", |disk| {
            (
                verified_key(identity, key),
                verified_tag(disk, identity, key).as_bytes().to_vec(),
            )
        });
    }

    /// Remembers a file's digest by its identity, unless the file changed too recently for its
    /// timestamps to tell a later change apart.
    pub(super) fn remember_digest(&self, identity: &Key, changed: SystemTime, digest: &[u8; 32]) {
        self.remember(changed, "a component's digest", |disk| {
            let tag = mac(&disk.secret.digest, &[identity.as_bytes(), digest]);
            let mut record = digest.to_vec();
            record.extend_from_slice(tag.as_bytes());
            (*identity, record)
        });
    }

    /// Stores the memo `record` (key and bytes) in the digests namespace, unless the file it is
    /// about changed (at `changed`) within the racy window, or the cache cannot be written. Best
    /// effort: a failure is logged.
    fn remember(&self, changed: SystemTime, what: &str, record: impl FnOnce(&Disk) -> (Key, Vec<u8>)) {
        let Some(disk) = self.disk.as_ref().filter(|d| d.writable) else {
            return;
        };
        if SystemTime::now().duration_since(changed).unwrap_or_default() < disk.racy {
            return;
        }
        let (key, bytes) = record(disk);
        if let Err(e) = disk.digests.add(&key, &bytes) {
            tracing::debug!("cannot remember {what}: {}", e.full_message());
            return;
        }
        let added = disk.remembered.fetch_add(1, Ordering::Relaxed);
        if added % (disk.max_remembered / 4).max(1) == 0
            && let Err(e) = disk.forget_least_recently_used()
        {
            tracing::debug!("cannot bound the remembered digests: {}", e.full_message());
        }
    }
}

impl Disk {
    /// Keeps at most `max_remembered` records in the digests namespace: past it, removes the
    /// least recently used, down to three quarters of the bound (so the next check is not
    /// due at once).
    fn forget_least_recently_used(&self) -> crate::Result<()> {
        let entries = self.digests.scan(0)?.entries;
        if entries <= self.max_remembered {
            return Ok(());
        }
        let keep = self.max_remembered - self.max_remembered / 4;
        let excess = usize::try_from(entries - keep).unwrap_or(usize::MAX);
        for old in self.digests.scan(excess)?.oldest {
            self.digests.delete(&old.key)?;
        }
        Ok(())
    }
}
