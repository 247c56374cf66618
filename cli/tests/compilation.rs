//! Compilation on compilation VMs through the local CPI: packages compile once per stemcell, in
//! dependency order, on VMs that are gone afterwards; instance VMs only unpack what was compiled;
//! a failing `packaging` fails the deploy before any instance exists; a director killed in the
//! middle of a compilation leaves no compilation VM after its restart. Each test has its own
//! subnet (127.0.60–61.0/24, 63–65) and its own compiled-package cache (so it sees compilation happen).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn greeter_manifest(name: &str, instances: u32, stemcell_version: &str, job: &str) -> String {
    format!(
        r#"name: {name}
releases: [{{name: testbed, version: latest}}]
stemcells: [{{alias: default, os: local, version: "{stemcell_version}"}}]
update: {{canaries: 1, max_in_flight: 2, canary_watch_time: 500-5000, update_watch_time: 500-5000}}
instance_groups:
- name: greeter
  azs: [z1, z2, z3]
  instances: {instances}
  vm_type: default
  stemcell: default
  networks: [{{name: default}}]
  jobs:
  - {{name: {job}, release: testbed}}
"#
    )
}

/// The task's event lines of the last task.
fn last_task_lines(d: &TestDirector) -> Vec<String> {
    let tasks = d.json(&["tasks"]);
    let id = tasks[0]["id"].as_u64().expect("a task").to_string();
    let page = d.json(&["task", &id]);
    page["events"].as_array().expect("events").iter().map(|e| e["message"].as_str().unwrap_or("").to_string()).collect()
}

fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

