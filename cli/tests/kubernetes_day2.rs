//! Kubernetes day 2 on a live cluster of three masters (etcd and the control plane on each) and
//! three workers, with clients measuring every request the whole time: a ConfigMap written
//! through the masters' balancer every 200 ms, and a Service requested every 100 ms through an
//! external load balancer over the workers (kept the way Kubernetes' service controller keeps
//! cloud balancers). One cluster, four scenarios in order, each printing its counts and times:
//!
//! 1. three masters: the master holding the controller-manager's lease is killed (every process
//!    of its VM); the API stays available, another master takes the lease, the VM comes back;
//! 2. a rolling stemcell upgrade (local/1 → local/1.1, canaries 1, max_in_flight 1): every VM
//!    recreated, disks, instance ids and node names kept, every node on the new stemcell (the
//!    release compiled for local/1 exported and uploaded back while scenario 1 runs, so nothing
//!    compiles);
//! 3. a canary failure (a kubelet configuration the kubelet refuses) stops the update after the
//!    canary with its node cordoned and the kubelet's reason in the task; deploying the previous
//!    manifest rolls it back;
//! 4. a rolling Kubernetes upgrade to a new kubo release version: etcd 3.4.23 → 3.5.16 (Debian
//!    trixie's packages) and Kubernetes rebuilt as v1.20.2+bosun.1, masters before workers.
//!
//! Zero failed Service requests and API writes through 2–4; every acknowledged write readable.

mod common;
mod kube;

use common::*;
use kube::api::{ApiClient, ApiWriter, Masters, Report, ServiceClient};
use kube::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 10.245.69.0/24 on bridge bosun-k8s69; compilation on 127.0.69.x.
const SITE: Site = Site(69);

/// The next kubo release version, made from the repository's the way a release author would:
/// etcd's packages from Debian trixie (3.5.16) instead of bookworm (3.4.23), and Kubernetes
/// built again from the same source as version v1.20.2+bosun.1.
/// Returns the release directory (for the caller to remove) and the tarball in it.
fn next_kubo_release(version: &str) -> (PathBuf, PathBuf) {
    let src = repo().join("releases/kubo");
    let dir = tempfile::Builder::new().prefix("kubo-next-").tempdir_in(repo().join("target")).unwrap().keep();
    let o = Command::new("cp")
        .args(["-r", "config", "jobs", "packages", "src"])
        .arg(&dir)
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "copying the release: {}", String::from_utf8_lossy(&o.stderr));
    let blobs_path = dir.join("config/blobs.yml");
    let mut blobs: serde_yaml::Mapping = serde_yaml::from_str(&std::fs::read_to_string(&blobs_path).unwrap()).unwrap();
    blobs.retain(|k, _| !k.as_str().unwrap_or("").starts_with("etcd/"));
    let etcd_35: serde_yaml::Mapping = serde_yaml::from_str(
        r#"
etcd/etcd-server_3.5.16-4_amd64.deb:
  size: 11302964
  sha: sha256:0875921bb0d023f2af9b8e15cdfbe417a03e65731345fb832c40f9c2dd72967b
  source: {debian: {package: etcd-server, version: 3.5.16-4, suite: trixie}}
etcd/etcd-client_3.5.16-4_amd64.deb:
  size: 5371528
  sha: sha256:7eb67e305ba2ce523a5a0b29bf88750ded3f724769c7111a83382b7909f9977b
  source: {debian: {package: etcd-client, version: 3.5.16-4, suite: trixie}}
"#,
    )
    .unwrap();
    blobs.extend(etcd_35);
    std::fs::write(&blobs_path, serde_yaml::to_string(&blobs).unwrap()).unwrap();
    // The version the binaries report is the packaging's version file's.
    let packaging = dir.join("packages/kubernetes/packaging");
    let text = std::fs::read_to_string(&packaging).unwrap();
    let (old, new) = ("KUBE_GIT_VERSION='v1.20.2'\n", "KUBE_GIT_VERSION='v1.20.2+bosun.1'\n");
    assert!(text.contains(old), "the kubernetes packaging writes the version file");
    std::fs::write(&packaging, text.replace(old, new)).unwrap();
    let o = Command::new(bosun_bin()).arg("sync-blobs").arg(&dir).output().unwrap();
    assert!(o.status.success(), "sync-blobs: {}", String::from_utf8_lossy(&o.stderr));
    let tarball = dir.join("kubo-next.tgz");
    let o = Command::new(bosun_bin())
        .args(["create-release", dir.to_str().unwrap(), "--version", version, "--tarball", tarball.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "create-release: {}", String::from_utf8_lossy(&o.stderr));
    (dir, tarball)
}

