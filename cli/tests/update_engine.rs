//! The update engine on real agents through the local CPI, with the testbed release's `sleeper`
//! job (a process that records each start on the instance's store and sleeps): a failing canary,
//! a hanging drain, create-swap-delete, and the recreate / restart / stop / start commands. Each
//! test has its own subnet (127.0.43–46.0/24; cancellation 127.0.49.0/24, clean-up 127.0.42.0/24, progress 127.0.79.0/24).

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn pid(i: &serde_json::Value) -> u64 {
    i["processes"][0]["pid"].as_u64().expect("a running process has a pid")
}

/// The lines the sleeper wrote on the persistent disk, one per start.
fn starts_on_disk(d: &TestDirector, disk_cid: &str) -> Vec<String> {
    std::fs::read_to_string(d.cpi_base().join("disks").join(disk_cid).join("data/starts"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn deploy(d: &TestDirector, dep: &str, manifest: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["-n", "-d", dep, "deploy", manifest.to_str().unwrap()];
    args.extend_from_slice(extra);
    d.run(&args)
}

#[test]
fn a_failing_canary_stops_the_deploy_and_leaves_the_other_instances_untouched() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(43)), &testbed_release());
    let ok = d.write("ok.yml", &sleeper_manifest("canary", 3, "hello", "", "", ""));
    d.ok(&["-n", "-d", "canary", "deploy", ok.to_str().unwrap()]);
    let before = by_index(&d.running("canary", 3));

    let bad = d.write("bad.yml", &sleeper_manifest("canary", 3, "hello", "", "", "      fail_start: true"));
    let plan = d.ok(&["-d", "canary", "deploy", bad.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan.matches("update: job `sleeper`: property `fail_start` changed").count(), 3, "{plan}");
    assert!(plan.contains("batch 1 (canary), az z1: sleeper/"), "{plan}");
    assert!(plan.contains("batch 3, az z3: sleeper/"), "{plan}");
    assert!(plan.contains("fail_start: <redacted>"), "property values are redacted: {plan}");
    let shown = d.ok(&["-d", "canary", "deploy", bad.to_str().unwrap(), "--dry-run", "--no-redact"]);
    assert!(shown.contains("fail_start: true") && !shown.contains("<redacted>"), "{shown}");

    let out = deploy(&d, "canary", &bad, &[]);
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{err}");
    let canary = before[0]["instance"].as_str().unwrap();
    assert!(err.contains(&format!("instance {canary}: starting jobs")), "{err}");
    assert!(err.contains("not running after 5000 ms: sleeper/sleeper is"), "{err}");
    assert!(err.contains("a canary failed; the deploy stops here"), "{err}");

    let after = by_index(&d.instances("canary"));
    assert_eq!(after[0]["state"], "failing", "{:?}", after[0]);
    for k in 1..3 {
        assert_eq!(after[k]["state"], "running");
        assert_eq!(after[k]["vm_cid"], before[k]["vm_cid"], "instance {k} kept its VM");
        assert_eq!(pid(&after[k]), pid(&before[k]), "instance {k} was not restarted");
    }
    // Fixing the manifest converges: the canary first, then the rest (which have nothing to do).
    d.ok(&["-n", "-d", "canary", "deploy", ok.to_str().unwrap()]);
    d.running("canary", 3);
}

#[test]
fn a_hanging_drain_fails_after_its_timeout_and_skip_drain_passes_it() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(44)), &testbed_release());
    let first = d.write(
        "first.yml",
        &sleeper_manifest("drain", 1, "hello", "  script_timeout: 2000", "", "      drain_seconds: 600"),
    );
    d.ok(&["-n", "-d", "drain", "deploy", first.to_str().unwrap()]);
    d.running("drain", 1);

    let changed = std::fs::read_to_string(&first).unwrap().replace("message: hello", "message: changed");
    let changed = d.write("changed.yml", &changed);
    let started = Instant::now();
    let out = deploy(&d, "drain", &changed, &[]);
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stopping jobs"), "{err}");
    assert!(err.contains("job `sleeper`: drain did not finish within 2 s and was killed"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2), "the drain ran for its timeout");
    assert_eq!(d.instances("drain")[0]["state"], "running", "a failed drain leaves the jobs running");

    let out = d.ok(&["-n", "-d", "drain", "deploy", changed.to_str().unwrap(), "--skip-drain"]);
    assert!(out.contains("skipping pre-stop and drain (--skip-drain)"), "{out}");
    d.running("drain", 1);
}

