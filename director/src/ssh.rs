//! SSH sessions (`bosun ssh`, `bosun scp`): the director installs a key the client made into the
//! SSH servers of the agents of the instances named, for a bounded time, and tells the client
//! where each serves SSH and which host key to expect — the one the VM registered, so a client
//! never trusts a key it meets for the first time. Every setup and cleanup is an event naming the
//! instance, the session's user and the token it was asked with (by its digest).

use crate::events::EventSubject;
use crate::records::InstanceRecord;
use crate::store::tables;
use crate::Director;
use bosun_types::api::{InstanceSelector, SshCleanupRequest, SshSessionView, SshSetupRequest, SshTargetView};
use bosun_types::protocol::AgentCommand;
use std::time::Duration;

/// A key's lifetime unless the client asks for another.
pub const DEFAULT_KEY_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// The longest a client may ask for.
pub const MAX_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    NotFound(String),
    /// An instance cannot take a session now (no VM, agent away, no SSH server).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Agent(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The instances `selectors` name (every one when empty), each with its VM's agent.
async fn select(
    d: &Director,
    deployment: &str,
    selectors: &[String],
) -> Result<Vec<(InstanceRecord, String)>, SshError> {
    let selectors: Vec<InstanceSelector> =
        selectors.iter().map(|s| s.parse().map_err(SshError::Input)).collect::<Result<_, _>>()?;
    let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, &format!("{deployment}/")).await?;
    for s in &selectors {
        if !instances.iter().any(|i| s.matches(&i.group, &i.uuid, i.index)) {
            return Err(SshError::NotFound(format!("deployment `{deployment}` has no instance matching `{s}`")));
        }
    }
    let mut chosen: Vec<(InstanceRecord, String)> = Vec::new();
    for i in instances {
        if !selectors.is_empty() && !selectors.iter().any(|s| s.matches(&i.group, &i.uuid, i.index)) {
            continue;
        }
        let Some(vm) = &i.vm else {
            return Err(SshError::Unavailable(format!("{} ({}/{}) has no VM", i.name(), i.group, i.index)));
        };
        let agent = vm.agent_id.clone();
        chosen.push((i, agent));
    }
    if chosen.is_empty() {
        return Err(SshError::NotFound(format!("deployment `{deployment}` has no instances")));
    }
    chosen.sort_by(|(a, _), (b, _)| (&a.group, a.index).cmp(&(&b.group, b.index)));
    Ok(chosen)
}

/// Installs the session key on every instance named; all or none (those done are cleaned up
/// again when one fails).
#[tracing::instrument(skip_all, fields(deployment))]
pub async fn setup(
    d: &Director,
    deployment: &str,
    req: &SshSetupRequest,
    by: &str,
) -> Result<SshSessionView, SshError> {
    let key = req.public_key.trim();
    if !key.starts_with("ssh-ed25519 ") || key.contains(['\n', '\r']) || key.len() > 1024 {
        return Err(SshError::Input(
            "public_key: an OpenSSH ed25519 public key line (`ssh-ed25519 AAAA…`) is expected".into(),
        ));
    }
    let lifetime = match req.expires_in_s {
        None => DEFAULT_KEY_LIFETIME,
        Some(0) => return Err(SshError::Input("expires_in_s: must be at least 1".into())),
        Some(s) if Duration::from_secs(s) > MAX_KEY_LIFETIME => {
            return Err(SshError::Input(format!("expires_in_s: at most {} (a day)", MAX_KEY_LIFETIME.as_secs())))
        }
        Some(s) => Duration::from_secs(s),
    };
    let chosen = select(d, deployment, &req.instances).await?;
    // Where each serves SSH, and the host key it registered.
    let mut targets = Vec::new();
    for (i, agent) in &chosen {
        let status = d.hub.status(agent).filter(|s| s.connected).ok_or_else(|| {
            SshError::Unavailable(format!("{} ({}/{}): its agent is not connected", i.name(), i.group, i.index))
        })?;
        let endpoint = status.ssh.ok_or_else(|| {
            SshError::Unavailable(format!("{} ({}/{}): its agent serves no SSH", i.name(), i.group, i.index))
        })?;
        let host_key = d
            .state
            .get(tables::AGENTS, agent)
            .await?
            .and_then(|a| a.ssh_host_key)
            .ok_or_else(|| SshError::Unavailable(format!("{}: no host key is registered for its VM", i.name())))?;
        targets.push(SshTargetView { instance: i.name(), index: i.index, address: endpoint.address, host_key });
    }
    let user = format!("bosun_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let command = AgentCommand::SshSetup {
        user: user.clone(),
        public_key: key.to_string(),
        expires_in_ms: lifetime.as_millis() as u64,
    };
    let results =
        futures::future::join_all(chosen.iter().map(|(_, agent)| d.hub.call(agent, command.clone(), AGENT_TIMEOUT)))
            .await;
    let failed: Vec<String> = chosen
        .iter()
        .zip(&results)
        .filter_map(|((i, _), r)| r.as_ref().err().map(|e| format!("{}: {e}", i.name())))
        .collect();
    if !failed.is_empty() {
        let done: Vec<_> = chosen.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(c, _)| c.clone()).collect();
        revoke(d, &done, &user).await;
        return Err(SshError::Agent(format!("setting up SSH: {}", failed.join("; "))));
    }
    for (i, _) in &chosen {
        d.events
            .record(
                EventSubject::instance(deployment, &i.name()),
                "ssh",
                "operator",
                format!("SSH session {user} opened for {} s by {by}", lifetime.as_secs()),
            )
            .await;
    }
    Ok(SshSessionView { user, expires_in_s: lifetime.as_secs(), targets })
}

