//! The local CPI, bosun's embedded default: a VM is a `bosun-agent` process (and everything it
//! starts) in its own root directory, bound to its own loopback address; a disk is a directory; a
//! stemcell is a directory holding an agent binary. No root and no Docker needed.
//!
//! Everything lives under one base directory, so a restarted director finds it all again:
//! ```text
//! BASE/stemcells/<cid>/{bin/bosun-agent, etc/stemcell.json}
//! BASE/vms/<cid>/{settings.json, metadata.json, agent.log, agent.pid, bin/bosun-agent, root/}
//! BASE/disks/<cid>/{disk.json, data/}
//! ```
//! Every process of a VM carries `BOSUN_LOCAL_VM=<cid>` in its environment; that is how
//! `delete_vm` finds and kills the whole process tree, including processes that left the agent's
//! process group, and how `has_vm` tells whether the VM still runs.
//!
//! A VM on a bridged network is isolated further (its own network and mount namespaces and
//! cgroup; see [`isolation`]): what runs in it, containers included, is its cgroup's processes.

pub mod isolation;

use bosun_cpi::{
    agent_settings, creation_tags, Cpi, CpiError, CpiInfo, CpiResult, CreateVmRequest, DiskListing, VmListing,
};
use bosun_types::protocol::NetworkSettings;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable that marks a process as part of a local VM.
pub const VM_MARKER: &str = "BOSUN_LOCAL_VM";
/// The environment variable that names the CPI base directory a VM belongs to.
pub const BASE_MARKER: &str = "BOSUN_LOCAL_BASE";

pub struct LocalCpi {
    base: PathBuf,
    /// Serializes disk bookkeeping (attach/detach/delete read-modify-write `disk.json`).
    disk_lock: BaseLock,
    /// Serializes VM creation: checking that an address is free and taking it are one step.
    vm_lock: BaseLock,
}

/// A lock one caller holds at a time across every process working on one base directory (a
/// director's own CPI and each `bosun cpi local` process BOSH's protocol starts per call): the
/// in-process mutex first, then an exclusive flock on a file in the base directory.
struct BaseLock {
    in_process: tokio::sync::Mutex<()>,
    file: PathBuf,
}

struct BaseLockGuard<'a> {
    _in_process: tokio::sync::MutexGuard<'a, ()>,
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl BaseLock {
    fn new(file: PathBuf) -> Self {
        BaseLock { in_process: tokio::sync::Mutex::new(()), file }
    }

    async fn lock(&self) -> CpiResult<BaseLockGuard<'_>> {
        let in_process = self.in_process.lock().await;
        let path = self.file.clone();
        let file = blocking(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| CpiError::Cloud(format!("opening {}: {e}", path.display())))?;
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| CpiError::Cloud(format!("locking {}: {e}", path.display())))
        })
        .await?;
        Ok(BaseLockGuard { _in_process: in_process, _file: file })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DiskRecord {
    size_mb: u64,
    cloud_properties: serde_json::Value,
    attached_to: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn cloud(context: &str) -> impl FnOnce(std::io::Error) -> CpiError + '_ {
    move |e| CpiError::Cloud(format!("{context}: {e}"))
}

/// A cid must be one path component we made ourselves; anything else is refused before it
/// touches the file system.
fn check_cid(cid: &str) -> CpiResult<()> {
    let ok = !cid.is_empty() && cid.len() <= 64 && cid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CpiError::InvalidArguments(format!("`{cid}` is not a cid of the local CPI")))
    }
}

