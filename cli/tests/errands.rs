//! `bosun run-errand` on the testbed release's `say` errand (it prints its message on three lines
//! and exits with its `exit_code`): an errand group's VMs exist only while it runs (or with
//! `--keep-alive`), a colocated errand runs on its instance's VM, output is streamed, the CLI
//! exits with the errand's exit code, `--when-changed` skips an unchanged errand, and ambiguous or
//! unknown errands are refused. Subnet 127.0.68.0/24.

mod common;

use common::*;

const MANIFEST: &str = r#"name: errands
releases: [{name: testbed, version: latest}]
stemcells: [{alias: default, os: local, version: latest}]
update: {canaries: 1, max_in_flight: 2, canary_watch_time: 500-5000, update_watch_time: 500-5000}
instance_groups:
- name: sleeper
  azs: [z1]
  instances: 1
  vm_type: default
  stemcell: default
  networks: [{name: default}]
  jobs:
  - {name: sleeper, release: testbed, properties: {message: hi}}
  - {name: say, release: testbed, properties: {message: from-sleeper, exit_code: 3}}
- name: checks
  lifecycle: errand
  azs: [z1]
  instances: 2
  vm_type: default
  stemcell: default
  networks: [{name: default}]
  jobs:
  - {name: say, release: testbed, properties: {message: "from the errand group; $(touch /tmp/nope)"}}
"#;

/// The VM cids of a group's instances (None: no VM).
fn vms(d: &TestDirector, group: &str) -> Vec<Option<String>> {
    d.instances("errands")
        .into_iter()
        .filter(|i| i["group"] == group)
        .map(|i| i["vm_cid"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn errands_run_on_errand_groups_and_colocated_jobs() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(68)), &testbed_release());
    let m = d.write("errands.yml", MANIFEST);
    d.ok(&["-n", "-d", "errands", "deploy", m.to_str().unwrap()]);
    assert_eq!(vms(&d, "checks"), vec![None, None], "an errand group has no VMs between runs");
    assert_eq!(vms(&d, "sleeper").len(), 1);

    // `say` is both an errand group's job and colocated: which one must be named.
    let err = d.fails(2, &["-d", "errands", "run-errand", "say"]);
    assert!(err.contains("both an errand group's job and colocated elsewhere"), "{err}");
    let err = d.fails(2, &["-d", "errands", "run-errand", "sleeper"]);
    assert!(err.contains("job `sleeper` is not an errand: an errand has a bin/run and runs no processes"), "{err}");

    // The errand group: VMs made, the errand run on both (output streamed), VMs deleted.
    let out = d.ok(&["-d", "errands", "run-errand", "say", "--instance", "checks"]);
    for index in [0, 1] {
        for line in 1..=3 {
            let want = format!("say checks/{index} line {line}: from the errand group; $(touch /tmp/nope)");
            assert!(out.contains(&want), "missing {want:?} in:\n{out}");
        }
    }
    assert!(out.contains("errand `say` succeeded"), "{out}");
    assert_eq!(vms(&d, "checks"), vec![None, None], "the errand's VMs are deleted after the run");
    assert!(!std::path::Path::new("/tmp/nope").exists(), "a property value ran as code");

    // Nothing changed: --when-changed does not even make the VMs.
    let out = d.ok(&["-d", "errands", "run-errand", "say", "--instance", "checks", "--when-changed"]);
    assert!(out.contains("skipped: it succeeded last time and nothing changed since"), "{out}");

    // --keep-alive keeps them; the next run without it uses and then deletes them.
    d.ok(&["-d", "errands", "run-errand", "say", "--instance", "checks", "--keep-alive"]);
    let kept = vms(&d, "checks");
    assert!(kept.iter().all(Option::is_some), "kept alive: {kept:?}");
    let out = d.ok(&["-d", "errands", "run-errand", "say", "--instance", "checks/0"]);
    assert!(out.contains("say checks/0 line 3") && !out.contains("say checks/1"), "{out}");
    let after = vms(&d, "checks");
    assert_eq!(after[0], None, "checks/0's VM went after its run");
    assert_eq!(after[1], kept[1], "checks/1 was not part of that run and keeps its VM");

    // The colocated errand runs on the sleeper's VM and its exit code becomes bosun's.
    let sleeper_vm = vms(&d, "sleeper");
    let o = d.run(&["-d", "errands", "run-errand", "say", "--instance", "sleeper"]);
    let err = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("say sleeper/0 line 1: from-sleeper") && err.contains("errand `say` exited 3"), "{err}");
    assert_eq!(vms(&d, "sleeper"), sleeper_vm, "a colocated errand leaves its VM alone");

    d.ok(&["-n", "-d", "errands", "delete-deployment"]);
    assert!(d.vm_processes().is_empty());
}
