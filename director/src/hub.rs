//! The agent hub: agents dial in over mutually authenticated TLS. The director is the CA; each
//! VM's agent gets a certificate issued for its agent id, and the hub accepts an agent id only over
//! the certificate issued for it. Heartbeats update the agent's status; commands go down with an
//! id and come back as replies; blobs are served only to an agent whose spec names them.

use crate::records::IntentOp;
use crate::store::{tables, State};
use bosun_types::digest::sha256_digest;
use bosun_types::protocol::{
    encode_line, AgentCommand, AgentMessage, BlobHeader, CommandOutcome, DirectorMessage, Heartbeat, SshEndpoint,
    StemcellInfo, MAX_LINE_BYTES,
};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::{FramedRead, LinesCodec};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("agent `{0}` is not connected")]
    NotConnected(String),
    #[error("agent `{agent}` disconnected during `{command}`")]
    Disconnected { agent: String, command: &'static str },
    #[error("agent `{agent}` did not finish `{command}` within {seconds} s")]
    Timeout { agent: String, command: &'static str, seconds: u64 },
    #[error("agent `{agent}` fell silent during `{command}`")]
    Silent { agent: String, command: &'static str },
    #[error("agent `{agent}` failed `{command}`: {message}")]
    Failed { agent: String, command: &'static str, message: String },
    #[error("agent `{agent}` did not connect within {seconds} s")]
    NeverConnected { agent: String, seconds: u64 },
    #[error("journaling `{command}` for agent `{agent}`: {message}")]
    Journal { agent: String, command: &'static str, message: String },
}

/// What the director last heard from an agent.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    pub connected: bool,
    pub last_seen: Instant,
    pub vm_cid: String,
    pub stemcell: Option<StemcellInfo>,
    pub heartbeat: Option<Heartbeat>,
    /// Where the agent serves SSH (its host key as it reported it this time).
    pub ssh: Option<SshEndpoint>,
}

struct Connection {
    id: u64,
    tx: mpsc::Sender<DirectorMessage>,
    pending: Mutex<HashMap<u64, oneshot::Sender<CommandOutcome>>>,
    /// Told when a newer connection of the same agent displaces this one.
    displaced: Notify,
}

/// How long agents get to reconnect to a restarted director before they count as silent: their
/// reconnect backoff is at most 3 s, plus a TLS handshake.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// Rendered jobs offered to one agent: digest → archive.
type RenderedOffer = HashMap<String, Arc<Vec<u8>>>;

pub struct AgentHub {
    state: State,
    blobstore: crate::blobstore::Blobstore,
    journal: crate::journal::Journal,
    heartbeat_interval: Duration,
    /// Heartbeats an agent may miss before it counts as unresponsive.
    missed_heartbeats: u32,
    /// When this director started: the last sign of life of an agent not heard from since.
    started: Instant,
    clock: Arc<dyn crate::clock::Clock>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    status: Mutex<HashMap<String, AgentStatus>>,
    allowed_blobs: Mutex<HashMap<String, HashSet<String>>>,
    /// Rendered jobs an agent's apply in flight names, by agent and digest: served from memory,
    /// never stored (they hold the deployment's secrets).
    rendered: Mutex<HashMap<String, RenderedOffer>>,
    /// Agents asked to upload a blob (compilation VMs), with the largest size accepted.
    allowed_uploads: Mutex<HashMap<String, u64>>,
    /// Where a command's progress reports go, by command id (those sent with `call_reporting`),
    /// with the agent whose reports they are.
    progress: Mutex<HashMap<u64, (String, mpsc::UnboundedSender<String>)>>,
    next_id: AtomicU64,
    changed: Notify,
}

impl AgentHub {
    pub fn new(
        state: State,
        blobstore: crate::blobstore::Blobstore,
        journal: crate::journal::Journal,
        heartbeat_interval: Duration,
        missed_heartbeats: u32,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            blobstore,
            journal,
            heartbeat_interval,
            missed_heartbeats,
            started: clock.now(),
            clock,
            connections: Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            allowed_blobs: Mutex::new(HashMap::new()),
            rendered: Mutex::new(HashMap::new()),
            allowed_uploads: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changed: Notify::new(),
        })
    }

    /// Records the SSH host key an agent reports on its first connection; a different one later
    /// is only reported (clients keep expecting the first: a VM does not change its host key).
    async fn pin_host_key(&self, record: &crate::records::AgentRecord, reported: &str) {
        match &record.ssh_host_key {
            Some(pinned) if pinned == reported => {}
            Some(_) => tracing::warn!(
                agent_id = %record.agent_id,
                "the agent reports an SSH host key other than the one it registered; SSH clients keep expecting the registered one"
            ),
            None => {
                let pinned = self
                    .state
                    .update(tables::AGENTS, &record.agent_id, |mut r| {
                        r.ssh_host_key.is_none().then(|| {
                            r.ssh_host_key = Some(reported.to_string());
                            r
                        })
                    })
                    .await;
                if let Err(e) = pinned {
                    tracing::error!(agent_id = %record.agent_id, error = %e, "recording the SSH host key");
                }
            }
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    pub fn status(&self, agent_id: &str) -> Option<AgentStatus> {
        self.status.lock().expect("hub lock").get(agent_id).cloned()
    }

    /// Whether the agent has been heard from within three heartbeat intervals.
    /// Whether a command sent now can be answered: connected and heard from lately. (How an
    /// instance's health is judged is `health::classify`'s: there silence decides.)
    pub fn is_responsive(&self, agent_id: &str) -> bool {
        self.status(agent_id).is_some_and(|s| {
            s.connected && self.clock.now().saturating_duration_since(s.last_seen) < self.unresponsive_after()
        })
    }

    /// Silence longer than this makes an agent unresponsive.
    pub fn unresponsive_after(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats
    }

    /// How long the agent has been silent: since its last message, or, if this director has not
    /// heard from it, since the later of its VM's creation (`not_before`) and the end of the
    /// grace agents get to find a restarted director.
    pub fn silent_for(&self, agent_id: &str, not_before: Instant) -> Duration {
        match self.status(agent_id) {
            Some(s) => self.clock.now().saturating_duration_since(s.last_seen),
            None => self.clock.now().saturating_duration_since(not_before.max(self.started + RECONNECT_GRACE)),
        }
    }

    /// Right after this director started, an agent that has not reconnected yet gets the
    /// reconnect grace to do so before a command is refused for it.
    pub async fn await_reconnect(&self, agent_id: &str) {
        let until = self.started + RECONNECT_GRACE + self.unresponsive_after();
        let left = until.saturating_duration_since(self.clock.now());
        if !left.is_zero() && self.status(agent_id).is_none() {
            let _ = self.wait_connected(agent_id, left).await;
        }
    }

    /// Records a state the director fetched itself (`get_state`), fresher than the last heartbeat.
    pub fn observe(&self, agent_id: &str, heartbeat: Heartbeat) {
        if let Some(s) = self.status.lock().expect("hub lock").get_mut(agent_id) {
            s.last_seen = self.clock.now();
            s.heartbeat = Some(heartbeat);
        }
    }

    /// Forgets an agent whose VM is gone.
    pub fn forget(&self, agent_id: &str) {
        self.connections.lock().expect("hub lock").remove(agent_id);
        self.status.lock().expect("hub lock").remove(agent_id);
        self.allowed_blobs.lock().expect("hub lock").remove(agent_id);
        self.rendered.lock().expect("hub lock").remove(agent_id);
        self.allowed_uploads.lock().expect("hub lock").remove(agent_id);
    }

    /// Lets an agent fetch these rendered jobs (digest → archive), served from memory, until
    /// [`Self::withdraw_rendered`]; replaces what it was offered before.
    pub fn offer_rendered(&self, agent_id: &str, rendered: Vec<(String, Arc<Vec<u8>>)>) {
        self.rendered.lock().expect("hub lock").insert(agent_id.to_string(), rendered.into_iter().collect());
    }

    /// Ends an offer of rendered jobs (the apply that needed them is over).
    pub fn withdraw_rendered(&self, agent_id: &str) {
        self.rendered.lock().expect("hub lock").remove(agent_id);
    }

    /// Lets an agent upload blobs of at most `max_bytes` (a compilation VM's compiled package),
    /// until [`Self::forbid_upload`].
    pub fn allow_upload(&self, agent_id: &str, max_bytes: u64) {
        self.allowed_uploads.lock().expect("hub lock").insert(agent_id.to_string(), max_bytes);
    }

    pub fn forbid_upload(&self, agent_id: &str) {
        self.allowed_uploads.lock().expect("hub lock").remove(agent_id);
    }

    /// Lets an agent fetch these blobs (those its next spec names).
    pub fn allow_blobs(&self, agent_id: &str, digests: impl IntoIterator<Item = String>) {
        self.allowed_blobs.lock().expect("hub lock").entry(agent_id.to_string()).or_default().extend(digests);
    }

    pub async fn wait_connected(&self, agent_id: &str, timeout: Duration) -> Result<(), HubError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.connections.lock().expect("hub lock").contains_key(agent_id) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(HubError::NeverConnected { agent: agent_id.to_string(), seconds: timeout.as_secs() });
            }
        }
    }

    /// Sends a command and waits for its reply.
    pub async fn call(
        &self,
        agent_id: &str,
        command: AgentCommand,
        timeout: Duration,
    ) -> Result<serde_json::Value, HubError> {
        self.call_reporting(agent_id, command, timeout, None).await
    }

    /// [`Self::call`], with the agent's progress reports on the command (a long compilation's)
    /// sent to `progress` as they come.
    #[tracing::instrument(name = "agent_command", skip_all, fields(agent = agent_id, command = command.name()))]
    pub async fn call_reporting(
        &self,
        agent_id: &str,
        command: AgentCommand,
        timeout: Duration,
        progress: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<serde_json::Value, HubError> {
        let name = command.name();
        // Commands that change something are journaled; reading state is not, nor are SSH keys
        // (they expire on their own: nothing is left to settle after a crash).
        let intent = match command {
            AgentCommand::GetState
            | AgentCommand::FetchLogs { .. }
            | AgentCommand::FollowLogs { .. }
            | AgentCommand::SshSetup { .. }
            | AgentCommand::SshCleanup { .. } => None,
            _ => Some(self.journal.begin(IntentOp::Agent(name.to_string()), agent_id).await.map_err(|e| {
                HubError::Journal { agent: agent_id.to_string(), command: name, message: e.to_string() }
            })?),
        };
        self.await_reconnect(agent_id).await;
        let out = self.send(agent_id, name, command, timeout, progress).await;
        if let Some(id) = intent {
            self.journal.end(id).await;
        }
        out
    }

    async fn send(
        &self,
        agent_id: &str,
        name: &'static str,
        command: AgentCommand,
        timeout: Duration,
        progress: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<serde_json::Value, HubError> {
        let conn = self
            .connections
            .lock()
            .expect("hub lock")
            .get(agent_id)
            .cloned()
            .ok_or_else(|| HubError::NotConnected(agent_id.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = progress {
            self.progress.lock().expect("hub lock").insert(id, (agent_id.to_string(), p));
        }
        // However this ends, the progress sink goes with it.
        type Sinks = Mutex<HashMap<u64, (String, mpsc::UnboundedSender<String>)>>;
        struct Unregister<'a>(&'a Sinks, u64);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                self.0.lock().expect("hub lock").remove(&self.1);
            }
        }
        let _unregister = Unregister(&self.progress, id);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().expect("hub lock").insert(id, tx);
        // A caller that stops waiting (a client that hung up on `logs --follow`, a timeout)
        // tells the agent, which stops what can be stopped.
        struct CancelUnlessAnswered<'a>(&'a Connection, u64, bool);
        impl Drop for CancelUnlessAnswered<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    self.0.pending.lock().expect("hub lock").remove(&self.1);
                    let _ = self.0.tx.try_send(DirectorMessage::Cancel { id: self.1 });
                }
            }
        }
        let mut cancel_guard = CancelUnlessAnswered(&conn, id, false);
        if conn.tx.send(DirectorMessage::Command { id, command }).await.is_err() {
            conn.pending.lock().expect("hub lock").remove(&id);
            return Err(HubError::Disconnected { agent: agent_id.to_string(), command: name });
        }
        // Wait for the reply, but not for an agent that fell silent meanwhile (its heartbeats go
        // on during long commands): a cut-off VM must not hold a task until the command's timeout.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = rx;
        let outcome = loop {
            let check = (tokio::time::Instant::now() + self.heartbeat_interval).min(deadline);
            match tokio::time::timeout_at(check, &mut rx).await {
                Ok(reply) => break Ok(reply),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    break Err(HubError::Timeout {
                        agent: agent_id.to_string(),
                        command: name,
                        seconds: timeout.as_secs(),
                    })
                }
                Err(_) if !self.is_responsive(agent_id) => {
                    break Err(HubError::Silent { agent: agent_id.to_string(), command: name })
                }
                Err(_) => {}
            }
        };
        // An answer came, or the connection went: nothing to cancel. A timeout leaves it armed.
        cancel_guard.2 = outcome.is_ok();
        drop(cancel_guard);
        match outcome {
            Ok(Ok(CommandOutcome::Ok(v))) => Ok(v),
            Ok(Ok(CommandOutcome::Error(message))) => {
                Err(HubError::Failed { agent: agent_id.to_string(), command: name, message })
            }
            Ok(Err(_)) => Err(HubError::Disconnected { agent: agent_id.to_string(), command: name }),
            Err(e) => Err(e),
        }
    }

    /// Accepts agent connections (mutual TLS) until the process ends.
    /// Serves agents. Unproven connections (TLS handshakes under way) are bounded by `gate`, a gate
    /// of their own: a flood of the API's listener does not reach them.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        gate: Arc<crate::gate::ConnectionGate>,
    ) {
        crate::serve_tls("agents", listener, acceptor, gate, move |tls, peer, admission| {
            // The handshake verified the client certificate: the connection has proven itself.
            admission.prove();
            self.clone().handle(tls, peer)
        })
        .await
    }

    #[tracing::instrument(name = "agent_connection", skip_all, fields(%peer))]
    async fn handle(
        self: Arc<Self>,
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        peer: std::net::SocketAddr,
    ) {
        let cert_digest = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(c) => sha256_digest(c.as_ref()),
            None => return, // the verifier requires one; nothing to do without it
        };
        let (read, mut write) = tokio::io::split(tls);
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE_BYTES));
        let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, lines.next()).await {
            Ok(Some(Ok(l))) => l,
            _ => return,
        };
        let msg: AgentMessage = match serde_json::from_str(&first) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "rejected an agent connection: malformed first message");
                return;
            }
        };
        let claimed = match &msg {
            AgentMessage::Hello { agent_id, .. }
            | AgentMessage::FetchBlob { agent_id, .. }
            | AgentMessage::PutBlob { agent_id, .. } => agent_id.clone(),
            _ => {
                tracing::warn!(%peer, "rejected an agent connection: it did not start with hello, fetch_blob or put_blob");
                return;
            }
        };
        let record = match self.state.get(tables::AGENTS, &claimed).await {
            Ok(Some(rec)) if rec.cert_digest == cert_digest => rec,
            Ok(Some(_)) => {
                tracing::warn!(%peer, agent_id = %claimed, "rejected an agent: it presented a certificate issued for another agent");
                return;
            }
            Ok(None) => {
                tracing::warn!(%peer, agent_id = %claimed, "rejected an agent: unknown agent id");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "agent lookup failed");
                return;
            }
        };
        match msg {
            AgentMessage::FetchBlob { digest, .. } => {
                let mut stream = lines.into_inner().unsplit(write);
                self.serve_blob(&claimed, &digest, &mut stream).await;
            }
            AgentMessage::PutBlob { digest, size, .. } => {
                // The agent sends bytes only after our first answer, so nothing past the first
                // line is buffered in `lines`.
                let mut stream = lines.into_inner().unsplit(write);
                self.receive_blob(&claimed, &digest, size, &mut stream).await;
            }
            AgentMessage::Hello { vm_cid, stemcell, applied_generation, ssh, .. } => {
                let ssh = ssh.filter(|e| {
                    let ok = e.is_well_formed();
                    if !ok {
                        tracing::warn!(agent_id = %claimed, "ignoring a malformed SSH endpoint in the agent's hello");
                    }
                    ok
                });
                if let Some(endpoint) = &ssh {
                    self.pin_host_key(&record, &endpoint.host_key).await;
                }
                let (tx, mut rx) = mpsc::channel::<DirectorMessage>(64);
                let conn = Arc::new(Connection {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    tx,
                    pending: Mutex::new(HashMap::new()),
                    displaced: Notify::new(),
                });
                let welcome =
                    DirectorMessage::Welcome { heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64 };
                if write.write_all(&encode_line(&welcome)).await.is_err() {
                    return;
                }
                let writer = tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        if write.write_all(&encode_line(&m)).await.is_err() {
                            break;
                        }
                    }
                });
                // The newest connection speaks for the agent (a restarted agent, or one whose old
                // connection died half-open); the one it replaces is closed.
                if let Some(old) = self.connections.lock().expect("hub lock").insert(claimed.clone(), conn.clone()) {
                    old.displaced.notify_one();
                }
                self.status.lock().expect("hub lock").insert(
                    claimed.clone(),
                    AgentStatus {
                        connected: true,
                        last_seen: self.clock.now(),
                        vm_cid,
                        stemcell,
                        heartbeat: None,
                        ssh,
                    },
                );
                tracing::info!(agent_id = %claimed, applied_generation, "agent connected");
                self.changed.notify_waiters();
                loop {
                    let line = tokio::select! {
                        l = lines.next() => match l {
                            Some(Ok(l)) => l,
                            _ => break,
                        },
                        _ = conn.displaced.notified() => {
                            tracing::info!(agent_id = %claimed, "closing an agent connection displaced by a newer one");
                            break;
                        }
                    };
                    match serde_json::from_str::<AgentMessage>(&line) {
                        Ok(AgentMessage::Heartbeat(hb)) => {
                            if let Some(s) = self.status.lock().expect("hub lock").get_mut(&claimed) {
                                s.last_seen = self.clock.now();
                                s.heartbeat = Some(hb);
                            }
                        }
                        Ok(AgentMessage::Reply { id, outcome }) => {
                            if let Some(s) = self.status.lock().expect("hub lock").get_mut(&claimed) {
                                s.last_seen = self.clock.now();
                            }
                            if let Some(tx) = conn.pending.lock().expect("hub lock").remove(&id) {
                                let _ = tx.send(outcome);
                            }
                        }
                        Ok(AgentMessage::Progress { id, message }) => {
                            tracing::debug!(agent_id = %claimed, id, message, "agent progress");
                            // Only the agent the command went to reports on it.
                            if let Some((_, sink)) =
                                self.progress.lock().expect("hub lock").get(&id).filter(|(a, _)| *a == claimed)
                            {
                                let _ = sink.send(message);
                            }
                        }
                        Ok(_) => tracing::warn!(agent_id = %claimed, "agent sent an unexpected message; ignored"),
                        Err(e) => {
                            static MALFORMED: crate::log_throttle::LogThrottle =
                                crate::log_throttle::LogThrottle::new(5, Duration::from_secs(60));
                            if let Some(held_back) = MALFORMED.allow() {
                                tracing::warn!(agent_id = %claimed, error = %e, held_back, "agent sent a malformed message; ignored")
                            }
                        }
                    }
                }
                writer.abort();
                // Only the newest connection of an agent speaks for it.
                let mut conns = self.connections.lock().expect("hub lock");
                if conns.get(&claimed).is_some_and(|c| c.id == conn.id) {
                    conns.remove(&claimed);
                    if let Some(s) = self.status.lock().expect("hub lock").get_mut(&claimed) {
                        s.connected = false;
                    }
                    tracing::info!(agent_id = %claimed, "agent disconnected");
                }
                drop(conns);
                // Pending commands fail now rather than at their timeouts.
                conn.pending.lock().expect("hub lock").clear();
                self.changed.notify_waiters();
            }
            _ => {}
        }
    }

    async fn serve_blob<S: tokio::io::AsyncWrite + Unpin>(&self, agent_id: &str, digest: &str, out: &mut S) {
        let answer = |h: BlobHeader| encode_line(&h);
        let refuse = |why: String| encode_line(&BlobHeader { size: None, error: Some(why) });
        let rendered =
            self.rendered.lock().expect("hub lock").get(agent_id).and_then(|offered| offered.get(digest)).cloned();
        if let Some(archive) = rendered {
            if out.write_all(&answer(BlobHeader { size: Some(archive.len() as u64), error: None })).await.is_ok() {
                let _ = out.write_all(&archive).await;
            }
            let _ = out.shutdown().await;
            return;
        }
        let allowed = self.allowed_blobs.lock().expect("hub lock").get(agent_id).is_some_and(|s| s.contains(digest));
        if !allowed {
            tracing::warn!(agent_id, digest, "refused a blob the agent's spec does not name");
            let _ = out.write_all(&refuse("blob not in this agent's spec".into())).await;
            return;
        }
        // Checked before it is served: a blob the disk corrupted is moved aside and refused here,
        // naming the cause, rather than refused by the agent after the transfer.
        let verified = {
            let (blobstore, digest) = (self.blobstore.clone(), digest.to_string());
            tokio::task::spawn_blocking(move || blobstore.verify(&digest).and_then(|_| blobstore.path(&digest))).await
        };
        let path = match verified {
            Ok(Ok(path)) => path,
            Ok(Err(e)) => {
                let _ = out.write_all(&refuse(e.to_string())).await;
                return;
            }
            Err(e) => {
                let _ = out.write_all(&refuse(format!("checking the blob: {e}"))).await;
                return;
            }
        };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(_) => {
                let _ = out.write_all(&refuse("no such blob".into())).await;
                return;
            }
        };
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        if out.write_all(&answer(BlobHeader { size: Some(size), error: None })).await.is_err() {
            return;
        }
        let _ = tokio::io::copy(&mut file, out).await;
        let _ = out.shutdown().await;
    }

    /// `put_blob`: an upload this agent was asked for, at most the size allowed, stored only if its
    /// bytes have the digest it claimed.
    async fn receive_blob<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        agent_id: &str,
        digest: &str,
        size: u64,
        stream: &mut S,
    ) {
        use tokio::io::AsyncReadExt;
        const IDLE: Duration = Duration::from_secs(60);
        let answer = |error: Option<String>| encode_line(&BlobHeader { size: Some(size), error });
        let limit = self.allowed_uploads.lock().expect("hub lock").get(agent_id).copied();
        let refusal = match limit {
            None => Some("no upload was asked of this agent".to_string()),
            Some(max) if size > max => Some(format!("{size} bytes is over the upload limit of {max}")),
            Some(_) => self.blobstore.path(digest).err().map(|e| e.to_string()),
        };
        if let Some(why) = refusal {
            tracing::warn!(agent_id, digest, "refused an upload: {why}");
            let _ = stream.write_all(&answer(Some(why))).await;
            return;
        }
        if stream.write_all(&answer(None)).await.is_err() {
            return;
        }
        let tmp = self.blobstore.temp_path();
        let stored = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| format!("storing: {e}"))?;
            let mut hasher = bosun_types::digest::Sha256Writer::default();
            let mut remaining = size;
            let mut buf = vec![0u8; 64 * 1024];
            while remaining > 0 {
                let want = remaining.min(buf.len() as u64) as usize;
                let n = match tokio::time::timeout(IDLE, stream.read(&mut buf[..want])).await {
                    Ok(Ok(0)) => return Err(format!("the connection closed with {remaining} bytes to go")),
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(format!("receiving: {e}")),
                    Err(_) => return Err(format!("nothing arrived for {} s", IDLE.as_secs())),
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await.map_err(|e| format!("storing: {e}"))?;
                remaining -= n as u64;
            }
            file.sync_all().await.map_err(|e| format!("storing: {e}"))?;
            let got = hasher.finish();
            if got != digest {
                return Err(format!("the bytes have digest {got}, not {digest}"));
            }
            let (blobstore, tmp, digest) = (self.blobstore.clone(), tmp.clone(), digest.to_string());
            tokio::task::spawn_blocking(move || blobstore.adopt(&tmp, &digest))
                .await
                .map_err(|e| format!("storing: {e}"))?
                .map_err(|e| e.to_string())
        }
        .await;
        let outcome = match stored {
            Ok(_) => None,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                tracing::warn!(agent_id, digest, error = %e, "an upload failed");
                Some(e)
            }
        };
        let _ = stream.write_all(&answer(outcome)).await;
        let _ = stream.shutdown().await;
    }
}