/// The cluster as the scenarios see it: instance id → (VM cid, persistent disk cids).
fn vms_and_disks(c: &Cluster) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    c.d.instances("kubernetes")
        .into_iter()
        .map(|i| {
            let disks =
                i["disk_cids"].as_array().into_iter().flatten().filter_map(|d| d.as_str().map(String::from)).collect();
            (i["id"].as_str().unwrap().to_string(), (i["vm_cid"].as_str().unwrap_or("").to_string(), disks))
        })
        .collect()
}

/// Both clients, started together, stopped together.
struct Load {
    writer: ApiWriter,
    service: ServiceClient,
    masters: Arc<Masters>,
}

impl Load {
    fn start(masters: &Arc<Masters>, namespace: &str) -> Self {
        Load {
            writer: ApiWriter::start(masters.clone(), namespace),
            service: ServiceClient::start(masters.clone(), 30080),
            masters: masters.clone(),
        }
    }

    fn finish(self, what: &str, took: Duration) -> (Report, Report) {
        let service = self.service.finish();
        let writes = self.writer.finish(&self.masters);
        println!("[{what}] {:.0} s", took.as_secs_f64());
        println!("[{what}] Service requests every 100 ms: {service}");
        println!("[{what}] API writes every 200 ms: {writes}");
        for r in &writes.retried {
            println!("[{what}]   retried: {r}");
        }
        (service, writes)
    }
}

/// Which master's `component` holds its lease: the one whose log says it acquired it last (klog
/// lines start with the date and time: `I1130 10:55:01.123456`).
fn lease_holder(c: &Cluster, component: &str) -> Option<(String, String)> {
    let needle = format!("successfully acquired lease kube-system/{component}");
    c.group("master")
        .into_iter()
        .filter_map(|(name, _, vm)| {
            let log =
                c.d.cpi_base()
                    .join("vms")
                    .join(&vm)
                    .join(format!("root/data/sys/log/{component}/{component}.stderr.log"));
            let text = std::fs::read_to_string(log).ok()?;
            let line = text.lines().rfind(|l| l.contains(&needle))?;
            let when: String = line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            Some((when, name, vm))
        })
        .max()
        .map(|(_, name, vm)| (name, vm))
}

/// Each instance's update time from a deploy's closing lines (where a roll's time goes).
fn print_durations(tag: &str, deploy_output: &str) {
    let lines = deploy_output.lines().skip_while(|l| !l.starts_with("Durations:")).skip(1);
    for l in lines.take_while(|l| l.starts_with("  ")) {
        println!("[{tag}] {}", l.trim());
    }
}

fn lease_identity(masters: &Masters, component: &str) -> Option<String> {
    let lease = masters.get_json(&format!("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{component}"))?;
    lease["spec"]["holderIdentity"].as_str().map(String::from)
}

