//! `bosun ssh` and `bosun scp`: a russh client to the agents' SSH servers.
//!
//! Each run makes a fresh ed25519 key in memory, asks the director to let it in for a while
//! (`POST …/ssh`: the answer names the session's user, each instance's address and the host key
//! its VM registered), connects — directly, or through the director with `--gateway` — refusing
//! any other host key, and asks the director to remove the key when done. `--print-config` hands
//! the key, a known-hosts file and an ssh_config to OpenSSH instead.

use crate::client::Client;
use crate::{deployment, InputError, RemoteExit};
use anyhow::{Context, Result};
use bosun_types::api::{SshCleanupRequest, SshSessionView, SshSetupRequest, SshTargetView};
use russh::client;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What `bosun ssh` was asked for.
pub struct SshOptions<'a> {
    pub instances: &'a [String],
    pub command: Option<&'a str>,
    pub print_config: Option<&'a Path>,
    pub gateway: bool,
    pub expires_in_s: u64,
}

/// A session the director set up. [`Session::close`] removes its key again (cleanup is async,
/// so not in `Drop`: every path out of the commands calls it).
struct Session {
    client: Client,
    deployment: String,
    key: Arc<PrivateKey>,
    view: SshSessionView,
    instances: Vec<String>,
}

impl Session {
    async fn open(client: Client, deployment: &str, instances: &[String], expires_in_s: u64) -> Result<Self> {
        let key = Arc::new(fresh_key()?);
        let public_key = key.public_key().to_openssh().context("encoding the session key")?;
        let req = SshSetupRequest { instances: instances.to_vec(), public_key, expires_in_s: Some(expires_in_s) };
        let view: SshSessionView = client.post_json(&format!("/v1/deployments/{deployment}/ssh"), &req).await?;
        Ok(Self { client, deployment: deployment.to_string(), key, view, instances: instances.to_vec() })
    }

    async fn close(self) {
        let req = SshCleanupRequest { user: self.view.user.clone(), instances: self.instances.clone() };
        let path = format!("/v1/deployments/{}/ssh/cleanup", self.deployment);
        if let Err(e) = self.client.post_json_unit(&path, &req).await {
            eprintln!("warning: removing the session key: {e:#} (it expires in {} s)", self.view.expires_in_s);
        }
    }

    /// An authenticated SSH connection to one instance.
    async fn connect(&self, target: &SshTargetView, gateway: bool) -> Result<client::Handle<PinnedHost>> {
        let expected = PublicKey::from_openssh(&target.host_key)
            .with_context(|| format!("{}: the director gave a malformed host key", target.instance))?;
        let presented = Arc::new(Mutex::new(None));
        let handler = PinnedHost { expected: expected.clone(), presented: presented.clone() };
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            ..Default::default()
        });
        let name = label(target);
        let connecting = async {
            if gateway {
                let stream = self.client.ssh_tunnel(&self.deployment, &target.instance).await?;
                Ok::<_, anyhow::Error>(client::connect_stream(config, stream, handler).await)
            } else {
                let tcp = tokio::net::TcpStream::connect(&target.address)
                    .await
                    .with_context(|| format!("{name}: connecting to {}", target.address))?;
                tcp.set_nodelay(true)?;
                Ok(client::connect_stream(config, tcp, handler).await)
            }
        };
        let handshake = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.map_err(|_| {
            anyhow::anyhow!("{name}: no SSH answer from {} within {} s", target.address, CONNECT_TIMEOUT.as_secs())
        })??;
        let mut handle = match handshake {
            Ok(h) => h,
            Err(e) => {
                if let Some(other) = presented.lock().expect("host key").clone() {
                    return Err(HostKeyMismatch {
                        instance: name,
                        address: target.address.clone(),
                        presented: other,
                        registered: expected.fingerprint(HashAlg::Sha256).to_string(),
                    }
                    .into());
                }
                return Err(anyhow::Error::new(e).context(format!("{name}: SSH to {}", target.address)));
            }
        };
        let auth = handle
            .authenticate_publickey(&self.view.user, PrivateKeyWithHashAlg::new(self.key.clone(), None))
            .await
            .with_context(|| format!("{name}: authenticating"))?;
        if !auth.success() {
            anyhow::bail!("{name}: the VM refused the session key (expired or removed)");
        }
        Ok(handle)
    }
}

