//! Errands: `bosun run-errand NAME` runs the job NAME's `bin/run` on the instances that have it,
//! in parallel, streams its output lines into the task, and records the highest exit code on the
//! task for the CLI to return. A colocated errand runs on the instances' live VMs. An errand
//! group's (`lifecycle: errand`) instances have no VM between runs: the run starts them through
//! the update engine (VMs made, jobs applied), runs the errand and, unless `keep_alive`, stops them
//! with `--hard` again (VMs deleted, disks kept). With `when_changed`, an errand whose last run
//! succeeded is not run again until its instances or their rendered configuration change.

use crate::planner::{Requests, Selection};
use crate::records::{DesiredState, InstanceRecord};
use crate::store::{tables, Tree};
use crate::tasks::Task;
use crate::Director;
use bosun_types::api::{ErrandRunRequest, InstanceSelector};
use bosun_types::manifest::Lifecycle;
use bosun_types::protocol::{AgentCommand, ScriptResult};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// An errand job's script.
const ERRAND_SCRIPT: &str = "bin/run";

/// How long an errand may run, unless the request says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where an errand runs.
pub struct Targets {
    pub instances: Vec<InstanceRecord>,
    /// They belong to errand groups: started for the run, stopped after.
    pub errand_group: bool,
    /// What the run depends on: the instances and their planned configuration.
    configuration: String,
}

/// The instances an errand runs on, among those selected: those of errand groups with the job,
/// or running instances that have it colocated.
pub async fn targets(
    d: &Director,
    deployment: &str,
    errand: &str,
    selectors: &[InstanceSelector],
) -> Result<Targets, String> {
    let manifest = stored_manifest(d, deployment).await?;
    let prepared =
        crate::update::prepare(d, &manifest, &Requests::default()).await.map_err(|e| bosun_types::error_chain(&e))?;
    let groups: Vec<(&str, bool)> = prepared
        .manifest
        .instance_groups
        .iter()
        .filter(|g| g.jobs.iter().any(|j| j.name == errand))
        .map(|g| (g.name.as_str(), g.lifecycle == Lifecycle::Errand))
        .collect();
    let runs = prepared
        .plan
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .flat_map(|i| &i.jobs)
        .any(|j| j.name == errand && j.files.contains_key(ERRAND_SCRIPT) && j.processes.is_empty());
    if !groups.is_empty() && !runs {
        return Err(format!("job `{errand}` is not an errand: an errand has a {ERRAND_SCRIPT} and runs no processes"));
    }
    let all: Vec<InstanceRecord> =
        d.state.list(tables::INSTANCES, &format!("{deployment}/")).await.map_err(|e| e.to_string())?;
    let with_job: Vec<InstanceRecord> = all.into_iter().filter(|i| groups.iter().any(|(g, _)| *g == i.group)).collect();
    if with_job.is_empty() {
        return Err(format!("no instance of deployment `{deployment}` has the errand job `{errand}`"));
    }
    let chosen: Vec<InstanceRecord> = if selectors.is_empty() {
        with_job
    } else {
        for s in selectors {
            if !with_job.iter().any(|i| s.matches(&i.group, &i.uuid, i.index)) {
                return Err(format!("no instance matching `{s}` has the errand job `{errand}`"));
            }
        }
        with_job.into_iter().filter(|i| selectors.iter().any(|s| s.matches(&i.group, &i.uuid, i.index))).collect()
    };
    let in_errand_group = |i: &InstanceRecord| groups.iter().any(|(g, errand)| *errand && *g == i.group);
    let errand_group = chosen.iter().any(in_errand_group);
    if errand_group && !chosen.iter().all(in_errand_group) {
        return Err(format!(
            "`{errand}` is both an errand group's job and colocated elsewhere: name the instances with --instance"
        ));
    }
    if let Some(i) = chosen.iter().find(|i| !errand_group && i.vm.is_none()) {
        return Err(format!("{}/{} has no VM (stopped --hard?): the errand cannot run there", i.group, i.uuid));
    }
    let mut text = String::new();
    for i in prepared.plan.groups.iter().flat_map(|g| &g.instances) {
        if chosen.iter().any(|c| c.uuid == i.uuid) {
            text.push_str(&format!("{}/{} {}\n", i.group, i.uuid, i.configuration_hash));
        }
    }
    let configuration = bosun_types::digest::sha256_digest(text.as_bytes());
    Ok(Targets { instances: chosen, errand_group, configuration })
}

/// The deployment's manifest as last deployed.
async fn stored_manifest(d: &Director, deployment: &str) -> Result<String, String> {
    d.state
        .get::<crate::records::DeploymentRecord>(tables::DEPLOYMENTS, deployment)
        .await
        .map_err(|e| e.to_string())?
        .map(|r| r.manifest)
        .ok_or_else(|| format!("deployment `{deployment}` does not exist"))
}

fn last_success_key(deployment: &str, errand: &str) -> String {
    format!("errand-success/{deployment}/{errand}")
}

