//! The director's HTTP API (`/v1/...`): request and response bodies.

use crate::manifest::MaxInFlight;
use crate::protocol::{ProcessState, StemcellInfo, Vitals};
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "v1";

/// Every error response: a stable code for programs and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiErrorBody {
    pub code: String,
    pub message: String,
}

/// A variable the director stored for a deployment, without its value (`bosun variables`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VariableView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<u64>,
    /// Unix seconds.
    pub generated_at: Option<u64>,
}

/// A lock held by a running task (`bosun locks`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockView {
    /// What is locked: `deployment`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which one: the deployment's name.
    pub resource: String,
    pub task_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DirectorInfo {
    pub name: String,
    pub uuid: String,
    pub version: String,
    pub cpi: String,
    pub api_version: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Processing,
    /// Asked to stop: it ends `cancelled` once the instances in flight finish their update.
    Cancelling,
    Done,
    Error,
    Cancelled,
}

impl TaskState {
    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Done | TaskState::Error | TaskState::Cancelled)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskState::Queued => "queued",
            TaskState::Processing => "processing",
            TaskState::Cancelling => "cancelling",
            TaskState::Done => "done",
            TaskState::Error => "error",
            TaskState::Cancelled => "cancelled",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskView {
    pub id: u64,
    pub state: TaskState,
    pub description: String,
    pub deployment: Option<String>,
    /// Unix seconds.
    pub started_at: u64,
    pub ended_at: Option<u64>,
    /// A one-line summary when done, or the error when failed.
    pub result: Option<String>,
    /// An errand run's exit code (the highest of the instances it ran on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventLevel {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskEvent {
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub level: EventLevel,
    pub stage: String,
    #[serde(default)]
    pub instance: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskEventsPage {
    pub task: TaskView,
    pub events: Vec<TaskEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskCreated {
    pub task_id: u64,
}

/// How an update runs, as the operator overrides it on the command line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateOverrides {
    /// Skip pre-stop and drain scripts.
    #[serde(default)]
    pub skip_drain: bool,
    /// Replaces every instance group's `canaries`.
    #[serde(default)]
    pub canaries: Option<u32>,
    /// Replaces every instance group's `max_in_flight`.
    #[serde(default)]
    pub max_in_flight: Option<MaxInFlight>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The manifest as YAML text, already interpolated with the CLI's variables.
    pub manifest: String,
    #[serde(default)]
    pub recreate: bool,
    #[serde(default)]
    pub overrides: UpdateOverrides,
    /// Show property and env values in the plan's diff (bosh's `--no-redact`).
    #[serde(default)]
    pub no_redact: bool,
}

/// `bosun recreate | restart | stop | start` on a deployment or some of its instances.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InstanceCommand {
    Recreate,
    Restart,
    Stop,
    Start,
}

impl std::fmt::Display for InstanceCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceCommand::Recreate => "recreate",
            InstanceCommand::Restart => "restart",
            InstanceCommand::Stop => "stop",
            InstanceCommand::Start => "start",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceCommandRequest {
    pub command: InstanceCommand,
    /// `group`, `group/uuid` or `group/index`; empty means every instance.
    #[serde(default)]
    pub instances: Vec<String>,
    /// `stop --hard`: also delete the VM, keeping the persistent disk.
    #[serde(default)]
    pub hard: bool,
    #[serde(default)]
    pub overrides: UpdateOverrides,
    /// Only show the plan.
    #[serde(default)]
    pub dry_run: bool,
}

/// `bosun run-errand NAME`: where and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ErrandRunRequest {
    /// `group`, `group/uuid` or `group/index`; empty means every instance with the errand.
    #[serde(default)]
    pub instances: Vec<String>,
    /// Skip the run when the last one succeeded and nothing changed since.
    #[serde(default)]
    pub when_changed: bool,
    /// An errand group's VMs stay after the run (they are deleted otherwise).
    #[serde(default)]
    pub keep_alive: bool,
    /// Seconds the errand may run (default 1800).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Which instances a command is about: `group`, `group/uuid` or `group/index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceSelector {
    Group(String),
    Uuid(String, String),
    Index(String, u32),
}

impl std::str::FromStr for InstanceSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not `group`, `group/uuid` or `group/index`");
        let (group, rest) = match s.split_once('/') {
            Some((g, r)) => (g, Some(r)),
            None => (s, None),
        };
        if group.is_empty() || !group.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad());
        }
        match rest {
            None => Ok(InstanceSelector::Group(group.into())),
            Some(r) if !r.is_empty() && r.chars().all(|c| c.is_ascii_digit()) => {
                Ok(InstanceSelector::Index(group.into(), r.parse().map_err(|_| bad())?))
            }
            Some(r) if !r.is_empty() && r.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => {
                Ok(InstanceSelector::Uuid(group.into(), r.to_ascii_lowercase()))
            }
            Some(_) => Err(bad()),
        }
    }
}

