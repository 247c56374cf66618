//! The quickstart on AWS, with moto's EC2 server in AWS's place: `bosun director --cpi external`
//! driving `bosun-cpi-aws` (the AWS CPI's executable: BOSH's CPI protocol, one process per call)
//! deploys three etcd members with EBS volumes, resurrects one whose instance was terminated
//! through the EC2 API (same address, same volume, its data), rolls all three onto a new AMI
//! (a new light stemcell), finds nothing to repair in a cloud check, and deletes everything.
//!
//! The test plays the part of EC2's hosts ([`Ec2Hosts`]): for every running instance it starts a
//! `bosun-agent` that reads its settings from the instance metadata as on EC2 (IMDSv2: a token,
//! then the user-data and the instance id), served for each instance by [`MetadataService`] from
//! what EC2's API says of that instance; every EBS volume attached to an instance is
//! presented to that agent as a block device under the device name EC2 was asked for (a loop
//! device over a sparse file per volume, so a volume keeps its filesystem from one instance to
//! the next); an instance that is no longer running has its agent and every process of it
//! stopped and its mounts undone. The instances' addresses are on 127.0.80.0/24, a VPC and
//! subnet made for the test: loopback, so each instance's jobs listen on its private address here.

mod common;

use bosun_cpi_aws::aws_sdk_ec2;
use bosun_cpi_aws::aws_sdk_ec2::types::{Filter, InstanceAttributeName, InstanceStateName, VolumeAttachmentState};
use bosun_cpi_aws::{AwsCpi, AwsCpiConfig};
use bosun_test_support::imds::MetadataService;
use bosun_test_support::moto::{Moto, REGION};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What marks the processes of one instance (the agent and everything it starts).
const INSTANCE_MARKER: &str = "BOSUN_TEST_EC2_INSTANCE";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The VPC and subnet on 127.0.80.0/24 and two of moto's stock AMIs.
async fn make_cloud(ec2: &aws_sdk_ec2::Client) -> (String, [String; 2]) {
    let vpc = ec2.create_vpc().cidr_block("127.0.80.0/24").send().await.unwrap();
    let vpc = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("127.0.80.0/24")
        .availability_zone(format!("{REGION}a"))
        .send()
        .await
        .unwrap();
    let subnet = subnet.subnet().and_then(|s| s.subnet_id()).unwrap().to_string();
    let images = ec2.describe_images().owners("amazon").send().await.unwrap();
    let amis: Vec<String> = images.images().iter().filter_map(|i| i.image_id()).map(String::from).take(2).collect();
    (subnet, [amis[0].clone(), amis[1].clone()])
}

