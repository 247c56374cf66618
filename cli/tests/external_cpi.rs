//! The quickstart through BOSH's external CPI protocol: `bosun director --cpi external` driving
//! `bosun-cpi local` — one process per CPI call, as a BOSH director runs a CPI — deploys three
//! etcd members with persistent disks, resurrects one whose VM was killed (has_vm, delete_vm,
//! create_vm, attach_disk through the protocol), finds nothing to repair in a cloud check
//! (list_vms, list_disks), and deletes everything.
//!
//! On 127.0.32.0/24.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn the_quickstart_deploys_heals_and_deletes_through_the_external_cpi_protocol() {
    let d = TestDirector::start_external_local(&[]);
    d.prepare(&d.write("cloud.yml", &local_cloud_config(32)));
    let manifest = std::fs::read_to_string(repo().join("manifests/quickstart.yml"))
        .unwrap()
        .replace("127.0.10.10 - 127.0.10.12", "127.0.32.10 - 127.0.32.12")
        .replace("  jobs:\n", "  persistent_disk: 256\n  jobs:\n");
    let m = d.write("quickstart.yml", &manifest);
    let target = d.json(&["target"]);
    assert_eq!(target["cpi"], "external", "the director names its CPI: {target}");

    let started = Instant::now();
    d.ok(&["-n", "-d", "quickstart", "deploy", m.to_str().unwrap()]);
    println!("deploy of 3 etcd members through the external CPI: {:.1} s", started.elapsed().as_secs_f64());
    let before = by_index(&d.running("quickstart", 3));
    let ips = ["127.0.32.10", "127.0.32.11", "127.0.32.12"];
    for ip in ips {
        eventually(&format!("etcd on {ip} to list three members"), Duration::from_secs(60), || {
            etcd_members(ip).filter(|m| m.len() == 3 && m.iter().all(|(n, u)| !n.is_empty() && !u.is_empty()))
        });
    }
    assert!(etcd_put(ips[0], "ZXh0ZXJuYWw=", "b2s="), "a write before the kill");
    for i in &before {
        assert_eq!(i["disk_cids"].as_array().map(Vec::len), Some(1), "a persistent disk each: {i}");
    }

    // A VM killed: the health monitor resurrects it through the protocol, same address and disk.
    let victim = before[1].clone();
    let killed_at = Instant::now();
    assert!(kill_vm(victim["vm_cid"].as_str().unwrap()) > 0, "the VM had processes to kill");
    let back = eventually("the instance running on a new VM", Duration::from_secs(120), || {
        let list = by_index(&d.instances("quickstart"));
        let i = &list[1];
        (i["vm_cid"] != victim["vm_cid"] && i["state"] == "running").then(|| i.clone())
    });
    println!("kill → running again through the external CPI: {:.1} s", killed_at.elapsed().as_secs_f64());
    assert_eq!((&back["id"], &back["ips"], &back["disk_cids"]), (&victim["id"], &victim["ips"], &victim["disk_cids"]));
    for ip in ips {
        eventually(&format!("{ip} to list three members again"), Duration::from_secs(60), || {
            etcd_members(ip).filter(|m| m.len() == 3 && m.iter().all(|(n, u)| !n.is_empty() && !u.is_empty()))
        });
    }
    assert_eq!(etcd_get(ips[1], "ZXh0ZXJuYWw=").flatten().as_deref(), Some("b2s="), "the data survived");

    // The cloud check lists the cloud's VMs and disks through the protocol: nothing to repair.
    let report = d.run(&["-d", "quickstart", "cck", "--report"]);
    assert!(report.status.success(), "nothing to repair: {}", String::from_utf8_lossy(&report.stdout));

    d.ok(&["-n", "-d", "quickstart", "delete-deployment"]);
    assert!(d.vm_processes().is_empty(), "VM processes left: {:?}", d.vm_processes());
    let vms_left: Vec<_> = std::fs::read_dir(d.cpi_base().join("vms")).unwrap().collect();
    assert!(vms_left.is_empty(), "VM directories left: {vms_left:?}");
    let disks = std::fs::read_dir(d.cpi_base().join("disks")).map(|r| r.count()).unwrap_or(0);
    assert_eq!(disks, 0, "persistent disks left");
}
