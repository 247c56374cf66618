//! Lifecycle scripts (`bin/pre-start`, `bin/drain`, …): run for every job that has one, in
//! parallel, each bounded by a timeout (BOSH has none; a hung script is a known pain). Output goes
//! to the job's log directory, and its tail comes back to the director for the task log.

use crate::layout::Layout;
use bosun_types::protocol::{AgentMessage, LifecycleScript, ScriptResult};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const TAIL_BYTES: usize = 4096;

/// Runs `script` of each job that has it; jobs without it are left out of the result.
pub async fn run_all(
    layout: &Layout,
    jobs: &[String],
    script: LifecycleScript,
    args: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Vec<ScriptResult> {
    let name = script.to_string();
    let runs = jobs
        .iter()
        .filter(|job| layout.job(job).join(script.path()).is_file())
        .map(|job| run_one(layout, job, script.path(), &name, args, env, timeout));
    futures::future::join_all(runs).await
}

/// The errand of `job`: its `bin/run`, output into `run.log` in the job's log directory.
pub async fn run_errand(layout: &Layout, job: &str, timeout: Duration) -> Result<ScriptResult, String> {
    if !layout.job(job).join(ERRAND_SCRIPT).is_file() {
        return Err(format!("job `{job}` is not installed here or has no {ERRAND_SCRIPT}: it is not an errand"));
    }
    let env = BTreeMap::new();
    Ok(run_one(layout, job, ERRAND_SCRIPT, "run", &[], &env, timeout).await)
}

/// An errand job's script.
pub const ERRAND_SCRIPT: &str = "bin/run";

/// Sends every line appended to `log` after `from` bytes as progress on command `id`, every
/// half second, and what is left once `done` fires (an errand's output, live and whole).
pub async fn stream_lines(
    log: std::path::PathBuf,
    from: u64,
    id: u64,
    tx: tokio::sync::mpsc::Sender<AgentMessage>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) {
    use tokio::io::AsyncSeekExt;
    let mut offset = from;
    let mut partial = Vec::new();
    let mut last = false;
    while !last {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = &mut done => last = true,
        }
        let Ok(mut f) = tokio::fs::File::open(&log).await else { continue };
        if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf).await {
            offset += n as u64;
        }
        partial.extend_from_slice(&buf);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let message = String::from_utf8_lossy(&line[..line.len() - 1]).chars().take(2000).collect();
            if tx.send(AgentMessage::Progress { id, message }).await.is_err() {
                return;
            }
        }
    }
    if !partial.is_empty() {
        let message = String::from_utf8_lossy(&partial).chars().take(2000).collect();
        let _ = tx.send(AgentMessage::Progress { id, message }).await;
    }
}

async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin, log: Option<std::fs::File>) -> Vec<u8> {
    use std::io::Write;
    let mut log = log;
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
        }
    }
    tail
}

async fn run_one(
    layout: &Layout,
    job: &str,
    script: &str,
    log_name: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> ScriptResult {
    let started = Instant::now();
    let path = layout.job(job).join(script);
    let log_dir = layout.log_dir(job);
    let _ = tokio::fs::create_dir_all(&log_dir).await;
    let log = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(format!("{log_name}.log")))
        .await
    {
        Ok(f) => Some(f.into_std().await),
        Err(_) => None,
    };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(args)
        .current_dir(layout.job(job))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in layout.job_env(job) {
        cmd.env(k, v);
    }
    cmd.envs(env);
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ScriptResult {
                job: job.to_string(),
                exit_code: None,
                timed_out: false,
                output_tail: format!("could not start {}: {e}", path.display()),
                stdout_tail: String::new(),
                duration_ms: 0,
            };
        }
    };
    let pid = child.id();
    let out =
        tokio::spawn(read_capped(child.stdout.take().expect("piped"), log.as_ref().and_then(|f| f.try_clone().ok())));
    let err = tokio::spawn(read_capped(child.stderr.take().expect("piped"), log));
    let (exit_code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => (status.code(), false),
        Ok(Err(_)) => (None, false),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            (None, true)
        }
    };
    // Whatever the script left in its group must not outlive it (it would hold the pipes open).
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let stdout = out.await.unwrap_or_default();
    let mut tail = stdout.clone();
    tail.extend(err.await.unwrap_or_default());
    if tail.len() > TAIL_BYTES {
        tail.drain(..tail.len() - TAIL_BYTES);
    }
    ScriptResult {
        job: job.to_string(),
        exit_code,
        timed_out,
        output_tail: String::from_utf8_lossy(&tail).into_owned(),
        stdout_tail: String::from_utf8_lossy(&stdout).into_owned(),
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_with(scripts: &[(&str, &str)]) -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create().unwrap();
        for (job, body) in scripts {
            let d = layout.job(job).join("bin");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("pre-start"), body).unwrap();
            std::fs::set_permissions(d.join("pre-start"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        (dir, layout)
    }

    #[tokio::test]
    async fn scripts_run_per_job_with_their_environment_and_a_timeout() {
        let (_dir, layout) = layout_with(&[
            ("ok", "#!/bin/sh\necho \"job=$BOSUN_JOB_NAME next=$BOSH_VM_NEXT_STATE arg=$1\"\n"),
            ("bad", "#!/bin/sh\necho broken >&2\nexit 4\n"),
            ("hung", "#!/bin/sh\nsleep 600\n"),
        ]);
        let jobs: Vec<String> = ["ok", "bad", "hung", "none"].iter().map(|s| s.to_string()).collect();
        let mut env = BTreeMap::new();
        env.insert("BOSH_VM_NEXT_STATE".to_string(), "keep".to_string());
        let started = Instant::now();
        let results =
            run_all(&layout, &jobs, LifecycleScript::PreStart, &["x".into()], &env, Duration::from_millis(500)).await;
        assert!(started.elapsed() < Duration::from_secs(10), "a hung script is killed at its timeout");
        let by = |j: &str| results.iter().find(|r| r.job == j).unwrap().clone();
        assert_eq!(results.len(), 3, "a job without the script is left out");
        assert_eq!((by("ok").exit_code, by("ok").output_tail.trim()), (Some(0), "job=ok next=keep arg=x"));
        assert_eq!((by("bad").exit_code, by("bad").output_tail.trim()), (Some(4), "broken"));
        assert!(by("hung").timed_out && by("hung").exit_code.is_none());
        assert!(std::fs::read_to_string(layout.log_dir("ok").join("pre-start.log")).unwrap().contains("job=ok"));
    }
}