fn scenario_three_masters(c: &Cluster, masters: &Arc<Masters>) {
    // Every worker reaches the API through its own proxy over all three masters.
    for (name, _, vm) in c.workers() {
        let root = c.d.cpi_base().join("vms").join(&vm).join("root/jobs");
        for file in ["kube-proxy/config/kube-proxy.kubeconfig", "kubelet/config/bootstrap.kubeconfig"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            assert!(text.contains("server: \"https://127.0.0.1:6443\""), "{name} {file}: {text}");
        }
        let proxy = std::fs::read_to_string(root.join("apiserver-proxy/bin/apiserver-proxy")).unwrap();
        for ip in [SITE.ip(10), SITE.ip(11), SITE.ip(12)] {
            assert!(proxy.contains(&format!("'{ip}:6443'")), "{name}'s proxy names master {ip}: {proxy}");
        }
    }
    let (victim, vm) = eventually("a controller-manager leader", Duration::from_secs(60), || {
        lease_holder(c, "kube-controller-manager")
    });
    let identity = lease_identity(masters, "kube-controller-manager").expect("the lease");
    let scheduler = lease_identity(masters, "kube-scheduler").expect("the scheduler's lease");
    let writer = ApiWriter::start(masters.clone(), "master-kill");
    let nodes_before: Vec<String> = c.k.nodes().into_iter().filter(|(_, r)| *r).map(|(n, _)| n).collect();
    // Writes acknowledged before the kill, for the gap to count from.
    eventually("10 writes before the kill", Duration::from_secs(60), || (writer.acknowledged() >= 10).then_some(()));
    let killed = bosun_cpi_local::kill_vm_processes(&vm, Duration::from_secs(30)).unwrap();
    let died = Instant::now();
    println!("[three masters] killed {victim} (VM {vm}, controller-manager leader): {killed} processes");
    let elected = eventually("another controller-manager leader", Duration::from_secs(120), || {
        lease_identity(masters, "kube-controller-manager").filter(|i| *i != identity).map(|_| died.elapsed())
    });
    let scheduler_after = lease_identity(masters, "kube-scheduler");
    let back = eventually("the master's VM back", Duration::from_secs(300), || {
        let now = c.group("master").into_iter().find(|(n, _, _)| *n == victim)?;
        (now.2 != vm).then_some(())?;
        let running = c.d.instances("kubernetes").iter().all(|i| i["state"] == "running");
        running.then(|| died.elapsed())
    });
    // And after it came back.
    let so_far = writer.acknowledged();
    eventually("10 writes after the return", Duration::from_secs(60), || {
        (writer.acknowledged() >= so_far + 10).then_some(())
    });
    let writes = writer.finish(masters);
    println!("[three masters] API writes every 200 ms while one master died and came back: {writes}");
    for f in writes.failed.iter().chain(&writes.retried) {
        println!("[three masters]   {f}");
    }
    println!(
        "[three masters] a new controller-manager leader {:.1} s after the death (lease duration 15 s); the scheduler's lease {}",
        elected.as_secs_f64(),
        if scheduler_after.as_deref() == Some(scheduler.as_str()) { "stayed where it was" } else { "moved too" }
    );
    println!("[three masters] the master's VM resurrected and running after {:.1} s", back.as_secs_f64());
    assert!(
        writes.longest_gap < Duration::from_secs(15),
        "the API was unavailable longer than the leader-election lease: {writes}"
    );
    // The nodes stayed Ready throughout (their kubelets moved to the other masters).
    let nodes_after: Vec<String> = c.k.nodes().into_iter().filter(|(_, r)| *r).map(|(n, _)| n).collect();
    assert_eq!(nodes_before, nodes_after);
    c.settled();
    let etcd = eventually("three healthy etcd members", Duration::from_secs(120), || {
        let members = etcd_members(&SITE.ip(10))?;
        (members.len() == 3).then_some(members.len())
    });
    println!("[three masters] etcd members afterwards: {etcd}");
}

/// The kubo release as compiled for local/1 serves local/1.1 (one stemcell line, as BOSH's
/// compiled releases do): exported and uploaded back, so the stemcell upgrade compiles nothing.
/// Neither takes the deployment's lock: it runs beside the first scenario.
fn export_compiled_release(c: &Cluster, kubo_version: &str) -> Duration {
    let out = c.d.dir.path().join("compiled");
    std::fs::create_dir_all(&out).unwrap();
    let started = Instant::now();
    let tarball =
        c.d.ok(&["export-release", &format!("kubo/{kubo_version}"), "local/1", "--dir", out.to_str().unwrap()]);
    c.d.ok(&["upload-release", tarball.trim()]);
    std::fs::remove_file(tarball.trim()).unwrap();
    started.elapsed()
}

fn scenario_stemcell_upgrade(c: &Cluster, masters: &Arc<Masters>) {
    c.d.ok(&["upload-stemcell", stemcell("1.1").to_str().unwrap()]);
    let plan = c.d.json(&c.deploy_args(&["--dry-run"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(plan["compilations"], serde_json::json!([]), "nothing to compile: {plan}");

    let before = vms_and_disks(c);
    let nodes_before: Vec<String> = c.k.nodes().into_iter().map(|(n, _)| n).collect();
    let load = Load::start(masters, "stemcell-upgrade");
    let started = Instant::now();
    let out = c.deploy(&[]);
    let (service, writes) = load.finish("stemcell 1 → 1.1", started.elapsed());
    print_durations("stemcell", &out);
    let after = vms_and_disks(c);
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "the same instances");
    for (id, (vm, disks)) in &after {
        assert_ne!(vm, &before[id].0, "instance {id}'s VM was recreated");
        assert_eq!(disks, &before[id].1, "instance {id} kept its disks");
    }
    let nodes: Vec<String> = c.k.nodes().into_iter().map(|(n, _)| n).collect();
    assert_eq!(nodes, nodes_before, "the same node names");
    let labels = c.k.ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.labels.bosun\\.io/stemcell-version} {end}",
    ]);
    assert_eq!(labels.split_whitespace().collect::<Vec<_>>(), vec!["1.1"; 3], "every node on the new stemcell");
    println!("[stemcell] {} VMs recreated, disks and node names kept, every node reports stemcell 1.1", after.len());
    assert!(service.failed.is_empty(), "failed Service requests: {:?}", service.failed);
    assert!(writes.failed.is_empty(), "failed API writes: {:?}", writes.failed);
}

