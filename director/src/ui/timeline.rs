//! The event timeline drawn to scale as SVG: one lane for tasks, one per instance. An instance's
//! update is a bar from its start to `running` (or to its task's end when it failed); a VM's death
//! (the last time its agent was heard), its detection, its resurrection and its running again are
//! marked points. Every mark carries `data-kind`, `data-instance` and `data-time-ms`, so a program
//! reads the picture as a person does. Pure: events and a time in, text out.

use super::escape::esc;
use bosun_types::api::EventView;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The picture's geometry, in SVG user units.
const WIDTH: f64 = 1100.0;
const LABELS: f64 = 190.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 34.0;
const LANE: f64 = 24.0;
const LEGEND: f64 = 36.0;
/// The longest time the picture spans: the last day.
pub const DAY_MS: u64 = 24 * 3600 * 1000;
/// The shortest span: a resurrection on a fast cloud takes about a second, and its four marks
/// must still read apart.
const MIN_SPAN_MS: u64 = 10_000;

/// Actions that begin an instance's update, and those that end it.
const UPDATE_STARTS: &[&str] = &["create", "update", "recreate", "restart", "start", "stop", "detach"];
const UPDATE_ENDS: &[&str] = &["running", "stopped", "detached"];

/// What a marked point on an instance's lane stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The agent was last heard: when the VM died, as near as the director can know.
    Death,
    /// The health monitor found it unresponsive or missing.
    Detection,
    /// A resurrection began.
    Resurrection,
    /// The instance's jobs run (an update's end).
    Running,
    /// Anything else on the timeline (a process restarted, a disk orphaned, …).
    Other,
}

impl Mark {
    fn kind(self) -> &'static str {
        match self {
            Mark::Death => "death",
            Mark::Detection => "detection",
            Mark::Resurrection => "resurrection",
            Mark::Running => "running",
            Mark::Other => "other",
        }
    }

    fn of(action: &str) -> Mark {
        match action {
            "unresponsive" | "missing" => Mark::Detection,
            "resurrect" => Mark::Resurrection,
            "running" | "recovered" => Mark::Running,
            _ => Mark::Other,
        }
    }

    /// The shape, centred on the origin.
    fn shape(self) -> &'static str {
        match self {
            Mark::Death => r##"<path d="M-6,-6L6,6M-6,6L6,-6" stroke="#b3261e" stroke-width="3"/>"##,
            Mark::Detection => r##"<path d="M0,-7L7,0L0,7L-7,0Z" fill="#e8a317" stroke="#6b4a00"/>"##,
            Mark::Resurrection => r##"<path d="M-7,6L0,-7L7,6Z" fill="#2f6fdf" stroke="#123a80"/>"##,
            Mark::Running => r##"<circle r="6" fill="#2e9d4f" stroke="#14532d"/>"##,
            Mark::Other => r##"<rect x="-1.5" y="-7" width="3" height="14" fill="#7a7a7a"/>"##,
        }
    }
}

/// One lane: a name shown at the left and its display label.
struct Lane {
    key: String,
    label: String,
}

