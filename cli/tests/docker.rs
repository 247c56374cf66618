#![cfg(feature = "docker")]
//! The Docker CPI against the Docker Engine on this machine, with a real Debian stemcell image
//! (mmdebstrap) around the agent under test: the shared CPI conformance suite, and the cluster
//! lifecycle on containers. Skipped when the engine is not reachable, unless
//! `BOSUN_REQUIRE_DOCKER=1` (which `.ci/run` sets).

mod common;

use bosun_cpi::conformance::{self, ConformanceEnv, CpiFactory};
use bosun_cpi::Cpi;
use bosun_cpi_docker::{DockerCpi, DockerCpiConfig};
use bosun_cpi_external::{ExternalCpi, ExternalCpiConfig};
use bosun_types::protocol::NetworkSettings;
use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One Docker test at a time: on two cores, two clusters of containers side by side only measure
/// the machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn network(ip: &str) -> BTreeMap<String, NetworkSettings> {
    let mut m = BTreeMap::new();
    m.insert(
        "conformance".to_string(),
        NetworkSettings {
            kind: bosun_types::cloud_config::NetworkType::Manual,
            ip: ip.into(),
            netmask: "255.255.255.0".into(),
            gateway: Some("10.247.0.1".into()),
            default: vec!["dns".into(), "gateway".into()],
            dns: vec![],
            cloud_properties: serde_json::json!({"name": "bosun-test-conformance"}),
        },
    );
    m
}