/// A light stemcell naming `ami` in the test's region: a stemcell.MF and an empty image.
fn light_stemcell(dir: &Path, version: &str, ami: &str) -> PathBuf {
    let work = dir.join(format!("light-{version}"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("image"), b"").unwrap();
    let manifest = format!(
        "name: bosun-aws-light\nversion: \"{version}\"\noperating_system: local\nstemcell_formats: [aws-light]\n\
         api_version: 2\nsha1: sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
         cloud_properties: {{ami: {{{REGION}: {ami}}}}}\n"
    );
    std::fs::write(work.join("stemcell.MF"), manifest).unwrap();
    let tarball = dir.join(format!("bosun-aws-light-{version}.tgz"));
    let o = Command::new("tar").arg("-C").arg(&work).arg("-czf").arg(&tarball).args(["stemcell.MF", "image"]).output();
    assert!(o.unwrap().status.success(), "packing the light stemcell");
    tarball
}

/// An instance this machine runs: its agent and the devices presented to it.
struct Machine {
    agent: Child,
    dir: PathBuf,
    /// Device name (`sdf`) → the volume behind it.
    devices: BTreeMap<String, String>,
}

/// An EBS volume's bytes: a sparse file, and the loop device over it while one is needed.
struct Volume {
    file: PathBuf,
    loop_device: Option<String>,
}

#[derive(Default)]
struct HostState {
    machines: BTreeMap<String, Machine>,
    volumes: BTreeMap<String, Volume>,
    /// Every instance ever started here, in order.
    started: Vec<String>,
    failures: Vec<String>,
}

/// EC2's hosts, played on this machine by a thread that looks at the cloud every 200 ms.
struct Ec2Hosts {
    dir: PathBuf,
    state: Arc<Mutex<HostState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ec2Hosts {
    fn start(ec2: aws_sdk_ec2::Client, dir: PathBuf) -> Ec2Hosts {
        std::fs::create_dir_all(dir.join("volumes")).unwrap();
        let state = Arc::new(Mutex::new(HostState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let metadata = MetadataService::start();
        let thread = std::thread::spawn({
            let (state, stop, dir) = (state.clone(), stop.clone(), dir.clone());
            move || {
                let rt = runtime();
                while !stop.load(Ordering::SeqCst) {
                    if let Err(e) = rt.block_on(pass(&ec2, &dir, &metadata, &state)) {
                        state.lock().unwrap().failures.push(e);
                    }
                    std::thread::park_timeout(Duration::from_millis(200));
                }
            }
        });
        Ec2Hosts { dir, state, stop, thread: Some(thread) }
    }

    fn running(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().machines.keys().cloned().collect()
    }

    fn started(&self) -> Vec<String> {
        self.state.lock().unwrap().started.clone()
    }

    fn loop_devices(&self) -> Vec<String> {
        self.state.lock().unwrap().volumes.values().filter_map(|v| v.loop_device.clone()).collect()
    }

    /// Each volume mounted inside an instance here (its loop device is the source of a mount
    /// under the instance's directory), with that instance.
    fn mounted_volumes(&self) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // mountinfo: ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS … - FSTYPE SOURCE SUPER-OPTIONS
        let mounts: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| {
                let (head, tail) = l.split_once(" - ")?;
                Some((head.split(' ').nth(4)?, tail.split(' ').nth(1)?))
            })
            .collect();
        let state = self.state.lock().unwrap();
        let mut out = BTreeMap::new();
        for (iid, m) in &state.machines {
            let under = format!("{}/", m.dir.display());
            for vid in m.devices.values() {
                let Some(device) = state.volumes.get(vid).and_then(|v| v.loop_device.as_deref()) else { continue };
                if mounts.iter().any(|(at, source)| at.starts_with(&under) && *source == device) {
                    out.insert(vid.clone(), iid.clone());
                }
            }
        }
        out
    }

    fn failures(&self) -> Vec<String> {
        self.state.lock().unwrap().failures.clone()
    }
}

impl Drop for Ec2Hosts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut state = self.state.lock().unwrap();
        let ids: Vec<String> = state.machines.keys().cloned().collect();
        for id in ids {
            let m = state.machines.remove(&id).unwrap();
            power_off(&id, m);
        }
        for (_, v) in std::mem::take(&mut state.volumes) {
            release(v);
        }
        let _ = std::fs::remove_dir_all(self.dir.join("volumes"));
    }
}

