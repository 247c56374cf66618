//! The kubo release's Kubernetes packages, compiled through compilation VMs (Go 1.19 and
//! Kubernetes 1.20.2 from Debian's archive), running on an instance VM of the local CPI: the
//! binaries report v1.20.2, and kube-apiserver serves `/healthz` against the deployment's etcd
//! without restarting. Subnet 127.0.62.0/24.
//!
//! Cold, the build takes tens of minutes; the test directors share the compiled-package cache
//! (`/var/cache/bosun/compiled-packages`), so on a machine that built it once it takes seconds.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const MANIFEST: &str = r#"name: k8s
releases: [{name: kubo, version: latest}]
stemcells: [{alias: default, os: local, version: latest}]
update: {canaries: 1, max_in_flight: 1, canary_watch_time: 1000-180000, update_watch_time: 1000-180000}
instance_groups:
- name: master
  azs: [z1]
  instances: 1
  vm_type: default
  stemcell: default
  networks: [{name: default, static_ips: [127.0.62.10]}]
  jobs:
  - {name: etcd, release: kubo}
  - {name: kube-apiserver, release: kubo}
"#;

fn healthz() -> Option<String> {
    let o = Command::new("curl").args(["-sk", "--max-time", "3", "https://127.0.62.10:6443/healthz"]).output().ok()?;
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn the_kubernetes_package_compiles_and_kube_apiserver_serves_against_the_deployments_etcd() {
    let d = TestDirector::start();
    d.prepare(&d.write("cloud.yml", &local_cloud_config(62)));
    let m = d.write("k8s.yml", MANIFEST);
    let started = Instant::now();
    d.ok(&["-n", "-d", "k8s", "deploy", m.to_str().unwrap()]);
    println!("deploy (compilation included): {:.0} s", started.elapsed().as_secs_f64());
    let tasks = d.json(&["tasks"]);
    let task = tasks[0]["id"].as_u64().unwrap().to_string();
    for e in d.json(&["task", &task])["events"].as_array().unwrap() {
        if e["stage"] == "compile" {
            println!("{}", e["message"].as_str().unwrap_or(""));
        }
    }

    let i = d.running("k8s", 1)[0].clone();
    let root = d.cpi_base().join("vms").join(i["vm_cid"].as_str().unwrap()).join("root");
    let bin = root.join("packages/kubernetes/bin");
    let version = |b: &str, args: &[&str]| {
        let o = Command::new(bin.join(b)).args(args).output().unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(o.status.success(), "{b} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(version("kube-apiserver", &["--version"]).trim(), "Kubernetes v1.20.2");
    for b in ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"] {
        assert!(version(b, &["--version"]).contains("v1.20.2"), "{b}");
    }
    // JSON output encodes a map: the vendored reflect2 1.0.1 crashed exactly here with Go ≥ 1.18.
    let client = version("kubectl", &["version", "--client", "-o", "json"]);
    let client: serde_json::Value = serde_json::from_str(&client).expect("kubectl prints JSON");
    assert_eq!(client["clientVersion"]["gitVersion"], "v1.20.2");
    assert!(bin.join("pause").is_file(), "the pause binary is built from the same tree");

    // kube-apiserver serves against etcd, and keeps serving.
    eventually("kube-apiserver /healthz", Duration::from_secs(60), || healthz().filter(|h| h == "ok"));
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(healthz().as_deref(), Some("ok"), "/healthz stays ok");
    }
    let ps = d.json(&["-d", "k8s", "instances", "--ps"]);
    for p in ps[0]["processes"].as_array().unwrap() {
        assert_eq!(p["restarts"], 0, "{p}");
        assert_eq!(p["state"], "running", "{p}");
    }
    d.ok(&["-n", "-d", "k8s", "delete-deployment"]);
}