fn vm_dirs(d: &TestDirector) -> Vec<String> {
    std::fs::read_dir(d.cpi_base().join("vms"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn instance_root(d: &TestDirector, vm_cid: &str) -> PathBuf {
    d.cpi_base().join("vms").join(vm_cid).join("root")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

#[test]
fn packages_compile_once_per_stemcell_on_compilation_vms_that_are_gone_afterwards() {
    let cache = tempfile::tempdir().unwrap();
    let d = TestDirector::start_with(&["--compiled-package-cache", cache.path().to_str().unwrap()], &[]);
    // The local cloud-config's compilation block: 2 workers on the default network in z1.
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(60)), &testbed_release());
    let first = d.write("first.yml", &greeter_manifest("first", 2, "1", "greeter"));
    let plan = d.json(&["-d", "first", "deploy", first.to_str().unwrap(), "--dry-run"]);
    let names: Vec<&str> = plan["compilations"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{plan}");
    assert!(names[0].starts_with("libgreet/") && names[1].starts_with("greet/"), "dependencies first: {names:?}");
    assert!(names.iter().all(|n| n.ends_with(" for local/1")), "{names:?}");

    d.ok(&["-n", "-d", "first", "deploy", first.to_str().unwrap()]);
    let lines = last_task_lines(&d);
    assert_eq!(count(&lines, "compiled libgreet/"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "compiled greet/"), 1, "{lines:#?}");
    assert!(lines.iter().any(|l| l == "2 package(s) compiled, 0 taken from the cache"), "{lines:#?}");
    let instances = d.running("first", 2);
    let instance_vms: Vec<String> = instances.iter().map(|i| i["vm_cid"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        {
            let mut v = vm_dirs(&d);
            v.sort();
            v
        },
        {
            let mut v = instance_vms.clone();
            v.sort();
            v
        },
        "only the instances' VMs remain"
    );
    for vm in &instance_vms {
        let root = instance_root(&d, vm);
        let greeting = eventually("the greeter to write its greeting", Duration::from_secs(30), || {
            std::fs::read_to_string(root.join("store/greeting")).ok().filter(|g| !g.is_empty())
        });
        assert_eq!(greeting.trim(), "hello from libgreet", "built against the compiled dependency");
        let on = read(&root.join("packages/greet/compiled-on"));
        assert!(on.starts_with("vm-") && !instance_vms.contains(&on), "greet compiled on {on}, a compilation VM");
        // What compiling greet needed is not installed: the job names only greet.
        assert!(!root.join("packages/libgreet").exists(), "libgreet installed on {vm}");
        assert!(!root.join("data/sys/log/packaging").exists(), "instance VM {vm} ran packaging");
        assert!(!root.join("data/compile").read_dir().map(|mut r| r.next().is_some()).unwrap_or(false));
    }
    // The cache holds both, each a tarball with its record.
    let cached: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(cached.len(), 2, "{cached:?}");

    // Another deployment of the same release and stemcell compiles nothing.
    let second = d.write("second.yml", &greeter_manifest("second", 1, "1", "greeter"));
    let plan = d.json(&["-d", "second", "deploy", second.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan["compilations"], serde_json::json!([]), "{plan}");
    d.ok(&["-n", "-d", "second", "deploy", second.to_str().unwrap()]);
    assert_eq!(count(&last_task_lines(&d), "compil"), 0, "nothing compiled");
    d.running("second", 1);

    // A new stemcell version: both compile again, for it.
    d.ok(&["upload-stemcell", stemcell("2").to_str().unwrap()]);
    let upgraded = d.write("upgraded.yml", &greeter_manifest("first", 2, "2", "greeter"));
    d.ok(&["-n", "-d", "first", "deploy", upgraded.to_str().unwrap()]);
    let lines = last_task_lines(&d);
    assert_eq!(count(&lines, "compiled libgreet/"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "compiled greet/"), 1, "{lines:#?}");
    assert!(lines.iter().filter(|l| l.starts_with("compiled ")).all(|l| l.contains(" for local/2 ")), "{lines:#?}");
    let upgraded_instances = d.running("first", 2);
    assert!(upgraded_instances.iter().all(|i| i["stemcell"]["version"] == "2"), "{upgraded_instances:?}");

    // A package whose packaging fails fails the deploy before any instance exists.
    let broken = d.write("broken.yml", &greeter_manifest("broken", 2, "1", "broken-job"));
    let err = d.fails(1, &["-n", "-d", "broken", "deploy", broken.to_str().unwrap()]);
    assert!(err.contains("compiling package `broken`"), "{err}");
    assert!(err.contains("broken: no compiler here"), "the packaging output reaches the operator: {err}");
    assert!(d.instances("broken").iter().all(|i| i["vm_cid"].is_null()), "no instance VM was made");
    let mut left = vm_dirs(&d);
    left.sort();
    let mut want: Vec<String> = d
        .instances("first")
        .iter()
        .chain(d.instances("second").iter())
        .map(|i| i["vm_cid"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(left, want, "the failed compilation's VM is gone");
}

#[test]
fn a_director_killed_while_compiling_leaves_no_compilation_vm_and_the_next_deploy_compiles() {
    let cache = tempfile::tempdir().unwrap();
    let mut d = TestDirector::start_with(
        &["--compiled-package-cache", cache.path().to_str().unwrap()],
        &[("BOSUN_CRASH_AT", "compiling")],
    );
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(61)), &testbed_release());
    let m = d.write("m.yml", &greeter_manifest("killed", 1, "1", "greeter"));
    assert!(!d.run(&["-n", "-d", "killed", "deploy", m.to_str().unwrap()]).status.success());
    d.wait_for_exit(Duration::from_secs(30));
    assert_eq!(vm_dirs(&d).len(), 1, "the compilation VM the director was using exists");
    d.relaunch_with(&[]);
    eventually("the restarted director to delete the compilation VM", Duration::from_secs(30), || {
        vm_dirs(&d).is_empty().then_some(())
    });
    let evs = d.json(&["events", "--limit", "100"]);
    assert!(
        evs.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "delete" && e["message"].as_str().is_some_and(|m| m.contains("compilation VM"))),
        "{evs}"
    );
    d.ok(&["-n", "-d", "killed", "deploy", m.to_str().unwrap()]);
    let lines = last_task_lines(&d);
    assert_eq!(count(&lines, "compiled "), 2, "what was missing compiles: {lines:#?}");
    let i = d.running("killed", 1);
    assert_eq!(vm_dirs(&d), vec![i[0]["vm_cid"].as_str().unwrap().to_string()]);
}

#[test]
fn an_exported_compiled_release_deploys_on_a_new_director_without_compiling() {
    let (cache, other_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = TestDirector::start_with(&["--compiled-package-cache", cache.path().to_str().unwrap()], &[]);
    let cloud = d.write("cloud.yml", &local_cloud_config(63));
    d.prepare_with(&cloud, &testbed_release());
    let m = d.write("m.yml", &greeter_manifest("exported", 1, "1", "greeter"));
    d.ok(&["-n", "-d", "exported", "deploy", m.to_str().unwrap()]);
    let version = d.json(&["releases"])[0]["version"].as_str().unwrap().to_string();
    let release = format!("testbed/{version}");

    let inspect = d.json(&["inspect-release", &release]);
    let compiled_for = |v: &serde_json::Value, p: &str| {
        v["packages"].as_array().unwrap().iter().find(|x| x["name"] == p).unwrap()["compiled_for"].clone()
    };
    assert_eq!(compiled_for(&inspect, "greet"), serde_json::json!(["local/1"]), "{inspect}");
    assert_eq!(compiled_for(&inspect, "broken"), serde_json::json!([]), "{inspect}");
    // Not everything is compiled: a whole export is refused, naming what is missing.
    let out = tempfile::tempdir().unwrap();
    let err = d.fails(2, &["export-release", &release, "local/1", "--dir", out.path().to_str().unwrap()]);
    assert!(err.contains("not compiled for local/1: package(s) broken"), "{err}");
    let tarball =
        d.ok(&["export-release", &release, "local/1", "--job", "greeter", "--dir", out.path().to_str().unwrap()]);
    let tarball = PathBuf::from(tarball.trim());
    assert_eq!(tarball, out.path().join(format!("testbed-{version}-local-1.tgz")));

    // A new director with an empty cache: the compiled release needs no compilation on local/1.
    let fresh = TestDirector::start_with(&["--compiled-package-cache", other_cache.path().to_str().unwrap()], &[]);
    fresh.prepare_with(&cloud, &tarball);
    let inspect = fresh.json(&["inspect-release", &release]);
    assert_eq!(compiled_for(&inspect, "libgreet"), serde_json::json!(["local/1"]), "{inspect}");
    assert!(inspect["packages"].as_array().unwrap().iter().all(|p| p["compiled_only"] == true), "{inspect}");
    let plan = fresh.json(&["-d", "exported", "deploy", m.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan["compilations"], serde_json::json!([]), "{plan}");
    fresh.ok(&["-n", "-d", "exported", "deploy", m.to_str().unwrap()]);
    assert_eq!(count(&last_task_lines(&fresh), "compil"), 0, "nothing compiled");
    let i = fresh.running("exported", 1);
    let root = fresh.cpi_base().join("vms").join(i[0]["vm_cid"].as_str().unwrap()).join("root");
    let greeting = eventually("the greeting", Duration::from_secs(30), || {
        std::fs::read_to_string(root.join("store/greeting")).ok().filter(|g| !g.is_empty())
    });
    assert_eq!(greeting.trim(), "hello from libgreet");
    // On another stemcell the compiled release cannot compile: the plan says why.
    fresh.ok(&["upload-stemcell", stemcell("2").to_str().unwrap()]);
    let on_two = fresh.write("two.yml", &greeter_manifest("exported", 1, "2", "greeter"));
    let err = fresh.fails(2, &["-n", "-d", "exported", "deploy", on_two.to_str().unwrap()]);
    assert!(err.contains("is a compiled release") && err.contains("local/2"), "{err}");
    // Another stemcell of its line (BOSH: the same major version) takes it as it is.
    fresh.ok(&["upload-stemcell", stemcell("1.1").to_str().unwrap()]);
    let on_line = fresh.write("line.yml", &greeter_manifest("exported", 1, "1.1", "greeter"));
    fresh.ok(&["-n", "-d", "exported", "deploy", on_line.to_str().unwrap()]);
    assert_eq!(count(&last_task_lines(&fresh), "compil"), 0, "nothing compiled on local/1.1");
    fresh.running("exported", 1);

    // Where the source release is uploaded already, its compiled form adds the compiled packages:
    // a director that never compiled greet for local/1.1 deploys it there without compiling.
    let third_cache = tempfile::tempdir().unwrap();
    let third = TestDirector::start_with(&["--compiled-package-cache", third_cache.path().to_str().unwrap()], &[]);
    third.prepare_with(&cloud, &testbed_release());
    third.ok(&["upload-stemcell", stemcell("1.1").to_str().unwrap()]);
    let out = third.ok(&["upload-release", tarball.to_str().unwrap()]);
    assert!(out.contains(&release), "{out}");
    assert_eq!(compiled_for(&third.json(&["inspect-release", &release]), "greet"), serde_json::json!(["local/1"]));
    let plan = third.json(&["-d", "exported", "deploy", on_line.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan["compilations"], serde_json::json!([]), "{plan}");
}

#[test]
fn a_cache_entry_whose_bytes_do_not_match_its_record_is_refused_and_compiled_again() {
    let cache = tempfile::tempdir().unwrap();
    let flags = ["--compiled-package-cache", cache.path().to_str().unwrap()];
    let first = TestDirector::start_with(&flags, &[]);
    let cloud = first.write("cloud.yml", &local_cloud_config(64));
    first.prepare_with(&cloud, &testbed_release());
    let m = first.write("m.yml", &greeter_manifest("cached", 1, "1", "greeter"));
    first.ok(&["-n", "-d", "cached", "deploy", m.to_str().unwrap()]);
    // Corrupt libgreet's cached tarball (its record says another digest now).
    let record = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json") && read(p).contains("\"name\": \"libgreet\""))
        .expect("libgreet's record in the cache");
    let tgz = record.with_extension("tgz");
    let mut bytes = std::fs::read(&tgz).unwrap();
    bytes.extend_from_slice(b"corrupted");
    std::fs::write(&tgz, bytes).unwrap();

    let second = TestDirector::start_with(&flags, &[]);
    second.prepare_with(&cloud, &testbed_release());
    second.ok(&["-n", "-d", "cached", "deploy", m.to_str().unwrap()]);
    let lines = last_task_lines(&second);
    assert!(
        lines.iter().any(|l| l.contains("libgreet/") && l.contains("entry is refused") && l.contains("has digest")),
        "{lines:#?}"
    );
    assert_eq!(count(&lines, "compiled libgreet/"), 1, "compiled again: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("greet/") && l.ends_with("taken from the compiled-package cache")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l == "1 package(s) compiled, 1 taken from the cache"), "{lines:#?}");
    // The refused entry was replaced by the new one.
    let fresh: serde_json::Value = serde_json::from_str(&read(&record)).unwrap();
    let digest = bosun_types::digest::sha256_digest(&std::fs::read(&tgz).unwrap());
    assert_eq!(fresh["blob"]["digest"], digest);
    second.running("cached", 1);
}

/// A copy of the testbed release directory whose `greet` package has other packaging (so only
/// its fingerprint changes), made into a tarball.
fn testbed_with_new_greet(scratch: &Path) -> PathBuf {
    let dir = scratch.join("testbed");
    let o = std::process::Command::new("cp")
        .args(["-r"])
        .arg(repo().join("cli/tests/fixtures/testbed"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success());
    let packaging = dir.join("packages/greet/packaging");
    let text = std::fs::read_to_string(&packaging).unwrap();
    std::fs::write(&packaging, format!("{text}# a new version of greet\n")).unwrap();
    let tarball = scratch.join("testbed-2.tgz");
    let o = std::process::Command::new(bosun_bin())
        .args(["create-release"])
        .arg(&dir)
        .args(["--version", "2", "--tarball"])
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tarball
}

#[test]
fn a_changed_package_compiles_alone_against_its_dependency_compiled_before() {
    let (cache, build_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = TestDirector::start_with(
        &[
            "--compiled-package-cache",
            cache.path().to_str().unwrap(),
            "--build-cache",
            build_cache.path().to_str().unwrap(),
        ],
        &[],
    );
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(65)), &testbed_release());
    let m = d.write("m.yml", &greeter_manifest("changed", 1, "1", "greeter"));
    d.ok(&["-n", "-d", "changed", "deploy", m.to_str().unwrap()]);
    assert_eq!(count(&last_task_lines(&d), "compiled "), 2);
    let scratch = tempfile::tempdir().unwrap();
    d.ok(&["upload-release", testbed_with_new_greet(scratch.path()).to_str().unwrap()]);
    let plan = d.json(&["-d", "changed", "deploy", m.to_str().unwrap(), "--dry-run"]);
    let names: Vec<&str> = plan["compilations"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(names.len() == 1 && names[0].starts_with("greet/"), "only greet: {names:?}");
    d.ok(&["-n", "-d", "changed", "deploy", m.to_str().unwrap()]);
    let lines = last_task_lines(&d);
    assert_eq!(count(&lines, "compiled greet/"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "compiled libgreet/"), 0, "{lines:#?}");
    let vm = d.running("changed", 1)[0]["vm_cid"].as_str().unwrap().to_string();
    // The new version's packaging found what the first one left in the build cache (one per
    // stemcell operating system, owner-only).
    let before = read(&instance_root(&d, &vm).join("packages/greet/build-cache-before"));
    assert!(before.starts_with("greet-") && before.lines().count() == 1, "{before}");
    let os_dirs: Vec<_> = std::fs::read_dir(build_cache.path()).unwrap().flatten().collect();
    assert_eq!(os_dirs.len(), 1, "one directory per operating system");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(os_dirs[0].metadata().unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn two_directors_needing_the_same_packages_at_once_compile_them_once() {
    let cache = tempfile::tempdir().unwrap();
    let flags = ["--compiled-package-cache", cache.path().to_str().unwrap()];
    let (a, b) = (TestDirector::start_with(&flags, &[]), TestDirector::start_with(&flags, &[]));
    for (d, subnet) in [(&a, 70), (&b, 71)] {
        d.prepare_with(&d.write("cloud.yml", &local_cloud_config(subnet)), &testbed_release());
    }
    let deploys: Vec<std::process::Child> = [&a, &b]
        .iter()
        .map(|d| {
            let m = d.write("m.yml", &greeter_manifest("shared", 1, "1", "greeter"));
            d.command().args(["-n", "-d", "shared", "deploy", m.to_str().unwrap()]).spawn().unwrap()
        })
        .collect();
    for mut deploy in deploys {
        assert!(deploy.wait().unwrap().success(), "both deploys succeed");
    }
    let (la, lb) = (last_task_lines(&a), last_task_lines(&b));
    let compiled = count(&la, "compiled ") + count(&lb, "compiled ");
    let taken = [&la, &lb]
        .iter()
        .flat_map(|l| l.iter())
        .filter(|l| l.ends_with("taken from the compiled-package cache"))
        .count();
    assert_eq!((compiled, taken), (2, 2), "libgreet and greet compiled once between them:\n{la:#?}\n{lb:#?}");
    a.running("shared", 1);
    b.running("shared", 1);
}
