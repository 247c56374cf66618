//! Compilation, before any instance changes: each package the plan lists is taken from the
//! compiled-package cache when a verified entry is there, else compiled on a compilation VM — at
//! most one per worker at once, a package only once its dependencies are compiled. A VM is made
//! when a package needs one and deleted after it (or, with `reuse_compilation_vms`, after the
//! last). A failure stops the deploy before any instance changed, naming the package with the
//! last lines `packaging` printed; every compilation VM is deleted whatever happens.

use super::step::{DeployError, StepError, COMMAND_TIMEOUT};
use super::vm::{agent_env, base_tags, create_vm_with_retries, new_agent};
use crate::planner::{CompilationPlan, CompilationWorker, PackageCompilation};
use crate::records::CompiledPackageRecord;
use crate::store::tables;
use crate::tasks::Task;
use crate::Director;
use bosun_cpi::{tags, CpiError, CreateVmRequest};
use bosun_types::protocol::{AgentCommand, CompiledDependency, CompiledPackage, PackageToCompile};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// The largest compiled package a compilation VM may upload.
const MAX_COMPILED_BYTES: u64 = 8 << 30;

/// A compilation VM.
struct Worker {
    vm_cid: String,
    agent_id: String,
}

/// What one compilation ended with: its worker slot, the VM it leaves for reuse, the outcome, the
/// package's key, and whether the cache (or another deploy) had it.
type Finished = (usize, Option<Worker>, Result<(), DeployError>, String, bool);

