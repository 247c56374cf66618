//! Tables and the plan as people read them.

use bosun_types::api::{InstanceAction, PlanView};

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
    if !plan.changes {
        out.push_str("No changes.\n");
    }
    out
}

/// Unix seconds as RFC 3339.
pub fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}
