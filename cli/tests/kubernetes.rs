//! A real Kubernetes 1.20.2 cluster from the kubo release on the local CPI: one master (etcd and
//! the control plane), workers with their own containerd, each VM in its own network namespace on
//! a bridge (`bosun-k8s62`, 10.245.62.0/24). The Kubernetes packages come out of compilation VMs
//! (Go 1.19 and Kubernetes 1.20.2 from Debian); the test directors share the compiled-package
//! cache (`/var/cache/bosun/compiled-packages`), so only a cold machine compiles them.
//!
//! What the kubelets change on the host (three sysctls) is put back when the test ends, and the
//! test checks that deleting the deployment leaves no process, mount, network namespace, bridge,
//! iptables rule or cgroup behind.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BRIDGE: &str = "bosun-k8s62";

/// The repository's cloud-config and manifest, moved onto this test's subnets and bridge.
fn cloud_config() -> String {
    std::fs::read_to_string(repo().join("manifests/cloud-config/local-kubernetes.yml"))
        .expect("local-kubernetes cloud-config")
        .replace("10.245.0.", "10.245.62.")
        .replace("bosun-k8s0", BRIDGE)
        .replace("127.0.10.", "127.0.62.")
}

fn manifest() -> String {
    std::fs::read_to_string(repo().join("manifests/kubernetes.yml"))
        .expect("kubernetes manifest")
        .replace("10.245.0.", "10.245.62.")
}

