//! The bosun director: the HTTP API, the store, the planner and executor, the template renderer,
//! the agent hub and the blobstore, run as one process (`bosun director`).
//!
//! Data flow of a deploy: API → task → [`update::prepare`] (variables, manifest, cloud-config,
//! releases, stemcells → [`planner::plan`]) → [`update::execute`] (CPI calls and agent commands,
//! recording every outcome in the store).

pub mod api;
pub mod blob_gc;
pub mod blobstore;
pub mod cck;
pub mod cleanup;
pub mod clock;
pub mod compiled_cache;
pub mod compiled_releases;
pub mod disks;
pub mod errands;
pub mod events;
pub mod fault;
pub mod gate;
pub mod health;
pub mod hub;
pub mod journal;
pub mod log_throttle;
pub mod planner;
pub mod reconcile;
pub mod records;
pub mod render;
pub mod secrets;
pub mod ssh;
pub mod store;
pub mod tasks;
pub mod ui;
pub mod update;
pub mod uploads;
pub mod views;

use bosun_cpi::Cpi;
use bosun_types::pki::{CertAuthority, LeafUsage};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The name agents check the director's certificate against.
pub const DIRECTOR_SERVER_NAME: &str = "bosun-director";

#[derive(Debug, Clone)]
pub struct DirectorConfig {
    pub name: String,
    pub state_dir: PathBuf,
    /// The API listener (HTTPS, bearer token).
    pub listen: SocketAddr,
    /// The agent listener (mutual TLS). Port 0 picks a free port.
    pub agent_listen: SocketAddr,
    /// The address agents are told to dial; defaults to the agent listener's.
    pub agent_advertise: Option<String>,
    pub heartbeat_interval: Duration,
    /// How long a new VM's agent has to connect.
    pub agent_wait_timeout: Duration,
    /// How long an orphaned persistent disk is kept before the director deletes it.
    pub orphaned_disk_retention: Duration,
    /// Grow persistent disks with the CPI's `resize_disk` instead of copying to a new disk (BOSH's
    /// `enable_cpi_resize_disk`, off by default there too: a copy also works across disk types).
    pub cpi_resize_disk: bool,
    /// Heartbeats an agent may miss before it is unresponsive (3; with 2 s heartbeats, 6 s).
    pub missed_heartbeats: u32,
    pub meltdown: health::MeltdownConfig,
    /// Where compiled packages are kept for every director on the machine (BOSH's
    /// `compiled_package_cache`); none: only in this director's blobstore.
    pub compiled_package_cache: Option<PathBuf>,
    /// A directory the compilers on compilation VMs keep their caches in between compilations
    /// (`BOSUN_BUILD_CACHE/<stemcell os>` in `packaging`'s environment): only for CPIs whose VMs
    /// see this machine's filesystem (the local CPI); none: every compilation starts cold.
    pub build_cache: Option<PathBuf>,
    /// How long one package's `packaging` may run on a compilation VM.
    pub compile_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    #[error("state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the director's CA")]
    Pki(#[source] bosun_types::pki::PkiError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretError),
    #[error(transparent)]
    Blobs(#[from] blobstore::BlobError),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
}

/// API connections that have not yet presented the token, at most (then the oldest is closed).
pub const UNAUTHENTICATED_API_CONNECTIONS: usize = 128;
/// Agent connections still in their TLS handshake, at most: agents reconnecting after a director
/// restart arrive together, so more than the API's.
pub const UNPROVEN_AGENT_CONNECTIONS: usize = 512;

/// The process's open-file limit: the gates take a bounded share of it, so whatever floods them
/// leaves descriptors for agents, the store and the CPI.
fn open_file_limit() -> usize {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(1024)
}

/// How long a connection has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TLS connections until the process ends: each accepted connection passes `gate` (which
/// closes the oldest unproven connection when too many are), gets its handshake (bounded, so a
/// silent peer cannot hold a task forever) and then `handle`, on its own task; `handle` proves
/// the admission once the peer has shown who it is. `what` names the listener in logs.
pub(crate) async fn serve_tls<F, Fut>(
    what: &'static str,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    gate: Arc<gate::ConnectionGate>,
    handle: F,
) where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr, Arc<gate::Admission>) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admission = Arc::new(gate.admit());
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let proven = admission.clone();
            let served = async move {
                static FAILED: log_throttle::LogThrottle = log_throttle::LogThrottle::new(5, Duration::from_secs(60));
                let failure = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => return handle(tls, peer, proven).await,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_string(),
                };
                if let Some(held_back) = FAILED.allow() {
                    tracing::warn!(listener = what, %peer, error = %failure, held_back, "TLS handshake failed");
                }
            };
            tokio::select! {
                () = served => {}
                () = admission.evicted() => tracing::debug!(listener = what, %peer, "closed: evicted by newer connections"),
            }
        });
    }
}

