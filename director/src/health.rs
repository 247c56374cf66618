//! The health monitor and resurrector. Every quarter heartbeat interval it looks at every instance
//! that should be running: an agent silent for `missed_heartbeats` intervals is unhealthy, and
//! `has_vm` tells a missing VM from a hung agent (an agent whose connection drops is asked about
//! at once, so a VM that died is noticed in well under a heartbeat); a process that keeps failing makes the instance
//! `failing` (reported, never a reason to recreate). Unhealthy instances are resurrected through
//! the same planner and executor as a deploy — same uuid, index, addresses and disk; the old VM is
//! deleted first — unless resurrection is off for them or their deployment is in meltdown.
//! Resurrection takes the deployment's lock like any task; while another task holds it, the
//! instances wait their turn.

use crate::events::EventSubject;
use crate::records::{now_secs, DesiredState, InstanceRecord};
use crate::store::{tables, StoreError, Table, Tree};
use crate::tasks::TaskError;
use crate::Director;
use bosun_types::api::InstanceSelector;
use bosun_types::protocol::JobState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const CAUSE: &str = "health monitor";

/// BOSH's meltdown protection: when at least `min_instances` and at least `percent` of a
/// deployment's instances turned unhealthy within `window`, stop resurrecting it.
#[derive(Debug, Clone, Copy)]
pub struct MeltdownConfig {
    pub min_instances: usize,
    pub percent: u32,
    pub window: Duration,
}

impl Default for MeltdownConfig {
    fn default() -> Self {
        MeltdownConfig { min_instances: 5, percent: 20, window: Duration::from_secs(600) }
    }
}

/// Whether resurrection is on: director-wide, per deployment, and by rules over deployments and
/// Where the switches are kept: one record in the `meta` tree.
const RESURRECTION: Table<ResurrectionConfig> = Table::new(Tree::Meta);

/// instance groups (the last matching rule wins).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ResurrectionConfig {
    /// Director-wide switch (`bosun update-resurrection on|off`); on when unset.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Per deployment (`bosun -d NAME update-resurrection on|off`).
    #[serde(default)]
    pub deployments: BTreeMap<String, bool>,
    /// `bosun update-resurrection-config FILE`.
    #[serde(default)]
    pub rules: Vec<ResurrectionRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResurrectionRule {
    pub enabled: bool,
    #[serde(default)]
    pub include: RuleFilter,
    #[serde(default)]
    pub exclude: RuleFilter,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleFilter {
    #[serde(default)]
    pub deployments: Vec<String>,
    #[serde(default)]
    pub instance_groups: Vec<String>,
}

impl RuleFilter {
    fn is_empty(&self) -> bool {
        self.deployments.is_empty() && self.instance_groups.is_empty()
    }
    fn matches(&self, deployment: &str, group: &str) -> bool {
        (self.deployments.is_empty() || self.deployments.iter().any(|d| d == deployment))
            && (self.instance_groups.is_empty() || self.instance_groups.iter().any(|g| g == group))
    }
}

impl ResurrectionConfig {
    pub fn allows(&self, deployment: &str, group: &str) -> bool {
        let mut on = self.enabled.unwrap_or(true);
        if let Some(d) = self.deployments.get(deployment) {
            on = *d;
        }
        for r in &self.rules {
            let included = r.include.matches(deployment, group);
            let excluded = !r.exclude.is_empty() && r.exclude.matches(deployment, group);
            if included && !excluded {
                on = r.enabled;
            }
        }
        on
    }

    pub async fn load(d: &Director) -> Result<Self, StoreError> {
        Ok(d.state.get(RESURRECTION, "resurrection").await?.unwrap_or_default())
    }

    pub async fn save(&self, d: &Director) -> Result<(), StoreError> {
        d.state.put(RESURRECTION, "resurrection", self).await
    }
}

/// What the monitor last concluded about an instance's current VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Healthy,
    Failing,
    /// The agent is silent but its VM exists.
    Unresponsive,
    /// The VM is gone.
    Missing,
}

impl Health {
    fn unhealthy(self) -> bool {
        matches!(self, Health::Unresponsive | Health::Missing)
    }
}

struct Tracked {
    health: Health,
    since: Instant,
    /// Why it is not resurrected, once said (meltdown, switched off), so it is said once.
    held_back: Option<&'static str>,
}

/// Is a deployment in meltdown, given when its instances turned unhealthy?
pub fn in_meltdown(config: &MeltdownConfig, turned_unhealthy: usize, instances: usize) -> bool {
    instances > 0
        && turned_unhealthy >= config.min_instances
        && turned_unhealthy * 100 >= config.percent as usize * instances
}

#[derive(Default)]
struct Monitor {
    /// Per instance key and VM cid: a new VM starts with a clean slate.
    tracked: BTreeMap<(String, String), Tracked>,
    /// Per deployment: when which instance turned unhealthy (the meltdown window).
    turned: BTreeMap<String, VecDeque<(Instant, String)>>,
    meltdown: BTreeSet<String>,
    /// VMs whose agent's connection dropped and that were asked about already.
    probed: BTreeSet<(String, String)>,
}

