//! Supervises the jobs' processes, the way monit does for BOSH: starts each process declared in
//! the job specs in its own process group, restarts it with exponential backoff when it dies
//! (reporting it as failing meanwhile), and stops it with SIGTERM, a grace period, then SIGKILL to
//! the whole group.

use crate::layout::Layout;
use bosun_types::protocol::{ApplyJob, JobState, ProcessState, ProcessStatus};
use bosun_types::release::ProcessDefinition;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a process must stay up before it counts as running: enough to catch one that dies as
/// it starts. Longer checks are the deployment's watch time (the director looks again until its
/// upper bound), so this stays short and a deploy goes on as soon as the jobs run.
const RUNNING_AFTER: Duration = Duration::from_millis(300);
/// A process that stayed up this long starts its backoff afresh when it next dies.
const STABLE_AFTER: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

struct Supervised {
    job: String,
    name: String,
    state: Arc<Mutex<ProcessState>>,
    started: Arc<Mutex<Option<Instant>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

pub struct Supervisor {
    layout: Layout,
    procs: tokio::sync::Mutex<Vec<Supervised>>,
}

impl Supervisor {
    pub fn new(layout: Layout) -> Self {
        Self { layout, procs: tokio::sync::Mutex::new(Vec::new()) }
    }

    /// Kills processes a previous incarnation of the agent left running (their pid files remain),
    /// so a restarted agent never runs a job twice.
    pub async fn reap_leftovers(&self) {
        let run = self.layout.root.join("data/sys/run");
        let pids = tokio::task::spawn_blocking(move || leftover_pids(&run)).await.unwrap_or_default();
        for pid in pids {
            if pid <= 1 {
                continue;
            }
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + DEFAULT_GRACE;
            while Instant::now() < deadline && killpg(Pid::from_raw(pid), None).is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            tracing::info!(pid, "stopped a process left by an earlier agent");
        }
    }

    /// Starts every process of the jobs that is not already supervised. Idempotent.
    pub async fn start(&self, jobs: &[ApplyJob]) {
        let mut procs = self.procs.lock().await;
        for job in jobs {
            for def in &job.processes {
                if procs.iter().any(|p| p.job == job.name && p.name == def.name && !p.task.is_finished()) {
                    continue;
                }
                procs.retain(|p| !(p.job == job.name && p.name == def.name));
                let state = Arc::new(Mutex::new(ProcessState {
                    job: job.name.clone(),
                    name: def.name.clone(),
                    state: ProcessStatus::Starting,
                    pid: None,
                    restarts: 0,
                    uptime_secs: None,
                    last_exit: None,
                    last_words: None,
                }));
                let started = Arc::new(Mutex::new(None));
                let (tx, rx) = oneshot::channel();
                let task = tokio::spawn(supervise(
                    self.layout.clone(),
                    job.name.clone(),
                    def.clone(),
                    state.clone(),
                    started.clone(),
                    rx,
                ));
                procs.push(Supervised {
                    job: job.name.clone(),
                    name: def.name.clone(),
                    state,
                    started,
                    stop: Some(tx),
                    task,
                });
            }
        }
    }

    /// Stops every process and waits until all are gone. Idempotent.
    /// Stops every process (each given its shutdown grace) and waits for them all. The process
    /// table is let go of before the waiting, so heartbeats — which read it — flow on while a
    /// slow job stops.
    pub async fn stop(&self) {
        let stopping: Vec<Supervised> = {
            let mut procs = self.procs.lock().await;
            for p in procs.iter_mut() {
                if let Some(tx) = p.stop.take() {
                    let _ = tx.send(());
                }
            }
            procs.drain(..).collect()
        };
        for p in stopping {
            let _ = p.task.await;
        }
    }

    pub async fn states(&self) -> Vec<ProcessState> {
        let procs = self.procs.lock().await;
        procs
            .iter()
            .map(|p| {
                let mut s = p.state.lock().expect("process state lock").clone();
                s.uptime_secs = p.started.lock().expect("process start lock").map(|t| t.elapsed().as_secs());
                s
            })
            .collect()
    }

