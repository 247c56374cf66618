//! The Cloud Provider Interface: one trait every IaaS implements, modelled on BOSH's CPI API v2,
//! with BOSH's typed errors so the director can apply BOSH's tolerance rules (a VM that is already
//! gone is deleted; a disk that is already detached is detached).
//!
//! Small required surface; the optional methods default to [`CpiError::NotImplemented`].

pub mod conformance;

use bosun_types::protocol::{AgentSettings, DirectorEndpoint, NetworkSettings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// BOSH's CPI error classes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpiError {
    #[error("VM `{0}` not found")]
    VmNotFound(String),
    #[error("disk `{0}` not found")]
    DiskNotFound(String),
    #[error("disk `{disk_cid}` is not attached to VM `{vm_cid}`")]
    DiskNotAttached { vm_cid: String, disk_cid: String },
    #[error("stemcell `{0}` not found")]
    StemcellNotFound(String),
    #[error("VM creation failed: {message}")]
    VmCreationFailed { message: String, ok_to_retry: bool },
    #[error("the CPI does not implement `{0}`")]
    NotImplemented(&'static str),
    /// The method exists but cannot do what was asked (BOSH's `NotSupported`: e.g. a resize the
    /// cloud cannot make, for which the director falls back to copying).
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("no disk space: {message}")]
    NoDiskSpace { message: String, ok_to_retry: bool },
    #[error("{0}")]
    InvalidArguments(String),
    #[error("cloud error: {0}")]
    Cloud(String),
}

/// `info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CpiInfo {
    pub api_version: u32,
    pub stemcell_formats: Vec<String>,
}

/// `create_vm`'s arguments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateVmRequest {
    pub agent_id: String,
    pub stemcell_cid: String,
    pub cloud_properties: serde_json::Value,
    pub networks: BTreeMap<String, NetworkSettings>,
    /// Placement hints: disks the VM will attach.
    pub disk_cids: Vec<String>,
    /// The manifest's `env` plus the director's `bosun` block: `bosun.director` (the agent's
    /// endpoint and credentials) and `bosun.tags` (the VM's tags, set at creation so a VM is
    /// findable even if the director dies before `set_vm_metadata`).
    pub env: serde_json::Value,
}

/// A VM a CPI can list, with its tags.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmListing {
    pub vm_cid: String,
    pub metadata: BTreeMap<String, String>,
}

/// A disk a CPI can list, with its tags and where it is attached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskListing {
    pub disk_cid: String,
    pub size_mb: u64,
    pub attached_to: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

pub type CpiResult<T> = Result<T, CpiError>;

#[async_trait::async_trait]
pub trait Cpi: Send + Sync {
    /// A short name for logs and `bosun env` (`local`, `docker`, …).
    fn name(&self) -> &str;

    /// The director that uses this CPI, told once its state is open and before any call (an
    /// external CPI sends it as BOSH's `director_uuid`).
    fn set_director_uuid(&self, _uuid: &str) {}

    async fn info(&self) -> CpiResult<CpiInfo>;
    async fn create_stemcell(&self, image_path: &Path, cloud_properties: &serde_json::Value) -> CpiResult<String>;
    async fn delete_stemcell(&self, stemcell_cid: &str) -> CpiResult<()>;
    /// Returns the VM's cid and its networks (API v2).
    async fn create_vm(&self, request: &CreateVmRequest) -> CpiResult<(String, BTreeMap<String, NetworkSettings>)>;
    async fn delete_vm(&self, vm_cid: &str) -> CpiResult<()>;
    async fn has_vm(&self, vm_cid: &str) -> CpiResult<bool>;
    async fn create_disk(
        &self,
        size_mb: u64,
        cloud_properties: &serde_json::Value,
        vm_locality: Option<&str>,
    ) -> CpiResult<String>;
    async fn delete_disk(&self, disk_cid: &str) -> CpiResult<()>;
    /// Returns the disk hint the agent needs to find the disk (API v2).
    async fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<serde_json::Value>;
    async fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<()>;