#[test]
fn create_swap_delete_never_puts_two_vms_on_one_address_and_moves_the_disk() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(45)), &testbed_release());
    let m = d.write(
        "csd.yml",
        &sleeper_manifest("csd", 3, "hello", "  vm_strategy: create-swap-delete", "  persistent_disk: 64", ""),
    );
    d.ok(&["-n", "-d", "csd", "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running("csd", 3));

    let plan = d.ok(&["-d", "csd", "recreate", "--dry-run"]);
    assert_eq!(
        plan.matches("recreate: recreate requested; create-swap-delete: the replacement VM takes").count(),
        3,
        "{plan}"
    );

    // Watch the CPI's VMs while the recreate runs: no address may be held by two VMs at once.
    let watch = AddressWatch::start(d.cpi_base());
    let out = d.ok(&["-n", "-d", "csd", "recreate"]);
    let (most, clashes) = watch.finish();
    assert!(clashes.is_empty(), "{clashes:?}");
    assert_eq!(most, 4, "one replacement VM at a time beside the three (max_in_flight 1)");
    assert_eq!(out.matches("the replacement VM took the old one's place").count(), 3, "{out}");

    let after = by_index(&d.running("csd", 3));
    assert_eq!(vm_addresses(&d.cpi_base()).len(), 3, "the old VMs are gone");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a["id"], b["id"], "same instance");
        assert_ne!(a["vm_cid"], b["vm_cid"], "a new VM");
        assert_ne!(a["ips"], b["ips"], "create-swap-delete gives the replacement a free address");
        assert_eq!(a["disk_cids"], b["disk_cids"], "the disk moved to the new VM");
        let disk = a["disk_cids"][0].as_str().unwrap();
        assert_eq!(starts_on_disk(&d, disk).len(), 2, "the data on the disk survived the swap");
    }
}