/// The VM answered with a host key other than the one it registered: someone else may be at
/// its address. Nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error(
    "{instance}: {address} presented host key {presented}, but its VM registered {registered}: refusing to connect \
     (another machine may be answering at that address)"
)]
pub struct HostKeyMismatch {
    instance: String,
    address: String,
    presented: String,
    registered: String,
}

/// Accepts only the host key the VM registered with the director.
struct PinnedHost {
    expected: PublicKey,
    /// The fingerprint of a different key the server showed, for the error.
    presented: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let ok = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                if key.key_data() != self.expected.key_data() {
                    *self.presented.lock().expect("host key") = Some(key.fingerprint(HashAlg::Sha256).to_string());
                }
                key.key_data() == self.expected.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => {
                *self.presented.lock().expect("host key") = Some("a certificate".into());
                false
            }
        };
        Ok(ok)
    }
}

fn fresh_key() -> Result<PrivateKey> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| anyhow::anyhow!("no randomness for the session key"))?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

/// `group/index`, as operators name instances.
fn label(t: &SshTargetView) -> String {
    let group = t.instance.split('/').next().unwrap_or(&t.instance);
    format!("{group}/{}", t.index)
}

fn check_instances(instances: &[String]) -> Result<()> {
    for i in instances {
        i.parse::<bosun_types::api::InstanceSelector>().map_err(InputError::new)?;
    }
    Ok(())
}

pub async fn ssh(cli: &crate::Cli, o: SshOptions<'_>) -> Result<()> {
    let d = deployment(cli)?.to_string();
    check_instances(o.instances)?;
    if o.expires_in_s == 0 || o.expires_in_s > 24 * 3600 {
        return Err(InputError::new("--expires: between 1 and 86400 seconds").into());
    }
    if let Some(dir) = o.print_config {
        if o.command.is_some() || o.gateway {
            return Err(InputError::new("--print-config takes neither -c nor --gateway").into());
        }
        let session = Session::open(crate::client(cli)?, &d, o.instances, o.expires_in_s).await?;
        return print_config(cli, &session, dir);
    }
    let session = Session::open(crate::client(cli)?, &d, o.instances, o.expires_in_s).await?;
    let outcome = match o.command {
        Some(command) => run_everywhere(&session, command, o.gateway).await,
        None => interactive(&session, o.gateway).await,
    };
    session.close().await;
    outcome
}

/// `--revoke USER`: the session's key removed from the instances named (every one when none).
pub async fn revoke(cli: &crate::Cli, instances: &[String], user: &str) -> Result<()> {
    let d = deployment(cli)?;
    check_instances(instances)?;
    let req = SshCleanupRequest { user: user.to_string(), instances: instances.to_vec() };
    crate::client(cli)?.post_json_unit(&format!("/v1/deployments/{d}/ssh/cleanup"), &req).await?;
    if !cli.json {
        println!("Session {user}: key removed, its connections closed");
    }
    Ok(())
}

/// Runs `command` on every target at once; one target's output passes through as it is, several
/// targets' lines are prefixed with the instance. Exits with the first non-zero status.
async fn run_everywhere(session: &Session, command: &str, gateway: bool) -> Result<()> {
    let targets = &session.view.targets;
    if let [only] = &targets[..] {
        let code = run_one(session, only, command, gateway, None).await?;
        return exit_with(label(only), code);
    }
    let width = targets.iter().map(|t| label(t).len()).max().unwrap_or(0);
    let runs = targets.iter().map(|t| {
        let prefix = format!("{:width$}  ", label(t));
        async move { (t, run_one(session, t, command, gateway, Some(prefix)).await) }
    });
    let mut first_failure = None;
    for (t, result) in futures::future::join_all(runs).await {
        match result {
            Ok(0) => {}
            Ok(code) => {
                eprintln!("{}: exited {code}", label(t));
                first_failure.get_or_insert((label(t), code));
            }
            Err(e) => {
                eprintln!("{e:#}");
                first_failure.get_or_insert((label(t), 255));
            }
        }
    }
    match first_failure {
        None => Ok(()),
        Some((what, code)) => exit_with(what, code),
    }
}

fn exit_with(what: String, code: u32) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    Err(RemoteExit { what: format!("{what}: the command"), code: code.min(255) as i32 }.into())
}

