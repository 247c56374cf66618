//! The planner's vocabulary: its input, the plan it produces, and the small helpers every pass
//! shares.

use crate::records::{
    AppliedState, DesiredState, InstanceRecord, ReleasePackage, ReleaseRecord, RenderedJob, StemcellRecord,
};
use bosun_types::api::{InstanceAction, InstanceSelector};
use bosun_types::cloud_config::CloudConfig;
use bosun_types::digest::sha256_digest;
use bosun_types::manifest::{DeploymentManifest, MaxInFlight, ResolvedUpdatePolicy};
use bosun_types::protocol::NetworkSettings;
use rand::RngCore;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// A plan cannot be made: what is wrong and where in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    pub path: String,
    pub message: String,
}

pub(super) fn perr(path: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError { path: path.into(), message: message.into() }
}

pub struct PlanningInput<'a> {
    pub manifest: &'a DeploymentManifest,
    pub cloud_config: &'a CloudConfig,
    /// Release name → the version the manifest resolved to.
    pub releases: &'a BTreeMap<String, ReleaseRecord>,
    /// Stemcell alias → the stemcell the manifest resolved to.
    pub stemcells: &'a BTreeMap<String, StemcellRecord>,
    /// This deployment's instances as the store has them.
    pub existing: &'a [InstanceRecord],
    /// Addresses held by other deployments.
    pub addresses_in_use_elsewhere: &'a BTreeSet<Ipv4Addr>,
    /// What the operator asked for beyond the manifest.
    pub requests: &'a Requests,
    /// The keys of the packages compiled already (any deployment's, or the compiled-package
    /// cache's).
    pub compiled: &'a BTreeSet<String>,
}

/// Which instances a request is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    #[default]
    None,
    All,
    Some(Vec<InstanceSelector>),
}

impl Selection {
    pub fn matches(&self, group: &str, uuid: &str, index: u32) -> bool {
        match self {
            Selection::None => false,
            Selection::All => true,
            Selection::Some(v) => v.iter().any(|s| s.matches(group, uuid, index)),
        }
    }
}

/// An operator's requests beyond the manifest: `deploy --recreate`, `bosun recreate | restart |
/// stop | start`, and the `--canaries` / `--max-in-flight` overrides.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    pub recreate: Selection,
    pub restart: Selection,
    /// Instances whose desired state changes, and to what.
    pub state: Option<(Selection, DesiredState)>,
    pub canaries: Option<u32>,
    pub max_in_flight: Option<MaxInFlight>,
    /// Resurrection and repairs: the old VM is always deleted before its replacement is made
    /// (never two VMs with one identity), whatever the group's `vm_strategy`.
    pub fence: bool,
}

/// What happens to an instance's persistent disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPlan {
    /// It has none and gets none.
    None,
    /// It keeps the disk it has.
    Keep,
    /// A new disk is made (a new instance, or a group that gains a disk).
    Create,
    /// The disk's size or type changes: resized by the CPI where it can, else copied to a new disk
    /// whose predecessor is orphaned.
    Migrate { from_mb: u64, to_mb: u64, type_changed: bool },
    /// The group no longer has a disk: the instance's is detached and orphaned.
    Orphan,
}

/// One step of a group's update: these instances are updated at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub canary: bool,
    pub az: Option<String>,
    /// Positions in the group's `instances`.
    pub instances: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct InstancePlan {
    pub group: String,
    pub uuid: String,
    pub index: u32,
    pub az: Option<String>,
    pub bootstrap: bool,
    pub networks: BTreeMap<String, NetworkSettings>,
    pub action: InstanceAction,
    pub reasons: Vec<String>,
    pub existing: Option<InstanceRecord>,
    /// The state the instance is left in.
    pub state: DesiredState,
    /// `create-swap-delete`: the replacement VM is made (on `networks`, new addresses) before the
    /// old VM (on the existing record's addresses) is deleted.
    pub create_swap_delete: bool,
    pub disk: DiskPlan,
    pub stemcell: StemcellRecord,
    pub cloud_properties: serde_json::Value,
    pub env: serde_json::Value,
    /// Size (MiB) and cloud properties of the persistent disk, if the instance has one.
    pub persistent_disk: Option<(u64, serde_json::Value)>,
    pub jobs: Vec<RenderedJob>,
    /// What it installs, each compiled for its stemcell.
    pub packages: Vec<PlannedPackage>,
    pub configuration_hash: String,
    pub applied: AppliedState,
}

impl InstancePlan {
    pub fn name(&self) -> String {
        format!("{}/{}", self.group, self.uuid)
    }
}

