//! The AWS CPI against moto's EC2 server (started from `target/moto-venv`, which `ci/moto-venv`
//! makes), one server per test on a loopback port: the shared CPI conformance suite, a heavy
//! stemcell registered from a snapshot, what an instance is made with (its address, interface,
//! user-data, tags at creation), EBS specifics, and throttling retried.
//!
//! moto changes states at once (an instance is running as soon as it is made), so the waiting
//! logic is tested on its own (`src/wait.rs`); a terminated instance stays listed, as on EC2.

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use bosun_cpi::conformance::{self, ConformanceEnv, CpiFactory};
use bosun_cpi::{Cpi, CpiError, CreateVmRequest};
use bosun_cpi_aws::{AwsCpi, AwsCpiConfig};
use bosun_test_support::moto::{Moto, REGION};
use bosun_types::protocol::NetworkSettings;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;

/// What the CPI's tests need of the server: the CPI's config for it, and the SDK's own client
/// on it (for looking at what the CPI made).
trait MotoCloud {
    fn config(&self) -> AwsCpiConfig;
    fn ec2(&self) -> aws_sdk_ec2::Client;
}

impl MotoCloud for Moto {
    fn config(&self) -> AwsCpiConfig {
        config_for(&self.url)
    }

    fn ec2(&self) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }
}