fn scenario_kubernetes_upgrade(c: &Cluster, masters: &Arc<Masters>) {
    let started = Instant::now();
    let (dir, tarball) = next_kubo_release("2.0.0");
    c.d.ok(&["upload-release", tarball.to_str().unwrap()]);
    std::fs::remove_dir_all(dir).unwrap();
    println!("[kubernetes] release kubo/2.0.0 made and uploaded in {:.0} s", started.elapsed().as_secs_f64());
    let next = c.d.write("kubo-next.yml", "- type: replace\n  path: /releases/name=kubo/version\n  value: 2.0.0\n");
    let next = next.to_str().unwrap();
    // Masters before workers (Kubernetes' version skew policy): the plan's order.
    let plan = c.d.ok(&c.deploy_args(&["-o", next, "--dry-run"]).iter().map(String::as_str).collect::<Vec<_>>());
    let order: Vec<&str> = plan
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).filter(|w| w.starts_with("master/") || w.starts_with("worker/")))
        .collect();
    println!("[kubernetes] the plan updates, in order: {}", order.join(", "));
    for l in plan.lines().filter(|l| l.contains("batch ") || l.starts_with("Instance group")) {
        println!("[kubernetes] plan: {}", l.trim());
    }
    let last_master = order.iter().rposition(|i| i.starts_with("master/")).expect("masters in the plan");
    let first_worker = order.iter().position(|i| i.starts_with("worker/")).expect("workers in the plan");
    assert!(last_master < first_worker, "masters first: {plan}");
    // The deploy compiles the new Kubernetes first (once per stemcell: the compiled-package cache
    // keeps it), then updates the instances.
    let started = Instant::now();
    let load = Load::start(masters, "kubernetes-upgrade");
    let out = c.deploy(&["-o", next]);
    let (service, writes) = load.finish("kubo 2.0.0: etcd 3.5, Kubernetes v1.20.2+bosun.1", started.elapsed());
    print_durations("kubernetes", &out);
    let versions = c.k.ok(&["get", "nodes", "-o", "jsonpath={range .items[*]}{.status.nodeInfo.kubeletVersion} {end}"]);
    assert_eq!(versions.split_whitespace().collect::<Vec<_>>(), vec!["v1.20.2+bosun.1"; 3], "every kubelet");
    let server = masters.get_json("/version").expect("/version");
    assert_eq!(server["gitVersion"], "v1.20.2+bosun.1", "{server}");
    for m in 10..13 {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "5", &format!("http://{}:2379/version", SITE.ip(m))])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        assert_eq!(v["etcdserver"], "3.5.16", "etcd on master {m}: {v}");
        assert_eq!(v["etcdcluster"], "3.5.0", "the cluster version rose once every member ran 3.5: {v}");
    }
    println!(
        "[kubernetes] every kubelet and apiserver v1.20.2+bosun.1; etcd 3.5.16 on 3 members, cluster version 3.5.0"
    );
    assert!(service.failed.is_empty(), "failed Service requests: {:?}", service.failed);
    assert!(writes.failed.is_empty(), "failed API writes: {:?}", writes.failed);
}

