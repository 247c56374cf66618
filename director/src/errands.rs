//! Errands: `bosun run-errand NAME` runs the job NAME's `bin/run` on the instances that have it
//! colocated, in parallel, streams its output lines into the task, and records the highest exit
//! code on the task for the CLI to return. With `when_changed`, an errand whose last run succeeded
//! is not run again until the instances or the errand's configuration change.

use crate::records::InstanceRecord;
use crate::store::{tables, Tree};
use crate::tasks::Task;
use crate::Director;
use bosun_types::api::{ErrandRunRequest, InstanceSelector};
use bosun_types::protocol::{AgentCommand, ScriptResult};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long an errand may run, unless the request says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The instances an errand runs on: running, with the job applied, among those selected.
pub async fn targets(
    d: &Director,
    deployment: &str,
    errand: &str,
    selectors: &[InstanceSelector],
) -> Result<Vec<InstanceRecord>, String> {
    let all: Vec<InstanceRecord> =
        d.state.list(tables::INSTANCES, &format!("{deployment}/")).await.map_err(|e| e.to_string())?;
    let with_job: Vec<InstanceRecord> = all
        .into_iter()
        .filter(|i| i.applied.as_ref().is_some_and(|a| a.jobs.iter().any(|j| j.name == errand)))
        .collect();
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
    if let Some(i) = chosen.iter().find(|i| i.vm.is_none()) {
        return Err(format!("{}/{} has no VM (stopped --hard?): the errand cannot run there", i.group, i.uuid));
    }
    Ok(chosen)
}

/// What an errand's run depends on: the instances and the errand job as applied to each.
fn configuration(errand: &str, targets: &[InstanceRecord]) -> String {
    let mut text = String::new();
    for i in targets {
        text.push_str(&format!("{}/{}\n", i.group, i.uuid));
        if let Some(a) = &i.applied {
            text.push_str(&format!("{}\n", a.configuration_hash));
            for j in a.jobs.iter().filter(|j| j.name == errand) {
                text.push_str(&format!("{}\n", j.fingerprint));
            }
        }
    }
    bosun_types::digest::sha256_digest(text.as_bytes())
}

fn last_success_key(deployment: &str, errand: &str) -> String {
    format!("errand-success/{deployment}/{errand}")
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
    let config = configuration(errand, &targets);
    let key = last_success_key(deployment, errand);
    if req.when_changed {
        let last = d.state.kv().get(Tree::Meta, &key).await.map_err(|e| e.to_string())?;
        if last.as_deref() == Some(config.as_bytes()) {
            task.set_exit_code(0).await.map_err(|e| e.to_string())?;
            return Ok(format!("errand `{errand}` skipped: it succeeded last time and nothing changed since"));
        }
    }
    let timeout = req.timeout_secs.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
    let runs = targets.iter().map(|i| run_on(d, task, errand, i, timeout));
    let results = futures::future::join_all(runs).await;
    let mut worst = 0;
    let mut lines = Vec::new();
    for (i, r) in targets.iter().zip(results) {
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
        d.state.kv().put(Tree::Meta, &key, config.as_bytes()).await.map_err(|e| e.to_string())?;
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
