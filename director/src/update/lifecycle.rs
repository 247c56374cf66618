//! The jobs' lifecycle on an instance: the apply spec, apply → pre-start → start → running within
//! the watch time → post-start, and the stop path (pre-stop → drain → stop → post-stop), each
//! script with its timeout; post-deploy at the end of a deploy.

use super::step::{step, DeployError, Next, NextState, StepError, APPLY_TIMEOUT, COMMAND_TIMEOUT};
use crate::hub::HubError;
use crate::planner::InstancePlan;
use crate::records::{DesiredState, InstanceRecord};
use crate::store::tables;
use crate::tasks::Task;
use crate::Director;
use bosun_types::digest::sha256_digest;
use bosun_types::protocol::{
    AgentCommand, ApplyJob, ApplyPackage, ApplySpec, BlobRef, JobState, LifecycleScript, ScriptResult,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How the stop path runs for one instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopHow {
    pub(crate) next: NextState,
    /// BOSH's drain type: `job_shutdown` (the VM, the disk or the jobs' running state goes) or
    /// `job_changed` (an in-place update).
    pub(crate) shutdown: bool,
    /// The persistent disk size (MiB) the drain script is told comes next.
    pub(crate) next_disk_mb: u64,
    pub(crate) skip_drain: bool,
    /// Pass over an agent that cannot be reached (its VM is going anyway).
    pub(crate) tolerant: bool,
}

/// Packs each rendered job (compression: off the async threads). The archives are never written
/// to disk: they hold the deployment's secrets, so the hub serves them from memory to the agent
/// whose apply names them.
async fn pack_rendered_jobs(i: &InstancePlan) -> Result<Vec<(BlobRef, Arc<Vec<u8>>)>, StepError> {
    // (job name, path → (mode, bytes)) for each rendered job.
    type Files = BTreeMap<String, (u32, Vec<u8>)>;
    let rendered: Vec<(String, Files)> = i
        .jobs
        .iter()
        .map(|j| {
            (j.name.clone(), j.files.iter().map(|(p, (m, t))| (p.clone(), (*m, t.clone().into_bytes()))).collect())
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        rendered
            .into_iter()
            .map(|(name, files)| {
                let archive = bosun_types::tarball::deterministic_tgz(&files)
                    .map_err(|e| StepError::Failed(format!("packing rendered job `{name}`: {e}")))?;
                let blob = BlobRef { digest: sha256_digest(&archive), size: archive.len() as u64 };
                Ok((blob, Arc::new(archive)))
            })
            .collect()
    })
    .await
    .map_err(|e| StepError::Failed(format!("packing rendered jobs: {e}")))?
}

/// An instance's apply spec, with the digests of the stored blobs it names and the rendered jobs
/// (digest → archive) to serve from memory.
pub(crate) struct BuiltSpec {
    pub(crate) spec: ApplySpec,
    pub(crate) stored: Vec<String>,
    pub(crate) rendered: Vec<(String, Arc<Vec<u8>>)>,
}

pub(crate) async fn build_spec(
    d: &Director,
    rec: &InstanceRecord,
    i: &InstancePlan,
    generation: u64,
) -> Result<BuiltSpec, StepError> {
    let mut digests = Vec::new();
    let mut jobs = Vec::new();
    let mut rendered = Vec::new();
    for (j, (blob, archive)) in i.jobs.iter().zip(pack_rendered_jobs(i).await?) {
        rendered.push((blob.digest.clone(), archive));
        jobs.push(ApplyJob {
            name: j.name.clone(),
            release: j.release.clone(),
            fingerprint: j.fingerprint.clone(),
            rendered: blob,
            processes: j.processes.clone(),
            packages: j.packages.clone(),
        });
    }
    let mut packages = Vec::new();
    for p in &i.packages {
        let compiled = d.state.get(tables::COMPILED_PACKAGES, &p.compiled_key).await?.ok_or_else(|| {
            StepError::Failed(format!(
                "package `{}` is not compiled for stemcell {}/{}",
                p.name, i.stemcell.operating_system, i.stemcell.version
            ))
        })?;
        digests.push(compiled.blob.digest.clone());
        packages.push(ApplyPackage {
            name: p.name.clone(),
            fingerprint: p.fingerprint.clone(),
            compiled: compiled.blob,
            dependencies: p.dependencies.clone(),
        });
    }
    let spec = ApplySpec {
        generation,
        deployment: rec.deployment.clone(),
        name: rec.group.clone(),
        index: rec.index,
        id: rec.uuid.clone(),
        az: rec.az.clone(),
        bootstrap: i.bootstrap,
        networks: rec.networks.clone(),
        jobs,
        packages,
        persistent_disk_mb: i.persistent_disk.as_ref().map(|(mb, _)| *mb).unwrap_or(0),
        configuration_hash: i.configuration_hash.clone(),
    };
    Ok(BuiltSpec { spec, stored: digests, rendered })
}

pub(crate) fn check_scripts(
    script: LifecycleScript,
    value: serde_json::Value,
    timeout: Duration,
) -> Result<Vec<ScriptResult>, StepError> {
    let results: Vec<ScriptResult> = serde_json::from_value(value)
        .map_err(|e| StepError::Failed(format!("the agent's {script} report is malformed: {e}")))?;
    for r in &results {
        if r.timed_out {
            return Err(StepError::Failed(format!(
                "job `{}`: {script} did not finish within {} s and was killed; output:\n{}",
                r.job,
                timeout.as_secs(),
                r.output_tail.trim_end()
            )));
        }
        if r.exit_code != Some(0) {
            let code = r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "a signal".into());
            return Err(StepError::Failed(format!(
                "job `{}`: {script} exited with {code}; output:\n{}",
                r.job,
                r.output_tail.trim_end()
            )));
        }
    }
    Ok(results)
}