#[test]
fn docker_cpi_passes_the_conformance_suite() {
    if !docker_or_skip("docker_cpi_passes_the_conformance_suite") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let _leftovers = DockerLeftovers {
        label: "bosun.tag.director=conformance".into(),
        networks: vec!["bosun-test-conformance".into()],
        cpi_state: vec![dir.path().join("cpi"), dir.path().join("cpi-external")],
        images: vec![],
        director_pid: None,
    };
    let tarball = docker_stemcell("1");
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(tarball).unwrap()));
    a.unpack(dir.path().join("stemcell")).unwrap();
    let env = ConformanceEnv {
        stemcell_image: dir.path().join("stemcell/image"),
        stemcell_cloud_properties: serde_json::json!({}),
        vm_cloud_properties: serde_json::json!({"cpus": 0.5, "memory": 256}),
        networks: [network("10.247.0.10"), network("10.247.0.11")],
    };
    let state = dir.path().join("cpi");
    let direct: CpiFactory = Arc::new(move || {
        // Nothing listens there: the agents keep retrying, which is all these checks need.
        let config = DockerCpiConfig { socket: None, agent_director_address: "127.0.0.1:9".into() };
        Arc::new(DockerCpi::new(config, &state).expect("docker CPI")) as Arc<dyn bosun_cpi::Cpi>
    });
    // The same CPI behind BOSH's external protocol: every call a `bosun cpi docker` process.
    let config_file = dir.path().join("docker-cpi.yml");
    std::fs::write(&config_file, "agent_director_address: 127.0.0.1:9\n").unwrap();
    let external_state = dir.path().join("cpi-external");
    std::fs::create_dir_all(&external_state).unwrap();
    let external = ExternalCpiConfig {
        exec_path: bosun_bin().into(),
        args: ["cpi", "docker", "--dir", path(&external_state), "--config", path(&config_file)]
            .map(String::from)
            .to_vec(),
        properties: Default::default(),
        env: Default::default(),
        timeout_seconds: 300,
    };
    let external: CpiFactory = Arc::new(move || {
        let cpi = ExternalCpi::new(external.clone()).expect("external CPI");
        cpi.set_director_uuid("conformance");
        Arc::new(cpi) as Arc<dyn bosun_cpi::Cpi>
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for (name, make) in [("docker", direct), ("external(bosun cpi docker)", external)] {
        let started = std::time::Instant::now();
        rt.block_on(async {
            let fail = |e: String| panic!("{name}: {e}");
            conformance::info(&*make()).await.unwrap_or_else(fail);
            conformance::stemcell_lifecycle(&*make(), &env).await.unwrap_or_else(fail);
            conformance::vm_lifecycle(&*make(), &env).await.unwrap_or_else(fail);
            conformance::create_vm_with_unknown_stemcell_fails(&*make(), &env).await.unwrap_or_else(fail);
            conformance::disk_lifecycle(&*make(), &env).await.unwrap_or_else(fail);
            conformance::survives_director_restart(&make, &env).await.unwrap_or_else(fail);
        });
        println!("{name}: the conformance suite passed in {:.1} s", started.elapsed().as_secs_f64());
    }
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Sends a command to the Docker CLI that must succeed.
fn docker(args: &[&str]) -> String {
    let o = std::process::Command::new("docker").args(args).output().expect("docker");
    assert!(o.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn etcd_on_containers_survives_kills_disconnects_and_a_stemcell_upgrade() {
    if !docker_or_skip("etcd_on_containers_survives_kills_disconnects_and_a_stemcell_upgrade") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = "bosun-test-lifecycle";
    let d = TestDirector::start_with(&["--cpi", "docker", "--agent-listen", "0.0.0.0"], &[]);
    let uuid = d.json(&["target"])["uuid"].as_str().unwrap().to_string();
    let mut leftovers = DockerLeftovers {
        label: format!("bosun.tag.director_uuid={uuid}"),
        networks: vec![net.into()],
        cpi_state: vec![d.state_dir().with_file_name("state-cpi-docker")],
        images: vec![],
        director_pid: d.pid(),
    };
    let cloud = std::fs::read_to_string(repo().join("manifests/cloud-config/docker.yml"))
        .unwrap()
        .replace("10.245.0.", "10.248.0.")
        .replace("bosun-default", net);
    d.ok(&["update-cloud-config", d.write("cloud.yml", &cloud).to_str().unwrap()]);
    d.ok(&["upload-stemcell", docker_stemcell("1").to_str().unwrap()]);
    d.ok(&["upload-release", kubo_release().to_str().unwrap()]);
    let stemcell_images = |d: &TestDirector| -> Vec<String> {
        d.json(&["stemcells"]).as_array().unwrap().iter().map(|s| s["cid"].as_str().unwrap().to_string()).collect()
    };
    leftovers.images = stemcell_images(&d);
    let ops = d.write(
        "ops.yml",
        &std::fs::read_to_string(repo().join("manifests/ops/docker.yml")).unwrap().replace("10.245.0.", "10.248.0."),
    );
    let deploy = |extra: &[&str]| {
        let mut args =
            vec!["-n", "-d", "quickstart", "deploy", "manifests/quickstart.yml", "-o", ops.to_str().unwrap()];
        args.extend_from_slice(extra);
        d.ok(&args)
    };
    deploy(&[]);
    let ips = ["10.248.0.10", "10.248.0.11", "10.248.0.12"];
    let first = by_index(&d.running("quickstart", 3));
    for ip in ips {
        eventually(
            &format!("etcd on container {ip} to list three members"),
            std::time::Duration::from_secs(60),
            || etcd_members(ip).filter(|m| m.len() == 3 && m.iter().all(|(n, u)| !n.is_empty() && !u.is_empty())),
        );
    }
    assert_eq!(leftovers.containers().len(), 3, "three containers");
    assert!(etcd_put(ips[0], "ZG9ja2Vy", "b2s="), "a write before the kill");

    // docker kill: resurrected with the same address and volume; the data is there.
    let killed_at = std::time::Instant::now();
    docker(&["kill", first[1]["vm_cid"].as_str().unwrap()]);
    let back = eventually("the killed container's instance running again", std::time::Duration::from_secs(120), || {
        let i = by_index(&d.instances("quickstart"))[1].clone();
        (i["vm_cid"] != first[1]["vm_cid"] && i["state"] == "running").then_some(i)
    });
    println!("docker kill → running: {:.1} s", killed_at.elapsed().as_secs_f64());
    assert_eq!(back["ips"], first[1]["ips"]);
    assert_eq!(back["disk_cids"], first[1]["disk_cids"], "the same volume");
    eventually("the data on the resurrected member", std::time::Duration::from_secs(60), || {
        (etcd_get(ips[1], "ZG9ja2Vy").flatten().as_deref() == Some("b2s=")).then_some(())
    });

    // docker network disconnect: the agent goes silent; its container is deleted before the
    // replacement starts (one address, one container).
    let cut = by_index(&d.instances("quickstart"))[2].clone();
    let cut_vm = cut["vm_cid"].as_str().unwrap().to_string();
    docker(&["network", "disconnect", "--force", net, &cut_vm]);
    let replaced = eventually("the cut-off instance replaced", std::time::Duration::from_secs(120), || {
        let i = by_index(&d.instances("quickstart"))[2].clone();
        (i["vm_cid"] != cut["vm_cid"] && i["state"] == "running").then_some(i)
    });
    assert_eq!(replaced["ips"], cut["ips"]);
    assert!(
        docker_lines(&["ps", "-aq", "--filter", &format!("name={cut_vm}")]).is_empty(),
        "the old container is gone"
    );
    let evs = d.json(&["-d", "quickstart", "events", "--limit", "500"]);
    let evs = evs.as_array().unwrap();
    assert!(evs.iter().any(|e| e["action"] == "unresponsive" && e["object_name"] == cut["instance"]), "{evs:?}");
    // Fenced: the old container was deleted before the replacement was created.
    let id_of = |action: &str, cid: &str| {
        evs.iter()
            .find(|e| e["action"] == action && e["message"].as_str().is_some_and(|m| m.contains(cid)))
            .and_then(|e| e["id"].as_u64())
            .unwrap_or_else(|| panic!("no {action} event for {cid}: {evs:?}"))
    };
    assert!(
        id_of("delete_vm", &cut_vm) < id_of("create_vm", replaced["vm_cid"].as_str().unwrap()),
        "the old container went first"
    );
    for ip in ips {
        eventually(&format!("etcd healthy on {ip}"), std::time::Duration::from_secs(60), || {
            etcd_members(ip).filter(|m| m.len() == 3 && m.iter().all(|(n, u)| !n.is_empty() && !u.is_empty()))
        });
    }

    // A rolling stemcell upgrade under a client writing every 50 ms.
    let writer = EtcdWriter::start(&ips);
    d.ok(&["upload-stemcell", docker_stemcell("2").to_str().unwrap()]);
    leftovers.images = stemcell_images(&d);
    deploy(&[]);
    writer.finish().assert_nothing_lost(ips[0]);
    for i in d.running("quickstart", 3) {
        assert_eq!(i["stemcell"], serde_json::json!({"name": "bosun-docker", "version": "2"}), "{i}");
    }

    // Deleting the deployment leaves no container, volume or network of it.
    let volumes_before: Vec<String> = by_index(&d.instances("quickstart"))
        .iter()
        .flat_map(|i| {
            i["disk_cids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    d.ok(&["-n", "-d", "quickstart", "delete-deployment"]);
    assert!(leftovers.containers().is_empty(), "containers left");
    let volumes = docker_lines(&["volume", "ls", "-q"]);
    for v in &volumes_before {
        assert!(!volumes.contains(v), "volume {v} left");
    }
    assert!(docker_lines(&["network", "ls", "-q", "--filter", &format!("name={net}")]).is_empty(), "network left");
}