impl LocalCpi {
    pub fn new(base: impl Into<PathBuf>) -> std::io::Result<Self> {
        let base = base.into();
        for d in ["stemcells", "vms", "disks"] {
            std::fs::create_dir_all(base.join(d))?;
        }
        let base = base.canonicalize()?;
        Ok(Self {
            disk_lock: BaseLock::new(base.join(".disks.lock")),
            vm_lock: BaseLock::new(base.join(".vms.lock")),
            base,
        })
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    fn vm_dir(&self, cid: &str) -> PathBuf {
        self.base.join("vms").join(cid)
    }
    fn disk_dir(&self, cid: &str) -> PathBuf {
        self.base.join("disks").join(cid)
    }
    fn stemcell_dir(&self, cid: &str) -> PathBuf {
        self.base.join("stemcells").join(cid)
    }

    async fn read_disk(&self, cid: &str) -> CpiResult<DiskRecord> {
        check_cid(cid)?;
        let path = self.disk_dir(cid).join("disk.json");
        match tokio::fs::read(&path).await {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| CpiError::Cloud(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CpiError::DiskNotFound(cid.to_string())),
            Err(e) => Err(CpiError::Cloud(format!("{}: {e}", path.display()))),
        }
    }

    async fn write_disk(&self, cid: &str, rec: &DiskRecord) -> CpiResult<()> {
        write_file(self.disk_dir(cid).join("disk.json"), serde_json::to_vec_pretty(rec).expect("serializable"), 0o644)
            .await
    }

    async fn vm_exists(&self, cid: &str) -> CpiResult<bool> {
        check_cid(cid)?;
        Ok(tokio::fs::try_exists(self.vm_dir(cid).join("settings.json")).await.unwrap_or(false))
    }
}

/// Starts a VM's agent. Its environment is built from nothing, so none of the director's secrets
/// (tokens in the environment) reach a VM.
fn spawn_agent(base: &Path, cid: &str) -> CpiResult<u32> {
    let dir = base.join("vms").join(cid);
    let agent = dir.join("bin/bosun-agent");
    let mut cmd = match isolated_nic(&dir)? {
        Some(_) => isolation::enclosed_command(cid, &dir, &agent)?,
        None => std::process::Command::new(&agent),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .map_err(cloud("opening agent.log"))?;
    let log2 = log.try_clone().map_err(cloud("opening agent.log"))?;
    cmd.arg("--root").arg(dir.join("root")).arg("--settings").arg(dir.join("settings.json"));
    cmd.env_clear();
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
    cmd.env("HOME", dir.join("root"));
    cmd.env("LANG", "C.UTF-8");
    if let Some(l) = std::env::var_os("BOSUN_AGENT_LOG") {
        cmd.env("RUST_LOG", l);
    }
    cmd.env(VM_MARKER, cid);
    cmd.env(BASE_MARKER, base);
    cmd.stdin(std::process::Stdio::null()).stdout(log).stderr(log2);
    // Its own process group and session-free: a Ctrl-C at the director's terminal must not
    // take the VMs down with it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .map_err(|e| CpiError::VmCreationFailed { message: format!("starting the agent: {e}"), ok_to_retry: false })?;
    let pid = child.id();
    // The child is deliberately not waited for: the VM outlives the director. A reaper thread
    // collects its exit status so it never lingers as a zombie while we run.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    write_atomic(&dir.join("agent.pid"), pid.to_string().as_bytes(), 0o644)?;
    Ok(pid)
}

/// The bridged network of an existing VM, from its settings: whether it is isolated.
fn isolated_nic(dir: &Path) -> CpiResult<Option<isolation::BridgedNic>> {
    let bytes = std::fs::read(dir.join("settings.json")).map_err(cloud("reading VM settings"))?;
    let settings: bosun_types::protocol::AgentSettings =
        serde_json::from_slice(&bytes).map_err(|e| CpiError::Cloud(format!("VM settings: {e}")))?;
    isolation::bridged_nic(&settings.networks)
}

/// Every live process of a VM: those carrying its marker and, for an isolated VM, everything in
/// its cgroup (containers do not inherit the marker).
pub fn vm_processes(cid: &str) -> Vec<i32> {
    let mut pids = processes_with_env(VM_MARKER, cid);
    pids.extend(isolation::cgroup_pids(cid));
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Kills every process of a VM, as pulling its power would.
pub fn kill_vm_processes(cid: &str, deadline: Duration) -> Result<usize, String> {
    let in_cgroup = isolation::kill_cgroup(cid, deadline)?;
    Ok(in_cgroup + kill_processes_with_env(VM_MARKER, cid, deadline)?)
}

/// Kills a VM and removes what isolated it (cgroups, network namespace, a bridge left empty).
/// `nic` when known already, else from its settings.
fn tear_down(dir: &Path, cid: &str, nic: Option<&isolation::BridgedNic>) -> CpiResult<()> {
    let nic = nic.cloned().or_else(|| isolated_nic(dir).ok().flatten());
    kill_vm_processes(cid, Duration::from_secs(30)).map_err(CpiError::Cloud)?;
    isolation::remove_cgroups(cid);
    isolation::unplumb(cid, nic.as_ref().map(|n| n.bridge.as_str()));
    Ok(())
}

/// [`write_atomic`] off the async threads.
async fn write_file(path: PathBuf, bytes: Vec<u8>, mode: u32) -> CpiResult<()> {
    blocking(move || write_atomic(&path, &bytes, mode)).await
}

/// Replaces a file so a crash leaves the old or the new content (written, synced, renamed).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> CpiResult<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(cloud("writing"))?;
    f.write_all(bytes).map_err(cloud("writing"))?;
    f.sync_all().map_err(cloud("writing"))?;
    std::fs::rename(&tmp, path).map_err(cloud("writing"))
}

/// The pids of live (non-zombie) processes whose environment has `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(e.path().join("environ")) else { continue };
        if !environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
            // The state follows the parenthesised command name.
            if stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false) {
                continue;
            }
        }
        out.push(pid);
    }
    out
}

