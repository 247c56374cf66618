//! The Docker CPI against the Docker Engine on this machine, with a real Debian stemcell image
//! (debootstrap) around the agent under test: the shared CPI conformance suite, and the cluster
//! lifecycle on containers. Skipped when the engine is not reachable, unless
//! `BOSUN_REQUIRE_DOCKER=1` (which `.ci/run` sets).

mod common;

use bosun_cpi::conformance::{self, ConformanceEnv, CpiFactory};
use bosun_cpi::docker::{DockerCpi, DockerCpiConfig};
use bosun_types::protocol::NetworkSettings;
use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;

fn network(ip: &str) -> BTreeMap<String, NetworkSettings> {
    let mut m = BTreeMap::new();
    m.insert(
        "conformance".to_string(),
        NetworkSettings {
            kind: "manual".into(),
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

#[tokio::test]
async fn docker_cpi_passes_the_conformance_suite() {
    if !docker_or_skip("docker_cpi_passes_the_conformance_suite") {
        return;
    }
    let _leftovers =
        DockerLeftovers { label: "bosun.tag.director=conformance".into(), networks: vec!["bosun-test-conformance".into()] };
    let dir = tempfile::tempdir().unwrap();
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
    let make: CpiFactory = Arc::new(move || {
        // Nothing listens there: the agents keep retrying, which is all these checks need.
        let config = DockerCpiConfig { socket: None, agent_director_address: "127.0.0.1:9".into() };
        Arc::new(DockerCpi::new(config, &state).expect("docker CPI")) as Arc<dyn bosun_cpi::Cpi>
    });
    conformance::info(&*make()).await.unwrap();
    conformance::stemcell_lifecycle(&*make(), &env).await.unwrap();
    conformance::vm_lifecycle(&*make(), &env).await.unwrap();
    conformance::create_vm_with_unknown_stemcell_fails(&*make(), &env).await.unwrap();
    conformance::disk_lifecycle(&*make(), &env).await.unwrap();
    conformance::survives_director_restart(&make, &env).await.unwrap();
}
