//! The planner: a pure, synchronous function of the manifest, the cloud-config, the chosen
//! releases and stemcells and the instances that exist, to a [`Plan`] that leaves the executor no
//! choices. For every instance it decides: create, delete, keep, update (reasons) or recreate
//! (reasons), with its index, AZ, addresses, rendered jobs and the state it will have applied.
//!
//! Architecture invariant: no I/O here — no store, no CPI, no clock, no global randomness (ids
//! come from the `rng` the caller passes, so tests are deterministic).

use crate::records::{
    AppliedJob, AppliedState, DesiredState, InstanceRecord, ReleasePackage, ReleaseRecord, RenderedJob, StemcellRecord,
};
use crate::render::{lookup, render_job, set_nested, LinkData};
use bosun_types::api::{InstanceAction, InstanceSelector};
use bosun_types::cloud_config::{CloudConfig, NetworkType, ResolvedSubnet};
use bosun_types::digest::sha256_digest;
use bosun_types::manifest::{DeploymentManifest, InstanceGroup, MaxInFlight, ResolvedUpdatePolicy, VmStrategy};
use bosun_types::protocol::NetworkSettings;
use rand::RngCore;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// A plan cannot be made: what is wrong and where in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    pub path: String,
    pub message: String,
}

fn perr(path: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError { path: path.into(), message: message.into() }
}

pub struct PlanningInput<'a> {
    pub manifest: &'a DeploymentManifest,
    pub cloud_config: &'a CloudConfig,
    /// Release name → the version the manifest resolved to.
    pub releases: &'a BTreeMap<String, ReleaseRecord>,
    /// Stemcell alias → the stemcell the manifest resolved to.
    pub stemcells: &'a BTreeMap<String, StemcellRecord>,
    /// This deployment's instances as the store has them.
    pub existing: &'a [InstanceRecord],
    /// Addresses held by other deployments.
    pub addresses_in_use_elsewhere: &'a BTreeSet<Ipv4Addr>,
    /// What the operator asked for beyond the manifest.
    pub requests: &'a Requests,
}

/// Which instances a request is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    #[default]
    None,
    All,
    Some(Vec<InstanceSelector>),
}

impl Selection {
    pub fn matches(&self, group: &str, uuid: &str, index: u32) -> bool {
        match self {
            Selection::None => false,
            Selection::All => true,
            Selection::Some(v) => v.iter().any(|s| s.matches(group, uuid, index)),
        }
    }
}

/// An operator's requests beyond the manifest: `deploy --recreate`, `bosun recreate | restart |
/// stop | start`, and the `--canaries` / `--max-in-flight` overrides.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    pub recreate: Selection,
    pub restart: Selection,
    /// Instances whose desired state changes, and to what.
    pub state: Option<(Selection, DesiredState)>,
    pub canaries: Option<u32>,
    pub max_in_flight: Option<MaxInFlight>,
    /// Resurrection and repairs: the old VM is always deleted before its replacement is made
    /// (never two VMs with one identity), whatever the group's `vm_strategy`.
    pub fence: bool,
}

/// What happens to an instance's persistent disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPlan {
    /// It has none and gets none.
    None,
    /// It keeps the disk it has.
    Keep,
    /// A new disk is made (a new instance, or a group that gains a disk).
    Create,
    /// The disk's size or type changes: resized by the CPI where it can, else copied to a new disk
    /// whose predecessor is orphaned.
    Migrate { from_mb: u64, to_mb: u64, type_changed: bool },
    /// The group no longer has a disk: the instance's is detached and orphaned.
    Orphan,
}

/// One step of a group's update: these instances are updated at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub canary: bool,
    pub az: Option<String>,
    /// Positions in the group's `instances`.
    pub instances: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct InstancePlan {
    pub group: String,
    pub uuid: String,
    pub index: u32,
    pub az: Option<String>,
    pub bootstrap: bool,
    pub networks: BTreeMap<String, NetworkSettings>,
    pub action: InstanceAction,
    pub reasons: Vec<String>,
    pub existing: Option<InstanceRecord>,
    /// The state the instance is left in.
    pub state: DesiredState,
    /// `create-swap-delete`: the replacement VM is made (on `networks`, new addresses) before the
    /// old VM (on the existing record's addresses) is deleted.
    pub create_swap_delete: bool,
    pub disk: DiskPlan,
    pub stemcell: StemcellRecord,
    pub cloud_properties: serde_json::Value,
    pub env: serde_json::Value,
    /// Size (MiB) and cloud properties of the persistent disk, if the instance has one.
    pub persistent_disk: Option<(u64, serde_json::Value)>,
    pub jobs: Vec<RenderedJob>,
    pub packages: Vec<ReleasePackage>,
    pub configuration_hash: String,
    pub applied: AppliedState,
}

impl InstancePlan {
    pub fn name(&self) -> String {
        format!("{}/{}", self.group, self.uuid)
    }
}

#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub name: String,
    pub update: ResolvedUpdatePolicy,
    pub instances: Vec<InstancePlan>,
    /// The order of the update: canary batches, then each AZ's batches.
    pub batches: Vec<Batch>,
    /// Each lifecycle script's time limit: the manifest's `update.script_timeout`, else the
    /// longest its jobs' specs give, else 5 minutes.
    pub script_timeout_ms: u64,
}

/// A lifecycle script's time limit when neither the manifest nor the job spec gives one.
pub const DEFAULT_SCRIPT_TIMEOUT_MS: u64 = 300_000;

#[derive(Debug, Clone)]
pub struct Plan {
    pub deployment: String,
    pub groups: Vec<GroupPlan>,
    /// Instances to delete: of groups gone from the manifest, scaled away, or in removed AZs.
    pub deletes: Vec<InstanceRecord>,
    /// The order groups are updated in: each stage's groups (positions in `groups`) at once,
    /// stage after stage. Manifest order; consecutive `serial: false` groups share a stage.
    pub stages: Vec<Vec<usize>>,
}

/// BOSH's grouping: a serial group is a stage of its own; a run of non-serial groups is one stage.
pub fn stages(groups: &[GroupPlan]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (k, g) in groups.iter().enumerate() {
        match out.last_mut() {
            Some(stage) if !g.update.serial && !groups[stage[0]].update.serial => stage.push(k),
            _ => out.push(vec![k]),
        }
    }
    out
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        !self.deletes.is_empty()
            || self.groups.iter().flat_map(|g| &g.instances).any(|i| i.action != InstanceAction::Keep)
    }
}

