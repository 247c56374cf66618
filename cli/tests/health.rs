//! The health monitor, resurrection, meltdown, cloud check and crash safety, on real agents
//! through the local CPI (heartbeat 500 ms, unresponsive after 3 missed). Each test has its own
//! subnet (127.0.50–54.0/24, 57–58).

mod common;

use common::*;
use std::time::{Duration, Instant};

fn events(d: &TestDirector, dep: &str) -> Vec<serde_json::Value> {
    d.json(&["-d", dep, "events", "--limit", "1000"]).as_array().expect("a list").clone()
}

fn has_event(events: &[serde_json::Value], action: &str, instance: &str) -> bool {
    events.iter().any(|e| e["action"] == action && e["instance"].as_str() == Some(instance))
}

#[test]
fn a_killed_etcd_vm_is_resurrected_with_its_identity_disk_and_data() {
    let d = TestDirector::start();
    d.prepare(&d.write("cloud.yml", &local_cloud_config(50)));
    let manifest = std::fs::read_to_string(repo().join("manifests/quickstart.yml"))
        .unwrap()
        .replace("name: quickstart", "name: resurrect")
        .replace("127.0.10.10 - 127.0.10.12", "127.0.50.10 - 127.0.50.12")
        .replace("  jobs:\n", "  persistent_disk: 256\n  jobs:\n");
    let m = d.write("etcd.yml", &manifest);
    d.ok(&["-n", "-d", "resurrect", "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running("resurrect", 3));
    let victim = before[1].clone();
    eventually("etcd to form", Duration::from_secs(30), || etcd_members("127.0.50.10").filter(|m| m.len() == 3));
    assert!(etcd_put("127.0.50.10", "c3Vydml2ZQ==", "eWVz"), "a write before the kill");

    let killed_at = Instant::now();
    assert!(kill_vm(victim["vm_cid"].as_str().unwrap()) > 0, "the VM had processes to kill");
    let name = victim["instance"].as_str().unwrap();
    let noticed = eventually("the health monitor to notice", Duration::from_secs(30), || {
        has_event(&events(&d, "resurrect"), "missing", name).then(Instant::now)
    });
    let back = eventually("the instance running on a new VM", Duration::from_secs(120), || {
        let list = by_index(&d.instances("resurrect"));
        let i = &list[1];
        (i["vm_cid"] != victim["vm_cid"] && i["state"] == "running").then(|| i.clone())
    });
    println!(
        "kill → noticed: {:.1} s; kill → running: {:.1} s",
        (noticed - killed_at).as_secs_f64(),
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(back["id"], victim["id"]);
    assert_eq!(back["ips"], victim["ips"]);
    assert_eq!(back["disk_cids"], victim["disk_cids"], "the same persistent disk");
    let evs = events(&d, "resurrect");
    let resurrected = evs.iter().find(|e| e["action"] == "resurrect" && e["instance"].as_str() == Some(name));
    assert_eq!(resurrected.map(|e| e["cause"].clone()), Some(serde_json::json!("health monitor")), "{evs:?}");
    for ip in ["127.0.50.10", "127.0.50.11", "127.0.50.12"] {
        eventually(&format!("{ip} to list three members"), Duration::from_secs(60), || {
            etcd_members(ip).filter(|m| m.len() == 3 && m.iter().all(|(n, u)| !n.is_empty() && !u.is_empty()))
        });
    }
    assert_eq!(etcd_get("127.0.50.11", "c3Vydml2ZQ==").flatten().as_deref(), Some("eWVz"), "the data survived");
}

#[test]
fn a_hung_agent_is_fenced_before_its_replacement_starts() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(51)), &testbed_release());
    let m = d.write("s.yml", &sleeper_manifest("hung", 2, "hello", "", "", ""));
    d.ok(&["-n", "-d", "hung", "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running("hung", 2));
    let vm = before[0]["vm_cid"].as_str().unwrap().to_string();
    let agent_pid: i32 =
        std::fs::read_to_string(d.cpi_base().join("vms").join(&vm).join("agent.pid")).unwrap().trim().parse().unwrap();
    let watch = AddressWatch::start(d.cpi_base());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent_pid), nix::sys::signal::Signal::SIGSTOP).unwrap();

    let name = before[0]["instance"].as_str().unwrap();
    eventually("the agent found unresponsive", Duration::from_secs(30), || {
        has_event(&events(&d, "hung"), "unresponsive", name).then_some(())
    });
    let back = eventually("a new VM running the instance", Duration::from_secs(60), || {
        let i = by_index(&d.instances("hung"))[0].clone();
        (i["vm_cid"] != before[0]["vm_cid"] && i["state"] == "running").then_some(i)
    });
    let (_, clashes) = watch.finish();
    assert!(clashes.is_empty(), "{clashes:?}");
    assert_eq!(back["ips"], before[0]["ips"], "same address, never held twice");
    assert!(!d.cpi_base().join("vms").join(&vm).exists(), "the hung VM was deleted");
    assert!(
        bosun_cpi_local::processes_with_env(bosun_cpi_local::VM_MARKER, &vm).is_empty(),
        "nothing of the hung VM runs"
    );
}