    async fn reboot_vm(&self, _vm_cid: &str) -> CpiResult<()> {
        Err(CpiError::NotImplemented("reboot_vm"))
    }
    async fn set_vm_metadata(&self, _vm_cid: &str, _metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        Err(CpiError::NotImplemented("set_vm_metadata"))
    }
    async fn set_disk_metadata(&self, _disk_cid: &str, _metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        Err(CpiError::NotImplemented("set_disk_metadata"))
    }
    async fn has_disk(&self, _disk_cid: &str) -> CpiResult<bool> {
        Err(CpiError::NotImplemented("has_disk"))
    }
    async fn get_disks(&self, _vm_cid: &str) -> CpiResult<Vec<String>> {
        Err(CpiError::NotImplemented("get_disks"))
    }
    async fn resize_disk(&self, _disk_cid: &str, _new_size_mb: u64) -> CpiResult<()> {
        Err(CpiError::NotImplemented("resize_disk"))
    }
    async fn snapshot_disk(&self, _disk_cid: &str, _metadata: &BTreeMap<String, String>) -> CpiResult<String> {
        Err(CpiError::NotImplemented("snapshot_disk"))
    }
    async fn delete_snapshot(&self, _snapshot_cid: &str) -> CpiResult<()> {
        Err(CpiError::NotImplemented("delete_snapshot"))
    }
    async fn calculate_vm_cloud_properties(
        &self,
        _cpu: u32,
        _ram_mb: u64,
        _ephemeral_disk_mb: u64,
    ) -> CpiResult<serde_json::Value> {
        Err(CpiError::NotImplemented("calculate_vm_cloud_properties"))
    }
    /// bosun extension: every VM this CPI can see, with its tags (to find orphans).
    async fn list_vms(&self) -> CpiResult<Vec<VmListing>> {
        Err(CpiError::NotImplemented("list_vms"))
    }
    /// bosun extension: every disk this CPI can see, with its tags.
    async fn list_disks(&self) -> CpiResult<Vec<DiskListing>> {
        Err(CpiError::NotImplemented("list_disks"))
    }
}

/// Builds the settings an agent boots from out of `create_vm`'s arguments. Shared by every CPI
/// that hands settings to the VM (file, user-data, metadata).
pub fn agent_settings(request: &CreateVmRequest, vm_cid: &str) -> CpiResult<AgentSettings> {
    let director = request.env.get("bosun").and_then(|b| b.get("director")).cloned().ok_or_else(|| {
        CpiError::InvalidArguments("create_vm: env.bosun.director (the agent's director endpoint) is missing".into())
    })?;
    let director: DirectorEndpoint = serde_json::from_value(director)
        .map_err(|e| CpiError::InvalidArguments(format!("create_vm: env.bosun.director is malformed: {e}")))?;
    // The agent gets the manifest's env, without the director block (its secrets live in one place).
    let mut env = request.env.clone();
    if let Some(b) = env.get_mut("bosun").and_then(|b| b.as_object_mut()) {
        b.remove("director");
    }
    Ok(AgentSettings {
        agent_id: request.agent_id.clone(),
        vm_cid: vm_cid.to_string(),
        director,
        networks: request.networks.clone(),
        disks: Default::default(),
        env,
    })
}

/// The tag keys the director sets on every VM and disk (BOSH's default tags), by which a restarted
/// director and `bosun cck` recognise what is theirs.
pub mod tags {
    pub const DIRECTOR: &str = "director";
    pub const DIRECTOR_UUID: &str = "director_uuid";
    pub const DEPLOYMENT: &str = "deployment";
    pub const INSTANCE_GROUP: &str = "instance_group";
    /// BOSH's older name of the instance group, still set for tools that read it.
    pub const JOB: &str = "job";
    pub const ID: &str = "id";
    /// `group/uuid`.
    pub const NAME: &str = "name";
    pub const INDEX: &str = "index";
    pub const INSTANCE_INDEX: &str = "instance_index";
    pub const CREATED_AT: &str = "created_at";
    /// On a compilation VM: the package it was made to compile (BOSH's `compiling` tag). No
    /// compilation survives a director restart, so a restarted director deletes such VMs.
    pub const COMPILING: &str = "compiling";
}

/// The VM's tags as the director set them at creation (`env.bosun.tags`).
pub fn creation_tags(request: &CreateVmRequest) -> BTreeMap<String, String> {
    request
        .env
        .get("bosun")
        .and_then(|b| b.get("tags"))
        .and_then(|t| t.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}