/// One look at the cloud: agents started for new running instances and stopped for instances
/// no longer running; attached volumes presented to their instance's agent, detached ones taken
/// away, deleted ones' files removed.
async fn pass(
    ec2: &aws_sdk_ec2::Client,
    dir: &Path,
    metadata: &MetadataService,
    state: &Mutex<HostState>,
) -> Result<(), String> {
    let described = ec2.describe_instances().send().await.map_err(|e| format!("DescribeInstances: {e:?}"))?;
    // Running instances, with their root device (the AMI's disk: the host's own business).
    let running: BTreeMap<String, String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running))
        .filter_map(|i| Some((i.instance_id()?.to_string(), i.root_device_name().unwrap_or_default().to_string())))
        .collect();
    let gone: Vec<String> = {
        let s = state.lock().unwrap();
        s.machines.keys().filter(|id| !running.contains_key(*id)).cloned().collect()
    };
    for id in gone {
        let m = state.lock().unwrap().machines.remove(&id).unwrap();
        power_off(&id, m);
    }
    for id in running.keys() {
        if state.lock().unwrap().machines.contains_key(id) {
            continue;
        }
        let attr = ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(|e| format!("DescribeInstanceAttribute {id}: {e:?}"))?;
        use base64::Engine;
        let user_data = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
        let user_data = base64::engine::general_purpose::STANDARD
            .decode(user_data.trim())
            .map_err(|e| format!("{id}: user-data is not base64: {e}"))?;
        metadata.insert(id, user_data);
        let machine = power_on(dir, id, &metadata.url_for(id))?;
        let mut s = state.lock().unwrap();
        s.machines.insert(id.clone(), machine);
        s.started.push(id.clone());
    }

    let volumes = ec2.describe_volumes().send().await.map_err(|e| format!("DescribeVolumes: {e:?}"))?;
    let mut s = state.lock().unwrap();
    let listed: BTreeSet<String> = volumes.volumes().iter().filter_map(|v| v.volume_id()).map(String::from).collect();
    let mut wanted: BTreeMap<(String, String), String> = BTreeMap::new();
    for v in volumes.volumes() {
        let Some(vid) = v.volume_id() else { continue };
        for a in v.attachments() {
            let (Some(iid), Some(device)) = (a.instance_id(), a.device()) else { continue };
            if a.state() != Some(&VolumeAttachmentState::Attached) || !s.machines.contains_key(iid) {
                continue;
            }
            // An instance's root volume is its stemcell's disk, not one to present.
            if running.get(iid).is_some_and(|root| root == device) {
                continue;
            }
            let Some(name) = device.strip_prefix("/dev/").filter(|n| n.starts_with("sd")) else { continue };
            let size_gib = v.size().unwrap_or(1).max(1) as u64;
            let volume = s
                .volumes
                .entry(vid.to_string())
                .or_insert_with(|| Volume { file: dir.join("volumes").join(format!("{vid}.img")), loop_device: None });
            if volume.loop_device.is_none() {
                volume.loop_device = Some(attach_loop(&volume.file, size_gib)?);
            }
            wanted.insert((iid.to_string(), name.to_string()), vid.to_string());
        }
    }
    let state = &mut *s;
    for (iid, m) in state.machines.iter_mut() {
        let dev = m.dir.join("dev");
        let present: Vec<String> = m.devices.keys().cloned().collect();
        for name in present {
            if !wanted.contains_key(&(iid.clone(), name.clone())) {
                let _ = std::fs::remove_file(dev.join(&name));
                m.devices.remove(&name);
            }
        }
        for ((i, name), vid) in wanted.iter().filter(|((i, _), _)| i == iid) {
            if m.devices.get(name) == Some(vid) {
                continue;
            }
            let loop_device = state.volumes[vid].loop_device.clone().expect("attached above");
            let _ = std::fs::remove_file(dev.join(name));
            std::os::unix::fs::symlink(&loop_device, dev.join(name)).map_err(|e| format!("{i} {name}: {e}"))?;
            m.devices.insert(name.clone(), vid.clone());
        }
    }
    let deleted: Vec<String> = state.volumes.keys().filter(|v| !listed.contains(*v)).cloned().collect();
    for vid in deleted {
        release(state.volumes.remove(&vid).unwrap());
    }
    Ok(())
}

/// Boots an instance: its agent, which reads its settings from the instance metadata at
/// `metadata`.
fn power_on(dir: &Path, id: &str, metadata: &str) -> Result<Machine, String> {
    let vm = dir.join("instances").join(id);
    std::fs::create_dir_all(vm.join("dev")).map_err(|e| format!("{id}: {e}"))?;
    let log = std::fs::File::create(vm.join("agent.log")).map_err(|e| format!("{id}: {e}"))?;
    let agent = Command::new(agent_bin())
        .arg("--root")
        .arg(vm.join("root"))
        .args(["--metadata", metadata])
        .arg("--dev")
        .arg(vm.join("dev"))
        .env(INSTANCE_MARKER, id)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{id}: starting its agent: {e}"))?;
    Ok(Machine { agent, dir: vm, devices: BTreeMap::new() })
}