/// The timeline of `events` (any order) as it stood at `now_ms`, over the last day cut to where
/// its events begin. `labels` names instances (`group/uuid` → `group/0`) where known.
pub fn timeline_svg(events: &[EventView], now_ms: u64, labels: &BTreeMap<String, String>) -> String {
    let day_start = now_ms.saturating_sub(DAY_MS);
    let mut events: Vec<&EventView> = events.iter().filter(|e| e.time_ms >= day_start && e.time_ms <= now_ms).collect();
    events.sort_by_key(|e| (e.time_ms, e.id));
    let first =
        events.iter().map(|e| e.since_ms.unwrap_or(e.time_ms).min(e.time_ms)).min().unwrap_or(now_ms).max(day_start);
    let span = now_ms.saturating_sub(first).max(MIN_SPAN_MS);
    // A little room before the first event, so a mark on it is not cut.
    let start = now_ms.saturating_sub(span + span / 30).max(day_start);
    let end = now_ms;
    let scale = (WIDTH - LABELS - RIGHT) / (end - start).max(1) as f64;
    let x = |t: u64| LABELS + (t.clamp(start, end) - start) as f64 * scale;

    let mut lanes = vec![Lane { key: String::new(), label: "tasks".into() }];
    let mut instances: Vec<&str> = events.iter().filter_map(|e| e.instance.as_deref()).collect();
    instances.sort_by_key(|i| (labels.get(*i).map(|l| lane_order(l)), i.to_string()));
    instances.dedup();
    for i in instances {
        lanes.push(Lane { key: i.to_string(), label: labels.get(i).cloned().unwrap_or_else(|| short_name(i)) });
    }
    let lane_y = |key: &str| {
        let k = lanes.iter().position(|l| l.key == key).unwrap_or(0);
        TOP + LANE * k as f64 + LANE / 2.0
    };
    let height = TOP + LANE * lanes.len() as f64 + LEGEND;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" data-start-ms="{start}" data-end-ms="{end}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(svg, "<title>Events from {} to {} (UTC)</title>", utc(start), utc(end));
    svg.push_str(r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    for (k, lane) in lanes.iter().enumerate() {
        let y = TOP + LANE * k as f64;
        if k % 2 == 1 {
            let _ = write!(svg, r##"<rect x="0" y="{y}" width="{WIDTH}" height="{LANE}" fill="#f3f5f8"/>"##);
        }
        let _ = write!(
            svg,
            r##"<text x="8" y="{}" fill="#222" class="lane" data-lane="{}">{}</text>"##,
            y + LANE / 2.0 + 4.0,
            esc(&lane.key),
            esc(&lane.label)
        );
    }
    axis(&mut svg, start, end, height - LEGEND, &x);

    // Task bars: from each task's start to its end (or now).
    let mut tasks: BTreeMap<u64, (u64, Option<u64>, String, bool)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.object_type == "task") {
        let Some(id) = e.task else { continue };
        match e.action.as_str() {
            "start" => {
                tasks.insert(id, (e.time_ms, None, e.message.clone(), true));
            }
            "end" => {
                let t = tasks.entry(id).or_insert((start, None, String::new(), true));
                t.1 = Some(e.time_ms);
                // The end's message begins with the task's state: done, error or cancelled.
                t.3 = e.message.starts_with("done");
            }
            _ => {}
        }
    }
    let y = lane_y("");
    for (id, (from, to, what, ok)) in &tasks {
        let (x0, x1) = (x(*from), x(to.unwrap_or(end)));
        let fill = if what.starts_with("resurrect") {
            "#9bb8ef"
        } else if *ok {
            "#c9c3e6"
        } else {
            "#f0a8a3"
        };
        let _ = write!(
            svg,
            r##"<rect class="task" data-task="{id}" x="{x0:.1}" y="{}" width="{:.1}" height="12" rx="2" fill="{fill}" stroke="#5a4f8c"><title>task {id}: {} ({}–{})</title></rect>"##,
            y - 6.0,
            (x1 - x0).max(2.0),
            esc(what),
            utc_time(*from),
            to.map(utc_time).unwrap_or_else(|| "running".into()),
        );
    }

    // Update bars per instance: an update's start to its end, or to its task's end.
    let mut open: BTreeMap<&str, (u64, Option<u64>, &str)> = BTreeMap::new();
    let mut bars: Vec<(&str, u64, u64, &str, bool)> = vec![];
    for e in &events {
        let Some(i) = e.instance.as_deref() else { continue };
        if UPDATE_STARTS.contains(&e.action.as_str()) {
            open.insert(i, (e.time_ms, e.task, e.action.as_str()));
        } else if UPDATE_ENDS.contains(&e.action.as_str()) {
            if let Some((from, _, what)) = open.remove(i) {
                bars.push((i, from, e.time_ms, what, true));
            }
        }
    }
    for (i, (from, task, what)) in open {
        let until = task.and_then(|t| tasks.get(&t)).and_then(|t| t.1);
        bars.push((i, from, until.unwrap_or(end), what, until.is_none()));
    }
    for (i, from, to, what, ok) in bars {
        let (x0, x1) = (x(from), x(to));
        let fill = if ok { "#a8d5b5" } else { "#f0a8a3" };
        let _ = write!(
            svg,
            r##"<rect class="update" data-instance="{}" x="{x0:.1}" y="{}" width="{:.1}" height="10" rx="2" fill="{fill}" stroke="#3d6b4c"><title>{} {}: {}–{}</title></rect>"##,
            esc(i),
            lane_y(i) - 5.0,
            (x1 - x0).max(2.0),
            esc(what),
            esc(labels.get(i).map(String::as_str).unwrap_or(i)),
            utc_time(from),
            utc_time(to),
        );
    }

    // Marks, drawn last so bars never hide them.
    for e in &events {
        let Some(i) = e.instance.as_deref() else { continue };
        if UPDATE_STARTS.contains(&e.action.as_str()) {
            continue; // an update's bar begins there
        }
        let mark = Mark::of(&e.action);
        if mark == Mark::Detection {
            if let Some(died) = e.since_ms.filter(|s| *s <= e.time_ms) {
                point(&mut svg, Mark::Death, i, died, x(died), lane_y(i), "agent last heard", "");
            }
        }
        point(&mut svg, mark, i, e.time_ms, x(e.time_ms), lane_y(i), &e.action, &e.message);
    }
    legend(&mut svg, height - LEGEND + 22.0);
    svg.push_str("</svg>");
    svg
}

/// Lanes sort by group, then index (`group/10` after `group/9`).
fn lane_order(label: &str) -> (String, u64) {
    let (group, index) = label.rsplit_once('/').unwrap_or((label, ""));
    (group.to_string(), index.parse().unwrap_or(u64::MAX))
}

/// `group/uuid` → `group/uuid-prefix`.
fn short_name(instance: &str) -> String {
    match instance.split_once('/') {
        Some((g, id)) => format!("{g}/{}", id.get(..8).unwrap_or(id)),
        None => instance.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn point(svg: &mut String, mark: Mark, instance: &str, t: u64, x: f64, y: f64, action: &str, message: &str) {
    let _ = write!(
        svg,
        r#"<g class="mark" data-kind="{}" data-instance="{}" data-time-ms="{t}" transform="translate({x:.1},{y:.1})"><title>{} {}{}{}</title>{}</g>"#,
        mark.kind(),
        esc(instance),
        utc_time(t),
        esc(action),
        if message.is_empty() { "" } else { ": " },
        esc(message),
        mark.shape()
    );
}

/// Ticks at a round interval, about eight across, labelled in UTC.
fn axis(svg: &mut String, start: u64, end: u64, bottom: f64, x: &dyn Fn(u64) -> f64) {
    const STEPS_MS: &[u64] = &[
        1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
        7_200_000, 10_800_000, 21_600_000,
    ];
    let span = end - start;
    let step = STEPS_MS.iter().copied().find(|s| span / s <= 8).unwrap_or(21_600_000);
    let mut t = start.div_ceil(step) * step;
    while t <= end {
        let xt = x(t);
        let label = if step < 60_000 { utc_time(t) } else { utc_time(t)[..5].to_string() };
        let _ = write!(
            svg,
            r##"<line x1="{xt:.1}" x2="{xt:.1}" y1="{}" y2="{bottom}" stroke="#d0d4da"/><text x="{xt:.1}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            TOP - 4.0,
            TOP - 10.0
        );
        t += step;
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="12" text-anchor="start" fill="#555">{} – {} UTC</text>"##,
        8,
        utc(start),
        utc_time(end)
    );
}

fn legend(svg: &mut String, y: f64) {
    let items = [
        (Mark::Death, "VM died (agent last heard)"),
        (Mark::Detection, "detected"),
        (Mark::Resurrection, "resurrection"),
        (Mark::Running, "running"),
        (Mark::Other, "other event"),
    ];
    let mut x = LABELS;
    for (mark, text) in items {
        let _ = write!(
            svg,
            r##"<g class="legend" transform="translate({x},{y})">{}<text x="12" y="4" fill="#333">{text}</text></g>"##,
            mark.shape()
        );
        x += 40.0 + text.len() as f64 * 6.0;
    }
    let _ = write!(
        svg,
        r##"<rect x="{x}" y="{}" width="18" height="10" fill="#a8d5b5" stroke="#3d6b4c"/><text x="{}" y="{}" fill="#333">an instance's update</text>"##,
        y - 5.0,
        x + 24.0,
        y + 4.0
    );
}

/// `2026-12-01 03:04:05` (UTC).
pub fn utc(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string().trim_end_matches('Z').replace('T', " ")
}

pub use bosun_types::api::utc_time_of_day as utc_time;

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64, t: u64, action: &str, instance: Option<&str>, task: Option<u64>) -> EventView {
        EventView {
            id,
            time_ms: t,
            action: action.into(),
            object_type: if instance.is_some() { "instance" } else { "task" }.into(),
            object_name: instance.unwrap_or("7").into(),
            deployment: Some("d".into()),
            instance: instance.map(str::to_string),
            task,
            cause: "test".into(),
            message: format!("<{action}> & \"so\""),
            since_ms: None,
        }
    }

    /// The (kind, time, x) of every mark of an instance, in document order.
    fn marks(svg: &str, instance: &str) -> Vec<(String, u64, f64)> {
        svg.split("<g class=\"mark\" ")
            .skip(1)
            .filter(|g| g.contains(&format!("data-instance=\"{instance}\"")))
            .map(|g| {
                let attr = |name: &str| g.split(&format!("{name}=\"")).nth(1).unwrap().split('"').next().unwrap();
                let x: f64 =
                    attr("transform").trim_start_matches("translate(").split(',').next().unwrap().parse().unwrap();
                (attr("data-kind").to_string(), attr("data-time-ms").parse().unwrap(), x)
            })
            .collect()
    }

    #[test]
    fn a_resurrection_reads_death_detection_resurrection_running_left_to_right_to_scale() {
        let now = 1_800_000_000_000;
        let t0 = now - 120_000;
        let mut detected = ev(5, t0 + 40_000, "missing", Some("db/aaa"), None);
        detected.since_ms = Some(t0 + 37_000);
        let events = vec![
            ev(1, t0, "start", None, Some(3)),
            ev(2, t0 + 1_000, "create", Some("db/aaa"), Some(3)),
            ev(3, t0 + 9_000, "running", Some("db/aaa"), Some(3)),
            ev(4, t0 + 10_000, "end", None, Some(3)),
            detected,
            ev(6, t0 + 41_000, "resurrect", Some("db/aaa"), Some(4)),
            ev(7, t0 + 41_000, "start", None, Some(4)),
            ev(8, t0 + 42_000, "recreate", Some("db/aaa"), Some(4)),
            ev(9, t0 + 60_000, "running", Some("db/aaa"), Some(4)),
            ev(10, t0 + 61_000, "end", None, Some(4)),
        ];
        let labels = BTreeMap::from([("db/aaa".to_string(), "db/0".to_string())]);
        let svg = timeline_svg(&events, now, &labels);
        let got = marks(&svg, "db/aaa");
        let kinds: Vec<&str> = got.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(kinds, ["running", "death", "detection", "resurrection", "running"]);
        assert!(got.windows(2).all(|w| w[0].2 <= w[1].2), "left to right: {got:?}");
        // To scale: the 3 s from death to detection against the 19 s from resurrection to running.
        let (d, det, res, run) = (got[1].2, got[2].2, got[3].2, got[4].2);
        let ratio = (run - res) / (det - d);
        assert!((ratio - 19.0 / 3.0).abs() < 0.1, "{ratio}");
        // Two update bars (the deploy's create and the resurrection's recreate), two task bars.
        assert_eq!(svg.matches("class=\"update\"").count(), 2);
        assert_eq!(svg.matches("class=\"task\"").count(), 2);
        assert!(svg.contains(">db/0</text>"), "lanes show instance labels");
        // Text is escaped: a message can never open an element.
        assert!(!svg.contains("<missing>") && svg.contains("&lt;missing&gt; &amp; &quot;so&quot;"));
    }

    #[test]
    fn the_window_is_the_last_day_cut_to_its_first_event_and_an_unfinished_update_runs_to_now() {
        let now = 1_800_000_000_000;
        let old = ev(1, now - DAY_MS - 5_000, "running", Some("db/old"), None);
        let mut fresh = ev(2, now - 30_000, "update", Some("db/new"), Some(9));
        fresh.task = Some(9);
        let svg = timeline_svg(&[old, fresh], now, &BTreeMap::new());
        assert!(!svg.contains("db/old"), "events before the last day are not drawn");
        let start: u64 = svg.split("data-start-ms=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
        assert_eq!(start, now - 31_000, "30 s of events and a thirtieth before them");
        // Still updating: its bar reaches the right edge.
        let bar = svg.split("class=\"update\"").nth(1).unwrap();
        let num = |name: &str| -> f64 {
            bar.split(&format!("{name}=\"")).nth(1).unwrap().split('"').next().unwrap().parse().unwrap()
        };
        assert!((num("x") + num("width") - (WIDTH - RIGHT)).abs() < 0.5);
        assert!(svg.contains(">db/new</text>"), "an unknown instance shows its short name");
    }

    #[test]
    fn no_events_is_an_empty_axis_not_an_error() {
        let svg = timeline_svg(&[], 1_800_000_000_000, &BTreeMap::new());
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"mark\"").count(), 0);
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(3_723_000), "01:02:03");
    }
}
