//! The shared CPI conformance suite, run against the local CPI with a real stemcell image around
//! the agent binary under test, directly and through BOSH's external CPI protocol (every call a
//! `bosun cpi local` process, as a BOSH director runs a CPI). Each check is its own test; each gets
//! its own cloud (base directory) and addresses, and everything it starts is killed at the end.

mod common;

use bosun_cpi::conformance::{self, ConformanceEnv, CpiFactory};
use bosun_cpi::Cpi;
use bosun_cpi_external::{ExternalCpi, ExternalCpiConfig};
use bosun_cpi_local::{kill_processes_with_env, LocalCpi, BASE_MARKER};
use bosun_types::protocol::NetworkSettings;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

struct Cloud {
    dir: tempfile::TempDir,
    env: ConformanceEnv,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let base = self.dir.path().join("cloud");
        let base = base.canonicalize().unwrap_or(base);
        let _ = kill_processes_with_env(BASE_MARKER, &base.to_string_lossy(), Duration::from_secs(30));
    }
}

fn network(ip: &str) -> BTreeMap<String, NetworkSettings> {
    let mut m = BTreeMap::new();
    m.insert(
        "default".to_string(),
        NetworkSettings {
            kind: bosun_types::cloud_config::NetworkType::Manual,
            ip: ip.into(),
            netmask: "255.255.255.0".into(),
            gateway: None,
            default: vec!["dns".into(), "gateway".into()],
            dns: vec![],
            cloud_properties: serde_json::json!({}),
        },
    );
    m
}

/// Unpacks the `image` out of the stemcell tarball the builder script makes.
fn stemcell_image(dir: &std::path::Path) -> std::path::PathBuf {
    let tarball = common::stemcell("1");
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(tarball).unwrap()));
    a.unpack(dir.join("stemcell")).unwrap();
    dir.join("stemcell/image")
}

/// The local CPI on 127.0.30.0/24.
fn cloud(octet: u8) -> (Cloud, CpiFactory) {
    cloud_in("127.0.30", octet, false)
}

/// The local CPI behind the external protocol, on 127.0.31.0/24.
fn external_cloud(octet: u8) -> (Cloud, CpiFactory) {
    cloud_in("127.0.31", octet, true)
}

fn cloud_in(subnet: &str, octet: u8, external: bool) -> (Cloud, CpiFactory) {
    let dir = tempfile::tempdir().unwrap();
    let image = stemcell_image(dir.path());
    let base = dir.path().join("cloud");
    let env = ConformanceEnv {
        stemcell_image: image,
        stemcell_cloud_properties: serde_json::json!({}),
        vm_cloud_properties: serde_json::json!({}),
        networks: [network(&format!("{subnet}.{octet}")), network(&format!("{subnet}.{}", octet + 1))],
    };
    let make: CpiFactory = if external {
        std::fs::create_dir_all(&base).unwrap();
        let config = ExternalCpiConfig {
            exec_path: common::bosun_bin().into(),
            args: vec![
                "cpi".into(),
                "local".into(),
                "--dir".into(),
                base.canonicalize().unwrap().display().to_string(),
            ],
            properties: Default::default(),
            env: Default::default(),
            timeout_seconds: 120,
        };
        Arc::new(move || {
            let cpi = ExternalCpi::new(config.clone()).expect("external CPI");
            cpi.set_director_uuid("conformance");
            Arc::new(cpi) as Arc<dyn bosun_cpi::Cpi>
        })
    } else {
        Arc::new(move || Arc::new(LocalCpi::new(&base).expect("local CPI")) as Arc<dyn bosun_cpi::Cpi>)
    };
    (Cloud { dir, env }, make)
}

/// The suite's checks as tests of one CPI: `$module::info`, `$module::vm_lifecycle`, …, each on
/// its own cloud from `$cloud(octet)`.
macro_rules! conformance_tests {
    ($module:ident, $cloud:ident) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn info() {
                let (_c, make) = $cloud(10);
                conformance::info(&*make()).await.unwrap();
            }

            #[tokio::test]
            async fn stemcell_lifecycle() {
                let (c, make) = $cloud(12);
                conformance::stemcell_lifecycle(&*make(), &c.env).await.unwrap();
            }

            #[tokio::test]
            async fn vm_lifecycle() {
                let (c, make) = $cloud(14);
                conformance::vm_lifecycle(&*make(), &c.env).await.unwrap();
            }

            #[tokio::test]
            async fn create_vm_with_unknown_stemcell_fails() {
                let (c, make) = $cloud(16);
                conformance::create_vm_with_unknown_stemcell_fails(&*make(), &c.env).await.unwrap();
            }

            #[tokio::test]
            async fn disk_lifecycle() {
                let (c, make) = $cloud(18);
                conformance::disk_lifecycle(&*make(), &c.env).await.unwrap();
            }

            #[tokio::test]
            async fn survives_director_restart() {
                let (c, make) = $cloud(20);
                conformance::survives_director_restart(&make, &c.env).await.unwrap();
            }
        }
    };
}

conformance_tests!(local, cloud);
conformance_tests!(external_local, external_cloud);

/// Local-CPI specifics: a VM is its whole process tree, and never two live VMs on one address.
#[tokio::test]
async fn local_delete_vm_kills_the_whole_process_tree_and_addresses_are_exclusive() {
    let (c, make) = cloud(22);
    let cpi = make();
    let sc = cpi.create_stemcell(&c.env.stemcell_image, &serde_json::json!({})).await.unwrap();
    let req = bosun_cpi::CreateVmRequest {
        agent_id: "a".into(),
        stemcell_cid: sc.clone(),
        cloud_properties: serde_json::json!({}),
        networks: c.env.networks[0].clone(),
        disk_cids: vec![],
        env: serde_json::json!({"bosun": {"director": {"address": "127.0.0.1:9", "server_name": "x", "ca_cert": "", "client_cert": "", "client_key": ""}}}),
    };
    let (vm, _) = cpi.create_vm(&req).await.unwrap();
    // A second VM on the same address is refused while the first runs.
    match cpi.create_vm(&req).await {
        Err(bosun_cpi::CpiError::VmCreationFailed { message, ok_to_retry: false }) => {
            assert!(message.contains("still running"), "{message}")
        }
        other => panic!("a second VM on one address: {other:?}"),
    }
    // A process the VM started that left its process group still dies with the VM.
    let marker_pid = common::eventually("the agent process", Duration::from_secs(10), || {
        bosun_cpi_local::processes_with_env(bosun_cpi_local::VM_MARKER, &vm).first().copied()
    });
    let base = c.dir.path().join("cloud").canonicalize().unwrap();
    let stray = std::process::Command::new("setsid")
        .args(["sleep", "600"])
        .env(bosun_cpi_local::VM_MARKER, &vm)
        .env(BASE_MARKER, &base)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::eventually(&format!("agent {marker_pid} and the stray, both marked"), Duration::from_secs(10), || {
        (bosun_cpi_local::processes_with_env(bosun_cpi_local::VM_MARKER, &vm).len() >= 2).then_some(())
    });
    cpi.delete_vm(&vm).await.unwrap();
    assert!(bosun_cpi_local::processes_with_env(bosun_cpi_local::VM_MARKER, &vm).is_empty());
    let mut stray = stray;
    let _ = stray.wait();
    assert!(!cpi.has_vm(&vm).await.unwrap());
    cpi.delete_stemcell(&sc).await.unwrap();
}
