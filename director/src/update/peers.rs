//! Peers told when membership changes: a job with a `bin/peer-changed` script runs it when an
//! instance of a group whose link it consumes is lost (its VM found gone), recreated, added or
//! removed, with the change in its environment. Stateful peers act on it at once instead of
//! waiting out their own failure detection (Kubernetes' masters force-delete a dead node's pods).
//! Telling is best-effort: a failing hook is a warning in the task, never a failed update.

use super::lifecycle::run_script;
use crate::planner::{InstancePlan, Plan};
use crate::records::InstanceRecord;
use crate::store::tables;
use crate::tasks::Task;
use crate::Director;
use bosun_types::protocol::LifecycleScript;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    Lost,
    Recreated,
    Added,
    Removed,
}

impl PeerEvent {
    fn as_str(self) -> &'static str {
        match self {
            PeerEvent::Lost => "lost",
            PeerEvent::Recreated => "recreated",
            PeerEvent::Added => "added",
            PeerEvent::Removed => "removed",
        }
    }
}

/// The instance whose membership changed.
#[derive(Debug, Clone)]
pub struct Peer {
    pub group: String,
    pub uuid: String,
    pub index: u32,
    pub address: String,
}

impl Peer {
    pub fn of_record(r: &InstanceRecord) -> Self {
        Peer { group: r.group.clone(), uuid: r.uuid.clone(), index: r.index, address: first_ip(&r.networks) }
    }

    pub fn of_plan(i: &InstancePlan) -> Self {
        Peer { group: i.group.clone(), uuid: i.uuid.clone(), index: i.index, address: first_ip(&i.networks) }
    }
}

fn first_ip(networks: &BTreeMap<String, bosun_types::protocol::NetworkSettings>) -> String {
    networks.values().next().map(|n| n.ip.clone()).unwrap_or_default()
}

/// Tells every instance of the plan consuming a link from the peer's group (other than the peer
/// itself) about `event`, at once.
pub async fn tell(d: &Arc<Director>, task: &Task, plan: &Plan, peer: &Peer, event: PeerEvent) {
    let consumers: Vec<&InstancePlan> = plan
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .filter(|i| i.uuid != peer.uuid && i.jobs.iter().any(|j| j.peer_groups.contains(&peer.group)))
        .collect();
    if consumers.is_empty() {
        return;
    }
    let env = BTreeMap::from([
        ("BOSUN_PEER_EVENT".to_string(), event.as_str().to_string()),
        ("BOSUN_PEER_GROUP".to_string(), peer.group.clone()),
        ("BOSUN_PEER_ID".to_string(), peer.uuid.clone()),
        ("BOSUN_PEER_INDEX".to_string(), peer.index.to_string()),
        ("BOSUN_PEER_ADDRESS".to_string(), peer.address.clone()),
    ]);
    let subject = format!("{}/{}", peer.group, peer.uuid);
    let runs = consumers.into_iter().map(|c| {
        let env = env.clone();
        let subject = subject.clone();
        async move {
            let name = c.name();
            let key = crate::records::instance_key(&plan.deployment, &c.uuid);
            let agent = match d.state.get::<InstanceRecord>(tables::INSTANCES, &key).await {
                Ok(Some(r)) => r.vm.map(|v| v.agent_id),
                _ => None,
            };
            let Some(agent) = agent else { return };
            match run_script(d, &agent, LifecycleScript::PeerChanged, vec![], env, HOOK_TIMEOUT).await {
                Ok(results) => {
                    for r in results {
                        let said = r.output_tail.trim().lines().last().unwrap_or("").to_string();
                        task.info(
                            "peers",
                            Some(&name),
                            format!("job `{}` told {subject} {}: {said}", r.job, event.as_str()),
                        )
                        .await;
                    }
                }
                Err(e) => {
                    task.warn("peers", Some(&name), format!("telling it {subject} {}: {e}", event.as_str())).await
                }
            }
        }
    });
    futures::future::join_all(runs).await;
}
