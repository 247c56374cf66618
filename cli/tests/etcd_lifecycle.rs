//! Day-2 operations on a real etcd cluster through real agents on the local CPI, with a client
//! writing a key every 50 ms throughout: a rolling stemcell upgrade and a persistent disk resize
//! (127.0.40.0/24), scaling 3 → 5 → 3 with etcd's membership following (127.0.41.0/24), and
//! BOSH's three-step rotation of the peer CA (127.0.77.0/24).

mod common;

use common::*;
use std::time::Duration;

fn etcd_manifest(name: &str, instances: u32, static_ips: Option<&str>, disk: &str) -> String {
    let statics = static_ips.map(|r| format!("\n    static_ips: [{r}]")).unwrap_or_default();
    format!(
        r#"name: {name}
releases: [{{name: kubo, version: latest}}]
stemcells: [{{alias: default, os: local, version: latest}}]
update:
  canaries: 1
  max_in_flight: 1
  canary_watch_time: 1000-60000
  update_watch_time: 1000-60000
instance_groups:
- name: etcd
  azs: [z1, z2, z3]
  instances: {instances}
  vm_type: default
  stemcell: default
  {disk}
  networks:
  - name: default{statics}
  jobs:
  - name: etcd
    release: kubo
"#
    )
}

fn ips(list: &[serde_json::Value]) -> Vec<String> {
    list.iter().map(|i| i["ips"][0].as_str().unwrap().to_string()).collect()
}

