//! Cloud check (`bosun cck`): compares what the store says a deployment has with what the CPI
//! and the agents say exists, lists the differences as problems, and resolves them the way the
//! operator picks (BOSH's resolutions, plus orphans found by the director's tags).

use crate::events::EventSubject;
use crate::health::{classify, observe};
use crate::planner::Selection;
use crate::records::{DesiredState, InstanceRecord, OrphanedDiskRecord};
use crate::store::{tables, StoreError};
use crate::tasks::Task;
use crate::Director;
use bosun_cpi::{tags, CpiError};
use bosun_types::api::{InstanceSelector, InstanceState, ProblemKind, ProblemView, Resolution};
use bosun_types::protocol::AgentCommand;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("asking the CPI")]
    Cpi(#[from] CpiError),
}

/// A problem and what it is about.
#[derive(Debug, Clone)]
pub struct Problem {
    pub view: ProblemView,
    subject: Subject,
}

#[derive(Debug, Clone)]
enum Subject {
    Instance(InstanceRecord),
    InstanceDisk(InstanceRecord, String),
    OrphanVm(String),
    OrphanDisk { cid: String, size_mb: u64 },
    Blob,
}

fn problem(
    kind: ProblemKind,
    object: &str,
    instance: Option<String>,
    description: String,
    resolutions: &[Resolution],
    subject: Subject,
) -> Problem {
    Problem {
        view: ProblemView {
            id: format!("{kind}:{object}"),
            kind,
            description,
            instance,
            resolutions: resolutions.to_vec(),
        },
        subject,
    }
}

