//! The content-addressed blobstore: `blobs/sha256/<hex>` under the state directory, owner-only.
//! A blob is written under a temporary name, its digest checked, then renamed into place, so a
//! reader never sees half a blob and a blob's name always matches its bytes — until the disk says
//! otherwise: [`Blobstore::verify`] hashes a blob before it is served (remembering what it checked
//! by size and modification time) and moves a corrupt one aside, so whatever made it (an upload, a
//! compilation, the compiled-package cache) can make it again.
//!
//! What the blobstore holds: releases' job and package tarballs and compiled packages. Rendered
//! jobs — which carry the deployment's secrets — are never written here: the hub serves them from
//! memory during the apply that needs them (`AgentHub::offer_rendered`).

use bosun_types::digest::{parse_sha256, sha256_digest};
use bosun_types::protocol::BlobRef;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("`{0}` is not a sha256 digest")]
    BadDigest(String),
    #[error("blob {0} is not in the blobstore")]
    Missing(String),
    #[error(
        "blob {} in the blobstore is corrupt (its bytes have digest {}); it was moved to {}",
        .0.digest, .0.actual, .0.quarantined.display()
    )]
    Corrupt(Box<CorruptBlob>),
    #[error("blob {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A blob whose bytes are not what its digest says, and where it was moved.
#[derive(Debug)]
pub struct CorruptBlob {
    pub digest: String,
    pub actual: String,
    pub quarantined: PathBuf,
}

/// What a blob file looked like when its digest was last checked.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    size: u64,
    modified: Option<SystemTime>,
}

impl Seen {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { size: meta.len(), modified: meta.modified().ok() }
    }
}

#[derive(Clone)]
pub struct Blobstore {
    dir: PathBuf,
    corrupt_dir: PathBuf,
    verified: Arc<Mutex<HashMap<String, Seen>>>,
}

/// What a garbage collection did.
#[derive(Debug, Default, PartialEq)]
pub struct Collected {
    pub deleted: usize,
    pub bytes: u64,
    pub kept: usize,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.to_path_buf(), source }
}

