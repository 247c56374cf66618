//! The monitor's pass, and the supervisor that keeps it running.

use super::classify::{classify, observe};
use super::meltdown::{MeltdownTracker, Transition};
use super::ResurrectionConfig;
use crate::events::EventSubject;
use crate::records::{DesiredState, InstanceRecord};
use crate::store::{tables, StoreError, Tree};
use crate::tasks::{panic_message, Locking, TaskError};
use crate::Director;
use bosun_types::api::{InstanceSelector, InstanceState};
use futures::FutureExt;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

const CAUSE: &str = "health monitor";

/// What the monitor concluded about an instance's current VM: the classifier's state, folded.
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
    fn of(state: InstanceState) -> Health {
        match state {
            InstanceState::Failing => Health::Failing,
            InstanceState::Unresponsive => Health::Unresponsive,
            InstanceState::Missing => Health::Missing,
            InstanceState::Running | InstanceState::Starting | InstanceState::Stopped | InstanceState::Detached => {
                Health::Healthy
            }
        }
    }
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

#[derive(Default)]
struct Monitor {
    /// Per instance key and VM cid: a new VM starts with a clean slate.
    tracked: BTreeMap<(String, String), Tracked>,
    meltdown: MeltdownTracker,
    /// VMs whose agent's connection dropped and that were asked about already.
    probed: BTreeSet<(String, String)>,
    /// Per instance key and VM cid: each process's restart count in the last heartbeat seen, so
    /// a restart the agent's supervisor made becomes an event.
    restarts: BTreeMap<(String, String), BTreeMap<(String, String), u32>>,
}

/// Runs the monitor for the director's lifetime. A panic in a pass is caught: it is logged and
/// recorded as an event, and the monitor starts afresh after a pause (what it tracked is found
/// again from the agents and the CPI); health checks never silently stop.
pub async fn monitor(d: Arc<Director>) {
    let tick = (d.config.heartbeat_interval / 4).max(Duration::from_millis(100));
    supervise(&d, tick, move |d: Arc<Director>| async move {
        let mut m = Monitor::default();
        loop {
            tokio::time::sleep(tick).await;
            let pass = m.pass(&d).instrument(tracing::debug_span!("health_pass"));
            if let Err(e) = pass.await {
                tracing::warn!(error = %e, "health monitor pass failed");
            }
        }
    })
    .await
}

/// Runs `run` again whenever it panics, `pause` later, recording each restart.
async fn supervise<F, Fut>(d: &Arc<Director>, pause: Duration, run: F)
where
    F: Fn(Arc<Director>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let message = match AssertUnwindSafe(run(d.clone())).catch_unwind().await {
            Ok(()) => "it returned".to_string(), // it runs forever; were it to end, it starts again
            Err(panic) => panic_message(&*panic),
        };
        tracing::error!(panic = %message, "the health monitor stopped; restarting it");
        let subject =
            EventSubject { object_type: "director", object_name: d.config.name.clone(), ..Default::default() };
        d.events
            .record(
                subject,
                "monitor_restarted",
                CAUSE,
                format!("the health monitor stopped ({message}) and was restarted"),
            )
            .await;
        tokio::time::sleep(pause).await;
    }
}

impl Monitor {
    /// Records an event for each process the agent restarted since the last heartbeat seen (the
    /// first one seen of a VM only sets the counts).
    async fn note_restarts(
        &mut self,
        d: &Arc<Director>,
        rec: &InstanceRecord,
        key: &(String, String),
        processes: &[bosun_types::protocol::ProcessState],
    ) {
        let now: BTreeMap<(String, String), u32> =
            processes.iter().map(|p| ((p.job.clone(), p.name.clone()), p.restarts)).collect();
        let Some(before) = self.restarts.insert(key.clone(), now) else { return };
        for p in processes {
            let mut seen = before.get(&(p.job.clone(), p.name.clone())).copied().unwrap_or(p.restarts);
            if p.restarts < seen {
                seen = 0; // started afresh (an update, a new apply): counted from zero again
            }
            if p.restarts <= seen {
                continue;
            }
            let mut message = format!(
                "{}/{} restarted by its supervisor ({} restart{} in all",
                p.job,
                p.name,
                p.restarts,
                if p.restarts == 1 { "" } else { "s" }
            );
            if let Some(exit) = &p.last_exit {
                message.push_str(&format!("; last exit: {exit}"));
            }
            message.push(')');
            if let Some(words) = &p.last_words {
                message.push_str(&format!("; its last words: {words}"));
            }
            let subject = EventSubject::instance(&rec.deployment, &rec.name());
            d.events.record(subject, "process restarted", CAUSE, message).await;
        }
    }

