//! How a running task is shown. On a terminal: each event's line scrolls above live bars
//! (indicatif) — per instance group the instances done of those to change, per instance in flight
//! its current step and time, compilation. Without a terminal: the lines alone. With `--json`:
//! each event as one JSON object per line. Every way ends with the same summary: each instance's
//! update time, compilation's, and the task's.
//!
//! [`Tally`] reads the events (pure); [`Display`] draws what it says.

use bosun_types::api::{EventLevel, TaskEvent, TaskState, TaskView};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

/// What the events of a task say about its work so far.
#[derive(Debug, Default)]
pub struct Tally {
    /// Instance groups in the order they began: name, instances to change.
    pub groups: Vec<(String, usize)>,
    /// Per instance (`group/uuid`), in the order they began.
    pub instances: Vec<InstanceWork>,
    /// When compilation began and ended (Unix ms), and its latest line.
    pub compile: Option<(u64, Option<u64>, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceWork {
    pub instance: String,
    pub canary: bool,
    pub began_ms: u64,
    pub ended_ms: Option<u64>,
    /// Its latest event (a deletion has no closing line: its last one ends it).
    pub last_ms: u64,
    /// The latest step reported.
    pub step: String,
    pub failed: bool,
}

impl InstanceWork {
    pub fn group(&self) -> &str {
        self.instance.split('/').next().unwrap_or(&self.instance)
    }
}

/// An update's last line, as the director reports it (`update/driver.rs`).
fn ends_update(stage: &str, message: &str) -> bool {
    stage == "update"
        && (message == "running"
            || message.starts_with("applied; jobs left stopped")
            || message.starts_with("stopped: ")
            || message.starts_with("detached: "))
}

impl Tally {
    pub fn observe(&mut self, e: &TaskEvent) {
        if e.stage == "compile" {
            let c = self.compile.get_or_insert((e.time_ms, None, String::new()));
            c.2 = e.message.clone();
            // The driver's last compile line sums up: "N package(s) compiled, M taken from the cache".
            if e.message.contains("package(s) compiled") {
                c.1 = Some(e.time_ms);
            }
            return;
        }
        let Some(instance) = &e.instance else {
            if let Some(rest) = e.message.strip_prefix("instance group `") {
                if let Some((name, rest)) = rest.split_once("`: ") {
                    let todo = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    self.groups.push((name.to_string(), todo));
                }
            }
            return;
        };
        let k = match self.instances.iter().rposition(|w| &w.instance == instance && w.ended_ms.is_none()) {
            Some(k) => k,
            None => {
                self.instances.push(InstanceWork {
                    instance: instance.clone(),
                    canary: e.message.starts_with("canary "),
                    began_ms: e.time_ms,
                    ended_ms: None,
                    last_ms: e.time_ms,
                    step: String::new(),
                    failed: false,
                });
                self.instances.len() - 1
            }
        };
        let w = &mut self.instances[k];
        w.step = e.message.lines().next().unwrap_or("").to_string();
        w.last_ms = e.time_ms;
        if e.level == EventLevel::Error {
            w.failed = true;
            w.ended_ms = Some(e.time_ms);
        } else if ends_update(&e.stage, &e.message) {
            w.ended_ms = Some(e.time_ms);
        }
    }

    /// Instances of `group` whose update ended.
    pub fn done_in(&self, group: &str) -> usize {
        self.instances.iter().filter(|w| w.group() == group && w.ended_ms.is_some()).count()
    }

    /// The closing lines: each instance's update time, compilation's, the task's.
    pub fn summary(&self, task: &TaskView) -> String {
        let ended_ms = task.ended_at.unwrap_or(task.started_at) * 1000;
        let secs = |from: u64, to: Option<u64>| to.unwrap_or(ended_ms).saturating_sub(from) as f64 / 1000.0;
        let mut out = String::new();
        if self.compile.is_some() || !self.instances.is_empty() {
            out.push_str("Durations:\n");
        }
        if let Some((from, to, _)) = &self.compile {
            out.push_str(&format!("  {:<48} {:>8.1} s\n", "compilation", secs(*from, *to)));
        }
        for w in &self.instances {
            let mut name = w.instance.clone();
            if w.canary {
                name.push_str(" (canary)");
            }
            // Work with no closing line (a deletion) ended with its last event when the task
            // succeeded; otherwise it was cut short.
            let done = task.state == TaskState::Done;
            let (until, end) = match (w.failed, w.ended_ms) {
                (true, at) => (at, "  failed"),
                (false, None) if done => (Some(w.last_ms), ""),
                (false, None) => (None, "  unfinished"),
                (false, at) => (at, ""),
            };
            out.push_str(&format!("  {name:<48} {:>8.1} s{end}\n", secs(w.began_ms, until)));
        }
        out
    }
}

/// An event as one line: `HH:MM:SS | stage       | instance: message`.
pub fn event_line(e: &TaskEvent) -> String {
    let who = e.instance.as_deref().map(|i| format!("{i}: ")).unwrap_or_default();
    let level = match e.level {
        EventLevel::Info => "",
        EventLevel::Warn => "warning: ",
        EventLevel::Error => "error: ",
    };
    format!("{} | {:<11} | {who}{level}{}", bosun_types::api::utc_time_of_day(e.time_ms), e.stage, e.message)
}

/// Whether stdout is a terminal that can redraw bars.
fn live_terminal() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
}

/// How events reach the operator.
pub enum Display {
    Lines,
    Json,
    Bars(Bars),
}

impl Display {
    /// Bars on a terminal, lines otherwise; JSON objects when asked.
    pub fn for_stdout(json: bool) -> Display {
        if json {
            Display::Json
        } else if live_terminal() {
            Display::Bars(Bars::default())
        } else {
            Display::Lines
        }
    }

