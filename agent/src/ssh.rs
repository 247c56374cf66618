//! The agent's SSH server (`bosun ssh`, `bosun scp`, OpenSSH's `ssh`).
//!
//! It listens on the VM's address and lets in only a key the director installed for a session
//! (`ssh_setup`), until that key's expiry or `ssh_cleanup`, whichever comes first; cleanup also
//! closes the session's open connections. No password, no agent forwarding, no port forwarding.
//! The host key is made once per VM and kept in the agent's root; the agent reports it to the
//! director when it connects, so clients check it instead of trusting the first key they meet.
//!
//! A session runs as the agent's own user (root on a stemcell), in the agent's root directory:
//! a command (`exec`) with its output and exit status, or a login shell on a pseudo-terminal
//! (`shell`, window changes and signals passed on).

use crate::layout::Layout;
use bosun_types::protocol::{NetworkSettings, SshEndpoint};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, Sig};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The port tried first; when it is taken (a shared network namespace, an sshd already there)
/// the kernel picks one, and the director learns which.
const SSH_PORT: u16 = 22;
/// The longest a key may stay valid, whatever the director asks.
const MAX_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A connection that does nothing for this long is closed.
const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("the VM has no network address to serve SSH on")]
    NoAddress,
    #[error("the host key {path}: {message}")]
    HostKey { path: PathBuf, message: String },
    #[error("listening on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not an OpenSSH public key")]
    PublicKey(String),
    #[error("`{0}` is not a user name this server accepts")]
    User(String),
}

/// A key allowed in for one session, and the connections it opened.
struct Grant {
    key: PublicKey,
    expires: Instant,
    connections: Vec<russh::server::Handle>,
}

/// The keys the director installed, by session user.
#[derive(Default)]
struct Grants(Mutex<HashMap<String, Grant>>);

impl Grants {
    fn allows(&self, user: &str, key: &PublicKey) -> bool {
        let grants = self.0.lock().expect("ssh grants");
        grants.get(user).is_some_and(|g| Instant::now() < g.expires && g.key.key_data() == key.key_data())
    }
}

/// A running SSH server.
pub struct SshServer {
    endpoint: SshEndpoint,
    grants: Arc<Grants>,
}

impl SshServer {
    /// Binds the VM's address and serves until the agent exits.
    pub async fn start(layout: &Layout, networks: &BTreeMap<String, NetworkSettings>) -> Result<Arc<Self>, SshError> {
        let ip = vm_address(networks).ok_or(SshError::NoAddress)?;
        let path = layout.root.join("ssh/host_ed25519_key");
        let key = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || load_or_make_host_key(&path))
                .await
                .map_err(|e| SshError::HostKey { path: layout.root.clone(), message: e.to_string() })??
        };
        let listener = match tokio::net::TcpListener::bind(SocketAddr::new(ip, SSH_PORT)).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .await
                .map_err(|source| SshError::Listen { address: format!("{ip}:0"), source })?,
        };
        let address = listener.local_addr().map_err(|source| SshError::Listen { address: ip.to_string(), source })?;
        let endpoint =
            SshEndpoint { address: address.to_string(), host_key: key.public_key().to_openssh().unwrap_or_default() };
        let config = Arc::new(russh::server::Config {
            keys: vec![key],
            inactivity_timeout: Some(INACTIVITY_TIMEOUT),
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            // Only public keys: nothing to guess.
            methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
            ..Default::default()
        });
        let server = Arc::new(Self { endpoint, grants: Arc::new(Grants::default()) });
        let grants = server.grants.clone();
        let root = layout.root.clone();
        tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an SSH connection");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let handler =
                    Connection { grants: grants.clone(), root: root.clone(), peer, user: None, ptys: HashMap::new() };
                let config = config.clone();
                tokio::spawn(async move {
                    match russh::server::run_stream(config, socket, handler).await {
                        Ok(session) => {
                            if let Err(e) = session.await {
                                tracing::debug!(%peer, error = %e, "SSH connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "SSH handshake failed"),
                    }
                });
            }
        });
        tracing::info!(address = %server.endpoint.address, "SSH server listening");
        Ok(server)
    }

    pub fn endpoint(&self) -> &SshEndpoint {
        &self.endpoint
    }

    /// Lets `public_key` in as `user` for `lifetime` (at most a day).
    pub fn grant(&self, user: &str, public_key: &str, lifetime: Duration) -> Result<(), SshError> {
        if !is_session_user(user) {
            return Err(SshError::User(user.to_string()));
        }
        let key = PublicKey::from_openssh(public_key.trim())
            .map_err(|_| SshError::PublicKey(public_key.chars().take(40).collect()))?;
        let expires = Instant::now() + lifetime.min(MAX_KEY_LIFETIME);
        let mut grants = self.grants.0.lock().expect("ssh grants");
        let connections = grants.remove(user).map(|g| g.connections).unwrap_or_default();
        grants.insert(user.to_string(), Grant { key, expires, connections });
        // Expired grants are forgotten here too, so a director that never cleans up leaks nothing.
        let now = Instant::now();
        grants.retain(|_, g| g.expires > now);
        Ok(())
    }

    /// Forgets `user`'s key and closes the connections it opened. Answers how many were open.
    pub async fn revoke(&self, user: &str) -> usize {
        let grant = self.grants.0.lock().expect("ssh grants").remove(user);
        let connections = grant.map(|g| g.connections).unwrap_or_default();
        for c in &connections {
            let _ = c
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "the session was closed by the director".into(),
                    "en".into(),
                )
                .await;
        }
        connections.len()
    }
}

