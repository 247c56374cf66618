//! The order of an update: stages of groups, each group's canary and AZ batches, and the batches
//! deletes run in.

use super::model::{Batch, DeleteBatch, GroupPlan, InstancePlan, DEFAULT_SCRIPT_TIMEOUT_MS};
use crate::records::InstanceRecord;
use bosun_types::api::InstanceAction;
use bosun_types::manifest::ResolvedUpdatePolicy;
use std::collections::BTreeMap;

/// BOSH's grouping: a serial group is a stage of its own; a run of non-serial groups is one stage.
pub fn stages(groups: &[GroupPlan]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (k, g) in groups.iter().enumerate() {
        match out.last_mut() {
            Some(stage) if !g.update.serial && !groups[stage[0]].update.serial => stage.push(k),
            _ => out.push(vec![k]),
        }
    }
    out
}

/// The order in which a group's changing instances are updated (BOSH's): the bootstrap
/// instance's AZ first, then instances without an AZ, then the other AZs by name; inside an AZ by
/// index. Canaries are the first `canaries` instances of the first AZ, one batch per
/// `max_in_flight` of them; then each AZ in turn in batches of `max_in_flight`, a percentage
/// taken of that AZ's changing instances.
pub fn compose_batches(update: &ResolvedUpdatePolicy, instances: &[InstancePlan]) -> Vec<Batch> {
    let changing: Vec<usize> = (0..instances.len()).filter(|&k| instances[k].action != InstanceAction::Keep).collect();
    if changing.is_empty() {
        return vec![];
    }
    let bootstrap_az = instances.iter().find(|i| i.bootstrap).and_then(|i| i.az.clone());
    let az_rank = |az: &Option<String>| -> (u8, Option<String>) {
        match az {
            a if *a == bootstrap_az && a.is_some() => (0, None),
            None => (1, None),
            Some(a) => (2, Some(a.clone())),
        }
    };
    let mut azs: Vec<Option<String>> = Vec::new();
    for &k in &changing {
        if !azs.contains(&instances[k].az) {
            azs.push(instances[k].az.clone());
        }
    }
    azs.sort_by_key(az_rank);
    let mut batches = Vec::new();
    let mut canaries_left = update.canaries as usize;
    for az in azs {
        let mut here: Vec<usize> = changing.iter().copied().filter(|&k| instances[k].az == az).collect();
        here.sort_by_key(|&k| (!instances[k].bootstrap, instances[k].index));
        let in_flight = update.max_in_flight.resolve(here.len());
        let canaries = canaries_left.min(here.len());
        canaries_left = 0; // canaries come from the first AZ only
        for chunk in here[..canaries].chunks(in_flight) {
            batches.push(Batch { canary: true, az: az.clone(), instances: chunk.to_vec() });
        }
        for chunk in here[canaries..].chunks(in_flight) {
            batches.push(Batch { canary: false, az: az.clone(), instances: chunk.to_vec() });
        }
    }
    batches
}

/// Deletes, group by group in name order, each group's at its `max_in_flight` (a group gone from
/// the manifest: all at once), highest index first — the reverse of how a scale-out added them.
pub(super) fn delete_batches(deletes: &[InstanceRecord], groups: &[GroupPlan]) -> Vec<DeleteBatch> {
    let mut by_group: BTreeMap<&str, Vec<&InstanceRecord>> = BTreeMap::new();
    for rec in deletes {
        by_group.entry(rec.group.as_str()).or_default().push(rec);
    }
    let mut out = Vec::new();
    for (group, mut recs) in by_group {
        let plan = groups.iter().find(|g| g.name == group);
        let in_flight = plan.map(|g| g.update.max_in_flight_for(recs.len())).unwrap_or(recs.len()).max(1);
        let script_timeout_ms = plan.map(|g| g.script_timeout_ms).unwrap_or(DEFAULT_SCRIPT_TIMEOUT_MS);
        recs.sort_by_key(|r| std::cmp::Reverse(r.index));
        for chunk in recs.chunks(in_flight) {
            out.push(DeleteBatch { instances: chunk.iter().map(|r| (*r).clone()).collect(), script_timeout_ms });
        }
    }
    out
}
