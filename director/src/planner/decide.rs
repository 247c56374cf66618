//! What happens to an instance: why its VM must be replaced, and whether it is created, kept,
//! updated, recreated, restarted, stopped, detached or started — with its disk's fate.

use super::model::{digest_json, DiskPlan, PlanningInput, Requests, Slot};
use crate::records::{AppliedState, DesiredState};
use bosun_types::api::InstanceAction;
use bosun_types::manifest::InstanceGroup;

use super::addresses::show_ip;

use super::shape::{vm_cloud_properties, vm_env};

/// Why an existing instance's VM must be replaced: stemcell, vm_type or cloud properties, env,
/// addresses, or the operator asked. Empty when it need not be (or it has no VM).
pub(super) fn recreate_reasons(input: &PlanningInput<'_>, g: &InstanceGroup, slot: &Slot) -> Vec<String> {
    let Some(existing) = slot.existing.as_ref().filter(|e| e.vm.is_some()) else { return vec![] };
    let was = existing.applied.clone().unwrap_or_default();
    let mut reasons = Vec::new();
    if input.requests.recreate.matches(&g.name, &slot.uuid, slot.index) {
        reasons.push("recreate requested".to_string());
    }
    let stemcell = input.stemcells.get(&g.stemcell).expect("validated");
    if was.stemcell != (stemcell.name.clone(), stemcell.version.clone()) {
        reasons
            .push(format!("stemcell {}/{} → {}/{}", was.stemcell.0, was.stemcell.1, stemcell.name, stemcell.version));
    }
    if was.vm_type != g.vm_type {
        reasons.push(format!("vm_type `{}` → `{}`", was.vm_type, g.vm_type));
    } else if was.cloud_properties_digest != digest_json(&vm_cloud_properties(input.cloud_config, g, &slot.az)) {
        reasons.push("cloud properties changed".into());
    }
    if was.env_digest != digest_json(&vm_env(g)) {
        reasons.push("env changed".into());
    }
    for (net, n) in &slot.networks {
        match existing.networks.get(net) {
            Some(old) if old.ip == n.ip => {}
            Some(old) => reasons.push(format!("network `{net}`: {} → {}", show_ip(&old.ip), show_ip(&n.ip))),
            None => reasons.push(format!("network `{net}` added ({})", show_ip(&n.ip))),
        }
    }
    for net in existing.networks.keys() {
        if !slot.networks.contains_key(net) {
            reasons.push(format!("network `{net}` removed"));
        }
    }
    reasons
}

pub(super) struct Decision {
    pub(super) action: InstanceAction,
    pub(super) reasons: Vec<String>,
    pub(super) disk: DiskPlan,
    pub(super) state: DesiredState,
}