/// Makes the state directory (and everything the director keeps in it) its owner's alone: the
/// directory 0700, every directory below 0700, every file without group or other bits — also a
/// state directory made by an older director with looser modes. Leftovers of work a stop
/// interrupted (`tmp/`: uploads; `.*.tmp` files: blobs and keys being written) are removed.
fn secure_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = dir.join("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            let name = entry.file_name();
            if meta.is_dir() {
                // A CPI's own directory inside the state directory (where older directors kept
                // it) holds VM filesystems, whose modes are the VMs' business.
                if d != dir || !name.to_string_lossy().starts_with("cpi-") {
                    pending.push(entry.path());
                }
            } else if meta.is_file()
                && name.to_string_lossy().starts_with('.')
                && name.to_string_lossy().ends_with(".tmp")
            {
                std::fs::remove_file(entry.path())?;
            } else if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                let mode = meta.permissions().mode() & 0o700;
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    Ok(())
}

/// Writes a file only its owner can read (keys, tokens).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Everything a task or request handler needs.
pub struct Director {
    pub config: DirectorConfig,
    pub uuid: String,
    pub state: store::State,
    pub cpi: Arc<dyn Cpi>,
    pub hub: Arc<hub::AgentHub>,
    pub blobstore: blobstore::Blobstore,
    pub tasks: tasks::Tasks,
    pub events: events::Events,
    pub journal: journal::Journal,
    pub clock: Arc<dyn clock::Clock>,
    /// The CPI's latest answers about VMs, shared by every health classification.
    pub sightings: health::VmSightings,
    pub ca: CertAuthority,
    pub secrets: secrets::SecretBox,
    pub token: String,
    /// `host:port` agents dial.
    pub agent_address: String,
    pub api_address: SocketAddr,
    /// The browsers signed in to `/ui`.
    pub ui_sessions: ui::Sessions,
}

