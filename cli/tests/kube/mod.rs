//! A Kubernetes cluster from the kubo release on the local CPI, for the tests that need one: each
//! test on its own subnet and bridge ([`Site`]), the repository's cloud-config and manifests moved
//! onto them, kubectl from the cluster's own compiled package, and everything it made removed
//! when dropped, failing or not. The host sysctls the kubelets set are put back.
#![allow(dead_code)]

pub mod api;

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One test's own piece of the host: VMs on 10.245.N.0/24 behind bridge `bosun-k8sN`, compilation
/// VMs on 127.0.N.x.
#[derive(Clone, Copy)]
pub struct Site(pub u8);

impl Site {
    pub fn bridge(&self) -> String {
        format!("bosun-k8s{}", self.0)
    }

    /// A repository file (cloud-config, manifest, ops-file) moved onto this site's addresses.
    pub fn moved(&self, text: &str) -> String {
        text.replace("10.245.0.", &format!("10.245.{}.", self.0))
            .replace("bosun-k8s0", &self.bridge())
            .replace("127.0.10.", &format!("127.0.{}.", self.0))
    }

    pub fn repo_file(&self, path: &str) -> String {
        self.moved(&std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    /// The address of host `n` on this site's VM subnet.
    pub fn ip(&self, n: u8) -> String {
        format!("10.245.{}.{n}", self.0)
    }
}

/// The host sysctls a kubelet sets at start (not namespaced), put back when the last cluster on
/// this machine ends: test processes running clusters at the same time share one record of the
/// values from before any of them (`/run/bosun-test-host-sysctls`, read and written under a lock),
/// with the processes holding it. A holder that died is dropped from it, and when no live holder
/// is left, its values are put back before a new record starts.
pub struct HostSysctls;

const HOST_SYSCTLS: [&str; 3] = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"];
const SYSCTL_RECORD: &str = "/run/bosun-test-host-sysctls";

fn restore_sysctls(values: &serde_json::Value) {
    for k in HOST_SYSCTLS {
        if let Some(v) = values[k].as_str() {
            let _ = std::fs::write(format!("/proc/sys/{k}"), v.trim());
        }
    }
}

/// Runs `f` on the record (`{"values": {sysctl: value}, "holders": [pid…]}`) under its lock.
fn with_sysctl_record(f: impl FnOnce(&mut serde_json::Value)) {
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{SYSCTL_RECORD}.lock"))
        .expect("the sysctl record's lock");
    lock.lock().expect("locking the sysctl record");
    let mut record: serde_json::Value = std::fs::read(SYSCTL_RECORD)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"holders": []}));
    let alive = |p: &serde_json::Value| p.as_u64().is_some_and(|p| Path::new("/proc").join(p.to_string()).exists());
    let holders: Vec<serde_json::Value> =
        record["holders"].as_array().into_iter().flatten().filter(|p| alive(p)).cloned().collect();
    if holders.is_empty() && !record["values"].is_null() {
        restore_sysctls(&record["values"]);
        record["values"] = serde_json::Value::Null;
    }
    record["holders"] = serde_json::Value::Array(holders);
    f(&mut record);
    if record["holders"].as_array().is_some_and(|h| h.is_empty()) {
        let _ = std::fs::remove_file(SYSCTL_RECORD);
    } else {
        std::fs::write(SYSCTL_RECORD, record.to_string()).expect("writing the sysctl record");
    }
}