/// Stops an instance: every process of it, then whatever its agent mounted.
fn power_off(id: &str, mut m: Machine) {
    let _ = bosun_cpi_local::kill_processes_with_env(INSTANCE_MARKER, id, Duration::from_secs(30));
    let _ = m.agent.wait();
    for mount in mounts_under(&m.dir) {
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
    }
}

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut found: Vec<String> =
        text.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)).map(String::from).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found
}

/// A loop device over `file` (made sparse at `size_gib` when new).
fn attach_loop(file: &Path, size_gib: u64) -> Result<String, String> {
    if !file.exists() {
        let f = std::fs::File::create(file).map_err(|e| format!("{}: {e}", file.display()))?;
        f.set_len(size_gib << 30).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let o = Command::new("losetup").args(["--find", "--show"]).arg(file).output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("losetup {}: {}", file.display(), String::from_utf8_lossy(&o.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn release(v: Volume) {
    if let Some(dev) = v.loop_device {
        let _ = Command::new("losetup").arg("-d").arg(dev).status();
    }
    let _ = std::fs::remove_file(v.file);
}

/// The etcd member ids one member lists: a member that kept its data directory keeps its id.
fn member_ids(ip: &str) -> Option<BTreeSet<String>> {
    let v: serde_json::Value =
        serde_json::from_str(&http_post(&format!("{ip}:2379"), "/v3/cluster/member/list", "{}")?).ok()?;
    let ids: BTreeSet<String> =
        v.get("members")?.as_array()?.iter().filter_map(|m| m.get("ID").map(|id| id.to_string())).collect();
    (ids.len() == 3).then_some(ids)
}

/// The instances the director's tags name as its own that are running, with their AMI and
/// private address.
async fn running_instances(ec2: &aws_sdk_ec2::Client) -> BTreeMap<String, (String, String)> {
    let out = ec2
        .describe_instances()
        .filters(Filter::builder().name("instance-state-name").values("running").build())
        .filters(Filter::builder().name("tag-key").values("director_uuid").build())
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                (i.image_id().unwrap_or_default().to_string(), i.private_ip_address().unwrap_or_default().to_string()),
            )
        })
        .collect()
}

/// Each volume's instance (None when available).
async fn volume_attachments(ec2: &aws_sdk_ec2::Client) -> BTreeMap<String, Option<String>> {
    let out = ec2
        .describe_volumes()
        .filters(Filter::builder().name("tag-key").values("director_uuid").build())
        .send()
        .await
        .unwrap();
    out.volumes()
        .iter()
        .map(|v| {
            let on = v.attachments().iter().find_map(|a| a.instance_id()).map(String::from);
            (v.volume_id().unwrap_or_default().to_string(), on)
        })
        .collect()
}

#[test]
fn the_quickstart_deploys_heals_a_terminated_instance_rolls_an_ami_and_deletes_on_aws() {
    let moto = Moto::start();
    // The AWS CPI's config: the executable's file, and the test's own client on the same cloud.
    let aws = serde_json::json!({
        "region": REGION,
        "endpoint": moto.url,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "default_availability_zone": format!("{REGION}a"),
        "max_attempts": 3,
        "wait_seconds": 120,
    });
    let rt = runtime();
    let config: AwsCpiConfig = serde_json::from_value(aws.clone()).unwrap();
    let cpi = rt.block_on(AwsCpi::connect(config)).unwrap();
    let ec2 = cpi.ec2().clone();
    let (subnet, [ami1, ami2]) = rt.block_on(make_cloud(&ec2));

    let home = TestDirector::state_home();
    let cpi_config = home.path().join("aws.yml");
    std::fs::write(&cpi_config, aws.to_string()).unwrap();
    let hosts = Ec2Hosts::start(ec2.clone(), home.path().join("ec2"));
    let exec = workspace_bin("bosun-cpi-aws", "bosun-cpi-aws");
    let d = TestDirector::start_external(home, &exec, &[cpi_config.display().to_string()], &[]);

    let cloud = local_cloud_config(80)
        .replace(
            "vm_types:\n- name: default\n  cloud_properties: {}",
            "vm_types:\n- name: default\n  cloud_properties: {instance_type: t3.micro}",
        )
        .replace(
            "    azs: [z1, z2, z3]\n",
            &format!("    azs: [z1, z2, z3]\n    cloud_properties: {{subnet: {subnet}}}\n"),
        )
        .replace("- name: z1\n", &format!("- name: z1\n  cloud_properties: {{availability_zone: {REGION}a}}\n"))
        .replace("- name: z2\n", &format!("- name: z2\n  cloud_properties: {{availability_zone: {REGION}a}}\n"))
        .replace("- name: z3\n", &format!("- name: z3\n  cloud_properties: {{availability_zone: {REGION}a}}\n"));
    d.ok(&["update-cloud-config", d.write("cloud.yml", &cloud).to_str().unwrap()]);
    d.ok(&["upload-stemcell", light_stemcell(d.dir.path(), "1", &ami1).to_str().unwrap()]);
    d.ok(&["upload-release", kubo_release().to_str().unwrap()]);
    let manifest = std::fs::read_to_string(repo().join("manifests/quickstart.yml"))
        .unwrap()
        .replace("127.0.10.10 - 127.0.10.12", "127.0.80.10 - 127.0.80.12")
        .replace("  jobs:\n", "  persistent_disk: 1024\n  jobs:\n");
    let m = d.write("quickstart.yml", &manifest);

    let started = Instant::now();
    d.ok(&["-n", "-d", "quickstart", "deploy", m.to_str().unwrap()]);
    println!("deploy of 3 etcd members on EC2 (moto): {:.1} s", started.elapsed().as_secs_f64());
    let before = by_index(&d.running("quickstart", 3));
    let ips = ["127.0.80.10", "127.0.80.11", "127.0.80.12"];
    let three_members = |what: &str| {
        for ip in ips {
            eventually(&format!("etcd on {ip} to list three members {what}"), Duration::from_secs(60), || {
                etcd_members(ip).filter(|m| m.len() == 3 && m.iter().all(|(n, u)| !n.is_empty() && !u.is_empty()))
            });
        }
    };
    three_members("");
    let instances = rt.block_on(running_instances(&ec2));
    assert_eq!(instances.len(), 3, "three instances: {instances:?}");
    for i in &before {
        let cid = i["vm_cid"].as_str().unwrap();
        let (ami, ip) = &instances[cid];
        assert_eq!((ami, ip.as_str()), (&ami1, i["ips"][0].as_str().unwrap()), "instance {cid}");
        let disks = i["disk_cids"].as_array().unwrap();
        assert_eq!(disks.len(), 1, "an EBS volume each: {i}");
        assert_eq!(rt.block_on(volume_attachments(&ec2))[disks[0].as_str().unwrap()].as_deref(), Some(cid));
    }
    // Each member's data is on its EBS volume: the volume's filesystem is mounted in its instance.
    let disk_of = |i: &serde_json::Value| i["disk_cids"][0].as_str().unwrap().to_string();
    let mounted = hosts.mounted_volumes();
    for i in &before {
        assert_eq!(mounted.get(&disk_of(i)).map(String::as_str), i["vm_cid"].as_str(), "{i} mounts its volume");
    }
    // Each agent read its settings from the metadata service and kept a private copy.
    for i in &before {
        let copy =
            d.dir.path().join("ec2/instances").join(i["vm_cid"].as_str().unwrap()).join("root/bosh/settings.json");
        let meta = std::fs::metadata(&copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600, "{}", copy.display());
        let settings: serde_json::Value = serde_json::from_slice(&std::fs::read(&copy).unwrap()).unwrap();
        assert_eq!(settings["vm_cid"], i["vm_cid"], "the VM cid is the instance id the metadata gave");
    }
    let members = member_ids(ips[0]).expect("three member ids");
    assert!(etcd_put(ips[1], "YXdz", "ZWJz"), "a write before the termination");

    // An instance terminated through the EC2 API: noticed, resurrected with its address and volume.
    let victim = before[1].clone();
    let victim_cid = victim["vm_cid"].as_str().unwrap().to_string();
    let terminated_at = Instant::now();
    rt.block_on(ec2.terminate_instances().instance_ids(&victim_cid).send()).unwrap();
    let back = eventually("the instance running on a new EC2 instance", Duration::from_secs(120), || {
        let list = by_index(&d.instances("quickstart"));
        let i = &list[1];
        (i["vm_cid"] != victim["vm_cid"] && i["state"] == "running").then(|| i.clone())
    });
    println!("instance terminated → running again on a new instance: {:.1} s", terminated_at.elapsed().as_secs_f64());
    assert_eq!((&back["id"], &back["ips"], &back["disk_cids"]), (&victim["id"], &victim["ips"], &victim["disk_cids"]));
    let new_cid = back["vm_cid"].as_str().unwrap();
    let disk = back["disk_cids"][0].as_str().unwrap();
    assert_eq!(rt.block_on(volume_attachments(&ec2))[disk].as_deref(), Some(new_cid), "the volume moved with it");
    assert_eq!(rt.block_on(running_instances(&ec2))[new_cid].1, "127.0.80.11", "the same private address");
    three_members("again");
    assert_eq!(hosts.mounted_volumes().get(disk).map(String::as_str), Some(new_cid), "the volume mounted again");
    // The same member ids: the resurrected member came back with its data directory (a member
    // without one would have had to join anew, under a new id).
    assert_eq!(member_ids(ips[1]).as_ref(), Some(&members), "the members kept their ids");
    assert_eq!(etcd_get(ips[1], "YXdz").flatten().as_deref(), Some("ZWJz"), "the data survived on the volume");

    // A new AMI (a new light stemcell) rolls every instance, volumes kept.
    d.ok(&["upload-stemcell", light_stemcell(d.dir.path(), "2", &ami2).to_str().unwrap()]);
    let before = by_index(&d.running("quickstart", 3));
    let started = Instant::now();
    d.ok(&["-n", "-d", "quickstart", "deploy", m.to_str().unwrap()]);
    println!("AMI roll of 3 instances: {:.1} s", started.elapsed().as_secs_f64());
    let after = by_index(&d.running("quickstart", 3));
    let instances = rt.block_on(running_instances(&ec2));
    assert_eq!(instances.len(), 3, "three instances after the roll: {instances:?}");
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(a["vm_cid"], b["vm_cid"], "recreated: {a}");
        assert_eq!((&a["ips"], &a["disk_cids"]), (&b["ips"], &b["disk_cids"]), "address and volume kept");
        assert_eq!(instances[a["vm_cid"].as_str().unwrap()].0, ami2, "on the new AMI: {a}");
    }
    three_members("after the roll");
    let mounted = hosts.mounted_volumes();
    for a in &after {
        assert_eq!(mounted.get(&disk_of(a)).map(String::as_str), a["vm_cid"].as_str(), "{a} mounts its volume");
    }
    assert_eq!(member_ids(ips[0]).as_ref(), Some(&members), "every member kept its id through the roll");
    assert_eq!(etcd_get(ips[0], "YXdz").flatten().as_deref(), Some("ZWJz"), "the data survived the roll");

    let report = d.run(&["-d", "quickstart", "cck", "--report"]);
    assert!(report.status.success(), "nothing to repair: {}", String::from_utf8_lossy(&report.stdout));

    d.ok(&["-n", "-d", "quickstart", "delete-deployment"]);
    assert!(rt.block_on(running_instances(&ec2)).is_empty(), "no instance of the director running");
    assert!(rt.block_on(volume_attachments(&ec2)).is_empty(), "no volume of the director left");
    let interfaces = rt
        .block_on(
            ec2.describe_network_interfaces()
                .filters(Filter::builder().name("subnet-id").values(&subnet).build())
                .send(),
        )
        .unwrap();
    assert!(interfaces.network_interfaces().is_empty(), "no network interface left: {interfaces:?}");
    eventually("no instance left running here", Duration::from_secs(30), || hosts.running().is_empty().then_some(()));
    eventually("no volume left presented", Duration::from_secs(30), || hosts.loop_devices().is_empty().then_some(()));
    println!("instances started here: {}", hosts.started().len());
    assert!(hosts.failures().is_empty(), "the hosts' passes failed: {:?}", hosts.failures());
}