#[test]
fn meltdown_stops_resurrection_until_cck_repairs() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(52)), &testbed_release());
    let m = d.write("s.yml", &sleeper_manifest("melt", 8, "hello", "", "", ""));
    d.ok(&["-n", "-d", "melt", "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running("melt", 8));
    for i in &before[..5] {
        kill_vm(i["vm_cid"].as_str().unwrap());
    }
    let evs = eventually("a meltdown event", Duration::from_secs(30), || {
        let e = events(&d, "melt");
        e.iter().any(|x| x["action"] == "meltdown").then_some(e)
    });
    let meltdown = evs.iter().find(|x| x["action"] == "meltdown").unwrap();
    assert!(meltdown["message"].as_str().unwrap().contains("meltdown entered: 5 of 8"), "{meltdown}");
    // Every dead instance is seen (proof the monitor kept looking), and none was resurrected.
    eventually("all five found missing", Duration::from_secs(30), || {
        let e = events(&d, "melt");
        before[..5].iter().all(|i| has_event(&e, "missing", i["instance"].as_str().unwrap())).then_some(())
    });
    let evs = eventually("the monitor holding all five back", Duration::from_secs(30), || {
        let e = events(&d, "melt");
        (e.iter().filter(|x| x["action"] == "resurrect_skipped").count() == 5).then_some(e)
    });
    assert!(!evs.iter().any(|e| e["action"] == "resurrect"), "no resurrection in a meltdown: {evs:?}");
    let tasks = d.json(&["tasks"]);
    assert!(!tasks.as_array().unwrap().iter().any(|t| t["description"].as_str().unwrap().starts_with("resurrect")));

    let report = d.run(&["-d", "melt", "cck", "--report"]);
    let listed = String::from_utf8_lossy(&report.stdout).to_string();
    assert_eq!(report.status.code(), Some(1), "{listed}");
    assert_eq!(listed.matches("missing_vm").count(), 5, "{listed}");
    d.ok(&["-n", "-d", "melt", "cck", "--auto"]);
    let after = by_index(&d.running("melt", 8));
    for (b, a) in before.iter().zip(&after).take(5) {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["ips"], b["ips"]);
        assert_ne!(a["vm_cid"], b["vm_cid"]);
    }
    let evs = events(&d, "melt");
    assert_eq!(evs.iter().filter(|e| e["action"] == "resolve").count(), 5);
    assert!(d.run(&["-d", "melt", "cck", "--report"]).status.success(), "nothing left to repair");
}

/// The VM processes, VM directories and addresses of a director's local VMs.
fn vms_on_disk(d: &TestDirector) -> (usize, Vec<String>) {
    let vms = vm_addresses(&d.cpi_base());
    let mut ips: Vec<String> = vms.iter().flat_map(|(_, i)| i.clone()).collect();
    ips.sort();
    (vms.len(), ips)
}

