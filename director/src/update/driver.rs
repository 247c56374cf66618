//! The executor's driver: the plan's deletes, then its stages, batch by batch, each instance
//! converged from what it is to what the plan says.

use super::delete::{delete_instance, DiskFate};
use super::disk::converge_disk;
use super::lifecycle::{apply_and_start, run_post_deploy, stop_jobs, StopHow};
use super::prepare::{prepare, store_variables, Prepared};
use super::step::{
    instance_event, step, DeployError, ExecOptions, NextState, StepError, NEXT_RECREATE, NEXT_SCALE_IN, NEXT_UPDATE,
};
use super::vm::{create_vm_for, delete_vm_of, swap_vm};
use crate::planner::{DiskPlan, GroupPlan, InstancePlan, Requests};
use crate::records::{instance_key, DeploymentRecord, DesiredState, InstanceRecord};
use crate::store::tables;
use crate::tasks::Task;
use crate::Director;
use bosun_types::api::InstanceAction;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Carries a plan out. Returns a one-line summary.
pub async fn execute(
    d: &Arc<Director>,
    task: &Task,
    prepared: &Prepared,
    manifest_text: &str,
    opts: ExecOptions,
) -> Result<String, DeployError> {
    let plan = &prepared.plan;
    let deployment = plan.deployment.clone();
    let now = d.clock.unix_secs();
    let created_at = d.state.get(tables::DEPLOYMENTS, &deployment).await?.map(|r| r.created_at).unwrap_or(now);
    d.state
        .put(
            tables::DEPLOYMENTS,
            &deployment,
            &DeploymentRecord {
                name: deployment.clone(),
                manifest: manifest_text.to_string(),
                cloud_config_version: prepared.cloud_config.version,
                created_at,
                updated_at: now,
            },
        )
        .await?;
    store_variables(d, &deployment, &prepared.generated).await?;
    d.state.flush().await?;
    for w in &plan.warnings {
        task.warn("plan", None, w.clone()).await;
    }
    if !plan.has_changes() {
        task.info("plan", None, "no changes").await;
        return Ok("no changes".into());
    }
    // Packages compile before anything changes: a failure here leaves every instance as it was.
    if let Some(compilation) = &plan.compilation {
        let (compiled, cached) = super::compile::compile(d, task, &deployment, compilation).await?;
        task.info("compile", None, format!("{compiled} package(s) compiled, {cached} taken from the cache")).await;
    }
    // Deletes next, in the planner's batches (BOSH's "Deleting unneeded instances").
    for batch in &plan.delete_batches {
        task.checkpoint()?;
        let timeout = Duration::from_millis(batch.script_timeout_ms);
        let runs = batch.instances.iter().map(|rec| async move {
            task.info("delete", Some(&rec.name()), "deleting instance (no longer in the manifest)").await;
            delete_instance(d, task, rec.clone(), NEXT_SCALE_IN, DiskFate::Orphan, timeout, opts).await
        });
        for r in futures::future::join_all(runs).await {
            r?;
        }
        for rec in &batch.instances {
            super::peers::tell(d, task, plan, &super::peers::Peer::of_record(rec), super::peers::PeerEvent::Removed)
                .await;
        }
    }
    // Stage by stage, as the planner ordered them (non-serial neighbours together).
    let mut changed = 0usize;
    for stage in &plan.stages {
        task.checkpoint()?;
        let runs = stage.iter().map(|&k| update_group(d, task, &deployment, &plan.groups[k], manifest_text, opts));
        for r in futures::future::join_all(runs).await {
            changed += r?;
        }
    }
    // Peers learn of new and replaced members once these run.
    for i in plan.groups.iter().flat_map(|g| &g.instances) {
        let event = match i.action {
            InstanceAction::Create => super::peers::PeerEvent::Added,
            InstanceAction::Recreate => super::peers::PeerEvent::Recreated,
            _ => continue,
        };
        super::peers::tell(d, task, plan, &super::peers::Peer::of_plan(i), event).await;
    }
    task.checkpoint()?;
    run_post_deploy(d, task, &deployment).await?;
    Ok(format!("{} instance{} changed, {} deleted", changed, if changed == 1 { "" } else { "s" }, plan.deletes.len()))
}

