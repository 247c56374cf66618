//! Deploying: [`prepare`] turns a manifest into a [`Plan`] (director-side variables, cloud-config,
//! releases and stemcells resolved, then the pure planner); [`execute`] carries the plan out —
//! deletes first, then each instance group in order, canaries first, then batches of
//! `max_in_flight` — recording every outcome in the store as it happens.

use crate::events::EventSubject;
use crate::hub::HubError;
use crate::planner::{
    plan, DiskPlan, GroupPlan, InstancePlan, Plan, PlanningInput, Requests, DEFAULT_SCRIPT_TIMEOUT_MS,
};
use crate::records::{
    instance_key, now_secs, AgentRecord, CloudConfigRecord, DeploymentRecord, DesiredState, InstanceRecord,
    OrphanedDiskRecord, ReleaseRecord, StemcellRecord, VmRecord,
};
use crate::store::{State, StoreError, Tree};
use crate::tasks::Task;
use crate::Director;
use bosun_cpi::{CpiError, CreateVmRequest};
use bosun_types::api::{
    BatchView, GroupPlanView, InstanceAction, InstancePlanView, InstanceState, InstanceView, PlanView,
};
use bosun_types::cloud_config::CloudConfig;
use bosun_types::manifest::{DeploymentManifest, VariableDefinition, VmStrategy};
use bosun_types::pki::LeafUsage;
use bosun_types::protocol::{AgentCommand, ApplyJob, ApplyPackage, ApplySpec, JobState, LifecycleScript, ScriptResult};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

const APPLY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_VM_CREATE_TRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The operator's input is wrong; nothing was changed.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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

/// A prepared deploy: everything decided, nothing done.
pub struct Prepared {
    pub manifest: DeploymentManifest,
    pub cloud_config: CloudConfigRecord,
    pub plan: Plan,
    /// Variables generated for this deploy, to store when it goes ahead.
    pub generated: Vec<(String, serde_yaml::Value)>,
}

#[derive(serde::Deserialize)]
struct VariablesOnly {
    #[serde(default)]
    variables: Vec<VariableDefinition>,
}

fn variable_key(deployment: &str, name: &str) -> String {
    format!("{deployment}/{name}")
}

fn load_variable(d: &Director, deployment: &str, name: &str) -> Result<Option<serde_yaml::Value>, DeployError> {
    let Some(sealed) = d.state.kv().get(Tree::Variables, &variable_key(deployment, name))? else { return Ok(None) };
    let plain = d.secrets.open(&sealed).map_err(|e| DeployError::Input(format!("variable `{name}`: {e}")))?;
    Ok(serde_json::from_slice(&plain).ok())
}

pub fn store_variables(d: &Director, deployment: &str, vars: &[(String, serde_yaml::Value)]) -> Result<(), StoreError> {
    for (name, v) in vars {
        let sealed = d.secrets.seal(&serde_json::to_vec(v).expect("serializable"));
        d.state.kv().put(Tree::Variables, &variable_key(deployment, name), &sealed)?;
    }
    Ok(())
}

pub fn latest_cloud_config(state: &State) -> Result<Option<CloudConfigRecord>, StoreError> {
    Ok(state.list::<CloudConfigRecord>(Tree::CloudConfigs, "")?.into_iter().max_by_key(|c| c.version))
}

pub fn cloud_config_key(version: u64) -> String {
    format!("{version:020}")
}

