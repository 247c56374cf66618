//! The intent journal: before every CPI call that changes something and every agent command the
//! director writes what it is about to do (flushed to disk), and removes it once the call has
//! returned. Whatever a restarted director finds here was interrupted mid-flight; `reconcile`
//! settles it.
//!
//! The journal sits at the seams — [`JournaledCpi`] wraps any CPI, the agent hub journals its
//! calls — so no code path can reach the cloud or an agent without leaving an intent.

use crate::clock::Clock;
use crate::records::{CpiOp, Intent, IntentOp};
use crate::store::{tables, State, StoreError};
use async_trait::async_trait;
use bosun_cpi::{Cpi, CpiError, CpiInfo, CpiResult, CreateVmRequest, DiskListing, VmListing};
use bosun_types::protocol::NetworkSettings;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone)]
pub struct Journal {
    state: State,
    clock: Arc<dyn Clock>,
}

fn key(id: u64) -> String {
    format!("{id:020}")
}

impl Journal {
    pub fn new(state: State, clock: Arc<dyn Clock>) -> Self {
        Self { state, clock }
    }

    /// Records an intent and makes it durable before returning.
    pub async fn begin(&self, op: IntentOp, subject: &str) -> Result<u64, StoreError> {
        let id = self.state.next_id("intent").await?;
        let intent = Intent { id, op, subject: subject.to_string(), started_ms: self.clock.unix_ms() };
        self.state.put(tables::INTENTS, &key(id), &intent).await?;
        self.state.flush().await?;
        Ok(id)
    }

    /// The call returned (either way): the intent is settled.
    pub async fn end(&self, id: u64) {
        if let Err(e) = self.state.delete(tables::INTENTS, &key(id)).await {
            tracing::warn!(error = %e, intent = id, "could not settle an intent");
        }
    }

    pub async fn unfinished(&self) -> Result<Vec<Intent>, StoreError> {
        self.state.list(tables::INTENTS, "").await
    }

    pub async fn clear(&self) -> Result<(), StoreError> {
        for i in self.unfinished().await? {
            self.state.delete(tables::INTENTS, &key(i.id)).await?;
        }
        Ok(())
    }
}

/// A CPI whose every mutating call is journaled.
pub struct JournaledCpi {
    inner: Arc<dyn Cpi>,
    journal: Journal,
}

impl JournaledCpi {
    pub fn new(inner: Arc<dyn Cpi>, journal: Journal) -> Self {
        Self { inner, journal }
    }

    async fn around<T>(
        &self,
        op: CpiOp,
        subject: &str,
        call: impl std::future::Future<Output = CpiResult<T>>,
    ) -> CpiResult<T> {
        let id = self
            .journal
            .begin(IntentOp::Cpi(op), subject)
            .await
            .map_err(|e| CpiError::Cloud(format!("journaling {op:?}: {e}")))?;
        let span = tracing::info_span!("cpi", op = ?op, subject);
        let out = tracing::Instrument::instrument(call, span).await;
        self.journal.end(id).await;
        out
    }
}

#[async_trait]
impl Cpi for JournaledCpi {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn info(&self) -> CpiResult<CpiInfo> {
        self.inner.info().await
    }
    async fn create_stemcell(&self, image_path: &Path, cloud_properties: &serde_json::Value) -> CpiResult<String> {
        self.around(
            CpiOp::CreateStemcell,
            &image_path.display().to_string(),
            self.inner.create_stemcell(image_path, cloud_properties),
        )
        .await
    }
    async fn delete_stemcell(&self, stemcell_cid: &str) -> CpiResult<()> {
        self.around(CpiOp::DeleteStemcell, stemcell_cid, self.inner.delete_stemcell(stemcell_cid)).await
    }
    async fn create_vm(&self, request: &CreateVmRequest) -> CpiResult<(String, BTreeMap<String, NetworkSettings>)> {
        self.around(CpiOp::CreateVm, &request.agent_id, self.inner.create_vm(request)).await
    }
    async fn delete_vm(&self, vm_cid: &str) -> CpiResult<()> {
        self.around(CpiOp::DeleteVm, vm_cid, self.inner.delete_vm(vm_cid)).await
    }
    async fn has_vm(&self, vm_cid: &str) -> CpiResult<bool> {
        self.inner.has_vm(vm_cid).await
    }
    async fn create_disk(
        &self,
        size_mb: u64,
        cloud_properties: &serde_json::Value,
        vm_locality: Option<&str>,
    ) -> CpiResult<String> {
        self.around(
            CpiOp::CreateDisk,
            vm_locality.unwrap_or("-"),
            self.inner.create_disk(size_mb, cloud_properties, vm_locality),
        )
        .await
    }
    async fn delete_disk(&self, disk_cid: &str) -> CpiResult<()> {
        self.around(CpiOp::DeleteDisk, disk_cid, self.inner.delete_disk(disk_cid)).await
    }
    async fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<serde_json::Value> {
        self.around(CpiOp::AttachDisk, disk_cid, self.inner.attach_disk(vm_cid, disk_cid)).await
    }
    async fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<()> {
        self.around(CpiOp::DetachDisk, disk_cid, self.inner.detach_disk(vm_cid, disk_cid)).await
    }
    async fn reboot_vm(&self, vm_cid: &str) -> CpiResult<()> {
        self.around(CpiOp::RebootVm, vm_cid, self.inner.reboot_vm(vm_cid)).await
    }
    async fn set_vm_metadata(&self, vm_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        self.inner.set_vm_metadata(vm_cid, metadata).await
    }
    async fn set_disk_metadata(&self, disk_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        self.inner.set_disk_metadata(disk_cid, metadata).await
    }
    async fn has_disk(&self, disk_cid: &str) -> CpiResult<bool> {
        self.inner.has_disk(disk_cid).await
    }
    async fn get_disks(&self, vm_cid: &str) -> CpiResult<Vec<String>> {
        self.inner.get_disks(vm_cid).await
    }
    async fn resize_disk(&self, disk_cid: &str, new_size_mb: u64) -> CpiResult<()> {
        self.around(CpiOp::ResizeDisk, disk_cid, self.inner.resize_disk(disk_cid, new_size_mb)).await
    }
    async fn snapshot_disk(&self, disk_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<String> {
        self.around(CpiOp::SnapshotDisk, disk_cid, self.inner.snapshot_disk(disk_cid, metadata)).await
    }
    async fn delete_snapshot(&self, snapshot_cid: &str) -> CpiResult<()> {
        self.around(CpiOp::DeleteSnapshot, snapshot_cid, self.inner.delete_snapshot(snapshot_cid)).await
    }
    async fn calculate_vm_cloud_properties(
        &self,
        cpu: u32,
        ram_mb: u64,
        ephemeral_disk_mb: u64,
    ) -> CpiResult<serde_json::Value> {
        self.inner.calculate_vm_cloud_properties(cpu, ram_mb, ephemeral_disk_mb).await
    }
    async fn list_vms(&self) -> CpiResult<Vec<VmListing>> {
        self.inner.list_vms().await
    }
    async fn list_disks(&self) -> CpiResult<Vec<DiskListing>> {
        self.inner.list_disks().await
    }
}