/// Removes the session's key from the instances named (every one when empty) and closes its
/// connections. Instances without a VM or agent now are skipped: their key expires.
#[tracing::instrument(skip_all, fields(deployment))]
pub async fn cleanup(d: &Director, deployment: &str, req: &SshCleanupRequest, by: &str) -> Result<(), SshError> {
    if !req.user.strip_prefix("bosun_").is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return Err(SshError::Input(format!("user: `{}` is not an SSH session user", req.user)));
    }
    let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, &format!("{deployment}/")).await?;
    let selectors: Vec<InstanceSelector> =
        req.instances.iter().map(|s| s.parse().map_err(SshError::Input)).collect::<Result<_, _>>()?;
    let chosen: Vec<(InstanceRecord, String)> = instances
        .into_iter()
        .filter(|i| selectors.is_empty() || selectors.iter().any(|s| s.matches(&i.group, &i.uuid, i.index)))
        .filter_map(|i| i.vm.as_ref().map(|v| v.agent_id.clone()).map(|a| (i, a)))
        .collect();
    let closed = revoke(d, &chosen, &req.user).await;
    for ((i, _), closed) in chosen.iter().zip(closed) {
        if let Some(n) = closed {
            d.events
                .record(
                    EventSubject::instance(deployment, &i.name()),
                    "ssh_cleanup",
                    "operator",
                    format!("SSH session {} closed ({n} open connections ended) by {by}", req.user),
                )
                .await;
        }
    }
    Ok(())
}

/// `ssh_cleanup` on each agent that is connected; per instance, how many connections it closed
/// (`None`: not reached).
async fn revoke(d: &Director, chosen: &[(InstanceRecord, String)], user: &str) -> Vec<Option<u64>> {
    futures::future::join_all(chosen.iter().map(|(i, agent)| async move {
        if !d.hub.is_responsive(agent) {
            return None;
        }
        match d.hub.call(agent, AgentCommand::SshCleanup { user: user.to_string() }, AGENT_TIMEOUT).await {
            Ok(v) => Some(v.get("closed_connections").and_then(|n| n.as_u64()).unwrap_or(0)),
            Err(e) => {
                tracing::warn!(instance = %i.name(), error = %e, "removing an SSH key; it expires on its own");
                None
            }
        }
    }))
    .await
}

/// Where the instance serves SSH, for the director's gateway (`bosun ssh --gateway`).
pub async fn address_of(d: &Director, deployment: &str, instance: &str) -> Result<String, SshError> {
    let chosen = select(d, deployment, &[instance.to_string()]).await?;
    let [(i, agent)] = &chosen[..] else {
        return Err(SshError::Input(format!("`{instance}` names {} instances; name one", chosen.len())));
    };
    d.hub
        .status(agent)
        .and_then(|s| s.ssh)
        .map(|e| e.address)
        .ok_or_else(|| SshError::Unavailable(format!("{}: its agent serves no SSH", i.name())))
}
