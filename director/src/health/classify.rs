//! The one place an instance's state is decided from what the director knows of it: its record,
//! what its agent last said, how long the agent has been silent, and what the CPI last answered
//! about its VM. `bosun instances`, the health monitor and `bosun cck` all ask here, so they
//! cannot disagree.

use crate::hub::AgentStatus;
use crate::records::{DesiredState, InstanceRecord};
use crate::Director;
use bosun_types::api::InstanceState;
use bosun_types::protocol::JobState;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// What is known about one instance at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub record: &'a InstanceRecord,
    /// What its agent last said, if this director has heard from it.
    pub agent: Option<&'a AgentStatus>,
    /// How long its agent has been silent (`AgentHub::silent_for`).
    pub silent_for: Duration,
    /// Silence longer than this makes an agent unresponsive (missed heartbeats × interval).
    pub unresponsive_after: Duration,
    /// The CPI's latest answer to `has_vm` for its VM, if it was asked since the agent was last
    /// heard from.
    pub vm_exists: Option<bool>,
}

/// What the director knows of an instance now: its agent's silence counted from its last message,
/// or from its VM's creation for an agent never heard from.
pub fn observe<'a>(d: &Director, record: &'a InstanceRecord, agent: Option<&'a AgentStatus>) -> Observation<'a> {
    let (silent_for, vm_exists) = match &record.vm {
        Some(vm) => {
            let now = d.clock.now();
            let age = Duration::from_secs(d.clock.unix_secs().saturating_sub(vm.created_at));
            (d.hub.silent_for(&vm.agent_id, now.checked_sub(age).unwrap_or(now)), d.sightings.get(&vm.cid))
        }
        None => (Duration::ZERO, None),
    };
    Observation { record, agent, silent_for, unresponsive_after: d.hub.unresponsive_after(), vm_exists }
}

/// The state an observation shows. A dropped connection alone is not a finding — an agent that
/// reconnects within its heartbeats is healthy (a rebooting VM, a director restart); silence past
/// the threshold is, and the CPI tells a missing VM from a hung agent.
pub fn classify(o: &Observation) -> InstanceState {
    if o.record.vm.is_none() {
        return if o.record.state == DesiredState::Detached { InstanceState::Detached } else { InstanceState::Missing };
    }
    if o.vm_exists == Some(false) {
        return InstanceState::Missing;
    }
    if o.silent_for > o.unresponsive_after {
        return InstanceState::Unresponsive;
    }
    match o.agent.and_then(|a| a.heartbeat.as_ref()).map(|h| h.job_state) {
        Some(JobState::Running) => InstanceState::Running,
        Some(JobState::Failing) => InstanceState::Failing,
        Some(JobState::Stopped) | Some(JobState::None) => InstanceState::Stopped,
        Some(JobState::Starting) | None => InstanceState::Starting,
    }
}

/// The CPI's latest answers to `has_vm`, by VM cid: written by whoever asked (the health
/// monitor, cck), read by every classification, cleared when the VM's agent is heard from again.
#[derive(Debug, Default)]
pub struct VmSightings(Mutex<HashMap<String, bool>>);

impl VmSightings {
    pub fn record(&self, vm_cid: &str, exists: bool) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(vm_cid.to_string(), exists);
    }
    pub fn get(&self, vm_cid: &str) -> Option<bool> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(vm_cid).copied()
    }
    pub fn forget(&self, vm_cid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(vm_cid);
    }
    /// Keeps only the VMs `keep` says are still of interest.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).retain(|cid, _| keep(cid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::VmRecord;
    use bosun_types::protocol::Heartbeat;
    use std::time::Instant;

    fn record(vm: bool, state: DesiredState) -> InstanceRecord {
        let mut r: InstanceRecord = serde_json::from_value(serde_json::json!({
            "deployment": "d", "group": "g", "uuid": "u", "index": 0, "az": null, "bootstrap": true,
            "networks": {}, "vm": null, "disk_cids": [], "applied": null, "generation": 0, "state": "started"
        }))
        .expect("a minimal record");
        r.state = state;
        if vm {
            r.vm = Some(VmRecord { cid: "vm-1".into(), agent_id: "a".into(), stemcell_cid: "s".into(), created_at: 0 });
        }
        r
    }

    fn agent(job_state: Option<JobState>, connected: bool) -> AgentStatus {
        let heartbeat = job_state.map(|job_state| {
            let mut h: Heartbeat = serde_json::from_value(serde_json::json!({
                "job_state": "running", "processes": [], "applied_generation": 1,
                "persistent_disks": []
            }))
            .expect("a minimal heartbeat");
            h.job_state = job_state;
            h
        });
        AgentStatus {
            connected,
            last_seen: Instant::now(),
            vm_cid: "vm-1".into(),
            stemcell: None,
            heartbeat,
            ssh: None,
        }
    }

    fn state(
        record: &InstanceRecord,
        agent: Option<&AgentStatus>,
        silent_s: u64,
        vm_exists: Option<bool>,
    ) -> InstanceState {
        classify(&Observation {
            record,
            agent,
            silent_for: Duration::from_secs(silent_s),
            unresponsive_after: Duration::from_secs(6),
            vm_exists,
        })
    }

    #[test]
    fn every_state_from_its_evidence() {
        let with_vm = record(true, DesiredState::Started);
        let running = agent(Some(JobState::Running), true);
        assert_eq!(state(&record(false, DesiredState::Started), None, 0, None), InstanceState::Missing);
        assert_eq!(state(&record(false, DesiredState::Detached), None, 0, None), InstanceState::Detached);
        assert_eq!(state(&with_vm, Some(&running), 0, None), InstanceState::Running);
        assert_eq!(state(&with_vm, Some(&running), 0, Some(false)), InstanceState::Missing, "the CPI says gone");
        assert_eq!(state(&with_vm, Some(&running), 7, Some(true)), InstanceState::Unresponsive, "silent, VM there");
        assert_eq!(state(&with_vm, Some(&running), 7, None), InstanceState::Unresponsive);
        assert_eq!(state(&with_vm, Some(&agent(Some(JobState::Failing), true)), 0, None), InstanceState::Failing);
        assert_eq!(state(&with_vm, Some(&agent(Some(JobState::Stopped), true)), 0, None), InstanceState::Stopped);
        assert_eq!(state(&with_vm, Some(&agent(None, true)), 0, None), InstanceState::Starting, "no heartbeat yet");
        assert_eq!(state(&with_vm, None, 1, None), InstanceState::Starting, "not heard from, not yet silent");
    }

    #[test]
    fn a_dropped_connection_alone_is_not_a_finding() {
        let with_vm = record(true, DesiredState::Started);
        let dropped = agent(Some(JobState::Running), false);
        assert_eq!(state(&with_vm, Some(&dropped), 1, None), InstanceState::Running);
        assert_eq!(state(&with_vm, Some(&dropped), 1, Some(false)), InstanceState::Missing);
    }
}