/// Every problem of a deployment, instances first, then orphans.
pub async fn scan(d: &Director, deployment: &str) -> Result<Vec<Problem>, CckError> {
    let mut out = Vec::new();
    let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, &format!("{deployment}/")).await?;
    for rec in &instances {
        let name = rec.name();
        let Some(vm) = &rec.vm else {
            if rec.state != DesiredState::Detached {
                out.push(problem(
                    ProblemKind::MissingVm,
                    &rec.uuid,
                    Some(name.clone()),
                    format!("{name} has no VM"),
                    &[Resolution::RecreateVm, Resolution::Ignore],
                    Subject::Instance(rec.clone()),
                ));
            }
            continue;
        };
        // The CPI is asked afresh; the answer serves every classification until the agent is
        // heard from again.
        d.sightings.record(&vm.cid, d.cpi.has_vm(&vm.cid).await?);
        let status = d.hub.status(&vm.agent_id);
        match classify(&observe(d, rec, status.as_ref())) {
            InstanceState::Missing => {
                out.push(problem(
                    ProblemKind::MissingVm,
                    &rec.uuid,
                    Some(name.clone()),
                    format!("VM {} of {name} is missing", vm.cid),
                    &[Resolution::RecreateVm, Resolution::DeleteVmReference, Resolution::Ignore],
                    Subject::Instance(rec.clone()),
                ));
                continue;
            }
            InstanceState::Unresponsive => {
                out.push(problem(
                    ProblemKind::UnresponsiveAgent,
                    &rec.uuid,
                    Some(name.clone()),
                    format!("the agent of {name} (VM {}) does not respond", vm.cid),
                    &[Resolution::RecreateVm, Resolution::DeleteVm, Resolution::Ignore],
                    Subject::Instance(rec.clone()),
                ));
                continue;
            }
            _ => {}
        }
        let attached = match d.cpi.get_disks(&vm.cid).await {
            Ok(v) => Some(v),
            Err(CpiError::NotImplemented(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mounted = d.hub.status(&vm.agent_id).and_then(|s| s.heartbeat).map(|h| h.persistent_disks);
        for disk in &rec.disk_cids {
            let exists = match d.cpi.has_disk(disk).await {
                Ok(b) => b,
                Err(CpiError::NotImplemented(_)) => true,
                Err(e) => return Err(e.into()),
            };
            let subject = Subject::InstanceDisk(rec.clone(), disk.clone());
            if !exists {
                out.push(problem(
                    ProblemKind::MissingDisk,
                    disk,
                    Some(name.clone()),
                    format!("disk {disk} of {name} is missing"),
                    &[Resolution::DeleteDiskReference, Resolution::Ignore],
                    subject,
                ));
            } else if attached.as_ref().is_some_and(|a| !a.contains(disk)) {
                out.push(problem(
                    ProblemKind::UnattachedDisk,
                    disk,
                    Some(name.clone()),
                    format!("disk {disk} of {name} is not attached to its VM {}", vm.cid),
                    &[Resolution::ReattachDisk, Resolution::DeleteDiskReference, Resolution::Ignore],
                    subject,
                ));
            } else if mounted.as_ref().is_some_and(|m| !m.contains(disk)) {
                out.push(problem(
                    ProblemKind::MountMismatch,
                    disk,
                    Some(name.clone()),
                    format!("disk {disk} is attached to {name} but its agent has not mounted it"),
                    &[Resolution::ReattachDisk, Resolution::Ignore],
                    subject,
                ));
            }
        }
    }
    // Orphans: carry this director's tags and this deployment's, but no record knows them.
    let everyone: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, "").await?;
    let known_vms: BTreeSet<String> =
        everyone.iter().flat_map(|r| r.vm.iter().chain(r.replacement_vm.iter()).map(|v| v.cid.clone())).collect();
    match d.cpi.list_vms().await {
        Ok(vms) => {
            for vm in vms {
                let ours = vm.metadata.get(tags::DIRECTOR_UUID) == Some(&d.uuid)
                    && vm.metadata.get(tags::DEPLOYMENT).map(String::as_str) == Some(deployment);
                if ours && !known_vms.contains(&vm.vm_cid) {
                    let claimed = vm.metadata.get(tags::NAME).cloned().unwrap_or_else(|| "?".into());
                    out.push(problem(
                        ProblemKind::OrphanVm,
                        &vm.vm_cid,
                        None,
                        format!("VM {} carries this director's tags (as {claimed}) but no instance has it", vm.vm_cid),
                        &[Resolution::DeleteVm, Resolution::Ignore],
                        Subject::OrphanVm(vm.vm_cid.clone()),
                    ));
                }
            }
        }
        Err(CpiError::NotImplemented(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let orphan_records: Vec<OrphanedDiskRecord> = d.state.list(tables::ORPHANED_DISKS, "").await?;
    let known_disks: BTreeSet<String> = everyone
        .iter()
        .flat_map(|r| r.disk_cids.iter().cloned().chain(r.migrating_disk.iter().cloned()))
        .chain(orphan_records.iter().map(|o| o.disk_cid.clone()))
        .collect();
    match d.cpi.list_disks().await {
        Ok(disks) => {
            for disk in disks {
                let ours = disk.metadata.get(tags::DIRECTOR_UUID) == Some(&d.uuid)
                    && disk.metadata.get(tags::DEPLOYMENT).map(String::as_str) == Some(deployment);
                if ours && !known_disks.contains(&disk.disk_cid) {
                    out.push(problem(
                        ProblemKind::OrphanDisk,
                        &disk.disk_cid,
                        None,
                        format!("disk {} carries this deployment's tags but no instance has it", disk.disk_cid),
                        &[Resolution::OrphanDisk, Resolution::DeleteDisk, Resolution::Ignore],
                        Subject::OrphanDisk { cid: disk.disk_cid.clone(), size_mb: disk.size_mb },
                    ));
                }
            }
        }
        Err(CpiError::NotImplemented(_)) => {}
        Err(e) => return Err(e.into()),
    }
    out.extend(blob_problems(d, deployment).await?);
    Ok(out)
}

/// The blobs of the releases a deployment names (every uploaded version of one named `latest`)
/// and of the packages compiled from them, each checked against its digest. A corrupt blob is
/// moved aside as it is found. What repairs it is said in the problem: a compiled package is
/// compiled again (or taken from the cache) by the next deploy; a release's blob comes back when
/// the same release is uploaded again.
async fn blob_problems(d: &Director, deployment: &str) -> Result<Vec<Problem>, CckError> {
    let Some(rec) = d.state.get(tables::DEPLOYMENTS, deployment).await? else { return Ok(vec![]) };
    let named = rec.refs();
    let releases: Vec<crate::records::ReleaseRecord> = d.state.list(tables::RELEASES, "").await?;
    let used: Vec<&crate::records::ReleaseRecord> =
        releases.iter().filter(|r| named.uses_release(&r.name, &r.version)).collect();
    // (digest, what it is, how it is repaired)
    let mut blobs: Vec<(String, String, String)> = Vec::new();
    for r in &used {
        let again = format!("upload release {}/{} again", r.name, r.version);
        for j in &r.jobs {
            blobs.push((
                j.blob.digest.clone(),
                format!("job {} of release {}/{}", j.name, r.name, r.version),
                again.clone(),
            ));
        }
        for p in &r.packages {
            blobs.push((
                p.blob.digest.clone(),
                format!("package {} of release {}/{}", p.name, r.name, r.version),
                again.clone(),
            ));
        }
    }
    let compiled: Vec<crate::records::CompiledPackageRecord> = d.state.list(tables::COMPILED_PACKAGES, "").await?;
    // A compiled package of one of them: the same package (name and fingerprint), whichever
    // release it was first compiled from (the compiled-package cache shares them).
    let of_used = |c: &&crate::records::CompiledPackageRecord| {
        used.iter().any(|r| r.packages.iter().any(|p| p.name == c.name && p.fingerprint == c.fingerprint))
    };
    for c in compiled.iter().filter(of_used) {
        blobs.push((
            c.blob.digest.clone(),
            format!("package {} compiled for {}/{}", c.name, c.stemcell_os, c.stemcell_version),
            "the next deploy compiles it again".into(),
        ));
    }
    // A package shared by two releases is one blob, one problem.
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);
    let blobstore = d.blobstore.clone();
    let checked = tokio::task::spawn_blocking(move || {
        blobs
            .into_iter()
            .filter_map(|(digest, what, repair)| {
                let why = match blobstore.verify(&digest) {
                    Ok(_) => return None,
                    Err(crate::blobstore::BlobError::Missing(_)) => "is missing from the blobstore".to_string(),
                    Err(crate::blobstore::BlobError::Corrupt(c)) => format!(
                        "is corrupt in the blobstore (its bytes have digest {}; moved to {})",
                        c.actual,
                        c.quarantined.display()
                    ),
                    Err(e) => format!("cannot be checked: {e}"),
                };
                Some((digest, what, why, repair))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    Ok(checked
        .into_iter()
        .map(|(digest, what, why, repair)| {
            problem(
                ProblemKind::CorruptBlob,
                &digest,
                None,
                format!("blob {digest} ({what}) {why}; to repair it, {repair}"),
                &[Resolution::Ignore],
                Subject::Blob,
            )
        })
        .collect())
}

/// Applies the chosen resolutions to the problems still present (a fresh scan, under the
/// deployment's lock). Instances to recreate go through the updater together, old VMs first.
pub async fn resolve(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    picks: &BTreeMap<String, Resolution>,
) -> Result<String, String> {
    let chain = |e: &dyn std::error::Error| bosun_types::error_chain(e);
    let problems = scan(d, deployment).await.map_err(|e| chain(&e))?;
    for id in picks.keys() {
        if !problems.iter().any(|p| &p.view.id == id) {
            task.warn("cck", None, format!("problem {id} is no longer present")).await;
        }
    }
    let mut recreate = Vec::new();
    let mut done = 0;
    for p in &problems {
        let Some(choice) = picks.get(&p.view.id) else { continue };
        if !p.view.resolutions.contains(choice) {
            return Err(format!(
                "problem {}: `{choice}` is not a resolution of it (choose from: {})",
                p.view.id,
                p.view.resolutions.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        let subject = match &p.view.instance {
            Some(i) => EventSubject::instance(deployment, i),
            None => EventSubject::deployment(deployment),
        };
        task.record(subject, "resolve", format!("{}: {choice}", p.view.description)).await;
        task.info("cck", p.view.instance.as_deref(), format!("{} → {choice}", p.view.description)).await;
        apply(d, task, deployment, p, *choice, &mut recreate)
            .await
            .map_err(|e| format!("problem {}: {e}", p.view.id))?;
        done += 1;
    }
    d.state.flush().await.map_err(|e| chain(&e))?;
    if !recreate.is_empty() {
        crate::update::recreate_with_fencing(d, task, deployment, Selection::Some(recreate), true).await?;
    }
    Ok(format!("{done} problem{} resolved", if done == 1 { "" } else { "s" }))
}

async fn apply(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    p: &Problem,
    choice: Resolution,
    recreate: &mut Vec<InstanceSelector>,
) -> Result<(), String> {
    let chain = |e: &dyn std::error::Error| bosun_types::error_chain(e);
    match (&p.subject, choice) {
        (_, Resolution::Ignore) => {}
        (Subject::Instance(rec), Resolution::RecreateVm) => {
            recreate.push(InstanceSelector::Uuid(rec.group.clone(), rec.uuid.clone()));
        }
        (Subject::Instance(rec), Resolution::DeleteVmReference | Resolution::DeleteVm) => {
            // The same deletion a recreate does; the next deploy gives the instance a VM again.
            let mut rec = rec.clone();
            crate::update::delete_vm_of(d, task, &mut rec).await.map_err(|e| chain(&e))?;
            rec.dirty = true;
            d.state.put(tables::INSTANCES, &rec.key(), &rec).await.map_err(|e| chain(&e))?;
        }
        (Subject::InstanceDisk(rec, disk), Resolution::DeleteDiskReference) => {
            let mut rec = rec.clone();
            rec.disk_cids.retain(|x| x != disk);
            rec.dirty = true;
            d.state.put(tables::INSTANCES, &rec.key(), &rec).await.map_err(|e| chain(&e))?;
        }
        (Subject::InstanceDisk(rec, disk), Resolution::ReattachDisk) => {
            let vm = rec.vm.clone().ok_or("the instance has no VM")?;
            let hint = match d.cpi.attach_disk(&vm.cid, disk).await {
                Ok(h) => h,
                Err(e) => return Err(chain(&e)),
            };
            d.hub
                .call(&vm.agent_id, AgentCommand::MountDisk { disk_cid: disk.clone(), hint }, Duration::from_secs(120))
                .await
                .map_err(|e| chain(&e))?;
        }
        (Subject::OrphanVm(cid), Resolution::DeleteVm) => match d.cpi.delete_vm(cid).await {
            Ok(()) | Err(CpiError::VmNotFound(_)) => task.info("cck", None, format!("deleted VM {cid}")).await,
            Err(e) => return Err(chain(&e)),
        },
        (Subject::OrphanDisk { cid, .. }, Resolution::DeleteDisk) => match d.cpi.delete_disk(cid).await {
            Ok(()) | Err(CpiError::DiskNotFound(_)) => task.info("cck", None, format!("deleted disk {cid}")).await,
            Err(e) => return Err(chain(&e)),
        },
        (Subject::OrphanDisk { cid, size_mb }, Resolution::OrphanDisk) => {
            d.state
                .put(
                    tables::ORPHANED_DISKS,
                    cid,
                    &OrphanedDiskRecord {
                        disk_cid: cid.clone(),
                        size_mb: *size_mb,
                        deployment: deployment.to_string(),
                        instance: String::new(),
                        az: None,
                        orphaned_at: d.clock.unix_secs(),
                        reason: "found by cck with no instance".into(),
                    },
                )
                .await
                .map_err(|e| chain(&e))?;
        }
        (_, other) => return Err(format!("`{other}` does not apply here")),
    }
    Ok(())
}