    pub fn show(&mut self, e: &TaskEvent, tally: &Tally) {
        match self {
            Display::Lines => println!("{}", event_line(e)),
            Display::Json => {
                if let Ok(line) = serde_json::to_string(e) {
                    println!("{line}");
                }
            }
            Display::Bars(b) => b.show(e, tally),
        }
    }

    /// Takes the bars away before the closing lines are printed.
    pub fn finish(&mut self) {
        if let Display::Bars(b) = self {
            b.clear();
        }
    }
}

/// The live bars of a terminal.
#[derive(Default)]
pub struct Bars {
    multi: Option<MultiProgress>,
    groups: BTreeMap<String, ProgressBar>,
    instances: BTreeMap<String, ProgressBar>,
    compile: Option<ProgressBar>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

impl Bars {
    fn multi(&mut self) -> &MultiProgress {
        self.multi.get_or_insert_with(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()))
    }

    fn spinner(&mut self, prefix: String) -> ProgressBar {
        let bar = self.multi().add(ProgressBar::new_spinner());
        bar.set_style(style("  {spinner} {prefix} {elapsed:>4} {wide_msg}"));
        bar.set_prefix(prefix);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    fn show(&mut self, e: &TaskEvent, tally: &Tally) {
        let _ = self.multi().println(event_line(e));
        if e.stage == "compile" {
            let done = tally.compile.as_ref().is_some_and(|c| c.1.is_some());
            if self.compile.is_none() && !done {
                self.compile = Some(self.spinner("compiling".into()));
            }
            if let Some(bar) = &self.compile {
                bar.set_message(e.message.clone());
                if done {
                    bar.finish_and_clear();
                }
            }
        }
        for (name, todo) in &tally.groups {
            if !self.groups.contains_key(name) {
                let bar = self.multi().add(ProgressBar::new(*todo as u64));
                bar.set_style(style("{prefix:>16} [{bar:30}] {pos}/{len} updated {elapsed}"));
                bar.set_prefix(name.clone());
                self.groups.insert(name.clone(), bar);
            }
            self.groups[name].set_position(tally.done_in(name) as u64);
        }
        for w in &tally.instances {
            let bar = match self.instances.get(&w.instance) {
                Some(bar) => bar.clone(),
                None if w.ended_ms.is_none() => {
                    let mut prefix = w.instance.clone();
                    if w.canary {
                        prefix.push_str(" (canary)");
                    }
                    let bar = self.spinner(prefix);
                    self.instances.insert(w.instance.clone(), bar.clone());
                    bar
                }
                None => continue,
            };
            bar.set_message(w.step.clone());
            if w.ended_ms.is_some() {
                bar.finish_and_clear();
                self.instances.remove(&w.instance);
            }
        }
    }

    fn clear(&mut self) {
        for bar in self.instances.values().chain(self.groups.values()).chain(self.compile.iter()) {
            bar.finish_and_clear();
        }
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

/// A byte counter for an upload: a bar with bytes, rate and time left on a terminal, nothing
/// otherwise.
pub fn upload_bar(what: &str, len: u64) -> Option<ProgressBar> {
    if !live_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stdout());
    // The name gives way on a narrow terminal (a long tarball name); the bytes and rate stay.
    bar.set_style(style("{wide_msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} left"));
    bar.set_message(what.to_string());
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64, stage: &str, instance: Option<&str>, message: &str) -> TaskEvent {
        TaskEvent {
            seq: t,
            time_ms: t,
            level: EventLevel::Info,
            stage: stage.into(),
            instance: instance.map(str::to_string),
            message: message.into(),
        }
    }

    #[test]
    fn a_deploy_tallies_groups_instances_and_compilation_with_their_durations() {
        let mut t = Tally::default();
        let events = [
            ev(1_000, "compile", None, "compiling etcd/abc on VM vm-1"),
            ev(9_000, "compile", None, "1 package(s) compiled, 0 taken from the cache"),
            ev(9_500, "update", None, "instance group `db`: 2 to change in 2 batches, 1 canary, max_in_flight 1"),
            ev(10_000, "update", Some("db/a"), "canary create (new)"),
            ev(10_500, "create", Some("db/a"), "created VM vm-2"),
            ev(14_000, "update", Some("db/a"), "running"),
            ev(14_100, "update", Some("db/b"), "create (new)"),
        ];
        for e in &events {
            t.observe(e);
        }
        assert_eq!(t.groups, [("db".to_string(), 2)]);
        assert_eq!(t.done_in("db"), 1);
        assert_eq!(t.instances.len(), 2);
        assert!(t.instances[0].canary && !t.instances[1].canary);
        assert_eq!(t.instances[1].step, "create (new)");
        let mut failed = ev(20_000, "update", Some("db/b"), "starting jobs: keeps exiting\nits last words");
        failed.level = EventLevel::Error;
        t.observe(&failed);
        let task = TaskView {
            id: 4,
            state: TaskState::Error,
            description: "deploy".into(),
            deployment: Some("d".into()),
            started_at: 1,
            ended_at: Some(21),
            result: None,
            exit_code: None,
        };
        let summary = t.summary(&task);
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines[0], "Durations:");
        assert!(lines[1].starts_with("  compilation") && lines[1].ends_with("8.0 s"), "{summary}");
        assert!(lines[2].starts_with("  db/a (canary)") && lines[2].ends_with("4.0 s"), "{summary}");
        assert!(lines[3].starts_with("  db/b") && lines[3].ends_with("5.9 s  failed"), "{summary}");
        assert_eq!(t.instances[1].step, "starting jobs: keeps exiting");
    }

