//! Tables and the plan as people read them.

use bosun_types::api::{EventView, InstanceAction, InstanceView, PlanView};

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out.push_str(&format!("\n{} row{}\n", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    out
}

pub fn render_plan(plan: &PlanView) -> String {
    let mut out = format!("Using deployment '{}'\n\n", plan.deployment);
    if !plan.manifest_diff.is_empty() {
        for l in &plan.manifest_diff {
            out.push_str(l);
            out.push('\n');
        }
        out.push('\n');
    }
    if !plan.compilations.is_empty() {
        out.push_str("Packages to compile\n");
        for c in &plan.compilations {
            out.push_str(&format!("  + {c}\n"));
        }
        out.push('\n');
    }
    for g in &plan.groups {
        out.push_str(&format!("Instance group {}\n", g.name));
        for i in &g.instances {
            let sign = match i.action {
                InstanceAction::Create => '+',
                InstanceAction::Delete => '-',
                InstanceAction::Keep => ' ',
                InstanceAction::Update
                | InstanceAction::Recreate
                | InstanceAction::Restart
                | InstanceAction::Stop
                | InstanceAction::Detach
                | InstanceAction::Start => '~',
            };
            let reasons = if i.reasons.is_empty() { String::new() } else { format!(": {}", i.reasons.join("; ")) };
            out.push_str(&format!(
                "{sign} {} (index {}, az {}, {})  {}{reasons}\n",
                i.instance,
                i.index,
                i.az.as_deref().unwrap_or("-"),
                if i.ips.is_empty() { "-".to_string() } else { i.ips.join(", ") },
                i.action
            ));
        }
        if !g.batches.is_empty() {
            out.push_str(&format!("  update order ({})\n", g.update));
            for (n, b) in g.batches.iter().enumerate() {
                out.push_str(&format!(
                    "    batch {}{}{}: {}\n",
                    n + 1,
                    if b.canary { " (canary)" } else { "" },
                    b.az.as_deref().map(|a| format!(", az {a}")).unwrap_or_default(),
                    b.instances.join(", ")
                ));
            }
        }
        out.push('\n');
    }
    for w in &plan.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if !plan.warnings.is_empty() {
        out.push('\n');
    }
    if !plan.changes {
        out.push_str("No changes.\n");
    }
    out
}

/// An instance's stemcell as `NAME/VERSION`, `-` when it has none.
fn stemcell_of(i: &InstanceView) -> String {
    i.stemcell.as_ref().map_or_else(|| "-".to_string(), |s| format!("{}/{}", s.name, s.version))
}

/// `instances`: one row per instance (`*` marks the bootstrap one), its processes under it with
/// `--ps`, the agent id, disk CIDs and generation with `--details`.
pub fn instances_table(v: &[InstanceView], details: bool) -> String {
    let dash = || "-".to_string();
    let mut header = vec!["Instance", "Index", "State", "AZ", "IPs", "VM CID", "Stemcell"];
    if details {
        header.extend(["Agent ID", "Disk CIDs", "Generation"]);
    }
    let mut rows = Vec::new();
    for i in v {
        let mut row = vec![
            format!("{}{}", i.instance, if i.bootstrap { "*" } else { "" }),
            i.index.to_string(),
            i.state.to_string(),
            i.az.clone().unwrap_or_else(dash),
            i.ips.join(", "),
            i.vm_cid.clone().unwrap_or_else(dash),
            stemcell_of(i),
        ];
        if details {
            row.push(i.agent_id.clone().unwrap_or_else(dash));
            row.push(if i.disk_cids.is_empty() { dash() } else { i.disk_cids.join(", ") });
            row.push(i.generation.to_string());
        }
        rows.push(row);
        for p in i.processes.iter().flatten() {
            let mut row = vec![String::new(); header.len()];
            row[0] = format!("~ {}/{}", p.job, p.name);
            row[2] = format!("{:?}", p.state).to_lowercase();
            rows.push(row);
        }
    }
    table(&header, &rows)
}

/// A percentage with the amount it stands for, as bosh prints memory: `41% (3.2 GB)`.
fn percent_of(percent: f64, kb: u64) -> String {
    format!("{percent:.0}% ({:.1} GB)", kb as f64 / 1024.0 / 1024.0)
}

/// Seconds as bosh prints an uptime: `3d 4h 5m 6s`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// `vms`: one row per VM; with `vitals`, its latest heartbeat's figures.
pub fn vms_table(with_vm: &[&InstanceView], vitals: bool) -> String {
    let dash = || "-".to_string();
    let mut header = vec!["Instance", "State", "AZ", "IPs", "VM CID", "Stemcell"];
    if vitals {
        header.extend([
            "Uptime",
            "Load (1m, 5m, 15m)",
            "CPU Total",
            "CPU User",
            "CPU Sys",
            "CPU Wait",
            "Memory Usage",
            "Swap Usage",
            "System Disk Usage",
            "Ephemeral Disk Usage",
            "Persistent Disk Usage",
        ]);
    }
    let rows: Vec<Vec<String>> = with_vm
        .iter()
        .map(|i| {
            let mut row = vec![
                i.instance.clone(),
                i.state.to_string(),
                i.az.clone().unwrap_or_else(dash),
                i.ips.join(", "),
                i.vm_cid.clone().unwrap_or_else(dash),
                stemcell_of(i),
            ];
            if vitals {
                match &i.vitals {
                    Some(x) => {
                        let disk = |k: &str| x.disk.get(k).map_or_else(dash, |p| format!("{p:.0}%"));
                        row.extend([
                            uptime(x.uptime_secs),
                            format!("{:.2}, {:.2}, {:.2}", x.load[0], x.load[1], x.load[2]),
                            format!("{:.1}%", x.cpu.user + x.cpu.sys + x.cpu.wait),
                            format!("{:.1}%", x.cpu.user),
                            format!("{:.1}%", x.cpu.sys),
                            format!("{:.1}%", x.cpu.wait),
                            percent_of(x.mem_percent, x.mem_kb),
                            percent_of(x.swap_percent, x.swap_kb),
                            disk("system"),
                            disk("ephemeral"),
                            disk("persistent"),
                        ]);
                    }
                    // No heartbeat yet (or the agent is silent).
                    None => row.extend(std::iter::repeat_n(dash(), 11)),
                }
            }
            row
        })
        .collect();
    table(&header, &rows)
}
/// `events`: the timeline, one row per event.
pub fn events_table(v: &[EventView]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                unix_time(e.time_ms / 1000),
                e.action.clone(),
                format!("{} {}", e.object_type, e.object_name),
                e.deployment.clone().unwrap_or_else(|| "-".into()),
                e.task.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                e.cause.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["ID", "Time", "Action", "Object", "Deployment", "Task", "Cause", "Message"], &rows)
}