    /// The state of all jobs taken together.
    pub async fn job_state(&self, applied: bool, desired_running: bool) -> (JobState, Vec<ProcessState>) {
        let states = self.states().await;
        let js = if !applied {
            JobState::None
        } else if !desired_running {
            JobState::Stopped
        } else if states.iter().any(|s| s.state == ProcessStatus::Failing) {
            JobState::Failing
        } else if states.iter().any(|s| s.state == ProcessStatus::Starting) {
            JobState::Starting
        } else if states.iter().all(|s| s.state == ProcessStatus::Running) {
            JobState::Running
        } else {
            JobState::Stopped
        };
        (js, states)
    }
}

fn set(state: &Mutex<ProcessState>, f: impl FnOnce(&mut ProcessState)) {
    f(&mut state.lock().expect("process state lock"));
}

/// The pids a previous agent's pid files name (the files are removed as they are read).
fn leftover_pids(run: &std::path::Path) -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(jobs) = std::fs::read_dir(run) {
        for job in jobs.flatten() {
            if let Ok(files) = std::fs::read_dir(job.path()) {
                for f in files.flatten() {
                    if f.path().extension().is_some_and(|e| e == "pid") {
                        if let Some(pid) =
                            std::fs::read_to_string(f.path()).ok().and_then(|s| s.trim().parse::<i32>().ok())
                        {
                            pids.push(pid);
                        }
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
    }
    pids
}

/// The last two lines a process wrote to its stderr log before it exited, from the log's last
/// 64 KiB, each cut to 300 characters; a Go program's goroutine dump after its fatal line is left
/// out, so a crash's reason is what remains.
async fn last_words(log: &Path) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    const TAIL: u64 = 64 * 1024;
    let mut f = tokio::fs::File::open(log).await.ok()?;
    let len = f.metadata().await.ok()?.len();
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(TAIL))).await.ok()?;
    let mut bytes = Vec::new();
    f.take(TAIL).read_to_end(&mut bytes).await.ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if len > TAIL {
        lines.drain(..1.min(lines.len())); // a partial first line
    }
    if let Some(dump) = lines.iter().position(|l| l.starts_with("goroutine ") && l.trim_end().ends_with("]:")) {
        lines.truncate(dump);
    }
    let last: Vec<String> = lines
        .iter()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(2)
        .map(|l| l.trim().chars().take(300).collect())
        .collect::<Vec<String>>()
        .into_iter()
        .rev()
        .collect();
    (!last.is_empty()).then(|| last.join(" | "))
}

async fn spawn_process(layout: &Layout, job: &str, def: &ProcessDefinition) -> std::io::Result<tokio::process::Child> {
    let job_dir = layout.job(job);
    let exe =
        if def.executable.starts_with('/') { def.executable.clone().into() } else { job_dir.join(&def.executable) };
    let log_dir = layout.log_dir(job);
    tokio::fs::create_dir_all(&log_dir).await?;
    tokio::fs::create_dir_all(layout.run_dir(job)).await?;
    let open = |suffix: &str| {
        let path = log_dir.join(format!("{}.{suffix}.log", def.name));
        async move { tokio::fs::OpenOptions::new().create(true).append(true).open(path).await }
    };
    let (stdout, stderr) = (open("stdout").await?.into_std().await, open("stderr").await?.into_std().await);
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(&def.args).current_dir(&job_dir).stdin(std::process::Stdio::null()).stdout(stdout).stderr(stderr);
    for (k, v) in layout.job_env(job) {
        cmd.env(k, v);
    }
    cmd.envs(&def.env);
    cmd.process_group(0);
    cmd.spawn()
}

async fn terminate(child: &mut tokio::process::Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let Some(pid) = child.id() else { return child.wait().await.ok() };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            // The leader is gone; take the rest of its group with it.
            let _ = killpg(group, Signal::SIGKILL);
            status.ok()
        }
        Err(_) => {
            let _ = killpg(group, Signal::SIGKILL);
            child.wait().await.ok()
        }
    }
}

