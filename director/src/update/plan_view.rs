//! The plan as the operator sees it before saying yes: a redacted manifest diff and, per group,
//! each instance's action with its reasons and the batches it will run in.

use crate::planner::{InstancePlan, Plan};
use bosun_types::api::{BatchView, GroupPlanView, InstanceAction, InstancePlanView, PlanView};
use bosun_types::manifest::VmStrategy;

/// Blanks every value under a `properties` or `env` key, so diffs show structure, not secrets.
pub(crate) fn redact(v: &mut serde_yaml::Value, under_secret: bool) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                let secret = under_secret || matches!(k.as_str(), Some("properties") | Some("env"));
                redact(x, secret);
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(|x| redact(x, under_secret)),
        serde_yaml::Value::Tagged(t) => redact(&mut t.value, under_secret),
        other => {
            if under_secret {
                *other = serde_yaml::Value::String("<redacted>".into());
            }
        }
    }
}

/// A manifest as the diff shows it: written in one form, property and env values redacted unless
/// the operator asked to see them (`--no-redact`).
pub(crate) fn shown_yaml(text: &str, redacted: bool) -> String {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(mut v) => {
            if redacted {
                redact(&mut v, false);
            }
            serde_yaml::to_string(&v).unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

/// A new instance's uuid is drawn when the deploy runs, not in a dry run: it shows by index.
pub(crate) fn instance_label(i: &InstancePlan) -> String {
    if i.existing.is_some() {
        i.name()
    } else {
        format!("{}/(new, index {})", i.group, i.index)
    }
}

pub fn plan_view(plan: &Plan, old_manifest: Option<&str>, new_manifest: &str, redacted: bool) -> PlanView {
    let old = old_manifest.map(|m| shown_yaml(m, redacted)).unwrap_or_default();
    let new = shown_yaml(new_manifest, redacted);
    let diff = similar::TextDiff::from_lines(&old, &new);
    let mut manifest_diff = Vec::new();
    for group in diff.grouped_ops(2) {
        for op in group {
            for change in diff.iter_changes(&op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Delete => "- ",
                    similar::ChangeTag::Insert => "+ ",
                    similar::ChangeTag::Equal => "  ",
                };
                manifest_diff.push(format!("{sign}{}", change.value().trim_end_matches('\n')));
            }
        }
        manifest_diff.push("  ...".into());
    }
    let mut groups: Vec<GroupPlanView> = plan
        .groups
        .iter()
        .map(|g| GroupPlanView {
            name: g.name.clone(),
            update: format!(
                "canaries {}, max_in_flight {}, canary_watch_time {}-{} ms, update_watch_time {}-{} ms, serial {}, vm_strategy {}, script timeout {} s",
                g.update.canaries,
                g.update.max_in_flight,
                g.update.canary_watch_time.0,
                g.update.canary_watch_time.1,
                g.update.update_watch_time.0,
                g.update.update_watch_time.1,
                g.update.serial,
                match g.update.vm_strategy {
                    VmStrategy::DeleteCreate => "delete-create",
                    VmStrategy::CreateSwapDelete => "create-swap-delete",
                },
                g.script_timeout_ms / 1000
            ),
            batches: g
                .batches
                .iter()
                .map(|b| BatchView {
                    canary: b.canary,
                    az: b.az.clone(),
                    instances: b.instances.iter().map(|&k| instance_label(&g.instances[k])).collect(),
                })
                .collect(),
            instances: g
                .instances
                .iter()
                .map(|i| InstancePlanView {
                    instance: instance_label(i),
                    index: i.index,
                    az: i.az.clone(),
                    ips: i.networks.values().map(|n| crate::planner::show_ip(&n.ip).to_string()).collect(),
                    action: i.action,
                    reasons: i.reasons.clone(),
                })
                .collect(),
        })
        .collect();
    for d in &plan.deletes {
        let view = InstancePlanView {
            instance: d.name(),
            index: d.index,
            az: d.az.clone(),
            ips: d.ips(),
            action: InstanceAction::Delete,
            reasons: vec!["no longer in the manifest".into()],
        };
        match groups.iter_mut().find(|g| g.name == d.group) {
            Some(g) => g.instances.push(view),
            None => groups.push(GroupPlanView {
                name: d.group.clone(),
                update: String::new(),
                instances: vec![view],
                batches: vec![],
            }),
        }
    }
    let compilations = plan
        .compilation
        .iter()
        .flat_map(|c| &c.packages)
        .map(|p| {
            format!(
                "{}/{} for {}/{}",
                p.package.name, p.package.fingerprint, p.stemcell.operating_system, p.stemcell.version
            )
        })
        .collect();
    PlanView {
        deployment: plan.deployment.clone(),
        manifest_diff,
        groups,
        compilations,
        changes: plan.has_changes(),
        warnings: plan.warnings.clone(),
    }
}