fn ids(list: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

/// Waits until every listed member answers with the same `n` started members; their names.
fn members(ips: &[String], n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for ip in ips {
        let m = eventually(&format!("etcd on {ip} to list {n} started members"), Duration::from_secs(60), || {
            etcd_members(ip)
                .filter(|m| m.len() == n && m.iter().all(|(name, urls)| !name.is_empty() && !urls.is_empty()))
        });
        let mut here: Vec<String> = m.into_iter().map(|(name, _)| name).collect();
        here.sort();
        if names.is_empty() {
            names = here;
        } else {
            assert_eq!(names, here, "members agree on the member list");
        }
    }
    names
}

#[test]
fn rolling_stemcell_upgrade_and_disk_resize_lose_no_write() {
    let d = TestDirector::start();
    d.prepare(&d.write("cloud.yml", &local_cloud_config(40)));
    let statics = Some("127.0.40.10 - 127.0.40.12");
    let m = d.write("etcd.yml", &etcd_manifest("rolling", 3, statics, "persistent_disk_type: default"));
    d.ok(&["-n", "-d", "rolling", "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running("rolling", 3));
    let addresses = ips(&before);
    let names = members(&addresses, 3);
    assert_eq!(names, ids(&before), "members are named by instance id");

    let endpoints: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let writer = EtcdWriter::start(&endpoints);

    // Stemcell 2: every VM is recreated, one at a time, the canary first, disks re-attached.
    d.ok(&["upload-stemcell", stemcell("2").to_str().unwrap()]);
    let plan = d.ok(&["-d", "rolling", "deploy", m.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan.matches("recreate: stemcell bosun-local/1 → bosun-local/2").count(), 3, "{plan}");
    assert!(plan.contains("batch 1 (canary), az z1") && plan.contains("batch 3, az z3"), "{plan}");
    let out = d.ok(&["-n", "-d", "rolling", "deploy", m.to_str().unwrap()]);
    assert!(out.contains("3 instances changed"), "{out}");
    let upgraded = by_index(&d.running("rolling", 3));
    for (b, a) in before.iter().zip(&upgraded) {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["ips"], b["ips"]);
        assert_ne!(a["vm_cid"], b["vm_cid"], "a new VM");
        assert_eq!(a["disk_cids"], b["disk_cids"], "the same persistent disk");
        assert_eq!(a["stemcell"], serde_json::json!({"name": "bosun-local", "version": "2"}), "the agent reports it");
    }
    assert_eq!(members(&addresses, 3), names, "the same three members");

    // A bigger disk: each member's data is copied to a new disk; the old ones become orphans.
    let bigger = d.write("bigger.yml", &etcd_manifest("rolling", 3, statics, "persistent_disk: 2048"));
    let plan = d.ok(&["-d", "rolling", "deploy", bigger.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan.matches("update: persistent disk 1024 → 2048 MiB: migrate").count(), 3, "{plan}");
    d.ok(&["-n", "-d", "rolling", "deploy", bigger.to_str().unwrap()]);
    let resized = by_index(&d.running("rolling", 3));
    let orphans = d.json(&["disks", "--orphaned"]);
    for (b, a) in upgraded.iter().zip(&resized) {
        assert_eq!(a["vm_cid"], b["vm_cid"], "a disk migration keeps the VM");
        assert_ne!(a["disk_cids"], b["disk_cids"], "a new disk");
        let old = &b["disk_cids"][0];
        assert!(
            orphans
                .as_array()
                .unwrap()
                .iter()
                .any(|o| &o["disk_cid"] == old && o["reason"] == "replaced by a disk migration"),
            "{orphans}"
        );
    }
    let report = writer.finish();
    assert!(report.written.len() > 40, "the client wrote throughout ({} writes)", report.written.len());
    report.assert_nothing_lost(&addresses[0]);
    assert_eq!(members(&addresses, 3), names, "still the same three members");

    // An orphaned disk can be deleted at once; one in use cannot.
    let orphan = orphans[0]["disk_cid"].as_str().unwrap().to_string();
    d.ok(&["-n", "delete-disk", &orphan]);
    assert!(!d.cpi_base().join("disks").join(&orphan).exists());
    let in_use = resized[0]["disk_cids"][0].as_str().unwrap();
    let err = d.fails(2, &["-n", "delete-disk", in_use]);
    assert!(err.contains("is the persistent disk of etcd/"), "{err}");
}

#[test]
fn scaling_out_and_in_adds_and_removes_etcd_members() {
    let d = TestDirector::start();
    d.prepare(&d.write("cloud.yml", &local_cloud_config(41)));
    let three = d.write("three.yml", &etcd_manifest("scale", 3, None, "persistent_disk: 256"));
    d.ok(&["-n", "-d", "scale", "deploy", three.to_str().unwrap()]);
    let first = by_index(&d.running("scale", 3));
    let endpoints = ips(&first);
    assert_eq!(members(&endpoints, 3), ids(&first));
    assert!(etcd_put(&endpoints[0], "a2VlcA==", "MQ=="), "a write before scaling");

    let five = d.write("five.yml", &etcd_manifest("scale", 5, None, "persistent_disk: 256"));
    let plan = d.ok(&["-d", "scale", "deploy", five.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan.matches("create: new instance").count(), 2, "{plan}");
    d.ok(&["-n", "-d", "scale", "deploy", five.to_str().unwrap()]);
    let grown = by_index(&d.running("scale", 5));
    assert_eq!(members(&ips(&grown), 5), ids(&grown), "the new instances joined the cluster");
    for k in 0..3 {
        assert_eq!(grown[k]["vm_cid"], first[k]["vm_cid"], "existing members kept their VMs");
    }

    let plan = d.ok(&["-d", "scale", "deploy", three.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan.matches("delete: no longer in the manifest").count(), 2, "{plan}");
    d.ok(&["-n", "-d", "scale", "deploy", three.to_str().unwrap()]);
    let shrunk = by_index(&d.running("scale", 3));
    assert_eq!(ids(&shrunk), ids(&first), "the highest indexes went; the first three stayed");
    assert_eq!(members(&ips(&shrunk), 3), ids(&shrunk), "the removed members left the cluster");
    assert_eq!(etcd_get(&endpoints[0], "a2VlcA==").flatten().as_deref(), Some("MQ=="));
    let orphans = d.json(&["disks", "--orphaned"]);
    let orphaned_from: Vec<&str> =
        orphans.as_array().unwrap().iter().map(|o| o["instance"].as_str().unwrap()).collect();
    for gone in &grown[3..] {
        assert!(orphaned_from.contains(&gone["instance"].as_str().unwrap()), "{orphans}");
    }
}

/// An etcd cluster whose members talk over TLS, at one step of BOSH's three-step CA rotation: 0 the
/// old CA alone; 1 a new CA generated and trusted beside the old one; 2 the peer certificate
/// reissued by the new CA (its definition names another CA: `converge` makes it anew); 3 the old
/// CA no longer trusted. (The VMs share this machine's network namespace, so a member dials its
/// peers from 127.0.0.1, which etcd checks against the peer certificate too.)
fn rotation_manifest(step: u8) -> String {
    let (issuer, trusted) = match step {
        0 => ("etcd_ca", "((etcd_ca.certificate))"),
        1 => ("etcd_ca", "((etcd_ca.certificate))\n            ((etcd_ca_2.certificate))"),
        2 => ("etcd_ca_2", "((etcd_ca.certificate))\n            ((etcd_ca_2.certificate))"),
        _ => ("etcd_ca_2", "((etcd_ca_2.certificate))"),
    };
    let old_ca = "- name: etcd_ca\n  type: certificate\n  options: {is_ca: true, common_name: etcd-ca}\n";
    let new_ca = "- name: etcd_ca_2\n  type: certificate\n  options: {is_ca: true, common_name: etcd-ca-2}\n";
    let cas = match step {
        0 => old_ca.to_string(),
        1 | 2 => format!("{old_ca}{new_ca}"),
        _ => new_ca.to_string(),
    };
    format!(
        r#"name: rotation
releases: [{{name: kubo, version: latest}}]
stemcells: [{{alias: default, os: local, version: latest}}]
update:
  canaries: 1
  max_in_flight: 1
  canary_watch_time: 1000-60000
  update_watch_time: 1000-60000
instance_groups:
- name: etcd
  azs: [z1, z2, z3]
  instances: 3
  vm_type: default
  stemcell: default
  networks:
  - name: default
    static_ips: [127.0.77.10 - 127.0.77.12]
  jobs:
  - name: etcd
    release: kubo
    properties:
      etcd:
        peer_tls:
          ca: |
            {trusted}
          certificate: ((etcd_peer.certificate))
          private_key: ((etcd_peer.private_key))
variables:
{cas}- name: etcd_peer
  type: certificate
  update_mode: converge
  options:
    ca: {issuer}
    common_name: etcd-peer
    alternative_names: [127.0.77.10, 127.0.77.11, 127.0.77.12, 127.0.0.1]
    extended_key_usage: [server_auth, client_auth]
"#
    )
}

#[test]
fn rotating_the_peer_ca_in_three_deploys_loses_no_write() {
    let d = TestDirector::start();
    d.prepare(&d.write("cloud.yml", &local_cloud_config(77)));
    let deploy = |step: u8| {
        let m = d.write(&format!("rotation-{step}.yml"), &rotation_manifest(step));
        d.ok(&["-n", "-d", "rotation", "deploy", m.to_str().unwrap()])
    };
    deploy(0);
    let instances = by_index(&d.running("rotation", 3));
    let addresses = ips(&instances);
    let names = members(&addresses, 3);
    let config = |file: &str| -> String {
        let vm = d.cpi_base().join("vms").join(instances[0]["vm_cid"].as_str().unwrap());
        std::fs::read_to_string(vm.join("root/jobs/etcd/config").join(file)).unwrap()
    };
    let certs = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
    let (old_trust, old_leaf) = (config("peer-ca.crt"), config("peer.crt"));
    assert_eq!(certs(&old_trust), 1);

    let endpoints: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let writer = EtcdWriter::start(&endpoints);
    let started = std::time::Instant::now();
    deploy(1);
    assert_eq!(certs(&config("peer-ca.crt")), 2, "both CAs trusted");
    assert!(config("peer-ca.crt").contains(old_trust.trim()));
    assert_eq!(config("peer.crt"), old_leaf, "the leaf is still the old CA's");
    deploy(2);
    let new_leaf = config("peer.crt");
    assert_ne!(new_leaf, old_leaf, "the leaf reissued");
    deploy(3);
    let new_trust = config("peer-ca.crt");
    assert_eq!(certs(&new_trust), 1);
    assert!(!new_trust.contains(old_trust.trim()), "the old CA is no longer trusted");
    assert_eq!(config("peer.crt"), new_leaf);
    let report = writer.finish();
    println!("CA rotation: three deploys in {:.1} s", started.elapsed().as_secs_f64());
    assert!(report.written.len() > 40, "the client wrote throughout ({} writes)", report.written.len());
    report.assert_nothing_lost(&addresses[0]);
    assert_eq!(members(&addresses, 3), names, "the same three members, talking over the new CA");
    let vars = d.json(&["-d", "rotation", "variables"]);
    let names: Vec<&str> = vars.as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(names.contains(&"etcd_ca_2") && names.contains(&"etcd_peer"), "{vars}");
}