impl Director {
    /// Whether `presented` is this director's API token (compared in constant time).
    pub fn token_matches(&self, presented: &str) -> bool {
        let (a, b) = (presented.as_bytes(), self.token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Whether the blobstore holds `digest` with the right bytes (a corrupt copy is moved aside
    /// and counts as absent, so what made it makes it again).
    pub async fn blob_is_sound(&self, digest: &str) -> bool {
        let (blobstore, digest) = (self.blobstore.clone(), digest.to_string());
        tokio::task::spawn_blocking(move || blobstore.has_sound(&digest)).await.unwrap_or(false)
    }

    /// The director's CA certificate, which clients verify its API against.
    pub fn ca_cert_path(&self) -> PathBuf {
        let path = self.config.state_dir.join("ca.pem");
        path.canonicalize().unwrap_or(path)
    }
}

/// A started director: its address and credentials, and the tasks serving it.
pub struct RunningDirector {
    pub director: Arc<Director>,
    pub env_file: PathBuf,
}

/// The director's CA: its certificate in `ca.pem`, its key sealed with the secrets key in
/// `ca.key.sealed` (a key an older director wrote in plaintext, `ca.key`, is sealed and removed).
fn load_or_create_ca(dir: &Path, secrets: &secrets::SecretBox) -> Result<CertAuthority, DirectorError> {
    let cert_path = dir.join("ca.pem");
    let sealed_path = dir.join("ca.key.sealed");
    let plain_path = dir.join("ca.key");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DirectorError::StateDir { path, source }
    };
    if cert_path.exists() {
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = if plain_path.exists() {
            let key = std::fs::read_to_string(&plain_path).map_err(io(&plain_path))?;
            write_private(&sealed_path, &secrets.seal(key.as_bytes())).map_err(io(&sealed_path))?;
            std::fs::remove_file(&plain_path).map_err(io(&plain_path))?;
            key
        } else {
            let sealed = std::fs::read(&sealed_path).map_err(io(&sealed_path))?;
            String::from_utf8(secrets.open(&sealed)?).map_err(|_| secrets::SecretError::Decrypt)?
        };
        return CertAuthority::from_pem(&cert, &key).map_err(DirectorError::Pki);
    }
    let ca = CertAuthority::generate("bosun director CA", Some("bosun"), 3650).map_err(DirectorError::Pki)?;
    write_private(&sealed_path, &secrets.seal(ca.key_pem().as_bytes())).map_err(io(&sealed_path))?;
    write_private(&cert_path, ca.cert_pem().as_bytes()).map_err(io(&cert_path))?;
    Ok(ca)
}

fn load_or_create_token(path: &Path) -> Result<String, DirectorError> {
    use rand::RngCore;
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => {
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            let token = hex::encode(b);
            write_private(path, token.as_bytes())
                .map_err(|source| DirectorError::StateDir { path: path.to_path_buf(), source })?;
            Ok(token)
        }
    }
}

fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).filter_map(Result::ok).collect()
}

fn pem_key(pem: &str) -> Option<rustls::pki_types::PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes()).ok().flatten()
}

