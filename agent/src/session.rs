//! The agent's connection to the director and the commands it carries out.

use crate::dialer::Dialer;
use crate::installer::Installer;
use crate::layout::Layout;
use crate::supervisor::Supervisor;
use crate::AgentError;
use bosun_types::protocol::{
    encode_line, AgentCommand, AgentMessage, AgentSettings, ApplySpec, CommandOutcome, DirectorMessage, Heartbeat,
    StemcellInfo, MAX_LINE_BYTES,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Mutex};
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;

const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// What the agent has been told to be, on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ledger {
    spec: Option<ApplySpec>,
    /// Whether the jobs should be running (start/stop).
    running: bool,
    /// The persistent disk mounted at the store directory, and its path.
    #[serde(default)]
    mounted_disk: Option<(String, PathBuf)>,
    /// The device of that disk when it is one (mounted at the path), to mount again after a
    /// restart of the VM.
    #[serde(default)]
    mounted_device: Option<PathBuf>,
}

/// How long a cloud volume's device may take to show once the CPI attached it.
const DEVICE_WAIT: Duration = Duration::from_secs(60);

pub struct Agent {
    settings: AgentSettings,
    layout: Layout,
    /// Where the machine's devices are (`/dev`).
    dev: PathBuf,
    dialer: Dialer,
    stemcell: Option<StemcellInfo>,
    supervisor: Supervisor,
    ledger: Mutex<Ledger>,
    /// Serializes commands that change what is installed or running.
    op_lock: Mutex<()>,
    heartbeat_ms: AtomicU64,
    /// The VM's SSH server, once started.
    ssh: tokio::sync::OnceCell<Arc<crate::ssh::SshServer>>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting to {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("the director closed the connection")]
    Closed,
    #[error("the director did not welcome us: {0}")]
    NoWelcome(String),
    #[error("reading from the director")]
    Read(#[source] tokio_util::codec::LinesCodecError),
}

impl Agent {
    pub fn new(
        settings: AgentSettings,
        layout: Layout,
        dev: PathBuf,
        stemcell: Option<StemcellInfo>,
    ) -> Result<Arc<Self>, AgentError> {
        let dialer = Dialer::new(&settings.director)?;
        let ledger =
            std::fs::read(layout.ledger()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Ok(Arc::new(Self {
            supervisor: Supervisor::new(layout.clone()),
            settings,
            layout,
            dev,
            dialer,
            stemcell,
            ledger: Mutex::new(ledger),
            op_lock: Mutex::new(()),
            heartbeat_ms: AtomicU64::new(DEFAULT_HEARTBEAT.as_millis() as u64),
            ssh: tokio::sync::OnceCell::new(),
        }))
    }

    pub async fn run(self: Arc<Self>) {
        tracing::info!(agent_id = %self.settings.agent_id, vm_cid = %self.settings.vm_cid, "agent starting");
        self.supervisor.reap_leftovers().await;
        match crate::ssh::SshServer::start(&self.layout, &self.settings.networks).await {
            Ok(server) => {
                let _ = self.ssh.set(server);
            }
            Err(e) => tracing::warn!(error = %error_chain(&e), "serving no SSH"),
        }
        {
            // Come back to the same disk and jobs without the director's help.
            let ledger = self.ledger.lock().await;
            if let (Some((cid, at)), Some(device)) = (&ledger.mounted_disk, &ledger.mounted_device) {
                if let Err(e) = crate::disks::mount_device(device, at).await {
                    tracing::error!(disk = %cid, error = %error_chain(&e), "mounting the persistent disk again");
                }
            }
            if let (true, Some(spec)) = (ledger.running, &ledger.spec) {
                tracing::info!(generation = spec.generation, "restarting the jobs of the applied spec");
                self.supervisor.start(&spec.jobs).await;
            }
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.clone().session().await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "director session ended");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(3));
        }
    }