#[test]
fn restart_stop_start_and_hard_stop_act_on_the_instances_named() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(46)), &testbed_release());
    let m = d.write("cmd.yml", &sleeper_manifest("cmd", 2, "hello", "", "  persistent_disk: 64", ""));
    d.ok(&["-n", "-d", "cmd", "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running("cmd", 2));

    d.ok(&["-n", "-d", "cmd", "restart", "sleeper/0"]);
    let after = by_index(&d.running("cmd", 2));
    assert_ne!(pid(&after[0]), pid(&before[0]), "restarted");
    assert_eq!(after[0]["vm_cid"], before[0]["vm_cid"], "on the same VM");
    assert_eq!(pid(&after[1]), pid(&before[1]), "the other instance was left alone");

    let uuid = before[1]["id"].as_str().unwrap();
    d.ok(&["-n", "-d", "cmd", "stop", &format!("sleeper/{uuid}")]);
    let stopped = eventually("sleeper/1 stopped", Duration::from_secs(30), || {
        let l = by_index(&d.instances("cmd"));
        (l[1]["state"] == "stopped").then_some(l)
    });
    assert_eq!(stopped[0]["state"], "running");
    // A deploy updates a stopped instance but leaves it stopped.
    let changed = d.write("changed.yml", &std::fs::read_to_string(&m).unwrap().replace("hello", "bonjour"));
    d.ok(&["-n", "-d", "cmd", "deploy", changed.to_str().unwrap()]);
    assert_eq!(by_index(&d.instances("cmd"))[1]["state"], "stopped");
    d.ok(&["-n", "-d", "cmd", "start", "sleeper/1"]);
    d.running("cmd", 2);

    // stop --hard: the VM goes, the disk stays; start brings a new VM onto the same disk.
    let disk = before[1]["disk_cids"][0].as_str().unwrap().to_string();
    d.ok(&["-n", "-d", "cmd", "stop", "--hard", "sleeper/1"]);
    let hard = by_index(&d.instances("cmd"));
    assert_eq!(hard[1]["state"], "detached");
    assert!(hard[1]["vm_cid"].is_null());
    assert_eq!(hard[1]["disk_cids"][0], disk.as_str());
    assert!(d.run(&["-d", "cmd", "deploy", changed.to_str().unwrap(), "--dry-run"]).status.success());
    let plan = d.ok(&["-d", "cmd", "deploy", changed.to_str().unwrap(), "--dry-run"]);
    assert!(plan.contains("No changes."), "a detached instance stays detached through deploys: {plan}");
    d.ok(&["-n", "-d", "cmd", "start", "sleeper/1"]);
    let back = by_index(&d.running("cmd", 2));
    assert_ne!(back[1]["vm_cid"], before[1]["vm_cid"]);
    assert_eq!(back[1]["ips"], before[1]["ips"], "same address");
    assert_eq!(back[1]["disk_cids"][0], disk.as_str(), "same disk");
    let starts = starts_on_disk(&d, &disk);
    assert_eq!(starts.last().map(String::as_str), Some(format!("{uuid} bonjour").as_str()), "{starts:?}");

    // Naming an instance that does not exist changes nothing and says what is wrong.
    let err = d.fails(2, &["-n", "-d", "cmd", "restart", "sleeper/7"]);
    assert!(err.contains("no instance of the deployment matches `sleeper/7`"), "{err}");
    let err = d.fails(2, &["-n", "-d", "cmd", "restart", "sleeper/not a uuid"]);
    assert!(err.contains("is not `group`, `group/uuid` or `group/index`"), "{err}");
}

#[test]
fn a_dynamic_network_takes_the_address_the_cloud_gives_and_renders_with_it() {
    let d = TestDirector::start();
    let cloud = local_cloud_config(47).replace(
        "networks:\n",
        "networks:\n- name: dyn\n  type: dynamic\n  cloud_properties: {range: 127.0.48.0/24}\n",
    );
    d.prepare_with(&d.write("cloud.yml", &cloud), &testbed_release());
    let m =
        d.write("dyn.yml", &sleeper_manifest("dyn", 2, "hello", "", "", "").replace("{name: default}", "{name: dyn}"));
    let plan = d.ok(&["-d", "dyn", "deploy", m.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan.matches("(assigned by the cloud)").count(), 2, "{plan}");
    d.ok(&["-n", "-d", "dyn", "deploy", m.to_str().unwrap()]);
    let first = by_index(&d.running("dyn", 2));
    let address_of = |i: &serde_json::Value| {
        let vm = i["vm_cid"].as_str().unwrap();
        std::fs::read_to_string(d.cpi_base().join("vms").join(vm).join("root/jobs/sleeper/config/address")).unwrap()
    };
    let mut ips = Vec::new();
    for i in &first {
        let ip = i["ips"][0].as_str().unwrap().to_string();
        assert!(ip.starts_with("127.0.48."), "{ip}");
        assert_eq!(address_of(i).trim(), ip, "the job was rendered with the address the VM got");
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    assert!(d.ok(&["-n", "-d", "dyn", "deploy", m.to_str().unwrap()]).contains("No changes."), "addresses are kept");
    d.ok(&["-n", "-d", "dyn", "recreate", "sleeper/1"]);
    let again = by_index(&d.running("dyn", 2));
    assert_ne!(again[1]["vm_cid"], first[1]["vm_cid"]);
    assert_eq!(address_of(&again[1]).trim(), again[1]["ips"][0].as_str().unwrap());
    assert_ne!(again[1]["ips"], again[0]["ips"]);
}

#[test]
fn a_cancelled_deploy_stops_after_the_instance_in_flight_frees_its_lock_and_the_next_deploy_converges() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(49)), &testbed_release());
    let first = d.write("first.yml", &sleeper_manifest("cancel", 5, "hello", "", "", ""));
    d.ok(&["-n", "-d", "cancel", "deploy", first.to_str().unwrap()]);
    let before = by_index(&d.running("cancel", 5));

    // A change to every instance, one at a time (canaries 1, max_in_flight 1); cancelled as soon
    // as the canary's update begins.
    let changed = d.write("changed.yml", &sleeper_manifest("cancel", 5, "changed", "", "", ""));
    let mut deploy = d.command();
    deploy.args(["-n", "-d", "cancel", "deploy", changed.to_str().unwrap()]);
    let deploy = std::thread::spawn(move || deploy.output().expect("running bosun deploy"));
    let task = eventually("the deploy's task updating its canary", Duration::from_secs(60), || {
        let tasks = d.json(&["tasks"]);
        let t = tasks.as_array()?.iter().find(|t| t["state"] == "processing" && t["deployment"] == "cancel")?;
        let id = t["id"].as_u64()?;
        let page = d.json(&["task", &id.to_string()]);
        let updating = page["events"].as_array()?.iter().any(|e| e["stage"] == "update" && e["instance"].is_string());
        updating.then_some(id)
    });
    let out = d.ok(&["cancel-task", &task.to_string()]);
    assert!(out.contains(&format!("Task {task} is cancelling")), "{out}");
    // Asked twice: still cancelling, no error.
    d.ok(&["cancel-task", &task.to_string()]);

    let out = deploy.join().unwrap();
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("task {task} was cancelled")), "{err}");
    let view = d.json(&["task", &task.to_string()]);
    assert_eq!(view["task"]["state"], "cancelled", "{view}");
    assert_eq!(d.json(&["locks"]), serde_json::json!([]), "the lock went with the task");
    let gone = d.fails(2, &["cancel-task", &task.to_string()]);
    assert!(gone.contains(&format!("task {task} is already cancelled")), "{gone}");

    // The canary in flight finished its update; at most one more had begun when the request came.
    let after = by_index(&d.running("cancel", 5));
    let restarted = (0..5).filter(|&k| pid(&after[k]) != pid(&before[k])).count();
    assert!((1..=2).contains(&restarted), "{restarted} of 5 instances were updated");

    d.ok(&["-n", "-d", "cancel", "deploy", changed.to_str().unwrap()]);
    let converged = by_index(&d.running("cancel", 5));
    assert!((0..5).all(|k| pid(&converged[k]) != pid(&before[k])), "every instance updated");

    // What the operator looks at next: the VMs' vitals from their heartbeats, the details.
    let vms = d.json(&["-d", "cancel", "vms", "--vitals"]);
    assert_eq!(vms.as_array().unwrap().len(), 5, "{vms}");
    for vm in vms.as_array().unwrap() {
        let v = &vm["vitals"];
        assert!(v["uptime_secs"].as_u64().unwrap() > 0 && v["mem_kb"].as_u64().unwrap() > 0, "{vm}");
        let cpu = v["cpu"]["user"].as_f64().unwrap() + v["cpu"]["sys"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cpu), "{vm}");
        assert!(v["disk"]["system"].as_f64().is_some(), "{vm}");
    }
    let table = d.ok(&["-d", "cancel", "vms", "--vitals"]);
    assert!(table.contains("Load (1m, 5m, 15m)") && table.contains("Memory Usage") && table.contains("% ("), "{table}");
    let details = d.ok(&["-d", "cancel", "instances", "--details"]);
    assert!(details.contains("Agent ID") && details.contains("Generation"), "{details}");
    for i in &converged {
        assert!(details.contains(i["agent_id"].as_str().unwrap()), "{details}");
    }

    // A job process that dies is restarted by the agent's supervisor, and the timeline says so.
    let victim = &converged[2];
    let name = victim["instance"].as_str().unwrap().to_string();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid(victim) as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let event = eventually("a `process restarted` event", Duration::from_secs(30), || {
        let events = d.json(&["-d", "cancel", "events", "--instance", &name]);
        events.as_array()?.iter().find(|e| e["action"] == "process restarted").cloned()
    });
    let message = event["message"].as_str().unwrap();
    assert!(message.starts_with("sleeper/sleeper restarted by its supervisor (1 restart in all"), "{event}");
    assert!(message.contains("last exit: signal: 9"), "{event}");

    // `logs`: the job's log files, packed on the VM and brought back owner-only.
    let vm = victim["vm_cid"].as_str().unwrap();
    let log_dir = d.cpi_base().join("vms").join(vm).join("root/data/sys/log/sleeper");
    std::fs::write(log_dir.join("note.log"), "a line the operator wants\n").unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let index = format!("sleeper/{}", victim["index"]);
    let listed =
        d.json(&["-d", "cancel", "logs", &index, "--job", "sleeper", "--dir", out_dir.path().to_str().unwrap()]);
    let path = std::path::PathBuf::from(listed[0]["path"].as_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let listing = std::process::Command::new("tar").arg("-xzOf").arg(&path).arg("sleeper/note.log").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "a line the operator wants\n");
    let names = std::process::Command::new("tar").arg("-tzf").arg(&path).output().unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(names.contains("sleeper/sleeper.stderr.log"), "{names}");
    let unknown = d.fails(2, &["-d", "cancel", "logs", "sleeper/99"]);
    assert!(unknown.contains("has no instance `sleeper/99`"), "{unknown}");
}