impl Blobstore {
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        let corrupt_dir = dir.join("corrupt");
        let dir = dir.join("sha256");
        for d in [&dir, &corrupt_dir] {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d).map_err(io_at(d))?;
        }
        Ok(Self { dir, corrupt_dir, verified: Arc::default() })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let hex = parse_sha256(digest).ok_or_else(|| BlobError::BadDigest(digest.to_string()))?;
        Ok(self.dir.join(hex))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    /// A fresh path in the blobstore's directory for a blob being written (then [`Self::adopt`]).
    pub fn temp_path(&self) -> PathBuf {
        self.dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()))
    }

    /// Moves a fully written and synced file whose digest the caller checked into place.
    pub fn adopt(&self, tmp: &Path, digest: &str) -> Result<BlobRef, BlobError> {
        let path = self.path(digest)?;
        let size = std::fs::metadata(tmp).map_err(io_at(tmp))?.len();
        std::fs::rename(tmp, &path).map_err(io_at(&path))?;
        self.verified.lock().expect("blobstore lock").remove(digest);
        Ok(BlobRef { digest: digest.to_string(), size })
    }

    /// Whether the blob of `digest` is present with the right bytes. A present blob whose bytes
    /// are wrong is moved aside (and the error says where); a blob verified before and unchanged
    /// since (size, modification time) is not hashed again. Blocking.
    pub fn verify(&self, digest: &str) -> Result<BlobRef, BlobError> {
        let path = self.path(digest)?;
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::Missing(digest.into())),
            Err(e) => return Err(io_at(&path)(e)),
        };
        let seen = Seen::of(&meta);
        if self.verified.lock().expect("blobstore lock").get(digest) == Some(&seen) {
            return Ok(BlobRef { digest: digest.to_string(), size: seen.size });
        }
        let actual = file_digest(&path)?;
        if actual != digest {
            self.verified.lock().expect("blobstore lock").remove(digest);
            let quarantined = self.corrupt_dir.join(format!(
                "{}.{}",
                path.file_name().expect("a blob path has a file name").to_string_lossy(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::rename(&path, &quarantined).map_err(io_at(&path))?;
            tracing::error!(digest, actual, quarantined = %quarantined.display(), "a corrupt blob was moved aside");
            return Err(BlobError::Corrupt(Box::new(CorruptBlob { digest: digest.into(), actual, quarantined })));
        }
        self.verified.lock().expect("blobstore lock").insert(digest.to_string(), seen);
        Ok(BlobRef { digest: digest.to_string(), size: seen.size })
    }

    /// Whether the blob is there and sound: a corrupt one is moved aside (so it is made again)
    /// and counts as absent. Blocking.
    pub fn has_sound(&self, digest: &str) -> bool {
        self.verify(digest).is_ok()
    }

    /// Stores bytes; blocking (small blobs).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobRef, BlobError> {
        let digest = sha256_digest(bytes);
        if !self.reuse(&digest) {
            let tmp = self.temp_path();
            let written = (|| {
                let mut f = private_file(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_at(&tmp)(e));
            }
            self.adopt(&tmp, &digest)?;
        }
        Ok(BlobRef { digest, size: bytes.len() as u64 })
    }

    /// Stores a file's content by copying it in; blocking. Returns its reference.
    pub fn put_file(&self, file: &Path) -> Result<BlobRef, BlobError> {
        let digest = file_digest(file)?;
        if !self.reuse(&digest) {
            let tmp = self.temp_path();
            let copied = (|| {
                let mut out = private_file(&tmp)?;
                std::io::copy(&mut std::fs::File::open(file)?, &mut out)?;
                out.sync_all()
            })();
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_at(&tmp)(e));
            }
            return self.adopt(&tmp, &digest);
        }
        let size = std::fs::metadata(self.path(&digest)?).map_err(io_at(file))?.len();
        Ok(BlobRef { digest, size })
    }

    /// Whether a sound copy of `digest` is already stored; if so it is marked as just used, so a
    /// garbage collection that began earlier leaves it alone (see [`Self::collect_garbage`]).
    fn reuse(&self, digest: &str) -> bool {
        if !self.has_sound(digest) {
            return false;
        }
        let Ok(path) = self.path(digest) else { return false };
        let touched = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        match touched {
            Ok(()) => {
                // Its modification time moved: remember it as verified as it is now.
                if let Ok(meta) = std::fs::metadata(&path) {
                    self.verified.lock().expect("blobstore lock").insert(digest.to_string(), Seen::of(&meta));
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Every blob stored, by digest.
    pub fn list(&self) -> Result<Vec<String>, BlobError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let name = entry.map_err(io_at(&self.dir))?.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if parse_sha256(&digest).is_some() {
                out.push(digest);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes every blob not in `referenced` that was last written or reused before `started`
    /// (the moment the caller began reading what is referenced): a blob stored or reused since,
    /// by work the caller's reading may not have seen recorded yet, stays. Blocking.
    pub fn collect_garbage(&self, referenced: &BTreeSet<String>, started: SystemTime) -> Result<Collected, BlobError> {
        let mut collected = Collected::default();
        for digest in self.list()? {
            if referenced.contains(&digest) {
                collected.kept += 1;
                continue;
            }
            let path = self.path(&digest)?;
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.modified().map_or(true, |m| m >= started) {
                collected.kept += 1;
                continue;
            }
            std::fs::remove_file(&path).map_err(io_at(&path))?;
            self.verified.lock().expect("blobstore lock").remove(&digest);
            collected.deleted += 1;
            collected.bytes += meta.len();
        }
        Ok(collected)
    }
}

/// A new file only the owner can read or write.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(path)
}

/// The sha256 digest of a file's bytes; blocking.
pub fn file_digest(path: &Path) -> Result<String, BlobError> {
    let read = std::fs::File::open(path).and_then(bosun_types::digest::sha256_of_reader);
    Ok(read.map_err(io_at(path))?.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn blobs_are_owner_only_and_a_corrupt_one_is_moved_aside_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Blobstore::open(dir.path()).unwrap();
        let blob = store.put_bytes(b"hello").unwrap();
        let path = store.path(&blob.digest).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("sha256")).unwrap().permissions().mode() & 0o777, 0o700);
        store.verify(&blob.digest).unwrap();

        std::fs::write(&path, b"jello").unwrap();
        let err = store.verify(&blob.digest).unwrap_err();
        assert!(matches!(err, BlobError::Corrupt(_)), "{err}");
        assert!(!path.exists(), "the corrupt blob is moved aside");
        assert_eq!(std::fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 1);
        assert!(matches!(store.verify(&blob.digest), Err(BlobError::Missing(_))));

        // Storing the same bytes again repairs it.
        store.put_bytes(b"hello").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        store.verify(&blob.digest).unwrap();
    }

    #[test]
    fn a_corrupt_blob_is_replaced_when_the_same_content_is_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Blobstore::open(dir.path()).unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"package bytes").unwrap();
        let blob = store.put_file(&src).unwrap();
        let path = store.path(&blob.digest).unwrap();
        // Same size, other bytes, an older modification time: nothing but the digest tells.
        std::fs::write(&path, b"packagE bytes").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        assert_eq!(store.put_file(&src).unwrap(), blob);
        assert_eq!(std::fs::read(&path).unwrap(), b"package bytes");
    }

    #[test]
    fn garbage_collection_keeps_referenced_and_recently_used_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Blobstore::open(dir.path()).unwrap();
        let old_path = |d: &str| store.path(d).unwrap();
        let kept = store.put_bytes(b"referenced").unwrap();
        let garbage = store.put_bytes(b"garbage").unwrap();
        let reused = store.put_bytes(b"reused").unwrap();
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for b in [&kept, &garbage, &reused] {
            std::fs::File::options().write(true).open(old_path(&b.digest)).unwrap().set_modified(an_hour_ago).unwrap();
        }
        let started = SystemTime::now() - Duration::from_secs(60);
        // Stored again after the collection began reading what is referenced: it stays.
        store.put_bytes(b"reused").unwrap();
        let referenced = BTreeSet::from([kept.digest.clone()]);
        let collected = store.collect_garbage(&referenced, started).unwrap();
        assert_eq!(collected.deleted, 1);
        assert_eq!(collected.bytes, 7);
        assert!(store.contains(&kept.digest));
        assert!(!store.contains(&garbage.digest));
        assert!(store.contains(&reused.digest));
    }
}
