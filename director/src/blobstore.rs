//! The content-addressed blobstore: `blobs/sha256/<hex>` under the state directory. A blob is
//! written under a temporary name, its digest checked, then renamed into place, so a reader never
//! sees half a blob and a blob's name always matches its bytes.

use bosun_types::digest::{parse_sha256, sha256_digest, Sha256Writer};
use bosun_types::protocol::BlobRef;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("`{0}` is not a sha256 digest")]
    BadDigest(String),
    #[error("blob {0} is not in the blobstore")]
    Missing(String),
    #[error("blob {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct Blobstore {
    dir: PathBuf,
}

impl Blobstore {
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        let dir = dir.join("sha256");
        std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io { path: dir.clone(), source })?;
        Ok(Self { dir })
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
        let size = std::fs::metadata(tmp).map_err(|source| BlobError::Io { path: tmp.to_path_buf(), source })?.len();
        std::fs::rename(tmp, &path).map_err(|source| BlobError::Io { path: path.clone(), source })?;
        Ok(BlobRef { digest: digest.to_string(), size })
    }

    /// Stores bytes; blocking (small blobs: rendered templates).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobRef, BlobError> {
        let digest = sha256_digest(bytes);
        let path = self.path(&digest)?;
        if !path.exists() {
            let tmp = self.dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
            let io = |source| BlobError::Io { path: tmp.clone(), source };
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(|source| BlobError::Io { path: path.clone(), source })?;
        }
        Ok(BlobRef { digest, size: bytes.len() as u64 })
    }

    /// Stores a file's content by copying it in; blocking. Returns its reference.
    pub fn put_file(&self, file: &Path) -> Result<BlobRef, BlobError> {
        let io = |source| BlobError::Io { path: file.to_path_buf(), source };
        let mut hasher = Sha256Writer::default();
        let mut f = std::fs::File::open(file).map_err(io)?;
        let size = std::io::copy(&mut f, &mut hasher).map_err(io)?;
        let digest = hasher.finish();
        let path = self.path(&digest)?;
        if !path.exists() {
            let tmp = self.dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
            std::fs::copy(file, &tmp).map_err(|source| BlobError::Io { path: tmp.clone(), source })?;
            std::fs::rename(&tmp, &path).map_err(|source| BlobError::Io { path: path.clone(), source })?;
        }
        Ok(BlobRef { digest, size })
    }
}
