//! The CPI conformance suite: one set of checks every CPI must pass — stemcell, VM and disk life
//! cycles, BOSH's tolerance rules (the typed errors the director relies on), tags, and behaviour
//! after a director restart (a fresh CPI object over the same cloud sees the same VMs and disks).
//!
//! Each check is a function a CPI's own test file calls with a factory that builds a CPI object
//! over the same cloud each time, and the environment (a stemcell image and a network) that
//! CPI needs.

use crate::{Cpi, CpiError, CreateVmRequest};
use bosun_types::protocol::NetworkSettings;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub type CpiFactory = Arc<dyn Fn() -> Arc<dyn Cpi> + Send + Sync>;

/// What a CPI needs to create real VMs in the checks.
#[derive(Clone)]
pub struct ConformanceEnv {
    /// A stemcell image in the CPI's format.
    pub stemcell_image: PathBuf,
    pub stemcell_cloud_properties: serde_json::Value,
    pub vm_cloud_properties: serde_json::Value,
    /// Two distinct addresses the checks may give VMs.
    pub networks: [BTreeMap<String, NetworkSettings>; 2],
}

pub type CheckResult = Result<(), String>;

fn ensure(cond: bool, what: impl Into<String>) -> CheckResult {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn ctx(what: &str) -> impl FnOnce(CpiError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn request(env: &ConformanceEnv, stemcell_cid: &str, which: usize, tags: &[(&str, &str)]) -> CreateVmRequest {
    let tags: serde_json::Map<String, serde_json::Value> =
        tags.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    CreateVmRequest {
        agent_id: format!("conformance-agent-{which}"),
        stemcell_cid: stemcell_cid.to_string(),
        cloud_properties: env.vm_cloud_properties.clone(),
        networks: env.networks[which].clone(),
        disk_cids: vec![],
        env: serde_json::json!({
            "bosun": {
                // Nothing listens there: the agent keeps retrying, which is all these checks need.
                "director": {
                    "address": "127.0.0.1:9",
                    "server_name": "conformance",
                    "ca_cert": "",
                    "client_cert": "",
                    "client_key": "",
                },
                "tags": tags,
            }
        }),
    }
}

pub async fn info(cpi: &dyn Cpi) -> CheckResult {
    let info = cpi.info().await.map_err(ctx("info"))?;
    ensure(info.api_version >= 2, format!("info: api_version {} < 2", info.api_version))?;
    ensure(!info.stemcell_formats.is_empty(), "info: no stemcell_formats")
}

pub async fn stemcell_lifecycle(cpi: &dyn Cpi, env: &ConformanceEnv) -> CheckResult {
    let cid = cpi
        .create_stemcell(&env.stemcell_image, &env.stemcell_cloud_properties)
        .await
        .map_err(ctx("create_stemcell"))?;
    cpi.delete_stemcell(&cid).await.map_err(ctx("delete_stemcell"))?;
    match cpi.delete_stemcell(&cid).await {
        Ok(()) | Err(CpiError::StemcellNotFound(_)) => Ok(()),
        Err(e) => Err(format!("delete_stemcell of a deleted stemcell: want Ok or StemcellNotFound, got {e:?}")),
    }
}

pub async fn vm_lifecycle(cpi: &dyn Cpi, env: &ConformanceEnv) -> CheckResult {
    let sc = cpi
        .create_stemcell(&env.stemcell_image, &env.stemcell_cloud_properties)
        .await
        .map_err(ctx("create_stemcell"))?;
    let req = request(
        env,
        &sc,
        0,
        &[("director", "conformance"), ("deployment", "d"), ("instance_group", "g"), ("index", "0")],
    );
    let (vm, networks) = cpi.create_vm(&req).await.map_err(ctx("create_vm"))?;
    let result = async {
        ensure(
            networks.values().any(|n| env.networks[0].values().any(|m| m.ip == n.ip)),
            "create_vm: returned networks lack the requested IP",
        )?;
        ensure(cpi.has_vm(&vm).await.map_err(ctx("has_vm"))?, "has_vm: false for a VM just created")?;
        let mut meta = BTreeMap::new();
        meta.insert("name".to_string(), "g/0".to_string());
        match cpi.set_vm_metadata(&vm, &meta).await {
            Ok(()) | Err(CpiError::NotImplemented(_)) => {}
            Err(e) => return Err(format!("set_vm_metadata: {e}")),
        }
        match cpi.list_vms().await {
            Ok(vms) => {
                let l = vms.iter().find(|l| l.vm_cid == vm).ok_or("list_vms: the new VM is missing")?;
                ensure(
                    l.metadata.get("deployment").map(String::as_str) == Some("d"),
                    "list_vms: creation tags missing",
                )?;
            }
            Err(CpiError::NotImplemented(_)) => {}
            Err(e) => return Err(format!("list_vms: {e}")),
        }
        Ok(())
    }
    .await;
    cpi.delete_vm(&vm).await.map_err(ctx("delete_vm"))?;
    result?;
    ensure(!cpi.has_vm(&vm).await.map_err(ctx("has_vm after delete"))?, "has_vm: true after delete_vm")?;
    match cpi.delete_vm(&vm).await {
        Err(CpiError::VmNotFound(_)) => {}
        other => {
            return Err(format!(
                "delete_vm of a deleted VM: want VmNotFound (the director tolerates it), got {other:?}"
            ))
        }
    }
    ensure(
        !cpi.has_vm("vm-doesnotexist").await.map_err(ctx("has_vm of an unknown VM"))?,
        "has_vm: true for an unknown VM",
    )?;
    cpi.delete_stemcell(&sc).await.map_err(ctx("delete_stemcell"))
}

pub async fn create_vm_with_unknown_stemcell_fails(cpi: &dyn Cpi, env: &ConformanceEnv) -> CheckResult {
    match cpi.create_vm(&request(env, "sc-doesnotexist", 0, &[])).await {
        Err(CpiError::StemcellNotFound(_)) | Err(CpiError::VmCreationFailed { .. }) => Ok(()),
        other => {
            Err(format!("create_vm with an unknown stemcell: want StemcellNotFound or VmCreationFailed, got {other:?}"))
        }
    }
}

pub async fn disk_lifecycle(cpi: &dyn Cpi, env: &ConformanceEnv) -> CheckResult {
    let sc = cpi
        .create_stemcell(&env.stemcell_image, &env.stemcell_cloud_properties)
        .await
        .map_err(ctx("create_stemcell"))?;
    let (vm, _) = cpi.create_vm(&request(env, &sc, 0, &[])).await.map_err(ctx("create_vm"))?;
    let disk = cpi.create_disk(64, &serde_json::json!({}), Some(&vm)).await.map_err(ctx("create_disk"))?;
    let result = async {
        ensure(cpi.has_disk(&disk).await.map_err(ctx("has_disk"))?, "has_disk: false for a disk just created")?;
        let hint = cpi.attach_disk(&vm, &disk).await.map_err(ctx("attach_disk"))?;
        ensure(
            !hint.is_null() && hint != serde_json::json!({}) && hint != serde_json::json!(""),
            "attach_disk: empty disk hint (API v2 needs one)",
        )?;
        ensure(
            cpi.get_disks(&vm).await.map_err(ctx("get_disks"))?.contains(&disk),
            "get_disks: attached disk missing",
        )?;
        match cpi.attach_disk(&vm, "disk-doesnotexist").await {
            Err(CpiError::DiskNotFound(_)) => {}
            other => return Err(format!("attach_disk of an unknown disk: want DiskNotFound, got {other:?}")),
        }
        match cpi.attach_disk("vm-doesnotexist", &disk).await {
            Err(CpiError::VmNotFound(_)) => {}
            other => return Err(format!("attach_disk to an unknown VM: want VmNotFound, got {other:?}")),
        }
        cpi.detach_disk(&vm, &disk).await.map_err(ctx("detach_disk"))?;
        match cpi.detach_disk(&vm, &disk).await {
            Err(CpiError::DiskNotAttached { .. }) => {}
            other => {
                return Err(format!(
                    "detach_disk of a detached disk: want DiskNotAttached (the director tolerates it), got {other:?}"
                ))
            }
        }
        ensure(
            !cpi.get_disks(&vm).await.map_err(ctx("get_disks"))?.contains(&disk),
            "get_disks: detached disk still listed",
        )?;
        // A disk outlives the VM it was attached to.
        cpi.attach_disk(&vm, &disk).await.map_err(ctx("attach_disk again"))?;
        Ok(())
    }
    .await;
    cpi.delete_vm(&vm).await.map_err(ctx("delete_vm"))?;
    result?;
    ensure(
        cpi.has_disk(&disk).await.map_err(ctx("has_disk"))?,
        "delete_vm deleted the attached disk; disks must survive their VM",
    )?;
    cpi.delete_disk(&disk).await.map_err(ctx("delete_disk"))?;
    ensure(!cpi.has_disk(&disk).await.map_err(ctx("has_disk"))?, "has_disk: true after delete_disk")?;
    match cpi.delete_disk(&disk).await {
        Err(CpiError::DiskNotFound(_)) => {}
        other => {
            return Err(format!(
                "delete_disk of a deleted disk: want DiskNotFound (the director tolerates it), got {other:?}"
            ))
        }
    }
    cpi.delete_stemcell(&sc).await.map_err(ctx("delete_stemcell"))
}

/// A director that restarts builds a new CPI object; it must see what the old one created.
pub async fn survives_director_restart(make: &CpiFactory, env: &ConformanceEnv) -> CheckResult {
    let before = make();
    let sc = before
        .create_stemcell(&env.stemcell_image, &env.stemcell_cloud_properties)
        .await
        .map_err(ctx("create_stemcell"))?;
    let (vm, _) =
        before.create_vm(&request(env, &sc, 1, &[("deployment", "restart")])).await.map_err(ctx("create_vm"))?;
    let disk = before.create_disk(32, &serde_json::json!({}), None).await.map_err(ctx("create_disk"))?;
    before.attach_disk(&vm, &disk).await.map_err(ctx("attach_disk"))?;
    drop(before);
    let after = make();
    let result = async {
        ensure(after.has_vm(&vm).await.map_err(ctx("has_vm after restart"))?, "has_vm: VM lost across a restart")?;
        ensure(
            after.has_disk(&disk).await.map_err(ctx("has_disk after restart"))?,
            "has_disk: disk lost across a restart",
        )?;
        match after.get_disks(&vm).await {
            Ok(d) => ensure(d.contains(&disk), "get_disks: attachment lost across a restart")?,
            Err(CpiError::NotImplemented(_)) => {}
            Err(e) => return Err(format!("get_disks: {e}")),
        }
        Ok(())
    }
    .await;
    after.delete_vm(&vm).await.map_err(ctx("delete_vm"))?;
    after.delete_disk(&disk).await.map_err(ctx("delete_disk"))?;
    after.delete_stemcell(&sc).await.map_err(ctx("delete_stemcell"))?;
    result
}
