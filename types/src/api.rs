//! The director's HTTP API (`/v1/...`): request and response bodies.

use crate::protocol::{ProcessState, StemcellInfo, Vitals};
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "v1";

/// Every error response: a stable code for programs and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiErrorBody {
    pub code: String,
    pub message: String,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The manifest as YAML text, already interpolated with the CLI's variables.
    pub manifest: String,
    #[serde(default)]
    pub recreate: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InstanceAction {
    Create,
    Delete,
    Keep,
    Update,
    Recreate,
}

impl std::fmt::Display for InstanceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceAction::Create => "create",
            InstanceAction::Delete => "delete",
            InstanceAction::Keep => "keep",
            InstanceAction::Update => "update",
            InstanceAction::Recreate => "recreate",
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
    pub instances: Vec<InstancePlanView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanView {
    pub deployment: String,
    /// Unified diff of the stored manifest against the new one, property values redacted.
    pub manifest_diff: Vec<String>,
    pub groups: Vec<GroupPlanView>,
    /// Whether anything would change.
    pub changes: bool,
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