impl InstanceSelector {
    pub fn matches(&self, group: &str, uuid: &str, index: u32) -> bool {
        match self {
            InstanceSelector::Group(g) => g == group,
            InstanceSelector::Uuid(g, u) => g == group && u == uuid,
            InstanceSelector::Index(g, i) => g == group && *i == index,
        }
    }
}

impl std::fmt::Display for InstanceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstanceSelector::Group(g) => write!(f, "{g}"),
            InstanceSelector::Uuid(g, u) => write!(f, "{g}/{u}"),
            InstanceSelector::Index(g, i) => write!(f, "{g}/{i}"),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InstanceAction {
    Create,
    Delete,
    Keep,
    /// Jobs, packages or properties change: stop, apply, start on the same VM.
    Update,
    /// A new VM (stemcell, vm_type, cloud properties, env, network, or asked for).
    Recreate,
    /// Stop and start the jobs, nothing else changes.
    Restart,
    /// Stop the jobs; the VM stays.
    Stop,
    /// Stop the jobs and delete the VM; the persistent disk stays.
    Detach,
    /// Start a stopped instance's jobs.
    Start,
}

impl std::fmt::Display for InstanceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceAction::Create => "create",
            InstanceAction::Delete => "delete",
            InstanceAction::Keep => "keep",
            InstanceAction::Update => "update",
            InstanceAction::Recreate => "recreate",
            InstanceAction::Restart => "restart",
            InstanceAction::Stop => "stop",
            InstanceAction::Detach => "detach",
            InstanceAction::Start => "start",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstancePlanView {
    /// `group/uuid`.
    pub instance: String,
    pub index: u32,
    pub az: Option<String>,
    pub ips: Vec<String>,
    pub action: InstanceAction,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupPlanView {
    pub name: String,
    /// The update policy in effect, in words (`canaries 1, max_in_flight 25% …`).
    #[serde(default)]
    pub update: String,
    pub instances: Vec<InstancePlanView>,
    /// The order of the update: each batch's instances run at once; canary batches first.
    #[serde(default)]
    pub batches: Vec<BatchView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchView {
    pub canary: bool,
    pub az: Option<String>,
    pub instances: Vec<String>,
}

/// A persistent disk no instance uses any more, kept until `delete_after`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrphanedDiskView {
    pub disk_cid: String,
    pub size_mb: u64,
    pub deployment: String,
    pub instance: String,
    pub az: Option<String>,
    pub orphaned_at: u64,
    pub delete_after: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanView {
    pub deployment: String,
    /// Unified diff of the stored manifest against the new one, property values redacted unless
    /// `no_redact` was asked for.
    pub manifest_diff: Vec<String>,
    pub groups: Vec<GroupPlanView>,
    /// Packages to compile first (or take from the compiled-package cache), dependencies first:
    /// `name/fingerprint for os/version`.
    #[serde(default)]
    pub compilations: Vec<String>,
    /// Whether anything would change.
    pub changes: bool,
    /// What does not stop the deploy but is likely a mistake (a property no job declares).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeploymentView {
    pub name: String,
    pub releases: Vec<String>,
    pub stemcells: Vec<String>,
    pub instances: usize,
    pub cloud_config: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Running,
    Starting,
    Failing,
    Stopped,
    Unresponsive,
    Missing,
    /// `stop --hard`: no VM on purpose; the persistent disk is kept.
    Detached,
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceState::Running => "running",
            InstanceState::Starting => "starting",
            InstanceState::Failing => "failing",
            InstanceState::Stopped => "stopped",
            InstanceState::Unresponsive => "unresponsive",
            InstanceState::Missing => "missing",
            InstanceState::Detached => "detached",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceView {
    /// `group/uuid`.
    pub instance: String,
    pub group: String,
    pub id: String,
    pub index: u32,
    pub az: Option<String>,
    pub ips: Vec<String>,
    pub vm_cid: Option<String>,
    pub agent_id: Option<String>,
    pub state: InstanceState,
    pub bootstrap: bool,
    pub stemcell: Option<StemcellInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<ProcessState>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vitals: Option<Vitals>,
    pub disk_cids: Vec<String>,
    /// The generation of the spec the director last applied to it.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseView {
    pub name: String,
    pub version: String,
    pub commit_hash: String,
    pub jobs: Vec<String>,
    pub packages: Vec<String>,
    pub deployments: Vec<String>,
}

/// `bosun inspect-release`: a release's jobs and packages, each package with the stemcells it is
/// compiled for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseInspectView {
    pub name: String,
    pub version: String,
    pub commit_hash: String,
    pub jobs: Vec<InspectJob>,
    pub packages: Vec<InspectPackage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InspectJob {
    pub name: String,
    pub fingerprint: String,
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InspectPackage {
    pub name: String,
    pub fingerprint: String,
    pub dependencies: Vec<String>,
    /// From a compiled release: no source to compile it for other stemcells.
    pub compiled_only: bool,
    /// `os/version` of every stemcell it is compiled for.
    pub compiled_for: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StemcellView {
    pub name: String,
    pub version: String,
    pub operating_system: String,
    pub cid: String,
    pub deployments: Vec<String>,
}

/// The answer to an upload: whether it was new.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadResult {
    pub name: String,
    pub version: String,
    pub already_present: bool,
}

/// One entry of the director's event timeline (`bosun events`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventView {
    pub id: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// What happened: `start`, `end`, `create`, `delete`, `recreate`, `running`, `failing`,
    /// `unresponsive`, `missing`, `recovered`, `resurrect`, `meltdown`, `resolve`, …
    pub action: String,
    /// What it happened to: `task`, `instance`, `vm`, `disk`, `deployment`, `director`.
    pub object_type: String,
    pub object_name: String,
    #[serde(default)]
    pub deployment: Option<String>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub task: Option<u64>,
    /// Who or what caused it: `task 12 (deploy quickstart)`, `health monitor`, `director`.
    pub cause: String,
    pub message: String,
    /// When what the event reports began, if earlier than the event: a detection's is when the
    /// agent was last heard (as near as the director knows when its VM died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
}

crate::named_enum! {
    /// What kind of problem `bosun cck` found.
    pub enum ProblemKind {
        MissingVm = "missing_vm",
        UnresponsiveAgent = "unresponsive_agent",
        MissingDisk = "missing_disk",
        UnattachedDisk = "unattached_disk",
        MountMismatch = "mount_mismatch",
        OrphanVm = "orphan_vm",
        OrphanDisk = "orphan_disk",
        /// A blob the deployment needs (a release's job or package, a compiled package) is
        /// missing from the director's blobstore or its bytes are not what its digest says.
        CorruptBlob = "corrupt_blob",
    }
}

crate::named_enum! {
    /// A way to resolve a cck problem (BOSH's names).
    pub enum Resolution {
        Ignore = "ignore",
        RecreateVm = "recreate_vm",
        DeleteVm = "delete_vm",
        DeleteVmReference = "delete_vm_reference",
        DeleteDiskReference = "delete_disk_reference",
        ReattachDisk = "reattach_disk",
        OrphanDisk = "orphan_disk",
        DeleteDisk = "delete_disk",
    }
}

/// A problem `bosun cck` found, with the ways it can be resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProblemView {
    /// Stable while the problem lasts: `<type>:<object>`.
    pub id: String,
    pub kind: ProblemKind,
    pub description: String,
    #[serde(default)]
    pub instance: Option<String>,
    /// The first is the default (what `--auto` does).
    pub resolutions: Vec<Resolution>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// Problem id → resolution. Problems not named are left alone.
    pub resolutions: std::collections::BTreeMap<String, Resolution>,
}

/// Resurrection switched for the whole director (`deployment` none) or one deployment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResurrectionSwitch {
    #[serde(default)]
    pub deployment: Option<String>,
    pub enabled: bool,
}

/// `POST /v1/deployments/{name}/ssh`: lets a key the client made into the SSH servers of the
/// instances named (`group`, `group/index`, `group/uuid`; all when empty) for a while.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SshSetupRequest {
    #[serde(default)]
    pub instances: Vec<String>,
    /// An OpenSSH public key line; only ed25519 keys are accepted.
    pub public_key: String,
    /// How long the key stays valid (default 30 minutes, at most a day).
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

/// The answer to an SSH setup: the session's user and where each instance serves SSH.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SshSessionView {
    pub user: String,
    pub expires_in_s: u64,
    pub targets: Vec<SshTargetView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SshTargetView {
    /// `group/uuid`.
    pub instance: String,
    pub index: u32,
    /// `ip:port` of the VM's SSH server.
    pub address: String,
    /// The host key the VM registered (an OpenSSH line): the only one a client may accept.
    pub host_key: String,
}

/// `POST /v1/deployments/{name}/ssh/cleanup`: removes a session's key from its instances.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SshCleanupRequest {
    pub user: String,
    #[serde(default)]
    pub instances: Vec<String>,
}

/// A value as a URL path segment or query value: what URLs give meaning to, percent-encoded (the
/// CLI building request paths, the director's web view building links).
pub fn url_part(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `HH:MM:SS`, UTC, of Unix milliseconds: how task events and the timeline show a time of day.
pub fn utc_time_of_day(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