/// A placed instance before rendering.
#[derive(Debug, Clone)]
struct Slot {
    uuid: String,
    index: u32,
    az: Option<String>,
    existing: Option<InstanceRecord>,
    networks: BTreeMap<String, NetworkSettings>,
    /// Why its VM must be replaced (empty: it need not be).
    recreate: Vec<String>,
    /// Its replacement VM takes new addresses (create-swap-delete).
    swap: bool,
}

fn new_uuid(rng: &mut dyn RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

fn digest_json(v: &serde_json::Value) -> String {
    sha256_digest(&serde_json::to_vec(v).expect("json serializes"))
}

/// Merges `b` into `a` (objects recursively; anything else replaces).
fn merge(a: &mut serde_json::Value, b: &serde_json::Value) {
    match (a.as_object_mut(), b.as_object()) {
        (Some(am), Some(bm)) => {
            for (k, v) in bm {
                merge(am.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        _ => {
            if !b.is_null() {
                *a = b.clone();
            }
        }
    }
}

pub fn plan(input: &PlanningInput<'_>, rng: &mut dyn RngCore) -> Result<Plan, PlanError> {
    let m = input.manifest;
    let cc = input.cloud_config;
    validate_references(input)?;

    // Addresses that stay taken while this plan runs: other deployments' and those of instances
    // this plan deletes (never hand out an address whose old VM may still be alive).
    let mut taken: BTreeSet<Ipv4Addr> = input.addresses_in_use_elsewhere.clone();
    let group_names: BTreeSet<&str> = m.instance_groups.iter().map(|g| g.name.as_str()).collect();
    let mut deletes: Vec<InstanceRecord> =
        input.existing.iter().filter(|i| !group_names.contains(i.group.as_str())).cloned().collect();
    for d in &deletes {
        taken.extend(d.held_addresses());
    }

    // Pass 1: place instances (index, AZ) and assign addresses, group by group.
    let mut placed: Vec<(usize, Vec<Slot>)> = Vec::new();
    for (gi, g) in m.instance_groups.iter().enumerate() {
        let (slots, gone) = place_group(g, input.existing, rng);
        for d in &gone {
            taken.extend(d.held_addresses());
        }
        deletes.extend(gone);
        placed.push((gi, slots));
    }
    for (_, slots) in &placed {
        for s in slots {
            if let Some(e) = &s.existing {
                // Kept instances keep their address unless the network says otherwise; reserve
                // them before anyone new is given one.
                taken.extend(e.held_addresses());
            }
        }
    }
    for (gi, slots) in placed.iter_mut() {
        assign_addresses(*gi, &m.instance_groups[*gi], cc, slots, &mut taken, input.addresses_in_use_elsewhere)?;
    }
    check_selections(input, &placed)?;

    // Pass 1.5: which VMs are replaced, and under create-swap-delete, the replacement's addresses
    // (decided before rendering, so links and templates see the addresses the VMs will have).
    for (gi, slots) in placed.iter_mut() {
        let g = &m.instance_groups[*gi];
        let update = m.update.resolve(g.update.as_ref());
        for slot in slots.iter_mut() {
            slot.recreate = recreate_reasons(input, g, slot);
            let Some(existing) = slot.existing.as_ref().filter(|e| e.vm.is_some()) else { continue };
            if slot.recreate.is_empty() || update.vm_strategy != VmStrategy::CreateSwapDelete || input.requests.fence {
                continue;
            }
            if g.networks.iter().any(|n| !n.static_ips.is_empty()) {
                slot.recreate.push(
                    "create-swap-delete needs a second address; with static IPs the old VM is deleted first".into(),
                );
                continue;
            }
            match spare_addresses(g, cc, &slot.az, &mut taken) {
                Some(networks) => {
                    let was: Vec<String> = existing.ips();
                    let now: Vec<String> = networks.values().map(|n| show_ip(&n.ip).to_string()).collect();
                    slot.recreate.push(format!(
                        "create-swap-delete: the replacement VM takes {} (was {})",
                        now.join(", "),
                        was.join(", ")
                    ));
                    slot.networks = networks;
                    slot.swap = true;
                }
                None => slot.recreate.push(
                    "create-swap-delete: no spare address for a replacement VM; the old VM is deleted first".into(),
                ),
            }
        }
    }

    // Pass 2: properties, links, rendering, and what changes.
    let mut resolved_props: BTreeMap<(String, String), serde_json::Value> = BTreeMap::new();
    for (gi, _) in &placed {
        let g = &m.instance_groups[*gi];
        for j in &g.jobs {
            let spec = &job_of(input, &j.release, &j.name).expect("validated").spec;
            let source = j.properties.as_ref().or(g.properties.as_ref()).or(m.properties.as_ref());
            let mut props = serde_json::Value::Object(Default::default());
            for (path, def) in &spec.properties {
                if let Some(v) = source.and_then(|s| lookup(s, path)).or(def.default.as_ref()) {
                    set_nested(&mut props, path, v.clone());
                }
            }
            resolved_props.insert((g.name.clone(), j.name.clone()), props);
        }
    }
    let providers = link_providers(input)?;

    let mut groups = Vec::new();
    for (gi, slots) in &placed {
        let g = &m.instance_groups[*gi];
        let mut update = m.update.resolve(g.update.as_ref());
        if let Some(c) = input.requests.canaries {
            update.canaries = c;
        }
        if let Some(mif) = input.requests.max_in_flight {
            update.max_in_flight = mif;
        }
        let stemcell = input.stemcells.get(&g.stemcell).expect("validated").clone();
        let env = vm_env(g);
        let persistent_disk = match (&g.persistent_disk, &g.persistent_disk_type) {
            (Some(mb), _) if *mb > 0 => Some((*mb, serde_json::json!({}))),
            (_, Some(t)) => {
                let d = cc.disk_types.iter().find(|d| &d.name == t).expect("validated");
                Some((d.disk_size, d.cloud_properties.clone()))
            }
            _ => None,
        };
        let bootstrap_index = slots.iter().map(|s| s.index).min();
        let mut instances = Vec::new();
        for s in slots {
            let cloud_properties = vm_cloud_properties(cc, g, &s.az);
            let address = default_address(&s.networks);
            let bootstrap = Some(s.index) == bootstrap_index;
            let spec_base = serde_json::json!({
                "deployment": m.name,
                "name": g.name,
                "index": s.index,
                "id": s.uuid,
                "az": s.az,
                "bootstrap": bootstrap,
                "address": address,
                "ip": address,
                "networks": s.networks.iter().map(|(n, ns)| (n.clone(), serde_json::json!({"ip": ns.ip, "netmask": ns.netmask, "gateway": ns.gateway, "default": ns.default}))).collect::<serde_json::Map<_, _>>(),
                "persistent_disk": persistent_disk.as_ref().map(|(mb, _)| *mb).unwrap_or(0),
                "dns_domain_name": "bosh",
            });
            let mut jobs = Vec::new();
            let mut applied_jobs = Vec::new();
            let mut package_names: BTreeSet<(String, String)> = BTreeSet::new();
            for (ji, j) in g.jobs.iter().enumerate() {
                let release = input.releases.get(&j.release).expect("validated");
                let rj = job_of(input, &j.release, &j.name).expect("validated");
                let props = resolved_props.get(&(g.name.clone(), j.name.clone())).expect("resolved above");
                let links = consumed_links(input, &providers, &placed, &resolved_props, *gi, ji)?;
                let mut spec = spec_base.clone();
                spec["job"] = serde_json::json!({ "name": j.name });
                spec["release"] = serde_json::json!({ "name": release.name, "version": release.version });
                let files = render_job(&j.name, &rj.templates, &rj.spec.templates, &spec, props, &links)
                    .map_err(|e| perr(format!("/instance_groups/{gi}/jobs/{ji}"), e.to_string()))?;
                for p in &rj.spec.packages {
                    package_names.insert((j.release.clone(), p.clone()));
                }
                let mut prop_digests = BTreeMap::new();
                for path in rj.spec.properties.keys() {
                    prop_digests.insert(path.clone(), lookup(props, path).map(digest_json).unwrap_or_default());
                }
                applied_jobs.push(AppliedJob {
                    name: j.name.clone(),
                    release: format!("{}/{}", release.name, release.version),
                    fingerprint: rj.fingerprint.clone(),
                    properties: prop_digests,
                });
                jobs.push(RenderedJob {
                    name: j.name.clone(),
                    release: release.name.clone(),
                    fingerprint: rj.fingerprint.clone(),
                    files,
                    processes: rj.spec.processes.clone(),
                    packages: rj.spec.packages.clone(),
                });
            }
            let packages = package_closure(input, &package_names, gi)?;
            let configuration_hash = configuration_hash(&jobs);
            let applied = AppliedState {
                stemcell: (stemcell.name.clone(), stemcell.version.clone()),
                vm_type: g.vm_type.clone(),
                cloud_properties_digest: digest_json(&cloud_properties),
                env_digest: digest_json(&env),
                networks: s.networks.iter().map(|(n, ns)| (n.clone(), ns.ip.clone())).collect(),
                jobs: applied_jobs,
                packages: packages.iter().map(|p| (p.name.clone(), p.fingerprint.clone())).collect(),
                configuration_hash: configuration_hash.clone(),
                persistent_disk_mb: persistent_disk.as_ref().map(|(mb, _)| *mb).unwrap_or(0),
                persistent_disk_digest: persistent_disk.as_ref().map(|(_, cp)| digest_json(cp)).unwrap_or_default(),
            };
            let d = decide(s, &applied, bootstrap, &g.name, input.requests);
            instances.push(InstancePlan {
                group: g.name.clone(),
                uuid: s.uuid.clone(),
                index: s.index,
                az: s.az.clone(),
                bootstrap,
                networks: s.networks.clone(),
                action: d.action,
                reasons: d.reasons,
                existing: s.existing.clone(),
                state: d.state,
                create_swap_delete: s.swap && d.action == InstanceAction::Recreate,
                disk: d.disk,
                stemcell: stemcell.clone(),
                cloud_properties,
                env: env.clone(),
                persistent_disk: persistent_disk.clone(),
                jobs,
                packages,
                configuration_hash,
                applied,
            });
        }
        let batches = compose_batches(&update, &instances);
        let script_timeout_ms = update.script_timeout_ms.unwrap_or_else(|| {
            g.jobs
                .iter()
                .filter_map(|j| job_of(input, &j.release, &j.name).and_then(|rj| rj.spec.script_timeout))
                .max()
                .map(|s| s * 1000)
                .unwrap_or(DEFAULT_SCRIPT_TIMEOUT_MS)
        });
        groups.push(GroupPlan { name: g.name.clone(), update, instances, batches, script_timeout_ms });
    }
    deletes.sort_by(|a, b| (a.group.as_str(), a.index).cmp(&(b.group.as_str(), b.index)));
    let stages = stages(&groups);
    Ok(Plan { deployment: m.name.clone(), groups, deletes, stages })
}

fn job_of<'a>(input: &'a PlanningInput<'_>, release: &str, job: &str) -> Option<&'a crate::records::ReleaseJob> {
    input.releases.get(release)?.jobs.iter().find(|j| j.name == job)
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn validate_references(input: &PlanningInput<'_>) -> Result<(), PlanError> {
    let m = input.manifest;
    let cc = input.cloud_config;
    for (gi, g) in m.instance_groups.iter().enumerate() {
        let at = |k: &str| format!("/instance_groups/{gi}/{k}");
        if !cc.vm_types.iter().any(|v| v.name == g.vm_type) {
            return Err(perr(
                at("vm_type"),
                format!(
                    "unknown vm_type `{}` (the cloud-config has: {})",
                    g.vm_type,
                    names(cc.vm_types.iter().map(|v| &v.name))
                ),
            ));
        }
        for (i, e) in g.vm_extensions.iter().enumerate() {
            if !cc.vm_extensions.iter().any(|v| &v.name == e) {
                return Err(perr(at(&format!("vm_extensions/{i}")), format!("unknown vm_extension `{e}`")));
            }
        }
        for (i, az) in g.azs.iter().enumerate() {
            if !cc.azs.iter().any(|a| &a.name == az) {
                return Err(perr(
                    at(&format!("azs/{i}")),
                    format!("unknown AZ `{az}` (the cloud-config has: {})", names(cc.azs.iter().map(|a| &a.name))),
                ));
            }
        }
        if g.azs.is_empty() && !cc.azs.is_empty() && g.instances > 0 {
            return Err(perr(at("azs"), "the cloud-config defines AZs; list the instance group's `azs`"));
        }
        if !m.stemcells.iter().any(|s| s.alias == g.stemcell) {
            return Err(perr(
                at("stemcell"),
                format!(
                    "unknown stemcell alias `{}` (the manifest's stemcells: {})",
                    g.stemcell,
                    names(m.stemcells.iter().map(|s| &s.alias))
                ),
            ));
        }
        if !input.stemcells.contains_key(&g.stemcell) {
            return Err(perr(at("stemcell"), format!("stemcell `{}` is not uploaded", g.stemcell)));
        }
        if let Some(t) = &g.persistent_disk_type {
            if !cc.disk_types.iter().any(|d| &d.name == t) {
                return Err(perr(
                    at("persistent_disk_type"),
                    format!(
                        "unknown disk_type `{t}` (the cloud-config has: {})",
                        names(cc.disk_types.iter().map(|d| &d.name))
                    ),
                ));
            }
        }
        for (ni, n) in g.networks.iter().enumerate() {
            let net = cc.network(&n.name).ok_or_else(|| {
                perr(
                    at(&format!("networks/{ni}/name")),
                    format!(
                        "unknown network `{}` (the cloud-config has: {})",
                        n.name,
                        names(cc.networks.iter().map(|n| &n.name))
                    ),
                )
            })?;
            match net.kind {
                NetworkType::Manual => {}
                NetworkType::Dynamic if !n.static_ips.is_empty() => {
                    return Err(perr(
                        at(&format!("networks/{ni}/static_ips")),
                        format!(
                            "network `{}` is dynamic: the cloud assigns its addresses, static IPs cannot be given",
                            n.name
                        ),
                    ))
                }
                NetworkType::Dynamic => {}
                NetworkType::Vip => {
                    return Err(perr(
                        at(&format!("networks/{ni}")),
                        format!(
                            "network `{}` is a vip network; bosun places instances on manual and dynamic networks",
                            n.name
                        ),
                    ))
                }
            }
        }
        for (ji, j) in g.jobs.iter().enumerate() {
            let jat = |k: &str| format!("/instance_groups/{gi}/jobs/{ji}/{k}");
            if !m.releases.iter().any(|r| r.name == j.release) {
                return Err(perr(
                    jat("release"),
                    format!("release `{}` is not listed in the manifest's releases", j.release),
                ));
            }
            let release = input
                .releases
                .get(&j.release)
                .ok_or_else(|| perr(jat("release"), format!("release `{}` is not uploaded", j.release)))?;
            if !release.jobs.iter().any(|x| x.name == j.name) {
                return Err(perr(
                    jat("name"),
                    format!(
                        "release `{}/{}` has no job `{}` (it has: {})",
                        release.name,
                        release.version,
                        j.name,
                        names(release.jobs.iter().map(|x| &x.name))
                    ),
                ));
            }
        }
        if g.lifecycle == bosun_types::manifest::Lifecycle::Errand {
            return Err(perr(at("lifecycle"), "errand instance groups are not supported yet"));
        }
    }
    Ok(())
}

/// Decides which instances a group keeps, creates and deletes, and their indexes and AZs.
/// Scale-down removes the highest indexes, from the fullest AZ first; the bootstrap instance (the
/// lowest index) stays; new instances go to the emptiest AZ.
fn place_group(
    g: &InstanceGroup,
    existing: &[InstanceRecord],
    rng: &mut dyn RngCore,
) -> (Vec<Slot>, Vec<InstanceRecord>) {
    let azs: Vec<Option<String>> =
        if g.azs.is_empty() { vec![None] } else { g.azs.iter().cloned().map(Some).collect() };
    let mut mine: Vec<InstanceRecord> = existing.iter().filter(|i| i.group == g.name).cloned().collect();
    mine.sort_by_key(|i| i.index);
    let (mut keep, mut gone): (Vec<InstanceRecord>, Vec<InstanceRecord>) =
        mine.into_iter().partition(|i| azs.contains(&i.az));
    let desired = g.instances as usize;
    while keep.len() > desired {
        let mut count: BTreeMap<Option<String>, usize> = BTreeMap::new();
        for i in &keep {
            *count.entry(i.az.clone()).or_default() += 1;
        }
        let max = count.values().copied().max().unwrap_or(0);
        // Among instances in the fullest AZs, the highest index goes.
        let victim = keep
            .iter()
            .enumerate()
            .filter(|(_, i)| count[&i.az] == max)
            .max_by_key(|(_, i)| i.index)
            .map(|(k, _)| k)
            .expect("non-empty");
        gone.push(keep.remove(victim));
    }
    let mut slots: Vec<Slot> = keep
        .into_iter()
        .map(|e| Slot {
            uuid: e.uuid.clone(),
            index: e.index,
            az: e.az.clone(),
            networks: BTreeMap::new(),
            existing: Some(e),
            recreate: vec![],
            swap: false,
        })
        .collect();
    let mut used: BTreeSet<u32> = slots.iter().map(|s| s.index).collect();
    while slots.len() < desired {
        let mut count: BTreeMap<Option<String>, usize> = azs.iter().map(|a| (a.clone(), 0)).collect();
        for s in &slots {
            *count.entry(s.az.clone()).or_default() += 1;
        }
        let az = azs.iter().min_by_key(|a| count[*a]).cloned().expect("at least one AZ");
        let index = (0..).find(|i| !used.contains(i)).expect("a free index");
        used.insert(index);
        slots.push(Slot {
            uuid: new_uuid(rng),
            index,
            az,
            existing: None,
            networks: BTreeMap::new(),
            recreate: vec![],
            swap: false,
        });
    }
    slots.sort_by_key(|s| s.index);
    (slots, gone)
}

fn subnet_serves(s: &ResolvedSubnet, az: &Option<String>) -> bool {
    match az {
        None => true,
        Some(a) => s.azs.is_empty() || s.azs.contains(a),
    }
}

fn settings(s: &ResolvedSubnet, ip: Ipv4Addr, default: Vec<String>) -> NetworkSettings {
    NetworkSettings {
        kind: bosun_types::cloud_config::NetworkType::Manual,
        ip: ip.to_string(),
        netmask: s.network.netmask().to_string(),
        gateway: s.gateway.map(|g| g.to_string()),
        default,
        dns: s.dns.clone(),
        cloud_properties: s.cloud_properties.clone(),
    }
}

/// Gives each instance an address on each of its networks: static IPs from the manifest when
/// given (their count must match), otherwise the lowest free address of a subnet serving its AZ.
/// Instances keep their addresses when they still fit.
fn assign_addresses(
    gi: usize,
    g: &InstanceGroup,
    cc: &CloudConfig,
    slots: &mut [Slot],
    taken: &mut BTreeSet<Ipv4Addr>,
    elsewhere: &BTreeSet<Ipv4Addr>,
) -> Result<(), PlanError> {
    for (ni, nref) in g.networks.iter().enumerate() {
        let at = format!("/instance_groups/{gi}/networks/{ni}");
        let default = default_gateway_for(g, nref);
        if let Some(net) = cc.network(&nref.name).filter(|n| n.kind == NetworkType::Dynamic) {
            // The cloud assigns the address when the VM is made; a VM keeps the one it got.
            for slot in slots.iter_mut() {
                let kept = slot
                    .existing
                    .as_ref()
                    .and_then(|e| e.networks.get(&nref.name))
                    .filter(|n| n.kind == NetworkType::Dynamic && !n.ip.is_empty())
                    .cloned();
                let settings = kept.unwrap_or_else(|| dynamic_settings(net, &slot.az, default.clone()));
                slot.networks.insert(nref.name.clone(), settings);
            }
            continue;
        }
        let subnets = cc.resolved_subnets(&nref.name).map_err(|e| perr(&at, e.to_string()))?;
        let current = |s: &Slot| {
            s.existing.as_ref().and_then(|e| e.networks.get(&nref.name)).and_then(|n| n.ip.parse::<Ipv4Addr>().ok())
        };
        if !nref.static_ips.is_empty() {
            let statics =
                bosun_types::ip::expand_ip_list(&nref.static_ips).map_err(|m| perr(format!("{at}/static_ips"), m))?;
            if statics.len() != slots.len() {
                return Err(perr(
                    format!("{at}/static_ips"),
                    format!(
                        "instance group `{}` has {} instances but {} static IPs on network `{}`",
                        g.name,
                        slots.len(),
                        statics.len(),
                        nref.name
                    ),
                ));
            }
            for ip in &statics {
                let s = subnets.iter().find(|s| s.network.contains(ip)).ok_or_else(|| {
                    perr(
                        format!("{at}/static_ips"),
                        format!("static IP {ip} is in no subnet of network `{}`", nref.name),
                    )
                })?;
                if s.reserved.contains(ip) {
                    return Err(perr(
                        format!("{at}/static_ips"),
                        format!("static IP {ip} is in the reserved range of network `{}`", nref.name),
                    ));
                }
                if !s.static_pool.contains(ip) {
                    return Err(perr(
                        format!("{at}/static_ips"),
                        format!("static IP {ip} is not in the static range of network `{}`", nref.name),
                    ));
                }
            }
            let mut free: Vec<Ipv4Addr> = statics.clone();
            // Instances that already hold one of the listed addresses keep it.
            for slot in slots.iter_mut() {
                if let Some(ip) = current(slot).filter(|ip| free.contains(ip)) {
                    let s = subnets.iter().find(|s| s.network.contains(&ip)).expect("checked above");
                    if subnet_serves(s, &slot.az) {
                        free.retain(|x| *x != ip);
                        slot.networks.insert(nref.name.clone(), settings(s, ip, default.clone()));
                    }
                }
            }
            for slot in slots.iter_mut().filter(|s| !s.networks.contains_key(&nref.name)) {
                let pick = free
                    .iter()
                    .position(|ip| subnets.iter().any(|s| s.network.contains(ip) && subnet_serves(s, &slot.az)));
                let Some(k) = pick else {
                    return Err(perr(
                        format!("{at}/static_ips"),
                        format!(
                            "no static IP of network `{}` is left for an instance in AZ `{}`",
                            nref.name,
                            slot.az.as_deref().unwrap_or("-")
                        ),
                    ));
                };
                let ip = free.remove(k);
                if elsewhere.contains(&ip) {
                    return Err(perr(
                        format!("{at}/static_ips"),
                        format!("static IP {ip} is in use by another deployment"),
                    ));
                }
                let s = subnets.iter().find(|s| s.network.contains(&ip)).expect("checked above");
                slot.networks.insert(nref.name.clone(), settings(s, ip, default.clone()));
                taken.insert(ip);
            }
        } else {
            // Keep a current dynamic address when it is still in a serving subnet's pool.
            for slot in slots.iter_mut() {
                if let Some(ip) = current(slot) {
                    if let Some(s) =
                        subnets.iter().find(|s| subnet_serves(s, &slot.az) && s.dynamic_pool().any(|x| x == ip))
                    {
                        slot.networks.insert(nref.name.clone(), settings(s, ip, default.clone()));
                    }
                }
            }
            let mut needing = slots.iter().filter(|s| !s.networks.contains_key(&nref.name)).count();
            for slot in slots.iter_mut().filter(|s| !s.networks.contains_key(&nref.name)) {
                let Some((s, ip)) = pick_dynamic(&subnets, &slot.az, taken) else {
                    return Err(perr(
                        format!("{at}/name"),
                        format!(
                            "network `{}` has no free address left for instance group `{}` in AZ `{}` ({needing} more needed)",
                            nref.name,
                            g.name,
                            slot.az.as_deref().unwrap_or("-")
                        ),
                    ));
                };
                taken.insert(ip);
                needing -= 1;
                slot.networks.insert(nref.name.clone(), settings(s, ip, default.clone()));
            }
        }
    }
    Ok(())
}

fn default_address(networks: &BTreeMap<String, NetworkSettings>) -> Option<String> {
    networks
        .values()
        .find(|n| n.default.iter().any(|d| d == "gateway"))
        .or_else(|| networks.values().next())
        .map(|n| n.ip.clone())
}

/// A link some job provides: (group index, job index, link name as provided, type, exposed properties).
#[derive(Debug, Clone)]
struct Provider {
    group: usize,
    job: usize,
    name: String,
    kind: String,
    properties: Vec<String>,
}

fn link_providers(input: &PlanningInput<'_>) -> Result<Vec<Provider>, PlanError> {
    let mut out = Vec::new();
    for (gi, g) in input.manifest.instance_groups.iter().enumerate() {
        for (ji, j) in g.jobs.iter().enumerate() {
            let spec = &job_of(input, &j.release, &j.name).expect("validated").spec;
            for name in j.provides.keys() {
                if !spec.provides.iter().any(|p| &p.name == name) {
                    return Err(perr(
                        format!("/instance_groups/{gi}/jobs/{ji}/provides/{name}"),
                        format!("job `{}` provides no link `{name}`", j.name),
                    ));
                }
            }
            for p in &spec.provides {
                match j.provides.get(&p.name) {
                    Some(None) => continue, // explicitly not provided
                    Some(Some(ps)) => out.push(Provider {
                        group: gi,
                        job: ji,
                        name: ps.alias.clone().unwrap_or(p.name.clone()),
                        kind: p.kind.clone(),
                        properties: p.properties.clone(),
                    }),
                    None => out.push(Provider {
                        group: gi,
                        job: ji,
                        name: p.name.clone(),
                        kind: p.kind.clone(),
                        properties: p.properties.clone(),
                    }),
                }
            }
        }
    }
    Ok(out)
}

fn consumed_links(
    input: &PlanningInput<'_>,
    providers: &[Provider],
    placed: &[(usize, Vec<Slot>)],
    props: &BTreeMap<(String, String), serde_json::Value>,
    gi: usize,
    ji: usize,
) -> Result<BTreeMap<String, LinkData>, PlanError> {
    let m = input.manifest;
    let g = &m.instance_groups[gi];
    let j = &g.jobs[ji];
    let spec = &job_of(input, &j.release, &j.name).expect("validated").spec;
    let at = format!("/instance_groups/{gi}/jobs/{ji}/consumes");
    for name in j.consumes.keys() {
        if !spec.consumes.iter().any(|c| &c.name == name) {
            return Err(perr(format!("{at}/{name}"), format!("job `{}` consumes no link `{name}`", j.name)));
        }
    }
    let mut out = BTreeMap::new();
    for c in &spec.consumes {
        let wiring = j.consumes.get(&c.name);
        let provider = match wiring {
            Some(None) => {
                if !c.optional {
                    return Err(perr(
                        format!("{at}/{}", c.name),
                        format!("link `{}` is not optional and cannot be set to nil", c.name),
                    ));
                }
                continue;
            }
            Some(Some(w)) if w.from.is_some() => {
                let from = w.from.as_deref().expect("checked");
                let found: Vec<&Provider> = providers.iter().filter(|p| p.name == from).collect();
                match found.as_slice() {
                    [p] if p.kind == c.kind => *p,
                    [p] => {
                        return Err(perr(
                            format!("{at}/{}/from", c.name),
                            format!("link `{from}` has type `{}`, job `{}` wants `{}`", p.kind, j.name, c.kind),
                        ))
                    }
                    [] => {
                        return Err(perr(
                            format!("{at}/{}/from", c.name),
                            format!("no job in the deployment provides a link named `{from}`"),
                        ))
                    }
                    _ => {
                        return Err(perr(
                            format!("{at}/{}/from", c.name),
                            format!("several jobs provide a link named `{from}`; give them distinct `as` names"),
                        ))
                    }
                }
            }
            _ => {
                let found: Vec<&Provider> = providers.iter().filter(|p| p.kind == c.kind).collect();
                match found.as_slice() {
                    [p] => *p,
                    [] if c.optional => continue,
                    [] => {
                        return Err(perr(
                            format!("{at}/{}", c.name),
                            format!(
                                "job `{}` consumes link `{}` of type `{}`, but no job in the deployment provides one",
                                j.name, c.name, c.kind
                            ),
                        ))
                    }
                    many => {
                        let who: Vec<String> = many
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}/{}",
                                    m.instance_groups[p.group].name, m.instance_groups[p.group].jobs[p.job].name
                                )
                            })
                            .collect();
                        return Err(perr(
                            format!("{at}/{}", c.name),
                            format!(
                                "several jobs provide a link of type `{}` ({}); choose one with `from`",
                                c.kind,
                                who.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        let pg = &m.instance_groups[provider.group];
        let slots = &placed.iter().find(|(i, _)| *i == provider.group).expect("placed").1;
        let bootstrap = slots.iter().map(|s| s.index).min();
        let instances = slots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": pg.name, "id": s.uuid, "index": s.index, "az": s.az,
                    "address": default_address(&s.networks), "bootstrap": Some(s.index) == bootstrap,
                })
            })
            .collect();
        let provider_props = props.get(&(pg.name.clone(), pg.jobs[provider.job].name.clone())).expect("resolved");
        let mut exposed = serde_json::Value::Object(Default::default());
        for p in &provider.properties {
            if let Some(v) = lookup(provider_props, p) {
                set_nested(&mut exposed, p, v.clone());
            }
        }
        out.insert(c.name.clone(), LinkData { instances, properties: exposed });
    }
    Ok(out)
}

/// Every package the jobs need, with their dependencies, from the jobs' releases.
fn package_closure(
    input: &PlanningInput<'_>,
    wanted: &BTreeSet<(String, String)>,
    gi: &usize,
) -> Result<Vec<ReleasePackage>, PlanError> {
    let mut out: BTreeMap<String, ReleasePackage> = BTreeMap::new();
    let mut todo: Vec<(String, String)> = wanted.iter().cloned().collect();
    while let Some((release, name)) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let r = input.releases.get(&release).expect("validated");
        let p = r.packages.iter().find(|p| p.name == name).ok_or_else(|| {
            perr(
                format!("/instance_groups/{gi}/jobs"),
                format!("release `{}/{}` lacks package `{name}` that its jobs need", r.name, r.version),
            )
        })?;
        for d in &p.dependencies {
            todo.push((release.clone(), d.clone()));
        }
        out.insert(name, p.clone());
    }
    Ok(out.into_values().collect())
}

/// A digest over every rendered file of every job: a change means the jobs must be restarted.
pub fn configuration_hash(jobs: &[RenderedJob]) -> String {
    let mut h = bosun_types::digest::Sha256Writer::default();
    let mut sorted: Vec<&RenderedJob> = jobs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for j in sorted {
        h.update(j.name.as_bytes());
        h.update(&[0]);
        for (path, (mode, text)) in &j.files {
            h.update(path.as_bytes());
            h.update(&mode.to_be_bytes());
            h.update(&(text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
        h.update(serde_json::to_string(&j.processes).expect("serializable").as_bytes());
    }
    h.finish()
}

/// The VM-level facts of an instance group in an AZ: cloud properties (vm_type, extensions, AZ
/// merged) and env.
fn vm_cloud_properties(cc: &CloudConfig, g: &InstanceGroup, az: &Option<String>) -> serde_json::Value {
    let vm_type = cc.vm_types.iter().find(|v| v.name == g.vm_type).expect("validated");
    let mut cloud_properties = vm_type.cloud_properties.clone();
    for ext in &g.vm_extensions {
        let e = cc.vm_extensions.iter().find(|x| &x.name == ext).expect("validated");
        merge(&mut cloud_properties, &e.cloud_properties);
    }
    if let Some(az) = az.as_ref().and_then(|a| cc.azs.iter().find(|x| &x.name == a)) {
        merge(&mut cloud_properties, &az.cloud_properties);
    }
    cloud_properties
}

fn vm_env(g: &InstanceGroup) -> serde_json::Value {
    g.env.clone().unwrap_or(serde_json::Value::Object(Default::default()))
}

/// Why an existing instance's VM must be replaced: stemcell, vm_type or cloud properties, env,
/// addresses, or the operator asked. Empty when it need not be (or it has no VM).
fn recreate_reasons(input: &PlanningInput<'_>, g: &InstanceGroup, slot: &Slot) -> Vec<String> {
    let Some(existing) = slot.existing.as_ref().filter(|e| e.vm.is_some()) else { return vec![] };
    let was = existing.applied.clone().unwrap_or_default();
    let mut reasons = Vec::new();
    if input.requests.recreate.matches(&g.name, &slot.uuid, slot.index) {
        reasons.push("recreate requested".to_string());
    }
    let stemcell = input.stemcells.get(&g.stemcell).expect("validated");
    if was.stemcell != (stemcell.name.clone(), stemcell.version.clone()) {
        reasons
            .push(format!("stemcell {}/{} → {}/{}", was.stemcell.0, was.stemcell.1, stemcell.name, stemcell.version));
    }
    if was.vm_type != g.vm_type {
        reasons.push(format!("vm_type `{}` → `{}`", was.vm_type, g.vm_type));
    } else if was.cloud_properties_digest != digest_json(&vm_cloud_properties(input.cloud_config, g, &slot.az)) {
        reasons.push("cloud properties changed".into());
    }
    if was.env_digest != digest_json(&vm_env(g)) {
        reasons.push("env changed".into());
    }
    for (net, n) in &slot.networks {
        match existing.networks.get(net) {
            Some(old) if old.ip == n.ip => {}
            Some(old) => reasons.push(format!("network `{net}`: {} → {}", show_ip(&old.ip), show_ip(&n.ip))),
            None => reasons.push(format!("network `{net}` added ({})", show_ip(&n.ip))),
        }
    }
    for net in existing.networks.keys() {
        if !slot.networks.contains_key(net) {
            reasons.push(format!("network `{net}` removed"));
        }
    }
    reasons
}

/// Addresses for a create-swap-delete replacement VM: a free dynamic address on each network.
fn spare_addresses(
    g: &InstanceGroup,
    cc: &CloudConfig,
    az: &Option<String>,
    taken: &mut BTreeSet<Ipv4Addr>,
) -> Option<BTreeMap<String, NetworkSettings>> {
    let mut out = BTreeMap::new();
    let mut picked = Vec::new();
    for nref in &g.networks {
        let default = default_gateway_for(g, nref);
        if let Some(net) = cc.network(&nref.name).filter(|n| n.kind == NetworkType::Dynamic) {
            out.insert(nref.name.clone(), dynamic_settings(net, az, default));
            continue;
        }
        let subnets = cc.resolved_subnets(&nref.name).ok()?;
        let Some((s, ip)) = pick_dynamic(&subnets, az, taken) else {
            for ip in picked {
                taken.remove(&ip);
            }
            return None;
        };
        taken.insert(ip);
        picked.push(ip);
        out.insert(nref.name.clone(), settings(s, ip, default));
    }
    Some(out)
}

/// The lowest free dynamic address of a subnet serving the AZ.
fn pick_dynamic<'s>(
    subnets: &'s [ResolvedSubnet],
    az: &Option<String>,
    taken: &BTreeSet<Ipv4Addr>,
) -> Option<(&'s ResolvedSubnet, Ipv4Addr)> {
    subnets
        .iter()
        .filter(|s| subnet_serves(s, az))
        .find_map(|s| s.dynamic_pool().find(|ip| !taken.contains(ip)).map(|ip| (s, ip)))
}

/// Settings on a dynamic network before the cloud has given the VM an address: its DNS and cloud
/// properties (those of the subnet serving the AZ, else the network's).
fn dynamic_settings(
    net: &bosun_types::cloud_config::Network,
    az: &Option<String>,
    default: Vec<String>,
) -> NetworkSettings {
    let subnet = net.subnets.iter().find(|s| match az {
        None => true,
        Some(a) => s.azs.is_empty() && s.az.is_none() || s.azs.contains(a) || s.az.as_ref() == Some(a),
    });
    NetworkSettings {
        kind: NetworkType::Dynamic,
        ip: String::new(),
        netmask: String::new(),
        gateway: None,
        default,
        dns: subnet.map(|s| s.dns.clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| net.dns.clone()),
        cloud_properties: subnet.map(|s| s.cloud_properties.clone()).unwrap_or_else(|| net.cloud_properties.clone()),
    }
}

/// An address for people: an empty one is the cloud's to give.
pub fn show_ip(ip: &str) -> &str {
    if ip.is_empty() {
        "(assigned by the cloud)"
    } else {
        ip
    }
}

/// Whether any of an instance's addresses is not known yet (a new VM on a dynamic network).
pub fn address_pending(networks: &BTreeMap<String, NetworkSettings>) -> bool {
    networks.values().any(|n| n.ip.is_empty())
}

fn default_gateway_for(g: &InstanceGroup, nref: &bosun_types::manifest::NetworkRef) -> Vec<String> {
    if g.networks.len() == 1 {
        vec!["dns".to_string(), "gateway".to_string()]
    } else {
        nref.default.clone()
    }
}

/// Every instance an operator named must exist.
fn check_selections(input: &PlanningInput<'_>, placed: &[(usize, Vec<Slot>)]) -> Result<(), PlanError> {
    let r = input.requests;
    let lists = [Some(&r.recreate), Some(&r.restart), r.state.as_ref().map(|(s, _)| s)];
    for sel in lists.into_iter().flatten() {
        let Selection::Some(selectors) = sel else { continue };
        for selector in selectors {
            let found = placed.iter().any(|(gi, slots)| {
                let g = &input.manifest.instance_groups[*gi];
                slots.iter().any(|s| s.existing.is_some() && selector.matches(&g.name, &s.uuid, s.index))
            });
            if !found {
                return Err(perr("instances", format!("no instance of the deployment matches `{selector}`")));
            }
        }
    }
    Ok(())
}

struct Decision {
    action: InstanceAction,
    reasons: Vec<String>,
    disk: DiskPlan,
    state: DesiredState,
}

/// What must happen to an instance, and why.
fn decide(slot: &Slot, desired: &AppliedState, bootstrap: bool, group: &str, req: &Requests) -> Decision {
    let current_state = slot.existing.as_ref().map(|e| e.state).unwrap_or_default();
    let state = match &req.state {
        Some((sel, st)) if sel.matches(group, &slot.uuid, slot.index) => *st,
        _ => current_state,
    };
    let wants_disk = desired.persistent_disk_mb > 0;
    let decision = |action, reasons, disk| Decision { action, reasons, disk, state };
    let Some(existing) = &slot.existing else {
        let disk = if wants_disk { DiskPlan::Create } else { DiskPlan::None };
        return decision(InstanceAction::Create, vec!["new instance".into()], disk);
    };
    let had_disk = !existing.disk_cids.is_empty();
    let was = existing.applied.clone().unwrap_or_default();
    let disk = match (had_disk, wants_disk) {
        (false, false) => DiskPlan::None,
        (false, true) => DiskPlan::Create,
        (true, false) => DiskPlan::Orphan,
        (true, true) => {
            // Records from before disk types were tracked have no digest: only size counts then.
            let type_changed =
                !was.persistent_disk_digest.is_empty() && was.persistent_disk_digest != desired.persistent_disk_digest;
            if was.persistent_disk_mb != desired.persistent_disk_mb || type_changed {
                DiskPlan::Migrate { from_mb: was.persistent_disk_mb, to_mb: desired.persistent_disk_mb, type_changed }
            } else {
                DiskPlan::Keep
            }
        }
    };
    if existing.vm.is_none() {
        if state == DesiredState::Detached {
            // Changes wait for `bosun start`.
            let disk = if had_disk { DiskPlan::Keep } else { DiskPlan::None };
            return decision(InstanceAction::Keep, vec![], disk);
        }
        let why = if current_state == DesiredState::Detached {
            "start requested (the instance was stopped with --hard)"
        } else {
            "the instance has no VM"
        };
        return decision(InstanceAction::Create, vec![why.into()], disk);
    }
    if state == DesiredState::Detached {
        let disk = if had_disk { DiskPlan::Keep } else { DiskPlan::None };
        return decision(
            InstanceAction::Detach,
            vec!["stop --hard requested: the VM goes, the disk stays".into()],
            disk,
        );
    }
    let mut update_reasons = Vec::new();
    if existing.applied.is_none() {
        update_reasons.push("jobs were never applied (an earlier deploy did not finish)".into());
    } else if existing.dirty {
        update_reasons.push("an earlier update of this instance did not finish".into());
    }
    match &disk {
        DiskPlan::Create => update_reasons.push(format!("persistent disk 0 → {} MiB", desired.persistent_disk_mb)),
        DiskPlan::Orphan => {
            update_reasons.push(format!("persistent disk {} MiB → none (the disk is orphaned)", was.persistent_disk_mb))
        }
        DiskPlan::Migrate { from_mb, to_mb, type_changed } => update_reasons.push(format!(
            "persistent disk {from_mb} → {to_mb} MiB{}: migrate",
            if *type_changed { ", disk type changed" } else { "" }
        )),
        DiskPlan::None | DiskPlan::Keep => {}
    }
    for j in &desired.jobs {
        match was.jobs.iter().find(|w| w.name == j.name) {
            None => update_reasons.push(format!("job `{}` added", j.name)),
            Some(w) => {
                if w.release != j.release {
                    update_reasons.push(format!("job `{}`: release {} → {}", j.name, w.release, j.release));
                } else if w.fingerprint != j.fingerprint {
                    update_reasons.push(format!("job `{}`: templates changed", j.name));
                }
                for (path, d) in &j.properties {
                    if w.properties.get(path).map(String::as_str).unwrap_or("") != d.as_str() {
                        update_reasons.push(format!("job `{}`: property `{path}` changed", j.name));
                    }
                }
            }
        }
    }
    for w in &was.jobs {
        if !desired.jobs.iter().any(|j| j.name == w.name) {
            update_reasons.push(format!("job `{}` removed", w.name));
        }
    }
    for (name, fp) in &desired.packages {
        match was.packages.get(name) {
            None => update_reasons.push(format!("package `{name}` added")),
            Some(old) if old != fp => update_reasons.push(format!("package `{name}` changed")),
            _ => {}
        }
    }
    if update_reasons.is_empty() && was.configuration_hash != desired.configuration_hash {
        update_reasons.push("rendered configuration changed (links, addresses or instance spec)".into());
    }
    if existing.bootstrap != bootstrap {
        update_reasons.push(format!("bootstrap {} → {}", existing.bootstrap, bootstrap));
    }
    if !slot.recreate.is_empty() {
        let mut reasons = slot.recreate.clone();
        reasons.extend(update_reasons);
        return decision(InstanceAction::Recreate, reasons, disk);
    }
    if !update_reasons.is_empty() {
        return decision(InstanceAction::Update, update_reasons, disk);
    }
    match (current_state, state) {
        (DesiredState::Started, DesiredState::Stopped) => {
            return decision(InstanceAction::Stop, vec!["stop requested".into()], disk)
        }
        (DesiredState::Stopped, DesiredState::Started) => {
            return decision(InstanceAction::Start, vec!["start requested".into()], disk)
        }
        _ => {}
    }
    if state == DesiredState::Started && req.restart.matches(group, &slot.uuid, slot.index) {
        return decision(InstanceAction::Restart, vec!["restart requested".into()], disk);
    }
    decision(InstanceAction::Keep, vec![], disk)
}

/// The order in which a group's changing instances are updated (BOSH's): the bootstrap
/// instance's AZ first, then instances without an AZ, then the other AZs by name; inside an AZ by
/// index. Canaries are the first `canaries` instances of the first AZ, one batch per
/// `max_in_flight` of them; then each AZ in turn in batches of `max_in_flight`, a percentage
/// taken of that AZ's changing instances.
pub fn compose_batches(update: &ResolvedUpdatePolicy, instances: &[InstancePlan]) -> Vec<Batch> {
    let changing: Vec<usize> = (0..instances.len()).filter(|&k| instances[k].action != InstanceAction::Keep).collect();
    if changing.is_empty() {
        return vec![];
    }
    let bootstrap_az = instances.iter().find(|i| i.bootstrap).and_then(|i| i.az.clone());
    let az_rank = |az: &Option<String>| -> (u8, Option<String>) {
        match az {
            a if *a == bootstrap_az && a.is_some() => (0, None),
            None => (1, None),
            Some(a) => (2, Some(a.clone())),
        }
    };
    let mut azs: Vec<Option<String>> = Vec::new();
    for &k in &changing {
        if !azs.contains(&instances[k].az) {
            azs.push(instances[k].az.clone());
        }
    }
    azs.sort_by_key(az_rank);
    let mut batches = Vec::new();
    let mut canaries_left = update.canaries as usize;
    for az in azs {
        let mut here: Vec<usize> = changing.iter().copied().filter(|&k| instances[k].az == az).collect();
        here.sort_by_key(|&k| (!instances[k].bootstrap, instances[k].index));
        let in_flight = update.max_in_flight.resolve(here.len());
        let canaries = canaries_left.min(here.len());
        canaries_left = 0; // canaries come from the first AZ only
        for chunk in here[..canaries].chunks(in_flight) {
            batches.push(Batch { canary: true, az: az.clone(), instances: chunk.to_vec() });
        }
        for chunk in here[canaries..].chunks(in_flight) {
            batches.push(Batch { canary: false, az: az.clone(), instances: chunk.to_vec() });
        }
    }
    batches
}