/// `delete-stemcell`, `delete-release` and `clean-up [--all]` remove what nothing needs and refuse
/// what a deployment needs, naming it.
#[test]
fn uploads_nothing_needs_are_deleted_and_what_a_deployment_needs_is_refused() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(42)), &testbed_release());
    for v in ["2", "3"] {
        d.ok(&["upload-stemcell", stemcell(v).to_str().unwrap()]);
    }
    let fixture = repo().join("cli/tests/fixtures/testbed");
    for v in ["7", "8"] {
        let tarball = d.dir.path().join(format!("testbed-{v}.tgz"));
        d.ok(&["create-release", fixture.to_str().unwrap(), "--version", v, "--tarball", tarball.to_str().unwrap()]);
        d.ok(&["upload-release", tarball.to_str().unwrap()]);
    }
    let stemcells = d.json(&["stemcells"]);
    let cell = stemcells[0]["name"].as_str().unwrap().to_string();
    let versions = |what: &str| -> Vec<String> {
        let mut v: Vec<String> =
            d.json(&[what]).as_array().unwrap().iter().map(|x| x["version"].as_str().unwrap().to_string()).collect();
        v.sort();
        v
    };
    let dev = versions("releases").into_iter().find(|v| v.contains("+dev")).expect("the dev release");
    // Two instances with disks, then one: an orphaned disk for `clean-up --all`.
    let two = d.write("two.yml", &sleeper_manifest("clean", 2, "hello", "", "  persistent_disk: 16", ""));
    d.ok(&["-n", "-d", "clean", "deploy", two.to_str().unwrap()]);
    let one = d.write("one.yml", &sleeper_manifest("clean", 1, "hello", "", "  persistent_disk: 16", ""));
    d.ok(&["-n", "-d", "clean", "deploy", one.to_str().unwrap()]);
    assert_eq!(d.json(&["disks", "--orphaned"]).as_array().unwrap().len(), 1);
    // The instance the scale-in deleted was the task's, not the health monitor's business.
    let events = d.json(&["-d", "clean", "events", "--limit", "1000"]);
    let judged: Vec<&serde_json::Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "missing" || e["action"] == "unresponsive")
        .collect();
    assert!(judged.is_empty(), "{judged:?}");

    // The deployment runs on stemcell 3 and release 8 (`latest` of each).
    let refused = d.fails(2, &["-n", "delete-stemcell", &format!("{cell}/3")]);
    assert!(refused.contains(&format!("stemcell {cell}/3 is used by deployment(s) clean")), "{refused}");
    let refused = d.fails(2, &["-n", "delete-release", "testbed/8"]);
    assert!(refused.contains("release testbed/8 is used by deployment(s) clean"), "{refused}");
    let refused = d.fails(2, &["-n", "delete-release", "testbed"]);
    assert!(refused.contains("release testbed/8 is used"), "every version at once: {refused}");
    let wrong = d.fails(2, &["-n", "delete-stemcell", "no-version"]);
    assert!(wrong.contains("write it as NAME/VERSION"), "{wrong}");
    let missing = d.fails(2, &["-n", "delete-stemcell", &format!("{cell}/99")]);
    assert!(missing.contains("is not uploaded"), "{missing}");

    let out = d.ok(&["-n", "delete-stemcell", &format!("{cell}/1")]);
    assert!(out.contains(&format!("deleted releases: none; stemcells: {cell}/1")), "{out}");
    assert_eq!(versions("stemcells"), ["2", "3"]);
    d.ok(&["-n", "delete-release", "testbed/7"]);
    assert_eq!(versions("releases"), [dev.clone(), "8".to_string()]);

    // Two versions of each are left: `clean-up` keeps the newest two; `--all` takes every unused
    // one (the dev release's jobs are release 8's too, so no instance needs it) and the disk.
    let out = d.ok(&["-n", "clean-up"]);
    assert!(out.contains("deleted releases: none; stemcells: none"), "{out}");
    let out = d.ok(&["-n", "clean-up", "--all"]);
    assert!(out.contains(&format!("deleted releases: testbed/{dev}; stemcells: {cell}/2")), "{out}");
    assert!(out.contains("1 orphaned disk(s)"), "{out}");
    assert_eq!(versions("stemcells"), ["3"]);
    assert_eq!(versions("releases"), ["8"]);
    assert_eq!(d.json(&["disks", "--orphaned"]), serde_json::json!([]));

    // What stays still serves: a recreate renders and starts from release 8 on stemcell 3.
    d.ok(&["-n", "-d", "clean", "recreate"]);
    d.running("clean", 1);
}

