//! VM operations: tags, the create_vm call with its retries (the CPI says whether a failure may be
//! retried), the create-swap-delete swap, and deletion. Each outcome is recorded as it happens.

use super::lifecycle::{stop_jobs, StopHow};
use super::step::{instance_event, StepError, COMMAND_TIMEOUT};
use crate::planner::InstancePlan;
use crate::records::{AgentRecord, InstanceRecord, VmRecord};
use crate::store::tables;
use crate::tasks::Task;
use crate::Director;
use bosun_cpi::{tags, CpiError, CreateVmRequest};
use bosun_types::pki::LeafUsage;
use bosun_types::protocol::AgentCommand;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) const MAX_VM_CREATE_TRIES: u32 = 5;

/// The tags every VM of a deployment carries: whose it is, and when it was made.
pub(crate) fn base_tags(d: &Director, deployment: &str) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    t.insert(tags::DIRECTOR.into(), d.config.name.clone());
    t.insert(tags::DIRECTOR_UUID.into(), d.uuid.clone());
    t.insert(tags::DEPLOYMENT.into(), deployment.to_string());
    t.insert(tags::CREATED_AT.into(), d.clock.unix_secs().to_string());
    t
}

pub(crate) fn vm_tags(d: &Director, deployment: &str, rec: &InstanceRecord) -> BTreeMap<String, String> {
    let mut t = base_tags(d, deployment);
    t.insert(tags::INSTANCE_GROUP.into(), rec.group.clone());
    t.insert(tags::JOB.into(), rec.group.clone());
    t.insert(tags::ID.into(), rec.uuid.clone());
    t.insert(tags::NAME.into(), rec.name());
    t.insert(tags::INDEX.into(), rec.index.to_string());
    t
}

/// A new VM's agent: its id and the certificate issued for it, recorded (and flushed) before
/// the VM exists, so an agent can only ever connect as the identity the director made for it.
pub(crate) struct AgentIdentity {
    pub agent_id: String,
    cert_pem: String,
    key_pem: String,
}

/// Mints a fresh agent identity for a VM of `owner` (an instance uuid, or what a compilation VM
/// works for). Never reused: a new VM gets a new identity.
pub(crate) async fn new_agent(d: &Director, deployment: &str, owner: &str) -> Result<AgentIdentity, StepError> {
    let agent_id = format!("agent-{}", uuid::Uuid::new_v4());
    let cert =
        d.ca.issue(&agent_id, std::slice::from_ref(&agent_id), LeafUsage { server: false, client: true }, 3650, false)
            .map_err(|e| StepError::Failed(format!("issuing the agent's certificate: {e}")))?;
    d.state
        .put(
            tables::AGENTS,
            &agent_id,
            &AgentRecord {
                agent_id: agent_id.clone(),
                cert_digest: bosun_types::digest::sha256_digest(&cert.cert_der),
                deployment: deployment.to_string(),
                instance: owner.to_string(),
                created_at: d.clock.unix_secs(),
                ssh_host_key: None,
            },
        )
        .await?;
    d.state.flush().await?;
    Ok(AgentIdentity { agent_id, cert_pem: cert.cert_pem, key_pem: cert.key_pem })
}

/// The VM's `env` as the CPI gets it: the manifest's, plus how its agent reaches the director
/// (with its credentials) and the tags it carries from creation.
pub(crate) fn agent_env(
    d: &Director,
    env: &serde_json::Value,
    identity: &AgentIdentity,
    tags: &BTreeMap<String, String>,
) -> serde_json::Value {
    let mut env = if env.is_object() { env.clone() } else { serde_json::json!({}) };
    env["bosun"] = serde_json::json!({
        "director": {
            "address": d.agent_address,
            "server_name": crate::DIRECTOR_SERVER_NAME,
            "ca_cert": d.ca.cert_pem(),
            "client_cert": identity.cert_pem,
            "client_key": identity.key_pem,
        },
        "tags": tags,
    });
    env
}

