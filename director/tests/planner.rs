//! Planner scenarios, pure: manifest + cloud-config + releases + stemcells + existing instances →
//! plan. No store, no CPI, no clock; a seeded RNG.

use bosun_director::planner::{plan, Plan, PlanningInput};
use bosun_director::records::{InstanceRecord, ReleaseJob, ReleasePackage, ReleaseRecord, StemcellRecord, VmRecord};
use bosun_types::api::InstanceAction;
use bosun_types::cloud_config::CloudConfig;
use bosun_types::manifest::DeploymentManifest;
use bosun_types::protocol::BlobRef;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet};

const CLOUD: &str = r#"
azs: [{name: z1}, {name: z2}, {name: z3}]
vm_types: [{name: small, cloud_properties: {cpu: 1}}, {name: large, cloud_properties: {cpu: 4}}]
disk_types: [{name: ssd, disk_size: 2048}]
networks:
- name: net
  subnets:
  - range: 10.0.0.0/24
    gateway: 10.0.0.1
    reserved: [10.0.0.2 - 10.0.0.9]
    static: [10.0.0.10 - 10.0.0.19]
    azs: [z1, z2, z3]
- name: tiny
  subnets:
  - range: 10.1.0.0/29
    gateway: 10.1.0.1
    reserved: [10.1.0.2 - 10.1.0.4]
    azs: [z1, z2, z3]
"#;

fn manifest(instances: u32, extra: &str) -> String {
    format!(
        r#"
name: dep
releases: [{{name: rel, version: latest}}]
stemcells: [{{alias: default, os: linux, version: latest}}]
update: {{canaries: 1, max_in_flight: 2}}
instance_groups:
- name: db
  azs: [z1, z2, z3]
  instances: {instances}
  vm_type: small
  stemcell: default
  networks: [{{name: net}}]
  jobs:
  - name: member
    release: rel
    properties: {{port: 7000}}
{extra}"#
    )
}

fn release() -> ReleaseRecord {
    let spec = serde_yaml::from_str(
        r#"
name: member
templates: {cfg.j2: config/cfg, run.j2: bin/run}
packages: [pkg]
properties:
  port: {default: 1}
  greeting: {default: hello}
provides: [{name: peers, type: peers, properties: [port]}]
consumes: [{name: peers, type: peers}]
processes: [{name: member, executable: bin/run}]
"#,
    )
    .unwrap();
    let mut templates = BTreeMap::new();
    templates.insert("cfg.j2".to_string(), "me={{ spec.address }} port={{ p('port') }} peers={% for i in link('peers').instances %}{{ i.address }}:{{ link('peers').p('port') }} {% endfor %}".to_string());
    templates.insert("run.j2".to_string(), "#!/bin/sh\nexec sleep 1000\n".to_string());
    ReleaseRecord {
        name: "rel".into(),
        version: "1".into(),
        commit_hash: "abc".into(),
        jobs: vec![ReleaseJob {
            name: "member".into(),
            fingerprint: "f1".into(),
            blob: BlobRef { digest: "sha256:00".into(), size: 1 },
            spec,
            templates,
        }],
        packages: vec![ReleasePackage {
            name: "pkg".into(),
            fingerprint: "p1".into(),
            blob: BlobRef { digest: "sha256:01".into(), size: 1 },
            dependencies: vec![],
        }],
        tarball_digest: "sha256:02".into(),
        uploaded_at: 1,
    }
}

fn stemcell(version: &str) -> StemcellRecord {
    StemcellRecord {
        name: "st".into(),
        version: version.into(),
        operating_system: "linux".into(),
        cid: format!("sc-{version}"),
        api_version: 2,
        digest: "d".into(),
        uploaded_at: 1,
    }
}

struct World {
    cloud: CloudConfig,
    releases: BTreeMap<String, ReleaseRecord>,
    stemcells: BTreeMap<String, StemcellRecord>,
    existing: Vec<InstanceRecord>,
    elsewhere: BTreeSet<std::net::Ipv4Addr>,
}

impl World {
    fn new() -> Self {
        let cloud = CloudConfig::parse("cc", serde_yaml::from_str(CLOUD).unwrap()).unwrap();
        let mut releases = BTreeMap::new();
        releases.insert("rel".to_string(), release());
        let mut stemcells = BTreeMap::new();
        stemcells.insert("default".to_string(), stemcell("1"));
        World { cloud, releases, stemcells, existing: vec![], elsewhere: BTreeSet::new() }
    }

