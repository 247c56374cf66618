//! Wrong or hostile input gets a clear error naming what is wrong and where, a non-zero exit, and
//! no change to state: after each case the deployments and instances are as they were.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

const CLOUD: &str = r#"
azs: [{name: z1}]
vm_types: [{name: default}]
networks:
- name: default
  subnets:
  - range: 127.0.20.0/24
    gateway: 127.0.20.1
    reserved: [127.0.20.1 - 127.0.20.9]
    static: [127.0.20.10 - 127.0.20.19]
    azs: [z1]
- name: tiny
  subnets:
  - range: 127.0.21.0/30
    azs: [z1]
compilation: {workers: 1, network: default, az: z1, vm_type: default}
"#;

const MANIFEST: &str = r#"
name: guarded
releases: [{name: kubo, version: latest}]
stemcells: [{alias: default, os: local, version: latest}]
update: {canaries: 1, max_in_flight: 1, canary_watch_time: 1000-60000, update_watch_time: 1000-60000}
instance_groups:
- name: etcd
  azs: [z1]
  instances: 1
  vm_type: default
  stemcell: default
  persistent_disk: 64
  networks: [{name: default, static_ips: [127.0.20.10]}]
  jobs:
  - name: etcd
    release: kubo
    properties:
      etcd: {cluster_token: guarded}
"#;

/// (name, manifest text, extra arguments, exit code, what the error must say).
type Case<'a> = (&'a str, String, Vec<&'a str>, i32, Vec<&'a str>);

struct Snapshot(serde_json::Value, serde_json::Value);

fn snapshot(d: &TestDirector) -> Snapshot {
    let mut instances = d.json(&["-d", "guarded", "instances"]);
    // Heartbeat-driven fields may move; identity and placement must not.
    for i in instances.as_array_mut().unwrap() {
        i.as_object_mut().unwrap().remove("state");
    }
    Snapshot(d.json(&["deployments"]), instances)
}