/// Starts the director: opens the store, the CA and the listeners, writes `DIR/env`, and spawns
/// the API and agent servers. Returns once it is serving.
pub async fn start(config: DirectorConfig, cpi: Arc<dyn Cpi>) -> Result<RunningDirector, DirectorError> {
    let dir = config.state_dir.clone();
    // The state directory's files, read or made once, off the async threads.
    let opened = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<_, DirectorError> {
            secure_state_dir(&dir).map_err(|source| DirectorError::StateDir { path: dir.clone(), source })?;
            let secrets = secrets::SecretBox::load_or_create(&dir.join("secrets.key"))?;
            Ok((
                load_or_create_ca(&dir, &secrets)?,
                load_or_create_token(&dir.join("token"))?,
                secrets,
                store::SledStore::open(&dir.join("db"))?,
                blobstore::Blobstore::open(&dir.join("blobs"))?,
            ))
        })
        .await
    };
    let (ca, token, secrets, kv, blobstore) = match opened {
        Ok(opened) => opened?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let state = store::State::new(Arc::new(kv));
    let uuid = match state.kv().get(store::Tree::Meta, "director_uuid").await? {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => {
            let u = uuid::Uuid::new_v4().to_string();
            state.kv().put(store::Tree::Meta, "director_uuid", u.as_bytes()).await?;
            u
        }
    };
    // Before any call: an external CPI names the director in every request's context.
    cpi.set_director_uuid(&uuid);
    let clock: Arc<dyn clock::Clock> = Arc::new(clock::SystemClock);
    let events = events::Events::new(state.clone(), clock.clone());
    let tasks = tasks::Tasks::new(state.clone(), events.clone(), clock.clone());
    let interrupted = tasks.recover_after_restart().await?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "marked tasks interrupted by the last stop as failed");
    }
    let journal = journal::Journal::new(state.clone(), clock.clone());
    let cpi: Arc<dyn Cpi> = Arc::new(journal::JournaledCpi::new(cpi, journal.clone()));
    let hub = hub::AgentHub::new(
        state.clone(),
        blobstore.clone(),
        journal.clone(),
        config.heartbeat_interval,
        config.missed_heartbeats.max(1),
        clock.clone(),
    );

    let api_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DirectorError::Bind { addr: config.listen, source })?;
    let agent_listener = tokio::net::TcpListener::bind(config.agent_listen)
        .await
        .map_err(|source| DirectorError::Bind { addr: config.agent_listen, source })?;
    let api_address =
        api_listener.local_addr().map_err(|source| DirectorError::Bind { addr: config.listen, source })?;
    let agent_bound =
        agent_listener.local_addr().map_err(|source| DirectorError::Bind { addr: config.agent_listen, source })?;
    let agent_address = config.agent_advertise.clone().unwrap_or_else(|| agent_bound.to_string());

    // A fresh server certificate each start, for the addresses it serves on.
    let mut sans = vec![
        DIRECTOR_SERVER_NAME.to_string(),
        "localhost".to_string(),
        api_address.ip().to_string(),
        agent_bound.ip().to_string(),
    ];
    if let Some(host) = agent_address.rsplit_once(':').map(|(h, _)| h.to_string()) {
        sans.push(host);
    }
    sans.sort();
    sans.dedup();
    let server = ca
        .issue(DIRECTOR_SERVER_NAME, &sans, LeafUsage { server: true, client: false }, 365, false)
        .map_err(DirectorError::Pki)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = pem_key(&server.key_pem).expect("a key we just made parses");
    let api_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(DirectorError::Tls)?
        .with_no_client_auth()
        .with_single_cert(pem_certs(&server.cert_pem), key.clone_key())
        .map_err(DirectorError::Tls)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca.cert_pem()) {
        roots.add(c).map_err(DirectorError::Tls)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| DirectorError::Tls(rustls::Error::General(e.to_string())))?;
    let agent_tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(DirectorError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pem_certs(&server.cert_pem), key)
        .map_err(DirectorError::Tls)?;

    let director = Arc::new(Director {
        config,
        uuid,
        state,
        cpi,
        hub: hub.clone(),
        blobstore,
        tasks,
        events,
        journal,
        clock,
        sightings: health::VmSightings::default(),
        ca,
        secrets,
        token,
        agent_address,
        api_address,
        ui_sessions: ui::Sessions::default(),
    });
    let settled = reconcile::after_restart(&director).await;
    // Nothing runs yet: every blob a task could be writing is an earlier process's leftover.
    if let Err(e) = blob_gc::collect(&director).await {
        tracing::warn!(error = %e, "collecting unreferenced blobs failed");
    }
    director
        .events
        .record(
            events::EventSubject {
                object_type: "director",
                object_name: director.config.name.clone(),
                ..Default::default()
            },
            "start",
            "director",
            format!("director started; {interrupted} interrupted task(s); {settled}"),
        )
        .await;
    tokio::spawn(disks::sweep_expired_orphans(director.clone()));
    tokio::spawn(health::monitor(director.clone()));
    tokio::spawn(hub.serve(
        agent_listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(agent_tls)),
        gate::ConnectionGate::new("agents", UNPROVEN_AGENT_CONNECTIONS.min(open_file_limit() / 4)),
    ));
    tokio::spawn(api::serve(
        director.clone(),
        api_listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(api_tls)),
        gate::ConnectionGate::new("api", UNAUTHENTICATED_API_CONNECTIONS.min(open_file_limit() / 8)),
    ));

    let env_file = dir.join("env");
    let env = format!(
        "export BOSUN_DIRECTOR=https://{api_address}\nexport BOSUN_CA_CERT={}\nexport BOSUN_TOKEN={}\n",
        director.ca_cert_path().display(),
        director.token
    );
    write_private(&env_file, env.as_bytes())
        .map_err(|source| DirectorError::StateDir { path: env_file.clone(), source })?;
    tracing::info!(api = %api_address, agents = %director.agent_address, cpi = director.cpi.name(), "director started");
    Ok(RunningDirector { director, env_file })
}
