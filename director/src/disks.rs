//! Orphaned persistent disks: kept for `orphaned_disk_retention` after no instance uses them (in
//! case an operator wants the data back), then deleted; or deleted at once by `bosun delete-disk`.

use crate::store::{tables, StoreError};
use crate::Director;
use bosun_cpi::CpiError;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("deleting disk `{disk_cid}`")]
    Cpi {
        disk_cid: String,
        #[source]
        source: CpiError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Deletes an orphaned disk through the CPI (one already gone is fine) and forgets it.
pub async fn delete_orphan(d: &Director, disk_cid: &str) -> Result<(), DiskError> {
    match d.cpi.delete_disk(disk_cid).await {
        Ok(()) | Err(CpiError::DiskNotFound(_)) => {}
        Err(source) => return Err(DiskError::Cpi { disk_cid: disk_cid.to_string(), source }),
    }
    d.state.delete(tables::ORPHANED_DISKS, disk_cid).await?;
    d.state.flush().await?;
    tracing::info!(disk_cid, "deleted orphaned disk");
    Ok(())
}

/// Deletes orphaned disks whose retention has run out; runs for the director's lifetime.
pub async fn sweep_expired_orphans(d: Arc<Director>) {
    let retention = d.config.orphaned_disk_retention;
    let every = retention.clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let orphans = match d.state.list(tables::ORPHANED_DISKS, "").await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "listing orphaned disks");
                continue;
            }
        };
        let now = d.clock.unix_secs();
        for o in orphans.into_iter().filter(|o| o.orphaned_at + retention.as_secs() <= now) {
            if let Err(e) = delete_orphan(&d, &o.disk_cid).await {
                tracing::warn!(error = %bosun_types::error_chain(&e), "deleting an expired orphaned disk");
            }
        }
    }
}
