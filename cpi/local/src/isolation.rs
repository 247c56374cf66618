//! Isolated local VMs: a VM on a *bridged* network (`cloud_properties: {bridge: NAME}`) gets its
//! own network namespace (a veth on a host bridge the CPI makes, the cloud-config's address and
//! gateway), its own mount namespace (a fresh `/run` and private `/var/lib/kubelet`, `/var/lib/cni`,
//! `/var/log/pods`, `/var/log/containers`), and one cgroup in every hierarchy
//! (`/sys/fs/cgroup/<h>/bosun/<cid>`) holding every process of it, containers included. Killing
//! the cgroup's processes is killing the VM; the mount namespace and everything mounted in it go
//! when its last process does; `delete_vm` removes the network namespace and the cgroups.
//!
//! Kubernetes needs this: a kubelet refuses a loopback node address, an apiserver advertising one
//! gets no `kubernetes` Service endpoints, and two kubelets sharing one network namespace or one
//! container runtime fight over iptables chains and pods.

use bosun_cpi::{CpiError, CpiResult};
use bosun_types::protocol::NetworkSettings;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where a VM's cgroup lives inside each hierarchy.
const CGROUP_PARENT: &str = "bosun";
/// Paths a VM gets a private copy of (bind-mounted from its own directory): the kubelet hard-codes
/// them, and several kubelets on one machine must not share them.
const PRIVATE_PATHS: &[&str] = &["/var/lib/kubelet", "/var/lib/cni", "/var/log/pods", "/var/log/containers"];
/// Marks the host-side iptables rules the CPI adds, so it finds exactly its own again.
const RULE_COMMENT: &str = "bosun-local-bridge";

/// A VM's place on a bridged network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgedNic {
    pub bridge: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

fn bad(name: &str, message: String) -> CpiError {
    CpiError::VmCreationFailed { message: format!("network `{name}`: {message}"), ok_to_retry: false }
}

/// The bridged network of a VM, if it has one. A VM is either all-loopback or on exactly one
/// bridged network.
pub fn bridged_nic(networks: &BTreeMap<String, NetworkSettings>) -> CpiResult<Option<BridgedNic>> {
    let bridged: Vec<_> = networks.iter().filter(|(_, n)| n.cloud_properties.get("bridge").is_some()).collect();
    let Some((name, n)) = bridged.first() else { return Ok(None) };
    if networks.len() > 1 {
        return Err(bad(name, "a VM on a bridged network of the local CPI has no other network".into()));
    }
    let bridge = n.cloud_properties["bridge"].as_str().unwrap_or_default();
    if bridge.is_empty()
        || bridge.len() > 15
        || !bridge.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad(name, format!("bridge `{bridge}` is not an interface name (a-z, 0-9, -, at most 15)")));
    }
    let ip: Ipv4Addr = n.ip.parse().map_err(|_| bad(name, format!("`{}` is not an IPv4 address", n.ip)))?;
    if ip.is_loopback() {
        return Err(bad(name, format!("{ip} is a loopback address; a bridged network needs a private subnet")));
    }
    let mask: Ipv4Addr = n.netmask.parse().map_err(|_| bad(name, format!("netmask `{}` is not IPv4", n.netmask)))?;
    let prefix = u32::from(mask).leading_ones() as u8;
    let gateway: Ipv4Addr = n
        .gateway
        .as_deref()
        .ok_or_else(|| bad(name, "a bridged network needs its subnet's gateway (the bridge's address)".into()))?
        .parse()
        .map_err(|_| bad(name, "the gateway is not an IPv4 address".into()))?;
    let net = ipnet::Ipv4Net::new(ip, prefix).map_err(|e| bad(name, e.to_string()))?.trunc();
    if !net.contains(&gateway) || gateway == ip {
        return Err(bad(name, format!("gateway {gateway} must be another address of {net}")));
    }
    Ok(Some(BridgedNic { bridge: bridge.to_string(), ip, prefix, gateway }))
}

/// The network namespace of a VM (`ip netns` name).
pub fn netns_name(cid: &str) -> String {
    format!("bosun-{cid}")
}

/// The host end of a VM's veth: interface names have at most 15 bytes.
fn veth_name(cid: &str) -> String {
    let tail: String = cid.chars().filter(char::is_ascii_alphanumeric).skip(2).take(12).collect();
    format!("bv{tail}")
}