/// Session users are made by the director: `bosun_` and lowercase letters and digits.
pub fn is_session_user(user: &str) -> bool {
    user.strip_prefix("bosun_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 32 && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// The address of the VM's default network (the one given `default: [gateway]`), else of the
/// first network that has one.
fn vm_address(networks: &BTreeMap<String, NetworkSettings>) -> Option<IpAddr> {
    let with_ip = || networks.values().filter_map(|n| n.ip.parse::<IpAddr>().ok().map(|ip| (n, ip)));
    with_ip().find(|(n, _)| n.default.iter().any(|d| d == "gateway")).or_else(|| with_ip().next()).map(|(_, ip)| ip)
}

/// The VM's host key: made on first start (owner-only), the same ever after.
fn load_or_make_host_key(path: &Path) -> Result<PrivateKey, SshError> {
    let bad = |message: String| SshError::HostKey { path: path.to_path_buf(), message };
    match std::fs::read_to_string(path) {
        Ok(text) => return PrivateKey::from_openssh(&text).map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(e.to_string())),
    }
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| bad("no randomness".into()))?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key.to_openssh(LineEnding::LF).map_err(|e| bad(e.to_string()))?;
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| bad(e.to_string()))?;
    let staged = path.with_extension("new");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&staged)
            .map_err(|e| bad(e.to_string()))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| bad(e.to_string()))?;
    }
    std::fs::rename(&staged, path).map_err(|e| bad(e.to_string()))?;
    Ok(key)
}