/// Runs one command; stdin is passed on only to a single target and only when it is not a
/// terminal (a pipe or a file, as `bosun scp` uses).
async fn run_one(
    session: &Session,
    target: &SshTargetView,
    command: &str,
    gateway: bool,
    prefix: Option<String>,
) -> Result<u32> {
    let handle = session.connect(target, gateway).await?;
    let mut channel = handle.channel_open_session().await?;
    channel.exec(true, command).await?;
    let feed_stdin = prefix.is_none() && !std::io::stdin().is_terminal();
    let writer = channel.make_writer();
    let stdin_pump = feed_stdin.then(|| {
        tokio::spawn(async move {
            let mut writer = writer;
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut writer).await;
            let _ = writer.shutdown().await;
        })
    });
    if !feed_stdin {
        channel.eof().await?;
    }
    let mut out = LineSink::new(prefix.clone(), false);
    let mut err = LineSink::new(prefix, true);
    let mut code = None;
    let mut interrupts = 0;
    loop {
        tokio::select! {
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => out.write(&data).await?,
                Some(ChannelMsg::ExtendedData { data, .. }) => err.write(&data).await?,
                Some(ChannelMsg::ExitStatus { exit_status }) => code = Some(exit_status),
                Some(ChannelMsg::ExitSignal { .. }) => code = code.or(Some(255)),
                Some(_) => {}
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                // The first Ctrl-C interrupts the remote command; a second gives up on it.
                interrupts += 1;
                if interrupts > 1 { break; }
                let _ = channel.signal(russh::Sig::INT).await;
            }
        }
    }
    if let Some(p) = stdin_pump {
        p.abort();
    }
    out.flush().await?;
    err.flush().await?;
    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    Ok(code.unwrap_or(255))
}

/// Output as it comes; with a prefix, whole lines each behind it.
struct LineSink {
    prefix: Option<String>,
    stderr: bool,
    partial: Vec<u8>,
}

impl LineSink {
    fn new(prefix: Option<String>, stderr: bool) -> Self {
        Self { prefix, stderr, partial: Vec::new() }
    }

    async fn emit(&self, bytes: &[u8]) -> Result<()> {
        if self.stderr {
            let mut e = tokio::io::stderr();
            e.write_all(bytes).await?;
            e.flush().await?;
        } else {
            let mut o = tokio::io::stdout();
            o.write_all(bytes).await?;
            o.flush().await?;
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        let Some(prefix) = &self.prefix else { return self.emit(data).await };
        self.partial.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.extend_from_slice(prefix.as_bytes());
            lines.extend_from_slice(&line);
        }
        if !lines.is_empty() {
            self.emit(&lines).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let mut last = self.prefix.clone().unwrap_or_default().into_bytes();
        last.append(&mut self.partial);
        last.push(b'\n');
        self.emit(&last).await
    }
}

/// The terminal in raw mode for the session's length: keys go to the VM as typed (Ctrl-C
/// included), and the remote terminal does the echoing.
struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<Self> {
        let saved = rustix::termios::tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &self.saved);
    }
}

fn terminal_size() -> (u32, u32) {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .filter(|w| w.ws_col > 0 && w.ws_row > 0)
        .map(|w| (w.ws_col as u32, w.ws_row as u32))
        .unwrap_or((80, 24))
}

/// A login shell on one instance: on a terminal, a pseudo-terminal there (size kept in step);
/// otherwise the shell reads this side's stdin.
async fn interactive(session: &Session, gateway: bool) -> Result<()> {
    let target = match &session.view.targets[..] {
        [one] => one,
        many => {
            return Err(InputError::new(format!(
                "an interactive shell needs one instance; {} match (name one as GROUP/INDEX, or give -c)",
                many.len()
            ))
            .into())
        }
    };
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !tty {
        let code = run_shell_piped(session, target, gateway).await?;
        return exit_with(label(target), code);
    }
    let handle = session.connect(target, gateway).await?;
    let mut channel = handle.channel_open_session().await?;
    let (cols, rows) = terminal_size();
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    channel.request_pty(true, &term, cols, rows, 0, 0, &[]).await?;
    channel.request_shell(true).await?;
    let raw = RawTerminal::enter();
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = true;
    let mut code = None;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => { stdin_open = false; let _ = channel.eof().await; }
                Ok(n) => channel.data(&buf[..n]).await?,
            },
            _ = resized.recv() => {
                let (cols, rows) = terminal_size();
                let _ = channel.window_change(cols, rows, 0, 0).await;
            }
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    stdout.write_all(&data).await?;
                    stdout.flush().await?;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => code = Some(exit_status),
                Some(_) => {}
                None => break,
            },
        }
    }
    drop(raw);
    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    exit_with(label(target), code.unwrap_or(0))
}