    async fn pass(&mut self, d: &Arc<Director>) -> Result<(), StoreError> {
        crate::fault::panic_point(crate::fault::PanicPoint::HealthPass);
        let now = d.clock.now();
        let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, "").await?;
        // An instance a running task is updating or deleting (dirty or deleting, its deployment
        // locked) is that task's: its agent may restart, its VM be replaced or gone.
        let locked: BTreeSet<String> =
            d.state.kv().scan_prefix(Tree::Locks, "").await?.into_iter().map(|(k, _)| k).collect();
        let watched: Vec<&InstanceRecord> = instances
            .iter()
            .filter(|r| r.vm.is_some() && r.state == DesiredState::Started)
            .filter(|r| !((r.dirty || r.deleting) && locked.contains(&r.deployment)))
            .collect();
        let keys: BTreeSet<(String, String)> =
            watched.iter().map(|r| (r.key(), r.vm.as_ref().expect("watched").cid.clone())).collect();
        self.tracked.retain(|k, _| keys.contains(k));
        self.probed.retain(|k| keys.contains(k));
        let live_vms: BTreeSet<&str> = instances.iter().filter_map(|r| r.vm.as_ref()).map(|v| v.cid.as_str()).collect();
        // Restart counts are followed for every VM from its first heartbeat, updated or not, so a
        // crash right after an update is not taken for the first count seen.
        self.restarts.retain(|k, _| live_vms.contains(k.1.as_str()));
        for rec in instances.iter().filter(|r| r.state == DesiredState::Started) {
            let Some(vm) = rec.vm.as_ref() else { continue };
            if let Some(hb) = d.hub.status(&vm.agent_id).and_then(|s| s.heartbeat) {
                self.note_restarts(d, rec, &(rec.key(), vm.cid.clone()), &hb.processes).await;
            }
        }
        d.sightings.retain(|cid| live_vms.contains(cid));

        for rec in &watched {
            let vm = rec.vm.as_ref().expect("watched");
            let key = (rec.key(), vm.cid.clone());
            let status = d.hub.status(&vm.agent_id);
            let silent = observe(d, rec, status.as_ref()).silent_for > d.hub.unresponsive_after();
            let dropped = status.as_ref().is_some_and(|s| !s.connected);
            if !dropped && !silent {
                // Heard from: what the CPI said before no longer stands.
                self.probed.remove(&key);
                d.sightings.forget(&vm.cid);
            }
            let previous = self.tracked.get(&key).map(|t| t.health);
            // An agent whose connection dropped is asked about at once: if its VM is gone there is
            // nothing to wait for. A silent one is asked once it is past the threshold.
            let ask = d.sightings.get(&vm.cid).is_none()
                && (silent || (dropped && !previous.is_some_and(Health::unhealthy) && self.probed.insert(key.clone())));
            if ask {
                match d.cpi.has_vm(&vm.cid).await {
                    Ok(exists) => d.sightings.record(&vm.cid, exists),
                    Err(e) => tracing::warn!(vm = %vm.cid, error = %e, "has_vm failed; judging by the agent alone"),
                }
            }
            let observed = observe(d, rec, status.as_ref());
            let state = classify(&observed);
            let health = Health::of(state);
            if previous == Some(health) || (previous.is_none() && health == Health::Healthy) {
                continue;
            }
            self.tracked.insert(key, Tracked { health, since: now, held_back: None });
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
            // A finding began when the agent was last heard.
            let last_heard =
                health.unhealthy().then(|| d.clock.unix_ms().saturating_sub(observed.silent_for.as_millis() as u64));
            d.events.record_since(subject, action, CAUSE, message, last_heard).await;
            if health.unhealthy() {
                self.meltdown.turned_unhealthy(&rec.deployment, &rec.key(), now);
            }
        }

        // Meltdown, per deployment.
        let mut totals: BTreeMap<String, usize> = BTreeMap::new();
        for r in &instances {
            *totals.entry(r.deployment.clone()).or_default() += 1;
        }
        let window = d.config.meltdown.window;
        for transition in self.meltdown.update(&d.config.meltdown, &totals, now) {
            let (deployment, message) = match transition {
                Transition::Entered { deployment, turned, total } => {
                    let message = format!(
                        "meltdown entered: {turned} of {total} instances turned unhealthy within {} s; resurrection stops until fewer do (`bosun cck` or a deploy repairs)",
                        window.as_secs()
                    );
                    (deployment, message)
                }
                Transition::Left { deployment } => (deployment, "meltdown left: resurrection resumes".to_string()),
            };
            d.events.record(EventSubject::deployment(&deployment), "meltdown", CAUSE, message).await;
        }

        // Resurrection: unhealthy for a whole heartbeat interval more (so instances that die
        // together are counted together before anything is done), deployment by deployment.
        let config = ResurrectionConfig::load(d).await?;
        let mut due: BTreeMap<String, Vec<&InstanceRecord>> = BTreeMap::new();
        for rec in &watched {
            let key = (rec.key(), rec.vm.as_ref().expect("watched").cid.clone());
            let Some(t) = self.tracked.get_mut(&key) else { continue };
            if !t.health.unhealthy() || now.saturating_duration_since(t.since) < d.config.heartbeat_interval {
                continue;
            }
            let held_back = if self.meltdown.is_melting(&rec.deployment) {
                Some("the deployment is in meltdown")
            } else if !config.allows(&rec.deployment, &rec.group) {
                Some("resurrection is off for it")
            } else {
                None
            };
            // A VM found gone when its agent's connection dropped may have been rebooting: asked
            // again before anything is done, one that is back is judged by its heartbeats instead.
            if t.health == Health::Missing && matches!(d.cpi.has_vm(&key.1).await, Ok(true)) {
                d.sightings.record(&key.1, true);
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
            let task = match d.tasks.create(&format!("resurrect {}", names.join(" ")), Some(&dep), Locking::Now).await {
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
