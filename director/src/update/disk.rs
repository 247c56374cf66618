//! Persistent disks: create and attach, migrate (copy to a new disk, swap, orphan the old),
//! detach and orphan, mount through the agent.

use super::step::{instance_event, StepError, APPLY_TIMEOUT, COMMAND_TIMEOUT};
use super::vm::vm_tags;
use crate::hub::HubError;
use crate::planner::{DiskPlan, InstancePlan};
use crate::records::{InstanceRecord, OrphanedDiskRecord, VmRecord};
use crate::store::{tables, StoreError};
use crate::tasks::Task;
use crate::Director;
use bosun_cpi::{tags, CpiError};
use bosun_types::protocol::AgentCommand;
use std::sync::Arc;

/// Brings the instance's persistent disk to what the plan says: attach what it has to a new VM,
/// create one, migrate (resize or copy) or orphan it. Jobs are stopped.
pub(crate) async fn converge_disk(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    fresh_vm: bool,
) -> Result<(), StepError> {
    if matches!(i.disk, DiskPlan::Orphan) {
        let vm = rec.vm.clone().expect("has a VM");
        for disk in std::mem::take(&mut rec.disk_cids) {
            if !fresh_vm {
                detach_disk(d, &vm, &disk).await?;
            }
            let size = rec.applied.as_ref().map(|a| a.persistent_disk_mb).unwrap_or(0);
            orphan_disk(d, task, rec, &disk, size, "the instance group no longer has a persistent disk").await?;
        }
        d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
        d.state.flush().await?;
        return Ok(());
    }
    attach_disks(d, task, rec, i, fresh_vm).await?;
    if let DiskPlan::Migrate { from_mb, to_mb, type_changed } = i.disk {
        migrate_disk(d, task, rec, i, from_mb, to_mb, type_changed).await?;
    }
    Ok(())
}