/// Compiles what the plan lists. Returns how many packages were compiled (and how many came from
/// the cache).
pub(crate) async fn compile(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    plan: &CompilationPlan,
) -> Result<(usize, usize), DeployError> {
    let mut pending: VecDeque<&PackageCompilation> = plan.packages.iter().collect();
    // A dependency the plan does not list was compiled before: only listed ones are waited for.
    let listed: BTreeSet<&str> = plan.packages.iter().map(|p| p.key.as_str()).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut free: Vec<(usize, Option<Worker>)> = (0..plan.workers.len()).rev().map(|k| (k, None)).collect();
    let mut running = FuturesUnordered::new();
    let (mut compiled, mut cached) = (0usize, 0usize);
    let mut failure: Option<DeployError> = None;
    loop {
        // Cancelled: what compiles finishes (and is cached), nothing more starts.
        if failure.is_none() {
            if let Err(c) = task.checkpoint() {
                failure = Some(c.into());
            }
        }
        // Start what is ready while workers are free (and nothing has failed).
        while failure.is_none() && !free.is_empty() {
            let ready = |p: &&PackageCompilation| {
                p.dependencies.iter().all(|(_, k)| done.contains(k) || !listed.contains(k.as_str()))
            };
            let Some(pos) = pending.iter().position(ready) else { break };
            let p = pending.remove(pos).expect("found above");
            let (slot, worker) = free.pop().expect("checked above");
            running.push(compile_one(d, task, deployment, plan, &plan.workers[slot], p, worker, slot));
        }
        let Some((slot, worker, outcome, key, from_cache)) = running.next().await else { break };
        match outcome {
            Ok(()) => {
                done.insert(key);
                if from_cache {
                    cached += 1;
                } else {
                    compiled += 1;
                }
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        free.push((slot, worker));
    }
    // Reused VMs go at the end, whatever happened.
    for (_, worker) in free {
        if let Some(w) = worker {
            delete_worker(d, task, &w).await;
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(p) = pending.front() {
        return Err(DeployError::Compile {
            package: p.package.name.clone(),
            message: "its dependencies were never compiled".into(),
        });
    }
    Ok((compiled, cached))
}

/// Takes one package from the cache or compiles it; the worker comes back when VMs are reused.
#[allow(clippy::too_many_arguments)]
async fn compile_one(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    plan: &CompilationPlan,
    slot: &CompilationWorker,
    p: &PackageCompilation,
    worker: Option<Worker>,
    slot_index: usize,
) -> Finished {
    let what = format!(
        "{}/{} for {}/{}",
        p.package.name, p.package.fingerprint, p.stemcell.operating_system, p.stemcell.version
    );
    if let Some(record) = d.state.get(tables::COMPILED_PACKAGES, &p.key).await.ok().flatten() {
        if d.blob_is_sound(&record.blob.digest).await {
            // Another deploy compiled it meanwhile.
            return (slot_index, worker, Ok(()), p.key.clone(), true);
        }
        task.warn("compile", None, format!("{what}: its compiled blob is missing or corrupt; compiling it again"))
            .await;
    }
    // The cache first. Missing there, the key is claimed while it compiles (another director
    // needing it waits for the claim) and the cache looked at again: the claim's last holder may
    // just have put it there.
    let mut claim = None;
    if let Some(cache) = &d.config.compiled_package_cache {
        for look in 0..2 {
            match crate::compiled_cache::take(d, cache, &p.key).await {
                Ok(Some(record)) => {
                    let stored = d.state.put(tables::COMPILED_PACKAGES, &p.key, &record).await;
                    task.info("compile", None, format!("{what}: taken from the compiled-package cache")).await;
                    return (slot_index, worker, stored.map_err(DeployError::from), p.key.clone(), true);
                }
                Ok(None) => {}
                Err(why) => {
                    task.warn(
                        "compile",
                        None,
                        format!("{what}: the compiled-package cache's entry is refused ({why}); compiling"),
                    )
                    .await
                }
            }
            if look == 1 {
                break;
            }
            let waiting = task.info("compile", None, format!("{what}: another director is compiling it; waiting"));
            match crate::compiled_cache::claim(cache, &p.key, waiting).await {
                Ok(c) => claim = Some(c),
                Err(why) => {
                    task.warn("compile", None, format!("{what}: not claimed in the compiled-package cache ({why})"))
                        .await;
                    break;
                }
            }
        }
    }
    let started = Instant::now();
    let worker = match worker {
        Some(w) => Ok(w),
        None => start_worker(d, task, deployment, plan, slot, p).await,
    };
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            let e = DeployError::Compile {
                package: p.package.name.clone(),
                message: format!("making a compilation VM: {}", bosun_types::error_chain(&e)),
            };
            return (slot_index, None, Err(e), p.key.clone(), false);
        }
    };
    task.info("compile", None, format!("compiling {what} on VM {}", worker.vm_cid)).await;
    crate::fault::crash_point(crate::fault::CrashPoint::Compiling);
    let outcome = run_compilation(d, task, &worker, p).await;
    let keep = plan.reuse_vms && outcome.is_ok();
    let worker = if keep {
        Some(worker)
    } else {
        delete_worker(d, task, &worker).await;
        None
    };
    let outcome = match outcome {
        Ok(c) => {
            let record = CompiledPackageRecord {
                key: p.key.clone(),
                name: p.package.name.clone(),
                fingerprint: p.package.fingerprint.clone(),
                release: p.release.clone(),
                stemcell_os: p.stemcell.operating_system.clone(),
                stemcell_version: p.stemcell.version.clone(),
                dependencies: p.dependencies.clone(),
                blob: c.compiled,
                compiled_at: d.clock.unix_secs(),
                packaging_ms: c.packaging_ms,
            };
            let stored = async {
                d.state.put(tables::COMPILED_PACKAGES, &p.key, &record).await?;
                d.state.flush().await
            }
            .await;
            if let Some(cache) = &d.config.compiled_package_cache {
                if let Err(e) = crate::compiled_cache::keep(d, cache, &record).await {
                    task.warn("compile", None, format!("{what}: not kept in the compiled-package cache: {e}")).await;
                }
            }
            task.info(
                "compile",
                None,
                format!(
                    "compiled {what} in {:.1} s (packaging {:.1} s)",
                    started.elapsed().as_secs_f64(),
                    record.packaging_ms as f64 / 1000.0
                ),
            )
            .await;
            stored.map_err(DeployError::from)
        }
        Err(message) => Err(DeployError::Compile { package: p.package.name.clone(), message }),
    };
    // Kept in the cache (or failed): the directors waiting for it look there now.
    drop(claim);
    (slot_index, worker, outcome, p.key.clone(), false)
}

/// Sends `compile_package` and waits for the compiled package to be in the blobstore.
async fn run_compilation(
    d: &Director,
    task: &Task,
    w: &Worker,
    p: &PackageCompilation,
) -> Result<CompiledPackage, String> {
    let mut dependencies = Vec::new();
    for (name, key) in &p.dependencies {
        let rec = d
            .state
            .get(tables::COMPILED_PACKAGES, key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("dependency `{name}` is not compiled"))?;
        dependencies.push(CompiledDependency { name: name.clone(), fingerprint: rec.fingerprint, compiled: rec.blob });
    }
    let digests =
        std::iter::once(p.package.blob.digest.clone()).chain(dependencies.iter().map(|x| x.compiled.digest.clone()));
    d.hub.allow_blobs(&w.agent_id, digests);
    d.hub.allow_upload(&w.agent_id, MAX_COMPILED_BYTES);
    let timeout = d.config.compile_timeout;
    let command = AgentCommand::CompilePackage {
        package: PackageToCompile {
            name: p.package.name.clone(),
            fingerprint: p.package.fingerprint.clone(),
            source: p.package.blob.clone(),
            dependencies,
        },
        timeout_ms: timeout.as_millis() as u64,
        build_cache: build_cache_for(d.config.build_cache.as_deref(), &p.stemcell.operating_system),
    };
    // The agent's progress reports become the task's lines while it compiles.
    let (progress, mut reports) = tokio::sync::mpsc::unbounded_channel::<String>();
    let forward = async {
        while let Some(r) = reports.recv().await {
            task.info("compile", None, format!("compiling {r}")).await;
        }
    };
    let call = d.hub.call_reporting(&w.agent_id, command, timeout + COMMAND_TIMEOUT, Some(progress));
    let (answer, ()) = tokio::join!(call, forward);
    d.hub.forbid_upload(&w.agent_id);
    let answer = answer.map_err(|e| bosun_types::error_chain(&e))?;
    let compiled: CompiledPackage =
        serde_json::from_value(answer).map_err(|e| format!("the agent's answer is malformed: {e}"))?;
    if !d.blob_is_sound(&compiled.compiled.digest).await {
        return Err(format!("the compiled package {} never reached the blobstore", compiled.compiled.digest));
    }
    Ok(compiled)
}

async fn start_worker(
    d: &Director,
    task: &Task,
    deployment: &str,
    plan: &CompilationPlan,
    slot: &CompilationWorker,
    p: &PackageCompilation,
) -> Result<Worker, StepError> {
    let id = uuid::Uuid::new_v4().to_string();
    let identity = new_agent(d, deployment, &format!("compilation-{id}")).await?;
    let mut t = base_tags(d, deployment);
    t.insert(tags::COMPILING.to_string(), p.package.name.clone());
    t.insert(tags::NAME.to_string(), format!("compilation/{id}"));
    let request = CreateVmRequest {
        agent_id: identity.agent_id.clone(),
        stemcell_cid: p.stemcell.cid.clone(),
        cloud_properties: plan.cloud_properties.clone(),
        networks: slot.networks.clone(),
        disk_cids: vec![],
        env: agent_env(d, &plan.env, &identity, &t),
    };
    let (vm_cid, _) = create_vm_with_retries(d, task, &format!("compilation/{id}"), &request).await?;
    let worker = Worker { vm_cid, agent_id: identity.agent_id };
    if let Err(e) = d.hub.wait_connected(&worker.agent_id, d.config.agent_wait_timeout).await {
        delete_worker(d, task, &worker).await;
        return Err(e.into());
    }
    Ok(worker)
}

async fn delete_worker(d: &Director, task: &Task, w: &Worker) {
    match d.cpi.delete_vm(&w.vm_cid).await {
        Ok(()) | Err(CpiError::VmNotFound(_)) => {}
        Err(e) => {
            task.warn("compile", None, format!("deleting compilation VM {} failed: {e} (cck finds it)", w.vm_cid)).await
        }
    }
    d.hub.forget(&w.agent_id);
    let _ = d.state.delete(tables::AGENTS, &w.agent_id).await;
}

/// The build cache offered to a compilation for stemcells of `operating_system`: one per
/// operating system, so one line's compilers and headers never feed another's (Go keys its
/// entries by every input, so the versions of a line share one). None for an operating system
/// whose name is not a plain path component.
fn build_cache_for(cache: Option<&std::path::Path>, operating_system: &str) -> Option<String> {
    let plain = bosun_types::yaml::is_safe_name(operating_system);
    cache.filter(|_| plain).map(|c| c.join(operating_system).display().to_string())
}

#[cfg(test)]
mod tests {
    use super::build_cache_for;
    use std::path::Path;

    #[test]
    fn the_build_cache_is_per_operating_system_and_only_for_plain_names() {
        let cache = Some(Path::new("/var/cache/bosun/build-cache"));
        assert_eq!(
            build_cache_for(cache, "debian-bookworm").as_deref(),
            Some("/var/cache/bosun/build-cache/debian-bookworm")
        );
        for hostile in ["", "..", "../etc", "a/b", ".hidden", "x y"] {
            assert_eq!(build_cache_for(cache, hostile), None, "{hostile:?}");
        }
        assert_eq!(build_cache_for(None, "debian-bookworm"), None);
    }
}