/// One instance group: its batches in order, each batch's instances at once. A failure stops the
/// group (and the deploy) after the batch it happened in; what was done stays done.
#[tracing::instrument(name = "group_update", skip_all, fields(group = %g.name))]
pub(crate) async fn update_group(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    g: &GroupPlan,
    manifest_text: &str,
    opts: ExecOptions,
) -> Result<usize, DeployError> {
    // New instances are recorded at once, so their addresses are reserved and `instances`
    // shows them while the deploy runs (an errand group's, without VMs, only so).
    for i in g.instances.iter().filter(|i| i.existing.is_none()) {
        d.state.put(tables::INSTANCES, &instance_key(deployment, &i.uuid), &fresh_record(deployment, i)).await?;
    }
    d.state.flush().await?;
    if g.batches.is_empty() {
        return Ok(0);
    }
    let todo: usize = g.batches.iter().map(|b| b.instances.len()).sum();
    let canaries: usize = g.batches.iter().filter(|b| b.canary).map(|b| b.instances.len()).sum();
    task.info(
        "update",
        None,
        format!(
            "instance group `{}`: {todo} to change in {} batch{}, {canaries} canar{}, max_in_flight {}",
            g.name,
            g.batches.len(),
            if g.batches.len() == 1 { "" } else { "es" },
            if canaries == 1 { "y" } else { "ies" },
            g.update.max_in_flight
        ),
    )
    .await;
    let mut changed = 0;
    for batch in &g.batches {
        // Cancelled: the batches before this one are done, this and the rest are not begun.
        task.checkpoint()?;
        let watch = if batch.canary { g.update.canary_watch_time } else { g.update.update_watch_time };
        let runs = batch.instances.iter().map(|&k| {
            let how =
                Converge { watch, script_timeout_ms: g.script_timeout_ms, canary: batch.canary, manifest_text, opts };
            converge_instance(d, task, deployment, &g.instances[k], how)
        });
        let results = futures::future::join_all(runs).await;
        changed += results.iter().filter(|r| r.is_ok()).count();
        if let Some(e) = results.into_iter().find_map(Result::err) {
            if batch.canary {
                task.event(
                    bosun_types::api::EventLevel::Error,
                    "update",
                    None,
                    "a canary failed; the deploy stops here and the remaining instances are left as they were",
                )
                .await;
            }
            return Err(e);
        }
    }
    Ok(changed)
}

pub(crate) fn fresh_record(deployment: &str, i: &InstancePlan) -> InstanceRecord {
    InstanceRecord {
        deployment: deployment.to_string(),
        group: i.group.clone(),
        uuid: i.uuid.clone(),
        index: i.index,
        az: i.az.clone(),
        bootstrap: i.bootstrap,
        networks: i.networks.clone(),
        vm: None,
        disk_cids: vec![],
        applied: None,
        generation: 0,
        state: i.state,
        dirty: false,
        migrating_disk: None,
        replacement_vm: None,
        replacement_networks: BTreeMap::new(),
        deleting: false,
    }
}

/// How one instance of a batch is converged.
#[derive(Clone, Copy)]
pub(crate) struct Converge<'a> {
    watch: (u64, u64),
    script_timeout_ms: u64,
    canary: bool,
    /// The deployment's manifest, to render again once a dynamic network gave the VM its address.
    manifest_text: &'a str,
    opts: ExecOptions,
}