    fn plan(&self, manifest_text: &str) -> Result<Plan, String> {
        self.plan_with(manifest_text, false)
    }

    fn plan_with(&self, manifest_text: &str, recreate: bool) -> Result<Plan, String> {
        let m = DeploymentManifest::parse("manifest", serde_yaml::from_str(manifest_text).unwrap())
            .map_err(|e| e.to_string())?;
        let input = PlanningInput {
            manifest: &m,
            cloud_config: &self.cloud,
            releases: &self.releases,
            stemcells: &self.stemcells,
            existing: &self.existing,
            addresses_in_use_elsewhere: &self.elsewhere,
            recreate,
        };
        plan(&input, &mut rand::rngs::StdRng::seed_from_u64(7)).map_err(|e| e.to_string())
    }

    /// What the store holds after the executor carried a plan out.
    fn apply(&mut self, p: &Plan) {
        let deleted: Vec<String> = p.deletes.iter().map(|d| d.uuid.clone()).collect();
        self.existing.retain(|e| !deleted.contains(&e.uuid));
        for g in &p.groups {
            for i in &g.instances {
                self.existing.retain(|e| e.uuid != i.uuid);
                self.existing.push(InstanceRecord {
                    deployment: "dep".into(),
                    group: i.group.clone(),
                    uuid: i.uuid.clone(),
                    index: i.index,
                    az: i.az.clone(),
                    bootstrap: i.bootstrap,
                    networks: i.networks.clone(),
                    vm: Some(VmRecord {
                        cid: format!("vm-{}", i.uuid),
                        agent_id: "a".into(),
                        stemcell_cid: i.stemcell.cid.clone(),
                        created_at: 0,
                    }),
                    disk_cids: if i.persistent_disk.is_some() { vec!["disk".into()] } else { vec![] },
                    applied: Some(i.applied.clone()),
                    generation: 1,
                    desired_running: true,
                });
            }
        }
    }
}

fn actions(p: &Plan) -> Vec<(u32, InstanceAction, Vec<String>)> {
    p.groups.iter().flat_map(|g| g.instances.iter().map(|i| (i.index, i.action, i.reasons.clone()))).collect()
}

#[test]
fn creates_instances_balanced_across_azs_with_lowest_free_addresses() {
    let w = World::new();
    let p = w.plan(&manifest(3, "")).unwrap();
    let g = &p.groups[0];
    let placed: Vec<(u32, Option<&str>, &str, bool)> =
        g.instances.iter().map(|i| (i.index, i.az.as_deref(), i.networks["net"].ip.as_str(), i.bootstrap)).collect();
    assert_eq!(
        placed,
        vec![
            (0, Some("z1"), "10.0.0.20", true),
            (1, Some("z2"), "10.0.0.21", false),
            (2, Some("z3"), "10.0.0.22", false)
        ]
    );
    assert!(g.instances.iter().all(|i| i.action == InstanceAction::Create));
    assert!(p.deletes.is_empty());
    assert_eq!(g.instances[0].networks["net"].netmask, "255.255.255.0");
    assert_eq!(g.instances[0].networks["net"].gateway.as_deref(), Some("10.0.0.1"));
}

#[test]
fn renders_links_and_properties_for_every_instance() {
    let w = World::new();
    let p = w.plan(&manifest(3, "")).unwrap();
    let cfg = &p.groups[0].instances[1].jobs[0].files["config/cfg"];
    assert_eq!(cfg.1, "me=10.0.0.21 port=7000 peers=10.0.0.20:7000 10.0.0.21:7000 10.0.0.22:7000 ");
    assert_eq!(p.groups[0].instances[1].jobs[0].files["bin/run"].0, 0o755);
    assert_eq!(p.groups[0].instances[0].packages.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["pkg"]);
}

#[test]
fn an_unchanged_manifest_keeps_everything() {
    let mut w = World::new();
    let first = w.plan(&manifest(3, "")).unwrap();
    w.apply(&first);
    let again = w.plan(&manifest(3, "")).unwrap();
    assert!(!again.has_changes());
    assert!(actions(&again).iter().all(|(_, a, r)| *a == InstanceAction::Keep && r.is_empty()));
    let uuids = |p: &Plan| p.groups[0].instances.iter().map(|i| i.uuid.clone()).collect::<Vec<_>>();
    assert_eq!(uuids(&first), uuids(&again));
}

