//! The pages of `/ui` as HTML text: pure functions of the views the API serves. Every value
//! from the store goes through [`esc`]; the pages run no script (the Content-Security-Policy
//! allows none).

use super::escape::esc;
use super::timeline::{timeline_svg, utc, utc_time};
use bosun_types::api::{url_part, DeploymentView, EventView, InstanceView};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

const STYLE: &str = r#"
body{font-family:sans-serif;margin:0;color:#1d1d1f;background:#fafbfc}
header{background:#27304a;color:#fff;padding:10px 20px;display:flex;align-items:center;gap:20px}
header a{color:#fff;text-decoration:none;font-weight:bold}
header form{margin-left:auto}
main{padding:16px 20px}
h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #d5d9e0;padding:5px 8px;text-align:left;vertical-align:top;font-size:13px}
th{background:#eef1f5}
.grid td{min-width:220px}
.inst{border-radius:6px;padding:6px 8px;margin:4px 0;border:1px solid #0002}
.inst .name{font-weight:bold}.inst .vitals{font-size:11px;color:#333;margin-top:3px}
.state-running{background:#c9ecd3}.state-starting{background:#d6e6fb}.state-failing{background:#fbd3cf}
.state-unresponsive{background:#fde2a8}.state-missing{background:#f4b6b0}.state-stopped{background:#e3e3e3}
.state-detached{background:#e9e2f5}
.badge{display:inline-block;border-radius:9px;padding:1px 8px;margin-right:4px;font-size:12px;border:1px solid #0002}
.muted{color:#666;font-size:12px}.error{color:#b3261e;font-weight:bold}
.timeline-box{overflow-x:auto;background:#fff;border:1px solid #d5d9e0}
form.login{background:#fff;border:1px solid #d5d9e0;padding:20px;max-width:420px}
form.login input[type=password]{width:100%;padding:6px;margin:8px 0;box-sizing:border-box}
"#;

fn layout(title: &str, signed_in: bool, body: &str) -> String {
    let logout = if signed_in {
        r#"<form method="post" action="/ui/logout"><button type="submit">Sign out</button></form>"#
    } else {
        ""
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · bosun</title>\
         <style>{STYLE}</style></head><body><header><a href=\"/ui\">bosun</a>{logout}</header><main>{body}</main></body></html>\n",
        esc(title)
    )
}

/// The sign-in form: the director's API token, exchanged for a session cookie.
pub fn login(next: &str, error: Option<&str>) -> String {
    let error = error.map(|e| format!(r#"<p class="error" id="login-error">{}</p>"#, esc(e))).unwrap_or_default();
    let body = format!(
        r#"<h1>Sign in</h1>{error}<form class="login" method="post" action="/ui/login">
<label for="token">The director's API token (BOSUN_TOKEN)</label>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{}">
<button type="submit" id="sign-in">Sign in</button>
<p class="muted">The token is checked once and not kept by the browser: a session cookie (12 hours, this site only) takes its place.</p>
</form>"#,
        esc(next)
    );
    layout("Sign in", false, &body)
}

/// How many instances are in each state.
pub fn state_counts(instances: &[InstanceView]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in instances {
        *out.entry(i.state.to_string()).or_default() += 1;
    }
    out
}

fn badges(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(state, n)| format!(r#"<span class="badge state-{state}" data-state="{state}">{n} {state}</span>"#))
        .collect()
}

/// Every deployment, with its instances' states.
pub fn overview(director: &str, deployments: &[(DeploymentView, BTreeMap<String, usize>)]) -> String {
    let mut body = format!("<h1>Director {}</h1>", esc(director));
    if deployments.is_empty() {
        body.push_str("<p>No deployments yet: <code>bosun deploy</code> makes one.</p>");
    } else {
        body.push_str(
            "<table class=\"deployments\"><tr><th>Deployment</th><th>Instances</th><th>States</th>\
             <th>Releases</th><th>Stemcells</th><th>Cloud-config</th></tr>",
        );
        for (d, counts) in deployments {
            let _ = write!(
                body,
                r#"<tr data-deployment="{}"><td><a href="/ui/deployments/{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&d.name),
                url_part(&d.name),
                esc(&d.name),
                d.instances,
                badges(counts),
                esc(&d.releases.join(", ")),
                esc(&d.stemcells.join(", ")),
                esc(&d.cloud_config),
            );
        }
        body.push_str("</table>");
    }
    layout("Deployments", true, &body)
}

fn vitals(i: &InstanceView) -> String {
    let Some(v) = &i.vitals else { return String::new() };
    let disk = [("system", "sys"), ("ephemeral", "eph"), ("persistent", "pers")]
        .iter()
        .filter_map(|(k, short)| v.disk.get(*k).map(|p| format!("{short} {p:.0}%")))
        .collect::<Vec<_>>()
        .join(" ");
    let cpu = v.cpu.user + v.cpu.sys + v.cpu.wait;
    format!(
        r#"<div class="vitals">load {:.2} · cpu {cpu:.0}% · mem {:.0}% · swap {:.0}%{}{} · up {}</div>"#,
        v.load[0],
        v.mem_percent,
        v.swap_percent,
        if disk.is_empty() { "" } else { " · disk " },
        disk,
        uptime(v.uptime_secs)
    )
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s / 60) % 60),
        s => format!("{}d{}h", s / 86_400, (s / 3600) % 24),
    }
}

fn instance_box(i: &InstanceView) -> String {
    let state = i.state.to_string();
    let failing: Vec<String> = i
        .processes
        .iter()
        .flatten()
        .filter(|p| p.state != bosun_types::protocol::ProcessStatus::Running)
        .map(|p| format!("{}/{} {}", p.job, p.name, format!("{:?}", p.state).to_lowercase()))
        .collect();
    format!(
        r#"<div class="inst state-{state}" data-instance="{}" data-state="{state}"><div class="name">{}/{}{}</div><div>{state} · {} · <span class="muted">{}</span></div>{}{}</div>"#,
        esc(&i.instance),
        esc(&i.group),
        i.index,
        if i.bootstrap { " <span class=\"muted\">bootstrap</span>" } else { "" },
        esc(&i.ips.join(", ")),
        esc(i.id.get(..8).unwrap_or(&i.id)),
        vitals(i),
        if failing.is_empty() {
            String::new()
        } else {
            format!(r#"<div class="error">{}</div>"#, esc(&failing.join(", ")))
        },
    )
}

/// One deployment: its instances by group (rows) and AZ (columns), the last day's timeline, and
/// the latest events.
pub fn deployment(d: &DeploymentView, instances: &[InstanceView], events: &[EventView], now_ms: u64) -> String {
    let mut body = format!(
        r#"<h1>Deployment {}</h1><p>{}<span class="muted">releases {} · stemcells {} · cloud-config {}</span></p>"#,
        esc(&d.name),
        badges(&state_counts(instances)),
        esc(&d.releases.join(", ")),
        esc(&d.stemcells.join(", ")),
        esc(&d.cloud_config),
    );
    let azs: BTreeSet<Option<&str>> = instances.iter().map(|i| i.az.as_deref()).collect();
    let mut groups: Vec<&str> = vec![];
    for i in instances {
        if !groups.contains(&i.group.as_str()) {
            groups.push(&i.group);
        }
    }
    body.push_str("<h2>Instances</h2>");
    if instances.is_empty() {
        body.push_str("<p>No instances.</p>");
    } else {
        body.push_str("<table class=\"grid\"><tr><th>Group</th>");
        for az in &azs {
            let _ = write!(body, "<th>{}</th>", esc(az.unwrap_or("(no AZ)")));
        }
        body.push_str("</tr>");
        for g in &groups {
            let _ = write!(body, r#"<tr data-group="{}"><th>{}</th>"#, esc(g), esc(g));
            for az in &azs {
                body.push_str("<td>");
                for i in instances.iter().filter(|i| i.group == *g && i.az.as_deref() == *az) {
                    body.push_str(&instance_box(i));
                }
                body.push_str("</td>");
            }
            body.push_str("</tr>");
        }
        body.push_str("</table>");
    }
    let labels: BTreeMap<String, String> =
        instances.iter().map(|i| (i.instance.clone(), format!("{}/{}", i.group, i.index))).collect();
    let _ = write!(
        body,
        r#"<h2>The last day</h2><div class="timeline-box" id="timeline">{}</div><p class="muted"><a href="/ui/deployments/{}/timeline.svg">The timeline alone (SVG)</a></p>"#,
        timeline_svg(events, now_ms, &labels),
        url_part(&d.name)
    );
    body.push_str("<h2>Latest events</h2><table class=\"events\"><tr><th>Time (UTC)</th><th>Instance</th><th>Event</th><th>Cause</th><th>Message</th></tr>");
    for e in events.iter().take(50) {
        let instance = e.instance.as_deref().map(|i| labels.get(i).cloned().unwrap_or_else(|| i.to_string()));
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&utc(e.time_ms)),
            esc(instance.as_deref().unwrap_or("")),
            esc(&e.action),
            esc(&e.cause),
            esc(&e.message)
        );
    }
    body.push_str("</table>");
    let _ = write!(body, r#"<p class="muted">As of {} UTC.</p>"#, utc_time(now_ms));
    layout(&format!("Deployment {}", d.name), true, &body)
}

/// A page for a deployment that does not exist, or another failure a person should read.
pub fn problem(title: &str, message: &str) -> String {
    layout(title, true, &format!(r#"<h1>{}</h1><p class="error">{}</p>"#, esc(title), esc(message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_types::api::InstanceState;

    fn view(name: &str) -> DeploymentView {
        DeploymentView {
            name: name.into(),
            releases: vec!["r/1".into()],
            stemcells: vec!["local/1".into()],
            instances: 1,
            cloud_config: "latest".into(),
        }
    }

    fn instance(group: &str, index: u32, az: &str, state: InstanceState) -> InstanceView {
        InstanceView {
            instance: format!("{group}/uuid-{index}"),
            group: group.into(),
            id: format!("uuid-{index}"),
            index,
            az: Some(az.into()),
            ips: vec!["10.0.0.1".into()],
            vm_cid: Some("vm-1".into()),
            agent_id: Some("a".into()),
            state,
            bootstrap: index == 0,
            stemcell: None,
            processes: None,
            vitals: None,
            disk_cids: vec![],
            generation: 1,
        }
    }

    #[test]
    fn the_grid_puts_each_instance_under_its_group_and_az_with_its_state() {
        let list = vec![
            instance("etcd", 0, "z1", InstanceState::Running),
            instance("etcd", 1, "z2", InstanceState::Missing),
            instance("worker", 0, "z1", InstanceState::Starting),
        ];
        let html = deployment(&view("k8s"), &list, &[], 1_800_000_000_000);
        assert!(html.contains(r#"<th>z1</th><th>z2</th>"#), "{html}");
        let row = html.split(r#"<tr data-group="etcd">"#).nth(1).unwrap().split("</tr>").next().unwrap();
        let cells: Vec<&str> = row.split("<td>").skip(1).collect();
        assert!(cells[0].contains(r#"data-instance="etcd/uuid-0" data-state="running""#));
        assert!(cells[1].contains(r#"data-instance="etcd/uuid-1" data-state="missing""#));
        assert!(html.contains(r#"data-state="starting">1 starting</span>"#));
    }

    #[test]
    fn stored_text_is_escaped_everywhere() {
        let mut d = view("<script>x</script>");
        d.releases = vec!["\"><img src=x>".into()];
        let html = overview("dir<1>", &[(d, BTreeMap::new())]);
        assert!(!html.contains("<script>x") && !html.contains("<img"), "{html}");
        assert!(html.contains("/ui/deployments/%3Cscript%3Ex%3C%2Fscript%3E"));
        let html = login("\"/><script>", Some("bad <token>"));
        assert!(!html.contains("<script>") && html.contains("bad &lt;token&gt;"));
    }
}