#[tracing::instrument(name = "instance_update", skip_all, fields(instance = %i.name(), action = %i.action, canary = run.canary))]
pub(crate) async fn converge_instance(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    i: &InstancePlan,
    run: Converge<'_>,
) -> Result<(), DeployError> {
    let Converge { watch, script_timeout_ms, canary, manifest_text, opts } = run;
    if matches!(i.action, InstanceAction::Keep | InstanceAction::Delete) {
        return Ok(()); // batches hold only instances that change; deletes go their own way
    }
    crate::fault::panic_point(crate::fault::PanicPoint::UpdateInstance);
    let name = i.name();
    let mut rec: InstanceRecord = d
        .state
        .get(tables::INSTANCES, &instance_key(deployment, &i.uuid))
        .await?
        .unwrap_or_else(|| fresh_record(deployment, i));
    let label = format!("{}{} ({})", if canary { "canary " } else { "" }, i.action, i.reasons.join("; "));
    task.info("update", Some(&name), label).await;
    instance_event(task, &rec, &i.action.to_string(), i.reasons.join("; ")).await;
    // Converged, not deleted: a deletion an earlier task began is off (the manifest wants it).
    if !rec.dirty || rec.deleting {
        rec.dirty = true;
        rec.deleting = false;
        d.state.put(tables::INSTANCES, &rec.key(), &rec).await?;
        d.state.flush().await?;
    }
    let timeout = Duration::from_millis(script_timeout_ms);
    let was_running = rec.state == DesiredState::Started && rec.vm.is_some();
    let disk_changes = matches!(i.disk, DiskPlan::Migrate { .. } | DiskPlan::Orphan);
    let how = |next: NextState, shutdown: bool, tolerant: bool| StopHow {
        next,
        shutdown: shutdown || disk_changes,
        next_disk_mb: i.persistent_disk.as_ref().map(|(mb, _)| *mb).unwrap_or(0),
        skip_drain: opts.skip_drain,
        tolerant,
    };
    let mut fresh_vm = false;
    match i.action {
        InstanceAction::Keep | InstanceAction::Delete | InstanceAction::Create | InstanceAction::Start => {}
        InstanceAction::Update | InstanceAction::Restart => {
            if was_running {
                stop_jobs(d, task, &rec, how(NEXT_UPDATE, false, false), timeout)
                    .await
                    .map_err(step(&name, "stopping jobs"))?;
            }
        }
        InstanceAction::Stop => {
            stop_jobs(d, task, &rec, how(NEXT_UPDATE, true, false), timeout)
                .await
                .map_err(step(&name, "stopping jobs"))?;
            return settle_state(d, task, &mut rec, DesiredState::Stopped, "stopped", "jobs stopped").await;
        }
        InstanceAction::Detach => {
            stop_jobs(d, task, &rec, how(NEXT_RECREATE, true, true), timeout)
                .await
                .map_err(step(&name, "stopping jobs"))?;
            delete_vm_of(d, task, &mut rec).await.map_err(step(&name, "deleting the VM"))?;
            return settle_state(
                d,
                task,
                &mut rec,
                DesiredState::Detached,
                "detached",
                "VM deleted, persistent disk kept",
            )
            .await;
        }
        InstanceAction::Recreate if i.create_swap_delete => {
            swap_vm(d, task, &mut rec, i, how(NEXT_RECREATE, true, true), timeout)
                .await
                .map_err(step(&name, "replacing the VM (create-swap-delete)"))?;
            fresh_vm = true;
        }
        InstanceAction::Recreate => {
            stop_jobs(d, task, &rec, how(NEXT_RECREATE, true, true), timeout)
                .await
                .map_err(step(&name, "stopping jobs"))?;
            delete_vm_of(d, task, &mut rec).await.map_err(step(&name, "deleting the old VM"))?;
        }
    }
    // A swapped-in VM holds the addresses it was made with (a dynamic network's included).
    if !(i.create_swap_delete && fresh_vm) {
        rec.networks = i.networks.clone();
    }
    rec.az = i.az.clone();
    rec.bootstrap = i.bootstrap;
    rec.state = i.state;
    if rec.vm.is_none() {
        create_vm_for(d, task, &mut rec, i, false).await.map_err(step(&name, "creating the VM"))?;
        fresh_vm = true;
    }
    // On a dynamic network the VM's address is known only now: render the instance again with it.
    let replanned;
    let i = if crate::planner::address_pending(&i.networks) {
        replanned = replan_instance(d, manifest_text, &i.uuid).await.map_err(|e| DeployError::Step {
            instance: name.clone(),
            step: "rendering with the address the cloud gave the VM".into(),
            source: StepError::Failed(e),
        })?;
        &replanned
    } else {
        i
    };
    let agent_id = rec.vm.as_ref().map(|v| v.agent_id.clone()).expect("has a VM now");
    d.hub
        .wait_connected(&agent_id, d.config.agent_wait_timeout)
        .await
        .map_err(|e| step(&name, "waiting for the agent")(e.into()))?;
    converge_disk(d, task, &mut rec, i, fresh_vm).await.map_err(step(&name, "converging the persistent disk"))?;
    let start = i.state == DesiredState::Started;
    apply_and_start(d, task, &mut rec, i, start.then_some(watch), timeout)
        .await
        .map_err(step(&name, if start { "starting jobs" } else { "applying the spec" }))?;
    let outcome = if start { "running" } else { "applied; jobs left stopped" };
    task.info("update", Some(&name), outcome).await;
    instance_event(task, &rec, if start { "running" } else { "stopped" }, outcome).await;
    Ok(())
}

/// Records the state a stop or hard stop left an instance in; its update is complete.
pub(crate) async fn settle_state(
    d: &Director,
    task: &Task,
    rec: &mut InstanceRecord,
    state: DesiredState,
    action: &str,
    message: &str,
) -> Result<(), DeployError> {
    rec.state = state;
    rec.dirty = false;
    d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
    d.state.flush().await?;
    task.info("update", Some(&rec.name()), format!("{action}: {message}")).await;
    instance_event(task, rec, action, message).await;
    Ok(())
}

/// Plans the deployment again (its records now hold a new VM's dynamic addresses) and returns the
/// plan of one instance: the planner, not the executor, renders it.
pub(crate) async fn replan_instance(
    d: &Arc<Director>,
    manifest_text: &str,
    uuid: &str,
) -> Result<InstancePlan, String> {
    let prepared = prepare(d, manifest_text, &Requests::default()).await.map_err(|e| bosun_types::error_chain(&e))?;
    prepared
        .plan
        .groups
        .into_iter()
        .flat_map(|g| g.instances)
        .find(|p| p.uuid == uuid)
        .ok_or_else(|| format!("instance {uuid} is no longer in the plan"))
}
