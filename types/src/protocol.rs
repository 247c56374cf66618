//! The director↔agent protocol: the settings a CPI hands a new VM, and the newline-delimited JSON
//! messages on the agent's mutually authenticated TLS connection to the director.
//!
//! The agent dials the director. Its first line on a connection is `hello` (a control session:
//! heartbeats up, commands down, replies up), `fetch_blob` (one blob download, answered by a
//! [`BlobHeader`] line and then the raw bytes) or `put_blob` (one upload of a blob the director
//! asked for: a header, the bytes, a header). Every command carries an id; commands are
//! idempotent, and `apply` carries a generation the agent never goes back behind.

use crate::cloud_config::NetworkType;
use crate::release::ProcessDefinition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest line either side accepts; anything longer is hostile or broken.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// One message as a protocol line: JSON and a newline.
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("protocol messages serialize");
    line.push(b'\n');
    line
}

/// Written by the CPI where the agent reads it (BOSH's registry-less settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    pub agent_id: String,
    pub vm_cid: String,
    pub director: DirectorEndpoint,
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkSettings>,
    #[serde(default)]
    pub disks: DiskSettings,
    #[serde(default)]
    pub env: serde_json::Value,
}

/// How to reach the director, and the credentials it issued to this agent.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectorEndpoint {
    /// `host:port` of the director's agent listener.
    pub address: String,
    /// The name the director's certificate is checked against.
    pub server_name: String,
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
}

impl std::fmt::Debug for DirectorEndpoint {
    // The private key must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorEndpoint")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DiskSettings {
    /// disk cid → hint returned by the CPI's `attach_disk`.
    #[serde(default)]
    pub persistent: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    #[serde(rename = "type", default)]
    pub kind: NetworkType,
    pub ip: String,
    pub netmask: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default)]
    pub default: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub cloud_properties: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StemcellInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    Hello {
        agent_id: String,
        vm_cid: String,
        agent_version: String,
        #[serde(default)]
        stemcell: Option<StemcellInfo>,
        /// The generation of the spec the agent has applied (0: none).
        applied_generation: u64,
        /// The agent's SSH server, when it runs one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssh: Option<SshEndpoint>,
    },
    Heartbeat(Heartbeat),
    Reply {
        id: u64,
        #[serde(flatten)]
        outcome: CommandOutcome,
    },
    Progress {
        id: u64,
        message: String,
    },
    FetchBlob {
        agent_id: String,
        digest: String,
    },
    /// Uploads a blob the director asked this agent to make (a compiled package): the director
    /// answers a [`BlobHeader`] (ready, or why not); then `size` raw bytes follow, and a second
    /// header says whether they were stored.
    PutBlob {
        agent_id: String,
        digest: String,
        size: u64,
    },
}

/// Where a VM's agent serves SSH, and the host key it proves itself with. Learned over the
/// agent's authenticated connection, so an SSH client checks the key instead of trusting the first
/// one it meets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SshEndpoint {
    /// `ip:port`.
    pub address: String,
    /// The host's public key as an OpenSSH line (`ssh-ed25519 AAAA…`).
    pub host_key: String,
}