#[test]
fn a_director_killed_mid_deploy_restarts_and_the_next_deploy_converges() {
    let mut d = TestDirector::start_with(&[], &[("BOSUN_CRASH_AT", "after_create_vm")]);
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(53)), &testbed_release());
    let three = d.write("three.yml", &sleeper_manifest("crash", 3, "hello", "", "  persistent_disk: 64", ""));
    let deploy = |d: &TestDirector, m: &std::path::Path| d.run(&["-n", "-d", "crash", "deploy", m.to_str().unwrap()]);

    // 1. Killed right after the CPI made a VM, before the VM was recorded.
    assert!(!deploy(&d, &three).status.success());
    d.wait_for_exit(Duration::from_secs(30));
    assert_eq!(vms_on_disk(&d).0, 1, "the VM the director never recorded exists");
    d.relaunch_with(&[]);
    let evs = events(&d, "crash");
    assert!(evs.iter().any(|e| e["action"] == "delete" && e["object_type"] == "vm"), "reconciled: {evs:?}");
    let tasks = d.json(&["tasks"]);
    assert_eq!(tasks[0]["state"], "error", "the interrupted task is marked: {tasks}");
    d.ok(&["-n", "-d", "crash", "deploy", three.to_str().unwrap()]);
    let first = by_index(&d.running("crash", 3));
    let (n, ips) = vms_on_disk(&d);
    assert_eq!(n, 3, "no leaked VM");
    let mut want: Vec<String> = first.iter().map(|i| i["ips"][0].as_str().unwrap().to_string()).collect();
    want.sort();
    assert_eq!(ips, want, "every VM's address is its instance's");

    // 2. Killed after an agent applied a new spec, before the director recorded it.
    d.relaunch_with(&[("BOSUN_CRASH_AT", "after_apply")]);
    let changed = d.write("changed.yml", &sleeper_manifest("crash", 3, "changed", "", "  persistent_disk: 64", ""));
    assert!(!deploy(&d, &changed).status.success());
    d.wait_for_exit(Duration::from_secs(30));
    d.relaunch_with(&[]);
    let plan = d.ok(&["-d", "crash", "deploy", changed.to_str().unwrap(), "--dry-run"]);
    assert!(plan.contains("update:"), "{plan}");
    d.ok(&["-n", "-d", "crash", "deploy", changed.to_str().unwrap()]);
    d.running("crash", 3);
    assert!(d.ok(&["-n", "-d", "crash", "deploy", changed.to_str().unwrap()]).contains("No changes."));

    // 3. Killed after deleting a VM during a scale-in, before recording it.
    d.relaunch_with(&[("BOSUN_CRASH_AT", "after_delete_vm")]);
    let one = d.write("one.yml", &sleeper_manifest("crash", 1, "changed", "", "  persistent_disk: 64", ""));
    assert!(!deploy(&d, &one).status.success());
    d.wait_for_exit(Duration::from_secs(30));
    d.relaunch_with(&[]);
    d.ok(&["-n", "-d", "crash", "deploy", one.to_str().unwrap()]);
    let left = d.running("crash", 1);
    assert_eq!(left[0]["id"], first[0]["id"], "the bootstrap instance stayed");
    let (n, ips) = vms_on_disk(&d);
    assert_eq!((n, ips), (1, vec![first[0]["ips"][0].as_str().unwrap().to_string()]), "no leaked VM or address");
    let vm_processes = d.vm_processes();
    let live: Vec<i32> =
        bosun_cpi_local::processes_with_env(bosun_cpi_local::VM_MARKER, left[0]["vm_cid"].as_str().unwrap());
    assert_eq!(vm_processes.len(), live.len(), "only the remaining VM's processes run");
    // Every disk is the instance's or a recorded orphan.
    let orphans = d.json(&["disks", "--orphaned"]);
    let disks: Vec<String> = std::fs::read_dir(d.cpi_base().join("disks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for disk in &disks {
        let used = left[0]["disk_cids"][0].as_str() == Some(disk.as_str());
        let orphaned = orphans.as_array().unwrap().iter().any(|o| o["disk_cid"].as_str() == Some(disk.as_str()));
        assert!(used || orphaned, "disk {disk} is neither used nor a recorded orphan: {orphans}");
    }

    // 4. Killed after deleting the VM a recreate was replacing, before recording it: the
    //    restarted director keeps the instance's reference to the gone VM, so the health monitor
    //    finds it missing and resurrects it — no deploy, no cck.
    let gone = left[0]["vm_cid"].clone();
    d.relaunch_with(&[("BOSUN_CRASH_AT", "after_delete_vm")]);
    assert!(!d.run(&["-n", "-d", "crash", "recreate"]).status.success());
    d.wait_for_exit(Duration::from_secs(30));
    d.relaunch_with(&[]);
    let back = eventually("the instance resurrected after the restart", Duration::from_secs(90), || {
        let list = d.instances("crash");
        (list.len() == 1 && list[0]["state"] == "running" && list[0]["vm_cid"] != gone).then_some(list)
    });
    assert_eq!(back[0]["id"], left[0]["id"], "the same instance");
    assert!(events(&d, "crash").iter().any(|e| e["action"] == "resurrect"), "by the health monitor");
    assert_eq!(vms_on_disk(&d).0, 1, "no leaked VM");
}