/// The host sysctls a kubelet sets at start (not namespaced): restored when dropped.
struct HostSysctls(Vec<(&'static str, String)>);

impl HostSysctls {
    fn save() -> Self {
        let keys = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"];
        HostSysctls(
            keys.iter().map(|k| (*k, std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default())).collect(),
        )
    }
}

impl Drop for HostSysctls {
    fn drop(&mut self) {
        for (k, v) in &self.0 {
            let _ = std::fs::write(format!("/proc/sys/{k}"), v.trim());
        }
    }
}

/// Kills and unplumbs this director's isolated VMs when dropped, failing or not.
struct IsolatedVms(PathBuf);

impl Drop for IsolatedVms {
    fn drop(&mut self) {
        bosun_cpi_local::tear_down_all(&self.0);
    }
}

/// kubectl (the compiled one, copied out of a VM) with the operator's kubeconfig.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout", "10s"])
            .args(args)
            .output()
            .expect("running kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let o = self.run(&a);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
    }

    /// Whether `node`'s kubelet reported it Ready after `since` and it takes pods (a Node keeps a
    /// dead kubelet's Ready until the grace period ends; the peer hook cordons a lost node).
    fn ready_since(&self, node: &str, since: std::time::SystemTime) -> bool {
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
    fn nodes(&self) -> Vec<(String, bool)> {
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
    fn ready_pods(&self, ns: &str, app: &str) -> Vec<(String, String)> {
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
fn leftovers(d: &TestDirector, cids: &[String]) -> Vec<String> {
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
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        out.push(format!("bridge {BRIDGE}"));
    }
    let rules = Command::new("iptables").args(["-S", "FORWARD"]).output().expect("iptables");
    out.extend(
        String::from_utf8_lossy(&rules.stdout)
            .lines()
            .filter(|l| l.contains(BRIDGE))
            .map(|l| format!("iptables rule {l}")),
    );
    out
}

/// A workload on the workers behind a NodePort Service (30080): Ready only when serving, a pod
/// that is stopped keeps serving 3 s while its endpoint goes, and a drain evicts one pod at a time
/// (a drain must not fail requests).
const WEB: &str = r#"
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
      terminationGracePeriodSeconds: 10
      containers:
      - name: web
        image: bosun.local/busybox:1
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        lifecycle: {preStop: {exec: {command: [sleep, "3"]}}}
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
struct Cluster {
    k: Kubectl,
    master_root: PathBuf,
    // Dropped in this order: VMs first, then the director, then the host's sysctls.
    _vms: IsolatedVms,
    d: TestDirector,
    _sysctls: HostSysctls,
}

/// Deploys manifests/kubernetes.yml and waits for 2 Ready nodes.
fn deploy_cluster() -> Cluster {
    let sysctls = HostSysctls::save();
    // Agents in network namespaces reach the director through the bridge.
    let d = TestDirector::start_with(&["--agent-listen", "0.0.0.0"], &[]);
    let vms = IsolatedVms(d.cpi_base());
    d.prepare(&d.write("cloud.yml", &cloud_config()));
    let m = d.write("kubernetes.yml", &manifest());
    let started = Instant::now();
    d.ok(&["-n", "-d", "kubernetes", "deploy", m.to_str().unwrap()]);
    println!("deploy (compilation included): {:.0} s", started.elapsed().as_secs_f64());
    let instances = d.running("kubernetes", 3);
    let master = instances.iter().find(|i| i["group"] == "master").expect("a master");
    let master_root = d.cpi_base().join("vms").join(master["vm_cid"].as_str().unwrap()).join("root");

    // The binaries are Kubernetes 1.20.2; kubectl comes out of the VM for the test to use.
    let bin = master_root.join("packages/kubernetes/bin");
    let o = Command::new(bin.join("kube-apiserver")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "Kubernetes v1.20.2");
    let kubectl_bin = d.dir.path().join("kubectl");
    std::fs::copy(bin.join("kubectl"), &kubectl_bin).unwrap();

    // The operator's kubeconfig, from the director.
    let kubeconfig = d.write("kubeconfig", &d.ok(&["-d", "kubernetes", "kubeconfig"]));
    let k = Kubectl { bin: kubectl_bin, kubeconfig };
    eventually("2 Ready nodes", Duration::from_secs(120), || {
        let n = k.nodes();
        (n.len() == 2 && n.iter().all(|(_, r)| *r)).then_some(n)
    });
    println!("deploy → 2 Ready nodes: {:.0} s", started.elapsed().as_secs_f64());
    Cluster { k, master_root, _vms: vms, d, _sysctls: sysctls }
}

impl Cluster {
    /// Workers by index: (instance name, node name = instance id, VM cid).
    fn workers(&self) -> Vec<(String, String, String)> {
        let mut list: Vec<serde_json::Value> =
            self.d.instances("kubernetes").into_iter().filter(|i| i["group"] == "worker").collect();
        list.sort_by_key(|i| i["index"].as_u64());
        list.into_iter()
            .map(|i| {
                let id = i["id"].as_str().unwrap_or("").to_string();
                (format!("worker/{id}"), id, i["vm_cid"].as_str().unwrap_or("").to_string())
            })
            .collect()
    }

    /// Waits until no task runs (a resurrection ends once its post-start saw the node Ready).
    fn settled(&self) {
        eventually("no task running", Duration::from_secs(300), || {
            let tasks = self.d.json(&["tasks"]);
            tasks.as_array()?.iter().all(|t| t["state"] != "processing").then_some(())
        });
    }

    /// Puts every web pod on `node`: the other nodes cordoned while the pods are replaced.
    fn web_on(&self, node: &str) {
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
    fn kill_worker(&self, victim: &(String, String, String)) -> (Duration, Duration) {
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

/// Requests `http://addr/` every 100 ms on a thread until stopped: (total, failed).
struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Prober {
    fn start(addr: String) -> Self {
        use std::io::{Read, Write};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut total, mut failed) = (0, Vec::new());
            let sock: std::net::SocketAddr = addr.parse().expect("an address");
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let next = Instant::now() + Duration::from_millis(100);
                total += 1;
                let answer = (|| -> std::io::Result<String> {
                    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    Ok(out)
                })();
                match answer {
                    Ok(a) if a.starts_with("HTTP/1.") && a.contains(" 200 ") => {}
                    Ok(a) => failed.push(format!("{:?}", a.lines().next().unwrap_or(""))),
                    Err(e) => failed.push(e.to_string()),
                }
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::park_timeout(wait);
                }
            }
            (total, failed)
        });
        Prober { stop, handle: Some(handle) }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.take().expect("running").join().expect("the prober")
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_kubernetes_cluster_deploys_heals_a_dead_worker_scales_and_leaves_nothing_behind() {
    let c = deploy_cluster();
    let (d, k) = (&c.d, &c.k);
    let mut names: Vec<String> = k.nodes().into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut ids: Vec<String> = c.workers().into_iter().map(|(_, id, _)| id).collect();
    ids.sort();
    assert_eq!(names, ids, "each node is named after its instance");
    let cs = eventually("healthy componentstatuses", Duration::from_secs(60), || {
        let v = k.json(&["get", "componentstatuses"])?;
        let items = v["items"].as_array()?.clone();
        let healthy = items.iter().all(|c| {
            c["conditions"].as_array().into_iter().flatten().any(|x| x["type"] == "Healthy" && x["status"] == "True")
        });
        (items.len() >= 3 && healthy).then_some(items.len())
    });
    println!("componentstatuses: {cs} healthy");

    // The smoke test errand: a Service over one pod per node answers from every pod.
    let out = d.ok(&["-d", "kubernetes", "run-errand", "smoke-tests"]);
    assert!(out.contains("smoke test passed: 2 replicas on 2 nodes"), "{out}");
    // Nothing changed since it succeeded: --when-changed does not run it again.
    let out = d.ok(&["-d", "kubernetes", "run-errand", "smoke-tests", "--when-changed"]);
    assert!(out.contains("skipped: it succeeded last time and nothing changed since"), "{out}");
    let err = d.fails(2, &["-d", "kubernetes", "run-errand", "no-such-errand"]);
    assert!(err.contains("no instance of deployment `kubernetes` has the errand job `no-such-errand`"), "{err}");
    let err = d.fails(2, &["-d", "kubernetes", "run-errand", "smoke-tests", "--instance", "worker/0"]);
    assert!(err.contains("no instance matching `worker/0` has the errand job `smoke-tests`"), "{err}");

    // Each kubelet has its own identity: worker A's certificate cannot touch worker B's Node.
    let w = c.workers();
    let (a, b) = (&w[0], &w[1]);
    // The kubelet's files, seen from the host: its /var/lib/kubelet is the VM's private copy, and
    // the current certificate is a link to a dated file there.
    let pki = d.cpi_base().join("vms").join(&a.2).join("private/var-lib-kubelet/pki");
    let current = std::fs::read_link(pki.join("kubelet-client-current.pem")).expect("node A's client certificate");
    let pem = pki.join(current.file_name().unwrap()).to_str().unwrap().to_string();
    let ca = c.master_root.join("jobs/kube-apiserver/config/ca.crt").to_str().unwrap().to_string();
    let empty = d.write("empty-kubeconfig", "");
    let as_a = |args: &[&str]| {
        Command::new(&k.bin)
            .arg("--kubeconfig")
            .arg(&empty)
            .args(["--server", "https://10.245.62.10:6443", "--certificate-authority", &ca])
            .args(["--client-certificate", &pem, "--client-key", &pem])
            .args(args)
            .output()
            .unwrap()
    };
    let own = as_a(&["get", "node", &a.1]);
    assert!(own.status.success(), "node A reads its own Node: {}", String::from_utf8_lossy(&own.stderr));
    let theirs = as_a(&["label", "node", &b.1, "bosun.test/tampered=yes"]);
    let err = String::from_utf8_lossy(&theirs.stderr);
    assert!(!theirs.status.success() && err.contains("Forbidden"), "node A must not modify node B: {err}");
    println!("node A labelling node B: {}", err.trim());

    // A workload on both workers, then worker A's VM dies: every process of it, containers too.
    let web = d.write("web.yml", WEB);
    k.ok(&["apply", "-f", web.to_str().unwrap()]);
    c.web_on(&a.1);
    let (moved, back) = c.kill_worker(a);
    println!(
        "worker VM death → its pods Running on the other worker: {:.1} s (target ≤ 15 s; Kubernetes alone: 40 s + 300 s)",
        moved.as_secs_f64()
    );
    println!("worker VM death → the same node Ready again: {:.1} s (target ≤ 30 s; Kubo: ~180 s)", back.as_secs_f64());
    c.settled();

    // Scale 2 → 3 → 2 under load: requests through worker 0's NodePort never fail.
    let first = c.workers()[0].clone();
    let first_ip = d
        .instances("kubernetes")
        .into_iter()
        .find(|i| i["id"] == first.1.as_str())
        .and_then(|i| i["ips"][0].as_str().map(str::to_string))
        .expect("worker 0's address");
    let probe = Prober::start(format!("{first_ip}:30080"));
    let workers_ops = repo().join("manifests/ops/workers.yml");
    let workers_ops = workers_ops.to_str().unwrap();
    // The same deploy gives the apply-addons errand something to apply (the master updates: its
    // control plane restarts while the workers serve).
    let addons = d.write(
        "addons.yml",
        "- type: replace\n  path: /instance_groups/name=master/jobs/name=apply-addons/properties/addons?\n  value: [{apiVersion: v1, kind: Namespace, metadata: {name: from-addons}}]\n",
    );
    let addons = addons.to_str().unwrap();
    let m = d.dir.path().join("kubernetes.yml");
    let deploy_workers = |n: u32| {
        let workers = format!("workers={n}");
        d.ok(&[
            "-n",
            "-d",
            "kubernetes",
            "deploy",
            m.to_str().unwrap(),
            "-o",
            workers_ops,
            "-v",
            &workers,
            "-o",
            addons,
        ]);
    };
    let started = Instant::now();
    deploy_workers(3);
    eventually("3 Ready nodes", Duration::from_secs(120), || {
        let n = k.nodes();
        (n.len() == 3 && n.iter().all(|(_, r)| *r)).then_some(())
    });
    println!("scale 2 → 3: the new node Ready {:.0} s after the deploy began", started.elapsed().as_secs_f64());
    let out = d.ok(&["-d", "kubernetes", "run-errand", "smoke-tests"]);
    assert!(out.contains("smoke test passed: 3 replicas on 3 nodes"), "{out}");
    let out = d.ok(&["-d", "kubernetes", "run-errand", "apply-addons"]);
    assert!(out.contains("namespace/from-addons created"), "{out}");
    k.ok(&["get", "namespace", "from-addons"]);
    let third = c.workers()[2].clone();
    c.web_on(&third.1);
    let started = Instant::now();
    deploy_workers(2);
    println!("scale 3 → 2: {:.0} s (drain included)", started.elapsed().as_secs_f64());
    let nodes = k.nodes();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(!nodes.iter().any(|(n, _)| n == &third.1), "the removed node {} was deleted: {nodes:?}", third.1);
    let pods = k.ready_pods("web", "web");
    assert!(pods.len() == 4 && pods.iter().all(|(_, n)| n != &third.1), "web pods rescheduled: {pods:?}");
    let out = d.ok(&["-d", "kubernetes", "run-errand", "smoke-tests"]);
    assert!(out.contains("smoke test passed: 2 replicas on 2 nodes"), "{out}");
    let (total, failed) = probe.finish();
    println!("requests through the NodePort during 2 → 3 → 2: {total} total, {} failed", failed.len());
    assert!(failed.is_empty(), "failed requests: {failed:?}");

    // Three masters plan: etcd and the control plane on each, the serving certificate names them.
    let three = std::fs::read_to_string(repo().join("manifests/ops/three-masters.yml")).unwrap();
    let three = d.write("three-masters.yml", &three.replace("10.245.0.", "10.245.62."));
    let plan = d.ok(&["-d", "kubernetes", "deploy", m.to_str().unwrap(), "-o", three.to_str().unwrap(), "--dry-run"]);
    let new_masters = plan.lines().filter(|l| l.starts_with("+ master/(new")).count();
    assert_eq!(new_masters, 2, "two more masters: {plan}");

    // Deleting the deployment leaves nothing of it on the host.
    let mut cids: Vec<String> =
        d.instances("kubernetes").into_iter().filter_map(|i| i["vm_cid"].as_str().map(str::to_string)).collect();
    cids.extend([a.2.clone(), third.2.clone()]);
    d.ok(&["-n", "-d", "kubernetes", "delete-deployment"]);
    let left = leftovers(d, &cids);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// `ci/bench-k8s`: the two failover times over several trials (BENCH_TRIALS, default 5), each
/// killing one of the two workers in turn, beside Kubernetes' own and Kubo's timings.
#[test]
#[ignore = "a benchmark: ci/bench-k8s runs it"]
fn bench_worker_failover() {
    let trials: usize = std::env::var("BENCH_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(5);
    let c = deploy_cluster();
    let web = c.d.write("web.yml", WEB);
    c.k.ok(&["apply", "-f", web.to_str().unwrap()]);
    let (mut moved, mut back) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        let victim = c.workers()[trial % 2].clone();
        c.web_on(&victim.1);
        let (m, b) = c.kill_worker(&victim);
        println!(
            "trial {}: pods elsewhere {:.1} s, node Ready again {:.1} s",
            trial + 1,
            m.as_secs_f64(),
            b.as_secs_f64()
        );
        moved.push(m.as_secs_f64());
        back.push(b.as_secs_f64());
        c.settled();
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (m0, m1, m2) = stats(&mut moved);
    let (b0, b1, b2) = stats(&mut back);
    println!("\nworker VM killed (SIGKILL of every process, containers too), {trials} trials:");
    println!("{:<44} {:>7} {:>7} {:>7}   for comparison", "", "min", "median", "max");
    println!(
        "{:<44} {m0:>6.1}s {m1:>6.1}s {m2:>6.1}s   Kubernetes defaults: 40 s NotReady + 300 s eviction = 340 s",
        "death → its 4 pods Ready on the other worker"
    );
    println!("{:<44} {b0:>6.1}s {b1:>6.1}s {b2:>6.1}s   Kubo on BOSH: ~180 s", "death → the same node Ready again");
    c.d.ok(&["-n", "-d", "kubernetes", "delete-deployment"]);
}