impl SshEndpoint {
    /// An `ip:port` address and one short ed25519 key line: what an agent may report (anything
    /// else from a peer is ignored, never stored).
    pub fn is_well_formed(&self) -> bool {
        let key_ok = self.host_key.strip_prefix("ssh-ed25519 ").is_some_and(|rest| {
            let blob = rest.split(' ').next().unwrap_or("");
            !blob.is_empty()
                && rest.len() <= 256
                && rest.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && blob.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        });
        key_ok && self.address.parse::<std::net::SocketAddr>().is_ok()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    Ok(serde_json::Value),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DirectorMessage {
    Welcome { heartbeat_interval_ms: u64 },
    Command { id: u64, command: AgentCommand },
    Cancel { id: u64 },
}

/// The answer to `fetch_blob`; on success `size` raw bytes follow the line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlobHeader {
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum LifecycleScript {
    PreStart,
    PostStart,
    PostDeploy,
    PreStop,
    Drain,
    PostStop,
    /// Told when an instance of a group whose link the job consumes is lost, recreated, added
    /// or removed (the change is in its environment).
    PeerChanged,
}

impl LifecycleScript {
    /// The script's path inside a job directory.
    pub fn path(self) -> &'static str {
        match self {
            LifecycleScript::PreStart => "bin/pre-start",
            LifecycleScript::PostStart => "bin/post-start",
            LifecycleScript::PostDeploy => "bin/post-deploy",
            LifecycleScript::PreStop => "bin/pre-stop",
            LifecycleScript::Drain => "bin/drain",
            LifecycleScript::PostStop => "bin/post-stop",
            LifecycleScript::PeerChanged => "bin/peer-changed",
        }
    }
}

impl std::fmt::Display for LifecycleScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path().trim_start_matches("bin/"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentCommand {
    /// Reports the agent's current state (the same content as a heartbeat).
    GetState,
    /// Downloads, verifies and installs the spec's packages and jobs. Does not start anything.
    Apply {
        spec: Box<ApplySpec>,
    },
    /// Starts every process of the applied spec.
    Start,
    /// Stops every process: SIGTERM, the grace period, then SIGKILL.
    Stop,
    /// Runs one lifecycle script of every job that has it, in parallel, each bounded by the timeout.
    RunScript {
        script: LifecycleScript,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        args: Vec<String>,
        timeout_ms: u64,
    },
    MountDisk {
        disk_cid: String,
        hint: serde_json::Value,
    },
    UnmountDisk {
        disk_cid: String,
    },
    /// Copies the mounted persistent disk's contents to a newly attached disk and mounts the new
    /// one at the store directory in its place (jobs are stopped first).
    MigrateDisk {
        from_disk_cid: String,
        to_disk_cid: String,
        hint: serde_json::Value,
    },
    /// On a compilation VM: fetches the package's source and its compiled dependencies, runs
    /// `packaging` with BOSH's variables within the timeout, and uploads the install target as a
    /// `.tgz` (`put_blob`). Answers a [`CompiledPackage`].
    CompilePackage {
        package: PackageToCompile,
        timeout_ms: u64,
        /// A directory the compilers' own caches may keep between compilations (Go's build
        /// cache, …), shared by the compilation VMs of one machine; `packaging` finds it in
        /// `BOSUN_BUILD_CACHE`. Absent, or not a directory the VM can make: every compilation
        /// starts cold, as on BOSH.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_cache: Option<String>,
    },
    /// Runs an errand: the job's `bin/run`, bounded by the timeout, its output lines sent as
    /// progress while it runs. Answers a [`ScriptResult`].
    RunErrand {
        job: String,
        timeout_ms: u64,
    },
    /// Packs the job logs (of the jobs named, or every job's) into a `.tgz` holding at most
    /// `max_bytes` of log text — the newest files first, the end of a file that does not fit —
    /// and uploads it (`put_blob`). Answers a [`BlobRef`].
    FetchLogs {
        #[serde(default)]
        jobs: Vec<String>,
        max_bytes: u64,
    },
    /// Sends the last `lines` lines of the job logs (of the jobs named, or every job's), then each
    /// line written to them, as progress (`job/file: line`), until the director cancels the
    /// command or `timeout_ms` passes; then answers null.
    FollowLogs {
        #[serde(default)]
        jobs: Vec<String>,
        lines: u32,
        timeout_ms: u64,
    },
    /// Lets `public_key` (an OpenSSH line) log in as `user` to the agent's SSH server until
    /// `expires_in_ms` from now. Answers the [`SshEndpoint`].
    SshSetup {
        user: String,
        public_key: String,
        expires_in_ms: u64,
    },
    /// Forgets `user`'s key and closes its open sessions.
    SshCleanup {
        user: String,
    },
}

impl AgentCommand {
    pub fn name(&self) -> &'static str {
        match self {
            AgentCommand::GetState => "get_state",
            AgentCommand::Apply { .. } => "apply",
            AgentCommand::Start => "start",
            AgentCommand::Stop => "stop",
            AgentCommand::RunScript { .. } => "run_script",
            AgentCommand::MountDisk { .. } => "mount_disk",
            AgentCommand::UnmountDisk { .. } => "unmount_disk",
            AgentCommand::MigrateDisk { .. } => "migrate_disk",
            AgentCommand::CompilePackage { .. } => "compile_package",
            AgentCommand::RunErrand { .. } => "run_errand",
            AgentCommand::FetchLogs { .. } => "fetch_logs",
            AgentCommand::FollowLogs { .. } => "follow_logs",
            AgentCommand::SshSetup { .. } => "ssh_setup",
            AgentCommand::SshCleanup { .. } => "ssh_cleanup",
        }
    }
}

/// A reference to a blob in the director's content-addressed blobstore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// `sha256:<hex>`; the agent verifies it before using the blob.
    pub digest: String,
    pub size: u64,
}