/// Unmounts a disk on the VM's agent (when it answers) and detaches it, tolerating what is gone.
pub(crate) async fn detach_disk(d: &Director, vm: &VmRecord, disk: &str) -> Result<(), StepError> {
    if d.hub.is_responsive(&vm.agent_id) {
        d.hub.call(&vm.agent_id, AgentCommand::UnmountDisk { disk_cid: disk.to_string() }, COMMAND_TIMEOUT).await?;
    }
    match d.cpi.detach_disk(&vm.cid, disk).await {
        Ok(())
        | Err(CpiError::DiskNotAttached { .. })
        | Err(CpiError::VmNotFound(_))
        | Err(CpiError::DiskNotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Records a disk as orphaned: kept for the director's retention time, then deleted.
pub(crate) async fn orphan_disk(
    d: &Director,
    task: &Task,
    rec: &InstanceRecord,
    disk: &str,
    size_mb: u64,
    reason: &str,
) -> Result<(), StoreError> {
    d.state
        .put(
            tables::ORPHANED_DISKS,
            disk,
            &OrphanedDiskRecord {
                disk_cid: disk.to_string(),
                size_mb,
                deployment: rec.deployment.clone(),
                instance: rec.name(),
                az: rec.az.clone(),
                orphaned_at: d.clock.unix_secs(),
                reason: reason.to_string(),
            },
        )
        .await?;
    task.info("disk", Some(&rec.name()), format!("orphaned disk {disk} ({reason})")).await;
    instance_event(task, rec, "orphan_disk", format!("orphaned disk {disk} ({reason})")).await;
    Ok(())
}

/// A disk size or type change: `resize_disk` when the CPI can grow the disk in place, else a new
/// disk, the agent copies the data over and mounts it, and the old disk is orphaned. If the copy
/// fails the new disk is orphaned instead and the instance keeps its old one.
pub(crate) async fn migrate_disk(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    from_mb: u64,
    to_mb: u64,
    type_changed: bool,
) -> Result<(), StepError> {
    let vm = rec.vm.clone().expect("has a VM");
    let Some(old) = rec.disk_cids.first().cloned() else { return Ok(()) };
    if d.config.cpi_resize_disk && !type_changed && to_mb > from_mb {
        match d.cpi.resize_disk(&old, to_mb).await {
            Ok(()) => {
                task.info("disk", Some(&rec.name()), format!("resized disk {old}: {from_mb} → {to_mb} MiB")).await;
                return Ok(());
            }
            // BOSH's rule: a CPI that cannot resize (either way it says so) gets a copy.
            Err(CpiError::NotImplemented(_) | CpiError::NotSupported(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (size, cloud_properties) = i.persistent_disk.clone().expect("a migration has a target disk");
    let new = match rec.migrating_disk.clone() {
        Some(cid) => cid, // an interrupted migration's disk: reuse it
        None => {
            let cid = d.cpi.create_disk(size, &cloud_properties, Some(&vm.cid)).await?;
            rec.migrating_disk = Some(cid.clone());
            d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
            d.state.flush().await?;
            cid
        }
    };
    task.info("disk", Some(&rec.name()), format!("migrating disk {old} ({from_mb} MiB) to {new} ({to_mb} MiB)")).await;
    let copied = async {
        let hint = d.cpi.attach_disk(&vm.cid, &new).await?;
        // The agent is there again if attaching restarted it.
        d.hub.wait_connected(&vm.agent_id, d.config.agent_wait_timeout).await?;
        d.hub
            .call(
                &vm.agent_id,
                AgentCommand::MigrateDisk { from_disk_cid: old.clone(), to_disk_cid: new.clone(), hint },
                APPLY_TIMEOUT,
            )
            .await?;
        Ok::<_, StepError>(())
    }
    .await;
    if let Err(e) = copied {
        let _ = detach_disk(d, &vm, &new).await;
        orphan_disk(d, task, rec, &new, size, "a disk migration onto it failed").await?;
        rec.migrating_disk = None;
        d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
        d.state.flush().await?;
        return Err(e);
    }
    // The agent now has the new disk at the store; the old one is detached and kept as an orphan.
    match d.cpi.detach_disk(&vm.cid, &old).await {
        Ok(()) | Err(CpiError::DiskNotAttached { .. }) | Err(CpiError::DiskNotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    rec.disk_cids = vec![new.clone()];
    rec.migrating_disk = None;
    orphan_disk(d, task, rec, &old, from_mb, "replaced by a disk migration").await?;
    d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
    d.state.flush().await?;
    set_disk_tags(d, task, rec, &new).await;
    task.info("disk", Some(&rec.name()), format!("disk {new} is the instance's persistent disk now")).await;
    Ok(())
}

pub(crate) async fn set_disk_tags(d: &Director, task: &Task, rec: &InstanceRecord, disk: &str) {
    let mut meta = vm_tags(d, &rec.deployment, rec);
    meta.insert(tags::INSTANCE_INDEX.into(), rec.index.to_string());
    match d.cpi.set_disk_metadata(disk, &meta).await {
        Ok(()) | Err(CpiError::NotImplemented(_)) => {}
        Err(e) => task.warn("disk", Some(&rec.name()), format!("set_disk_metadata failed: {e}")).await,
    }
}

pub(crate) async fn attach_disks(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    fresh_vm: bool,
) -> Result<(), StepError> {
    let vm = rec.vm.clone().expect("has a VM");
    // Disks already on a VM that stays are left as they are; a new VM or a new disk is attached.
    let mut to_attach = if fresh_vm { rec.disk_cids.clone() } else { vec![] };
    if let (Some((size, cp)), true) = (&i.persistent_disk, rec.disk_cids.is_empty()) {
        let cid = d.cpi.create_disk(*size, cp, Some(&vm.cid)).await?;
        rec.disk_cids.push(cid.clone());
        d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
        d.state.flush().await?;
        task.info("disk", Some(&rec.name()), format!("created persistent disk {cid} ({size} MiB)")).await;
        to_attach.push(cid);
    }
    for disk in to_attach {
        let hint = d.cpi.attach_disk(&vm.cid, &disk).await?;
        set_disk_tags(d, task, rec, &disk).await;
        mount_disk(d, &vm, &disk, hint).await?;
    }
    Ok(())
}

/// Asks the agent to mount a disk just attached. Some clouds restart the VM's agent to attach a
/// disk (Docker recreates the container): then the agent is waited for and asked again.
pub(crate) async fn mount_disk(
    d: &Director,
    vm: &VmRecord,
    disk: &str,
    hint: serde_json::Value,
) -> Result<(), StepError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let command = AgentCommand::MountDisk { disk_cid: disk.to_string(), hint: hint.clone() };
        match d.hub.call(&vm.agent_id, command, COMMAND_TIMEOUT).await {
            Ok(_) => return Ok(()),
            Err(HubError::NotConnected(_) | HubError::Disconnected { .. }) if tries < 3 => {
                d.hub.wait_connected(&vm.agent_id, d.config.agent_wait_timeout).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
