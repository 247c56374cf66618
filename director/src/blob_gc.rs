//! Garbage collection of the blobstore: a blob no release (its jobs and packages) and no compiled
//! package references any more is deleted. Run when the director starts (before it serves) and
//! after `delete-deployment`. Rendered jobs are never stored (the hub serves them from memory),
//! so a collection also removes those an older director left behind.

use crate::store::tables;
use crate::Director;
use std::collections::BTreeSet;

/// Deletes unreferenced blobs; returns what it did. A blob stored or reused after the collection
/// began is kept: its reference may be recorded only after the collection read the store.
pub async fn collect(d: &Director) -> Result<crate::blobstore::Collected, String> {
    let started = std::time::SystemTime::now();
    let mut referenced = BTreeSet::new();
    let releases = d.state.list(tables::RELEASES, "").await.map_err(|e| e.to_string())?;
    for r in releases {
        referenced.extend(r.jobs.into_iter().map(|j| j.blob.digest));
        referenced.extend(r.packages.into_iter().map(|p| p.blob.digest));
    }
    let compiled = d.state.list(tables::COMPILED_PACKAGES, "").await.map_err(|e| e.to_string())?;
    referenced.extend(compiled.into_iter().map(|c| c.blob.digest));
    let blobstore = d.blobstore.clone();
    let collected = tokio::task::spawn_blocking(move || blobstore.collect_garbage(&referenced, started))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| bosun_types::error_chain(&e))?;
    if collected.deleted > 0 {
        tracing::info!(deleted = collected.deleted, bytes = collected.bytes, kept = collected.kept, "blobs collected");
    }
    Ok(collected)
}