/// Everything an instance should run, decided by the director.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApplySpec {
    /// Strictly increasing per instance; the agent refuses an older one than it has applied.
    pub generation: u64,
    pub deployment: String,
    /// The instance group.
    pub name: String,
    pub index: u32,
    /// The instance's uuid.
    pub id: String,
    #[serde(default)]
    pub az: Option<String>,
    pub bootstrap: bool,
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkSettings>,
    #[serde(default)]
    pub jobs: Vec<ApplyJob>,
    #[serde(default)]
    pub packages: Vec<ApplyPackage>,
    #[serde(default)]
    pub persistent_disk_mb: u64,
    pub configuration_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApplyJob {
    pub name: String,
    pub release: String,
    pub fingerprint: String,
    /// Tarball of the rendered templates, laid out as the job's directory.
    pub rendered: BlobRef,
    #[serde(default)]
    pub processes: Vec<ProcessDefinition>,
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApplyPackage {
    pub name: String,
    pub fingerprint: String,
    /// The package compiled for the VM's stemcell: its install target as a `.tgz`. Instance VMs
    /// unpack it; they never run `packaging`.
    pub compiled: BlobRef,
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// A package for a compilation VM to compile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PackageToCompile {
    pub name: String,
    pub fingerprint: String,
    /// Its source tarball (`packaging` plus files).
    pub source: BlobRef,
    /// Every package it depends on, directly or not, compiled for the same stemcell; installed at
    /// `packages/<name>` before `packaging` runs.
    #[serde(default)]
    pub dependencies: Vec<CompiledDependency>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompiledDependency {
    pub name: String,
    pub fingerprint: String,
    pub compiled: BlobRef,
}

/// What `compile_package` answers: the compiled package, uploaded to the director.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompiledPackage {
    pub compiled: BlobRef,
    /// How long `packaging` ran.
    pub packaging_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    /// Started, not yet known to stay up.
    Starting,
    Running,
    /// Exited and being restarted with backoff.
    Failing,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessState {
    pub job: String,
    pub name: String,
    pub state: ProcessStatus,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    #[serde(default)]
    pub last_exit: Option<String>,
    /// What the process last wrote to its stderr before it last exited (its last two lines, a Go
    /// program's goroutine dump left out): why it exited, when it says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_words: Option<String>,
}

/// The state of all jobs on an instance.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Nothing applied yet.
    None,
    Starting,
    Running,
    Failing,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Vitals {
    pub load: [f64; 3],
    pub mem_kb: u64,
    pub mem_percent: f64,
    pub swap_kb: u64,
    pub swap_percent: f64,
    /// Percent used of the file systems holding the system, ephemeral and persistent directories.
    #[serde(default)]
    pub disk: BTreeMap<String, f64>,
    /// The agent's own resident memory, kB.
    #[serde(default)]
    pub agent_rss_kb: u64,
    /// CPU time since the agent's previous reading, percent of all CPUs.
    #[serde(default)]
    pub cpu: CpuVitals,
    /// Seconds since the machine booted.
    #[serde(default)]
    pub uptime_secs: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CpuVitals {
    /// User time, nice included.
    pub user: f64,
    pub sys: f64,
    /// Idle waiting for I/O.
    pub wait: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub job_state: JobState,
    #[serde(default)]
    pub processes: Vec<ProcessState>,
    pub applied_generation: u64,
    #[serde(default)]
    pub vitals: Vitals,
    #[serde(default)]
    pub persistent_disks: Vec<String>,
}

/// What `run_script` reports, per job that has the script.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptResult {
    pub job: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The last lines of its output (stdout then stderr), for the task log.
    pub output_tail: String,
    /// The last lines of its stdout alone (a drain script's answer is there).
    #[serde(default)]
    pub stdout_tail: String,
    pub duration_ms: u64,
}

#[cfg(test)]
mod ssh_endpoint_tests {
    use super::SshEndpoint;

    #[test]
    fn only_an_address_and_an_ed25519_key_line_are_taken() {
        let ep = |address: &str, host_key: &str| SshEndpoint { address: address.into(), host_key: host_key.into() };
        assert!(ep("10.0.0.5:22", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoo+/=").is_well_formed());
        assert!(ep("10.0.0.5:22", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoo host").is_well_formed());
        for (a, k) in [
            ("10.0.0.5", "ssh-ed25519 AAAA"),
            ("10.0.0.5:22", "ssh-rsa AAAA"),
            ("10.0.0.5:22", "ssh-ed25519 "),
            ("10.0.0.5:22", "ssh-ed25519 AAAA\nmore"),
        ] {
            assert!(!ep(a, k).is_well_formed(), "{a} {k}");
        }
        assert!(!ep("10.0.0.5:22", &format!("ssh-ed25519 {}", "A".repeat(300))).is_well_formed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn messages_round_trip() {
        let m = AgentMessage::Reply { id: 7, outcome: CommandOutcome::Error("nope".into()) };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(s, r#"{"type":"reply","id":7,"error":"nope"}"#);
        assert_eq!(serde_json::from_str::<AgentMessage>(&s).unwrap(), m);
        let c = DirectorMessage::Command {
            id: 1,
            command: AgentCommand::RunScript {
                script: LifecycleScript::PreStart,
                env: Default::default(),
                args: vec![],
                timeout_ms: 5,
            },
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains(r#""action":"run_script","script":"pre-start""#), "{s}");
        assert_eq!(serde_json::from_str::<DirectorMessage>(&s).unwrap(), c);
    }
}