/// SIGKILLs every process carrying `key=value` until none is left (processes may fork while we
/// kill). Returns how many it killed.
pub fn kill_processes_with_env(key: &str, value: &str, deadline: Duration) -> Result<usize, String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let start = std::time::Instant::now();
    let mut killed = std::collections::BTreeSet::new();
    loop {
        let pids = processes_with_env(key, value);
        if pids.is_empty() {
            return Ok(killed.len());
        }
        for pid in pids {
            // Stop first so it cannot fork between our scan and the kill.
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        if start.elapsed() > deadline {
            return Err(format!("processes with {key}={value} survived SIGKILL for {deadline:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ips_of(networks: &BTreeMap<String, NetworkSettings>) -> CpiResult<Vec<Ipv4Addr>> {
    networks
        .iter()
        .map(|(name, n)| {
            let ip: Ipv4Addr = n.ip.parse().map_err(|_| CpiError::VmCreationFailed {
                message: format!("network `{name}`: the local CPI needs a static IPv4 address, got `{}`", n.ip),
                ok_to_retry: false,
            })?;
            if !ip.is_loopback() && n.cloud_properties.get("bridge").is_none() {
                return Err(CpiError::VmCreationFailed {
                    message: format!(
                        "network `{name}`: {ip} is not a loopback address; the local CPI binds VMs to 127.0.0.0/8 \
                         unless the network names a bridge (`cloud_properties: {{bridge: NAME}}`)"
                    ),
                    ok_to_retry: false,
                });
            }
            Ok(ip)
        })
        .collect()
}

/// A dynamic network on the local CPI: `cloud_properties: {range: 127.0.70.0/24}`; a VM gets the
/// lowest address of the range (after the network address and the first host, kept for a gateway)
/// that no live VM holds.
fn assign_dynamic(name: &str, n: &mut NetworkSettings, held: &BTreeMap<Ipv4Addr, String>) -> CpiResult<()> {
    let bad = |m: String| CpiError::VmCreationFailed {
        message: format!("dynamic network `{name}`: {m}"),
        ok_to_retry: false,
    };
    let range =
        n.cloud_properties.get("range").and_then(|r| r.as_str()).ok_or_else(|| {
            bad("the local CPI needs `cloud_properties: {range: 127.x.y.0/24}` to give addresses".into())
        })?;
    let net: ipnet::Ipv4Net = range.parse().map_err(|_| bad(format!("range `{range}` is not an IPv4 network")))?;
    if !net.network().is_loopback() && n.cloud_properties.get("bridge").is_none() {
        return Err(bad(format!("range {range} is not in 127.0.0.0/8 and names no bridge")));
    }
    let ip = net
        .hosts()
        .skip(1)
        .find(|ip| !held.contains_key(ip))
        .ok_or_else(|| bad(format!("every address of {range} is taken")))?;
    n.ip = ip.to_string();
    n.netmask = net.netmask().to_string();
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> CpiResult<T> + Send + 'static) -> CpiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CpiError::Cloud(format!("local CPI worker failed: {e}")))?
}

#[async_trait::async_trait]
impl Cpi for LocalCpi {
    fn name(&self) -> &str {
        "local"
    }

    async fn info(&self) -> CpiResult<CpiInfo> {
        Ok(CpiInfo { api_version: 2, stemcell_formats: vec!["local-tgz".into()] })
    }

    async fn create_stemcell(&self, image_path: &Path, _cloud_properties: &serde_json::Value) -> CpiResult<String> {
        let cid = format!("sc-{}", uuid::Uuid::new_v4().simple());
        let dir = self.stemcell_dir(&cid);
        let image = image_path.to_path_buf();
        blocking(move || {
            let tmp = dir.with_extension("partial");
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(cloud("creating the stemcell directory"))?;
            let f = std::fs::File::open(&image).map_err(cloud("opening the stemcell image"))?;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
            archive.set_preserve_permissions(true);
            for entry in archive.entries().map_err(cloud("reading the stemcell image"))? {
                let mut entry = entry.map_err(cloud("reading the stemcell image"))?;
                // unpack_in refuses paths that escape the directory.
                if !entry.unpack_in(&tmp).map_err(cloud("unpacking the stemcell image"))? {
                    return Err(CpiError::InvalidArguments("the stemcell image holds a path outside its root".into()));
                }
            }
            if !tmp.join("bin/bosun-agent").is_file() {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(CpiError::InvalidArguments("the stemcell image has no bin/bosun-agent".into()));
            }
            std::fs::rename(&tmp, &dir).map_err(cloud("installing the stemcell"))?;
            Ok(cid)
        })
        .await
    }

    async fn delete_stemcell(&self, stemcell_cid: &str) -> CpiResult<()> {
        check_cid(stemcell_cid)?;
        let dir = self.stemcell_dir(stemcell_cid);
        let cid = stemcell_cid.to_string();
        blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CpiError::StemcellNotFound(cid)),
            Err(e) => Err(CpiError::Cloud(format!("deleting stemcell: {e}"))),
        })
        .await
    }

    async fn create_vm(&self, request: &CreateVmRequest) -> CpiResult<(String, BTreeMap<String, NetworkSettings>)> {
        check_cid(&request.stemcell_cid)?;
        let stemcell = self.stemcell_dir(&request.stemcell_cid);
        if !stemcell.is_dir() {
            return Err(CpiError::StemcellNotFound(request.stemcell_cid.clone()));
        }
        let _one_at_a_time = self.vm_lock.lock().await?;
        // Addresses live VMs hold: never two live VMs on one address.
        let mut held: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for other in self.list_vms().await? {
            let settings_path = self.vm_dir(&other.vm_cid).join("settings.json");
            let Ok(bytes) = tokio::fs::read(&settings_path).await else { continue };
            let Ok(s) = serde_json::from_slice::<bosun_types::protocol::AgentSettings>(&bytes) else { continue };
            if self.has_vm(&other.vm_cid).await? {
                held.extend(s.networks.values().filter_map(|n| n.ip.parse().ok()).map(|ip| (ip, other.vm_cid.clone())));
            }
        }
        let mut networks = request.networks.clone();
        for (name, n) in networks
            .iter_mut()
            .filter(|(_, n)| n.kind == bosun_types::cloud_config::NetworkType::Dynamic && n.ip.is_empty())
        {
            assign_dynamic(name, n, &held)?;
        }
        let ips = ips_of(&networks)?;
        if let Some((ip, other)) = ips.iter().find_map(|ip| held.get(ip).map(|o| (ip, o))) {
            return Err(CpiError::VmCreationFailed {
                message: format!("address {ip} of this VM is held by VM `{other}`, which is still running"),
                ok_to_retry: false,
            });
        }
        let cid = format!("vm-{}", uuid::Uuid::new_v4().simple());
        let mut settings = agent_settings(request, &cid)?;
        settings.networks = networks.clone();
        let nic = isolation::bridged_nic(&networks)?;
        let tags = creation_tags(request);
        let dir = self.vm_dir(&cid);
        let cid2 = cid.clone();
        let base = self.base.clone();
        blocking(move || {
            let result = (|| {
                std::fs::create_dir_all(dir.join("root")).map_err(cloud("creating the VM directory"))?;
                std::fs::create_dir_all(dir.join("bin")).map_err(cloud("creating the VM directory"))?;
                // The VM gets its own copy of the image, like a VM gets its own root disk.
                copy_tree(&stemcell, &dir).map_err(cloud("copying the stemcell"))?;
                write_atomic(
                    &dir.join("metadata.json"),
                    &serde_json::to_vec_pretty(&tags).expect("serializable"),
                    0o644,
                )?;
                if let Some(nic) = &nic {
                    isolation::plumb(&cid2, nic)?;
                    // The agent reaches the director through the bridge's address.
                    settings.director.address = isolation::director_reachable(nic.gateway, &settings.director.address)?;
                }
                // Settings hold the agent's private key: owner-only.
                write_atomic(
                    &dir.join("settings.json"),
                    &serde_json::to_vec_pretty(&settings).expect("serializable"),
                    0o600,
                )?;
                spawn_agent(&base, &cid2)
            })();
            if let Err(e) = result {
                // A CPI must clean up after a failed create_vm.
                let _ = tear_down(&dir, &cid2, nic.as_ref());
                let _ = std::fs::remove_dir_all(&dir);
                return Err(match e {
                    e @ CpiError::VmCreationFailed { .. } => e,
                    other => CpiError::VmCreationFailed { message: other.to_string(), ok_to_retry: true },
                });
            }
            Ok(())
        })
        .await?;
        tracing::debug!(vm_cid = %cid, "local VM started");
        Ok((cid, networks))
    }

    async fn delete_vm(&self, vm_cid: &str) -> CpiResult<()> {
        if !self.vm_exists(vm_cid).await? {
            return Err(CpiError::VmNotFound(vm_cid.to_string()));
        }
        let cid = vm_cid.to_string();
        let dir = self.vm_dir(vm_cid);
        blocking(move || {
            tear_down(&dir, &cid, None)?;
            // Remove settings first: a half-deleted VM must read as gone.
            let _ = std::fs::remove_file(dir.join("settings.json"));
            std::fs::remove_dir_all(&dir).map_err(cloud("removing the VM directory"))
        })
        .await?;
        // Disks survive their VM; they come back unattached.
        let _guard = self.disk_lock.lock().await?;
        for d in self.list_disks().await? {
            if d.attached_to.as_deref() == Some(vm_cid) {
                let mut rec = self.read_disk(&d.disk_cid).await?;
                rec.attached_to = None;
                self.write_disk(&d.disk_cid, &rec).await?;
            }
        }
        Ok(())
    }

    async fn has_vm(&self, vm_cid: &str) -> CpiResult<bool> {
        if !self.vm_exists(vm_cid).await? {
            return Ok(false);
        }
        let cid = vm_cid.to_string();
        blocking(move || Ok(!vm_processes(&cid).is_empty())).await
    }

    async fn reboot_vm(&self, vm_cid: &str) -> CpiResult<()> {
        if !self.vm_exists(vm_cid).await? {
            return Err(CpiError::VmNotFound(vm_cid.to_string()));
        }
        let cid = vm_cid.to_string();
        let base = self.base.clone();
        blocking(move || {
            kill_vm_processes(&cid, Duration::from_secs(30)).map_err(CpiError::Cloud)?;
            spawn_agent(&base, &cid).map(|_| ())
        })
        .await
    }

    async fn set_vm_metadata(&self, vm_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        if !self.vm_exists(vm_cid).await? {
            return Err(CpiError::VmNotFound(vm_cid.to_string()));
        }
        let path = self.vm_dir(vm_cid).join("metadata.json");
        let mut current: BTreeMap<String, String> =
            tokio::fs::read(&path).await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        current.extend(metadata.clone());
        write_file(path, serde_json::to_vec_pretty(&current).expect("serializable"), 0o644).await
    }

    async fn create_disk(
        &self,
        size_mb: u64,
        cloud_properties: &serde_json::Value,
        _vm_locality: Option<&str>,
    ) -> CpiResult<String> {
        if size_mb == 0 {
            return Err(CpiError::InvalidArguments("create_disk: size must be greater than 0".into()));
        }
        let cid = format!("disk-{}", uuid::Uuid::new_v4().simple());
        let dir = self.disk_dir(&cid);
        tokio::fs::create_dir_all(dir.join("data")).await.map_err(cloud("creating the disk"))?;
        let rec = DiskRecord {
            size_mb,
            cloud_properties: cloud_properties.clone(),
            attached_to: None,
            metadata: Default::default(),
        };
        self.write_disk(&cid, &rec).await?;
        Ok(cid)
    }

    async fn delete_disk(&self, disk_cid: &str) -> CpiResult<()> {
        let _guard = self.disk_lock.lock().await?;
        let rec = self.read_disk(disk_cid).await?;
        if let Some(vm) = rec.attached_to {
            if self.vm_exists(&vm).await? {
                return Err(CpiError::Cloud(format!("disk `{disk_cid}` is attached to VM `{vm}`")));
            }
        }
        let dir = self.disk_dir(disk_cid);
        blocking(move || {
            let _ = std::fs::remove_file(dir.join("disk.json"));
            std::fs::remove_dir_all(&dir).map_err(cloud("deleting the disk"))
        })
        .await
    }

    async fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<serde_json::Value> {
        let _guard = self.disk_lock.lock().await?;
        if !self.vm_exists(vm_cid).await? {
            return Err(CpiError::VmNotFound(vm_cid.to_string()));
        }
        let mut rec = self.read_disk(disk_cid).await?;
        match &rec.attached_to {
            Some(other) if other != vm_cid && self.vm_exists(other).await? => {
                return Err(CpiError::Cloud(format!("disk `{disk_cid}` is attached to VM `{other}`")));
            }
            _ => {}
        }
        rec.attached_to = Some(vm_cid.to_string());
        self.write_disk(disk_cid, &rec).await?;
        let hint = serde_json::json!({ "path": self.disk_dir(disk_cid).join("data") });
        // Registry-less v2: the VM's settings learn the disk too, so an agent restarted without
        // the director still finds it.
        let settings_path = self.vm_dir(vm_cid).join("settings.json");
        let bytes = tokio::fs::read(&settings_path).await.map_err(cloud("reading VM settings"))?;
        let mut settings: bosun_types::protocol::AgentSettings =
            serde_json::from_slice(&bytes).map_err(|e| CpiError::Cloud(format!("VM settings: {e}")))?;
        settings.disks.persistent.insert(disk_cid.to_string(), hint.clone());
        write_file(settings_path.clone(), serde_json::to_vec_pretty(&settings).expect("serializable"), 0o600).await?;
        Ok(hint)
    }

    async fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<()> {
        let _guard = self.disk_lock.lock().await?;
        if !self.vm_exists(vm_cid).await? {
            return Err(CpiError::VmNotFound(vm_cid.to_string()));
        }
        let mut rec = self.read_disk(disk_cid).await?;
        if rec.attached_to.as_deref() != Some(vm_cid) {
            return Err(CpiError::DiskNotAttached { vm_cid: vm_cid.to_string(), disk_cid: disk_cid.to_string() });
        }
        rec.attached_to = None;
        self.write_disk(disk_cid, &rec).await?;
        let settings_path = self.vm_dir(vm_cid).join("settings.json");
        if let Ok(bytes) = tokio::fs::read(&settings_path).await {
            if let Ok(mut settings) = serde_json::from_slice::<bosun_types::protocol::AgentSettings>(&bytes) {
                settings.disks.persistent.remove(disk_cid);
                write_file(settings_path.clone(), serde_json::to_vec_pretty(&settings).expect("serializable"), 0o600)
                    .await?;
            }
        }
        Ok(())
    }

    async fn set_disk_metadata(&self, disk_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        let _guard = self.disk_lock.lock().await?;
        let mut rec = self.read_disk(disk_cid).await?;
        rec.metadata.extend(metadata.clone());
        self.write_disk(disk_cid, &rec).await
    }

    async fn has_disk(&self, disk_cid: &str) -> CpiResult<bool> {
        match self.read_disk(disk_cid).await {
            Ok(_) => Ok(true),
            Err(CpiError::DiskNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn get_disks(&self, vm_cid: &str) -> CpiResult<Vec<String>> {
        if !self.vm_exists(vm_cid).await? {
            return Err(CpiError::VmNotFound(vm_cid.to_string()));
        }
        Ok(self
            .list_disks()
            .await?
            .into_iter()
            .filter(|d| d.attached_to.as_deref() == Some(vm_cid))
            .map(|d| d.disk_cid)
            .collect())
    }

    async fn resize_disk(&self, disk_cid: &str, new_size_mb: u64) -> CpiResult<()> {
        let _guard = self.disk_lock.lock().await?;
        let mut rec = self.read_disk(disk_cid).await?;
        if new_size_mb < rec.size_mb {
            return Err(CpiError::InvalidArguments(format!(
                "resize_disk: cannot shrink `{disk_cid}` from {} to {new_size_mb} MiB",
                rec.size_mb
            )));
        }
        // A directory has no size of its own; the record is the disk's size.
        rec.size_mb = new_size_mb;
        self.write_disk(disk_cid, &rec).await
    }

    async fn list_vms(&self) -> CpiResult<Vec<VmListing>> {
        let dir = self.base.join("vms");
        blocking(move || {
            let mut out = Vec::new();
            for e in std::fs::read_dir(&dir).map_err(cloud("listing VMs"))?.flatten() {
                let Some(cid) = e.file_name().to_str().map(str::to_string) else { continue };
                if !e.path().join("settings.json").exists() {
                    continue;
                }
                let metadata = std::fs::read(e.path().join("metadata.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                out.push(VmListing { vm_cid: cid, metadata });
            }
            out.sort_by(|a, b| a.vm_cid.cmp(&b.vm_cid));
            Ok(out)
        })
        .await
    }

    async fn list_disks(&self) -> CpiResult<Vec<DiskListing>> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(self.base.join("disks")).await.map_err(cloud("listing disks"))?;
        while let Some(e) = rd.next_entry().await.map_err(cloud("listing disks"))? {
            let Some(cid) = e.file_name().to_str().map(str::to_string) else { continue };
            if let Ok(rec) = self.read_disk(&cid).await {
                out.push(DiskListing {
                    disk_cid: cid,
                    size_mb: rec.size_mb,
                    attached_to: rec.attached_to,
                    metadata: rec.metadata,
                });
            }
        }
        out.sort_by(|a, b| a.disk_cid.cmp(&b.disk_cid));
        Ok(out)
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Kills every VM under a base directory and removes what isolated them (for test harnesses that
/// must leave nothing behind, failing or not). The directories stay.
pub fn tear_down_all(base: &Path) {
    for e in std::fs::read_dir(base.join("vms")).into_iter().flatten().flatten() {
        if let Some(cid) = e.file_name().to_str() {
            let _ = tear_down(&e.path(), cid, None);
        }
    }
}
