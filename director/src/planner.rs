//! The planner: a pure, synchronous function of the manifest, the cloud-config, the chosen
//! releases and stemcells and the instances that exist, to a [`Plan`] that leaves the executor no
//! choices. For every instance it decides: create, delete, keep, update (reasons) or recreate
//! (reasons), with its index, AZ, addresses, rendered jobs and the state it will have applied.
//!
//! Architecture invariant: no I/O here — no store, no CPI, no clock, no global randomness (ids
//! come from the `rng` the caller passes, so tests are deterministic).

use crate::records::{
    AppliedJob, AppliedState, InstanceRecord, ReleasePackage, ReleaseRecord, RenderedJob, StemcellRecord,
};
use crate::render::{lookup, render_job, set_nested, LinkData};
use bosun_types::api::InstanceAction;
use bosun_types::cloud_config::{CloudConfig, NetworkType, ResolvedSubnet};
use bosun_types::digest::sha256_digest;
use bosun_types::manifest::{DeploymentManifest, InstanceGroup, ResolvedUpdatePolicy};
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
    /// `deploy --recreate`.
    pub recreate: bool,
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
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub deployment: String,
    pub groups: Vec<GroupPlan>,
    /// Instances to delete: of groups gone from the manifest, scaled away, or in removed AZs.
    pub deletes: Vec<InstanceRecord>,
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
        taken.extend(d.networks.values().filter_map(|n| n.ip.parse::<Ipv4Addr>().ok()));
    }

    // Pass 1: place instances (index, AZ) and assign addresses, group by group.
    let mut placed: Vec<(usize, Vec<Slot>)> = Vec::new();
    for (gi, g) in m.instance_groups.iter().enumerate() {
        let (slots, gone) = place_group(g, input.existing, rng);
        for d in &gone {
            for n in d.networks.values() {
                if let Ok(ip) = n.ip.parse() {
                    taken.insert(ip);
                }
            }
        }
        deletes.extend(gone);
        placed.push((gi, slots));
    }
    for (_, slots) in &placed {
        for s in slots {
            if let Some(e) = &s.existing {
                for n in e.networks.values() {
                    if let Ok(ip) = n.ip.parse::<Ipv4Addr>() {
                        // Kept instances keep their address unless the network says otherwise;
                        // reserve them before anyone new is given one.
                        taken.insert(ip);
                    }
                }
            }
        }
    }
    for (gi, slots) in placed.iter_mut() {
        assign_addresses(*gi, &m.instance_groups[*gi], cc, slots, &mut taken, input.addresses_in_use_elsewhere)?;
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
        let update = m.update.resolve(g.update.as_ref());
        let stemcell = input.stemcells.get(&g.stemcell).expect("validated").clone();
        let vm_type = cc.vm_types.iter().find(|v| v.name == g.vm_type).expect("validated");
        let env = g.env.clone().unwrap_or(serde_json::Value::Object(Default::default()));
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
            let mut cloud_properties = vm_type.cloud_properties.clone();
            for ext in &g.vm_extensions {
                let e = cc.vm_extensions.iter().find(|x| &x.name == ext).expect("validated");
                merge(&mut cloud_properties, &e.cloud_properties);
            }
            if let Some(az) = s.az.as_ref().and_then(|a| cc.azs.iter().find(|x| &x.name == a)) {
                merge(&mut cloud_properties, &az.cloud_properties);
            }
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
            };
            let (action, reasons) = decide(s, &applied, bootstrap, input.recreate, &format!("/instance_groups/{gi}"))?;
            instances.push(InstancePlan {
                group: g.name.clone(),
                uuid: s.uuid.clone(),
                index: s.index,
                az: s.az.clone(),
                bootstrap,
                networks: s.networks.clone(),
                action,
                reasons,
                existing: s.existing.clone(),
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
        groups.push(GroupPlan { name: g.name.clone(), update, instances });
    }
    deletes.sort_by(|a, b| (a.group.as_str(), a.index).cmp(&(b.group.as_str(), b.index)));
    Ok(Plan { deployment: m.name.clone(), groups, deletes })
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
            if net.kind != NetworkType::Manual {
                return Err(perr(at(&format!("networks/{ni}")), format!("network `{}` is {:?}; bosun places instances on manual networks (dynamic and vip networks come later)", n.name, net.kind)));
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
        slots.push(Slot { uuid: new_uuid(rng), index, az, existing: None, networks: BTreeMap::new() });
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
        kind: "manual".into(),
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
        let subnets = cc.resolved_subnets(&nref.name).map_err(|e| perr(&at, e.to_string()))?;
        let default =
            if g.networks.len() == 1 { vec!["dns".to_string(), "gateway".to_string()] } else { nref.default.clone() };
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
                let mut found = None;
                for s in subnets.iter().filter(|s| subnet_serves(s, &slot.az)) {
                    if let Some(ip) = s.dynamic_pool().find(|ip| !taken.contains(ip)) {
                        found = Some((s, ip));
                        break;
                    }
                }
                let Some((s, ip)) = found else {
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

/// What must happen to an instance, and why.
fn decide(
    slot: &Slot,
    desired: &AppliedState,
    bootstrap: bool,
    recreate: bool,
    at: &str,
) -> Result<(InstanceAction, Vec<String>), PlanError> {
    let Some(existing) = &slot.existing else {
        return Ok((InstanceAction::Create, vec!["new instance".into()]));
    };
    if existing.vm.is_none() {
        return Ok((InstanceAction::Create, vec!["the instance has no VM".into()]));
    }
    let was = existing.applied.clone().unwrap_or_default();
    let mut recreate_reasons = Vec::new();
    if recreate {
        recreate_reasons.push("recreate requested".to_string());
    }
    if was.stemcell != desired.stemcell {
        recreate_reasons.push(format!(
            "stemcell {}/{} → {}/{}",
            was.stemcell.0, was.stemcell.1, desired.stemcell.0, desired.stemcell.1
        ));
    }
    if was.vm_type != desired.vm_type {
        recreate_reasons.push(format!("vm_type `{}` → `{}`", was.vm_type, desired.vm_type));
    } else if was.cloud_properties_digest != desired.cloud_properties_digest {
        recreate_reasons.push("cloud properties changed".into());
    }
    if was.env_digest != desired.env_digest {
        recreate_reasons.push("env changed".into());
    }
    for (net, ip) in &desired.networks {
        match existing.networks.get(net) {
            Some(n) if &n.ip == ip => {}
            Some(n) => recreate_reasons.push(format!("network `{net}`: {} → {ip}", n.ip)),
            None => recreate_reasons.push(format!("network `{net}` added ({ip})")),
        }
    }
    for net in existing.networks.keys() {
        if !desired.networks.contains_key(net) {
            recreate_reasons.push(format!("network `{net}` removed"));
        }
    }
    let mut update_reasons = Vec::new();
    if existing.applied.is_none() {
        update_reasons.push("jobs were never applied (an earlier deploy did not finish)".into());
    }
    let had_disk = !existing.disk_cids.is_empty();
    if was.persistent_disk_mb != desired.persistent_disk_mb || had_disk != (desired.persistent_disk_mb > 0) {
        if had_disk {
            return Err(perr(
                at,
                format!(
                    "persistent disk of instance {}/{} changes ({} → {} MiB): disk migration is not supported yet",
                    existing.group, existing.uuid, was.persistent_disk_mb, desired.persistent_disk_mb
                ),
            ));
        }
        update_reasons.push(format!("persistent disk 0 → {} MiB", desired.persistent_disk_mb));
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
    if !recreate_reasons.is_empty() {
        recreate_reasons.extend(update_reasons);
        return Ok((InstanceAction::Recreate, recreate_reasons));
    }
    if !update_reasons.is_empty() {
        return Ok((InstanceAction::Update, update_reasons));
    }
    Ok((InstanceAction::Keep, vec![]))
}