    #[test]
    fn an_instance_updated_twice_in_one_task_is_two_rows() {
        let mut t = Tally::default();
        for e in [
            ev(1, "update", Some("db/a"), "stop (stop)"),
            ev(2, "update", Some("db/a"), "stopped: jobs stopped"),
            ev(3, "update", Some("db/a"), "start (start)"),
            ev(4, "update", Some("db/a"), "running"),
        ] {
            t.observe(&e);
        }
        assert_eq!(t.instances.len(), 2);
        assert!(t.instances.iter().all(|w| w.ended_ms.is_some()));
    }

    #[test]
    fn a_deletion_ends_with_its_last_line_when_the_task_succeeded() {
        let mut t = Tally::default();
        t.observe(&ev(1_000, "delete", Some("db/a"), "deleting instance"));
        t.observe(&ev(3_500, "delete", Some("db/a"), "deleted disk d-1"));
        let mut task = TaskView {
            id: 5,
            state: TaskState::Done,
            description: "delete deployment".into(),
            deployment: Some("d".into()),
            started_at: 1,
            ended_at: Some(9),
            result: None,
            exit_code: None,
        };
        assert!(t.summary(&task).lines().nth(1).unwrap().ends_with(" 2.5 s"), "{}", t.summary(&task));
        task.state = TaskState::Cancelled;
        assert!(t.summary(&task).lines().nth(1).unwrap().ends_with(" 8.0 s  unfinished"), "{}", t.summary(&task));
    }

    #[test]
    fn event_lines_keep_their_shape() {
        let mut e = ev(3_723_000, "update", Some("db/a"), "running");
        assert_eq!(event_line(&e), "01:02:03 | update      | db/a: running");
        e.level = EventLevel::Warn;
        e.instance = None;
        assert_eq!(event_line(&e), "01:02:03 | update      | warning: running");
    }
}
