//! After a restart: settle what the last run left mid-flight. The journal says which calls were
//! interrupted; the store says what the director knows; the CPI's tags say what exists. A VM that
//! carries this director's tags but no instance knows is deleted (its instance gets a VM from the
//! next deploy or resurrection); a disk no instance or orphan record knows becomes an orphan (kept,
//! never deleted unseen); an instance whose VM an interrupted `delete_vm` removed loses the
//! reference; an instance an interrupted agent command was working on is marked dirty.

use crate::events::EventSubject;
use crate::records::{AgentRecord, CpiOp, InstanceRecord, IntentOp, OrphanedDiskRecord};
use crate::store::{tables, StoreError};
use crate::Director;
use bosun_cpi::{tags, CpiError, VmListing};
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("asking the CPI")]
    Cpi(#[from] CpiError),
}

/// Runs the reconciliation; returns a one-line account of it for the director's start event.
pub async fn after_restart(d: &Director) -> String {
    match reconcile(d).await {
        Ok(s) => s,
        Err(e) => {
            let m = format!("reconciling after the restart failed: {}", bosun_types::error_chain(&e));
            tracing::error!("{m}");
            m
        }
    }
}

async fn reconcile(d: &Director) -> Result<String, ReconcileError> {
    let mut notes = delete_compilation_vms(d).await?;
    let intents = d.journal.unfinished().await?;
    if intents.is_empty() {
        if notes.is_empty() {
            return Ok("nothing was interrupted".into());
        }
        return Ok(notes.join("; "));
    }
    let mut instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, "").await?;
    let agents: Vec<AgentRecord> = d.state.list(tables::AGENTS, "").await?;

    // Agent commands: the instance they worked on is updated in full next time.
    for intent in intents.iter().filter(|i| matches!(i.op, IntentOp::Agent(_))) {
        let Some(agent) = agents.iter().find(|a| a.agent_id == intent.subject) else { continue };
        if let Some(rec) = instances.iter_mut().find(|r| r.deployment == agent.deployment && r.uuid == agent.instance) {
            if !rec.dirty {
                rec.dirty = true;
                d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
                notes.push(format!("{} marked dirty (interrupted {})", rec.name(), intent.op));
            }
        }
    }

    if intents.iter().any(|i| matches!(i.op, IntentOp::Cpi(_))) {
        // VMs an interrupted delete_vm may have removed.
        let deleting: BTreeSet<&str> =
            intents.iter().filter(|i| i.op == IntentOp::Cpi(CpiOp::DeleteVm)).map(|i| i.subject.as_str()).collect();
        for rec in instances.iter_mut() {
            let Some(vm) = rec.vm.clone().filter(|v| deleting.contains(v.cid.as_str())) else { continue };
            if d.cpi.has_vm(&vm.cid).await? {
                continue;
            }
            rec.dirty = true;
            if rec.deleting {
                // Its deletion goes on with the next deploy (or delete-deployment).
                rec.vm = None;
                d.state.delete(tables::AGENTS, &vm.agent_id).await?;
                notes.push(format!("{} lost VM {} (deleted before the stop)", rec.name(), vm.cid));
            } else {
                // A VM being replaced (recreate, update, resurrection): the reference stays, so
                // the health monitor finds the VM missing and resurrects the instance (or, with
                // resurrection off, `instances` and cck show it missing).
                notes.push(format!(
                    "{} lost VM {} (deleted before the stop); left to the health monitor to resurrect",
                    rec.name(),
                    vm.cid
                ));
            }
            d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
        }
        // Addresses held for a create-swap-delete replacement that was never made.
        for rec in instances.iter_mut().filter(|r| r.replacement_vm.is_none() && !r.replacement_networks.is_empty()) {
            rec.replacement_networks.clear();
            d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
            notes.push(format!("{} released the addresses of a replacement VM never made", rec.name()));
        }
        // VMs with this director's tags that no instance knows: made by an interrupted create_vm.
        let known_vms: BTreeSet<String> =
            instances.iter().flat_map(|r| r.vm.iter().chain(r.replacement_vm.iter()).map(|v| v.cid.clone())).collect();
        match d.cpi.list_vms().await {
            Ok(vms) => {
                for vm in vms {
                    let ours = vm.metadata.get(tags::DIRECTOR_UUID) == Some(&d.uuid);
                    if !ours || known_vms.contains(&vm.vm_cid) {
                        continue;
                    }
                    delete_vm(d, &vm, "deleted a VM an interrupted task created but never recorded").await?;
                    notes.push(format!("deleted unrecorded VM {}", vm.vm_cid));
                }
            }
            Err(CpiError::NotImplemented(_)) => notes.push("the CPI cannot list VMs; run `bosun cck`".into()),
            Err(e) => return Err(e.into()),
        }
        // Agent identities no VM uses any more.
        let live_agents: BTreeSet<String> = instances
            .iter()
            .flat_map(|r| r.vm.iter().chain(r.replacement_vm.iter()).map(|v| v.agent_id.clone()))
            .collect();
        for a in agents.iter().filter(|a| !live_agents.contains(&a.agent_id)) {
            d.state.delete(tables::AGENTS, &a.agent_id).await?;
        }
        // Disks nobody knows: kept as orphans.
        let orphans: Vec<OrphanedDiskRecord> = d.state.list(tables::ORPHANED_DISKS, "").await?;
        let known_disks: BTreeSet<String> = instances
            .iter()
            .flat_map(|r| r.disk_cids.iter().cloned().chain(r.migrating_disk.iter().cloned()))
            .chain(orphans.iter().map(|o| o.disk_cid.clone()))
            .collect();
        match d.cpi.list_disks().await {
            Ok(disks) => {
                for disk in disks.into_iter().filter(|x| !known_disks.contains(&x.disk_cid)) {
                    let foreign = disk.metadata.get(tags::DIRECTOR_UUID).is_some_and(|u| u != &d.uuid);
                    if foreign {
                        continue;
                    }
                    d.state
                        .put(
                            tables::ORPHANED_DISKS,
                            &disk.disk_cid,
                            &OrphanedDiskRecord {
                                disk_cid: disk.disk_cid.clone(),
                                size_mb: disk.size_mb,
                                deployment: disk.metadata.get(tags::DEPLOYMENT).cloned().unwrap_or_default(),
                                instance: disk.metadata.get(tags::NAME).cloned().unwrap_or_default(),
                                az: None,
                                orphaned_at: d.clock.unix_secs(),
                                reason: "no instance knew it after the director stopped mid-task".into(),
                            },
                        )
                        .await?;
                    notes.push(format!("orphaned unrecorded disk {}", disk.disk_cid));
                }
            }
            Err(CpiError::NotImplemented(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    d.journal.clear().await?;
    d.state.flush().await?;
    let summary = if notes.is_empty() {
        format!("{} interrupted call(s) left nothing to settle", intents.len())
    } else {
        notes.join("; ")
    };
    tracing::warn!(interrupted = intents.len(), "{summary}");
    Ok(summary)
}

/// No compilation survives a restart (its task was failed): VMs this director made to compile
/// packages are deleted, with their agents' identities.
async fn delete_compilation_vms(d: &Director) -> Result<Vec<String>, ReconcileError> {
    let vms = match d.cpi.list_vms().await {
        Ok(vms) => vms,
        Err(CpiError::NotImplemented(_)) => return Ok(vec![]),
        Err(e) => return Err(e.into()),
    };
    let mut notes = Vec::new();
    for vm in vms {
        let ours = vm.metadata.get(tags::DIRECTOR_UUID) == Some(&d.uuid);
        let Some(package) = vm.metadata.get(tags::COMPILING).filter(|_| ours) else { continue };
        delete_vm(d, &vm, &format!("deleted compilation VM of package `{package}` left by a stop")).await?;
        notes.push(format!("deleted compilation VM {}", vm.vm_cid));
    }
    for a in d.state.list(tables::AGENTS, "").await? {
        if a.instance.starts_with("compilation-") {
            d.state.delete(tables::AGENTS, &a.agent_id).await?;
        }
    }
    Ok(notes)
}

/// Deletes a VM the restarted director found it made but does not keep, and says so on the
/// timeline (with the instance its tags name, if any).
async fn delete_vm(d: &Director, vm: &VmListing, why: &str) -> Result<(), ReconcileError> {
    match d.cpi.delete_vm(&vm.vm_cid).await {
        Ok(()) | Err(CpiError::VmNotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let subject = EventSubject {
        object_type: "vm",
        object_name: vm.vm_cid.clone(),
        deployment: vm.metadata.get(tags::DEPLOYMENT).cloned(),
        instance: vm
            .metadata
            .get(tags::NAME)
            .filter(|n| !n.is_empty() && !vm.metadata.contains_key(tags::COMPILING))
            .cloned(),
        task: None,
    };
    d.events.record(subject, "delete", "director (reconcile after restart)", why).await;
    Ok(())
}