/// Compares versions part by part, numerically where both parts are numbers.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| s.split(['.', '+', '-']).map(str::to_string).collect::<Vec<_>>();
    let (pa, pb) = (split(a), split(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(i), Ok(j)) => i.cmp(&j),
            _ => x.cmp(y),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// Resolves variables, parses the manifest, resolves releases and stemcells and plans.
pub fn prepare(d: &Director, manifest_text: &str, requests: &Requests) -> Result<Prepared, DeployError> {
    let input = |m: String| DeployError::Input(m);
    let mut raw = bosun_types::yaml::parse_value("manifest", manifest_text).map_err(|e| input(e.to_string()))?;
    let name =
        raw.get("name").and_then(|v| v.as_str()).ok_or_else(|| input("manifest: /name: missing".into()))?.to_string();
    bosun_types::manifest::check_name("manifest", "/name", &name).map_err(|e| input(e.to_string()))?;
    let defs: VariablesOnly =
        bosun_types::yaml::from_value("manifest", raw.clone()).map_err(|e| input(e.to_string()))?;
    let mut values: BTreeMap<String, serde_yaml::Value> = BTreeMap::new();
    let mut generated = Vec::new();
    let referenced = bosun_types::vars::referenced_variables(&raw);
    for def in bosun_types::vars::generation_order(&defs.variables) {
        if let Some(v) = load_variable(d, &name, &def.name)? {
            values.insert(def.name.clone(), v);
            continue;
        }
        if !referenced.contains(&def.name)
            && !defs
                .variables
                .iter()
                .any(|x| x.options.as_ref().and_then(|o| o.get("ca")).and_then(|c| c.as_str()) == Some(&def.name))
        {
            continue; // declared but unused: generate when first needed
        }
        let v = bosun_types::vars::generate(def, &|n| values.get(n).cloned())
            .map_err(|e| input(format!("manifest: /variables: {e}")))?;
        values.insert(def.name.clone(), v.clone());
        generated.push((def.name.clone(), v));
    }
    bosun_types::vars::interpolate(&mut raw, &|n| values.get(n).cloned(), true)
        .map_err(|e| input(format!("manifest: {e}")))?;
    let manifest = DeploymentManifest::parse("manifest", raw).map_err(|e| input(e.to_string()))?;

    let cc_record = latest_cloud_config(&d.state)?
        .ok_or_else(|| input("no cloud-config has been uploaded; run `bosun update-cloud-config` first".into()))?;
    let cloud_config = CloudConfig::parse(
        "cloud-config",
        bosun_types::yaml::parse_value("cloud-config", &cc_record.yaml).map_err(|e| input(e.to_string()))?,
    )
    .map_err(|e| input(e.to_string()))?;

    let all_releases: Vec<ReleaseRecord> = d.state.list(Tree::Releases, "")?;
    let mut releases = BTreeMap::new();
    for (i, r) in manifest.releases.iter().enumerate() {
        let mut candidates: Vec<&ReleaseRecord> = all_releases.iter().filter(|x| x.name == r.name).collect();
        candidates.sort_by(|a, b| version_order(&a.version, &b.version).then(a.uploaded_at.cmp(&b.uploaded_at)));
        let chosen = if r.version.0 == "latest" {
            candidates.last().copied()
        } else {
            candidates.iter().find(|x| x.version == r.version.0).copied()
        };
        let chosen = chosen.ok_or_else(|| {
            let have: Vec<&str> = candidates.iter().map(|x| x.version.as_str()).collect();
            input(format!(
                "manifest: /releases/{i}: release `{}/{}` is not uploaded (uploaded versions: {})",
                r.name,
                r.version,
                if have.is_empty() { "none".into() } else { have.join(", ") }
            ))
        })?;
        releases.insert(r.name.clone(), chosen.clone());
    }
    let all_stemcells: Vec<StemcellRecord> = d.state.list(Tree::Stemcells, "")?;
    let mut stemcells = BTreeMap::new();
    for (i, s) in manifest.stemcells.iter().enumerate() {
        let mut candidates: Vec<&StemcellRecord> = all_stemcells
            .iter()
            .filter(|x| {
                s.os.as_ref().map(|o| &x.operating_system == o).unwrap_or(true)
                    && s.name.as_ref().map(|n| &x.name == n).unwrap_or(true)
            })
            .collect();
        candidates.sort_by(|a, b| version_order(&a.version, &b.version).then(a.uploaded_at.cmp(&b.uploaded_at)));
        let chosen = if s.version.0 == "latest" {
            candidates.last().copied()
        } else {
            candidates.iter().find(|x| x.version == s.version.0).copied()
        };
        let what =
            s.os.as_ref()
                .map(|o| format!("os `{o}`"))
                .or(s.name.as_ref().map(|n| format!("`{n}`")))
                .unwrap_or_default();
        let chosen = chosen.ok_or_else(|| {
            input(format!("manifest: /stemcells/{i}: no uploaded stemcell matches {what} version `{}`", s.version))
        })?;
        stemcells.insert(s.alias.clone(), chosen.clone());
    }
    let everyone: Vec<InstanceRecord> = d.state.list(Tree::Instances, "")?;
    let existing: Vec<InstanceRecord> = everyone.iter().filter(|i| i.deployment == name).cloned().collect();
    let elsewhere: BTreeSet<Ipv4Addr> =
        everyone.iter().filter(|i| i.deployment != name).flat_map(|i| i.held_addresses()).collect();
    let planning = PlanningInput {
        manifest: &manifest,
        cloud_config: &cloud_config,
        releases: &releases,
        stemcells: &stemcells,
        existing: &existing,
        addresses_in_use_elsewhere: &elsewhere,
        requests,
    };
    let plan = plan(&planning, &mut rand::thread_rng()).map_err(|e| input(format!("manifest: {e}")))?;
    Ok(Prepared { manifest, cloud_config: cc_record, plan, generated })
}

/// Blanks every value under a `properties` or `env` key, so diffs show structure, not secrets.
fn redact(v: &mut serde_yaml::Value, under_secret: bool) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                let secret = under_secret || matches!(k.as_str(), Some("properties") | Some("env"));
                redact(x, secret);
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(|x| redact(x, under_secret)),
        serde_yaml::Value::Tagged(t) => redact(&mut t.value, under_secret),
        other => {
            if under_secret {
                *other = serde_yaml::Value::String("<redacted>".into());
            }
        }
    }
}