#[test]
fn a_property_change_updates_in_place_naming_the_property() {
    let mut w = World::new();
    let first = w.plan(&manifest(3, "")).unwrap();
    w.apply(&first);
    let p = w.plan(&manifest(3, "").replace("port: 7000", "port: 7001")).unwrap();
    for (_, action, reasons) in actions(&p) {
        assert_eq!(action, InstanceAction::Update);
        assert_eq!(reasons, vec!["job `member`: property `port` changed".to_string()]);
    }
}

#[test]
fn vm_level_changes_recreate_with_reasons_and_keep_identity() {
    let mut w = World::new();
    let first = w.plan(&manifest(3, "")).unwrap();
    w.apply(&first);
    w.stemcells.insert("default".into(), stemcell("2"));
    let p = w.plan(&manifest(3, "")).unwrap();
    for (i, (_, action, reasons)) in actions(&p).into_iter().enumerate() {
        assert_eq!(action, InstanceAction::Recreate);
        assert_eq!(reasons, vec!["stemcell st/1 → st/2".to_string()]);
        assert_eq!(
            p.groups[0].instances[i].uuid, first.groups[0].instances[i].uuid,
            "uuids are stable across recreation"
        );
        assert_eq!(
            p.groups[0].instances[i].networks, first.groups[0].instances[i].networks,
            "addresses are stable across recreation"
        );
    }
    w.stemcells.insert("default".into(), stemcell("1"));
    let p = w.plan(&manifest(3, "").replace("vm_type: small", "vm_type: large")).unwrap();
    assert_eq!(actions(&p)[0].2, vec!["vm_type `small` → `large`".to_string()]);
    let p = w.plan(&manifest(3, "").replace("  jobs:", "  env: {bosh: {swap_size: 0}}\n  jobs:")).unwrap();
    assert_eq!(actions(&p)[0].2, vec!["env changed".to_string()]);
    let p = w.plan_with(&manifest(3, ""), true).unwrap();
    assert!(actions(&p)
        .iter()
        .all(|(_, a, r)| *a == InstanceAction::Recreate && r == &vec!["recreate requested".to_string()]));
}

#[test]
fn scaling_down_removes_the_highest_indexes_and_keeps_the_bootstrap_instance() {
    let mut w = World::new();
    let first = w.plan(&manifest(3, "")).unwrap();
    w.apply(&first);
    let p = w.plan(&manifest(1, "")).unwrap();
    assert_eq!(p.deletes.iter().map(|d| d.index).collect::<Vec<_>>(), vec![1, 2]);
    let kept = &p.groups[0].instances;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].index, kept[0].bootstrap, kept[0].uuid.clone()),
        (0, true, first.groups[0].instances[0].uuid.clone())
    );
    // The survivor's link now lists only itself: its configuration changes.
    assert_eq!(kept[0].action, InstanceAction::Update);
}

#[test]
fn scaling_up_fills_the_emptiest_azs_with_the_next_indexes() {
    let mut w = World::new();
    let first = w.plan(&manifest(1, "")).unwrap();
    w.apply(&first);
    let p = w.plan(&manifest(4, "")).unwrap();
    let placed: Vec<(u32, Option<&str>, InstanceAction)> =
        p.groups[0].instances.iter().map(|i| (i.index, i.az.as_deref(), i.action)).collect();
    assert_eq!(
        placed[1..],
        [
            (1, Some("z2"), InstanceAction::Create),
            (2, Some("z3"), InstanceAction::Create),
            (3, Some("z1"), InstanceAction::Create)
        ]
    );
    assert_eq!(placed[0].0, 0);
}

#[test]
fn a_removed_instance_group_is_deleted() {
    let mut w = World::new();
    let first = w.plan(&manifest(2, "")).unwrap();
    w.apply(&first);
    let text = manifest(2, "").replace("- name: db", "- name: store");
    let p = w.plan(&text).unwrap();
    assert_eq!(p.deletes.len(), 2);
    assert!(p.groups[0].instances.iter().all(|i| i.action == InstanceAction::Create));
    // The old instances' addresses are not handed out while they may still be alive.
    assert_eq!(p.groups[0].instances[0].networks["net"].ip, "10.0.0.22");
}

