//! The records the director keeps in its store.

use bosun_types::protocol::{BlobRef, NetworkSettings};
use bosun_types::release::{JobSpec, ProcessDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeploymentRecord {
    pub name: String,
    /// The manifest as the operator sent it (after the CLI's interpolation; director variables
    /// still as placeholders, so secrets are not stored in it).
    pub manifest: String,
    pub cloud_config_version: u64,
    pub created_at: u64,
    pub updated_at: u64,
}

impl DeploymentRecord {
    /// The releases and stemcells its stored manifest names, read leniently: a stored manifest may
    /// hold placeholders for director variables that the typed parse would refuse.
    pub fn refs(&self) -> ManifestRefs {
        serde_yaml::from_str(&self.manifest).unwrap_or_default()
    }
}

/// What a stored manifest names (see [`DeploymentRecord::refs`]).
#[derive(Debug, Default, Deserialize)]
pub struct ManifestRefs {
    #[serde(default)]
    pub releases: Vec<bosun_types::manifest::ReleaseRef>,
    #[serde(default)]
    pub stemcells: Vec<bosun_types::manifest::StemcellRef>,
}

impl ManifestRefs {
    /// Whether the manifest uses this uploaded release (`version: latest` names every version).
    pub fn uses_release(&self, name: &str, version: &str) -> bool {
        self.releases.iter().any(|x| x.name == name && (x.version.0 == version || x.version.0 == "latest"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CloudConfigRecord {
    pub version: u64,
    pub yaml: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseRecord {
    pub name: String,
    pub version: String,
    pub commit_hash: String,
    pub jobs: Vec<ReleaseJob>,
    pub packages: Vec<ReleasePackage>,
    /// Digest of the uploaded tarball: the same name and version with other bytes is refused.
    pub tarball_digest: String,
    pub uploaded_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseJob {
    pub name: String,
    pub fingerprint: String,
    pub blob: BlobRef,
    pub spec: JobSpec,
    /// Template source path → template text.
    pub templates: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleasePackage {
    pub name: String,
    pub fingerprint: String,
    /// Its source; for a package of a compiled release (`compiled_only`), its compiled tarball.
    pub blob: BlobRef,
    pub dependencies: Vec<String>,
    /// From a compiled release: there is no source to compile it for another stemcell.
    #[serde(default)]
    pub compiled_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StemcellRecord {
    pub name: String,
    pub version: String,
    pub operating_system: String,
    pub cid: String,
    pub api_version: u32,
    pub digest: String,
    pub uploaded_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmRecord {
    pub cid: String,
    pub agent_id: String,
    pub stemcell_cid: String,
    pub created_at: u64,
}

/// What was last applied to an instance, to detect what a new manifest changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AppliedState {
    pub stemcell: (String, String),
    pub vm_type: String,
    /// Digests, not values: cloud properties and env may hold secrets.
    pub cloud_properties_digest: String,
    pub env_digest: String,
    pub networks: BTreeMap<String, String>,
    pub jobs: Vec<AppliedJob>,
    pub packages: BTreeMap<String, String>,
    pub configuration_hash: String,
    pub persistent_disk_mb: u64,
    /// Digest of the persistent disk's cloud properties (its disk type).
    #[serde(default)]
    pub persistent_disk_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AppliedJob {
    pub name: String,
    pub release: String,
    pub fingerprint: String,
    /// Property path → digest of its value.
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceRecord {
    pub deployment: String,
    pub group: String,
    pub uuid: String,
    pub index: u32,
    pub az: Option<String>,
    pub bootstrap: bool,
    /// Network name → settings (the reserved address).
    pub networks: BTreeMap<String, NetworkSettings>,
    pub vm: Option<VmRecord>,
    pub disk_cids: Vec<String>,
    pub applied: Option<AppliedState>,
    /// The generation of the last spec sent to the agent.
    pub generation: u64,
    /// What the operator wants: jobs running, stopped, or no VM at all.
    pub state: DesiredState,
    /// An update of this instance began and did not finish: the next plan updates it in full
    /// (BOSH's `dirty`), whatever `applied` says.
    #[serde(default)]
    pub dirty: bool,
    /// A disk being migrated to: recorded as soon as the CPI has made it and until it becomes the
    /// instance's disk, so an interrupted migration leaves nothing unaccounted for.
    #[serde(default)]
    pub migrating_disk: Option<String>,
    /// create-swap-delete: the replacement VM, from its creation until it takes the old one's
    /// place, and the addresses it holds meanwhile (reserved like any instance's).
    #[serde(default)]
    pub replacement_vm: Option<VmRecord>,
    #[serde(default)]
    pub replacement_networks: BTreeMap<String, NetworkSettings>,
    /// The instance is being deleted (scale-in, a removed group, delete-deployment): recorded
    /// before its VM goes, so a director stopped meanwhile knows not to bring the VM back.
    #[serde(default)]
    pub deleting: bool,
}

/// The state an operator asks an instance to be in (`bosun start | stop | stop --hard`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    #[default]
    Started,
    Stopped,
    /// Stopped with its VM deleted; the persistent disk is kept.
    Detached,
}

/// A persistent disk no instance uses any more: kept for a while in case it is wanted back, then
/// deleted by the director.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrphanedDiskRecord {
    pub disk_cid: String,
    pub size_mb: u64,
    pub deployment: String,
    /// `group/uuid` of the instance that had it.
    pub instance: String,
    pub az: Option<String>,
    pub orphaned_at: u64,
    pub reason: String,
}

impl InstanceRecord {
    pub fn key(&self) -> String {
        instance_key(&self.deployment, &self.uuid)
    }
    pub fn name(&self) -> String {
        format!("{}/{}", self.group, self.uuid)
    }
    pub fn ips(&self) -> Vec<String> {
        self.networks.values().map(|n| n.ip.clone()).collect()
    }
    /// Every address the instance holds: its own and, mid create-swap-delete, its replacement's.
    pub fn held_addresses(&self) -> impl Iterator<Item = std::net::Ipv4Addr> + '_ {
        self.networks.values().chain(self.replacement_networks.values()).filter_map(|n| n.ip.parse().ok())
    }
}

pub fn instance_key(deployment: &str, uuid: &str) -> String {
    format!("{deployment}/{uuid}")
}

/// The binding of an agent id to the certificate the director issued for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentRecord {
    pub agent_id: String,
    /// `sha256:<hex>` of the certificate's DER.
    pub cert_digest: String,
    pub deployment: String,
    pub instance: String,
    pub created_at: u64,
    /// The SSH host key the agent reported when it first connected (an OpenSSH line): the key
    /// SSH clients are told to expect from this VM, whatever it reports later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
}

/// A job as the planner decided it for one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedJob {
    pub name: String,
    pub release: String,
    pub fingerprint: String,
    /// Destination path (relative to the job's directory) → (mode, contents).
    pub files: BTreeMap<String, (u32, String)>,
    pub processes: Vec<ProcessDefinition>,
    pub packages: Vec<String>,
    /// With a `bin/peer-changed` script: the groups providing the links it consumes, whose
    /// membership changes it is told about.
    pub peer_groups: BTreeSet<String>,
}

/// A package compiled for a stemcell (`planner::compiled_key` names it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompiledPackageRecord {
    pub key: String,
    pub name: String,
    pub fingerprint: String,
    /// `name/version` of the release it was compiled from.
    pub release: String,
    pub stemcell_os: String,
    pub stemcell_version: String,
    /// Every package it depends on, directly or not: (name, compiled key).
    pub dependencies: Vec<(String, String)>,
    /// The install target as a `.tgz`.
    pub blob: BlobRef,
    pub compiled_at: u64,
    /// How long `packaging` ran (0 when taken from the compiled-package cache).
    pub packaging_ms: u64,
}

/// What an intent records as about to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpiOp {
    CreateStemcell,
    DeleteStemcell,
    CreateVm,
    DeleteVm,
    CreateDisk,
    DeleteDisk,
    AttachDisk,
    DetachDisk,
    RebootVm,
    ResizeDisk,
    SnapshotDisk,
    DeleteSnapshot,
}

/// A journaled call: a CPI method, or an agent command by its protocol name. (Stored as the bare
/// name, as intents always were.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntentOp {
    Cpi(CpiOp),
    Agent(String),
}

impl std::fmt::Display for IntentOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntentOp::Cpi(op) => write!(
                f,
                "{}",
                serde_json::to_value(op).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
            ),
            IntentOp::Agent(name) => f.write_str(name),
        }
    }
}

/// A call the director is about to make, written durably before it is made and removed after it
/// returned (`journal`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Intent {
    pub id: u64,
    pub op: IntentOp,
    /// What it acts on: a VM or disk cid, an agent id, an instance uuid.
    pub subject: String,
    pub started_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_keep_the_bare_names_they_were_stored_with() {
        let cpi: Intent = serde_json::from_str(r#"{"id":1,"op":"delete_vm","subject":"vm-1","started_ms":5}"#).unwrap();
        assert_eq!(cpi.op, IntentOp::Cpi(CpiOp::DeleteVm));
        let agent: Intent = serde_json::from_str(r#"{"id":2,"op":"apply","subject":"a-1","started_ms":5}"#).unwrap();
        assert_eq!(agent.op, IntentOp::Agent("apply".into()));
        assert_eq!(serde_json::to_value(&cpi.op).unwrap(), "delete_vm");
        assert_eq!(IntentOp::Cpi(CpiOp::SnapshotDisk).to_string(), "snapshot_disk");
    }
}