impl HostSysctls {
    pub fn save() -> Self {
        with_sysctl_record(|r| {
            if r["values"].is_null() {
                r["values"] = HOST_SYSCTLS
                    .iter()
                    .map(|k| {
                        (k.to_string(), std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default().into())
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            r["holders"].as_array_mut().expect("holders").push(std::process::id().into());
        });
        HostSysctls
    }
}

impl Drop for HostSysctls {
    fn drop(&mut self) {
        with_sysctl_record(|r| {
            let holders = r["holders"].as_array_mut().expect("holders");
            if let Some(i) = holders.iter().position(|p| p.as_u64() == Some(std::process::id().into())) {
                holders.remove(i);
            }
            if holders.is_empty() {
                restore_sysctls(&r["values"]);
            }
        });
    }
}

/// Kills and unplumbs this director's isolated VMs when dropped, failing or not.
pub struct IsolatedVms(pub PathBuf);

impl Drop for IsolatedVms {
    fn drop(&mut self) {
        bosun_cpi_local::tear_down_all(&self.0);
    }
}

/// kubectl (the compiled one, copied out of a VM) with the operator's kubeconfig.
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    /// Which apiserver to ask (a ready master); the kubeconfig's otherwise.
    pub server: Option<std::sync::Arc<api::Masters>>,
}

impl Kubectl {
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(["--request-timeout", "10s"]);
        if let Some(masters) = &self.server {
            cmd.arg("--server").arg(format!("https://{}:6443", masters.order()[0]));
        }
        cmd.args(args).output().expect("running kubectl")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let o = self.run(&a);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
    }

    /// Whether `node`'s kubelet reported it Ready after `since` and it takes pods (a Node keeps a
    /// dead kubelet's Ready until the grace period ends; the peer hook cordons a lost node).
    pub fn ready_since(&self, node: &str, since: std::time::SystemTime) -> bool {
        let Some(n) = self.json(&["get", "node", node]) else { return false };
        let fresh = n["status"]["conditions"].as_array().into_iter().flatten().any(|c| {
            c["type"] == "Ready"
                && c["status"] == "True"
                && c["lastHeartbeatTime"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .is_some_and(|t| t + Duration::from_secs(1) >= since)
        });
        fresh && n["spec"]["unschedulable"] != true
    }

    /// Node name → Ready.
    pub fn nodes(&self) -> Vec<(String, bool)> {
        let Some(v) = self.json(&["get", "nodes"]) else { return vec![] };
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let ready = n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (n["metadata"]["name"].as_str().unwrap_or("").to_string(), ready)
            })
            .collect()
    }