    async fn session(self: Arc<Self>) -> Result<(), SessionError> {
        let stream = self.dialer.connect().await.map_err(|e| SessionError::Connect(self.dialer.address.clone(), e))?;
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
        let (tx, mut rx) = mpsc::channel::<AgentMessage>(64);
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if write.write_all(&encode_line(&m)).await.is_err() {
                    break;
                }
            }
        });
        let applied_generation = self.ledger.lock().await.spec.as_ref().map(|s| s.generation).unwrap_or(0);
        let _ = tx
            .send(AgentMessage::Hello {
                agent_id: self.settings.agent_id.clone(),
                vm_cid: self.settings.vm_cid.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                stemcell: self.stemcell.clone(),
                applied_generation,
                ssh: self.ssh.get().map(|s| s.endpoint().clone()),
            })
            .await;
        match tokio::time::timeout(WELCOME_TIMEOUT, lines.next()).await {
            Ok(Some(Ok(line))) => match serde_json::from_str::<DirectorMessage>(&line) {
                Ok(DirectorMessage::Welcome { heartbeat_interval_ms }) => {
                    self.heartbeat_ms.store(heartbeat_interval_ms.clamp(100, 60_000), Ordering::Relaxed);
                }
                _ => {
                    writer.abort();
                    return Err(SessionError::NoWelcome(line.chars().take(200).collect()));
                }
            },
            Ok(Some(Err(e))) => {
                writer.abort();
                return Err(SessionError::Read(e));
            }
            Ok(None) => {
                writer.abort();
                return Err(SessionError::Closed);
            }
            Err(_) => {
                writer.abort();
                return Err(SessionError::NoWelcome("timed out".into()));
            }
        }
        tracing::info!("connected to the director");
        let heartbeats = {
            let me = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let hb = me.heartbeat().await;
                    if tx.send(AgentMessage::Heartbeat(hb)).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(me.heartbeat_ms.load(Ordering::Relaxed))).await;
                }
            })
        };
        // Commands that run until told to stop (`follow_logs`), by command id.
        let cancels: Arc<std::sync::Mutex<HashMap<u64, CancellationToken>>> = Arc::default();
        let result = loop {
            match lines.next().await {
                None => break Err(SessionError::Closed),
                Some(Err(e)) => break Err(SessionError::Read(e)),
                Some(Ok(line)) => match serde_json::from_str::<DirectorMessage>(&line) {
                    Ok(DirectorMessage::Command {
                        id,
                        command: AgentCommand::FollowLogs { jobs, lines, timeout_ms },
                    }) => {
                        let token = CancellationToken::new();
                        cancels.lock().expect("cancels").insert(id, token.clone());
                        let (me, tx, cancels) = (self.clone(), tx.clone(), cancels.clone());
                        tokio::spawn(async move {
                            let deadline = Duration::from_millis(timeout_ms);
                            let outcome = match me.follow_logs(jobs, lines, id, &tx, token, deadline).await {
                                Ok(()) => CommandOutcome::Ok(serde_json::Value::Null),
                                Err(e) => CommandOutcome::Error(e),
                            };
                            cancels.lock().expect("cancels").remove(&id);
                            let _ = tx.send(AgentMessage::Reply { id, outcome }).await;
                        });
                    }
                    Ok(DirectorMessage::Command { id, command }) => {
                        let me = self.clone();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let name = command.name();
                            tracing::info!(id, command = name, "command received");
                            // A compilation can run for many minutes: say how it goes meanwhile.
                            let mut errand_done = None;
                            let mut reporter = match &command {
                                AgentCommand::CompilePackage { package, .. } => {
                                    Some(tokio::spawn(crate::compiler::report_progress(
                                        me.layout.clone(),
                                        package.name.clone(),
                                        id,
                                        tx.clone(),
                                    )))
                                }
                                // An errand's output, line by line, as it comes.
                                AgentCommand::RunErrand { job, .. } => {
                                    let log = me.layout.log_dir(job).join("run.log");
                                    let from = tokio::fs::metadata(&log).await.map(|m| m.len()).unwrap_or(0);
                                    let (finished, done) = tokio::sync::oneshot::channel();
                                    errand_done = Some(finished);
                                    Some(tokio::spawn(crate::scripts::stream_lines(log, from, id, tx.clone(), done)))
                                }
                                _ => None,
                            };
                            let outcome = me.execute(command).await;
                            if let (Some(finished), Some(r)) = (errand_done, reporter.as_mut()) {
                                // The last lines go before the reply.
                                let _ = finished.send(());
                                let _ = r.await;
                                reporter = None;
                            }
                            if let Some(r) = reporter {
                                r.abort();
                            }
                            let outcome = match outcome {
                                Ok(v) => CommandOutcome::Ok(v),
                                Err(e) => {
                                    tracing::warn!(id, command = name, error = %e, "command failed");
                                    CommandOutcome::Error(e)
                                }
                            };
                            let _ = tx.send(AgentMessage::Reply { id, outcome }).await;
                        });
                    }
                    Ok(DirectorMessage::Cancel { id }) => match cancels.lock().expect("cancels").remove(&id) {
                        Some(token) => token.cancel(),
                        None => tracing::info!(id, "cancel requested; other commands run to their own timeouts"),
                    },
                    Ok(DirectorMessage::Welcome { .. }) => {}
                    Err(e) => {
                        // A command this agent does not know (a newer director) is answered,
                        // not left for the director to time out on.
                        let id = serde_json::from_str::<serde_json::Value>(&line)
                            .ok()
                            .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("command"))
                            .and_then(|v| v.get("id").and_then(|i| i.as_u64()));
                        match id {
                            Some(id) => {
                                tracing::warn!(id, error = %e, "refusing a command this agent does not understand");
                                let outcome = CommandOutcome::Error(format!("this agent cannot run the command: {e}"));
                                let _ = tx.send(AgentMessage::Reply { id, outcome }).await;
                            }
                            None => tracing::warn!(error = %e, "ignoring a malformed message from the director"),
                        }
                    }
                },
            }
        };
        heartbeats.abort();
        writer.abort();
        for (_, token) in cancels.lock().expect("cancels").drain() {
            token.cancel();
        }
        result
    }

    /// `follow_logs`: lines as progress until cancelled or the deadline passes.
    async fn follow_logs(
        &self,
        jobs: Vec<String>,
        lines: u32,
        id: u64,
        tx: &mpsc::Sender<AgentMessage>,
        stop: CancellationToken,
        deadline: Duration,
    ) -> Result<(), String> {
        let until = tokio::time::Instant::now() + deadline;
        let mut follower = crate::logs::Follower::default();
        tracing::info!(id, ?jobs, lines, "following the job logs");
        loop {
            let (layout, jobs2) = (self.layout.clone(), jobs.clone());
            let (f, got) = tokio::task::spawn_blocking(move || {
                let got = follower.poll(&layout, &jobs2, lines as usize);
                (follower, got)
            })
            .await
            .map_err(|e| format!("reading the logs: {e}"))?;
            follower = f;
            for message in got? {
                if tx.send(AgentMessage::Progress { id, message }).await.is_err() {
                    return Ok(());
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    tracing::info!(id, "stopped following the job logs: the director cancelled");
                    return Ok(());
                }
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn heartbeat(&self) -> Heartbeat {
        let (applied, running, generation, disk) = {
            let l = self.ledger.lock().await;
            (l.spec.is_some(), l.running, l.spec.as_ref().map(|s| s.generation).unwrap_or(0), l.mounted_disk.clone())
        };
        let (job_state, processes) = self.supervisor.job_state(applied, running).await;
        let layout = self.layout.clone();
        let vitals = tokio::task::spawn_blocking(move || crate::vitals::collect(&layout)).await.unwrap_or_default();
        Heartbeat {
            job_state,
            processes,
            applied_generation: generation,
            vitals,
            persistent_disks: disk.into_iter().map(|(cid, _)| cid).collect(),
        }
    }

    /// The directory disk `disk_cid`'s contents are in, from the CPI's hint: the hint's directory,
    /// or its device (given a filesystem when new) mounted at the disk's mount point, with the
    /// device.
    async fn disk_directory(
        &self,
        disk_cid: &str,
        hint: &serde_json::Value,
    ) -> Result<(PathBuf, Option<PathBuf>), String> {
        let failed = |e: crate::disks::MountError| format!("disk `{disk_cid}`: {}", error_chain(&e));
        match crate::disks::resolve(&self.dev, hint, DEVICE_WAIT).await.map_err(failed)? {
            crate::disks::DiskSource::Directory(path) => Ok((path, None)),
            crate::disks::DiskSource::Device(device) => {
                let at = self
                    .layout
                    .disk_mount_point(disk_cid)
                    .ok_or_else(|| format!("disk cid `{disk_cid}` cannot name a mount point"))?;
                crate::disks::mount_device(&device, &at).await.map_err(failed)?;
                Ok((at, Some(device)))
            }
        }
    }

    /// Makes the ledger durable (file and directory synced) before the caller acts on it, so a
    /// power loss never leaves an agent that did something its ledger does not say.
    async fn save_ledger(&self, ledger: &Ledger) -> Result<(), String> {
        let path = self.layout.ledger();
        let bytes = serde_json::to_vec_pretty(ledger).expect("serializable");
        tokio::task::spawn_blocking(move || {
            crate::layout::write_durably(&path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))
        })
        .await
        .map_err(|e| format!("ledger writer failed: {e}"))?
    }

    #[tracing::instrument(name = "command", skip_all, fields(command = command.name()))]
    async fn execute(&self, command: AgentCommand) -> Result<serde_json::Value, String> {
        match command {
            AgentCommand::GetState => Ok(serde_json::to_value(self.heartbeat().await).expect("serializable")),
            AgentCommand::Apply { spec } => {
                let _op = self.op_lock.lock().await;
                let current = self.ledger.lock().await.spec.clone();
                if let Some(cur) = &current {
                    if spec.generation < cur.generation {
                        return Err(format!(
                            "refusing spec generation {}: generation {} is already applied",
                            spec.generation, cur.generation
                        ));
                    }
                    if spec.generation == cur.generation && spec.configuration_hash != cur.configuration_hash {
                        return Err(format!(
                            "refusing spec generation {}: a different spec with that generation is applied",
                            spec.generation
                        ));
                    }
                }
                if spec.id.is_empty() || spec.deployment.is_empty() {
                    return Err("the spec names no instance".into());
                }
                let installer =
                    Installer { layout: &self.layout, dialer: &self.dialer, agent_id: &self.settings.agent_id };
                installer.install(&spec).await.map_err(|e| error_chain(&e))?;
                let mut ledger = self.ledger.lock().await;
                ledger.spec = Some((*spec).clone());
                self.save_ledger(&ledger).await?;
                installer.remove_other_jobs(&spec).await;
                Ok(serde_json::json!({ "applied_generation": spec.generation }))
            }
            AgentCommand::Start => {
                let _op = self.op_lock.lock().await;
                let mut ledger = self.ledger.lock().await;
                let spec = ledger.spec.clone().ok_or("nothing has been applied")?;
                ledger.running = true;
                self.save_ledger(&ledger).await?;
                drop(ledger);
                self.supervisor.start(&spec.jobs).await;
                Ok(serde_json::Value::Null)
            }
            AgentCommand::Stop => {
                let _op = self.op_lock.lock().await;
                let mut ledger = self.ledger.lock().await;
                ledger.running = false;
                self.save_ledger(&ledger).await?;
                drop(ledger);
                self.supervisor.stop().await;
                Ok(serde_json::Value::Null)
            }
            AgentCommand::RunScript { script, env, args, timeout_ms } => {
                let jobs: Vec<String> = self
                    .ledger
                    .lock()
                    .await
                    .spec
                    .as_ref()
                    .map(|s| s.jobs.iter().map(|j| j.name.clone()).collect())
                    .unwrap_or_default();
                let results = crate::scripts::run_all(
                    &self.layout,
                    &jobs,
                    script,
                    &args,
                    &env,
                    Duration::from_millis(timeout_ms),
                )
                .await;
                Ok(serde_json::to_value(results).expect("serializable"))
            }
            AgentCommand::MountDisk { disk_cid, hint } => {
                let _op = self.op_lock.lock().await;
                let (path, device) = self.disk_directory(&disk_cid, &hint).await?;
                let store = self.layout.store();
                if tokio::fs::read_link(&store).await.ok().as_deref() == Some(path.as_path()) {
                    return Ok(serde_json::Value::Null);
                }
                // Whatever was on the ephemeral store is set aside, as a mount would hide it.
                if let Ok(meta) = tokio::fs::symlink_metadata(&store).await {
                    if meta.is_symlink() {
                        tokio::fs::remove_file(&store).await.map_err(|e| e.to_string())?;
                    } else {
                        let aside = self.layout.root.join(format!("data/store-before-{disk_cid}"));
                        tokio::fs::rename(&store, &aside).await.map_err(|e| e.to_string())?;
                    }
                }
                tokio::fs::symlink(&path, &store).await.map_err(|e| e.to_string())?;
                let mut ledger = self.ledger.lock().await;
                ledger.mounted_disk = Some((disk_cid, path));
                ledger.mounted_device = device;
                self.save_ledger(&ledger).await?;
                Ok(serde_json::Value::Null)
            }
            AgentCommand::UnmountDisk { disk_cid } => {
                let _op = self.op_lock.lock().await;
                let mut ledger = self.ledger.lock().await;
                if ledger.mounted_disk.as_ref().map(|(c, _)| c.as_str()) != Some(disk_cid.as_str()) {
                    return Ok(serde_json::Value::Null);
                }
                let store = self.layout.store();
                if tokio::fs::symlink_metadata(&store).await.map(|m| m.is_symlink()).unwrap_or(false) {
                    tokio::fs::remove_file(&store).await.map_err(|e| e.to_string())?;
                }
                tokio::fs::create_dir_all(&store).await.map_err(|e| e.to_string())?;
                if let (Some((_, at)), Some(_)) = (&ledger.mounted_disk, &ledger.mounted_device) {
                    crate::disks::unmount(at).await.map_err(|e| format!("disk `{disk_cid}`: {}", error_chain(&e)))?;
                }
                ledger.mounted_disk = None;
                ledger.mounted_device = None;
                self.save_ledger(&ledger).await?;
                Ok(serde_json::Value::Null)
            }
            AgentCommand::MigrateDisk { from_disk_cid, to_disk_cid, hint } => {
                let _op = self.op_lock.lock().await;
                let mut ledger = self.ledger.lock().await;
                match &ledger.mounted_disk {
                    // Done before (the director asks again after losing the answer).
                    Some((cid, _)) if *cid == to_disk_cid => return Ok(serde_json::Value::Null),
                    Some((cid, _)) if *cid == from_disk_cid => {}
                    other => {
                        return Err(format!(
                            "cannot migrate from disk `{from_disk_cid}`: the mounted disk is {}",
                            other.as_ref().map(|(c, _)| format!("`{c}`")).unwrap_or_else(|| "none".into())
                        ))
                    }
                }
                if ledger.running {
                    return Err("jobs are running; stop them before migrating the disk".into());
                }
                let from = ledger.mounted_disk.as_ref().map(|(_, p)| p.clone()).expect("matched above");
                let (to, to_device) = self.disk_directory(&to_disk_cid, &hint).await?;
                crate::disks::copy_tree(&from, &to)
                    .await
                    .map_err(|e| format!("copying disk `{from_disk_cid}` to `{to_disk_cid}`: {e}"))?;
                let store = self.layout.store();
                let staged = store.with_extension("migrating");
                let _ = tokio::fs::remove_file(&staged).await;
                tokio::fs::symlink(&to, &staged).await.map_err(|e| e.to_string())?;
                // rename(2) swaps the link atomically: the store is the old disk or the new one.
                tokio::fs::rename(&staged, &store).await.map_err(|e| e.to_string())?;
                let from_device = ledger.mounted_device.take();
                ledger.mounted_disk = Some((to_disk_cid, to));
                ledger.mounted_device = to_device;
                self.save_ledger(&ledger).await?;
                if from_device.is_some() {
                    // The old disk is the director's to detach now: nothing of it stays mounted.
                    crate::disks::unmount(&from)
                        .await
                        .map_err(|e| format!("disk `{from_disk_cid}`: {}", error_chain(&e)))?;
                }
                Ok(serde_json::Value::Null)
            }
            AgentCommand::RunErrand { job, timeout_ms } => {
                let result = crate::scripts::run_errand(&self.layout, &job, Duration::from_millis(timeout_ms)).await?;
                Ok(serde_json::to_value(result).expect("serializable"))
            }
            AgentCommand::FetchLogs { jobs, max_bytes } => {
                static PACKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = PACKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let archive = self.layout.root.join("data/tmp").join(format!("logs-{n}.tgz"));
                let (layout, at) = (self.layout.clone(), archive.clone());
                let blob = tokio::task::spawn_blocking(move || crate::logs::pack_logs(&layout, &jobs, max_bytes, &at))
                    .await
                    .map_err(|e| format!("packing the logs: {e}"))?;
                let uploaded = match &blob {
                    Ok(b) => crate::compiler::put_blob(&self.dialer, &self.settings.agent_id, &archive, b).await,
                    Err(_) => Ok(()),
                };
                let _ = tokio::fs::remove_file(&archive).await;
                let blob = blob?;
                uploaded?;
                Ok(serde_json::to_value(blob).expect("serializable"))
            }
            // Served by the session, which streams its lines and can cancel it.
            AgentCommand::FollowLogs { .. } => Err("follow_logs streams: it runs only on a director connection".into()),
            AgentCommand::SshSetup { user, public_key, expires_in_ms } => {
                let server = self.ssh.get().ok_or("this VM serves no SSH (see the agent's log)")?;
                server.grant(&user, &public_key, Duration::from_millis(expires_in_ms)).map_err(|e| e.to_string())?;
                tracing::info!(user, expires_in_ms, "SSH key installed");
                Ok(serde_json::to_value(server.endpoint()).expect("serializable"))
            }
            AgentCommand::SshCleanup { user } => {
                let Some(server) = self.ssh.get() else { return Ok(serde_json::Value::Null) };
                let closed = server.revoke(&user).await;
                tracing::info!(user, closed, "SSH key removed");
                Ok(serde_json::json!({ "closed_connections": closed }))
            }
            AgentCommand::CompilePackage { package, timeout_ms, build_cache } => {
                let _op = self.op_lock.lock().await;
                let compiler = crate::compiler::Compiler {
                    layout: &self.layout,
                    dialer: &self.dialer,
                    agent_id: &self.settings.agent_id,
                    build_cache: build_cache.as_deref().map(std::path::Path::new),
                };
                let compiled =
                    compiler.compile(&package, Duration::from_millis(timeout_ms)).await.map_err(|e| error_chain(&e))?;
                Ok(serde_json::to_value(compiled).expect("serializable"))
            }
        }
    }
}

pub use bosun_types::error_chain;

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_types::pki::{CertAuthority, LeafUsage};
    use bosun_types::protocol::DirectorEndpoint;

    fn agent(dir: &std::path::Path) -> Arc<Agent> {
        let ca = CertAuthority::generate("test", None, 1).unwrap();
        let leaf =
            ca.issue("agent-1", &["agent-1".into()], LeafUsage { server: false, client: true }, 1, false).unwrap();
        let settings = AgentSettings {
            agent_id: "agent-1".into(),
            vm_cid: "vm-1".into(),
            director: DirectorEndpoint {
                address: "127.0.0.1:9".into(),
                server_name: "bosun-director".into(),
                ca_cert: ca.cert_pem().into(),
                client_cert: leaf.cert_pem,
                client_key: leaf.key_pem,
            },
            networks: Default::default(),
            disks: Default::default(),
            env: serde_json::json!({}),
        };
        let layout = Layout::new(dir);
        layout.create().unwrap();
        Agent::new(settings, layout, PathBuf::from("/dev"), None).unwrap()
    }

    fn spec(generation: u64, hash: &str) -> AgentCommand {
        AgentCommand::Apply {
            spec: Box::new(ApplySpec {
                generation,
                deployment: "d".into(),
                name: "g".into(),
                index: 0,
                id: "u".into(),
                az: None,
                bootstrap: true,
                networks: Default::default(),
                jobs: vec![],
                packages: vec![],
                persistent_disk_mb: 0,
                configuration_hash: hash.into(),
            }),
        }
    }

    #[tokio::test]
    async fn never_applies_an_older_generation_and_remembers_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());
        a.execute(spec(5, "h5")).await.unwrap();
        a.execute(spec(5, "h5")).await.expect("the same spec again is a no-op");
        let e = a.execute(spec(4, "h4")).await.unwrap_err();
        assert_eq!(e, "refusing spec generation 4: generation 5 is already applied");
        let e = a.execute(spec(5, "other")).await.unwrap_err();
        assert!(e.contains("a different spec with that generation"), "{e}");
        a.execute(spec(6, "h6")).await.unwrap();
        // A restarted agent reads its ledger: the rule still holds.
        let again = agent(dir.path());
        assert_eq!(again.heartbeat().await.applied_generation, 6);
        assert!(again.execute(spec(5, "h5")).await.is_err());
        assert!(again.execute(AgentCommand::Start).await.is_ok());
        assert_eq!(again.heartbeat().await.job_state, bosun_types::protocol::JobState::Running);
    }
}