fn assert_unchanged(d: &TestDirector, before: &Snapshot, case: &str) {
    let now = snapshot(d);
    assert_eq!(now.0, before.0, "{case}: deployments changed");
    assert_eq!(now.1, before.1, "{case}: instances changed");
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let d = TestDirector::start();
    let cloud = d.write("cloud.yml", CLOUD);
    d.prepare(&cloud);
    let good = d.write("good.yml", MANIFEST);
    d.ok(&["-n", "deploy", good.to_str().unwrap()]);
    eventually("the guarded instance running", Duration::from_secs(30), || {
        (d.json(&["-d", "guarded", "instances"])[0]["state"] == "running").then_some(())
    });
    // The persistent disk was created, attached and mounted at the store: etcd's data is on it.
    let disks = d.json(&["-d", "guarded", "instances"])[0]["disk_cids"].clone();
    let disk = disks[0].as_str().expect("the instance has a persistent disk").to_string();
    eventually("etcd's data on the persistent disk", Duration::from_secs(30), || {
        d.cpi_base().join("disks").join(&disk).join("data/etcd/member").is_dir().then_some(())
    });
    let before = snapshot(&d);
    let tasks_before = d.json(&["tasks"]).as_array().unwrap().len();

    let bad = |from: &str, to: &str| MANIFEST.replacen(from, to, 1);
    let cases: Vec<Case> = vec![
        (
            "syntax error",
            "name: guarded\ninstance_groups: [\n  - name: x\n".into(),
            vec![],
            2,
            vec!["bad.yml: YAML syntax error at line"],
        ),
        (
            "unknown key",
            bad("  instances: 1", "  instances: 1\n  colour: red"),
            vec![],
            2,
            vec!["/instance_groups/0", "unknown field `colour`"],
        ),
        (
            "wrong type",
            bad("instances: 1", "instances: many"),
            vec![],
            2,
            vec!["manifest: /instance_groups/0/instances: invalid type: string \"many\""],
        ),
        (
            "unknown vm_type",
            bad("vm_type: default", "vm_type: huge"),
            vec![],
            2,
            vec!["/instance_groups/0/vm_type: unknown vm_type `huge`"],
        ),
        (
            "unknown network",
            bad("{name: default, static_ips", "{name: elsewhere, static_ips"),
            vec![],
            2,
            vec!["/instance_groups/0/networks/0/name: unknown network `elsewhere`"],
        ),
        ("unknown AZ", bad("azs: [z1]", "azs: [z7]"), vec![], 2, vec!["/instance_groups/0/azs/0: unknown AZ `z7`"]),
        (
            "unknown stemcell",
            bad("stemcell: default", "stemcell: centos"),
            vec![],
            2,
            vec!["/instance_groups/0/stemcell: unknown stemcell alias `centos`"],
        ),
        (
            "stemcell not uploaded",
            bad("os: local, version: latest", "os: local, version: '99'"),
            vec![],
            2,
            vec!["/stemcells/0: no uploaded stemcell matches os `local` version `99`"],
        ),
        (
            "unknown release",
            bad("release: kubo\n", "release: cf\n"),
            vec![],
            2,
            vec!["/instance_groups/0/jobs/0/release: release `cf` is not listed"],
        ),
        (
            "release not uploaded",
            bad("{name: kubo, version: latest}", "{name: kubo, version: '42'}"),
            vec![],
            2,
            vec!["/releases/0: release `kubo/42` is not uploaded"],
        ),
        (
            "malformed link wiring",
            bad("    release: kubo\n", "    release: kubo\n    consumes: {etcd: 5}\n"),
            vec![],
            2,
            vec!["/instance_groups/0/jobs/0/consumes", "link `etcd`: invalid type: integer `5`"],
        ),
        (
            "unknown job",
            bad("  - name: etcd\n", "  - name: kube-dns\n"),
            vec![],
            2,
            vec!["/instance_groups/0/jobs/0/name: release `kubo/", "has no job `kube-dns`"],
        ),
        (
            "more instances than static IPs",
            bad("instances: 1", "instances: 2"),
            vec![],
            2,
            vec!["instance group `etcd` has 2 instances but 1 static IPs on network `default`"],
        ),
        (
            "static IP outside the subnet",
            bad("static_ips: [127.0.20.10]", "static_ips: [127.0.99.10]"),
            vec![],
            2,
            vec!["static IP 127.0.99.10 is in no subnet of network `default`"],
        ),
        (
            "static IP in the reserved range",
            bad("static_ips: [127.0.20.10]", "static_ips: [127.0.20.5]"),
            vec![],
            2,
            vec!["static IP 127.0.20.5 is in the reserved range of network `default`"],
        ),
        (
            "network exhausted",
            bad("instances: 1", "instances: 3").replace("{name: default, static_ips: [127.0.20.10]}", "{name: tiny}"),
            vec![],
            2,
            vec!["network `tiny` has no free address left for instance group `etcd`"],
        ),
        (
            "missing variable",
            bad("cluster_token: guarded", "cluster_token: ((token))"),
            vec![],
            2,
            vec!["missing variable ((token)) at /instance_groups/0/jobs/0/properties/etcd/cluster_token"],
        ),
        (
            "ops-file that does not exist",
            MANIFEST.to_string(),
            vec!["-o", "/nonexistent/ops.yml"],
            2,
            vec!["ops-file /nonexistent/ops.yml"],
        ),
    ];
    for (case, text, extra, code, wants) in &cases {
        let path = d.write("bad.yml", text);
        let mut args = vec!["-n", "deploy", path.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let err = d.fails(*code, &args);
        for w in wants {
            assert!(err.contains(w), "{case}: error should contain {w:?}; got:\n{err}");
        }
        assert_unchanged(&d, &before, case);
    }

    // An ops-file whose path does not exist in the manifest.
    let ops = d.write("ops.yml", "- type: replace\n  path: /instance_groups/name=kubelet/instances\n  value: 3\n");
    let err = d.fails(2, &["-n", "deploy", good.to_str().unwrap(), "-o", ops.to_str().unwrap()]);
    assert!(err.contains("ops.yml: operation 0 (replace /instance_groups/name=kubelet/instances): Expected to find exactly one matching array item for path '/instance_groups/name=kubelet' but found 0"), "{err}");
    assert_unchanged(&d, &before, "ops-file path missing from the manifest");

    // A cloud-config with an error is refused by the CLI and by the director alike.
    let bad_cloud =
        d.write("bad-cloud.yml", &CLOUD.replace("static: [127.0.20.10 - 127.0.20.19]", "static: [127.0.30.10]"));
    let err = d.fails(2, &["update-cloud-config", bad_cloud.to_str().unwrap()]);
    assert!(
        err.contains("/networks/0/subnets/0/static/0: `127.0.30.10` is outside the subnet range 127.0.20.0/24"),
        "{err}"
    );
    let stored: serde_yaml::Value = serde_yaml::from_str(&d.ok(&["cloud-config"])).unwrap();
    assert_eq!(stored, serde_yaml::from_str::<serde_yaml::Value>(CLOUD).unwrap(), "the cloud-config is unchanged");

    // A release tarball whose content does not match its digests.
    let tampered = tamper_release(&d);
    let err = d.fails(1, &["upload-release", tampered.to_str().unwrap()]);
    assert!(err.contains("job `etcd`: digest mismatch (release.MF says sha256:"), "{err}");
    let releases = d.json(&["releases"]);
    assert_eq!(releases.as_array().unwrap().len(), 1, "the tampered release was not recorded: {releases}");
    assert_unchanged(&d, &before, "tampered release");

    // Requests without a token, or with a wrong one.
    let mut no_token = d.command();
    no_token.env_remove("BOSUN_TOKEN").args(["deployments"]);
    let o = no_token.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("a target needs all of BOSUN_DIRECTOR, BOSUN_CA_CERT and BOSUN_TOKEN"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut wrong = d.command();
    wrong.env("BOSUN_TOKEN", "0000").args(["-n", "delete-deployment", "-d", "guarded"]);
    let o = wrong.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the token is not valid for this director"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let raw = raw_https_status(&d, None);
    assert!(raw.starts_with("HTTP/1.1 401") && raw.contains("\"code\":\"unauthorized\""), "{raw}");
    assert_unchanged(&d, &before, "bad tokens");

    // An agent presenting another agent's id is turned away; its own id is welcome.
    impersonate_agent(&d);
    assert_unchanged(&d, &before, "agent impersonation");

    let tasks_after = d.json(&["tasks"]).as_array().unwrap().len();
    assert_eq!(tasks_after, tasks_before + 1, "only the tampered upload made a task; bad deploys made none");

    // A deploy whose job cannot start fails at its canary: exit 1, the instance and cause named.
    let broken = MANIFEST
        .replace("etcd: {cluster_token: guarded}", "etcd: {cluster_token: guarded, heartbeat_interval: oops}")
        .replace("canary_watch_time: 1000-60000", "canary_watch_time: 1000-15000");
    let broken = d.write("broken.yml", &broken);
    let running = d
        .command()
        .args(["-n", "deploy", broken.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While it holds the deployment's lock, a second deploy waits 10 s for it (as BOSH's director
    // does), then fails naming the holder.
    let holder = eventually("the broken deploy's task to run", Duration::from_secs(30), || {
        let t = d.json(&["tasks", "--recent", "1"]);
        (t[0]["state"] == "processing" && t[0]["deployment"] == "guarded").then(|| t[0]["id"].as_u64().unwrap())
    });
    let err = d.fails(2, &["-n", "deploy", good.to_str().unwrap()]);
    assert!(err.contains(&format!("deployment `guarded` is locked by task {holder} (waited 10 s for it)")), "{err}");
    let out = running.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(err.contains("canary update (job `etcd`: property `etcd.heartbeat_interval` changed)"), "{err}");
    // Whichever the watch sees first: the watch time running out, or the fifth restart (on a
    // loaded machine the restarts' backoff can outlast the watch, or not).
    assert!(
        (err.contains("starting jobs: not running after 15000 ms: etcd/etcd is Failing after ")
            || err.contains("starting jobs: keeps exiting (")
                && err.contains(" ms into the watch): etcd/etcd is Failing after 5 restarts"))
            && err.contains(" (last exit: exit status: "),
        "{err}"
    );
    let tasks = d.json(&["tasks", "--recent", "1"]);
    assert_eq!(tasks[0]["state"], "error", "{tasks}");
    // The agent keeps restarting the process with backoff and reports it failing.
    eventually("the instance reported failing with restarts", Duration::from_secs(30), || {
        let i = d.json(&["-d", "guarded", "instances", "--ps"]);
        (i[0]["state"] == "failing" && i[0]["processes"][0]["restarts"].as_u64().unwrap_or(0) >= 2).then_some(())
    });
    d.ok(&["-n", "-d", "guarded", "delete-deployment"]);
    assert!(d.vm_processes().is_empty(), "VM processes left: {:?}", d.vm_processes());
    assert!(!d.cpi_base().join("disks").join(&disk).exists(), "the deployment's disk was deleted with it");
}

/// Rebuilds the kubo tarball with one byte of a job's archive changed, release.MF untouched.
fn tamper_release(d: &TestDirector) -> std::path::PathBuf {
    use std::io::Read;
    let bytes = std::fs::read(kubo_release()).unwrap();
    let mut files = std::collections::BTreeMap::new();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        files.insert(path, (0o644, buf));
    }
    let job = files.get_mut("jobs/etcd.tgz").expect("the release has the etcd job");
    job.1.push(0);
    let out = d.dir.path().join("tampered.tgz");
    std::fs::write(&out, bosun_types::tarball::deterministic_tgz(&files).unwrap()).unwrap();
    out
}

/// A raw HTTPS request to the API, with or without a bearer token; the raw answer.
fn raw_https_status(d: &TestDirector, token: Option<&str>) -> String {
    use std::io::Read;
    let url = d.var("BOSUN_DIRECTOR");
    let addr = url.trim_start_matches("https://").to_string();
    let ca = std::fs::read_to_string(d.var("BOSUN_CA_CERT")).unwrap();
    let conn = rustls::ClientConnection::new(tls_client(&ca, None), "bosun-director".try_into().unwrap()).unwrap();
    let sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(tls, "GET /v1/deployments HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out);
    out
}

/// Connects to the agent listener with one VM's credentials and says hello as `claimed`; returns
/// the director's first line, if any.
fn hello_as(addr: &str, settings: &bosun_types::protocol::AgentSettings, claimed: &str) -> Option<String> {
    let ep = &settings.director;
    let conn = rustls::ClientConnection::new(
        tls_client(&ep.ca_cert, Some((&ep.client_cert, &ep.client_key))),
        "bosun-director".try_into().unwrap(),
    )
    .unwrap();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    writeln!(
        tls,
        r#"{{"type":"hello","agent_id":"{claimed}","vm_cid":"{}","agent_version":"test","applied_generation":0}}"#,
        settings.vm_cid
    )
    .ok()?;
    let mut line = String::new();
    match BufReader::new(tls).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line),
        _ => None,
    }
}

fn impersonate_agent(d: &TestDirector) {
    // Two agents: the guarded instance's, and a spare VM's made for this check.
    let vms: Vec<_> = std::fs::read_dir(d.cpi_base().join("vms")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(vms.len(), 1);
    let mine: bosun_types::protocol::AgentSettings =
        serde_json::from_slice(&std::fs::read(vms[0].join("settings.json")).unwrap()).unwrap();
    let instances = d.json(&["-d", "guarded", "instances"]);
    let victim = instances[0]["agent_id"].as_str().unwrap().to_string();
    assert_eq!(victim, mine.agent_id);
    let addr = mine.director.address.clone();
    let other_id = "agent-00000000-0000-0000-0000-000000000000";
    assert!(hello_as(&addr, &mine, other_id).is_none(), "an unknown agent id was welcomed");
    // The director's record for the instance is untouched and it still answers as itself.
    let welcome = hello_as(&addr, &mine, &victim).expect("an agent's own id is welcome");
    assert!(welcome.contains("\"welcome\""), "{welcome}");
    // Forge a second agent record by deploying nothing: use a certificate the director never
    // issued (a CA of our own) — the TLS layer refuses it outright.
    let rogue_ca = bosun_types::pki::CertAuthority::generate("rogue", None, 1).unwrap();
    let rogue = rogue_ca
        .issue(
            &victim,
            std::slice::from_ref(&victim),
            bosun_types::pki::LeafUsage { server: false, client: true },
            1,
            false,
        )
        .unwrap();
    let mut forged = mine.clone();
    forged.director.client_cert = rogue.cert_pem;
    forged.director.client_key = rogue.key_pem;
    assert!(hello_as(&addr, &forged, &victim).is_none(), "a certificate the director did not issue was accepted");
    // The real agent reconnects on its own after our test connection displaced it.
    eventually("the real agent to reconnect", Duration::from_secs(30), || {
        (d.json(&["-d", "guarded", "instances"])[0]["state"] == "running").then_some(())
    });
}