/// What must happen to an instance, and why.
/// `new_state`: what a new instance starts as (an errand group's wait without VMs, `Detached`).
pub(super) fn decide(
    slot: &Slot,
    desired: &AppliedState,
    bootstrap: bool,
    group: &str,
    new_state: DesiredState,
    req: &Requests,
) -> Decision {
    let current_state = slot.existing.as_ref().map(|e| e.state).unwrap_or(new_state);
    let state = match &req.state {
        Some((sel, st)) if sel.matches(group, &slot.uuid, slot.index) => *st,
        _ => current_state,
    };
    let wants_disk = desired.persistent_disk_mb > 0;
    let decision = |action, reasons, disk| Decision { action, reasons, disk, state };
    let Some(existing) = &slot.existing else {
        if state == DesiredState::Detached {
            // Recorded with its address; its VM is made when it is started (an errand's run).
            return decision(
                InstanceAction::Keep,
                vec!["new instance, without a VM until it runs".into()],
                DiskPlan::None,
            );
        }
        let disk = if wants_disk { DiskPlan::Create } else { DiskPlan::None };
        return decision(InstanceAction::Create, vec!["new instance".into()], disk);
    };
    let had_disk = !existing.disk_cids.is_empty();
    let was = existing.applied.clone().unwrap_or_default();
    let disk = match (had_disk, wants_disk) {
        (false, false) => DiskPlan::None,
        (false, true) => DiskPlan::Create,
        (true, false) => DiskPlan::Orphan,
        (true, true) => {
            // Records from before disk types were tracked have no digest: only size counts then.
            let type_changed =
                !was.persistent_disk_digest.is_empty() && was.persistent_disk_digest != desired.persistent_disk_digest;
            if was.persistent_disk_mb != desired.persistent_disk_mb || type_changed {
                DiskPlan::Migrate { from_mb: was.persistent_disk_mb, to_mb: desired.persistent_disk_mb, type_changed }
            } else {
                DiskPlan::Keep
            }
        }
    };
    if existing.vm.is_none() {
        if state == DesiredState::Detached {
            // Changes wait for `bosun start`.
            let disk = if had_disk { DiskPlan::Keep } else { DiskPlan::None };
            return decision(InstanceAction::Keep, vec![], disk);
        }
        let why = if current_state == DesiredState::Detached {
            "start requested (the instance was stopped with --hard)"
        } else {
            "the instance has no VM"
        };
        return decision(InstanceAction::Create, vec![why.into()], disk);
    }
    if state == DesiredState::Detached {
        let disk = if had_disk { DiskPlan::Keep } else { DiskPlan::None };
        return decision(
            InstanceAction::Detach,
            vec!["stop --hard requested: the VM goes, the disk stays".into()],
            disk,
        );
    }
    let mut update_reasons = Vec::new();
    if existing.applied.is_none() {
        update_reasons.push("jobs were never applied (an earlier deploy did not finish)".into());
    } else if existing.dirty {
        update_reasons.push("an earlier update of this instance did not finish".into());
    }
    match &disk {
        DiskPlan::Create => update_reasons.push(format!("persistent disk 0 → {} MiB", desired.persistent_disk_mb)),
        DiskPlan::Orphan => {
            update_reasons.push(format!("persistent disk {} MiB → none (the disk is orphaned)", was.persistent_disk_mb))
        }
        DiskPlan::Migrate { from_mb, to_mb, type_changed } => update_reasons.push(format!(
            "persistent disk {from_mb} → {to_mb} MiB{}: migrate",
            if *type_changed { ", disk type changed" } else { "" }
        )),
        DiskPlan::None | DiskPlan::Keep => {}
    }
    for j in &desired.jobs {
        match was.jobs.iter().find(|w| w.name == j.name) {
            None => update_reasons.push(format!("job `{}` added", j.name)),
            Some(w) => {
                if w.release != j.release {
                    update_reasons.push(format!("job `{}`: release {} → {}", j.name, w.release, j.release));
                } else if w.fingerprint != j.fingerprint {
                    update_reasons.push(format!("job `{}`: templates changed", j.name));
                }
                for (path, d) in &j.properties {
                    if w.properties.get(path).map(String::as_str).unwrap_or("") != d.as_str() {
                        update_reasons.push(format!("job `{}`: property `{path}` changed", j.name));
                    }
                }
            }
        }
    }
    for w in &was.jobs {
        if !desired.jobs.iter().any(|j| j.name == w.name) {
            update_reasons.push(format!("job `{}` removed", w.name));
        }
    }
    for (name, fp) in &desired.packages {
        match was.packages.get(name) {
            None => update_reasons.push(format!("package `{name}` added")),
            Some(old) if old != fp => update_reasons.push(format!("package `{name}` changed")),
            _ => {}
        }
    }
    if update_reasons.is_empty() && was.configuration_hash != desired.configuration_hash {
        update_reasons.push("rendered configuration changed (links, addresses or instance spec)".into());
    }
    if existing.bootstrap != bootstrap {
        update_reasons.push(format!("bootstrap {} → {}", existing.bootstrap, bootstrap));
    }
    if !slot.recreate.is_empty() {
        let mut reasons = slot.recreate.clone();
        reasons.extend(update_reasons);
        return decision(InstanceAction::Recreate, reasons, disk);
    }
    if !update_reasons.is_empty() {
        return decision(InstanceAction::Update, update_reasons, disk);
    }
    match (current_state, state) {
        (DesiredState::Started, DesiredState::Stopped) => {
            return decision(InstanceAction::Stop, vec!["stop requested".into()], disk)
        }
        (DesiredState::Stopped, DesiredState::Started) => {
            return decision(InstanceAction::Start, vec!["start requested".into()], disk)
        }
        _ => {}
    }
    if state == DesiredState::Started && req.restart.matches(group, &slot.uuid, slot.index) {
        return decision(InstanceAction::Restart, vec!["restart requested".into()], disk);
    }
    decision(InstanceAction::Keep, vec![], disk)
}