/// Starts (VMs made, jobs applied) or hard-stops (VMs deleted) an errand group's instances
/// through the update engine.
async fn set_state(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    instances: &[InstanceRecord],
    state: DesiredState,
) -> Result<(), String> {
    let manifest = stored_manifest(d, deployment).await?;
    let selection =
        Selection::Some(instances.iter().map(|i| InstanceSelector::Uuid(i.group.clone(), i.uuid.clone())).collect());
    let requests = Requests { state: Some((selection, state)), ..Requests::default() };
    let prepared = crate::update::prepare(d, &manifest, &requests).await.map_err(|e| bosun_types::error_chain(&e))?;
    crate::update::execute(d, task, &prepared, &manifest, crate::update::ExecOptions::default())
        .await
        .map_err(|e| bosun_types::error_chain(&e))?;
    Ok(())
}

/// Runs the errand; the task's result says how it went, its exit code is recorded on the task.
pub async fn run(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    errand: &str,
    req: &ErrandRunRequest,
) -> Result<String, String> {
    let selectors: Vec<InstanceSelector> =
        req.instances.iter().map(|s| s.parse::<InstanceSelector>()).collect::<Result<_, _>>()?;
    let targets = targets(d, deployment, errand, &selectors).await?;
    let key = last_success_key(deployment, errand);
    if req.when_changed {
        let last = d.state.kv().get(Tree::Meta, &key).await.map_err(|e| e.to_string())?;
        if last.as_deref() == Some(targets.configuration.as_bytes()) {
            task.set_exit_code(0).await.map_err(|e| e.to_string())?;
            return Ok(format!("errand `{errand}` skipped: it succeeded last time and nothing changed since"));
        }
    }
    let mut instances = targets.instances.clone();
    if targets.errand_group {
        task.info("errand", None, format!("starting the errand's {} instance(s)", instances.len())).await;
        if let Err(e) = set_state(d, task, deployment, &instances, DesiredState::Started).await {
            // No VM of a run that never happened stays behind, unless asked to.
            if !req.keep_alive {
                let _ = set_state(d, task, deployment, &instances, DesiredState::Detached).await;
            }
            return Err(format!("starting the errand's instances: {e}"));
        }
        for i in instances.iter_mut() {
            let key = crate::records::instance_key(deployment, &i.uuid);
            *i = d
                .state
                .get(tables::INSTANCES, &key)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{}/{} is gone", i.group, i.uuid))?;
        }
    }
    let timeout = req.timeout_secs.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
    let results = futures::future::join_all(instances.iter().map(|i| run_on(d, task, errand, i, timeout))).await;
    if targets.errand_group && !req.keep_alive {
        task.info("errand", None, "deleting the errand's VMs (--keep-alive keeps them)").await;
        set_state(d, task, deployment, &instances, DesiredState::Detached).await?;
    }
    let mut worst = 0;
    let mut lines = Vec::new();
    for (i, r) in instances.iter().zip(results) {
        let name = format!("{}/{}", i.group, i.uuid);
        let code = match r {
            Ok(r) if r.timed_out => {
                lines.push(format!("{name}: timed out after {} s", timeout.as_secs()));
                -1
            }
            Ok(r) => {
                let code = r.exit_code.unwrap_or(-1);
                lines.push(format!("{name}: exit code {code} ({:.1} s)", r.duration_ms as f64 / 1000.0));
                code
            }
            Err(e) => return Err(format!("errand `{errand}` on {name}: {e}")),
        };
        if code != 0 && (worst == 0 || code > worst) {
            worst = code;
        }
    }
    task.set_exit_code(worst).await.map_err(|e| e.to_string())?;
    let outcome = if worst == 0 {
        d.state.kv().put(Tree::Meta, &key, targets.configuration.as_bytes()).await.map_err(|e| e.to_string())?;
        "succeeded"
    } else {
        let _ = d.state.kv().delete(Tree::Meta, &key).await;
        "failed"
    };
    d.events
        .record(
            crate::events::EventSubject::deployment(deployment),
            "run_errand",
            &task.cause(),
            format!("errand `{errand}` {outcome}: {}", lines.join("; ")),
        )
        .await;
    Ok(format!("errand `{errand}` {outcome}: {}", lines.join("; ")))
}

async fn run_on(
    d: &Arc<Director>,
    task: &Task,
    errand: &str,
    i: &InstanceRecord,
    timeout: Duration,
) -> Result<ScriptResult, String> {
    let name = format!("{}/{}", i.group, i.uuid);
    let agent_id = i.vm.as_ref().map(|v| v.agent_id.clone()).expect("targets have VMs");
    let span = tracing::info_span!("errand", errand, instance = %name);
    async {
        task.info("errand", Some(&name), format!("running `{errand}`")).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let forward = {
            let task = task.clone();
            let name = name.clone();
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    task.info("errand", Some(&name), line).await;
                }
            })
        };
        // The agent enforces the timeout; the director allows a little more for the round trip.
        let reply = d
            .hub
            .call_reporting(
                &agent_id,
                AgentCommand::RunErrand { job: errand.to_string(), timeout_ms: timeout.as_millis() as u64 },
                timeout + Duration::from_secs(30),
                Some(tx),
            )
            .await;
        let _ = forward.await;
        let value = reply.map_err(|e| e.to_string())?;
        serde_json::from_value::<ScriptResult>(value).map_err(|e| format!("the agent's answer is malformed: {e}"))
    }
    .instrument(span)
    .await
}