fn redacted_yaml(text: &str) -> String {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(mut v) => {
            redact(&mut v, false);
            serde_yaml::to_string(&v).unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

/// A new instance's uuid is drawn when the deploy runs, not in a dry run: it shows by index.
fn instance_label(i: &InstancePlan) -> String {
    if i.existing.is_some() {
        i.name()
    } else {
        format!("{}/(new, index {})", i.group, i.index)
    }
}

pub fn plan_view(plan: &Plan, old_manifest: Option<&str>, new_manifest: &str) -> PlanView {
    let old = old_manifest.map(redacted_yaml).unwrap_or_default();
    let new = redacted_yaml(new_manifest);
    let diff = similar::TextDiff::from_lines(&old, &new);
    let mut manifest_diff = Vec::new();
    for group in diff.grouped_ops(2) {
        for op in group {
            for change in diff.iter_changes(&op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Delete => "- ",
                    similar::ChangeTag::Insert => "+ ",
                    similar::ChangeTag::Equal => "  ",
                };
                manifest_diff.push(format!("{sign}{}", change.value().trim_end_matches('\n')));
            }
        }
        manifest_diff.push("  ...".into());
    }
    let mut groups: Vec<GroupPlanView> = plan
        .groups
        .iter()
        .map(|g| GroupPlanView {
            name: g.name.clone(),
            update: format!(
                "canaries {}, max_in_flight {}, canary_watch_time {}-{} ms, update_watch_time {}-{} ms, serial {}, vm_strategy {}, script timeout {} s",
                g.update.canaries,
                g.update.max_in_flight,
                g.update.canary_watch_time.0,
                g.update.canary_watch_time.1,
                g.update.update_watch_time.0,
                g.update.update_watch_time.1,
                g.update.serial,
                match g.update.vm_strategy {
                    VmStrategy::DeleteCreate => "delete-create",
                    VmStrategy::CreateSwapDelete => "create-swap-delete",
                },
                g.script_timeout_ms / 1000
            ),
            batches: g
                .batches
                .iter()
                .map(|b| BatchView {
                    canary: b.canary,
                    az: b.az.clone(),
                    instances: b.instances.iter().map(|&k| instance_label(&g.instances[k])).collect(),
                })
                .collect(),
            instances: g
                .instances
                .iter()
                .map(|i| InstancePlanView {
                    instance: instance_label(i),
                    index: i.index,
                    az: i.az.clone(),
                    ips: i.networks.values().map(|n| crate::planner::show_ip(&n.ip).to_string()).collect(),
                    action: i.action,
                    reasons: i.reasons.clone(),
                })
                .collect(),
        })
        .collect();
    for d in &plan.deletes {
        let view = InstancePlanView {
            instance: d.name(),
            index: d.index,
            az: d.az.clone(),
            ips: d.ips(),
            action: InstanceAction::Delete,
            reasons: vec!["no longer in the manifest".into()],
        };
        match groups.iter_mut().find(|g| g.name == d.group) {
            Some(g) => g.instances.push(view),
            None => groups.push(GroupPlanView {
                name: d.group.clone(),
                update: String::new(),
                instances: vec![view],
                batches: vec![],
            }),
        }
    }
    PlanView { deployment: plan.deployment.clone(), manifest_diff, groups, changes: plan.has_changes() }
}

/// The next states BOSH's pre-stop and drain scripts are told.
#[derive(Debug, Clone, Copy)]
pub struct NextState {
    pub vm: &'static str,
    pub instance: &'static str,
    pub deployment: &'static str,
}

const NEXT_UPDATE: NextState = NextState { vm: "keep", instance: "keep", deployment: "keep" };
const NEXT_RECREATE: NextState = NextState { vm: "delete", instance: "keep", deployment: "keep" };
const NEXT_SCALE_IN: NextState = NextState { vm: "delete", instance: "delete", deployment: "keep" };
const NEXT_DELETE_DEPLOYMENT: NextState = NextState { vm: "delete", instance: "delete", deployment: "delete" };

/// How the stop path runs for one instance.
#[derive(Debug, Clone, Copy)]
struct StopHow {
    next: NextState,
    /// BOSH's drain type: `job_shutdown` (the VM, the disk or the jobs' running state goes) or
    /// `job_changed` (an in-place update).
    shutdown: bool,
    /// The persistent disk size (MiB) the drain script is told comes next.
    next_disk_mb: u64,
    skip_drain: bool,
    /// Pass over an agent that cannot be reached (its VM is going anyway).
    tolerant: bool,
}

fn step(instance: &str, what: &str) -> impl FnOnce(StepError) -> DeployError {
    let instance = instance.to_string();
    let what = what.to_string();
    move |source| DeployError::Step { instance, step: what, source }
}

/// How an update runs beyond what the plan says.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecOptions {
    pub skip_drain: bool,
}

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
    let now = now_secs();
    let created_at =
        d.state.get::<DeploymentRecord>(Tree::Deployments, &deployment)?.map(|r| r.created_at).unwrap_or(now);
    d.state.put(
        Tree::Deployments,
        &deployment,
        &DeploymentRecord {
            name: deployment.clone(),
            manifest: manifest_text.to_string(),
            cloud_config_version: prepared.cloud_config.version,
            created_at,
            updated_at: now,
        },
    )?;
    store_variables(d, &deployment, &prepared.generated)?;
    d.state.flush().await?;
    if !plan.has_changes() {
        task.info("plan", None, "no changes");
        return Ok("no changes".into());
    }
    // Deletes first, each group's at its max_in_flight (BOSH's "Deleting unneeded instances").
    let mut deletes_by_group: BTreeMap<&str, Vec<&InstanceRecord>> = BTreeMap::new();
    for rec in &plan.deletes {
        deletes_by_group.entry(rec.group.as_str()).or_default().push(rec);
    }
    for (group, recs) in deletes_by_group {
        let group_plan = plan.groups.iter().find(|g| g.name == group);
        let in_flight = group_plan.map(|g| g.update.max_in_flight_for(recs.len())).unwrap_or(recs.len());
        let timeout =
            Duration::from_millis(group_plan.map(|g| g.script_timeout_ms).unwrap_or(DEFAULT_SCRIPT_TIMEOUT_MS));
        // Highest index first, as the scale-in took them.
        let mut recs = recs;
        recs.sort_by_key(|r| std::cmp::Reverse(r.index));
        for chunk in recs.chunks(in_flight.max(1)) {
            let runs = chunk.iter().map(|rec| {
                task.info("delete", Some(&rec.name()), "deleting instance (no longer in the manifest)");
                delete_instance(d, task, (*rec).clone(), NEXT_SCALE_IN, DiskFate::Orphan, timeout, opts)
            });
            for r in futures::future::join_all(runs).await {
                r?;
            }
        }
    }
    // Stage by stage, as the planner ordered them (non-serial neighbours together).
    let mut changed = 0usize;
    for stage in &plan.stages {
        let runs = stage.iter().map(|&k| update_group(d, task, &deployment, &plan.groups[k], manifest_text, opts));
        for r in futures::future::join_all(runs).await {
            changed += r?;
        }
    }
    run_post_deploy(d, task, &deployment).await?;
    Ok(format!("{} instance{} changed, {} deleted", changed, if changed == 1 { "" } else { "s" }, plan.deletes.len()))
}

