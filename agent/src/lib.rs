//! bosun-agent: runs on every VM. Boots from the settings its CPI wrote (a file, or a cloud's
//! instance metadata: `metadata.rs`), dials the director over
//! mutually authenticated TLS, heartbeats, and carries out the director's commands: installs the
//! compiled packages and rendered jobs of an apply spec (verifying every blob's digest), supervises
//! the jobs' processes, runs their lifecycle scripts with timeouts, mounts persistent disks, and —
//! on a compilation VM — compiles packages and uploads the result.
//!
//! Architecture invariants:
//! - The agent makes no policy decisions; it carries out commands and reports state.
//! - It never applies a spec with an older generation than the one it has applied.
//! - It ledgers the applied spec and the desired run state to disk before acting, so a restarted
//!   agent comes back to the same jobs without the director.

pub mod compiler;
pub mod dialer;
pub mod disks;
pub mod installer;
pub mod layout;
pub mod logrotate;
pub mod logs;
pub mod metadata;
pub mod scripts;
pub mod session;
pub mod ssh;
pub mod supervisor;
pub mod vitals;

use bosun_types::protocol::{AgentSettings, StemcellInfo};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading the settings from the instance metadata")]
    Metadata(#[from] metadata::MetadataError),
    #[error("reading settings {path}")]
    Settings {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("settings {path} are malformed")]
    SettingsFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the director credentials in the settings are unusable: {0}")]
    Credentials(String),
    #[error("preparing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the agent's settings come from.
#[derive(Debug, Clone)]
pub enum SettingsSource {
    /// A file the CPI wrote (the local CPI's VMs, a container's bind mount).
    File(PathBuf),
    /// An EC2-style instance metadata service at this address (IMDSv2): the instance's user-data,
    /// its id the VM cid. A copy is kept (`ROOT/bosh/settings.json`, 0600) for a boot on which
    /// the service does not answer.
    Metadata(String),
}

/// The agent's command line (parsed by the thin binary).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub root: PathBuf,
    pub settings: SettingsSource,
    /// Where the machine's devices are: `/dev`, or a directory of the same shape for an agent
    /// whose cloud's devices are presented elsewhere (a test playing the cloud).
    pub dev: PathBuf,
}

pub fn load_settings(path: &std::path::Path) -> Result<AgentSettings, AgentError> {
    let bytes = std::fs::read(path).map_err(|source| AgentError::Settings { path: path.into(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| AgentError::SettingsFormat { path: path.into(), source })
}

/// The settings from the instance metadata, a private copy kept; the copy when the service does
/// not answer (a reboot while it is unreachable), else the service's error.
async fn settings_from_metadata(base: &str, layout: &layout::Layout) -> Result<AgentSettings, AgentError> {
    let copy = layout.settings_copy();
    match metadata::fetch_settings(base).await {
        Ok(settings) => {
            let bytes = serde_json::to_vec(&settings).expect("settings serialize");
            let path = copy.clone();
            tokio::task::spawn_blocking(move || layout::write_durably_with_mode(&path, &bytes, 0o600))
                .await
                .map_err(|e| AgentError::Io { path: copy.clone(), source: std::io::Error::other(e) })?
                .map_err(|source| AgentError::Io { path: copy, source })?;
            Ok(settings)
        }
        Err(e) if copy.exists() => {
            tracing::warn!(error = %session::error_chain(&e), "the instance metadata did not answer; using the settings read from it before");
            load_settings(&copy)
        }
        Err(e) => Err(e.into()),
    }
}

/// The stemcell this agent was baked into: `etc/stemcell.json` beside the agent's `bin/`.
pub fn stemcell_info() -> Option<StemcellInfo> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("etc/stemcell.json");
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Runs the agent until the process is killed. Settings that cannot be used yet (a CPI still
/// writing them, credentials not valid) are retried rather than ending the VM's agent.
pub async fn run(options: AgentOptions) -> Result<(), AgentError> {
    let layout = layout::Layout::new(&options.root);
    layout.create().map_err(|(path, source)| AgentError::Io { path, source })?;
    tokio::spawn(logrotate::run(layout.log_root()));
    loop {
        let settings = match &options.settings {
            SettingsSource::File(path) => load_settings(path),
            SettingsSource::Metadata(base) => settings_from_metadata(base, &layout).await,
        };
        match settings.and_then(|s| session::Agent::new(s, layout.clone(), options.dev.clone(), stemcell_info())) {
            Ok(agent) => {
                agent.run().await;
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %session::error_chain(&e), "cannot start yet; retrying in 5 s");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    }
}
