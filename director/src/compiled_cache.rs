//! The global compiled-package cache (BOSH's `compiled_package_cache`):
//! `bosun director --compiled-package-cache DIR` keeps every compiled package outside the
//! director's state, so another director on the machine — every test's, for one — takes it from
//! there instead of compiling again.
//!
//! An entry is `DIR/<key hex>.tgz` and its record `DIR/<key hex>.json` (written last, so an entry
//! without a record is unfinished and ignored). An entry whose bytes do not have the digest its
//! record says is refused, removed and compiled again.

use crate::records::CompiledPackageRecord;
use crate::Director;
use bosun_types::digest::parse_sha256;
use std::path::{Path, PathBuf};

fn entry(dir: &Path, key: &str) -> Result<(PathBuf, PathBuf), String> {
    let hex = parse_sha256(key).ok_or_else(|| format!("`{key}` is not a compiled-package key"))?;
    Ok((dir.join(format!("{hex}.tgz")), dir.join(format!("{hex}.json"))))
}

/// The cached package of `key`, stored into the director's blobstore after its digest checked
/// out; `None` when the cache has no finished entry for it.
pub async fn take(d: &Director, dir: &Path, key: &str) -> Result<Option<CompiledPackageRecord>, String> {
    let (tgz, json) = entry(dir, key)?;
    let text = match tokio::fs::read(&json).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", json.display())),
    };
    let record: CompiledPackageRecord =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    if record.key != key {
        return Err(format!("{} is the record of another key", json.display()));
    }
    let blobstore = d.blobstore.clone();
    let tgz2 = tgz.clone();
    let stored = tokio::task::spawn_blocking(move || blobstore.put_file(&tgz2))
        .await
        .map_err(|e| format!("reading the cache: {e}"))?
        .map_err(|e| bosun_types::error_chain(&e))?;
    if stored != record.blob {
        // Never serve it again.
        let _ = tokio::fs::remove_file(&json).await;
        let _ = tokio::fs::remove_file(&tgz).await;
        return Err(format!(
            "{} has digest {} ({} bytes), its record says {} ({} bytes)",
            tgz.display(),
            stored.digest,
            stored.size,
            record.blob.digest,
            record.blob.size
        ));
    }
    Ok(Some(record))
}

/// Keeps a compiled package in the cache (the blob first, then its record, each written whole
/// and renamed into place).
pub async fn keep(d: &Director, dir: &Path, record: &CompiledPackageRecord) -> Result<(), String> {
    let (tgz, json) = entry(dir, &record.key)?;
    let blob = d.blobstore.path(&record.blob.digest).map_err(|e| e.to_string())?;
    let dir = dir.to_path_buf();
    let bytes = serde_json::to_vec_pretty(record).expect("records serialize");
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::io::Write;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let result = (|| -> std::io::Result<()> {
            std::fs::copy(&blob, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &tgz)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &json)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(|e| format!("{}: {e}", dir.display()))
    })
    .await
    .map_err(|e| format!("writing the cache: {e}"))?
}