trait OwnerOnly {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OwnerOnly for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// One client connection.
struct Connection {
    grants: Arc<Grants>,
    root: PathBuf,
    peer: SocketAddr,
    user: Option<String>,
    /// Terminal sizes asked for before a shell starts, by channel.
    ptys: HashMap<ChannelId, (String, u16, u16)>,
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.grants.allows(user, offer.public_key) { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.grants.allows(user, key.public_key) {
            self.user = Some(user.to_string());
            tracing::info!(peer = %self.peer, user, "SSH login");
            Ok(Auth::Accept)
        } else {
            tracing::info!(peer = %self.peer, user, "SSH login refused");
            Ok(Auth::reject())
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let user = self.user.clone().unwrap_or_default();
        if let Some(g) = self.grants.0.lock().expect("ssh grants").get_mut(&user) {
            g.connections.push(session.handle());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let user = self.user.clone().unwrap_or_default();
        tokio::spawn(serve_channel(channel, self.root.clone(), user));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.ptys.insert(channel, (term.to_string(), col_width as u16, row_height as u16));
        session.channel_success(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The environment is the VM's; a client's LANG or TERM does not change it.
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // No SFTP: `bosun scp` and `scp -O` copy through `exec`.
        session.channel_failure(channel)
    }
}

/// Serves one session channel: waits for `exec` or `shell` (after an optional `pty-req`), runs
/// it, passes data both ways, and ends with the exit status.
async fn serve_channel(mut channel: Channel<Msg>, root: PathBuf, user: String) {
    let mut pty: Option<(String, u16, u16)> = None;
    let command = loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestPty { term, col_width, row_height, .. }) => {
                pty = Some((term, col_width as u16, row_height as u16))
            }
            Some(ChannelMsg::Exec { command, .. }) => break Some(String::from_utf8_lossy(&command).into_owned()),
            Some(ChannelMsg::RequestShell { .. }) => break None,
            Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    };
    let env = session_env(&root, &user);
    let status = match pty {
        Some((term, cols, rows)) => run_on_terminal(&mut channel, &root, env, command, &term, cols, rows).await,
        None => run_piped(&mut channel, &root, env, command).await,
    };
    match status {
        Ok(code) => {
            let _ = channel.exit_status(code).await;
        }
        Err(e) => {
            let _ = channel.extended_data(1, format!("bosun-agent: {e}\r\n").as_bytes()).await;
            let _ = channel.exit_status(255).await;
        }
    }
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

fn session_env(root: &Path, user: &str) -> Vec<(String, String)> {
    let path =
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    vec![
        ("PATH".into(), path),
        ("HOME".into(), root.display().to_string()),
        ("USER".into(), user.to_string()),
        ("LOGNAME".into(), user.to_string()),
        ("SHELL".into(), login_shell().into()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

fn login_shell() -> &'static str {
    if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

fn signal_of(sig: &Sig) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal;
    Some(match sig {
        Sig::HUP => Signal::SIGHUP,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::ALRM => Signal::SIGALRM,
        Sig::PIPE => Signal::SIGPIPE,
        _ => return None,
    })
}

fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
}

async fn run_piped(
    channel: &mut Channel<Msg>,
    root: &Path,
    env: Vec<(String, String)>,
    command: Option<String>,
) -> Result<u32, String> {
    let mut cmd = tokio::process::Command::new(login_shell());
    match &command {
        Some(c) => cmd.arg("-c").arg(c),
        None => cmd.arg("-l"),
    };
    cmd.env_clear().envs(env).current_dir(root);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    // Its own group: a signal from the client, or the client going away, reaches all of it.
    cmd.process_group(0).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", login_shell()))?;
    let pid = child.id().unwrap_or(0);
    let mut stdin = child.stdin.take();
    let (tx, mut rx) = mpsc::channel::<(Option<u32>, Vec<u8>)>(16);
    let pumps = [
        child.stdout.take().map(|o| tokio::spawn(pump(o, None, tx.clone()))),
        child.stderr.take().map(|e| tokio::spawn(pump(e, Some(1), tx.clone()))),
    ];
    drop(tx);
    let mut output_done = false;
    let mut status = None;
    loop {
        tokio::select! {
            out = rx.recv(), if !output_done => match out {
                Some((None, data)) => { let _ = channel.data(&data[..]).await; }
                Some((Some(ext), data)) => { let _ = channel.extended_data(ext, &data[..]).await; }
                None => output_done = true,
            },
            s = child.wait(), if status.is_none() => status = Some(s.map_err(|e| e.to_string())?),
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(i) = stdin.as_mut() {
                        if i.write_all(&data).await.is_err() { stdin = None; }
                    }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(s) = signal_of(&signal) { signal_group(pid, s); }
                }
                Some(_) => {}
                // The client went away: the command's group is hung up on.
                None => {
                    signal_group(pid, nix::sys::signal::Signal::SIGHUP);
                    let _ = child.kill().await;
                    return Err("the client went away".into());
                }
            },
        }
        if output_done {
            if let Some(s) = status {
                for p in pumps.into_iter().flatten() {
                    let _ = p.await;
                }
                return Ok(exit_code(s));
            }
        }
    }
}

async fn pump(mut from: impl tokio::io::AsyncRead + Unpin, ext: Option<u32>, to: mpsc::Sender<(Option<u32>, Vec<u8>)>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send((ext, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u32,
        (None, Some(s)) => 128 + s as u32,
        _ => 255,
    }
}

async fn run_on_terminal(
    channel: &mut Channel<Msg>,
    root: &Path,
    env: Vec<(String, String)>,
    command: Option<String>,
    term: &str,
    cols: u16,
    rows: u16,
) -> Result<u32, String> {
    let size = |cols: u16, rows: u16| portable_pty::PtySize {
        rows: rows.max(1),
        cols: cols.max(1),
        pixel_width: 0,
        pixel_height: 0,
    };
    let pair =
        portable_pty::native_pty_system().openpty(size(cols, rows)).map_err(|e| format!("opening a terminal: {e}"))?;
    let mut cmd = portable_pty::CommandBuilder::new(login_shell());
    match &command {
        Some(c) => cmd.args(["-c", c]),
        None => cmd.arg("-l"),
    }
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("TERM", if term.is_empty() { "xterm" } else { term });
    cmd.cwd(root);
    let mut child = pair.slave.spawn_command(cmd).map_err(|e| format!("starting {}: {e}", login_shell()))?;
    // The slave end stays open only in the child: the master reads EOF once the shell is gone.
    drop(pair.slave);
    let pid = child.process_id().unwrap_or(0);
    let mut reader = pair.master.try_clone_reader().map_err(|e| e.to_string())?;
    let mut writer = pair.master.take_writer().map_err(|e| e.to_string())?;
    let master = pair.master;
    // Terminal I/O is blocking: a thread each way, channels to the async side.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        while let Some(data) = in_rx.blocking_recv() {
            if std::io::Write::write_all(&mut writer, &data).and_then(|_| std::io::Write::flush(&mut writer)).is_err() {
                return;
            }
        }
    });
    let (status_tx, mut status_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });
    let mut status = None;
    let mut output_done = false;
    loop {
        tokio::select! {
            out = out_rx.recv(), if !output_done => match out {
                Some(data) => { let _ = channel.data(&data[..]).await; }
                None => output_done = true,
            },
            s = &mut status_rx, if status.is_none() => {
                status = Some(s.map_err(|_| "the shell's waiter went away".to_string())?.map_err(|e| e.to_string())?);
            }
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => { let _ = in_tx.send(data.to_vec()).await; }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let _ = master.resize(size(col_width as u16, row_height as u16));
                }
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(s) = signal_of(&signal) { signal_group(pid, s); }
                }
                Some(_) => {}
                None => {
                    signal_group(pid, nix::sys::signal::Signal::SIGHUP);
                    return Err("the client went away".into());
                }
            },
        }
        // Output still buffered in the terminal goes before the exit status; a process left
        // holding the terminal open (a background job) does not keep the session alive.
        if let Some(s) = &status {
            while !output_done {
                match tokio::time::timeout(Duration::from_millis(200), out_rx.recv()).await {
                    Ok(Some(data)) => {
                        let _ = channel.data(&data[..]).await;
                    }
                    _ => output_done = true,
                }
            }
            return Ok(s.exit_code());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_users_are_the_directors_own() {
        assert!(is_session_user("bosun_0a1b2c"));
        for bad in ["root", "bosun_", "bosun_A", "bosun_a;b", "bosun_../x", &format!("bosun_{}", "a".repeat(33))] {
            assert!(!is_session_user(bad), "{bad}");
        }
    }

    #[test]
    fn the_host_key_is_made_once_and_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/host_ed25519_key");
        let a = load_or_make_host_key(&path).unwrap();
        let b = load_or_make_host_key(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_grant_lets_in_only_its_key_until_it_expires() {
        let grants = Grants::default();
        let key = |seed: u8| PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32])).public_key().clone();
        grants.0.lock().unwrap().insert(
            "bosun_a".into(),
            Grant { key: key(1), expires: Instant::now() + Duration::from_secs(60), connections: vec![] },
        );
        grants.0.lock().unwrap().insert(
            "bosun_b".into(),
            Grant { key: key(2), expires: Instant::now() - Duration::from_secs(1), connections: vec![] },
        );
        assert!(grants.allows("bosun_a", &key(1)));
        assert!(!grants.allows("bosun_a", &key(2)), "another key");
        assert!(!grants.allows("bosun_c", &key(1)), "another user");
        assert!(!grants.allows("bosun_b", &key(2)), "expired");
    }
}
