//! BOSH's meltdown protection: when too many of a deployment's instances turn unhealthy within a
//! window, resurrection stops for it until fewer do. Pure: it is told the time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// When at least `min_instances` and at least `percent` of a deployment's instances turned
/// unhealthy within `window`, stop resurrecting it.
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

/// Is a deployment in meltdown, given how many of its instances turned unhealthy in the window?
pub fn in_meltdown(config: &MeltdownConfig, turned_unhealthy: usize, instances: usize) -> bool {
    instances > 0
        && turned_unhealthy >= config.min_instances
        && turned_unhealthy * 100 >= config.percent as usize * instances
}

/// A deployment entering or leaving meltdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// `turned` of `total` instances turned unhealthy within the window.
    Entered {
        deployment: String,
        turned: usize,
        total: usize,
    },
    Left {
        deployment: String,
    },
}

#[derive(Debug, Default)]
pub struct MeltdownTracker {
    /// Per deployment: when which instance turned unhealthy.
    turned: BTreeMap<String, VecDeque<(Instant, String)>>,
    melting: BTreeSet<String>,
}

impl MeltdownTracker {
    /// An instance (by key) of `deployment` turned unhealthy at `at`.
    pub fn turned_unhealthy(&mut self, deployment: &str, instance: &str, at: Instant) {
        self.turned.entry(deployment.to_string()).or_default().push_back((at, instance.to_string()));
    }

    pub fn is_melting(&self, deployment: &str) -> bool {
        self.melting.contains(deployment)
    }

    /// Forgets what fell out of the window and says which deployments entered or left meltdown,
    /// given every deployment's instance count now.
    pub fn update(
        &mut self,
        config: &MeltdownConfig,
        totals: &BTreeMap<String, usize>,
        now: Instant,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        for (deployment, &total) in totals {
            let turned = self.turned.entry(deployment.clone()).or_default();
            while turned.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > config.window) {
                turned.pop_front();
            }
            let distinct: BTreeSet<&String> = turned.iter().map(|(_, k)| k).collect();
            let melting = in_meltdown(config, distinct.len(), total);
            let was = self.melting.contains(deployment);
            if melting && !was {
                self.melting.insert(deployment.clone());
                out.push(Transition::Entered { deployment: deployment.clone(), turned: distinct.len(), total });
            } else if !melting && was {
                self.melting.remove(deployment);
                out.push(Transition::Left { deployment: deployment.clone() });
            }
        }
        self.turned.retain(|d, _| totals.contains_key(d));
        self.melting.retain(|d| totals.contains_key(d));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

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
    fn meltdown_is_entered_and_left_as_the_600_s_window_moves() {
        let clock = ManualClock::default();
        let config = MeltdownConfig::default();
        let totals: BTreeMap<String, usize> = [("etcd".to_string(), 8), ("calm".to_string(), 8)].into();
        let mut m = MeltdownTracker::default();
        // Four die now, a fifth 5 minutes later: the window still holds all five.
        for i in 0..4 {
            m.turned_unhealthy("etcd", &format!("etcd/{i}"), clock.now());
        }
        assert_eq!(m.update(&config, &totals, clock.now()), vec![]);
        clock.advance(Duration::from_secs(300));
        m.turned_unhealthy("etcd", "etcd/4", clock.now());
        assert_eq!(
            m.update(&config, &totals, clock.now()),
            vec![Transition::Entered { deployment: "etcd".into(), turned: 5, total: 8 }]
        );
        assert!(m.is_melting("etcd") && !m.is_melting("calm"));
        // The same instance again counts once.
        m.turned_unhealthy("etcd", "etcd/4", clock.now());
        // 600 s after the first four died they are still in the window...
        clock.advance(Duration::from_secs(300));
        assert_eq!(m.update(&config, &totals, clock.now()), vec![]);
        // ...and a millisecond later they fall out of it: meltdown is left.
        clock.advance(Duration::from_millis(1));
        assert_eq!(m.update(&config, &totals, clock.now()), vec![Transition::Left { deployment: "etcd".into() }]);
        assert!(!m.is_melting("etcd"));
        assert_eq!(m.update(&config, &totals, clock.now()), vec![], "leaving is said once");
    }

    #[test]
    fn a_deleted_deployment_is_forgotten() {
        let clock = ManualClock::default();
        let config = MeltdownConfig { min_instances: 1, percent: 1, window: Duration::from_secs(600) };
        let mut m = MeltdownTracker::default();
        m.turned_unhealthy("gone", "g/0", clock.now());
        let totals: BTreeMap<String, usize> = [("gone".to_string(), 1)].into();
        assert_eq!(m.update(&config, &totals, clock.now()).len(), 1);
        assert_eq!(m.update(&config, &BTreeMap::new(), clock.now()), vec![]);
        assert!(!m.is_melting("gone"));
    }
}