async fn supervise(
    layout: Layout,
    job: String,
    def: ProcessDefinition,
    state: Arc<Mutex<ProcessState>>,
    started: Arc<Mutex<Option<Instant>>>,
    mut stop: oneshot::Receiver<()>,
) {
    let grace = def.shutdown_grace.map(Duration::from_secs).unwrap_or(DEFAULT_GRACE);
    let pid_file = layout.run_dir(&job).join(format!("{}.pid", def.name));
    let mut backoff = Duration::from_secs(1);
    loop {
        let run_started = Instant::now();
        match spawn_process(&layout, &job, &def).await {
            Err(e) => {
                tracing::warn!(job, process = def.name, error = %e, "could not start process");
                set(&state, |s| s.last_exit = Some(format!("could not start: {e}")));
            }
            Ok(mut child) => {
                let pid = child.id();
                if let Some(pid) = pid {
                    let _ = tokio::fs::write(&pid_file, pid.to_string()).await;
                }
                set(&state, |s| {
                    s.pid = pid;
                    if s.state != ProcessStatus::Failing {
                        s.state = ProcessStatus::Starting;
                    }
                });
                *started.lock().expect("process start lock") = Some(Instant::now());
                tracing::info!(job, process = def.name, pid, "process started");
                let running_timer = tokio::time::sleep(RUNNING_AFTER);
                tokio::pin!(running_timer);
                let mut promoted = false;
                let exit = loop {
                    tokio::select! {
                        status = child.wait() => break status,
                        _ = &mut running_timer, if !promoted => {
                            promoted = true;
                            set(&state, |s| s.state = ProcessStatus::Running);
                        }
                        _ = &mut stop => {
                            let status = terminate(&mut child, grace).await;
                            let _ = tokio::fs::remove_file(&pid_file).await;
                            *started.lock().expect("process start lock") = None;
                            set(&state, |s| { s.state = ProcessStatus::Stopped; s.pid = None; s.last_exit = status.map(|st| st.to_string()); });
                            tracing::info!(job, process = def.name, "process stopped");
                            return;
                        }
                    }
                };
                let _ = tokio::fs::remove_file(&pid_file).await;
                // Take down anything the process left in its group before starting afresh.
                if let Some(pid) = pid {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                let how = match exit {
                    Ok(st) => st.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                tracing::warn!(job, process = def.name, exit = how, "process exited; restarting with backoff");
                let words = last_words(&layout.log_dir(&job).join(format!("{}.stderr.log", def.name))).await;
                set(&state, |s| {
                    s.last_exit = Some(how);
                    s.last_words = words;
                });
                if run_started.elapsed() > STABLE_AFTER {
                    backoff = Duration::from_secs(1);
                }
            }
        }
        *started.lock().expect("process start lock") = None;
        set(&state, |s| {
            s.state = ProcessStatus::Failing;
            s.pid = None;
            s.restarts += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut stop => {
                set(&state, |s| s.state = ProcessStatus::Stopped);
                return;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_types::protocol::BlobRef;

    fn job(layout: &Layout, name: &str, script: &str) -> ApplyJob {
        let dir = layout.root.join("data/jobs").join(name);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let exe = dir.join("bin/run");
        std::fs::write(&exe, script).unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let _ = std::fs::remove_file(layout.job(name));
        std::os::unix::fs::symlink(&dir, layout.job(name)).unwrap();
        ApplyJob {
            name: name.into(),
            release: "r".into(),
            fingerprint: "f".into(),
            rendered: BlobRef { digest: "sha256:00".into(), size: 0 },
            processes: vec![ProcessDefinition {
                name: "main".into(),
                executable: "bin/run".into(),
                args: vec![],
                env: Default::default(),
                shutdown_grace: Some(1),
            }],
            packages: vec![],
        }
    }

    async fn wait_for(sup: &Supervisor, what: &str, f: impl Fn(&ProcessState) -> bool) -> ProcessState {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = sup.states().await.into_iter().find(|s| f(s)) {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {:?}", sup.states().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn last_words_are_the_lines_before_a_go_programs_goroutine_dump() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("kubelet.stderr.log");
        std::fs::write(
            &log,
            "I1130 14:04:28.1 server.go:416] Version: v1.20.2\n\
             F1130 14:04:28.4 server.go:215] invalid configuration: imageGCHighThresholdPercent 150\n\
             goroutine 1 [running]:\n\
             k8s.io/kubernetes/vendor/k8s.io/klog/v2.stacks(0xc000010001)\n\n\
             goroutine 6 [chan receive]:\n",
        )
        .unwrap();
        assert_eq!(
            last_words(&log).await.as_deref(),
            Some(
                "I1130 14:04:28.1 server.go:416] Version: v1.20.2 | \
                 F1130 14:04:28.4 server.go:215] invalid configuration: imageGCHighThresholdPercent 150"
            )
        );
        assert_eq!(last_words(&dir.path().join("none.log")).await, None);
        // A long line is cut; a long log is read from its end.
        std::fs::write(&log, format!("{}\nlast\n", "x".repeat(100_000))).unwrap();
        assert_eq!(last_words(&log).await.as_deref(), Some("last"));
    }

    #[tokio::test]
    async fn a_process_that_keeps_dying_is_restarted_with_backoff_and_reported_failing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create().unwrap();
        let sup = Supervisor::new(layout.clone());
        sup.start(&[job(&layout, "crashy", "#!/bin/sh\necho dying >&2\nexit 3\n")]).await;
        let s = wait_for(&sup, "two restarts", |s| s.restarts >= 2).await;
        assert_eq!(s.state, ProcessStatus::Failing);
        assert_eq!(s.last_exit.as_deref(), Some("exit status: 3"));
        assert_eq!(s.last_words.as_deref(), Some("dying | dying"), "its stderr's last lines");
        assert_eq!(sup.job_state(true, true).await.0, JobState::Failing);
        let log = std::fs::read_to_string(layout.log_dir("crashy").join("main.stderr.log")).unwrap();
        assert!(log.contains("dying"), "the process's output goes to the job's log");
        sup.stop().await;
        assert_eq!(sup.job_state(true, false).await.0, JobState::Stopped);
    }

    #[tokio::test]
    async fn stop_ends_the_whole_process_group_even_when_sigterm_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create().unwrap();
        let sup = Supervisor::new(layout.clone());
        let marker = dir.path().join("child.pid");
        let script = format!(
            "#!/bin/sh\ntrap '' TERM\nsleep 600 &\necho $! > {}\nwhile true; do sleep 1; done\n",
            marker.display()
        );
        sup.start(&[job(&layout, "stubborn", &script)]).await;
        let s = wait_for(&sup, "running", |s| s.state == ProcessStatus::Running).await;
        assert_eq!(sup.job_state(true, true).await.0, JobState::Running);
        let leader = s.pid.unwrap() as i32;
        let child: i32 = loop {
            if let Some(p) = std::fs::read_to_string(&marker).ok().and_then(|t| t.trim().parse().ok()) {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Starting again is idempotent: no second copy.
        sup.start(&[job(&layout, "stubborn", &script)]).await;
        assert_eq!(sup.states().await.len(), 1);
        sup.stop().await;
        // SIGKILLed: gone once the kernel has finished them (a loaded machine takes a moment).
        let alive = |pid: i32| {
            nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while [leader, child].iter().any(|p| alive(*p)) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pid in [leader, child] {
            assert!(!alive(pid), "process {pid} survived stop");
        }
        assert!(!layout.run_dir("stubborn").join("main.pid").exists());
    }

    #[tokio::test]
    async fn the_process_table_stays_readable_while_a_slow_job_stops() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create().unwrap();
        let sup = std::sync::Arc::new(Supervisor::new(layout.clone()));
        // Ignores SIGTERM for 15 s, then exits; its grace is etcd's, longer (more than three
        // heartbeats: an agent that stopped heartbeating meanwhile would count as silent).
        let mut slow =
            job(&layout, "slow", "#!/bin/bash\ntrap 'sleep 15; exit 0' TERM\nwhile true; do sleep 0.1; done\n");
        slow.processes[0].shutdown_grace = Some(20);
        sup.start(&[slow]).await;
        wait_for(&sup, "running", |s| s.state == ProcessStatus::Running).await;
        let stopping = {
            let sup = sup.clone();
            tokio::spawn(async move { sup.stop().await })
        };
        // While it stops, what heartbeats read answers at once, again and again.
        let started = std::time::Instant::now();
        let mut reads = 0;
        while !stopping.is_finished() {
            let asked = std::time::Instant::now();
            let _ = tokio::time::timeout(Duration::from_millis(500), sup.job_state(true, false))
                .await
                .expect("the process table answers within 500 ms while a job stops");
            assert!(asked.elapsed() < Duration::from_millis(500));
            reads += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stopping.await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(14), "the job took its time to stop");
        assert!(reads >= 100, "read {reads} times while stopping");
    }
}
