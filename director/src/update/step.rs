//! What every step of an update shares: its errors, the timeouts of agent commands, the next
//! states BOSH's pre-stop and drain scripts are told, and the instance events it records.

use crate::events::EventSubject;
use crate::hub::HubError;
use crate::records::InstanceRecord;
use crate::store::StoreError;
use crate::tasks::Task;
use bosun_cpi::CpiError;
use std::time::Duration;

pub(crate) const APPLY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The operator's input is wrong; nothing was changed.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An operator cancelled the task; it stopped at a checkpoint.
    #[error(transparent)]
    Cancelled(#[from] crate::tasks::Cancelled),
    /// A package did not compile; no instance was touched.
    #[error("compiling package `{package}`: {message}")]
    Compile { package: String, message: String },
    #[error("instance {instance}: {step}")]
    Step {
        instance: String,
        step: String,
        #[source]
        source: StepError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Cpi(#[from] CpiError),
    #[error(transparent)]
    Agent(#[from] HubError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] crate::blobstore::BlobError),
    #[error("{0}")]
    Failed(String),
}

bosun_types::named_enum! {
    /// What becomes of a VM, an instance or a deployment after a stop (BOSH's next states).
    pub enum Next {
        Keep = "keep",
        Delete = "delete",
    }
}

/// The next states BOSH's pre-stop and drain scripts are told (`BOSH_*_NEXT_STATE`).
#[derive(Debug, Clone, Copy)]
pub struct NextState {
    pub vm: Next,
    pub instance: Next,
    pub deployment: Next,
}

pub(crate) const NEXT_UPDATE: NextState = NextState { vm: Next::Keep, instance: Next::Keep, deployment: Next::Keep };
pub(crate) const NEXT_RECREATE: NextState =
    NextState { vm: Next::Delete, instance: Next::Keep, deployment: Next::Keep };
pub(crate) const NEXT_SCALE_IN: NextState =
    NextState { vm: Next::Delete, instance: Next::Delete, deployment: Next::Keep };
pub(crate) const NEXT_DELETE_DEPLOYMENT: NextState =
    NextState { vm: Next::Delete, instance: Next::Delete, deployment: Next::Delete };

pub(crate) fn step(instance: &str, what: &str) -> impl FnOnce(StepError) -> DeployError {
    let instance = instance.to_string();
    let what = what.to_string();
    move |source| DeployError::Step { instance, step: what, source }
}

/// How an update runs beyond what the plan says.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecOptions {
    pub skip_drain: bool,
}

/// An instance's state change on the event timeline, caused by `task`.
pub(crate) async fn instance_event(task: &Task, rec: &InstanceRecord, action: &str, message: impl Into<String>) {
    task.record(EventSubject::instance(&rec.deployment, &rec.name()), action, message).await;
}