fn scenario_canary_failure(c: &Cluster, masters: &Arc<Masters>, previous: &[&str]) {
    let broken = c.d.write(
        "broken-kubelet.yml",
        "- type: replace\n  path: /instance_groups/name=worker/jobs/name=kubelet/properties/kubelet_configuration?\n  value: {imageGCHighThresholdPercent: 150}\n",
    );
    let mut args = previous.to_vec();
    args.extend(["-o", broken.to_str().unwrap()]);
    let before = vms_and_disks(c);
    let load = Load::start(masters, "canary-failure");
    let started = Instant::now();
    let args_full = c.deploy_args(&args);
    let o = c.d.run(&args_full.iter().map(String::as_str).collect::<Vec<_>>());
    // The task's output (stdout) and the error (stderr) together: where the reason shows.
    let err = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "the deploy fails: {err}");
    let failed_after = started.elapsed();
    // The kubelet's own words: "invalid configuration: imageGCHighThresholdPercent
    // (--image-gc-high-threshold) 150 must be between 0 and 100, inclusive".
    let reason = err.lines().find(|l| l.contains("imageGCHighThresholdPercent") && l.contains("must be between"));
    let reason = reason.unwrap_or_else(|| panic!("the kubelet's reason is in the task: {err}")).trim().to_string();
    println!("[canary] the deploy failed after {:.0} s: {reason}", failed_after.as_secs_f64());
    // Only the canary changed: one worker has the new configuration, cordoned and out of the
    // balancer; the others are as they were.
    let workers = c.workers();
    let with_new: Vec<&(String, String, String)> = workers
        .iter()
        .filter(|(_, _, vm)| {
            let config = c.d.cpi_base().join("vms").join(vm).join("root/jobs/kubelet/config/kubelet-config.yml");
            std::fs::read_to_string(config).unwrap_or_default().contains("150")
        })
        .collect();
    assert_eq!(with_new.len(), 1, "only the canary was updated: {with_new:?}");
    let canary = &with_new[0].1;
    let node = c.k.json(&["get", "node", canary]).expect("the canary's node");
    assert_eq!(node["spec"]["unschedulable"], true, "the canary's node is cordoned: {node}");
    println!("[canary] {canary} cordoned; the other {} workers untouched", workers.len() - 1);
    assert_eq!(vms_and_disks(c).len(), before.len());

    let started = Instant::now();
    let back: Vec<&str> = previous.to_vec();
    c.deploy(&back);
    let rolled_back = started.elapsed();
    eventually("the canary's node schedulable and Ready", Duration::from_secs(120), || {
        let n = c.k.json(&["get", "node", canary])?;
        (n["spec"]["unschedulable"] != true).then_some(())
    });
    let (service, writes) = load.finish("canary failure and rollback", failed_after + rolled_back);
    println!("[canary] rollback (deploy of the previous manifest): {:.0} s", rolled_back.as_secs_f64());
    assert!(c.k.nodes().iter().all(|(_, ready)| *ready), "every node Ready after the rollback");
    assert!(service.failed.is_empty(), "failed Service requests: {:?}", service.failed);
    assert!(writes.failed.is_empty(), "failed API writes: {:?}", writes.failed);
}

#[test]
fn kubernetes_day_2_master_loss_stemcell_and_kubernetes_upgrades_canary_failure_with_zero_failed_requests() {
    let mut c =
        deploy_cluster(SITE, &["manifests/ops/three-masters.yml", "manifests/ops/workers.yml"], &["workers=3"], 6, 3);
    let kubeconfig = std::fs::read_to_string(&c.k.kubeconfig).unwrap();
    let masters = Masters::start(ApiClient::from_kubeconfig(&kubeconfig), vec![SITE.ip(10), SITE.ip(11), SITE.ip(12)]);
    c.k.server = Some(masters.clone());
    // Six web pods over the three workers, behind NodePort 30080.
    // Six replicas tolerate two away at a time: a drain evicts a worker's two pods at once.
    let web = c
        .d
        .write("web.yml", &WEB.replace("replicas: 4", "replicas: 6").replace("maxUnavailable: 1", "maxUnavailable: 2"));
    c.k.ok(&["apply", "-f", web.to_str().unwrap()]);
    eventually("6 web pods on 3 nodes", Duration::from_secs(180), || {
        let pods = c.k.ready_pods("web", "web");
        let nodes: std::collections::BTreeSet<&String> = pods.iter().map(|(_, n)| n).collect();
        (pods.len() == 6 && nodes.len() == 3).then_some(())
    });
    let kubo_version = c.d.json(&["releases"])[0]["version"].as_str().unwrap().to_string();

    let exported = std::thread::scope(|s| {
        let export = s.spawn(|| export_compiled_release(&c, &kubo_version));
        scenario_three_masters(&c, &masters);
        export.join().expect("the export")
    });
    println!(
        "[stemcell] compiled release exported and uploaded in {:.0} s (beside the master's loss)",
        exported.as_secs_f64()
    );
    scenario_stemcell_upgrade(&c, &masters);
    scenario_canary_failure(&c, &masters, &[]);
    scenario_kubernetes_upgrade(&c, &masters);

    let cids: Vec<String> = vms_and_disks(&c).into_values().map(|(vm, _)| vm).collect();
    c.k.server = None;
    drop(masters);
    c.d.ok(&["-n", "-d", "kubernetes", "delete-deployment"]);
    let left = leftovers(&c.d, &cids, &SITE.bridge());
    assert!(left.is_empty(), "left behind: {left:#?}");
}
