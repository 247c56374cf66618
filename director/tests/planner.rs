//! Planner scenarios, pure: manifest + cloud-config + releases + stemcells + existing instances →
//! plan. No store, no CPI, no clock; a seeded RNG. Every decision the planner makes is tabled in
//! this one file, so a rule is read beside its neighbours (hence its length).

use bosun_director::planner::{plan, Batch, DiskPlan, Plan, PlanningInput, Requests, Selection};
use bosun_director::records::{
    DesiredState, InstanceRecord, ReleaseJob, ReleasePackage, ReleaseRecord, StemcellRecord, VmRecord,
};
use bosun_types::api::{InstanceAction, InstanceSelector};
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
- name: dyn
  type: dynamic
  subnets: [{azs: [z1, z2], cloud_properties: {zone: a}}, {azs: [z3], cloud_properties: {zone: b}}]
- name: vip
  type: vip
- name: tiny
  subnets:
  - range: 10.1.0.0/29
    gateway: 10.1.0.1
    reserved: [10.1.0.2 - 10.1.0.4]
    azs: [z1, z2, z3]
compilation: {workers: 2, network: net, az: z1, vm_type: small}
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
  client.certificate: {description: a client certificate}
  client.private_key: {description: its key}
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
            compiled_only: false,
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
    /// Keys of the packages compiled so far.
    compiled: BTreeSet<String>,
}

impl World {
    fn new() -> Self {
        let cloud = CloudConfig::parse("cc", serde_yaml::from_str(CLOUD).unwrap()).unwrap();
        let mut releases = BTreeMap::new();
        releases.insert("rel".to_string(), release());
        let mut stemcells = BTreeMap::new();
        stemcells.insert("default".to_string(), stemcell("1"));
        World { cloud, releases, stemcells, existing: vec![], elsewhere: BTreeSet::new(), compiled: BTreeSet::new() }
    }

    fn plan(&self, manifest_text: &str) -> Result<Plan, String> {
        self.plan_with(manifest_text, &Requests::default())
    }

    fn plan_with(&self, manifest_text: &str, requests: &Requests) -> Result<Plan, String> {
        let m = DeploymentManifest::parse("manifest", serde_yaml::from_str(manifest_text).unwrap())
            .map_err(|e| e.to_string())?;
        let input = PlanningInput {
            manifest: &m,
            cloud_config: &self.cloud,
            releases: &self.releases,
            stemcells: &self.stemcells,
            existing: &self.existing,
            addresses_in_use_elsewhere: &self.elsewhere,
            requests,
            compiled: &self.compiled,
        };
        plan(&input, &mut rand::rngs::StdRng::seed_from_u64(7)).map_err(|e| e.to_string())
    }