/// What a deploy shows while it runs: on a terminal, an upload's bytes and rate, a bar per
/// instance group and a line per instance in flight (its step), then the durations; without a
/// terminal the same events as lines; with `--json`, one JSON object per line.
#[test]
fn progress_is_bars_on_a_terminal_lines_without_one_and_json_objects_on_request() {
    let d = TestDirector::start();
    d.ok(&["update-cloud-config", d.write("cloud.yml", &local_cloud_config(79)).to_str().unwrap()]);
    d.ok(&["upload-stemcell", stemcell("1").to_str().unwrap()]);
    let m = d.write("m.yml", &sleeper_manifest("progress", 3, "hello", "", "", ""));
    let release = testbed_release();
    let t = Terminal::start(
        &d,
        "progress",
        &format!(
            "'{0}' upload-release '{1}' && '{0}' -n -d progress deploy '{2}'",
            bosun_bin(),
            release.display(),
            m.display()
        ),
    );
    // Every line seen on the screen while it ran (bars are redrawn in place).
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let last = loop {
        let screen = t.screen();
        seen.extend(screen.lines().map(|l| l.trim_end().to_string()));
        if screen.contains("bosun exited") {
            break screen;
        }
        assert!(Instant::now() < deadline, "the deploy did not end; the screen:\n{screen}");
        std::thread::park_timeout(Duration::from_millis(50));
    };
    seen.extend(t.history().lines().map(|l| l.trim_end().to_string()));
    let all: Vec<&String> = seen.iter().collect();
    assert!(last.contains("bosun exited 0"), "{last}");
    let has = |what: &str, test: &dyn Fn(&str) -> bool| {
        assert!(
            all.iter().any(|l| test(l)),
            "no {what} among the lines seen:\n{}",
            all.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
        );
    };
    has("upload bar with bytes and rate", &|l| l.starts_with("uploading ") && l.contains("B/s") && l.contains('['));
    has("instance group bar", &|l| l.trim_start().starts_with("sleeper [") && l.contains("/3 updated"));
    has("canary in flight", &|l| l.contains("sleeper/") && l.contains("(canary)") && !l.contains(" | "));
    has("event line", &|l| l.contains(" | update      | sleeper/") && l.ends_with(": running"));
    // The bars are gone at the end; the durations stay.
    assert!(!last.contains("/3 updated"), "{last}");
    assert!(last.contains("Durations:") && last.contains(" (canary)"), "{last}");
    assert_eq!(
        last.lines().filter(|l| l.starts_with("  sleeper/") && l.trim_end().ends_with(" s")).count(),
        3,
        "{last}"
    );
    assert!(last.lines().any(|l| l.starts_with("Task ") && l.contains(" done: ")), "{last}");

    // Without a terminal: the lines and the durations. With --json: objects, one per line.
    let out = d.ok(&["-n", "-d", "progress", "recreate"]);
    assert!(out.contains(" | update      | sleeper/") && out.contains("Durations:"), "{out}");
    let o = d.run(&["-n", "-d", "progress", "deploy", m.to_str().unwrap(), "--recreate", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    assert!(lines[0].get("changes").is_some(), "the plan first: {}", lines[0]);
    assert!(lines[1..lines.len() - 1].iter().all(|e| e.get("stage").is_some() && e.get("time_ms").is_some()));
    assert!(lines[1..].iter().filter(|e| e["message"] == "running").count() == 3);
    assert_eq!(lines.last().unwrap()["state"], "done", "the task last");
}
