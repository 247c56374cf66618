//! Deleting instances (scale-in, removed groups) and whole deployments.

use super::disk::orphan_disk;
use super::lifecycle::{stop_jobs, StopHow};
use super::step::{instance_event, step, DeployError, ExecOptions, NextState, NEXT_DELETE_DEPLOYMENT};
use super::vm::delete_vm_of;
use crate::planner::DEFAULT_SCRIPT_TIMEOUT_MS;
use crate::records::InstanceRecord;
use crate::store::{tables, Tree};
use crate::tasks::Task;
use crate::Director;
use bosun_cpi::CpiError;
use std::sync::Arc;
use std::time::Duration;

/// What becomes of a deleted instance's persistent disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskFate {
    /// Scale-in, a removed group or AZ: kept as orphans for the retention time (BOSH's rule).
    Orphan,
    /// The whole deployment goes: the operator asked for everything to go.
    Delete,
}

pub(crate) async fn delete_instance(
    d: &Arc<Director>,
    task: &Task,
    mut rec: InstanceRecord,
    next: NextState,
    disks: DiskFate,
    timeout: Duration,
    opts: ExecOptions,
) -> Result<(), DeployError> {
    let name = rec.name();
    let how = StopHow { next, shutdown: true, next_disk_mb: 0, skip_drain: opts.skip_drain, tolerant: true };
    match stop_jobs(d, task, &rec, how, timeout).await {
        Ok(()) => {}
        // Deleting the whole deployment: a failing script must not keep it alive.
        Err(e) if disks == DiskFate::Delete => {
            task.warn(
                "stop",
                Some(&name),
                format!("stopping before delete failed, deleting anyway: {}", bosun_types::error_chain(&e)),
            )
            .await
        }
        // Scale-in: the drain may have to hand work over (an etcd member leaving its cluster);
        // deleting the VM regardless could cost the rest their quorum. `--skip-drain` overrides.
        Err(e) => return Err(step(&name, "stopping jobs before the instance is deleted")(e)),
    }
    rec.deleting = true;
    d.state.put(tables::INSTANCES, &rec.key(), &rec).await?;
    if let Some(replacement) = rec.replacement_vm.take() {
        // A create-swap-delete that never finished: its VM goes too.
        match d.cpi.delete_vm(&replacement.cid).await {
            Ok(()) | Err(CpiError::VmNotFound(_)) => {}
            Err(e) => return Err(step(&name, "deleting the replacement VM")(e.into())),
        }
        d.hub.forget(&replacement.agent_id);
        d.state.delete(tables::AGENTS, &replacement.agent_id).await?;
    }
    delete_vm_of(d, task, &mut rec).await.map_err(step(&name, "deleting the VM"))?;
    let size = rec.applied.as_ref().map(|a| a.persistent_disk_mb).unwrap_or(0);
    for disk in rec.disk_cids.iter().chain(rec.migrating_disk.iter()) {
        match disks {
            DiskFate::Orphan => orphan_disk(d, task, &rec, disk, size, "its instance was deleted").await?,
            DiskFate::Delete => match d.cpi.delete_disk(disk).await {
                Ok(()) | Err(CpiError::DiskNotFound(_)) => {
                    task.info("delete", Some(&name), format!("deleted disk {disk}")).await
                }
                Err(e) => return Err(step(&name, "deleting the persistent disk")(e.into())),
            },
        }
    }
    d.state.delete(tables::INSTANCES, &rec.key()).await?;
    d.state.flush().await?;
    instance_event(task, &rec, "delete", "instance deleted").await;
    Ok(())
}

/// Deletes every instance of a deployment (and their disks), then the deployment.
pub async fn delete_deployment(d: &Arc<Director>, task: &Task, deployment: &str) -> Result<String, DeployError> {
    let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, &format!("{deployment}/")).await?;
    let n = instances.len();
    let runs = instances.into_iter().map(|rec| async move {
        task.info("delete", Some(&rec.name()), "deleting instance").await;
        delete_instance(
            d,
            task,
            rec,
            NEXT_DELETE_DEPLOYMENT,
            DiskFate::Delete,
            Duration::from_millis(DEFAULT_SCRIPT_TIMEOUT_MS),
            ExecOptions::default(),
        )
        .await
    });
    for r in futures::future::join_all(runs).await {
        r?;
    }
    for (k, _) in d.state.kv().scan_prefix(Tree::Variables, &format!("{deployment}/")).await? {
        d.state.kv().delete(Tree::Variables, &k).await?;
    }
    d.state.delete(tables::DEPLOYMENTS, deployment).await?;
    d.state.flush().await?;
    Ok(format!("deleted deployment `{deployment}` ({n} instance{})", if n == 1 { "" } else { "s" }))
}