fn run(what: &str, mut cmd: Command) -> CpiResult<String> {
    let out = cmd.output().map_err(|e| CpiError::Cloud(format!("{what}: running {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(CpiError::Cloud(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}

fn in_netns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The bridge with the gateway's address, and the host rules letting bridged traffic through
/// (Docker's FORWARD policy is DROP, and bridged frames cross iptables with br_netfilter).
fn ensure_bridge(nic: &BridgedNic) -> CpiResult<()> {
    let br = nic.bridge.as_str();
    if !link_exists(br) {
        run("creating the bridge", ip(&["link", "add", br, "type", "bridge"]))?;
    }
    let addr = format!("{}/{}", nic.gateway, nic.prefix);
    let shown = run("reading the bridge", ip(&["-4", "-o", "addr", "show", "dev", br]))?;
    if !shown.split_whitespace().any(|w| w == addr) {
        run("addressing the bridge", ip(&["addr", "add", &addr, "dev", br]))?;
    }
    run("bringing the bridge up", ip(&["link", "set", br, "up"]))?;
    for dir in ["-i", "-o"] {
        let rule = ["FORWARD", dir, br, "-m", "comment", "--comment", RULE_COMMENT, "-j", "ACCEPT"];
        if !succeeds(Command::new("iptables").arg("-C").args(rule)) {
            let mut insert = Command::new("iptables");
            insert.arg("-I").args(rule);
            run("letting bridged traffic through", insert)?;
        }
    }
    Ok(())
}

/// Serialises plugging into and releasing a bridge within this process: a VM being plugged into
/// a bridge another VM's deletion is about to remove would lose its network.
static BRIDGES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The interfaces plugged into a bridge.
pub fn bridge_ports(br: &str) -> Vec<String> {
    let dir = Path::new("/sys/class/net").join(br).join("brif");
    let mut ports: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ports.sort();
    ports
}

/// Removes a bridge no VM is plugged into any more, and its rules.
fn release_bridge(br: &str) {
    let _one = BRIDGES.lock().unwrap_or_else(|e| e.into_inner());
    if !bridge_ports(br).is_empty() || !link_exists(br) {
        return;
    }
    let _ = ip(&["link", "delete", br, "type", "bridge"]).output();
    for dir in ["-i", "-o"] {
        let rule = ["FORWARD", dir, br, "-m", "comment", "--comment", RULE_COMMENT, "-j", "ACCEPT"];
        while succeeds(Command::new("iptables").arg("-D").args(rule)) {}
    }
}

/// The network namespace and veth of a VM, addressed and routed through the gateway.
pub fn plumb(cid: &str, nic: &BridgedNic) -> CpiResult<()> {
    let ns = netns_name(cid);
    let host = veth_name(cid);
    let _ = ip(&["netns", "delete", &ns]).output();
    run("creating the VM's network namespace", ip(&["netns", "add", &ns]))?;
    let _ = ip(&["link", "delete", &host]).output();
    run("creating the VM's veth", ip(&["link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns]))?;
    {
        let _one = BRIDGES.lock().unwrap_or_else(|e| e.into_inner());
        ensure_bridge(nic)?;
        run("plugging the VM into the bridge", ip(&["link", "set", &host, "master", &nic.bridge, "up"]))?;
    }
    let addr = format!("{}/{}", nic.ip, nic.prefix);
    run("addressing the VM", in_netns(&ns, &["ip", "addr", "add", &addr, "dev", "eth0"]))?;
    run("bringing the VM's interfaces up", in_netns(&ns, &["ip", "link", "set", "lo", "up"]))?;
    run("bringing the VM's interfaces up", in_netns(&ns, &["ip", "link", "set", "eth0", "up"]))?;
    run(
        "routing the VM through its gateway",
        in_netns(&ns, &["ip", "route", "add", "default", "via", &nic.gateway.to_string()]),
    )?;
    Ok(())
}

/// Removes a VM's network namespace (its veth goes with it) and, when it was the last VM on it,
/// the bridge.
pub fn unplumb(cid: &str, bridge: Option<&str>) {
    let ns = netns_name(cid);
    if Path::new("/run/netns").join(&ns).exists() {
        let _ = ip(&["netns", "delete", &ns]).output();
    }
    let veth = veth_name(cid);
    let _ = ip(&["link", "delete", &veth]).output();
    // A veth whose namespace the kernel is still tearing down (asynchronously) stays plugged into
    // the bridge a moment: the last VM to go must not see it and keep the bridge.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while link_exists(&veth) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(br) = bridge {
        release_bridge(br);
    }
}

/// The cgroup v1/v2 hierarchies mounted under /sys/fs/cgroup.
fn hierarchies() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return vec![] };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (matches!(kind, "cgroup" | "cgroup2") && at.starts_with("/sys/fs/cgroup")).then(|| PathBuf::from(at))
        })
        .collect()
}

/// The VM's cgroup path inside each hierarchy.
pub fn cgroup_dirs(cid: &str) -> Vec<PathBuf> {
    hierarchies().into_iter().map(|h| h.join(CGROUP_PARENT).join(cid)).collect()
}

/// The VM's cgroup as processes see it (`/bosun/<cid>`), the kubelet's `--cgroup-root`.
pub fn cgroup_path(cid: &str) -> String {
    format!("/{CGROUP_PARENT}/{cid}")
}

/// Makes the VM's cgroup in every hierarchy (cpuset needs its CPUs and memory nodes copied down
/// before it takes a process).
pub fn make_cgroups(cid: &str) -> CpiResult<Vec<PathBuf>> {
    let dirs = cgroup_dirs(cid);
    for dir in &dirs {
        std::fs::create_dir_all(dir).map_err(|e| CpiError::Cloud(format!("creating cgroup {}: {e}", dir.display())))?;
        if dir.components().any(|c| c.as_os_str() == "cpuset") {
            for level in [dir.parent().expect("under a hierarchy"), dir.as_path()] {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = level.parent().expect("under a hierarchy").join(file);
                    let value = std::fs::read_to_string(&parent).unwrap_or_default();
                    if std::fs::read_to_string(level.join(file)).unwrap_or_default().trim().is_empty() {
                        std::fs::write(level.join(file), value.trim())
                            .map_err(|e| CpiError::Cloud(format!("{}: {e}", level.join(file).display())))?;
                    }
                }
            }
        }
    }
    Ok(dirs)
}

/// Every process in the VM's cgroups, subtrees included.
pub fn cgroup_pids(cid: &str) -> Vec<i32> {
    fn walk(dir: &Path, out: &mut std::collections::BTreeSet<i32>) {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for dir in cgroup_dirs(cid) {
        walk(&dir, &mut out);
    }
    out.into_iter().collect()
}

/// Freezes the VM's cgroup (no process forks while we kill), SIGKILLs everything in it, thaws it
/// so the kills land, and waits until it is empty.
pub fn kill_cgroup(cid: &str, deadline: Duration) -> Result<usize, String> {
    use nix::sys::signal::{kill, Signal};
    let freezer = cgroup_dirs(cid).into_iter().find(|d| d.components().any(|c| c.as_os_str() == "freezer"));
    let start = std::time::Instant::now();
    let mut killed = std::collections::BTreeSet::new();
    loop {
        let pids = cgroup_pids(cid);
        if pids.is_empty() {
            return Ok(killed.len());
        }
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join("freezer.state"), "FROZEN");
        }
        for pid in pids {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join("freezer.state"), "THAWED");
        }
        if start.elapsed() > deadline {
            return Err(format!("processes of VM {cid} survived SIGKILL for {deadline:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the VM's (empty) cgroups, the kubelet's sub-cgroups first.
pub fn remove_cgroups(cid: &str) {
    fn remove(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for dir in cgroup_dirs(cid) {
        remove(&dir);
        // The shared parent goes with the last VM (removing a non-empty cgroup fails, harmlessly).
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Joins a VM's cgroups, enters a mount namespace of its own with a fresh /run and the private
/// paths bound from the VM's directory, then runs the program: `sh` keeps its pid through `exec`,
/// so the program is the process that joined.
const ENTER_SCRIPT: &str = r#"set -e
n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1"; shift; n=$((n - 1)); done
mount -t tmpfs -o mode=755,size=256m,nosuid,nodev tmpfs /run
n=$1; shift
while [ "$n" -gt 0 ]; do mount --bind "$1" "$2"; shift 2; n=$((n - 1)); done
exec "$@"
"#;

/// The command that starts `program` inside the VM: its network namespace (`nsenter`, which keeps
/// the host's /sys and with it the cgroup file systems the kubelet needs), a private mount
/// namespace (`unshare`), its cgroups. Makes the cgroups and private directories first.
pub fn enclosed_command(cid: &str, vm_dir: &Path, program: &Path) -> CpiResult<Command> {
    let err = |what: &'static str| move |e: std::io::Error| CpiError::Cloud(format!("{what}: {e}"));
    let netns = Path::new("/run/netns").join(netns_name(cid));
    if !netns.exists() {
        return Err(CpiError::Cloud(format!("the VM's network namespace {} is missing", netns.display())));
    }
    let cgroups = make_cgroups(cid)?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()));
    cmd.args(["--", "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", ENTER_SCRIPT, "sh"]);
    cmd.arg(cgroups.len().to_string());
    cmd.args(cgroups.iter().map(|d| d.join("cgroup.procs")));
    cmd.arg(PRIVATE_PATHS.len().to_string());
    for target in PRIVATE_PATHS {
        let source = vm_dir.join("private").join(target.trim_start_matches('/').replace('/', "-"));
        std::fs::create_dir_all(&source).map_err(err("making the VM's private directories"))?;
        // The mount point, on the host: an empty directory.
        std::fs::create_dir_all(target).map_err(err("making a mount point"))?;
        cmd.arg(source).arg(target);
    }
    cmd.arg(program);
    Ok(cmd)
}

/// Whether the host reaches `address`'s port on the gateway: an agent in a network namespace
/// reaches the director only through the bridge, so a director listening on loopback alone is
/// refused up front with what to change.
pub fn director_reachable(gateway: Ipv4Addr, director: &str) -> CpiResult<String> {
    let port = director
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| CpiError::InvalidArguments(format!("the director's agent address `{director}` has no port")))?;
    let at = std::net::SocketAddr::from((gateway, port));
    std::net::TcpStream::connect_timeout(&at, Duration::from_secs(3)).map_err(|e| CpiError::VmCreationFailed {
        message: format!(
            "a VM on a bridged network reaches the director at {at} (its gateway), and that fails ({e}): \
             start the director with `--agent-listen 0.0.0.0:{port}` (or on {gateway})"
        ),
        ok_to_retry: false,
    })?;
    Ok(at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(ip: &str, gateway: Option<&str>, props: serde_json::Value) -> BTreeMap<String, NetworkSettings> {
        let n = NetworkSettings {
            kind: Default::default(),
            ip: ip.into(),
            netmask: "255.255.255.0".into(),
            gateway: gateway.map(str::to_string),
            default: vec![],
            dns: vec![],
            cloud_properties: props,
        };
        BTreeMap::from([("k8s".to_string(), n)])
    }

    #[test]
    fn a_bridged_network_needs_a_private_address_a_gateway_and_a_bridge_name() {
        let ok = bridged_nic(&net("10.245.0.10", Some("10.245.0.1"), serde_json::json!({"bridge": "bosun-k8s"})))
            .unwrap()
            .unwrap();
        assert_eq!(ok.prefix, 24);
        assert_eq!(bridged_nic(&net("127.0.0.5", None, serde_json::json!({}))).unwrap(), None);
        for (n, want) in [
            (net("127.0.0.5", Some("127.0.0.1"), serde_json::json!({"bridge": "b0"})), "loopback"),
            (net("10.245.0.10", None, serde_json::json!({"bridge": "b0"})), "gateway"),
            (net("10.245.0.10", Some("10.9.0.1"), serde_json::json!({"bridge": "b0"})), "another address"),
            (net("10.245.0.10", Some("10.245.0.1"), serde_json::json!({"bridge": "Bad Name"})), "interface name"),
        ] {
            let e = bridged_nic(&n).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn veth_names_fit_in_an_interface_name() {
        let v = veth_name("vm-0123456789abcdef0123456789abcdef");
        assert!(v.len() <= 15, "{v}");
        assert_eq!(v, "bv0123456789ab");
    }
}