#[test]
fn static_ips_are_assigned_and_checked() {
    let w = World::new();
    let with_static = |ips: &str, n: u32| {
        manifest(n, "").replace("networks: [{name: net}]", &format!("networks: [{{name: net, static_ips: [{ips}]}}]"))
    };
    let p = w.plan(&with_static("10.0.0.10 - 10.0.0.12", 3)).unwrap();
    assert_eq!(
        p.groups[0].instances.iter().map(|i| i.networks["net"].ip.as_str()).collect::<Vec<_>>(),
        ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    );
    assert_eq!(
        w.plan(&with_static("10.0.0.10 - 10.0.0.11", 3)).unwrap_err(),
        "/instance_groups/0/networks/0/static_ips: instance group `db` has 3 instances but 2 static IPs on network `net`"
    );
    assert_eq!(
        w.plan(&with_static("10.0.5.10", 1)).unwrap_err(),
        "/instance_groups/0/networks/0/static_ips: static IP 10.0.5.10 is in no subnet of network `net`"
    );
    assert_eq!(
        w.plan(&with_static("10.0.0.3", 1)).unwrap_err(),
        "/instance_groups/0/networks/0/static_ips: static IP 10.0.0.3 is in the reserved range of network `net`"
    );
    assert_eq!(
        w.plan(&with_static("10.0.0.50", 1)).unwrap_err(),
        "/instance_groups/0/networks/0/static_ips: static IP 10.0.0.50 is not in the static range of network `net`"
    );
}

#[test]
fn address_exhaustion_is_found_before_anything_changes() {
    let w = World::new();
    // 10.1.0.0/29: .1 gateway, .2-.4 reserved, .7 broadcast: .5 and .6 remain.
    let text = manifest(3, "").replace("networks: [{name: net}]", "networks: [{name: tiny}]");
    assert_eq!(w.plan(&text).unwrap_err(), "/instance_groups/0/networks/0/name: network `tiny` has no free address left for instance group `db` in AZ `z3` (1 more needed)");
    let mut w2 = World::new();
    w2.elsewhere.insert("10.1.0.5".parse().unwrap());
    let two = manifest(2, "").replace("networks: [{name: net}]", "networks: [{name: tiny}]");
    assert!(
        w2.plan(&two).unwrap_err().contains("no free address left"),
        "addresses of other deployments count as taken"
    );
}

#[test]
fn unknown_references_are_named_with_their_path() {
    let w = World::new();
    let cases = [
        (
            "vm_type: small",
            "vm_type: huge",
            "/instance_groups/0/vm_type: unknown vm_type `huge` (the cloud-config has: small, large)",
        ),
        (
            "networks: [{name: net}]",
            "networks: [{name: nope}]",
            "/instance_groups/0/networks/0/name: unknown network `nope` (the cloud-config has: net, tiny)",
        ),
        (
            "azs: [z1, z2, z3]",
            "azs: [z1, z9]",
            "/instance_groups/0/azs/1: unknown AZ `z9` (the cloud-config has: z1, z2, z3)",
        ),
        (
            "stemcell: default",
            "stemcell: other",
            "/instance_groups/0/stemcell: unknown stemcell alias `other` (the manifest's stemcells: default)",
        ),
        (
            "release: rel\n",
            "release: nope\n",
            "/instance_groups/0/jobs/0/release: release `nope` is not listed in the manifest's releases",
        ),
        (
            "- name: member",
            "- name: membr",
            "/instance_groups/0/jobs/0/name: release `rel/1` has no job `membr` (it has: member)",
        ),
    ];
    for (from, to, want) in cases {
        assert_eq!(w.plan(&manifest(1, "").replace(from, to)).unwrap_err(), want);
    }
    let mut no_release = World::new();
    no_release.releases.clear();
    assert_eq!(
        no_release.plan(&manifest(1, "")).unwrap_err(),
        "/instance_groups/0/jobs/0/release: release `rel` is not uploaded"
    );
}

#[test]
fn a_template_error_names_the_job_and_template() {
    let mut w = World::new();
    w.releases.get_mut("rel").unwrap().jobs[0].templates.insert("cfg.j2".into(), "{{ p('missing.prop') }}".into());
    let e = w.plan(&manifest(1, "")).unwrap_err();
    assert!(e.starts_with("/instance_groups/0/jobs/0: job `member`, template `cfg.j2`:"), "{e}");
    assert!(e.contains("property `missing.prop` is not set and has no default"), "{e}");
}

#[test]
fn adding_a_persistent_disk_to_a_new_group_plans_it() {
    let w = World::new();
    let p = w.plan(&manifest(1, "").replace("  jobs:", "  persistent_disk_type: ssd\n  jobs:")).unwrap();
    assert_eq!(p.groups[0].instances[0].persistent_disk.as_ref().map(|d| d.0), Some(2048));
}