pub(crate) async fn run_script(
    d: &Director,
    agent_id: &str,
    script: LifecycleScript,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Vec<ScriptResult>, StepError> {
    run_script_within(d, agent_id, script, args, env, timeout, timeout).await
}

/// Runs a script with what is left of its time (`left`); errors name the configured `timeout`.
pub(crate) async fn run_script_within(
    d: &Director,
    agent_id: &str,
    script: LifecycleScript,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    left: Duration,
    timeout: Duration,
) -> Result<Vec<ScriptResult>, StepError> {
    // The agent enforces the timeout; the director allows a little more for the round trip.
    let v = d
        .hub
        .call(
            agent_id,
            AgentCommand::RunScript { script, env, args, timeout_ms: left.as_millis() as u64 },
            left + Duration::from_secs(30),
        )
        .await?;
    let results = check_scripts(script, v, timeout)?;
    for r in &results {
        tracing::info!(agent_id, job = %r.job, %script, duration_ms = r.duration_ms, "script finished");
    }
    Ok(results)
}

/// Applies the plan's spec; when `watch` is given also runs pre-start, starts the jobs, waits
/// until they run within the watch time, and runs post-start.
pub(crate) async fn apply_and_start(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    watch: Option<(u64, u64)>,
    timeout: Duration,
) -> Result<(), StepError> {
    let agent_id = rec.vm.as_ref().map(|v| v.agent_id.clone()).expect("has a VM");
    let generation = rec.generation + 1;
    let BuiltSpec { spec, stored, rendered } = build_spec(d, rec, i, generation).await?;
    d.hub.allow_blobs(&agent_id, stored);
    d.hub.offer_rendered(&agent_id, rendered);
    let applied = d.hub.call(&agent_id, AgentCommand::Apply { spec: Box::new(spec) }, APPLY_TIMEOUT).await;
    d.hub.withdraw_rendered(&agent_id);
    applied?;
    crate::fault::crash_point(crate::fault::CrashPoint::AfterApply);
    rec.generation = generation;
    d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
    task.info("update", Some(&rec.name()), format!("applied spec generation {generation}")).await;
    if let Some(watch) = watch {
        run_script(d, &agent_id, LifecycleScript::PreStart, vec![], BTreeMap::new(), timeout).await?;
        d.hub.call(&agent_id, AgentCommand::Start, COMMAND_TIMEOUT).await?;
        wait_running(d, &agent_id, watch).await?;
        run_script(d, &agent_id, LifecycleScript::PostStart, vec![], BTreeMap::new(), timeout).await?;
    }
    rec.applied = Some(i.applied.clone());
    rec.dirty = false;
    d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
    d.state.flush().await?;
    Ok(())
}

/// Restarts after which a process still failing is crash-looping: the watch ends there instead of
/// at its maximum (the agent's backoff of 1, 2, 4, 8, 16 s puts this about 30 s after the start;
/// a process waiting for a peer to come up exits and returns a few times, not this often).
const CRASH_LOOP_RESTARTS: u32 = 5;

/// The watch time: first look at `min`, then every half second until every process runs or `max`
/// has passed. (BOSH looks every (max − min)/9, at least 1 s: with a long range that means waiting
/// up to minutes after the jobs run; asking an agent is cheap, so bosun asks often.) A process that
/// keeps exiting ends the watch early; either way the error says, for each process not running,
/// how it last exited and its last words.
pub(crate) async fn wait_running(d: &Director, agent_id: &str, (min_ms, max_ms): (u64, u64)) -> Result<(), StepError> {
    let start = tokio::time::Instant::now();
    let step = Duration::from_millis(500);
    tokio::time::sleep(Duration::from_millis(min_ms)).await;
    loop {
        let v = d.hub.call(agent_id, AgentCommand::GetState, COMMAND_TIMEOUT).await?;
        let hb: bosun_types::protocol::Heartbeat =
            serde_json::from_value(v).map_err(|e| StepError::Failed(format!("malformed state: {e}")))?;
        d.hub.observe(agent_id, hb.clone());
        if hb.job_state == JobState::Running {
            return Ok(());
        }
        use bosun_types::protocol::ProcessStatus;
        let crash_looping =
            hb.processes.iter().any(|p| p.state == ProcessStatus::Failing && p.restarts >= CRASH_LOOP_RESTARTS);
        if crash_looping || start.elapsed() >= Duration::from_millis(max_ms) {
            let detail: Vec<String> = hb
                .processes
                .iter()
                .filter(|p| p.state != ProcessStatus::Running)
                .map(|p| {
                    let exit = p.last_exit.as_ref().map(|e| format!(" (last exit: {e})")).unwrap_or_default();
                    let words = p.last_words.as_ref().map(|w| format!("; its last words: {w}")).unwrap_or_default();
                    format!("{}/{} is {:?} after {} restarts{exit}{words}", p.job, p.name, p.state, p.restarts)
                })
                .collect();
            let what = if crash_looping {
                format!("keeps exiting ({} ms into the watch)", start.elapsed().as_millis())
            } else {
                format!("not running after {max_ms} ms")
            };
            return Err(StepError::Failed(format!(
                "{what}: {}",
                if detail.is_empty() { format!("{:?}", hb.job_state) } else { detail.join(", ") }
            )));
        }
        let left = Duration::from_millis(max_ms).saturating_sub(start.elapsed());
        tokio::time::sleep(step.min(left.max(Duration::from_millis(50)))).await;
    }
}

/// pre-stop, drain, stop, post-stop (BOSH's order and environment).
pub(crate) async fn stop_jobs(
    d: &Arc<Director>,
    task: &Task,
    rec: &InstanceRecord,
    how: StopHow,
    timeout: Duration,
) -> Result<(), StepError> {
    let Some(vm) = &rec.vm else { return Ok(()) };
    if rec.applied.is_none() && rec.generation == 0 {
        return Ok(()); // nothing was ever started
    }
    d.hub.await_reconnect(&vm.agent_id).await;
    if !d.hub.is_responsive(&vm.agent_id) {
        if how.tolerant {
            task.warn("stop", Some(&rec.name()), "the agent is not responding; skipping drain and stop").await;
            return Ok(());
        }
        return Err(HubError::NotConnected(vm.agent_id.clone()).into());
    }
    let next = how.next;
    if how.skip_drain {
        task.info("stop", Some(&rec.name()), "skipping pre-stop and drain (--skip-drain)").await;
    } else {
        let mut env = BTreeMap::new();
        env.insert("BOSH_VM_NEXT_STATE".to_string(), next.vm.to_string());
        env.insert("BOSH_INSTANCE_NEXT_STATE".to_string(), next.instance.to_string());
        env.insert("BOSH_DEPLOYMENT_NEXT_STATE".to_string(), next.deployment.to_string());
        run_script(d, &vm.agent_id, LifecycleScript::PreStop, vec![], env.clone(), timeout).await?;
        let current = rec.applied.as_ref().map(|a| a.persistent_disk_mb).unwrap_or(0);
        let next_disk = if next.instance == Next::Delete { 0 } else { how.next_disk_mb };
        env.insert("BOSH_JOB_STATE".to_string(), serde_json::json!({ "persistent_disk": current }).to_string());
        env.insert("BOSH_JOB_NEXT_STATE".to_string(), serde_json::json!({ "persistent_disk": next_disk }).to_string());
        let kind = if how.shutdown || next.vm == Next::Delete { "job_shutdown" } else { "job_changed" };
        drain(d, task, rec, &vm.agent_id, kind, env, timeout).await?;
    }
    d.hub.call(&vm.agent_id, AgentCommand::Stop, COMMAND_TIMEOUT + Duration::from_secs(60)).await?;
    run_script(d, &vm.agent_id, LifecycleScript::PostStop, vec![], BTreeMap::new(), timeout).await?;
    Ok(())
}

/// BOSH's drain protocol: a script prints an integer; N ≥ 0 means wait N seconds, N < 0 means
/// wait |N| seconds and ask again with `job_check_status`. Bounded by the script timeout overall.
pub(crate) async fn drain(
    d: &Director,
    task: &Task,
    rec: &InstanceRecord,
    agent_id: &str,
    kind: &str,
    env: BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), StepError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut args = vec![kind.to_string(), "hash_changed".to_string()];
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(StepError::Failed(format!("drain did not finish within {} s", timeout.as_secs())));
        }
        let results =
            run_script_within(d, agent_id, LifecycleScript::Drain, args.clone(), env.clone(), remaining, timeout)
                .await?;
        let mut wait = 0i64;
        let mut again = false;
        for r in &results {
            let last = r.stdout_tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let n: i64 = last
                .parse()
                .map_err(|_| StepError::Failed(format!("job `{}`: drain printed `{last}`, not an integer", r.job)))?;
            if n < 0 {
                again = true;
            }
            wait = wait.max(n.abs());
        }
        if wait > 0 {
            task.info("drain", Some(&rec.name()), format!("drain asks to wait {wait} s")).await;
            let until = (tokio::time::Instant::now() + Duration::from_secs(wait as u64)).min(deadline);
            tokio::time::sleep_until(until).await;
        }
        if !again {
            return Ok(());
        }
        args = vec!["job_check_status".to_string(), "hash_unchanged".to_string()];
    }
}

pub(crate) async fn run_post_deploy(d: &Arc<Director>, task: &Task, deployment: &str) -> Result<(), DeployError> {
    let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, &format!("{deployment}/")).await?;
    // An agent that does not answer is the health monitor's (it would only hold the lock).
    for r in instances.iter().filter(|r| r.vm.as_ref().is_some_and(|v| !d.hub.is_responsive(&v.agent_id))) {
        task.warn("post-deploy", Some(&r.name()), "the agent is not responding; post-deploy skipped there").await;
    }
    let runs = instances
        .iter()
        .filter(|r| r.state == DesiredState::Started)
        .filter(|r| r.vm.as_ref().is_some_and(|v| d.hub.is_responsive(&v.agent_id)))
        .filter_map(|r| r.vm.as_ref().map(|v| (r, v.agent_id.clone())))
        .map(|(r, agent)| async move {
            run_script(d, &agent, LifecycleScript::PostDeploy, vec![], BTreeMap::new(), Duration::from_secs(300))
                .await
                .map_err(step(&r.name(), "post-deploy"))
        });
    for r in futures::future::join_all(runs).await {
        r?;
    }
    task.info("post-deploy", None, "post-deploy scripts done").await;
    Ok(())
}
