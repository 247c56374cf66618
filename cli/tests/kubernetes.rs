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
mod kube;

use common::*;
use kube::api::Prober;
use kube::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// 10.245.62.0/24 on bridge bosun-k8s62.
const SITE: Site = Site(62);

#[test]
fn a_kubernetes_cluster_deploys_heals_a_dead_worker_scales_and_leaves_nothing_behind() {
    let c = deploy_cluster(SITE, &[], &[], 3, 2);
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
            .args(["--server", &format!("https://{}:6443", SITE.ip(10)), "--certificate-authority", &ca])
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
    let probe = Prober::start(format!("{first_ip}:30080").parse().unwrap());
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
    let requests = probe.finish();
    println!("requests through the NodePort during 2 → 3 → 2: {requests}");
    assert!(requests.failed.is_empty(), "failed requests: {:?}", requests.failed);

    // Three masters plan: etcd and the control plane on each, the serving certificate names them.
    let three = d.write("three-masters.yml", &SITE.repo_file("manifests/ops/three-masters.yml"));
    let plan = d.ok(&["-d", "kubernetes", "deploy", m.to_str().unwrap(), "-o", three.to_str().unwrap(), "--dry-run"]);
    let new_masters = plan.lines().filter(|l| l.starts_with("+ master/(new")).count();
    assert_eq!(new_masters, 2, "two more masters: {plan}");

    // Deleting the deployment leaves nothing of it on the host.
    let mut cids: Vec<String> =
        d.instances("kubernetes").into_iter().filter_map(|i| i["vm_cid"].as_str().map(str::to_string)).collect();
    cids.extend([a.2.clone(), third.2.clone()]);
    d.ok(&["-n", "-d", "kubernetes", "delete-deployment"]);
    let left = leftovers(d, &cids, &SITE.bridge());
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// `ci/bench-k8s`: the two failover times over several trials (BENCH_TRIALS, default 5), each
/// killing one of the two workers in turn, beside Kubernetes' own and Kubo's timings.
#[test]
#[ignore = "a benchmark: ci/bench-k8s runs it"]
fn bench_worker_failover() {
    let trials: usize = std::env::var("BENCH_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(5);
    let c = deploy_cluster(SITE, &[], &[], 3, 2);
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