async fn run_shell_piped(session: &Session, target: &SshTargetView, gateway: bool) -> Result<u32> {
    let handle = session.connect(target, gateway).await?;
    let mut channel = handle.channel_open_session().await?;
    channel.request_shell(true).await?;
    let writer = channel.make_writer();
    let pump = tokio::spawn(async move {
        let mut writer = writer;
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut writer).await;
        let _ = writer.shutdown().await;
    });
    let mut out = LineSink::new(None, false);
    let mut err = LineSink::new(None, true);
    let mut code = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.write(&data).await?,
            ChannelMsg::ExtendedData { data, .. } => err.write(&data).await?,
            ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
            _ => {}
        }
    }
    pump.abort();
    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    Ok(code.unwrap_or(255))
}

/// Writes what OpenSSH needs into `dir`: the session key (owner-only), a known-hosts file with
/// each VM's registered host key, and an ssh_config naming each instance (`GROUP/INDEX` and
/// `GROUP/UUID`). The key stays valid until it expires.
fn print_config(cli: &crate::Cli, session: &Session, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let key_path = dir.join("id_ed25519");
    let known_hosts = dir.join("known_hosts");
    let config_path = dir.join("config");
    let key_text = session.key.to_openssh(LineEnding::LF).context("encoding the session key")?;
    write_private(&key_path, key_text.as_bytes())?;
    let mut hosts = String::new();
    let mut config = format!(
        "# bosun ssh: deployment {}, session {}, valid for {} s from its making\n",
        session.deployment, session.view.user, session.view.expires_in_s
    );
    for t in &session.view.targets {
        let (ip, port) = t.address.rsplit_once(':').unwrap_or((&t.address, "22"));
        let host_pattern = if port == "22" { ip.to_string() } else { format!("[{ip}]:{port}") };
        hosts.push_str(&format!("{host_pattern} {}\n", t.host_key.trim()));
        config.push_str(&format!(
            "\nHost {} {}\n  HostName {ip}\n  Port {port}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  HostKeyAlias {host_pattern}\n",
            label(t),
            t.instance,
            session.view.user,
            key_path.display(),
            known_hosts.display(),
        ));
    }
    write_private(&known_hosts, hosts.as_bytes())?;
    write_private(&config_path, config.as_bytes())?;
    if cli.json {
        return crate::print_json(&serde_json::json!({
            "user": session.view.user,
            "expires_in_s": session.view.expires_in_s,
            "identity_file": key_path,
            "known_hosts": known_hosts,
            "config": config_path,
            "targets": session.view.targets,
        }));
    }
    println!("Session {} valid for {} s; for OpenSSH:", session.view.user, session.view.expires_in_s);
    for t in &session.view.targets {
        println!("  ssh -F {} {}", config_path.display(), label(t));
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

/// One side of `bosun scp`: a local path, or `INSTANCE:PATH` on VMs.
#[derive(Debug, Clone, PartialEq)]
enum Place {
    Local(PathBuf),
    Remote { instance: String, path: String },
}

fn place(arg: &str) -> Result<Place> {
    // A local path with a colon is written with a slash before it (`./a:b`), as scp has it.
    match arg.split_once(':') {
        Some((instance, path))
            if !instance.contains('/') || instance.parse::<bosun_types::api::InstanceSelector>().is_ok() =>
        {
            if path.is_empty() {
                return Err(InputError::new(format!("`{arg}`: no path after `{instance}:`")).into());
            }
            instance.parse::<bosun_types::api::InstanceSelector>().map_err(InputError::new)?;
            Ok(Place::Remote { instance: instance.to_string(), path: path.to_string() })
        }
        _ => Ok(Place::Local(PathBuf::from(arg))),
    }
}

/// `'…'` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `bosun scp SRC DST`: one side `INSTANCE:PATH`. An upload goes to every instance named; a
/// download comes from one. `-r` copies directories (as a tar stream).
pub async fn scp(cli: &crate::Cli, from: &str, to: &str, recursive: bool, gateway: bool) -> Result<()> {
    let d = deployment(cli)?.to_string();
    let (from, to) = (place(from)?, place(to)?);
    match (from, to) {
        (Place::Local(src), Place::Remote { instance, path }) => {
            let meta = std::fs::metadata(&src).with_context(|| format!("reading {}", src.display()))?;
            if meta.is_dir() && !recursive {
                return Err(InputError::new(format!("{} is a directory (copy it with -r)", src.display())).into());
            }
            let payload = if meta.is_dir() { tar_of(&src)? } else { std::fs::read(&src)? };
            let command = if meta.is_dir() {
                format!("mkdir -p {0} && tar -xf - -C {0}", sh_quote(&path))
            } else {
                format!("cat > {}", sh_quote(&path))
            };
            let session = Session::open(crate::client(cli)?, &d, std::slice::from_ref(&instance), 600).await?;
            let sent = futures::future::join_all(
                session.view.targets.iter().map(|t| exec_bytes(&session, t, &command, &payload, gateway)),
            )
            .await;
            session.close().await;
            for r in sent {
                r?;
            }
            Ok(())
        }
        (Place::Remote { instance, path }, Place::Local(dst)) => {
            let session = Session::open(crate::client(cli)?, &d, std::slice::from_ref(&instance), 600).await?;
            let outcome = async {
                let [target] = &session.view.targets[..] else {
                    return Err(InputError::new(format!(
                        "`{instance}` matches {} instances: copy from one (GROUP/INDEX)",
                        session.view.targets.len()
                    ))
                    .into());
                };
                let command = if recursive {
                    let p = Path::new(&path);
                    let parent = p.parent().map(|x| x.display().to_string()).filter(|x| !x.is_empty());
                    let name = p.file_name().map(|x| x.to_string_lossy().into_owned()).unwrap_or_else(|| ".".into());
                    format!("tar -cf - -C {} {}", sh_quote(&parent.unwrap_or_else(|| ".".into())), sh_quote(&name))
                } else {
                    format!("cat {}", sh_quote(&path))
                };
                let bytes = exec_bytes(&session, target, &command, &[], gateway).await?;
                if recursive {
                    std::fs::create_dir_all(&dst)?;
                    tar::Archive::new(&bytes[..])
                        .unpack(&dst)
                        .with_context(|| format!("unpacking into {}", dst.display()))
                } else {
                    let dst = if dst.is_dir() {
                        dst.join(Path::new(&path).file_name().unwrap_or_default())
                    } else {
                        dst.clone()
                    };
                    std::fs::write(&dst, &bytes).with_context(|| format!("writing {}", dst.display()))
                }
            }
            .await;
            session.close().await;
            outcome
        }
        _ => Err(InputError::new("scp copies between this machine and instances: one side is INSTANCE:PATH").into()),
    }
}

fn tar_of(dir: &Path) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).with_context(|| format!("packing {}", dir.display()))?;
    Ok(b.into_inner()?)
}

