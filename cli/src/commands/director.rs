//! `bosun director` (run a director) and `bosun target`.

use crate::client::{Client, Target};
use crate::{cpis, print_json, Cli, InputError};
use anyhow::Result;
use bosun_types::api::*;
use std::path::PathBuf;
use std::time::Duration;

pub async fn target(cli: &Cli) -> Result<()> {
    let t = Target::resolve(cli.director.as_deref(), cli.ca_cert.as_deref(), cli.token.as_deref())?;
    let c = Client::new(t.clone())?;
    let info: DirectorInfo = c.get("/v1/info").await?;
    if cli.director.is_some() {
        let path = t.save()?;
        eprintln!("Target saved in {}", path.display());
    }
    if cli.json {
        return print_json(&info);
    }
    println!(
        "Director  {} ({})\nName      {}\nUUID      {}\nVersion   {}\nCPI       {}",
        t.director, info.api_version, info.name, info.uuid, info.version, info.cpi
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DirectorArgs {
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:25555")]
    listen: std::net::SocketAddr,
    /// Where agents connect (mutual TLS). Defaults to the API's address, port + 1.
    #[arg(long)]
    agent_listen: Option<std::net::SocketAddr>,
    /// The CPI: `local` (processes on this machine) or `docker` (containers on the Docker Engine).
    #[arg(long, default_value = "local")]
    cpi: String,
    /// The CPI's options, YAML (docker: `socket`, `agent_director_address`).
    #[arg(long, value_name = "FILE")]
    cpi_config: Option<PathBuf>,
    #[arg(long, default_value = "bosun")]
    name: String,
    /// Agent heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    heartbeat_interval_ms: u64,
    /// How long a new VM's agent has to connect, in seconds.
    #[arg(long, default_value_t = 120)]
    agent_wait_timeout: u64,
    /// How long an orphaned persistent disk is kept before it is deleted, in seconds (BOSH: 5 days).
    #[arg(long, default_value_t = 5 * 24 * 3600)]
    orphaned_disk_retention: u64,
    /// Grow persistent disks through the CPI's resize_disk where it can, instead of copying.
    #[arg(long)]
    enable_cpi_resize_disk: bool,
    /// Heartbeats an agent may miss before it is unresponsive.
    #[arg(long, default_value_t = 3)]
    missed_heartbeats: u32,
    /// Meltdown: at least this many instances of a deployment turned unhealthy ...
    #[arg(long, default_value_t = 5)]
    meltdown_min_instances: usize,
    /// ... and at least this percentage of them ...
    #[arg(long, default_value_t = 20)]
    meltdown_percent: u32,
    /// ... within this many seconds stops resurrection for the deployment.
    #[arg(long, default_value_t = 600)]
    meltdown_window: u64,
    /// Keep compiled packages here, for every director on this machine (BOSH's
    /// compiled_package_cache); a director takes a package from it instead of compiling it again.
    #[arg(long, value_name = "DIR", env = "BOSUN_COMPILED_PACKAGE_CACHE")]
    compiled_package_cache: Option<PathBuf>,
    /// Let compilers on compilation VMs keep their caches here between compilations (Go's build
    /// cache: a package rebuilt with a small change recompiles only what changed). Only for VMs
    /// that see this machine's filesystem (the local CPI); others compile without it.
    #[arg(long, value_name = "DIR", env = "BOSUN_BUILD_CACHE_DIR")]
    build_cache: Option<PathBuf>,
    /// How long one package's `packaging` may run on a compilation VM, in seconds.
    #[arg(long, default_value_t = 2 * 3600)]
    compile_timeout: u64,
}

pub async fn run_director(args: &DirectorArgs) -> Result<()> {
    let DirectorArgs { state_dir, listen, agent_listen, cpi, name, heartbeat_interval_ms, agent_wait_timeout, .. } =
        args;
    let (listen, agent_listen, heartbeat_interval_ms, agent_wait_timeout) =
        (*listen, *agent_listen, *heartbeat_interval_ms, *agent_wait_timeout);
    // Whatever the director (and sled, and the CPI's working files) creates is its user's alone:
    // the state holds keys, the token and the blobstore. (The agents the local CPI starts set
    // their own umask: a VM's files keep the usual modes.)
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // As many open files as the machine allows this user: every agent holds a connection.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let cpi = cpis::open(cpi, args.cpi_config.as_deref(), state_dir).await?;
    let agent_listen = agent_listen.unwrap_or_else(|| {
        let port = if listen.port() == 0 { 0 } else { listen.port().wrapping_add(1) };
        std::net::SocketAddr::new(listen.ip(), port)
    });
    if heartbeat_interval_ms < 100 {
        return Err(InputError::new("--heartbeat-interval-ms must be at least 100").into());
    }
    let config = bosun_director::DirectorConfig {
        name: name.to_string(),
        state_dir: state_dir.to_path_buf(),
        listen,
        agent_listen,
        agent_advertise: None,
        heartbeat_interval: Duration::from_millis(heartbeat_interval_ms),
        agent_wait_timeout: Duration::from_secs(agent_wait_timeout),
        orphaned_disk_retention: Duration::from_secs(args.orphaned_disk_retention),
        cpi_resize_disk: args.enable_cpi_resize_disk,
        missed_heartbeats: args.missed_heartbeats,
        meltdown: bosun_director::health::MeltdownConfig {
            min_instances: args.meltdown_min_instances,
            percent: args.meltdown_percent,
            window: Duration::from_secs(args.meltdown_window),
        },
        compiled_package_cache: args.compiled_package_cache.clone(),
        build_cache: args.build_cache.clone(),
        compile_timeout: {
            if args.compile_timeout == 0 {
                return Err(InputError::new("--compile-timeout must be at least 1 second").into());
            }
            Duration::from_secs(args.compile_timeout)
        },
    };
    let running = bosun_director::start(config, cpi).await?;
    // The address and CA, never the token (this output often lands in a log): the env file, mode
    // 0600, holds all three.
    let d = &running.director;
    println!("export BOSUN_DIRECTOR=https://{}", d.api_address);
    println!("export BOSUN_CA_CERT={}", d.ca_cert_path().display());
    println!(
        "# the token is in {}; `. {}` sets all three",
        d.config.state_dir.join("token").display(),
        running.env_file.display()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("director stopping; VMs keep running");
    running.director.state.flush().await?;
    Ok(())
}