/// Unix seconds as RFC 3339.
pub fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// Golden tests: what an operator reads, pinned (`cli/src/snapshots/`; a change shows as a diff).
#[cfg(test)]
mod golden {
    use super::*;
    use serde_json::json;

    fn instance(name: &str, index: u32, state: &str, vitals: bool) -> InstanceView {
        let mut v = json!({
            "instance": name, "group": name.split('/').next().unwrap(), "id": name.split('/').nth(1).unwrap(),
            "index": index, "az": format!("z{}", index + 1), "ips": [format!("10.0.0.{}", 20 + index)],
            "vm_cid": format!("vm-{index}"), "agent_id": format!("agent-{index}"), "state": state,
            "bootstrap": index == 0, "stemcell": {"name": "bosun-local", "version": "1.1"},
            "processes": [{"job": "etcd", "name": "etcd", "pid": 100 + index, "restarts": index,
                "state": if state == "unresponsive" { "running" } else { state }}],
            "disk_cids": if index == 2 { json!([]) } else { json!([format!("disk-{index}")]) }, "generation": 7
        });
        if vitals {
            v["vitals"] = json!({
                "load": [0.52, 0.4, 0.31], "mem_kb": 3_355_443, "mem_percent": 41.0, "swap_kb": 0, "swap_percent": 0.0,
                "disk": {"system": 63.2, "ephemeral": 12.0, "persistent": 4.5}, "agent_rss_kb": 20_000,
                "cpu": {"user": 12.5, "sys": 3.1, "wait": 0.4}, "uptime_secs": 93_784
            });
        }
        serde_json::from_value(v).unwrap()
    }