#[test]
fn cck_finds_an_orphan_vm_made_behind_the_directors_back() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(54)), &testbed_release());
    let m = d.write("s.yml", &sleeper_manifest("orphans", 1, "hello", "", "", ""));
    d.ok(&["-n", "-d", "orphans", "deploy", m.to_str().unwrap()]);
    d.running("orphans", 1);
    assert!(d.run(&["-d", "orphans", "cck", "--report"]).status.success(), "a healthy deployment has no problems");

    let uuid = d.json(&["target"])["uuid"].as_str().unwrap().to_string();
    let stemcell = d.json(&["stemcells"])[0]["cid"].as_str().unwrap().to_string();
    let cpi = bosun_cpi_local::LocalCpi::new(d.cpi_base()).unwrap();
    let mut networks = std::collections::BTreeMap::new();
    networks.insert(
        "default".to_string(),
        bosun_types::protocol::NetworkSettings {
            kind: bosun_types::cloud_config::NetworkType::Manual,
            ip: "127.0.54.200".into(),
            netmask: "255.255.255.0".into(),
            gateway: None,
            default: vec![],
            dns: vec![],
            cloud_properties: serde_json::json!({}),
        },
    );
    let request = bosun_cpi::CreateVmRequest {
        agent_id: "agent-behind-the-back".into(),
        stemcell_cid: stemcell,
        cloud_properties: serde_json::json!({}),
        networks,
        disk_cids: vec![],
        env: serde_json::json!({"bosun": {
            "director": {"address": "127.0.0.1:9", "server_name": "x", "ca_cert": "", "client_cert": "", "client_key": ""},
            "tags": {"director_uuid": uuid, "deployment": "orphans", "name": "sleeper/stray"},
        }}),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (stray, _) = rt.block_on(bosun_cpi::Cpi::create_vm(&cpi, &request)).unwrap();

    let out = d.run(&["-d", "orphans", "cck", "--report"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{listed}");
    assert!(listed.contains("orphan_vm") && listed.contains(&stray), "{listed}");
    assert!(listed.contains("as sleeper/stray"), "{listed}");
    d.ok(&["-n", "-d", "orphans", "cck", "--resolution", "orphan_vm=delete_vm"]);
    assert!(!d.cpi_base().join("vms").join(&stray).exists());
    assert!(d.run(&["-d", "orphans", "cck", "--report"]).status.success());
    assert_eq!(d.running("orphans", 1).len(), 1, "the deployment's own VM was left alone");
}

#[test]
fn resurrection_switched_off_leaves_a_dead_vm_and_an_agent_reboot_needs_no_director() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(55)), &testbed_release());
    let m = d.write("s.yml", &sleeper_manifest("switch", 2, "hello", "", "  persistent_disk: 64", ""));
    d.ok(&["-n", "-d", "switch", "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running("switch", 2));
    // Resurrection off for the deployment first: this test's director calls an agent unresponsive
    // after 1.5 s, which a reboot on a loaded machine may exceed; the reboot must be the agent's
    // own recovery, not the monitor's replacement.
    d.ok(&["-d", "switch", "update-resurrection", "off"]);

    // A rebooted VM: the agent comes back to the jobs it ran, from its own ledger, with no task.
    let tasks_before = d.json(&["tasks"]).as_array().unwrap().len();
    let cpi = bosun_cpi_local::LocalCpi::new(d.cpi_base()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let old_pid = before[1]["processes"][0]["pid"].as_u64().unwrap();
    rt.block_on(bosun_cpi::Cpi::reboot_vm(&cpi, before[1]["vm_cid"].as_str().unwrap())).unwrap();
    let rebooted = eventually("the rebooted instance running its job again", Duration::from_secs(30), || {
        let i = by_index(&d.instances("switch"))[1].clone();
        (i["state"] == "running" && i["processes"][0]["pid"].as_u64() != Some(old_pid)).then_some(i)
    });
    assert_eq!(rebooted["vm_cid"], before[1]["vm_cid"], "the same VM");
    assert_eq!(d.json(&["tasks"]).as_array().unwrap().len(), tasks_before, "no task was needed");
    let disk = before[1]["disk_cids"][0].as_str().unwrap();
    let starts = std::fs::read_to_string(d.cpi_base().join("disks").join(disk).join("data/starts")).unwrap();
    assert_eq!(starts.lines().count(), 2, "the job started again on its persistent disk: {starts}");

    // With resurrection off, a dead VM is reported, not replaced.
    kill_vm(before[0]["vm_cid"].as_str().unwrap());
    let name = before[0]["instance"].as_str().unwrap();
    eventually("the dead VM reported", Duration::from_secs(30), || {
        has_event(&events(&d, "switch"), "missing", name).then_some(())
    });
    let evs = eventually("the monitor deciding not to resurrect", Duration::from_secs(30), || {
        let e = events(&d, "switch");
        e.iter().any(|x| x["action"] == "resurrect_skipped" && x["instance"].as_str() == Some(name)).then_some(e)
    });
    let skipped = evs.iter().find(|x| x["action"] == "resurrect_skipped").unwrap();
    assert_eq!(skipped["message"], "not resurrected: resurrection is off for it");
    assert!(!evs.iter().any(|e| e["action"] == "resurrect"), "resurrection is off");
    d.ok(&["-d", "switch", "update-resurrection", "on"]);
    eventually("resurrected once switched on", Duration::from_secs(60), || {
        let i = by_index(&d.instances("switch"))[0].clone();
        (i["vm_cid"] != before[0]["vm_cid"] && i["state"] == "running").then_some(())
    });
    let switches: Vec<_> = events(&d, "switch").into_iter().filter(|e| e["action"] == "update_resurrection").collect();
    assert_eq!(switches.len(), 2, "both switches are on the timeline with their cause");
    assert!(switches.iter().all(|e| e["cause"] == "operator"));
}

#[test]
fn cck_repairs_disk_problems() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(56)), &testbed_release());
    let m = d.write("s.yml", &sleeper_manifest("disks", 2, "hello", "", "  persistent_disk: 64", ""));
    d.ok(&["-n", "-d", "disks", "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running("disks", 2));
    let cpi = bosun_cpi_local::LocalCpi::new(d.cpi_base()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // Detached behind the director's back: found, and reattached (and mounted) by cck.
    let (vm0, disk0) = (before[0]["vm_cid"].as_str().unwrap(), before[0]["disk_cids"][0].as_str().unwrap());
    rt.block_on(bosun_cpi::Cpi::detach_disk(&cpi, vm0, disk0)).unwrap();
    // Deleted behind its back (detached first, as a cloud would require).
    let (vm1, disk1) = (before[1]["vm_cid"].as_str().unwrap(), before[1]["disk_cids"][0].as_str().unwrap());
    rt.block_on(bosun_cpi::Cpi::detach_disk(&cpi, vm1, disk1)).unwrap();
    rt.block_on(bosun_cpi::Cpi::delete_disk(&cpi, disk1)).unwrap();

    let out = d.run(&["-d", "disks", "cck", "--report", "--json"]);
    assert_eq!(out.status.code(), Some(1), "problems found: exit 1");
    let problems: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<(String, String)> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap().to_string(), p["id"].as_str().unwrap().to_string()))
        .collect();
    assert!(kinds.contains(&("unattached_disk".into(), format!("unattached_disk:{disk0}"))), "{problems}");
    assert!(kinds.contains(&("missing_disk".into(), format!("missing_disk:{disk1}"))), "{problems}");
    // With --json every line of stdout is one JSON object: the problems first, then the
    // repairing task's events, its end last.
    let out = d.ok(&["-n", "--json", "-d", "disks", "cck", "--auto"]);
    let lines: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{out}"))).collect();
    assert_eq!(lines.first().and_then(|p| p.as_array()).map(Vec::len), Some(2), "the two problems first: {out}");
    assert!(lines.len() > 2, "the task's events follow: {out}");
    assert!(d.run(&["-d", "disks", "cck", "--report"]).status.success(), "nothing left");
    // Nothing to repair: the empty list, and no text.
    assert_eq!(d.ok(&["-n", "--json", "-d", "disks", "cck", "--auto"]).trim(), "[]");
    let after = by_index(&d.instances("disks"));
    assert_eq!(after[0]["disk_cids"][0], disk0, "reattached");
    assert!(after[1]["disk_cids"].as_array().unwrap().is_empty(), "the missing disk's reference is gone");
    // The next deploy gives the instance a new disk.
    d.ok(&["-n", "-d", "disks", "deploy", m.to_str().unwrap()]);
    let fixed = by_index(&d.running("disks", 2));
    assert_eq!(fixed[1]["disk_cids"].as_array().unwrap().len(), 1);
    assert_ne!(fixed[1]["disk_cids"][0], disk1);
}