/// Runs `command` on one instance with `input` on its stdin; its stdout, when it exits 0.
async fn exec_bytes(
    session: &Session,
    t: &SshTargetView,
    command: &str,
    input: &[u8],
    gateway: bool,
) -> Result<Vec<u8>> {
    let handle = session.connect(t, gateway).await?;
    let mut channel = handle.channel_open_session().await?;
    channel.exec(true, command).await?;
    if !input.is_empty() {
        channel.data(input).await?;
    }
    channel.eof().await?;
    let (code, out, err) = collect(&mut channel).await;
    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    match code {
        Some(0) => Ok(out),
        other => anyhow::bail!(
            "{}: copying failed ({}): {}",
            label(t),
            exit_text(other),
            String::from_utf8_lossy(&err).trim()
        ),
    }
}

fn exit_text(code: Option<u32>) -> String {
    code.map_or_else(|| "no exit status".into(), |c| format!("exit {c}"))
}

async fn collect(channel: &mut russh::Channel<client::Msg>) -> (Option<u32>, Vec<u8>, Vec<u8>) {
    let (mut code, mut out, mut err) = (None, Vec::new(), Vec::new());
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
            _ => {}
        }
    }
    (code, out, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scp_places() {
        assert_eq!(place("etcd/0:/tmp/x").unwrap(), Place::Remote { instance: "etcd/0".into(), path: "/tmp/x".into() });
        assert_eq!(place("etcd:/tmp/x").unwrap(), Place::Remote { instance: "etcd".into(), path: "/tmp/x".into() });
        assert_eq!(place("./a:b").unwrap(), Place::Local("./a:b".into()));
        assert_eq!(place("/tmp/file").unwrap(), Place::Local("/tmp/file".into()));
        assert!(place("etcd/0:").is_err());
        assert!(place("et cd:/x").is_err());
    }

    #[test]
    fn quoting_keeps_a_path_one_word() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
