//! Lifecycle scripts (`bin/pre-start`, `bin/drain`, …): run for every job that has one, in
//! parallel, each bounded by a timeout (BOSH has none; a hung script is a known pain). Output goes
//! to the job's log directory, and its tail comes back to the director for the task log.

use crate::layout::Layout;
use bosun_types::protocol::{LifecycleScript, ScriptResult};
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
    let runs = jobs
        .iter()
        .filter(|job| layout.job(job).join(script.path()).is_file())
        .map(|job| run_one(layout, job, script, args, env, timeout));
    futures::future::join_all(runs).await
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
    script: LifecycleScript,
    args: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> ScriptResult {
    let started = Instant::now();
    let path = layout.job(job).join(script.path());
    let log_dir = layout.log_dir(job);
    let _ = std::fs::create_dir_all(&log_dir);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_dir.join(format!("{script}.log"))).ok();
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
    let mut tail = out.await.unwrap_or_default();
    tail.extend(err.await.unwrap_or_default());
    if tail.len() > TAIL_BYTES {
        tail.drain(..tail.len() - TAIL_BYTES);
    }
    ScriptResult {
        job: job.to_string(),
        exit_code,
        timed_out,
        output_tail: String::from_utf8_lossy(&tail).into_owned(),
        duration_ms: started.elapsed().as_millis() as u64,
    }
}