pub async fn monitor(d: Arc<Director>) {
    let tick = (d.config.heartbeat_interval / 4).max(Duration::from_millis(100));
    let mut m = Monitor::default();
    loop {
        tokio::time::sleep(tick).await;
        if let Err(e) = m.pass(&d).await {
            tracing::warn!(error = %e, "health monitor pass failed");
        }
    }
}

impl Monitor {
    async fn pass(&mut self, d: &Arc<Director>) -> Result<(), StoreError> {
        let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, "").await?;
        // An instance a running task is updating (dirty, its deployment locked) is the updater's:
        // its agent may restart, its VM be replaced.
        let locked: BTreeSet<String> =
            d.state.kv().scan_prefix(Tree::Locks, "").await?.into_iter().map(|(k, _)| k).collect();
        let watched: Vec<&InstanceRecord> = instances
            .iter()
            .filter(|r| r.vm.is_some() && r.state == DesiredState::Started)
            .filter(|r| !(r.dirty && locked.contains(&r.deployment)))
            .collect();
        let keys: BTreeSet<(String, String)> =
            watched.iter().map(|r| (r.key(), r.vm.as_ref().expect("watched").cid.clone())).collect();
        self.tracked.retain(|k, _| keys.contains(k));
        self.probed.retain(|k| keys.contains(k));

        for rec in &watched {
            let vm = rec.vm.as_ref().expect("watched");
            let key = (rec.key(), vm.cid.clone());
            let created = Instant::now()
                .checked_sub(Duration::from_secs(now_secs().saturating_sub(vm.created_at)))
                .unwrap_or_else(Instant::now);
            let silent = d.hub.silent_for(&vm.agent_id, created) > d.hub.unresponsive_after();
            let status = d.hub.status(&vm.agent_id);
            // An agent whose connection dropped is asked about at once: if its VM is gone there
            // is nothing to wait for (a VM that still exists gets the missed-heartbeat rule).
            let dropped = status.as_ref().is_some_and(|s| !s.connected);
            if !dropped {
                self.probed.remove(&key);
            }
            let previous = self.tracked.get(&key).map(|t| t.health);
            let probe_now =
                dropped && !silent && !previous.is_some_and(Health::unhealthy) && self.probed.insert(key.clone());
            let gone = if probe_now { matches!(d.cpi.has_vm(&vm.cid).await, Ok(false)) } else { false };
            let health = match previous {
                // Still gone or silent: it stays what it was found to be.
                Some(h) if h.unhealthy() && (dropped || silent) => h,
                _ if gone => Health::Missing,
                _ if silent => match d.cpi.has_vm(&vm.cid).await {
                    Ok(false) => Health::Missing,
                    Ok(true) => Health::Unresponsive,
                    Err(e) => {
                        tracing::warn!(vm = %vm.cid, error = %e, "has_vm failed; counting the agent unresponsive");
                        Health::Unresponsive
                    }
                },
                _ => {
                    let failing = status
                        .as_ref()
                        .and_then(|s| s.heartbeat.as_ref())
                        .is_some_and(|h| h.job_state == JobState::Failing);
                    if failing {
                        Health::Failing
                    } else {
                        Health::Healthy
                    }
                }
            };
            if previous == Some(health) || (previous.is_none() && health == Health::Healthy) {
                continue;
            }
            self.tracked.insert(key, Tracked { health, since: Instant::now(), held_back: None });
            let subject = EventSubject::instance(&rec.deployment, &rec.name());
            let (action, message) = match health {
                Health::Healthy => ("recovered", "the instance's agent reports again and its jobs run".to_string()),
                Health::Failing => ("failing", "a process keeps failing (reported, not a reason to recreate)".into()),
                Health::Unresponsive => (
                    "unresponsive",
                    format!(
                        "agent {} silent for over {} ms; its VM {} exists",
                        vm.agent_id,
                        d.hub.unresponsive_after().as_millis(),
                        vm.cid
                    ),
                ),
                Health::Missing => ("missing", format!("VM {} is gone (has_vm: false)", vm.cid)),
            };
            d.events.record(subject, action, CAUSE, message).await;
            if health.unhealthy() {
                self.turned.entry(rec.deployment.clone()).or_default().push_back((Instant::now(), rec.key()));
            }
        }

