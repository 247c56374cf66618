//! Deploying: [`prepare`] turns a manifest into a [`Plan`] (director-side variables, cloud-config,
//! releases and stemcells resolved, then the pure planner); [`execute`] carries the plan out —
//! deletes first, then each instance group in order, canaries first, then batches of
//! `max_in_flight` — recording every outcome in the store as it happens.

use crate::hub::HubError;
use crate::planner::{plan, InstancePlan, Plan, PlanningInput};
use crate::records::{
    instance_key, now_secs, AgentRecord, CloudConfigRecord, DeploymentRecord, InstanceRecord, ReleaseRecord,
    StemcellRecord, VmRecord,
};
use crate::store::{State, StoreError, Tree};
use crate::tasks::Task;
use crate::Director;
use bosun_cpi::{CpiError, CreateVmRequest};
use bosun_types::api::{GroupPlanView, InstanceAction, InstancePlanView, InstanceState, InstanceView, PlanView};
use bosun_types::cloud_config::CloudConfig;
use bosun_types::manifest::{DeploymentManifest, VariableDefinition};
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
pub fn prepare(d: &Director, manifest_text: &str, recreate: bool) -> Result<Prepared, DeployError> {
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
    let elsewhere: BTreeSet<Ipv4Addr> = everyone
        .iter()
        .filter(|i| i.deployment != name)
        .flat_map(|i| i.networks.values().filter_map(|n| n.ip.parse().ok()))
        .collect();
    let planning = PlanningInput {
        manifest: &manifest,
        cloud_config: &cloud_config,
        releases: &releases,
        stemcells: &stemcells,
        existing: &existing,
        addresses_in_use_elsewhere: &elsewhere,
        recreate,
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
            instances: g
                .instances
                .iter()
                .map(|i| InstancePlanView {
                    // A new instance's uuid is drawn when the deploy runs, not in a dry run.
                    instance: if i.existing.is_some() { i.name() } else { format!("{}/(new)", i.group) },
                    index: i.index,
                    az: i.az.clone(),
                    ips: i.networks.values().map(|n| n.ip.clone()).collect(),
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
            None => groups.push(GroupPlanView { name: d.group.clone(), instances: vec![view] }),
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

fn step(instance: &str, what: &str) -> impl FnOnce(StepError) -> DeployError {
    let instance = instance.to_string();
    let what = what.to_string();
    move |source| DeployError::Step { instance, step: what, source }
}

/// Carries a plan out. Returns a one-line summary.
pub async fn execute(
    d: &Arc<Director>,
    task: &Task,
    prepared: &Prepared,
    manifest_text: &str,
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
    for rec in &plan.deletes {
        task.info("delete", Some(&rec.name()), "deleting instance (no longer in the manifest)");
        delete_instance(d, task, rec.clone(), NEXT_SCALE_IN).await?;
    }
    let mut changed = 0usize;
    for g in &plan.groups {
        let todo: Vec<&InstancePlan> = g.instances.iter().filter(|i| i.action != InstanceAction::Keep).collect();
        if todo.is_empty() {
            continue;
        }
        // New instances are recorded at once, so their addresses are reserved and `instances`
        // shows them while the deploy runs.
        for i in &todo {
            if i.existing.is_none() {
                d.state.put(Tree::Instances, &instance_key(&deployment, &i.uuid), &fresh_record(&deployment, i))?;
            }
        }
        d.state.flush().await?;
        let canaries = (g.update.canaries as usize).min(todo.len());
        let mif = g.update.max_in_flight_for(g.instances.len());
        let mut batches: Vec<(bool, Vec<&InstancePlan>)> = Vec::new();
        for chunk in todo[..canaries].chunks(mif.max(1)) {
            batches.push((true, chunk.to_vec()));
        }
        for chunk in todo[canaries..].chunks(mif.max(1)) {
            batches.push((false, chunk.to_vec()));
        }
        task.info(
            "update",
            None,
            format!(
                "instance group `{}`: {} to change, {canaries} canar{}, max in flight {mif}",
                g.name,
                todo.len(),
                if canaries == 1 { "y" } else { "ies" }
            ),
        );
        for (canary, batch) in batches {
            let watch = if canary { g.update.canary_watch_time } else { g.update.update_watch_time };
            let runs = batch
                .iter()
                .map(|i| converge_instance(d, task, &deployment, i, watch, g.update.script_timeout_ms, canary));
            let results = futures::future::join_all(runs).await;
            changed += results.iter().filter(|r| r.is_ok()).count();
            if let Some(e) = results.into_iter().find_map(Result::err) {
                if canary {
                    task.event(
                        bosun_types::api::EventLevel::Error,
                        "update",
                        None,
                        "a canary failed; the deploy stops here and other instances are left as they were",
                    );
                }
                return Err(e);
            }
        }
    }
    run_post_deploy(d, task, &deployment).await?;
    Ok(format!("{} instance{} changed, {} deleted", changed, if changed == 1 { "" } else { "s" }, plan.deletes.len()))
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
        desired_running: true,
    }
}

async fn converge_instance(
    d: &Arc<Director>,
    task: &Task,
    deployment: &str,
    i: &InstancePlan,
    watch: (u64, u64),
    script_timeout_ms: u64,
    canary: bool,
) -> Result<(), DeployError> {
    let name = i.name();
    let mut rec: InstanceRecord = d
        .state
        .get(Tree::Instances, &instance_key(deployment, &i.uuid))?
        .unwrap_or_else(|| fresh_record(deployment, i));
    let label = format!("{}{} ({})", if canary { "canary " } else { "" }, i.action, i.reasons.join("; "));
    task.info("update", Some(&name), label);
    let timeout = Duration::from_millis(script_timeout_ms);
    match i.action {
        InstanceAction::Keep | InstanceAction::Delete => return Ok(()),
        InstanceAction::Create => {}
        InstanceAction::Update => {
            stop_jobs(d, task, &rec, NEXT_UPDATE, timeout, false).await.map_err(step(&name, "stopping jobs"))?;
        }
        InstanceAction::Recreate => {
            stop_jobs(d, task, &rec, NEXT_RECREATE, timeout, true).await.map_err(step(&name, "stopping jobs"))?;
            delete_vm_of(d, task, &mut rec).await.map_err(step(&name, "deleting the old VM"))?;
        }
    }
    rec.networks = i.networks.clone();
    rec.az = i.az.clone();
    rec.bootstrap = i.bootstrap;
    let fresh_vm = rec.vm.is_none();
    if fresh_vm {
        create_vm_for(d, task, &mut rec, i).await.map_err(step(&name, "creating the VM"))?;
    }
    let agent_id = rec.vm.as_ref().map(|v| v.agent_id.clone()).expect("has a VM now");
    d.hub
        .wait_connected(&agent_id, d.config.agent_wait_timeout)
        .await
        .map_err(|e| step(&name, "waiting for the agent")(e.into()))?;
    attach_disks(d, task, &mut rec, i, fresh_vm).await.map_err(step(&name, "attaching the persistent disk"))?;
    start_jobs(d, task, &mut rec, i, watch, timeout).await.map_err(step(&name, "starting jobs"))?;
    task.info("update", Some(&name), "running");
    Ok(())
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

async fn create_vm_for(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
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
        networks: rec.networks.clone(),
        disk_cids: rec.disk_cids.clone(),
        env,
    };
    let mut tries = 0;
    let (vm_cid, _) = loop {
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
    rec.vm =
        Some(VmRecord { cid: vm_cid.clone(), agent_id, stemcell_cid: i.stemcell.cid.clone(), created_at: now_secs() });
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    match d.cpi.set_vm_metadata(&vm_cid, &tags).await {
        Ok(()) | Err(CpiError::NotImplemented(_)) => {}
        Err(e) => task.warn("create", Some(&rec.name()), format!("set_vm_metadata failed: {e}")),
    }
    task.info("create", Some(&rec.name()), format!("created VM {vm_cid}"));
    Ok(())
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
        let mut meta = vm_tags(d, &rec.deployment, rec);
        meta.insert("instance_index".into(), rec.index.to_string());
        match d.cpi.set_disk_metadata(&disk, &meta).await {
            Ok(()) | Err(CpiError::NotImplemented(_)) => {}
            Err(e) => task.warn("disk", Some(&rec.name()), format!("set_disk_metadata failed: {e}")),
        }
        d.hub.call(&vm.agent_id, AgentCommand::MountDisk { disk_cid: disk.clone(), hint }, COMMAND_TIMEOUT).await?;
    }
    Ok(())
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
    // The agent enforces the timeout; the director allows a little more for the round trip.
    let v = d
        .hub
        .call(
            agent_id,
            AgentCommand::RunScript { script, env, args, timeout_ms: timeout.as_millis() as u64 },
            timeout + Duration::from_secs(30),
        )
        .await?;
    check_scripts(script, v, timeout)
}

async fn start_jobs(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    watch: (u64, u64),
    timeout: Duration,
) -> Result<(), StepError> {
    let agent_id = rec.vm.as_ref().map(|v| v.agent_id.clone()).expect("has a VM");
    let generation = rec.generation + 1;
    let (spec, digests) = build_spec(d, rec, i, generation)?;
    d.hub.allow_blobs(&agent_id, digests);
    d.hub.call(&agent_id, AgentCommand::Apply { spec: Box::new(spec) }, APPLY_TIMEOUT).await?;
    rec.generation = generation;
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    task.info("update", Some(&rec.name()), format!("applied spec generation {generation}"));
    run_script(d, &agent_id, LifecycleScript::PreStart, vec![], BTreeMap::new(), timeout).await?;
    d.hub.call(&agent_id, AgentCommand::Start, COMMAND_TIMEOUT).await?;
    wait_running(d, &agent_id, watch).await?;
    run_script(d, &agent_id, LifecycleScript::PostStart, vec![], BTreeMap::new(), timeout).await?;
    rec.applied = Some(i.applied.clone());
    rec.desired_running = true;
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    Ok(())
}

/// Waits, within the watch time, until every process of the instance runs.
async fn wait_running(d: &Director, agent_id: &str, (min_ms, max_ms): (u64, u64)) -> Result<(), StepError> {
    let start = tokio::time::Instant::now();
    let first = Duration::from_millis(min_ms.min(1000));
    tokio::time::sleep(first).await;
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// pre-stop, drain, stop, post-stop. With `tolerant`, an agent that cannot be reached is passed
/// over (its VM is about to go), otherwise it is an error.
async fn stop_jobs(
    d: &Arc<Director>,
    task: &Task,
    rec: &InstanceRecord,
    next: NextState,
    timeout: Duration,
    tolerant: bool,
) -> Result<(), StepError> {
    let Some(vm) = &rec.vm else { return Ok(()) };
    if rec.applied.is_none() && rec.generation == 0 {
        return Ok(()); // nothing was ever started
    }
    if !d.hub.is_responsive(&vm.agent_id) {
        if tolerant {
            task.warn("stop", Some(&rec.name()), "the agent is not responding; skipping drain and stop");
            return Ok(());
        }
        return Err(HubError::NotConnected(vm.agent_id.clone()).into());
    }
    let mut env = BTreeMap::new();
    env.insert("BOSH_VM_NEXT_STATE".to_string(), next.vm.to_string());
    env.insert("BOSH_INSTANCE_NEXT_STATE".to_string(), next.instance.to_string());
    env.insert("BOSH_DEPLOYMENT_NEXT_STATE".to_string(), next.deployment.to_string());
    run_script(d, &vm.agent_id, LifecycleScript::PreStop, vec![], env.clone(), timeout).await?;
    let shutdown = next.vm == "delete";
    let disk =
        if next.instance == "delete" { 0 } else { rec.applied.as_ref().map(|a| a.persistent_disk_mb).unwrap_or(0) };
    env.insert(
        "BOSH_JOB_STATE".to_string(),
        serde_json::json!({ "persistent_disk": rec.applied.as_ref().map(|a| a.persistent_disk_mb).unwrap_or(0) })
            .to_string(),
    );
    env.insert("BOSH_JOB_NEXT_STATE".to_string(), serde_json::json!({ "persistent_disk": disk }).to_string());
    drain(d, task, rec, &vm.agent_id, if shutdown { "job_shutdown" } else { "job_changed" }, env, timeout).await?;
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
        let results = run_script(d, agent_id, LifecycleScript::Drain, args.clone(), env.clone(), remaining).await?;
        let mut wait = 0i64;
        let mut again = false;
        for r in &results {
            let last = r.output_tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
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

/// Detaches the disks of an instance's VM and deletes the VM, tolerating what is already gone.
async fn delete_vm_of(d: &Arc<Director>, task: &Task, rec: &mut InstanceRecord) -> Result<(), StepError> {
    let Some(vm) = rec.vm.clone() else { return Ok(()) };
    for disk in &rec.disk_cids {
        if d.hub.is_responsive(&vm.agent_id) {
            let _ =
                d.hub.call(&vm.agent_id, AgentCommand::UnmountDisk { disk_cid: disk.clone() }, COMMAND_TIMEOUT).await;
        }
        match d.cpi.detach_disk(&vm.cid, disk).await {
            Ok(())
            | Err(CpiError::DiskNotAttached { .. })
            | Err(CpiError::VmNotFound(_))
            | Err(CpiError::DiskNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match d.cpi.delete_vm(&vm.cid).await {
        Ok(()) => task.info("delete", Some(&rec.name()), format!("deleted VM {}", vm.cid)),
        Err(CpiError::VmNotFound(_)) => {
            task.warn("delete", Some(&rec.name()), format!("VM {} was already gone", vm.cid))
        }
        Err(e) => return Err(e.into()),
    }
    d.hub.forget(&vm.agent_id);
    d.state.delete(Tree::Agents, &vm.agent_id)?;
    rec.vm = None;
    d.state.put(Tree::Instances, &rec.key(), rec)?;
    d.state.flush().await?;
    Ok(())
}

async fn delete_instance(
    d: &Arc<Director>,
    task: &Task,
    mut rec: InstanceRecord,
    next: NextState,
) -> Result<(), DeployError> {
    let name = rec.name();
    let timeout = Duration::from_secs(300);
    if let Err(e) = stop_jobs(d, task, &rec, next, timeout, true).await {
        // An instance that is going away must not be kept alive by a failing script.
        task.warn(
            "stop",
            Some(&name),
            format!("stopping before delete failed, deleting anyway: {}", crate::api::error_chain(&e)),
        );
    }
    delete_vm_of(d, task, &mut rec).await.map_err(step(&name, "deleting the VM"))?;
    for disk in rec.disk_cids.clone() {
        match d.cpi.delete_disk(&disk).await {
            Ok(()) | Err(CpiError::DiskNotFound(_)) => task.info("delete", Some(&name), format!("deleted disk {disk}")),
            Err(e) => return Err(step(&name, "deleting the persistent disk")(e.into())),
        }
    }
    d.state.delete(Tree::Instances, &rec.key())?;
    d.state.flush().await?;
    Ok(())
}

async fn run_post_deploy(d: &Arc<Director>, task: &Task, deployment: &str) -> Result<(), DeployError> {
    let instances: Vec<InstanceRecord> = d.state.list(Tree::Instances, &format!("{deployment}/"))?;
    let runs =
        instances.iter().filter_map(|r| r.vm.as_ref().map(|v| (r, v.agent_id.clone()))).map(|(r, agent)| async move {
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

/// Deletes every instance of a deployment, then the deployment.
pub async fn delete_deployment(d: &Arc<Director>, task: &Task, deployment: &str) -> Result<String, DeployError> {
    let instances: Vec<InstanceRecord> = d.state.list(Tree::Instances, &format!("{deployment}/"))?;
    let n = instances.len();
    let runs = instances.into_iter().map(|rec| {
        task.info("delete", Some(&rec.name()), "deleting instance");
        delete_instance(d, task, rec, NEXT_DELETE_DEPLOYMENT)
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