fn config_for(url: &str) -> AwsCpiConfig {
    AwsCpiConfig {
        region: REGION.into(),
        endpoint: Some(url.into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        session_token: None,
        default_key_name: None,
        default_security_groups: vec![],
        default_availability_zone: Some("us-east-1a".into()),
        max_attempts: 3,
        wait_seconds: 60,
    }
}

/// moto's default VPC subnet in us-east-1a (172.31.0.0/20) and one of its stock AMIs.
async fn cloud(ec2: &aws_sdk_ec2::Client) -> (String, String) {
    let subnets = ec2.describe_subnets().send().await.unwrap();
    let subnet = subnets
        .subnets()
        .iter()
        .find(|s| s.cidr_block() == Some("172.31.0.0/20"))
        .and_then(|s| s.subnet_id())
        .expect("moto's default subnet")
        .to_string();
    let images = ec2.describe_images().owners("amazon").send().await.unwrap();
    let ami = images.images().first().and_then(|i| i.image_id()).expect("a stock AMI").to_string();
    (subnet, ami)
}

fn network(ip: &str, subnet: &str) -> BTreeMap<String, NetworkSettings> {
    let mut m = BTreeMap::new();
    m.insert(
        "default".to_string(),
        NetworkSettings {
            kind: bosun_types::cloud_config::NetworkType::Manual,
            ip: ip.into(),
            netmask: "255.255.240.0".into(),
            gateway: Some("172.31.0.1".into()),
            default: vec!["dns".into(), "gateway".into()],
            dns: vec![],
            cloud_properties: serde_json::json!({"subnet": subnet}),
        },
    );
    m
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

#[test]
fn the_aws_cpi_passes_the_conformance_suite_on_moto() {
    let moto = Moto::start();
    rt().block_on(async {
        let (subnet, ami) = cloud(&moto.ec2()).await;
        let image = tempfile::NamedTempFile::new().unwrap();
        let env = ConformanceEnv {
            stemcell_image: image.path().to_path_buf(),
            stemcell_cloud_properties: serde_json::json!({"ami": {REGION: ami}}),
            vm_cloud_properties: serde_json::json!({"instance_type": "t3.micro"}),
            networks: [network("172.31.0.10", &subnet), network("172.31.0.11", &subnet)],
        };
        let config = moto.config();
        let cpi = Arc::new(AwsCpi::connect(config.clone()).await.unwrap());
        let make: CpiFactory = Arc::new(move || cpi.clone() as Arc<dyn Cpi>);
        let fail = |e: String| panic!("aws (moto): {e}");
        conformance::info(&*make()).await.unwrap_or_else(fail);
        conformance::stemcell_lifecycle(&*make(), &env).await.unwrap_or_else(fail);
        conformance::vm_lifecycle(&*make(), &env).await.unwrap_or_else(fail);
        conformance::create_vm_with_unknown_stemcell_fails(&*make(), &env).await.unwrap_or_else(fail);
        conformance::disk_lifecycle(&*make(), &env).await.unwrap_or_else(fail);
        // A restarted director makes a new CPI object: a fresh client over the same cloud.
        let fresh: CpiFactory = Arc::new(move || {
            let config = config.clone();
            let cpi = std::thread::spawn(move || rt().block_on(AwsCpi::connect(config))).join().unwrap().unwrap();
            Arc::new(cpi) as Arc<dyn Cpi>
        });
        conformance::survives_director_restart(&fresh, &env).await.unwrap_or_else(fail);
    });
}

#[test]
fn an_instance_gets_its_address_interface_settings_and_tags_at_creation() {
    let moto = Moto::start();
    rt().block_on(async {
        let ec2 = moto.ec2();
        let (subnet, ami) = cloud(&ec2).await;
        let cpi = AwsCpi::connect(moto.config()).await.unwrap();
        cpi.set_director_uuid("d-1");
        let stemcell = cpi.create_stemcell(std::path::Path::new("/nonexistent"), &serde_json::json!({"ami": {REGION: ami}})).await.unwrap();
        assert_eq!(stemcell, format!("{ami} light"));
        let request = CreateVmRequest {
            agent_id: "agent-1".into(),
            stemcell_cid: stemcell.clone(),
            cloud_properties: serde_json::json!({"instance_type": "m5.large", "key_name": "bosh", "root_disk": {"size": 20480, "type": "gp3"}}),
            networks: network("172.31.0.20", &subnet),
            disk_cids: vec![],
            env: serde_json::json!({"bosun": {
                "director": {"address": "10.0.0.6:25565", "server_name": "d", "ca_cert": "CA", "client_cert": "C", "client_key": "K"},
                "tags": {"director_uuid": "d-1", "deployment": "kubernetes", "instance_group": "master", "index": "0"}}}),
        };
        let (vm, networks) = cpi.create_vm(&request).await.unwrap();
        assert_eq!(networks["default"].ip, "172.31.0.20");
        let out = ec2.describe_instances().instance_ids(&vm).send().await.unwrap();
        let i = &out.reservations()[0].instances()[0];
        assert_eq!(i.private_ip_address(), Some("172.31.0.20"));
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("m5.large"));
        assert_eq!(i.key_name(), Some("bosh"));
        assert_eq!(i.image_id(), Some(ami.as_str()));
        let eni = &i.network_interfaces()[0];
        assert_eq!(eni.subnet_id(), Some(subnet.as_str()));
        assert_eq!(eni.attachment().and_then(|a| a.delete_on_termination()), Some(true), "the interface goes with the instance");
        let tags: BTreeMap<&str, &str> = i.tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
        assert_eq!(tags.get("deployment"), Some(&"kubernetes"), "tagged at creation: {tags:?}");
        let metadata = i.metadata_options().expect("metadata options");
        assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("required"), "IMDSv2 only");
        assert_eq!(metadata.http_put_response_hop_limit(), Some(1), "not from a pod");
        // The secret never shows in the config's Debug form.
        let secrets = AwsCpiConfig { secret_access_key: Some("s3cr3t".into()), session_token: Some("t0ken".into()), ..moto.config() };
        let printed = format!("{secrets:?}");
        assert!(!printed.contains("s3cr3t") && !printed.contains("t0ken") && printed.contains("(set)"), "{printed}");
        // The agent's settings, whole, in user-data (the director's endpoint and credentials).
        let attr = ec2.describe_instance_attribute().instance_id(&vm).attribute("userData".into()).send().await.unwrap();
        let data = attr.user_data().and_then(|u| u.value()).expect("user-data");
        let data = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap();
        let settings: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(settings["agent_id"], "agent-1");
        assert_eq!(settings["director"]["address"], "10.0.0.6:25565");
        assert_eq!(settings["networks"]["default"]["ip"], "172.31.0.20");
        // Listing finds it by the director's uuid; set_vm_metadata adds the console's Name.
        let listed = cpi.list_vms().await.unwrap();
        assert_eq!(listed.iter().map(|l| l.vm_cid.as_str()).collect::<Vec<_>>(), vec![vm.as_str()]);
        cpi.set_vm_metadata(&vm, &[("name".to_string(), "master/abc".to_string())].into()).await.unwrap();
        let out = ec2.describe_instances().instance_ids(&vm).send().await.unwrap();
        let tags: BTreeMap<&str, &str> =
            out.reservations()[0].instances()[0].tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
        assert_eq!(tags.get("Name"), Some(&"master/abc"));

        // The same address again once the instance is gone (its interface went with it).
        cpi.delete_vm(&vm).await.unwrap();
        assert!(!cpi.has_vm(&vm).await.unwrap(), "a terminated instance is no VM");
        assert!(cpi.list_vms().await.unwrap().is_empty(), "nor listed");
        let (again, _) = cpi.create_vm(&request).await.unwrap();
        assert_ne!(again, vm);
        cpi.delete_vm(&again).await.unwrap();
        // A second network is refused, naming them, before anything is made.
        let mut two = request.clone();
        two.networks.insert("other".into(), network("172.31.0.21", &subnet).remove("default").unwrap());
        match cpi.create_vm(&two).await {
            Err(CpiError::InvalidArguments(m)) => assert!(m.contains("default, other"), "{m}"),
            other => panic!("two networks: {other:?}"),
        }
        // Security groups by name (as BOSH's AWS CPI takes them) are looked up in the subnet's VPC;
        // ids are taken as they are; an unknown name is refused, naming it.
        let vpc = ec2.describe_subnets().subnet_ids(&subnet).send().await.unwrap().subnets()[0].vpc_id().unwrap().to_string();
        let web = ec2.create_security_group().group_name("bosun-web").description("web").vpc_id(&vpc).send().await.unwrap();
        let web = web.group_id().unwrap().to_string();
        let ssh = ec2.create_security_group().group_name("bosun-ssh").description("ssh").vpc_id(&vpc).send().await.unwrap();
        let ssh = ssh.group_id().unwrap().to_string();
        let mut named = request.clone();
        named.cloud_properties["security_groups"] = serde_json::json!(["bosun-web", ssh]);
        let (vm, _) = cpi.create_vm(&named).await.unwrap();
        let out = ec2.describe_instances().instance_ids(&vm).send().await.unwrap();
        let mut groups: Vec<&str> = out.reservations()[0].instances()[0].network_interfaces()[0]
            .groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        groups.sort();
        let mut wanted = vec![web.as_str(), ssh.as_str()];
        wanted.sort();
        assert_eq!(groups, wanted, "the name resolved in the VPC, the id kept");
        cpi.delete_vm(&vm).await.unwrap();
        named.cloud_properties["security_groups"] = serde_json::json!(["bosun-nowhere"]);
        match cpi.create_vm(&named).await {
            Err(CpiError::InvalidArguments(m)) => assert!(m.contains("`bosun-nowhere`") && m.contains(&vpc), "{m}"),
            other => panic!("an unknown security group: {other:?}"),
        }
        // So is a vip network.
        let mut vip = request.clone();
        vip.networks.get_mut("default").unwrap().kind = bosun_types::cloud_config::NetworkType::Vip;
        match cpi.create_vm(&vip).await {
            Err(CpiError::InvalidArguments(m)) => assert!(m.contains("vip"), "{m}"),
            other => panic!("a vip network: {other:?}"),
        }
    });
}

