//! The foundation, end to end on the embedded defaults: the quickstart manifest deploys three real
//! etcd members through real agents on the local CPI; a property change updates them in place; an
//! unchanged manifest changes nothing; deleting the deployment leaves nothing behind.
//!
//! The cloud-config and manifest are the quickstart's own, moved by an ops-file to 127.0.11.0/24 so
//! the test does not collide with a quickstart an operator left running on 127.0.10.0/24.

mod common;

use common::*;
use std::time::Duration;

fn instances(d: &TestDirector) -> Vec<serde_json::Value> {
    d.json(&["-d", "quickstart", "instances", "--ps"]).as_array().expect("a list").clone()
}

#[test]
fn quickstart_deploys_three_etcd_members_updates_in_place_and_deletes_cleanly() {
    let d = TestDirector::start();
    let cloud = std::fs::read_to_string(repo().join("manifests/cloud-config/local.yml"))
        .unwrap()
        .replace("127.0.10.", "127.0.11.");
    d.prepare(&d.write("cloud.yml", &cloud));
    let ops = d.write(
        "move.yml",
        "- type: replace\n  path: /instance_groups/name=etcd/networks/name=default/static_ips\n  value: [127.0.11.10 - 127.0.11.12]\n",
    );
    let ops = ops.to_str().unwrap();

    // The plan is shown before anything changes, and a dry run changes nothing.
    let plan = d.ok(&["-d", "quickstart", "deploy", "manifests/quickstart.yml", "-o", ops, "--dry-run"]);
    assert_eq!(plan.matches("create: new instance").count(), 3, "{plan}");
    assert_eq!(d.json(&["deployments"]), serde_json::json!([]));

    let out = d.ok(&["-n", "-d", "quickstart", "deploy", "manifests/quickstart.yml", "-o", ops]);
    assert!(out.contains("3 instances changed"), "{out}");

    let ips = ["127.0.11.10", "127.0.11.11", "127.0.11.12"];
    let running = eventually("three running instances", Duration::from_secs(30), || {
        let list = instances(&d);
        (list.len() == 3 && list.iter().all(|i| i["state"] == "running")).then_some(list)
    });
    let mut names: Vec<String> = running.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    names.sort();
    for i in &running {
        assert_eq!(i["stemcell"], serde_json::json!({"name": "bosun-local", "version": "1"}));
        assert_eq!(i["processes"][0]["name"], "etcd");
        assert_eq!(i["processes"][0]["state"], "running");
        assert!(i["instance"].as_str().unwrap().starts_with("etcd/"));
    }
    assert_eq!(running.iter().filter(|i| i["bootstrap"] == true).count(), 1);
    let mut got_ips: Vec<String> = running.iter().map(|i| i["ips"][0].as_str().unwrap().to_string()).collect();
    got_ips.sort();
    assert_eq!(got_ips, ips);

    // etcd's own API, asked on every member: three started members named by instance id.
    for ip in ips {
        let members =
            eventually(&format!("etcd on {ip} to list three started members"), Duration::from_secs(30), || {
                etcd_members(ip).filter(|m| m.len() == 3 && m.iter().all(|(n, urls)| !n.is_empty() && !urls.is_empty()))
            });
        let mut member_names: Vec<String> = members.iter().map(|(n, _)| n.clone()).collect();
        member_names.sort();
        assert_eq!(member_names, names);
    }
    assert!(etcd_put("127.0.11.11", "Zm9v", "YmFy"), "a write through a member succeeds");

    // An unchanged manifest does nothing.
    let vms_before: Vec<String> = running.iter().map(|i| i["vm_cid"].as_str().unwrap().to_string()).collect();
    let again = d.ok(&["-n", "-d", "quickstart", "deploy", "manifests/quickstart.yml", "-o", ops]);
    assert!(again.contains("No changes.") && again.contains("done: no changes"), "{again}");

    // A property change updates in place: same VMs, and the plan names the property.
    let changed = std::fs::read_to_string(repo().join("manifests/quickstart.yml"))
        .unwrap()
        .replace("heartbeat_interval: 100", "heartbeat_interval: 150");
    let changed = d.write("quickstart-changed.yml", &changed);
    let plan = d.ok(&["-d", "quickstart", "deploy", changed.to_str().unwrap(), "-o", ops, "--dry-run"]);
    assert_eq!(plan.matches("update: job `etcd`: property `etcd.heartbeat_interval` changed").count(), 3, "{plan}");
    d.ok(&["-n", "-d", "quickstart", "deploy", changed.to_str().unwrap(), "-o", ops]);
    let after = eventually("three running instances after the update", Duration::from_secs(30), || {
        let list = instances(&d);
        (list.len() == 3 && list.iter().all(|i| i["state"] == "running")).then_some(list)
    });
    let vms_after: Vec<String> = after.iter().map(|i| i["vm_cid"].as_str().unwrap().to_string()).collect();
    assert_eq!(vms_before, vms_after, "an in-place update keeps the VMs");
    eventually("etcd healthy after the update", Duration::from_secs(30), || {
        etcd_members("127.0.11.10").filter(|m| m.len() == 3)
    });
    let manifest = d.ok(&["-d", "quickstart", "manifest"]);
    assert!(manifest.contains("heartbeat_interval: 150"), "{manifest}");

    // Uploads are idempotent.
    let again = d.ok(&["upload-release", kubo_release().to_str().unwrap()]);
    assert!(again.contains("was already uploaded"), "{again}");
    let again = d.ok(&["upload-stemcell", stemcell("1").to_str().unwrap()]);
    assert!(again.contains("was already uploaded"), "{again}");

    // A remembered target serves a shell without the BOSUN_* variables.
    d.ok(&["target"]);
    let mut bare = d.command();
    bare.env_remove("BOSUN_DIRECTOR").env_remove("BOSUN_CA_CERT").env_remove("BOSUN_TOKEN").args([
        "-d",
        "quickstart",
        "instances",
        "--json",
    ]);
    let o = bare.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().len(), 3);

    // Tasks are listed with their outcome.
    let tasks = d.json(&["tasks"]);
    assert!(tasks.as_array().unwrap().iter().all(|t| t["state"] == "done"), "{tasks}");

    // Deleting leaves no agent or etcd process and no VM directory.
    d.ok(&["-n", "-d", "quickstart", "delete-deployment"]);
    assert_eq!(d.json(&["deployments"]), serde_json::json!([]));
    assert!(d.vm_processes().is_empty(), "VM processes left: {:?}", d.vm_processes());
    let vms_left: Vec<_> = std::fs::read_dir(d.cpi_base().join("vms")).unwrap().collect();
    assert!(vms_left.is_empty(), "VM directories left: {vms_left:?}");
    assert!(etcd_members("127.0.11.10").is_none(), "etcd still answers after the deployment was deleted");
}