    /// What the store holds after the executor carried a plan out.
    fn apply(&mut self, p: &Plan) {
        self.compiled.extend(p.compilation.iter().flat_map(|c| c.packages.iter().map(|x| x.key.clone())));
        let deleted: Vec<String> = p.deletes.iter().map(|d| d.uuid.clone()).collect();
        self.existing.retain(|e| !deleted.contains(&e.uuid));
        for g in &p.groups {
            for i in &g.instances {
                let before = self.existing.iter().find(|e| e.uuid == i.uuid).cloned();
                self.existing.retain(|e| e.uuid != i.uuid);
                let disk_cids = match (&i.disk, before.as_ref()) {
                    (DiskPlan::Keep, Some(b)) => b.disk_cids.clone(),
                    (DiskPlan::Create, _) => vec![format!("disk-{}", i.uuid)],
                    (DiskPlan::Migrate { to_mb, .. }, _) => vec![format!("disk-{}-{to_mb}", i.uuid)],
                    _ => vec![],
                };
                let vm = (i.action != InstanceAction::Detach && i.state != DesiredState::Detached).then(|| VmRecord {
                    cid: format!("vm-{}", i.uuid),
                    agent_id: "a".into(),
                    stemcell_cid: i.stemcell.cid.clone(),
                    created_at: 0,
                });
                self.existing.push(InstanceRecord {
                    deployment: "dep".into(),
                    group: i.group.clone(),
                    uuid: i.uuid.clone(),
                    index: i.index,
                    az: i.az.clone(),
                    bootstrap: i.bootstrap,
                    networks: i.networks.clone(),
                    vm,
                    disk_cids,
                    applied: Some(i.applied.clone()),
                    generation: 1,
                    state: i.state,
                    dirty: false,
                    migrating_disk: None,
                    replacement_vm: None,
                    replacement_networks: BTreeMap::new(),
                    deleting: false,
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
    assert_eq!(p.groups[0].instances[1].jobs[0].files["bin/run"].0, 0o700);
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
fn properties_a_job_does_not_declare_are_warned_of_and_ignored() {
    let w = World::new();
    assert!(w.plan(&manifest(1, "")).unwrap().warnings.is_empty());
    // A generated certificate given whole (its `ca` beside the declared `certificate` and
    // `private_key`) is BOSH's idiom: no warning for its parts.
    let whole = "properties: {port: 7000, client: {ca: a, certificate: b, private_key: c}}";
    assert!(w.plan(&manifest(1, "").replace("properties: {port: 7000}", whole)).unwrap().warnings.is_empty());
    let typo = manifest(1, "").replace(
        "properties: {port: 7000}",
        "properties: {port: 7000, prot: 1, tls: {ca: x}, client: {certficate: b, private_key: c}}",
    );
    let p = w.plan(&typo).unwrap();
    assert_eq!(
        p.warnings,
        vec![
            "/instance_groups/0/jobs/0/properties: job `member` declares no property `client.certficate`; it is ignored",
            "/instance_groups/0/jobs/0/properties: job `member` declares no property `prot`; it is ignored",
            "/instance_groups/0/jobs/0/properties: job `member` declares no property `tls.ca`; it is ignored",
        ]
    );
    // Rendering is as before: the template sees only declared properties.
    assert_eq!(p.groups[0].instances[0].jobs[0].files["config/cfg"].1, "me=10.0.0.20 port=7000 peers=10.0.0.20:7000 ");
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
    let p = w.plan_with(&manifest(3, ""), &Requests { recreate: Selection::All, ..Requests::default() }).unwrap();
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
            "/instance_groups/0/networks/0/name: unknown network `nope` (the cloud-config has: net, dyn, vip, tiny)",
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

fn with_disk(n: u32, disk: &str) -> String {
    manifest(n, "").replace("  jobs:", &format!("  {disk}\n  jobs:"))
}

#[test]
fn every_change_detection_rule_names_its_reason() {
    let mut w = World::new();
    let first = w.plan(&with_disk(3, "persistent_disk: 1024")).unwrap();
    w.apply(&first);
    let reasons = |w: &World, text: &str| -> (InstanceAction, Vec<String>, DiskPlan) {
        let p = w.plan(text).unwrap();
        let i = &p.groups[0].instances[0];
        (i.action, i.reasons.clone(), i.disk.clone())
    };
    let base = with_disk(3, "persistent_disk: 1024");
    // Nothing changed: nothing happens, not even for a changed update block.
    let (a, r, d) = reasons(&w, &base.replace("max_in_flight: 2", "max_in_flight: 3"));
    assert_eq!((a, r, d), (InstanceAction::Keep, vec![], DiskPlan::Keep));

    // VM-level: recreate.
    let mut cloud_changed = World { existing: w.existing.clone(), ..World::new() };
    cloud_changed.cloud = CloudConfig::parse(
        "cc",
        serde_yaml::from_str(
            &CLOUD.replace("{name: small, cloud_properties: {cpu: 1}}", "{name: small, cloud_properties: {cpu: 2}}"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(reasons(&cloud_changed, &base).1, vec!["cloud properties changed"]);
    let mut az_changed = World { existing: w.existing.clone(), ..World::new() };
    az_changed.cloud = CloudConfig::parse(
        "cc",
        serde_yaml::from_str(&CLOUD.replace("{name: z1}", "{name: z1, cloud_properties: {zone: a}}")).unwrap(),
    )
    .unwrap();
    assert_eq!(reasons(&az_changed, &base).0, InstanceAction::Recreate, "AZ cloud properties are VM properties");
    let net = base.replace("networks: [{name: net}]", "networks: [{name: net, static_ips: [10.0.0.10 - 10.0.0.12]}]");
    let (a, r, _) = reasons(&w, &net);
    assert_eq!(a, InstanceAction::Recreate);
    assert_eq!(r[0], "network `net`: 10.0.0.20 → 10.0.0.10");

    // Jobs, packages, templates: in place.
    let mut templates = World { existing: w.existing.clone(), ..World::new() };
    templates.releases.get_mut("rel").unwrap().jobs[0].fingerprint = "f2".into();
    assert_eq!(
        reasons(&templates, &base),
        (InstanceAction::Update, vec!["job `member`: templates changed".to_string()], DiskPlan::Keep)
    );
    let mut package = World { existing: w.existing.clone(), ..World::new() };
    package.releases.get_mut("rel").unwrap().packages[0].fingerprint = "p2".into();
    assert_eq!(reasons(&package, &base).1, vec!["package `pkg` changed"]);

    // Persistent disk: size or type change migrates, dropping it orphans; no new VM for either.
    assert_eq!(
        reasons(&w, &with_disk(3, "persistent_disk: 2048")),
        (
            InstanceAction::Update,
            vec!["persistent disk 1024 → 2048 MiB: migrate".to_string()],
            DiskPlan::Migrate { from_mb: 1024, to_mb: 2048, type_changed: false }
        )
    );
    let (a, r, d) = reasons(&w, &with_disk(3, "persistent_disk_type: ssd"));
    assert_eq!(a, InstanceAction::Update);
    assert_eq!(r, vec!["persistent disk 1024 → 2048 MiB: migrate"]);
    assert_eq!(d, DiskPlan::Migrate { from_mb: 1024, to_mb: 2048, type_changed: false });
    let (a, r, d) = reasons(&w, &manifest(3, ""));
    assert_eq!((a, d), (InstanceAction::Update, DiskPlan::Orphan));
    assert_eq!(r, vec!["persistent disk 1024 MiB → none (the disk is orphaned)"]);

    // A disk type with the same size but other cloud properties is a type change.
    let mut typed = World::new();
    let t = typed.plan(&with_disk(1, "persistent_disk_type: ssd")).unwrap();
    typed.apply(&t);
    typed.cloud =
        CloudConfig::parse(
            "cc",
            serde_yaml::from_str(&CLOUD.replace(
                "{name: ssd, disk_size: 2048}",
                "{name: ssd, disk_size: 2048, cloud_properties: {iops: 9000}}",
            ))
            .unwrap(),
        )
        .unwrap();
    let p = typed.plan(&with_disk(1, "persistent_disk_type: ssd")).unwrap();
    assert_eq!(p.groups[0].instances[0].disk, DiskPlan::Migrate { from_mb: 2048, to_mb: 2048, type_changed: true });
    assert_eq!(p.groups[0].instances[0].reasons, vec!["persistent disk 2048 → 2048 MiB, disk type changed: migrate"]);
}

#[test]
fn instances_with_disks_never_move_az_and_leave_a_removed_az_by_deletion() {
    let mut w = World::new();
    let first = w.plan(&with_disk(3, "persistent_disk: 1024")).unwrap();
    w.apply(&first);
    let text =
        with_disk(3, "persistent_disk: 1024").replace("azs: [z1, z2, z3]\n  instances", "azs: [z1, z2]\n  instances");
    let p = w.plan(&text).unwrap();
    assert_eq!(p.deletes.iter().map(|d| (d.index, d.az.as_deref())).collect::<Vec<_>>(), vec![(2, Some("z3"))]);
    let placed: Vec<(u32, Option<&str>, InstanceAction)> =
        p.groups[0].instances.iter().map(|i| (i.index, i.az.as_deref(), i.action)).collect();
    // They stay where they are; only their links change (the member list did).
    assert_eq!(placed[0], (0, Some("z1"), InstanceAction::Update));
    assert_eq!(placed[1], (1, Some("z2"), InstanceAction::Update));
    assert_eq!(
        p.groups[0].instances[0].reasons,
        vec!["rendered configuration changed (links, addresses or instance spec)"]
    );
    assert_eq!((placed[2].1, placed[2].2), (Some("z1"), InstanceAction::Create));
}

#[test]
fn scale_down_takes_the_highest_index_from_the_fullest_az() {
    let mut w = World::new();
    let first = w.plan(&manifest(5, "")).unwrap(); // z1: 0, 3; z2: 1, 4; z3: 2
    w.apply(&first);
    let p = w.plan(&manifest(3, "")).unwrap();
    assert_eq!(p.deletes.iter().map(|d| d.index).collect::<Vec<_>>(), vec![3, 4]);
    let p = w.plan(&manifest(4, "")).unwrap();
    assert_eq!(p.deletes.iter().map(|d| d.index).collect::<Vec<_>>(), vec![4]);
}

fn batches(p: &Plan) -> Vec<(bool, Vec<u32>)> {
    let g = &p.groups[0];
    g.batches.iter().map(|b: &Batch| (b.canary, b.instances.iter().map(|&k| g.instances[k].index).collect())).collect()
}

#[test]
fn canaries_come_first_then_az_by_az_batches_of_max_in_flight() {
    let mut w = World::new();
    let first = w.plan(&manifest(9, "")).unwrap(); // z1: 0 3 6, z2: 1 4 7, z3: 2 5 8
                                                   // A first deploy goes in the same order.
    assert_eq!(
        batches(&first),
        vec![
            (true, vec![0]),
            (false, vec![3, 6]),
            (false, vec![1, 4]),
            (false, vec![7]),
            (false, vec![2, 5]),
            (false, vec![8])
        ]
    );
    w.apply(&first);
    let change = |t: &str| t.replace("port: 7000", "port: 7001");
    let p = w
        .plan(&change(&manifest(9, "").replace("canaries: 1, max_in_flight: 2", "canaries: 2, max_in_flight: 1")))
        .unwrap();
    assert_eq!(
        batches(&p),
        vec![
            (true, vec![0]),
            (true, vec![3]),
            (false, vec![6]),
            (false, vec![1]),
            (false, vec![4]),
            (false, vec![7]),
            (false, vec![2]),
            (false, vec![5]),
            (false, vec![8])
        ]
    );
    // Percentages are of each AZ's changing instances, floored, at least one.
    let p = w.plan(&change(&manifest(9, "").replace("max_in_flight: 2", "max_in_flight: 50%"))).unwrap();
    assert_eq!(
        batches(&p),
        vec![
            (true, vec![0]),
            (false, vec![3]),
            (false, vec![6]),
            (false, vec![1]),
            (false, vec![4]),
            (false, vec![7]),
            (false, vec![2]),
            (false, vec![5]),
            (false, vec![8])
        ]
    );
    let p = w
        .plan(&change(&manifest(9, "").replace("canaries: 1, max_in_flight: 2", "canaries: 0, max_in_flight: 100%")))
        .unwrap();
    assert_eq!(batches(&p), vec![(false, vec![0, 3, 6]), (false, vec![1, 4, 7]), (false, vec![2, 5, 8])]);
    // Only changing instances are batched; the canary is the first of the first AZ with changes.
    let mut only = World { existing: w.existing.clone(), ..World::new() };
    only.existing.retain(|e| e.index != 4 && e.index != 8);
    let p = only.plan(&manifest(9, "")).unwrap();
    assert_eq!(batches(&p), vec![(true, vec![4]), (false, vec![8])]);
    // The command-line overrides win over the manifest.
    let p = w
        .plan_with(
            &change(&manifest(9, "")),
            &Requests { canaries: Some(0), max_in_flight: Some("3".parse().unwrap()), ..Requests::default() },
        )
        .unwrap();
    assert_eq!(batches(&p), vec![(false, vec![0, 3, 6]), (false, vec![1, 4, 7]), (false, vec![2, 5, 8])]);
}

#[test]
fn commands_select_instances_and_set_their_state() {
    let mut w = World::new();
    let first = w.plan(&with_disk(3, "persistent_disk: 1024")).unwrap();
    w.apply(&first);
    let base = with_disk(3, "persistent_disk: 1024");
    let sel = |s: &str| Selection::Some(vec![s.parse::<InstanceSelector>().unwrap()]);
    let acts = |p: &Plan| p.groups[0].instances.iter().map(|i| i.action).collect::<Vec<_>>();
    use InstanceAction::*;

    let p = w.plan_with(&base, &Requests { recreate: sel("db/1"), ..Requests::default() }).unwrap();
    assert_eq!(acts(&p), vec![Keep, Recreate, Keep]);
    assert_eq!(p.groups[0].instances[1].reasons, vec!["recreate requested"]);
    let uuid = first.groups[0].instances[2].uuid.clone();
    let p = w.plan_with(&base, &Requests { restart: sel(&format!("db/{uuid}")), ..Requests::default() }).unwrap();
    assert_eq!(acts(&p), vec![Keep, Keep, Restart]);

    let stop = w
        .plan_with(&base, &Requests { state: Some((sel("db/0"), DesiredState::Stopped)), ..Requests::default() })
        .unwrap();
    assert_eq!(acts(&stop), vec![Stop, Keep, Keep]);
    let hard = w
        .plan_with(&base, &Requests { state: Some((sel("db"), DesiredState::Detached)), ..Requests::default() })
        .unwrap();
    assert_eq!(acts(&hard), vec![Detach, Detach, Detach]);
    assert!(hard.groups[0].instances.iter().all(|i| i.disk == DiskPlan::Keep), "a hard stop keeps the disks");

    // A stopped instance stays stopped through deploys until started.
    w.apply(&stop);
    let p = w.plan(&base.replace("port: 7000", "port: 7001")).unwrap();
    assert_eq!(acts(&p), vec![Update, Update, Update]);
    assert_eq!(p.groups[0].instances[0].state, DesiredState::Stopped);
    let p = w
        .plan_with(&base, &Requests { state: Some((Selection::All, DesiredState::Started)), ..Requests::default() })
        .unwrap();
    assert_eq!(acts(&p), vec![Start, Keep, Keep]);

    // A detached instance has no VM and gets none until started; then it is created again.
    w.apply(&hard);
    assert!(!w.plan(&base).unwrap().has_changes());
    let p = w
        .plan_with(&base, &Requests { state: Some((sel("db/2"), DesiredState::Started)), ..Requests::default() })
        .unwrap();
    assert_eq!(acts(&p), vec![Keep, Keep, Create]);
    assert_eq!(p.groups[0].instances[2].reasons, vec!["start requested (the instance was stopped with --hard)"]);
    assert_eq!(p.groups[0].instances[2].disk, DiskPlan::Keep);

    // An instance that does not exist is named.
    assert_eq!(
        w.plan_with(&base, &Requests { recreate: sel("db/7"), ..Requests::default() }).unwrap_err(),
        "instances: no instance of the deployment matches `db/7`"
    );
}

#[test]
fn create_swap_delete_gives_the_replacement_a_free_address_and_static_ips_fall_back() {
    let mut w = World::new();
    let text = manifest(3, "").replace(
        "update: {canaries: 1, max_in_flight: 2}",
        "update: {canaries: 1, max_in_flight: 2, vm_strategy: create-swap-delete}",
    );
    let first = w.plan(&text).unwrap();
    w.apply(&first);
    w.stemcells.insert("default".into(), stemcell("2"));
    let p = w.plan(&text).unwrap();
    let mut seen = BTreeSet::new();
    for (k, i) in p.groups[0].instances.iter().enumerate() {
        assert_eq!(i.action, InstanceAction::Recreate);
        assert!(i.create_swap_delete);
        let old = &first.groups[0].instances[k].networks["net"].ip;
        let new = &i.networks["net"].ip;
        assert_ne!(old, new, "the replacement never takes an address a live VM holds");
        assert!(seen.insert(new.clone()) && !first.groups[0].instances.iter().any(|f| &f.networks["net"].ip == new));
        assert_eq!(i.reasons[1], format!("create-swap-delete: the replacement VM takes {new} (was {old})"));
    }
    // Rendering sees the new addresses.
    assert!(p.groups[0].instances[0].jobs[0].files["config/cfg"].1.starts_with("me=10.0.0.23 "));

    let statics =
        text.replace("networks: [{name: net}]", "networks: [{name: net, static_ips: [10.0.0.10 - 10.0.0.12]}]");
    let mut s = World::new();
    s.apply(&s.plan(&statics).unwrap());
    s.stemcells.insert("default".into(), stemcell("2"));
    let p = s.plan(&statics).unwrap();
    assert!(p.groups[0].instances.iter().all(|i| i.action == InstanceAction::Recreate && !i.create_swap_delete));
    assert!(p.groups[0].instances[0].reasons[1].contains("with static IPs the old VM is deleted first"));

    // No spare address: delete-create, said so, not a failure.
    let tiny =
        text.replace("networks: [{name: net}]", "networks: [{name: tiny}]").replace("instances: 3", "instances: 2");
    let mut t = World::new();
    t.apply(&t.plan(&tiny).unwrap());
    t.stemcells.insert("default".into(), stemcell("2"));
    let p = t.plan(&tiny).unwrap();
    assert!(p.groups[0].instances.iter().all(|i| !i.create_swap_delete));
    assert!(p.groups[0].instances[0].reasons[1].contains("no spare address"));
}

#[test]
fn dynamic_networks_leave_the_address_to_the_cloud_and_keep_what_it_gave() {
    let mut w = World::new();
    let text = manifest(3, "").replace("networks: [{name: net}]", "networks: [{name: dyn}]");
    let p = w.plan(&text).unwrap();
    for i in &p.groups[0].instances {
        let n = &i.networks["dyn"];
        assert_eq!((n.kind.as_str(), n.ip.as_str()), ("dynamic", ""));
        let zone = if i.az.as_deref() == Some("z3") { "b" } else { "a" };
        assert_eq!(n.cloud_properties, serde_json::json!({"zone": zone}), "the AZ's subnet's cloud properties");
    }
    assert!(bosun_director::planner::address_pending(&p.groups[0].instances[0].networks));
    // What the executor records once the VMs exist: the cloud's addresses.
    let mut given = p.clone();
    for (k, i) in given.groups[0].instances.iter_mut().enumerate() {
        let n = i.networks.get_mut("dyn").unwrap();
        n.ip = format!("192.168.0.{}", 50 + k);
    }
    w.apply(&given);
    // The executor then renders the instances again with those addresses, as the planner says.
    let rendered = w.plan(&text).unwrap();
    assert!(rendered.groups[0].instances[0].jobs[0].files["config/cfg"].1.starts_with("me=192.168.0.50 "));
    w.apply(&rendered);
    let again = w.plan(&text).unwrap();
    assert!(!again.has_changes(), "a VM keeps the address the cloud gave it");
    assert_eq!(again.groups[0].instances[1].networks["dyn"].ip, "192.168.0.51");

    let e =
        w.plan(&manifest(1, "").replace("networks: [{name: net}]", "networks: [{name: dyn, static_ips: [10.0.0.10]}]"));
    assert!(e.unwrap_err().contains("network `dyn` is dynamic: the cloud assigns its addresses"));
    let e = w.plan(&manifest(1, "").replace("networks: [{name: net}]", "networks: [{name: vip}]"));
    assert!(e.unwrap_err().contains("is a vip network"));
}

#[test]
fn serial_groups_go_alone_and_neighbouring_non_serial_groups_go_together() {
    let w = World::new();
    let group = |name: &str, serial: bool| {
        format!(
            "- name: {name}\n  azs: [z1]\n  instances: 1\n  vm_type: small\n  stemcell: default\n  networks: [{{name: net}}]\n  update: {{serial: {serial}}}\n  jobs:\n  - name: member\n    release: rel\n    properties: {{port: 7000}}\n    provides: {{peers: nil}}\n    consumes: {{peers: {{from: peers}}}}\n"
        )
    };
    let text = manifest(1, "")
        + &[
            group("a", false),
            group("b", false),
            group("c", true),
            group("d", false),
            group("e", true),
            group("f", true),
        ]
        .concat();
    let p = w.plan(&text).unwrap();
    let names = |stage: &Vec<usize>| stage.iter().map(|&k| p.groups[k].name.as_str()).collect::<Vec<_>>();
    let stages: Vec<Vec<&str>> = p.stages.iter().map(names).collect();
    assert_eq!(stages, vec![vec!["db"], vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"], vec!["f"]]);
}

#[test]
fn deletes_run_highest_index_first_at_the_groups_max_in_flight_and_a_removed_group_at_once() {
    let mut w = World::new();
    let first = w.plan(&manifest(5, "")).unwrap();
    w.apply(&first);
    // Scale-in 5 → 1 at max_in_flight 2: indexes 4 3 | 2 1, the group's script timeout each.
    let p = w.plan(&manifest(1, "")).unwrap();
    let batches: Vec<Vec<u32>> =
        p.delete_batches.iter().map(|b| b.instances.iter().map(|i| i.index).collect()).collect();
    assert_eq!(batches, vec![vec![4, 3], vec![2, 1]]);
    assert!(p.delete_batches.iter().all(|b| b.script_timeout_ms == p.groups[0].script_timeout_ms));
    // A group gone from the manifest: all its instances in one batch, the default timeout.
    let p = w.plan(&manifest(5, "").replace("- name: db", "- name: store")).unwrap();
    assert_eq!(p.delete_batches.len(), 1);
    assert_eq!(p.delete_batches[0].instances.len(), 5);
    assert_eq!(p.delete_batches[0].script_timeout_ms, bosun_director::planner::DEFAULT_SCRIPT_TIMEOUT_MS);
    // Nothing to delete: no batches.
    assert!(w.plan(&manifest(5, "")).unwrap().delete_batches.is_empty());
}

/// The release with `pkg` depending on `base`.
fn with_dependency(w: &mut World) {
    let r = w.releases.get_mut("rel").unwrap();
    r.packages[0].dependencies = vec!["base".into()];
    r.packages.push(ReleasePackage {
        name: "base".into(),
        fingerprint: "b1".into(),
        blob: BlobRef { digest: "sha256:03".into(), size: 1 },
        dependencies: vec![],
        compiled_only: false,
    });
}

fn compilations(p: &Plan) -> Vec<(String, String)> {
    p.compilation
        .iter()
        .flat_map(|c| &c.packages)
        .map(|c| (c.package.name.clone(), format!("{}/{}", c.stemcell.operating_system, c.stemcell.version)))
        .collect()
}

#[test]
fn packages_compile_once_per_stemcell_dependencies_first_keyed_by_what_they_are_built_from() {
    let mut w = World::new();
    with_dependency(&mut w);
    let first = w.plan(&manifest(3, "")).unwrap();
    assert_eq!(compilations(&first), [("base".into(), "linux/1".into()), ("pkg".into(), "linux/1".into())]);
    let c = first.compilation.as_ref().unwrap();
    assert_eq!(c.packages[1].dependencies, vec![("base".to_string(), c.packages[0].key.clone())]);
    // Every instance installs the same compiled packages: those its jobs name, not what compiling
    // them needed (as on BOSH, a job names a package it needs at run time).
    let keys: BTreeSet<Vec<String>> =
        first.groups[0].instances.iter().map(|i| i.packages.iter().map(|p| p.compiled_key.clone()).collect()).collect();
    assert_eq!(keys.len(), 1);
    let installed: Vec<&str> = first.groups[0].instances[0].packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(installed, ["pkg"]);
    assert!(first.groups[0].instances[0].packages[0].dependencies.is_empty(), "nothing to install first");
    // Two workers asked for, two packages: two compilation VMs on addresses no instance has.
    assert_eq!(c.workers.len(), 2);
    let instance_ips: BTreeSet<String> =
        first.groups[0].instances.iter().map(|i| i.networks["net"].ip.clone()).collect();
    for wk in &c.workers {
        assert!(!instance_ips.contains(&wk.networks["net"].ip), "{:?}", wk.networks);
    }
    assert_eq!((c.az.as_deref(), c.cloud_properties.clone()), (Some("z1"), serde_json::json!({"cpu": 1})));
    w.apply(&first);

    // Compiled already: nothing to compile, nothing changes.
    let again = w.plan(&manifest(3, "")).unwrap();
    assert!(again.compilation.is_none() && !again.has_changes());

    // A new stemcell: compiled again for it, under new keys.
    w.stemcells.insert("default".into(), stemcell("2"));
    let upgrade = w.plan(&manifest(3, "")).unwrap();
    assert_eq!(compilations(&upgrade), [("base".into(), "linux/2".into()), ("pkg".into(), "linux/2".into())]);
    w.apply(&upgrade);

    // A dependency's new source changes its dependents' keys too.
    w.releases.get_mut("rel").unwrap().packages[1].fingerprint = "b2".into();
    let rebuilt = w.plan(&manifest(3, "")).unwrap();
    assert_eq!(compilations(&rebuilt), [("base".into(), "linux/2".into()), ("pkg".into(), "linux/2".into())]);
}

#[test]
fn compilation_needs_a_compilation_block_and_the_manifests_wins_over_the_cloud_configs() {
    let mut w = World::new();
    // The manifest's block (BOSH v1's place) is used first.
    let own = "compilation: {workers: 1, network: net, az: z2, cloud_properties: {cpu: 8}}";
    let p = w.plan(&manifest(1, own)).unwrap();
    let c = p.compilation.as_ref().unwrap();
    assert_eq!((c.workers.len(), c.az.as_deref()), (1, Some("z2")));
    assert_eq!(c.cloud_properties, serde_json::json!({"cpu": 8}));
    // Workers are never more than the packages to compile.
    let many = "compilation: {workers: 9, network: net}";
    assert_eq!(w.plan(&manifest(1, many)).unwrap().compilation.unwrap().workers.len(), 1);
    // A block naming what does not exist is refused where it stands.
    let err = w.plan(&manifest(1, "compilation: {workers: 1, network: nope}")).unwrap_err();
    assert_eq!(err, "/compilation/network: unknown network `nope`");
    // Without any block, packages cannot compile: the plan says which.
    w.cloud.compilation = None;
    let err = w.plan(&manifest(1, "")).unwrap_err();
    assert!(err.starts_with("/compilation: packages pkg must be compiled"), "{err}");
}

/// The address allocator under random subnets, reservations, static pools, instance counts,
/// static IP requests and scale steps: a plan either fails with an error naming where, or gives
/// every instance one address of its network's subnet — never the network, broadcast or gateway
/// address, never a reserved one, never a static one unless asked for, never one twice.
mod address_properties {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn cloud(prefix: u8, reserved: u32, statics: u32, azs: &[&str]) -> Option<CloudConfig> {
        let base = u32::from(Ipv4Addr::new(10, 9, 0, 0));
        let at = |k: u32| Ipv4Addr::from(base + k);
        let size = 1u32 << (32 - prefix);
        let mut subnet =
            format!("  - range: 10.9.0.0/{prefix}\n    gateway: {}\n    azs: [{}]\n", at(1), azs.join(", "));
        if reserved > 0 {
            subnet += &format!("    reserved: [{} - {}]\n", at(2), at(1 + reserved));
        }
        if statics > 0 {
            subnet += &format!("    static: [{} - {}]\n", at(2 + reserved), at(1 + reserved + statics));
        }
        if 2 + reserved + statics > size {
            return None;
        }
        let text = format!("azs: [{{name: z1}}, {{name: z2}}, {{name: z3}}]\nvm_types: [{{name: small}}]\nnetworks:\n- name: net\n  subnets:\n{subnet}compilation: {{workers: 1, network: net, az: {}, vm_type: small}}\n", azs[0]);
        CloudConfig::parse("cc", serde_yaml::from_str(&text).unwrap()).ok()
    }

    fn check(p: &Plan, prefix: u8, reserved: u32, statics: u32, asked: &BTreeSet<Ipv4Addr>) {
        let base = u32::from(Ipv4Addr::new(10, 9, 0, 0));
        let size = 1u32 << (32 - prefix);
        let mut seen = BTreeSet::new();
        for i in p.groups.iter().flat_map(|g| &g.instances) {
            let ip: Ipv4Addr = i.networks["net"].ip.parse().unwrap();
            let k = u32::from(ip).wrapping_sub(base);
            assert!(k < size, "{ip} is outside 10.9.0.0/{prefix}");
            assert!(k != 0 && k != size - 1 && k != 1, "{ip}: network, broadcast or gateway address");
            assert!(!(2..2 + reserved).contains(&k), "{ip} is reserved");
            assert!(
                !(2 + reserved..2 + reserved + statics).contains(&k) || asked.contains(&ip),
                "{ip} is static, not asked for"
            );
            assert!(seen.insert(ip), "{ip} given twice");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn allocations_stay_in_their_subnet_and_are_never_shared(
            prefix in 26u8..=30,
            reserved in 0u32..20,
            statics in 0u32..20,
            steps in prop::collection::vec(0u32..70, 1..4),
            use_static in any::<bool>(),
            azs in prop::sample::subsequence(vec!["z1", "z2", "z3"], 1..=3),
        ) {
            let Some(cc) = cloud(prefix, reserved, statics, &azs) else { return Ok(()) };
            let mut w = World::new();
            w.cloud = cc;
            for n in steps {
                let base = u32::from(Ipv4Addr::new(10, 9, 0, 0));
                let asked: BTreeSet<Ipv4Addr> = if use_static {
                    (0..n.min(statics)).map(|k| Ipv4Addr::from(base + 2 + reserved + k)).collect()
                } else {
                    BTreeSet::new()
                };
                let group_azs = azs.join(", ");
                let statics_line = if use_static {
                    format!("    static_ips: [{}]\n", asked.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "))
                } else {
                    String::new()
                };
                let text = manifest(n, "")
                    .replace("azs: [z1, z2, z3]", &format!("azs: [{group_azs}]"))
                    .replace("  networks: [{name: net}]\n", &format!("  networks:\n  - name: net\n{statics_line}"));
                match w.plan(&text) {
                    Ok(p) => {
                        check(&p, prefix, reserved, statics, &asked);
                        w.apply(&p);
                    }
                    Err(e) => prop_assert!(e.starts_with('/') || e.contains(": /"), "the error names where: {}", e),
                }
            }
        }
    }
}