#[test]
fn an_update_task_that_panics_fails_with_the_panic_message_and_the_next_deploy_gets_the_lock() {
    // The fault point panics once per director process: the first deploy meets it.
    let d = TestDirector::start_with(&[], &[("BOSUN_PANIC_AT", "update_instance")]);
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(57)), &testbed_release());
    let m = d.write("m.yml", &sleeper_manifest("panicky", 2, "hello", "", "", ""));
    let m = m.to_str().unwrap();
    let out = d.run(&["-n", "-d", "panicky", "deploy", m]);
    assert!(!out.status.success(), "the deploy whose task panicked fails");
    let tasks = d.json(&["tasks"]);
    assert_eq!(tasks[0]["state"], "error", "{tasks}");
    assert_eq!(tasks[0]["result"], "the task panicked: BOSUN_PANIC_AT: update_instance", "{tasks}");
    let evs = events(&d, "panicky");
    assert!(
        evs.iter().any(|e| e["action"] == "end" && e["message"].as_str().is_some_and(|m| m.contains("panicked"))),
        "the task's end is on the timeline: {evs:?}"
    );
    d.ok(&["-n", "-d", "panicky", "deploy", m]);
    d.running("panicky", 2);
}

#[test]
fn the_health_monitor_survives_a_panic_and_still_resurrects() {
    let d = TestDirector::start_with(&[], &[("BOSUN_PANIC_AT", "health_pass")]);
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(58)), &testbed_release());
    let m = d.write("m.yml", &sleeper_manifest("watched", 1, "hello", "", "", ""));
    d.ok(&["-n", "-d", "watched", "deploy", m.to_str().unwrap()]);
    let all = |d: &TestDirector| d.json(&["events", "--limit", "1000"]).as_array().expect("a list").clone();
    eventually("the monitor's restart on the timeline", Duration::from_secs(30), || {
        all(&d).into_iter().find(|e| e["action"] == "monitor_restarted")
    });
    let victim = d.running("watched", 1)[0].clone();
    assert!(kill_vm(victim["vm_cid"].as_str().unwrap()) > 0);
    let name = victim["instance"].as_str().unwrap();
    eventually("the restarted monitor to notice the dead VM", Duration::from_secs(30), || {
        has_event(&events(&d, "watched"), "missing", name).then_some(())
    });
    eventually("the instance running on a new VM", Duration::from_secs(120), || {
        let i = d.instances("watched")[0].clone();
        (i["vm_cid"] != victim["vm_cid"] && i["state"] == "running").then_some(())
    });
}