        // Meltdown, per deployment.
        let window = d.config.meltdown.window;
        let mut per_deployment: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &instances {
            *per_deployment.entry(r.deployment.as_str()).or_default() += 1;
        }
        for (dep, total) in &per_deployment {
            let turned = self.turned.entry(dep.to_string()).or_default();
            while turned.front().is_some_and(|(t, _)| t.elapsed() > window) {
                turned.pop_front();
            }
            let distinct: BTreeSet<&String> = turned.iter().map(|(_, k)| k).collect();
            let melting = in_meltdown(&d.config.meltdown, distinct.len(), *total);
            let was = self.meltdown.contains(*dep);
            if melting && !was {
                self.meltdown.insert(dep.to_string());
                d.events.record(
                    EventSubject::deployment(dep),
                    "meltdown",
                    CAUSE,
                    format!(
                        "meltdown entered: {} of {total} instances turned unhealthy within {} s; resurrection stops until fewer do (`bosun cck` or a deploy repairs)",
                        distinct.len(),
                        window.as_secs()
                    ),
                ).await;
            } else if !melting && was {
                self.meltdown.remove(*dep);
                d.events
                    .record(EventSubject::deployment(dep), "meltdown", CAUSE, "meltdown left: resurrection resumes")
                    .await;
            }
        }
        self.turned.retain(|dep, _| per_deployment.contains_key(dep.as_str()));

        // Resurrection: unhealthy for a whole heartbeat interval more (so instances that die
        // together are counted together before anything is done), deployment by deployment.
        let config = ResurrectionConfig::load(d).await?;
        let mut due: BTreeMap<String, Vec<&InstanceRecord>> = BTreeMap::new();
        for rec in &watched {
            let key = (rec.key(), rec.vm.as_ref().expect("watched").cid.clone());
            let Some(t) = self.tracked.get_mut(&key) else { continue };
            if !t.health.unhealthy() || t.since.elapsed() < d.config.heartbeat_interval {
                continue;
            }
            let held_back = if self.meltdown.contains(&rec.deployment) {
                Some("the deployment is in meltdown")
            } else if !config.allows(&rec.deployment, &rec.group) {
                Some("resurrection is off for it")
            } else {
                None
            };
            // A VM found gone when its agent's connection dropped may have been rebooting: asked
            // again before anything is done, one that is back is judged by its heartbeats instead.
            if t.health == Health::Missing && matches!(d.cpi.has_vm(&key.1).await, Ok(true)) {
                self.tracked.remove(&key);
                continue;
            }
            match held_back {
                None => due.entry(rec.deployment.clone()).or_default().push(rec),
                Some(why) if t.held_back != Some(why) => {
                    t.held_back = Some(why);
                    d.events
                        .record(
                            EventSubject::instance(&rec.deployment, &rec.name()),
                            "resurrect_skipped",
                            CAUSE,
                            format!("not resurrected: {why}"),
                        )
                        .await;
                }
                Some(_) => {}
            }
        }
        for (dep, recs) in due {
            if d.state.get(tables::DEPLOYMENTS, &dep).await?.is_none() {
                continue;
            }
            let names: Vec<String> = recs.iter().map(|r| r.name()).collect();
            let task = match d.tasks.create(&format!("resurrect {}", names.join(" ")), Some(&dep), true).await {
                Ok(t) => t,
                Err(TaskError::Locked { .. }) => continue, // another task runs; try again next pass
                Err(TaskError::Store(e)) => return Err(e),
            };
            for r in &recs {
                d.events
                    .record(
                        EventSubject::instance(&dep, &r.name()).with_task(task.id),
                        "resurrect",
                        CAUSE,
                        "recreating the instance's VM (same uuid, addresses and disk)",
                    )
                    .await;
                // Forget it: the new VM is judged afresh.
                self.tracked.remove(&(r.key(), r.vm.as_ref().expect("watched").cid.clone()));
            }
            let selectors: Vec<InstanceSelector> =
                recs.iter().map(|r| InstanceSelector::Uuid(r.group.clone(), r.uuid.clone())).collect();
            let d2 = d.clone();
            task.clone().run(async move { crate::update::resurrect(&d2, &task, &dep, selectors).await });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meltdown_needs_both_the_count_and_the_share() {
        let c = MeltdownConfig::default();
        assert!(!in_meltdown(&c, 4, 8), "4 of 8 is 50% but fewer than 5");
        assert!(in_meltdown(&c, 5, 8));
        assert!(in_meltdown(&c, 5, 25), "exactly 20%");
        assert!(!in_meltdown(&c, 5, 26), "under 20%");
        assert!(!in_meltdown(&c, 0, 0));
    }

    #[test]
    fn resurrection_rules_the_last_match_wins() {
        let mut c = ResurrectionConfig::default();
        assert!(c.allows("d", "g"));
        c.deployments.insert("d".into(), false);
        assert!(!c.allows("d", "g") && c.allows("e", "g"));
        c.rules.push(ResurrectionRule {
            enabled: true,
            include: RuleFilter { deployments: vec!["d".into()], instance_groups: vec![] },
            exclude: RuleFilter { deployments: vec![], instance_groups: vec!["etcd".into()] },
        });
        assert!(c.allows("d", "worker"), "the rule turns it back on");
        assert!(!c.allows("d", "etcd"), "but not for the excluded group");
        c.enabled = Some(false);
        assert!(!c.allows("e", "g"));
    }
}