/// One instance group: its batches in order, each batch's instances at once. A failure stops the
/// group (and the deploy) after the batch it happened in; what was done stays done.
async fn update_group(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    g: &GroupPlan,
    manifest_text: &str,
    opts: ExecOptions,
) -> Result<usize, DeployError> {
    if g.batches.is_empty() {
        return Ok(0);
    }
    // New instances are recorded at once, so their addresses are reserved and `instances`
    // shows them while the deploy runs.
    for i in g.instances.iter().filter(|i| i.existing.is_none()) {
        d.state.put(Tree::Instances, &instance_key(deployment, &i.uuid), &fresh_record(deployment, i))?;
    }
    d.state.flush().await?;
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
    );
    let mut changed = 0;
    for batch in &g.batches {
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
                );
            }
            return Err(e);
        }
    }
    Ok(changed)
}

fn fresh_record(deployment: &str, i: &InstancePlan) -> InstanceRecord {
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
    }
}

/// How one instance of a batch is converged.
#[derive(Clone, Copy)]
struct Converge<'a> {
    watch: (u64, u64),
    script_timeout_ms: u64,
    canary: bool,
    /// The deployment's manifest, to render again once a dynamic network gave the VM its address.
    manifest_text: &'a str,
    opts: ExecOptions,
}

