//! The global compiled-package cache (BOSH's `compiled_package_cache`):
//! `bosun director --compiled-package-cache DIR` keeps every compiled package outside the
//! director's state, so another director on the machine — every test's, for one — takes it from
//! there instead of compiling again.
//!
//! An entry is `DIR/<key hex>.tgz` and its record `DIR/<key hex>.json` (written last, so an entry
//! without a record is unfinished and ignored). An entry whose bytes do not have the digest its
//! record says is refused, removed and compiled again. A director about to compile a package the
//! cache lacks first claims its key (`DIR/<key hex>.lock`, an exclusive file lock the kernel drops
//! when the process ends), so directors needing the same package at once compile it once: the
//! others wait, then take it.

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

/// A key claimed for compiling: held until dropped (or the process ends).
#[derive(Debug)]
pub struct Claim(#[allow(dead_code)] std::fs::File);

fn lock_file(dir: &Path, key: &str) -> Result<std::fs::File, String> {
    let hex = parse_sha256(key).ok_or_else(|| format!("`{key}` is not a compiled-package key"))?;
    let path = dir.join(format!("{hex}.lock"));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Claims `key` for compiling. When another director holds it, `waiting` runs first, then this
/// waits for that director to finish (and the caller looks in the cache again).
pub async fn claim(dir: &Path, key: &str, waiting: impl std::future::Future<Output = ()>) -> Result<Claim, String> {
    let (dir, key) = (dir.to_path_buf(), key.to_string());
    let file = tokio::task::spawn_blocking(move || lock_file(&dir, &key)).await.map_err(|e| e.to_string())??;
    match file.try_lock() {
        Ok(()) => return Ok(Claim(file)),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => return Err(e.to_string()),
    }
    waiting.await;
    tokio::task::spawn_blocking(move || file.lock().map(|()| Claim(file)).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
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