#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub name: String,
    pub update: ResolvedUpdatePolicy,
    pub instances: Vec<InstancePlan>,
    /// The order of the update: canary batches, then each AZ's batches.
    pub batches: Vec<Batch>,
    /// Each lifecycle script's time limit: the manifest's `update.script_timeout`, else the
    /// longest its jobs' specs give, else 5 minutes.
    pub script_timeout_ms: u64,
}

/// A package as an instance installs it: compiled for its stemcell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPackage {
    pub name: String,
    pub fingerprint: String,
    pub dependencies: Vec<String>,
    /// Which compiled package it is (`compile::compiled_key`).
    pub compiled_key: String,
}

/// One package to compile for one stemcell.
#[derive(Debug, Clone)]
pub struct PackageCompilation {
    pub key: String,
    /// Its source.
    pub package: ReleasePackage,
    /// `name/version` of its release.
    pub release: String,
    pub stemcell: StemcellRecord,
    /// Every package it depends on, directly or not: (name, compiled key).
    pub dependencies: Vec<(String, String)>,
}

/// A compilation VM's addresses.
#[derive(Debug, Clone)]
pub struct CompilationWorker {
    pub networks: BTreeMap<String, NetworkSettings>,
}

/// What compiles before any instance changes, and on what.
#[derive(Debug, Clone)]
pub struct CompilationPlan {
    /// Dependencies before their dependents.
    pub packages: Vec<PackageCompilation>,
    /// At most the compilation block's `workers`: so many compile at once.
    pub workers: Vec<CompilationWorker>,
    pub az: Option<String>,
    pub cloud_properties: serde_json::Value,
    pub env: serde_json::Value,
    /// `reuse_compilation_vms`: a worker's VM compiles package after package, deleted at the end.
    pub reuse_vms: bool,
}

/// Instances deleted at once (BOSH's "Deleting unneeded instances").
#[derive(Debug, Clone)]
pub struct DeleteBatch {
    pub instances: Vec<InstanceRecord>,
    /// Each lifecycle script's time limit while they stop (their group's).
    pub script_timeout_ms: u64,
}

/// A lifecycle script's time limit when neither the manifest nor the job spec gives one.
pub const DEFAULT_SCRIPT_TIMEOUT_MS: u64 = 300_000;

#[derive(Debug, Clone)]
pub struct Plan {
    pub deployment: String,
    pub groups: Vec<GroupPlan>,
    /// Instances to delete: of groups gone from the manifest, scaled away, or in removed AZs.
    pub deletes: Vec<InstanceRecord>,
    /// The order deletes run in, before any group is updated: each batch's instances at once.
    pub delete_batches: Vec<DeleteBatch>,
    /// Packages to compile before anything else happens.
    pub compilation: Option<CompilationPlan>,
    /// The order groups are updated in: each stage's groups (positions in `groups`) at once,
    /// stage after stage. Manifest order; consecutive `serial: false` groups share a stage.
    pub stages: Vec<Vec<usize>>,
    /// What the operator should hear of though nothing stops the deploy: properties given to a
    /// job that its spec does not declare (ignored, as BOSH ignores them).
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.compilation.is_some()
            || !self.deletes.is_empty()
            || self
                .groups
                .iter()
                .flat_map(|g| &g.instances)
                .any(|i| i.action != InstanceAction::Keep || i.existing.is_none())
    }
}

/// A placed instance before rendering.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) uuid: String,
    pub(super) index: u32,
    pub(super) az: Option<String>,
    pub(super) existing: Option<InstanceRecord>,
    pub(super) networks: BTreeMap<String, NetworkSettings>,
    /// Why its VM must be replaced (empty: it need not be).
    pub(super) recreate: Vec<String>,
    /// Its replacement VM takes new addresses (create-swap-delete).
    pub(super) swap: bool,
}

pub(super) fn new_uuid(rng: &mut dyn RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

pub(super) fn digest_json(v: &serde_json::Value) -> String {
    sha256_digest(&serde_json::to_vec(v).expect("json serializes"))
}

/// Merges `b` into `a` (objects recursively; anything else replaces).
pub(super) fn merge(a: &mut serde_json::Value, b: &serde_json::Value) {
    match (a.as_object_mut(), b.as_object()) {
        (Some(am), Some(bm)) => {
            for (k, v) in bm {
                merge(am.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        _ => {
            if !b.is_null() {
                *a = b.clone();
            }
        }
    }
}

pub(super) fn job_of<'a>(
    input: &'a PlanningInput<'_>,
    release: &str,
    job: &str,
) -> Option<&'a crate::records::ReleaseJob> {
    input.releases.get(release)?.jobs.iter().find(|j| j.name == job)
}

pub(super) fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