async fn converge_instance(
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
    let name = i.name();
    let mut rec: InstanceRecord = d
        .state
        .get(Tree::Instances, &instance_key(deployment, &i.uuid))?
        .unwrap_or_else(|| fresh_record(deployment, i));
    let label = format!("{}{} ({})", if canary { "canary " } else { "" }, i.action, i.reasons.join("; "));
    task.info("update", Some(&name), label);
    instance_event(task, &rec, &i.action.to_string(), i.reasons.join("; "));
    if !rec.dirty {
        rec.dirty = true;
        d.state.put(Tree::Instances, &rec.key(), &rec)?;
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
    task.info("update", Some(&name), outcome);
    instance_event(task, &rec, if start { "running" } else { "stopped" }, outcome);
    Ok(())
}

/// Records the state a stop or hard stop left an instance in; its update is complete.
async fn settle_state(
    d: &Director,
    task: &Task,
    rec: &mut InstanceRecord,
    state: DesiredState,
    action: &str,
    message: &str,
) -> Result<(), DeployError> {
    rec.state = state;
    rec.dirty = false;
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    task.info("update", Some(&rec.name()), format!("{action}: {message}"));
    instance_event(task, rec, action, message);
    Ok(())
}

/// Plans the deployment again (its records now hold a new VM's dynamic addresses) and returns the
/// plan of one instance: the planner, not the executor, renders it.
async fn replan_instance(d: &Arc<Director>, manifest_text: &str, uuid: &str) -> Result<InstancePlan, String> {
    let (d2, text) = (d.clone(), manifest_text.to_string());
    let prepared = tokio::task::spawn_blocking(move || prepare(&d2, &text, &Requests::default()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| bosun_types::error_chain(&e))?;
    prepared
        .plan
        .groups
        .into_iter()
        .flat_map(|g| g.instances)
        .find(|p| p.uuid == uuid)
        .ok_or_else(|| format!("instance {uuid} is no longer in the plan"))
}

/// An instance's state change on the event timeline, caused by `task`.
fn instance_event(task: &Task, rec: &InstanceRecord, action: &str, message: impl Into<String>) {
    task.record(EventSubject::instance(&rec.deployment, &rec.name()), action, message);
}

fn vm_tags(d: &Director, deployment: &str, rec: &InstanceRecord) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    t.insert("director".into(), d.config.name.clone());
    t.insert("director_uuid".into(), d.uuid.clone());
    t.insert("deployment".into(), deployment.to_string());
    t.insert("instance_group".into(), rec.group.clone());
    t.insert("job".into(), rec.group.clone());
    t.insert("id".into(), rec.uuid.clone());
    t.insert("name".into(), rec.name());
    t.insert("index".into(), rec.index.to_string());
    t.insert("created_at".into(), now_secs().to_string());
    t
}

/// Creates a VM for the instance: an agent identity and certificate first (recorded), then the
/// CPI call, then the VM recorded at once. With `replacement`, the VM is made on the plan's
/// (new) addresses and recorded as the instance's replacement, not yet its VM.
async fn create_vm_for(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    replacement: bool,
) -> Result<(), StepError> {
    let agent_id = format!("agent-{}", uuid::Uuid::new_v4());
    let cert =
        d.ca.issue(&agent_id, std::slice::from_ref(&agent_id), LeafUsage { server: false, client: true }, 3650, false)
            .map_err(|e| StepError::Failed(format!("issuing the agent's certificate: {e}")))?;
    d.state.put(
        Tree::Agents,
        &agent_id,
        &AgentRecord {
            agent_id: agent_id.clone(),
            cert_digest: bosun_types::digest::sha256_digest(&cert.cert_der),
            deployment: rec.deployment.clone(),
            instance: rec.uuid.clone(),
            created_at: now_secs(),
        },
    )?;
    if replacement {
        rec.replacement_networks = i.networks.clone();
        d.state.put(Tree::Instances, &rec.key(), rec)?;
    }
    d.state.flush().await?;
    let tags = vm_tags(d, &rec.deployment, rec);
    let mut env = i.env.clone();
    if !env.is_object() {
        env = serde_json::json!({});
    }
    env["bosun"] = serde_json::json!({
        "director": {
            "address": d.agent_address,
            "server_name": crate::DIRECTOR_SERVER_NAME,
            "ca_cert": d.ca.cert_pem(),
            "client_cert": cert.cert_pem,
            "client_key": cert.key_pem,
        },
        "tags": tags,
    });
    let request = CreateVmRequest {
        agent_id: agent_id.clone(),
        stemcell_cid: i.stemcell.cid.clone(),
        cloud_properties: i.cloud_properties.clone(),
        networks: if replacement { i.networks.clone() } else { rec.networks.clone() },
        disk_cids: rec.disk_cids.clone(),
        env,
    };
    let mut tries = 0;
    let (vm_cid, assigned) = loop {
        tries += 1;
        match d.cpi.create_vm(&request).await {
            Ok(x) => break x,
            Err(CpiError::VmCreationFailed { message, ok_to_retry: true }) if tries < MAX_VM_CREATE_TRIES => {
                task.warn(
                    "create",
                    Some(&rec.name()),
                    format!("create_vm failed (try {tries} of {MAX_VM_CREATE_TRIES}): {message}"),
                );
            }
            Err(e) => return Err(e.into()),
        }
    };
    crate::fault::crash_point("after_create_vm");
    let vm = VmRecord { cid: vm_cid.clone(), agent_id, stemcell_cid: i.stemcell.cid.clone(), created_at: now_secs() };
    if replacement {
        rec.replacement_vm = Some(vm);
    } else {
        rec.vm = Some(vm);
    }
    // Dynamic networks: the addresses the cloud gave the VM.
    let networks = if replacement { &mut rec.replacement_networks } else { &mut rec.networks };
    for (name, n) in networks.iter_mut().filter(|(_, n)| n.ip.is_empty()) {
        if let Some(a) = assigned.get(name).filter(|a| !a.ip.is_empty()) {
            *n = a.clone();
        }
    }
    let missing: Vec<String> = networks.iter().filter(|(_, n)| n.ip.is_empty()).map(|(k, _)| k.clone()).collect();
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    if !missing.is_empty() {
        return Err(StepError::Failed(format!(
            "the CPI made VM {vm_cid} but gave it no address on dynamic network(s) {}",
            missing.join(", ")
        )));
    }
    match d.cpi.set_vm_metadata(&vm_cid, &tags).await {
        Ok(()) | Err(CpiError::NotImplemented(_)) => {}
        Err(e) => task.warn("create", Some(&rec.name()), format!("set_vm_metadata failed: {e}")),
    }
    let what = format!("created {}VM {vm_cid}", if replacement { "replacement " } else { "" });
    task.info("create", Some(&rec.name()), &what);
    instance_event(task, rec, "create_vm", what);
    Ok(())
}

/// create-swap-delete: the replacement VM is created on its own addresses and its agent awaited
/// while the old VM still runs; then the old VM's jobs stop, its disks are detached, it is
/// deleted, and the replacement becomes the instance's VM. No two VMs ever hold one address.
async fn swap_vm(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    how: StopHow,
    timeout: Duration,
) -> Result<(), StepError> {
    if rec.replacement_vm.is_none() {
        create_vm_for(d, task, rec, i, true).await?;
    }
    let new_agent = rec.replacement_vm.as_ref().map(|v| v.agent_id.clone()).expect("created above");
    d.hub.wait_connected(&new_agent, d.config.agent_wait_timeout).await?;
    stop_jobs(d, task, rec, how, timeout).await?;
    delete_vm_of(d, task, rec).await?;
    rec.vm = rec.replacement_vm.take();
    rec.networks = std::mem::take(&mut rec.replacement_networks);
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    task.info("update", Some(&rec.name()), "the replacement VM took the old one's place");
    Ok(())
}

/// Brings the instance's persistent disk to what the plan says: attach what it has to a new VM,
/// create one, migrate (resize or copy) or orphan it. Jobs are stopped.
async fn converge_disk(
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
            orphan_disk(d, task, rec, &disk, size, "the instance group no longer has a persistent disk")?;
        }
        d.state.put(Tree::Instances, &rec.key(), rec)?;
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
async fn detach_disk(d: &Director, vm: &VmRecord, disk: &str) -> Result<(), StepError> {
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
fn orphan_disk(
    d: &Director,
    task: &Task,
    rec: &InstanceRecord,
    disk: &str,
    size_mb: u64,
    reason: &str,
) -> Result<(), StoreError> {
    d.state.put(
        Tree::OrphanedDisks,
        disk,
        &OrphanedDiskRecord {
            disk_cid: disk.to_string(),
            size_mb,
            deployment: rec.deployment.clone(),
            instance: rec.name(),
            az: rec.az.clone(),
            orphaned_at: now_secs(),
            reason: reason.to_string(),
        },
    )?;
    task.info("disk", Some(&rec.name()), format!("orphaned disk {disk} ({reason})"));
    instance_event(task, rec, "orphan_disk", format!("orphaned disk {disk} ({reason})"));
    Ok(())
}

/// A disk size or type change: `resize_disk` when the CPI can grow the disk in place, else a new
/// disk, the agent copies the data over and mounts it, and the old disk is orphaned. If the copy
/// fails the new disk is orphaned instead and the instance keeps its old one.
async fn migrate_disk(
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
                task.info("disk", Some(&rec.name()), format!("resized disk {old}: {from_mb} → {to_mb} MiB"));
                return Ok(());
            }
            Err(CpiError::NotImplemented(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (size, cloud_properties) = i.persistent_disk.clone().expect("a migration has a target disk");
    let new = match rec.migrating_disk.clone() {
        Some(cid) => cid, // an interrupted migration's disk: reuse it
        None => {
            let cid = d.cpi.create_disk(size, &cloud_properties, Some(&vm.cid)).await?;
            rec.migrating_disk = Some(cid.clone());
            d.state.put(Tree::Instances, &rec.key(), rec)?;
            d.state.flush().await?;
            cid
        }
    };
    task.info("disk", Some(&rec.name()), format!("migrating disk {old} ({from_mb} MiB) to {new} ({to_mb} MiB)"));
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
        orphan_disk(d, task, rec, &new, size, "a disk migration onto it failed")?;
        rec.migrating_disk = None;
        d.state.put(Tree::Instances, &rec.key(), rec)?;
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
    orphan_disk(d, task, rec, &old, from_mb, "replaced by a disk migration")?;
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    set_disk_tags(d, task, rec, &new).await;
    task.info("disk", Some(&rec.name()), format!("disk {new} is the instance's persistent disk now"));
    Ok(())
}

async fn set_disk_tags(d: &Director, task: &Task, rec: &InstanceRecord, disk: &str) {
    let mut meta = vm_tags(d, &rec.deployment, rec);
    meta.insert("instance_index".into(), rec.index.to_string());
    match d.cpi.set_disk_metadata(disk, &meta).await {
        Ok(()) | Err(CpiError::NotImplemented(_)) => {}
        Err(e) => task.warn("disk", Some(&rec.name()), format!("set_disk_metadata failed: {e}")),
    }
}

async fn attach_disks(
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
        d.state.put(Tree::Instances, &rec.key(), rec)?;
        d.state.flush().await?;
        task.info("disk", Some(&rec.name()), format!("created persistent disk {cid} ({size} MiB)"));
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
async fn mount_disk(d: &Director, vm: &VmRecord, disk: &str, hint: serde_json::Value) -> Result<(), StepError> {
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

fn build_spec(
    d: &Director,
    rec: &InstanceRecord,
    i: &InstancePlan,
    generation: u64,
) -> Result<(ApplySpec, Vec<String>), StepError> {
    let mut digests = Vec::new();
    let mut jobs = Vec::new();
    for j in &i.jobs {
        let files: BTreeMap<String, (u32, Vec<u8>)> =
            j.files.iter().map(|(p, (m, t))| (p.clone(), (*m, t.clone().into_bytes()))).collect();
        let archive = bosun_types::tarball::deterministic_tgz(&files)
            .map_err(|e| StepError::Failed(format!("packing rendered job `{}`: {e}", j.name)))?;
        let blob = d.blobstore.put_bytes(&archive)?;
        digests.push(blob.digest.clone());
        jobs.push(ApplyJob {
            name: j.name.clone(),
            release: j.release.clone(),
            fingerprint: j.fingerprint.clone(),
            rendered: blob,
            processes: j.processes.clone(),
            packages: j.packages.clone(),
        });
    }
    let packages = i
        .packages
        .iter()
        .map(|p| {
            digests.push(p.blob.digest.clone());
            ApplyPackage {
                name: p.name.clone(),
                fingerprint: p.fingerprint.clone(),
                source: p.blob.clone(),
                dependencies: p.dependencies.clone(),
            }
        })
        .collect();
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
    Ok((spec, digests))
}

fn check_scripts(
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

async fn run_script(
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
async fn run_script_within(
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
async fn apply_and_start(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    watch: Option<(u64, u64)>,
    timeout: Duration,
) -> Result<(), StepError> {
    let agent_id = rec.vm.as_ref().map(|v| v.agent_id.clone()).expect("has a VM");
    let generation = rec.generation + 1;
    let (spec, digests) = build_spec(d, rec, i, generation)?;
    d.hub.allow_blobs(&agent_id, digests);
    d.hub.call(&agent_id, AgentCommand::Apply { spec: Box::new(spec) }, APPLY_TIMEOUT).await?;
    crate::fault::crash_point("after_apply");
    rec.generation = generation;
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    task.info("update", Some(&rec.name()), format!("applied spec generation {generation}"));
    if let Some(watch) = watch {
        run_script(d, &agent_id, LifecycleScript::PreStart, vec![], BTreeMap::new(), timeout).await?;
        d.hub.call(&agent_id, AgentCommand::Start, COMMAND_TIMEOUT).await?;
        wait_running(d, &agent_id, watch).await?;
        run_script(d, &agent_id, LifecycleScript::PostStart, vec![], BTreeMap::new(), timeout).await?;
    }
    rec.applied = Some(i.applied.clone());
    rec.dirty = false;
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    Ok(())
}

/// The watch time: first look at `min`, then every half second until every process runs or `max`
/// has passed. (BOSH looks every (max − min)/9, at least 1 s: with a long range that means waiting
/// up to minutes after the jobs run; asking an agent is cheap, so bosun asks often.)
async fn wait_running(d: &Director, agent_id: &str, (min_ms, max_ms): (u64, u64)) -> Result<(), StepError> {
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
        if start.elapsed() >= Duration::from_millis(max_ms) {
            let detail: Vec<String> = hb
                .processes
                .iter()
                .filter(|p| p.state != bosun_types::protocol::ProcessStatus::Running)
                .map(|p| {
                    format!(
                        "{}/{} is {:?}{}",
                        p.job,
                        p.name,
                        p.state,
                        p.last_exit.as_ref().map(|e| format!(" (last exit: {e})")).unwrap_or_default()
                    )
                })
                .collect();
            return Err(StepError::Failed(format!(
                "not running after {} ms: {}",
                max_ms,
                if detail.is_empty() { format!("{:?}", hb.job_state) } else { detail.join(", ") }
            )));
        }
        let left = Duration::from_millis(max_ms).saturating_sub(start.elapsed());
        tokio::time::sleep(step.min(left.max(Duration::from_millis(50)))).await;
    }
}

/// pre-stop, drain, stop, post-stop (BOSH's order and environment).
async fn stop_jobs(
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
            task.warn("stop", Some(&rec.name()), "the agent is not responding; skipping drain and stop");
            return Ok(());
        }
        return Err(HubError::NotConnected(vm.agent_id.clone()).into());
    }
    let next = how.next;
    if how.skip_drain {
        task.info("stop", Some(&rec.name()), "skipping pre-stop and drain (--skip-drain)");
    } else {
        let mut env = BTreeMap::new();
        env.insert("BOSH_VM_NEXT_STATE".to_string(), next.vm.to_string());
        env.insert("BOSH_INSTANCE_NEXT_STATE".to_string(), next.instance.to_string());
        env.insert("BOSH_DEPLOYMENT_NEXT_STATE".to_string(), next.deployment.to_string());
        run_script(d, &vm.agent_id, LifecycleScript::PreStop, vec![], env.clone(), timeout).await?;
        let current = rec.applied.as_ref().map(|a| a.persistent_disk_mb).unwrap_or(0);
        let next_disk = if next.instance == "delete" { 0 } else { how.next_disk_mb };
        env.insert("BOSH_JOB_STATE".to_string(), serde_json::json!({ "persistent_disk": current }).to_string());
        env.insert("BOSH_JOB_NEXT_STATE".to_string(), serde_json::json!({ "persistent_disk": next_disk }).to_string());
        let kind = if how.shutdown || next.vm == "delete" { "job_shutdown" } else { "job_changed" };
        drain(d, task, rec, &vm.agent_id, kind, env, timeout).await?;
    }
    d.hub.call(&vm.agent_id, AgentCommand::Stop, COMMAND_TIMEOUT + Duration::from_secs(60)).await?;
    run_script(d, &vm.agent_id, LifecycleScript::PostStop, vec![], BTreeMap::new(), timeout).await?;
    Ok(())
}

/// BOSH's drain protocol: a script prints an integer; N ≥ 0 means wait N seconds, N < 0 means
/// wait |N| seconds and ask again with `job_check_status`. Bounded by the script timeout overall.
async fn drain(
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
            task.info("drain", Some(&rec.name()), format!("drain asks to wait {wait} s"));
            let until = (tokio::time::Instant::now() + Duration::from_secs(wait as u64)).min(deadline);
            tokio::time::sleep_until(until).await;
        }
        if !again {
            return Ok(());
        }
        args = vec!["job_check_status".to_string(), "hash_unchanged".to_string()];
    }
}

/// Unmounts the disks of an instance's VM (when its agent answers) and deletes the VM, tolerating
/// what is already gone. Disks survive their VM and come back unattached (the CPI contract, as
/// on every cloud), so they are not detached one by one first — on Docker that would recreate the
/// container just before deleting it.
pub(crate) async fn delete_vm_of(d: &Arc<Director>, task: &Task, rec: &mut InstanceRecord) -> Result<(), StepError> {
    let Some(vm) = rec.vm.clone() else { return Ok(()) };
    if d.hub.is_responsive(&vm.agent_id) {
        for disk in &rec.disk_cids {
            let unmount = AgentCommand::UnmountDisk { disk_cid: disk.clone() };
            if let Err(e) = d.hub.call(&vm.agent_id, unmount, COMMAND_TIMEOUT).await {
                task.warn("delete", Some(&rec.name()), format!("unmounting disk {disk} failed: {e}"));
            }
        }
    }
    match d.cpi.delete_vm(&vm.cid).await {
        Ok(()) => task.info("delete", Some(&rec.name()), format!("deleted VM {}", vm.cid)),
        Err(CpiError::VmNotFound(_)) => {
            task.warn("delete", Some(&rec.name()), format!("VM {} was already gone", vm.cid))
        }
        Err(e) => return Err(e.into()),
    }
    crate::fault::crash_point("after_delete_vm");
    instance_event(task, rec, "delete_vm", format!("deleted VM {}", vm.cid));
    d.hub.forget(&vm.agent_id);
    d.state.delete(Tree::Agents, &vm.agent_id)?;
    rec.vm = None;
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    Ok(())
}

/// What becomes of a deleted instance's persistent disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskFate {
    /// Scale-in, a removed group or AZ: kept as orphans for the retention time (BOSH's rule).
    Orphan,
    /// The whole deployment goes: the operator asked for everything to go.
    Delete,
}

async fn delete_instance(
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
        Err(e) if disks == DiskFate::Delete => task.warn(
            "stop",
            Some(&name),
            format!("stopping before delete failed, deleting anyway: {}", crate::api::error_chain(&e)),
        ),
        // Scale-in: the drain may have to hand work over (an etcd member leaving its cluster);
        // deleting the VM regardless could cost the rest their quorum. `--skip-drain` overrides.
        Err(e) => return Err(step(&name, "stopping jobs before the instance is deleted")(e)),
    }
    if let Some(replacement) = rec.replacement_vm.take() {
        // A create-swap-delete that never finished: its VM goes too.
        match d.cpi.delete_vm(&replacement.cid).await {
            Ok(()) | Err(CpiError::VmNotFound(_)) => {}
            Err(e) => return Err(step(&name, "deleting the replacement VM")(e.into())),
        }
        d.hub.forget(&replacement.agent_id);
        d.state.delete(Tree::Agents, &replacement.agent_id)?;
    }
    delete_vm_of(d, task, &mut rec).await.map_err(step(&name, "deleting the VM"))?;
    let size = rec.applied.as_ref().map(|a| a.persistent_disk_mb).unwrap_or(0);
    for disk in rec.disk_cids.iter().chain(rec.migrating_disk.iter()) {
        match disks {
            DiskFate::Orphan => orphan_disk(d, task, &rec, disk, size, "its instance was deleted")?,
            DiskFate::Delete => match d.cpi.delete_disk(disk).await {
                Ok(()) | Err(CpiError::DiskNotFound(_)) => {
                    task.info("delete", Some(&name), format!("deleted disk {disk}"))
                }
                Err(e) => return Err(step(&name, "deleting the persistent disk")(e.into())),
            },
        }
    }
    d.state.delete(Tree::Instances, &rec.key())?;
    d.state.flush().await?;
    instance_event(task, &rec, "delete", "instance deleted");
    Ok(())
}

async fn run_post_deploy(d: &Arc<Director>, task: &Task, deployment: &str) -> Result<(), DeployError> {
    let instances: Vec<InstanceRecord> = d.state.list(Tree::Instances, &format!("{deployment}/"))?;
    // An agent that does not answer is the health monitor's (it would only hold the lock).
    for r in instances.iter().filter(|r| r.vm.as_ref().is_some_and(|v| !d.hub.is_responsive(&v.agent_id))) {
        task.warn("post-deploy", Some(&r.name()), "the agent is not responding; post-deploy skipped there");
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
    task.info("post-deploy", None, "post-deploy scripts done");
    Ok(())
}

/// Deletes every instance of a deployment (and their disks), then the deployment.
pub async fn delete_deployment(d: &Arc<Director>, task: &Task, deployment: &str) -> Result<String, DeployError> {
    let instances: Vec<InstanceRecord> = d.state.list(Tree::Instances, &format!("{deployment}/"))?;
    let n = instances.len();
    let runs = instances.into_iter().map(|rec| {
        task.info("delete", Some(&rec.name()), "deleting instance");
        delete_instance(
            d,
            task,
            rec,
            NEXT_DELETE_DEPLOYMENT,
            DiskFate::Delete,
            Duration::from_millis(DEFAULT_SCRIPT_TIMEOUT_MS),
            ExecOptions::default(),
        )
    });
    for r in futures::future::join_all(runs).await {
        r?;
    }
    for (k, _) in d.state.kv().scan_prefix(Tree::Variables, &format!("{deployment}/"))? {
        d.state.delete(Tree::Variables, &k)?;
    }
    d.state.delete(Tree::Deployments, deployment)?;
    d.state.flush().await?;
    Ok(format!("deleted deployment `{deployment}` ({n} instance{})", if n == 1 { "" } else { "s" }))
}

/// The instances of a deployment as the director sees them: the store's records joined with what
/// the agents last reported.
pub fn instance_views(d: &Director, deployment: &str, with_processes: bool) -> Result<Vec<InstanceView>, StoreError> {
    let stemcells: Vec<StemcellRecord> = d.state.list(Tree::Stemcells, "")?;
    let mut out: Vec<InstanceView> = d
        .state
        .list::<InstanceRecord>(Tree::Instances, &format!("{deployment}/"))?
        .into_iter()
        .map(|r| {
            let status = r.vm.as_ref().and_then(|v| d.hub.status(&v.agent_id));
            let state = match (&r.vm, &status) {
                (None, _) if r.state == DesiredState::Detached => InstanceState::Detached,
                (None, _) => InstanceState::Missing,
                (Some(v), Some(s)) if d.hub.is_responsive(&v.agent_id) => {
                    match s.heartbeat.as_ref().map(|h| h.job_state) {
                        Some(JobState::Running) => InstanceState::Running,
                        Some(JobState::Failing) => InstanceState::Failing,
                        Some(JobState::Starting) | None => InstanceState::Starting,
                        Some(JobState::Stopped) | Some(JobState::None) => InstanceState::Stopped,
                    }
                }
                (Some(_), _) => InstanceState::Unresponsive,
            };
            let stemcell = status.as_ref().and_then(|s| s.stemcell.clone()).or_else(|| {
                r.vm.as_ref()
                    .and_then(|v| stemcells.iter().find(|s| s.cid == v.stemcell_cid))
                    .map(|s| bosun_types::protocol::StemcellInfo { name: s.name.clone(), version: s.version.clone() })
            });
            InstanceView {
                instance: r.name(),
                group: r.group.clone(),
                id: r.uuid.clone(),
                index: r.index,
                az: r.az.clone(),
                ips: r.ips(),
                vm_cid: r.vm.as_ref().map(|v| v.cid.clone()),
                agent_id: r.vm.as_ref().map(|v| v.agent_id.clone()),
                state,
                bootstrap: r.bootstrap,
                stemcell,
                processes: if with_processes {
                    Some(
                        status
                            .as_ref()
                            .and_then(|s| s.heartbeat.as_ref())
                            .map(|h| h.processes.clone())
                            .unwrap_or_default(),
                    )
                } else {
                    None
                },
                vitals: if with_processes {
                    status.as_ref().and_then(|s| s.heartbeat.as_ref()).map(|h| h.vitals.clone())
                } else {
                    None
                },
                disk_cids: r.disk_cids.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| (a.group.as_str(), a.index).cmp(&(b.group.as_str(), b.index)));
    Ok(out)
}