#[test]
fn ebs_volumes_attach_on_free_devices_resize_snapshot_and_carry_the_director_s_uuid() {
    let moto = Moto::start();
    rt().block_on(async {
        let ec2 = moto.ec2();
        let (subnet, ami) = cloud(&ec2).await;
        let cpi = AwsCpi::connect(moto.config()).await.unwrap();
        cpi.set_director_uuid("d-2");
        let stemcell = cpi.create_stemcell(std::path::Path::new("/x"), &serde_json::json!({"ami": {REGION: ami}})).await.unwrap();
        let request = CreateVmRequest {
            agent_id: "agent-2".into(),
            stemcell_cid: stemcell,
            cloud_properties: serde_json::json!({"instance_type": "t3.micro"}),
            networks: network("172.31.0.30", &subnet),
            disk_cids: vec![],
            env: serde_json::json!({"bosun": {"director": {"address": "a:1", "server_name": "d", "ca_cert": "", "client_cert": "", "client_key": ""},
                                             "tags": {"director_uuid": "d-2"}}}),
        };
        let (vm, _) = cpi.create_vm(&request).await.unwrap();
        // Its only tag is the director's uuid, which its root volume does not get: still tagged.
        let vms = cpi.list_vms().await.unwrap();
        assert_eq!(vms.iter().map(|v| v.vm_cid.as_str()).collect::<Vec<_>>(), vec![vm.as_str()]);
        let a = cpi.create_disk(10 * 1024, &serde_json::json!({"type": "io1", "iops": 500}), Some(&vm)).await.unwrap();
        let b = cpi.create_disk(1024, &serde_json::json!({}), Some(&vm)).await.unwrap();
        let vol = ec2.describe_volumes().volume_ids(&a).send().await.unwrap();
        let v = &vol.volumes()[0];
        assert_eq!((v.size(), v.volume_type().map(|t| t.as_str()), v.iops()), (Some(10), Some("io1"), Some(500)));
        assert_eq!(v.availability_zone(), Some("us-east-1a"), "in its VM's zone");
        let hint_a = cpi.attach_disk(&vm, &a).await.unwrap();
        let hint_b = cpi.attach_disk(&vm, &b).await.unwrap();
        assert_eq!(hint_a, serde_json::json!({"path": "/dev/sdf", "volume_id": a}));
        assert_eq!(hint_b, serde_json::json!({"path": "/dev/sdg", "volume_id": b}));
        assert_eq!(cpi.attach_disk(&vm, &a).await.unwrap(), hint_a, "attaching again answers the same");
        let mut disks = cpi.get_disks(&vm).await.unwrap();
        disks.sort();
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(disks, want, "the root volume is not a persistent disk");
        let listed = cpi.list_disks().await.unwrap();
        assert_eq!(listed.len(), 2, "both carry the director's uuid from creation: {listed:?}");
        assert!(listed.iter().all(|d| d.attached_to.as_deref() == Some(vm.as_str())));

        cpi.detach_disk(&vm, &b).await.unwrap();
        cpi.resize_disk(&b, 4096).await.unwrap();
        let vol = ec2.describe_volumes().volume_ids(&b).send().await.unwrap();
        assert_eq!(vol.volumes()[0].size(), Some(4));
        match cpi.resize_disk(&b, 1024).await {
            Err(CpiError::NotSupported(m)) => assert!(m.contains("shrinking"), "{m}"),
            other => panic!("shrinking: {other:?}"),
        }
        let snap = cpi
            .snapshot_disk(&a, &[("deployment".to_string(), "kubernetes".to_string()), ("index".to_string(), "0".to_string())].into())
            .await
            .unwrap();
        assert!(snap.starts_with("snap-"), "{snap}");
        cpi.delete_snapshot(&snap).await.unwrap();
        cpi.delete_snapshot(&snap).await.unwrap();

        // A heavy stemcell: an AMI registered from the snapshot of its image, deregistered again.
        let image_snap = ec2.create_snapshot().volume_id(&b).send().await.unwrap().snapshot_id().unwrap().to_string();
        let heavy = cpi
            .create_stemcell(std::path::Path::new("/x"), &serde_json::json!({"name": "bosun-ubuntu", "version": "1.1", "snapshot_id": image_snap}))
            .await
            .unwrap();
        let images = ec2.describe_images().image_ids(&heavy).send().await.unwrap();
        // moto keeps an image's name but drops its block device mappings (the snapshot it was
        // registered from), so the name, which names the snapshot, is what can be checked.
        assert_eq!(images.images()[0].name(), Some(format!("bosun-bosun-ubuntu-1.1-{image_snap}").as_str()));
        cpi.delete_stemcell(&heavy).await.unwrap();
        let after = ec2.describe_images().image_ids(&heavy).send().await;
        assert!(after.map(|o| o.images().is_empty()).unwrap_or(true), "deregistered");

        cpi.delete_vm(&vm).await.unwrap();
        assert!(cpi.has_disk(&a).await.unwrap(), "a persistent disk outlives its VM");
        cpi.delete_disk(&a).await.unwrap();
        cpi.delete_disk(&b).await.unwrap();
        assert!(cpi.list_disks().await.unwrap().is_empty());
    });
}