/// `create_vm`, tried again (up to [`MAX_VM_CREATE_TRIES`] in all) while the CPI says the failure
/// may be retried.
pub(crate) async fn create_vm_with_retries(
    d: &Director,
    task: &Task,
    what: &str,
    request: &CreateVmRequest,
) -> Result<(String, BTreeMap<String, bosun_types::protocol::NetworkSettings>), StepError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match d.cpi.create_vm(request).await {
            Ok(x) => return Ok(x),
            Err(CpiError::VmCreationFailed { message, ok_to_retry: true }) if tries < MAX_VM_CREATE_TRIES => {
                task.warn(
                    "create",
                    Some(what),
                    format!("create_vm failed (try {tries} of {MAX_VM_CREATE_TRIES}): {message}"),
                )
                .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates a VM for the instance: an agent identity and certificate first (recorded), then the
/// CPI call, then the VM recorded at once. With `replacement`, the VM is made on the plan's
/// (new) addresses and recorded as the instance's replacement, not yet its VM.
pub(crate) async fn create_vm_for(
    d: &Arc<Director>,
    task: &Task,
    rec: &mut InstanceRecord,
    i: &InstancePlan,
    replacement: bool,
) -> Result<(), StepError> {
    let identity = new_agent(d, &rec.deployment, &rec.uuid).await?;
    if replacement {
        rec.replacement_networks = i.networks.clone();
        d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
        d.state.flush().await?;
    }
    let tags = vm_tags(d, &rec.deployment, rec);
    let request = CreateVmRequest {
        agent_id: identity.agent_id.clone(),
        stemcell_cid: i.stemcell.cid.clone(),
        cloud_properties: i.cloud_properties.clone(),
        networks: if replacement { i.networks.clone() } else { rec.networks.clone() },
        disk_cids: rec.disk_cids.clone(),
        env: agent_env(d, &i.env, &identity, &tags),
    };
    let (vm_cid, assigned) = create_vm_with_retries(d, task, &rec.name(), &request).await?;
    let agent_id = identity.agent_id;
    crate::fault::crash_point(crate::fault::CrashPoint::AfterCreateVm);
    let vm = VmRecord {
        cid: vm_cid.clone(),
        agent_id,
        stemcell_cid: i.stemcell.cid.clone(),
        created_at: d.clock.unix_secs(),
    };
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
    d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
    d.state.flush().await?;
    if !missing.is_empty() {
        return Err(StepError::Failed(format!(
            "the CPI made VM {vm_cid} but gave it no address on dynamic network(s) {}",
            missing.join(", ")
        )));
    }
    match d.cpi.set_vm_metadata(&vm_cid, &tags).await {
        Ok(()) | Err(CpiError::NotImplemented(_)) => {}
        Err(e) => task.warn("create", Some(&rec.name()), format!("set_vm_metadata failed: {e}")).await,
    }
    let what = format!("created {}VM {vm_cid}", if replacement { "replacement " } else { "" });
    task.info("create", Some(&rec.name()), &what).await;
    instance_event(task, rec, "create_vm", what).await;
    Ok(())
}

/// create-swap-delete: the replacement VM is created on its own addresses and its agent awaited
/// while the old VM still runs; then the old VM's jobs stop, its disks are detached, it is
/// deleted, and the replacement becomes the instance's VM. No two VMs ever hold one address.
pub(crate) async fn swap_vm(
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
    d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
    d.state.flush().await?;
    task.info("update", Some(&rec.name()), "the replacement VM took the old one's place").await;
    Ok(())
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
                task.warn("delete", Some(&rec.name()), format!("unmounting disk {disk} failed: {e}")).await;
            }
        }
    }
    match d.cpi.delete_vm(&vm.cid).await {
        Ok(()) => task.info("delete", Some(&rec.name()), format!("deleted VM {}", vm.cid)).await,
        Err(CpiError::VmNotFound(_)) => {
            task.warn("delete", Some(&rec.name()), format!("VM {} was already gone", vm.cid)).await
        }
        Err(e) => return Err(e.into()),
    }
    crate::fault::crash_point(crate::fault::CrashPoint::AfterDeleteVm);
    instance_event(task, rec, "delete_vm", format!("deleted VM {}", vm.cid)).await;
    d.hub.forget(&vm.agent_id);
    d.state.delete(tables::AGENTS, &vm.agent_id).await?;
    rec.vm = None;
    d.state.put(tables::INSTANCES, &rec.key(), rec).await?;
    d.state.flush().await?;
    Ok(())
}