    fn instances(vitals: bool) -> Vec<InstanceView> {
        vec![
            instance("etcd/6b1c", 0, "running", vitals),
            instance("etcd/9f2e", 1, "failing", vitals),
            instance("etcd/c03d", 2, "starting", vitals),
        ]
    }

    #[test]
    fn plan() {
        let plan: PlanView = serde_json::from_value(json!({
            "deployment": "quickstart",
            "manifest_diff": ["  instance_groups:", "  - name: etcd", "-   instances: 2", "+   instances: 3"],
            "groups": [{
                "name": "etcd", "update": "canaries 1, max_in_flight 1",
                "instances": [
                    {"instance": "etcd/6b1c", "index": 0, "az": "z1", "ips": ["10.0.0.20"], "action": "keep", "reasons": []},
                    {"instance": "etcd/9f2e", "index": 1, "az": "z2", "ips": ["10.0.0.21"], "action": "update",
                     "reasons": ["job `etcd`: property `heartbeat_interval` changed"]},
                    {"instance": "etcd/(new, index 2)", "index": 2, "az": "z3", "ips": ["10.0.0.22"], "action": "create", "reasons": []},
                    {"instance": "etcd/77aa", "index": 3, "az": "z1", "ips": ["10.0.0.23"], "action": "delete",
                     "reasons": ["no longer in the manifest"]}
                ],
                "batches": [{"canary": true, "az": "z2", "instances": ["etcd/9f2e"]},
                            {"canary": false, "az": "z3", "instances": ["etcd/(new, index 2)"]}]
            }],
            "compilations": ["etcd-server/4a1b for debian/1.1"],
            "changes": true,
            "warnings": ["/instance_groups/0/jobs/0/properties: job `etcd` declares no property `tls.cert`; it is ignored"]
        }))
        .unwrap();
        insta::assert_snapshot!(render_plan(&plan));
    }

    #[test]
    fn instances_with_processes_and_details() {
        insta::assert_snapshot!(instances_table(&instances(false), true));
    }

    #[test]
    fn vms_with_vitals() {
        let v = instances(true);
        let mut refs: Vec<&InstanceView> = v.iter().collect();
        let mut silent = instance("etcd/d4e5", 3, "unresponsive", false);
        silent.vitals = None;
        refs.push(&silent);
        insta::assert_snapshot!(vms_table(&refs, true));
    }

    #[test]
    fn events() {
        let events: Vec<EventView> = serde_json::from_value(json!([
            {"id": 41, "time_ms": 1_764_500_000_000u64, "action": "missing", "object_type": "instance",
             "object_name": "etcd/9f2e", "deployment": "quickstart", "instance": "etcd/9f2e", "task": null,
             "cause": "health monitor", "message": "VM vm-1 is gone (has_vm: false)"},
            {"id": 42, "time_ms": 1_764_500_001_500u64, "action": "resurrect", "object_type": "instance",
             "object_name": "etcd/9f2e", "deployment": "quickstart", "instance": "etcd/9f2e", "task": 12,
             "cause": "task 12 (resurrect quickstart)", "message": "recreating with fencing"}
        ]))
        .unwrap();
        insta::assert_snapshot!(events_table(&events));
    }

    #[test]
    fn main_error_messages() {
        let manifest = bosun_types::manifest::DeploymentManifest::parse(
            "m.yml",
            bosun_types::yaml::parse_value("m.yml", "name: d\ninstance_groups: {}\n").unwrap(),
        )
        .unwrap_err();
        let messages = [
            bosun_types::yaml::parse_value("m.yml", "a: [1,\nb: 2\n").unwrap_err().to_string(),
            bosun_types::yaml::parse_value("m.yml", "a: 1\na: 2\n").unwrap_err().to_string(),
            manifest.to_string(),
            crate::client::director_url("http://10.0.0.6").unwrap_err().to_string(),
            crate::client::director_url("10.0.0.6:port").unwrap_err().to_string(),
        ];
        insta::assert_snapshot!(messages.join("\n"));
    }
}
