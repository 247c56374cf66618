//! The health monitor and resurrector. Every quarter heartbeat interval it looks at every instance
//! that should be running: an agent silent for `missed_heartbeats` intervals is unhealthy, and
//! `has_vm` tells a missing VM from a hung agent (an agent whose connection drops is asked about
//! at once, so a VM that died is noticed in well under a heartbeat); a process that keeps failing
//! makes the instance `failing` (reported, never a reason to recreate). Unhealthy instances are resurrected through
//! the same planner and executor as a deploy — same uuid, index, addresses and disk; the old VM is
//! deleted first — unless resurrection is off for them or their deployment is in meltdown.
//! Resurrection takes the deployment's lock like any task; while another task holds it, the
//! instances wait their turn.
//!
//! ```text
//! classify   record + agent status + silence + the CPI's answer → InstanceState (shared with
//!            `bosun instances` and cck)
//! meltdown   the window of instances that turned unhealthy, per deployment (pure, clocked)
//! monitor    the pass: observe, classify, record findings, meltdown, resurrect; run under a
//!            supervisor that restarts it after a panic
//! ```

mod classify;
mod meltdown;
mod monitor;

pub use classify::{classify, observe, Observation, VmSightings};
pub use meltdown::{in_meltdown, MeltdownConfig, MeltdownTracker, Transition};
pub use monitor::monitor;

use crate::store::{StoreError, Table, Tree};
use crate::Director;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the resurrection switches are kept: one record in the `meta` tree.
const RESURRECTION: Table<ResurrectionConfig> = Table::new(Tree::Meta);

/// Whether resurrection is on: director-wide, per deployment, and by rules over deployments and
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

#[cfg(test)]
mod tests {
    use super::*;

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