/// A stand-in for EC2 that throttles: answers the first `throttled` requests with
/// `RequestLimitExceeded`, then says the instance asked about does not exist. Returns how many
/// requests it saw.
fn throttling_front(throttled: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let counter = counter.clone();
            std::thread::spawn(move || loop {
                // One HTTP/1.1 request: its headers, then Content-Length bytes of body.
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (status, code, message) = if n < throttled {
                    ("503 Service Unavailable", "RequestLimitExceeded", "Request limit exceeded.")
                } else {
                    ("400 Bad Request", "InvalidInstanceID.NotFound", "The instance ID 'i-0abc' does not exist")
                };
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>r-{n}</RequestID></Response>"
                );
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                    xml.len()
                );
                if conn.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    (url, seen)
}

#[test]
fn throttled_calls_are_retried_up_to_the_configured_attempts() {
    use std::sync::atomic::Ordering;
    rt().block_on(async {
        // Two throttled answers, then the real one: three attempts suffice.
        let (url, seen) = throttling_front(2);
        let cpi = AwsCpi::connect(AwsCpiConfig { max_attempts: 3, ..config_for(&url) }).await.unwrap();
        assert!(!cpi.has_vm("i-0abc").await.unwrap(), "the answer after the throttling");
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        // Throttled past the attempts allowed: a cloud error naming the throttling.
        let (url, seen) = throttling_front(10);
        let cpi = AwsCpi::connect(AwsCpiConfig { max_attempts: 2, ..config_for(&url) }).await.unwrap();
        match cpi.has_vm("i-0abc").await {
            Err(CpiError::Cloud(m)) => assert!(m.contains("RequestLimitExceeded"), "{m}"),
            other => panic!("throttled throughout: {other:?}"),
        }
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    });
}