    /// Running, Ready pods of `app` in `ns`: (pod, node).
    pub fn ready_pods(&self, ns: &str, app: &str) -> Vec<(String, String)> {
        let Some(v) = self.json(&["-n", ns, "get", "pods", "-l", &format!("app={app}")]) else { return vec![] };
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// What is left of this CPI's VMs on the host: processes, network namespaces, cgroups, mounts,
/// the bridge and its iptables rules.
pub fn leftovers(d: &TestDirector, cids: &[String], bridge: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !d.vm_processes().is_empty() {
        out.push(format!("VM processes {:?}", d.vm_processes()));
    }
    for cid in cids {
        if !bosun_cpi_local::vm_processes(cid).is_empty() {
            out.push(format!("processes of {cid}"));
        }
        if Path::new("/run/netns").join(format!("bosun-{cid}")).exists() {
            out.push(format!("network namespace of {cid}"));
        }
        for dir in bosun_cpi_local::isolation::cgroup_dirs(cid) {
            if dir.exists() {
                out.push(format!("cgroup {}", dir.display()));
            }
        }
    }
    let base = d.cpi_base().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    out.extend(mounts.lines().filter(|l| l.contains(&base)).map(|l| format!("mount {l}")));
    if Path::new("/sys/class/net").join(bridge).exists() {
        out.push(format!("bridge {bridge} (ports: {:?})", bosun_cpi_local::isolation::bridge_ports(bridge)));
    }
    let rules = Command::new("iptables").args(["-S", "FORWARD"]).output().expect("iptables");
    out.extend(
        String::from_utf8_lossy(&rules.stdout)
            .lines()
            .filter(|l| l.contains(bridge))
            .map(|l| format!("iptables rule {l}")),
    );
    out
}

/// A workload on the workers behind a NodePort Service (30080): Ready only when serving, a pod
/// that is stopped keeps serving 3 s while its endpoint goes, and a drain evicts one pod at a time
/// (a drain must not fail requests).
pub const WEB: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 15
      containers:
      - name: web
        image: bosun.local/busybox:1
        imagePullPolicy: Never
        # A shell in front of httpd ends it on SIGTERM (httpd as PID 1 ignores SIGTERM, so every
        # stopped pod would wait out its grace period).
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www & trap "kill $!; exit 0" TERM; wait']
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        # Serving on while every node's kube-proxy drops this pod from the Service (seconds on a
        # loaded machine), then ending at once.
        lifecycle: {preStop: {exec: {command: [sleep, "8"]}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {name: web, namespace: web}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
"#;

/// A running cluster and what the test needs around it; everything it made goes when dropped.
pub struct Cluster {
    pub site: Site,
    pub k: Kubectl,
    /// The first master's root directory, seen from the host.
    pub master_root: PathBuf,
    /// The manifest and what every deploy of it repeats (ops-files, variables).
    pub manifest: PathBuf,
    pub base_args: Vec<String>,
    // Dropped in this order (after the director process is stopped): VMs, then the director's
    // state, then the host's sysctls.
    pub vms: IsolatedVms,
    pub d: TestDirector,
    pub sysctls: HostSysctls,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test can leave the director mid-task (resurrecting, creating a VM): stopped
        // first, it cannot make a VM, namespace or bridge after the VMs are torn down.
        self.d.stop_process();
    }
}

/// Deploys manifests/kubernetes.yml with repository ops-files (`manifests/ops/…`) and variables
/// (`k=v`) on `site`, and waits for `instances` running instances and `nodes` Ready nodes.
pub fn deploy_cluster(site: Site, ops: &[&str], vars: &[&str], instances: usize, nodes: usize) -> Cluster {
    let sysctls = HostSysctls::save();
    // Agents in network namespaces reach the director through the bridge (silent after the
    // harness's six missed heartbeats, 3 s, as every test director's).
    let d = TestDirector::start_with(&["--agent-listen", "0.0.0.0"], &[]);
    let vms = IsolatedVms(d.cpi_base());
    d.prepare(&d.write("cloud.yml", &site.repo_file("manifests/cloud-config/local-kubernetes.yml")));
    let manifest = d.write("kubernetes.yml", &site.repo_file("manifests/kubernetes.yml"));
    let mut base_args = Vec::new();
    for op in ops {
        let name = Path::new(op).file_name().expect("a file").to_str().expect("utf-8");
        base_args.push("-o".to_string());
        base_args.push(d.write(name, &site.repo_file(op)).to_str().expect("utf-8 path").to_string());
    }
    for v in vars {
        base_args.extend(["-v".to_string(), v.to_string()]);
    }
    let started = Instant::now();
    let mut args: Vec<&str> = vec!["-n", "-d", "kubernetes", "deploy", manifest.to_str().unwrap()];
    args.extend(base_args.iter().map(String::as_str));
    d.ok(&args);
    println!("deploy (compilation included): {:.0} s", started.elapsed().as_secs_f64());
    let all = d.running("kubernetes", instances);
    let master = all.iter().find(|i| i["group"] == "master" && i["index"] == 0).expect("master 0");
    let master_root = d.cpi_base().join("vms").join(master["vm_cid"].as_str().unwrap()).join("root");

    // The binaries are Kubernetes 1.20.2; kubectl comes out of the VM for the test to use.
    let bin = master_root.join("packages/kubernetes/bin");
    let o = Command::new(bin.join("kube-apiserver")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "Kubernetes v1.20.2");
    let kubectl_bin = d.dir.path().join("kubectl");
    std::fs::copy(bin.join("kubectl"), &kubectl_bin).unwrap();

    // The operator's kubeconfig, from the director.
    let kubeconfig = d.write("kubeconfig", &d.ok(&["-d", "kubernetes", "kubeconfig"]));
    let k = Kubectl { bin: kubectl_bin, kubeconfig, server: None };
    eventually(&format!("{nodes} Ready nodes"), Duration::from_secs(180), || {
        let n = k.nodes();
        (n.len() == nodes && n.iter().all(|(_, r)| *r)).then_some(n)
    });
    println!("deploy → {nodes} Ready nodes: {:.0} s", started.elapsed().as_secs_f64());
    Cluster { site, k, master_root, manifest, base_args, vms, d, sysctls }
}

impl Cluster {
    /// A group's instances by index: (instance name, instance id = node name, VM cid).
    pub fn group(&self, group: &str) -> Vec<(String, String, String)> {
        let mut list: Vec<serde_json::Value> =
            self.d.instances("kubernetes").into_iter().filter(|i| i["group"] == group).collect();
        list.sort_by_key(|i| i["index"].as_u64());
        list.into_iter()
            .map(|i| {
                let id = i["id"].as_str().unwrap_or("").to_string();
                (format!("{group}/{id}"), id, i["vm_cid"].as_str().unwrap_or("").to_string())
            })
            .collect()
    }

    pub fn workers(&self) -> Vec<(String, String, String)> {
        self.group("worker")
    }

    /// `bosun deploy` of the cluster's manifest with its ops-files and variables, then `extra`.
    pub fn deploy(&self, extra: &[&str]) -> String {
        self.d.ok(&self.deploy_args(extra).iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn deploy_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["-n", "-d", "kubernetes", "deploy"].map(String::from).to_vec();
        args.push(self.manifest.to_str().expect("utf-8 path").to_string());
        args.extend(self.base_args.iter().cloned());
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// Waits until no task runs (a resurrection ends once its post-start saw the node Ready).
    pub fn settled(&self) {
        eventually("no task running", Duration::from_secs(300), || {
            let tasks = self.d.json(&["tasks"]);
            tasks.as_array()?.iter().all(|t| t["state"] != "processing").then_some(())
        });
    }

    /// Puts every web pod on `node`: the other nodes cordoned while the pods are replaced.
    pub fn web_on(&self, node: &str) {
        let others: Vec<String> = self.k.nodes().into_iter().map(|(n, _)| n).filter(|n| n != node).collect();
        for n in &others {
            self.k.ok(&["cordon", n]);
        }
        self.k.ok(&["-n", "web", "rollout", "restart", "deployment/web"]);
        eventually(&format!("4 web pods on {node}"), Duration::from_secs(120), || {
            let pods = self.k.ready_pods("web", "web");
            let all = self.k.json(&["-n", "web", "get", "pods", "-l", "app=web"])?;
            (pods.len() == 4 && all["items"].as_array()?.len() == 4 && pods.iter().all(|(_, n)| n == node))
                .then_some(())
        });
        for n in &others {
            self.k.ok(&["uncordon", n]);
        }
    }

    /// Kills every process of `victim`'s VM (containers too) and measures (death → its web pods
    /// Ready on other nodes, death → the same node Ready again, reported by its new kubelet).
    pub fn kill_worker(&self, victim: &(String, String, String)) -> (Duration, Duration) {
        let killed = bosun_cpi_local::kill_vm_processes(&victim.2, Duration::from_secs(30)).unwrap();
        let died = Instant::now();
        let died_at = std::time::SystemTime::now();
        println!("killed worker {} (VM {}): {killed} processes", victim.0, victim.2);
        let (mut moved, mut back) = (None, None);
        let deadline = Duration::from_secs(420);
        while moved.is_none() || back.is_none() {
            assert!(died.elapsed() < deadline, "after {deadline:?}: pods moved {moved:?}, node back {back:?}");
            if moved.is_none() {
                let pods = self.k.ready_pods("web", "web");
                if pods.len() == 4 && pods.iter().all(|(_, n)| n != &victim.1) {
                    moved = Some(died.elapsed());
                }
            }
            if back.is_none() {
                let same = self.workers().into_iter().find(|(_, id, _)| id == &victim.1);
                if same.is_some_and(|(_, _, vm)| vm != victim.2) && self.k.ready_since(&victim.1, died_at) {
                    back = Some(died.elapsed());
                }
            }
            std::thread::park_timeout(Duration::from_millis(250));
        }
        (moved.unwrap(), back.unwrap())
    }
}
