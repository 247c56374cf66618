//! The planner: a pure, synchronous function of the manifest, the cloud-config, the chosen
//! releases and stemcells and the instances that exist, to a [`Plan`] that leaves the executor no
//! choices. For every instance it decides: create, delete, keep, update (reasons) or recreate
//! (reasons), with its index, AZ, addresses, rendered jobs and the state it will have applied; and
//! the order of it all: stages of groups, canary and AZ batches, the batches deletes run in.
//!
//! Architecture invariant: no I/O here — no store, no CPI, no clock, no global randomness (ids
//! come from the `rng` the caller passes, so tests are deterministic).
//!
//! The passes, in order ([`plan`]):
//! ```text
//! validate    every reference in the manifest resolves
//! placement   instances ↔ AZs and indexes; what scales away is deleted
//! addresses   static, manual and dynamic addresses for every instance
//! decide      (replacements) which VMs are replaced and, under create-swap-delete, on which
//!             spare addresses
//! links+shape properties, links, rendered templates, packages, VM shape → InstancePlan
//! decide      the action and disk fate of each instance from what it will have applied
//! compile     the packages changing instances install, keyed per stemcell; what is not yet
//!             compiled, in dependency order, and the compilation VMs' addresses
//! batches     canaries, AZ batches, stages, delete batches
//! ```
//! Where a new update stage goes: a decision in `decide`, its ordering in `batches`, its execution
//! in `update::driver`.

mod addresses;
mod batches;
mod compile;
mod decide;
mod links;
mod model;
mod placement;
mod shape;
mod validate;

pub use addresses::{address_pending, show_ip};
pub use batches::stages;
pub use compile::{compiled_key, keyed_for_stemcell, stemcell_line_version};
pub use model::{
    Batch, CompilationPlan, CompilationWorker, DeleteBatch, DiskPlan, GroupPlan, InstancePlan, PackageCompilation,
    Plan, PlanError, PlannedPackage, PlanningInput, Requests, Selection, DEFAULT_SCRIPT_TIMEOUT_MS,
};

use crate::records::{AppliedJob, AppliedState, DesiredState, InstanceRecord, RenderedJob};
use crate::render::{lookup, render_job, set_nested};
use bosun_types::api::InstanceAction;
use bosun_types::manifest::VmStrategy;
use bosun_types::protocol::LifecycleScript;
use model::{digest_json, job_of, perr, Slot};
use rand::RngCore;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub fn plan(input: &PlanningInput<'_>, rng: &mut dyn RngCore) -> Result<Plan, PlanError> {
    validate::validate_references(input)?;
    // Addresses that stay taken while this plan runs: other deployments' and those of instances
    // this plan deletes (never hand out an address whose old VM may still be alive).
    let mut taken: BTreeSet<Ipv4Addr> = input.addresses_in_use_elsewhere.clone();
    let (mut placed, mut deletes) = place(input, rng, &mut taken)?;
    validate::check_selections(input, &placed)?;
    plan_replacements(input, &mut placed, &mut taken);
    let (groups, to_compile) = render_groups(input, &placed)?;
    let compilation =
        compile::plan_compilation(input.manifest, input.cloud_config, to_compile, input.compiled, &mut taken)?;
    deletes.sort_by(|a, b| (a.group.as_str(), a.index).cmp(&(b.group.as_str(), b.index)));
    let delete_batches = batches::delete_batches(&deletes, &groups);
    let stages = stages(&groups);
    let warnings = undeclared_properties(input);
    Ok(Plan { deployment: input.manifest.name.clone(), groups, deletes, delete_batches, compilation, stages, warnings })
}

/// Properties given to a job (its own `properties:`, where they are meant for it alone) that its
/// spec declares nowhere: a misspelt or misplaced key a template will never see.
fn undeclared_properties(input: &PlanningInput<'_>) -> Vec<String> {
    fn leaves(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, x) in m {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    leaves(x, &path, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut warnings = Vec::new();
    for (gi, g) in input.manifest.instance_groups.iter().enumerate() {
        for (ji, j) in g.jobs.iter().enumerate() {
            let (Some(given), Some(job)) = (j.properties.as_ref(), job_of(input, &j.release, &j.name)) else {
                continue;
            };
            let declared: Vec<&str> = job.spec.properties.keys().map(String::as_str).collect();
            let mut paths = Vec::new();
            leaves(given, "", &mut paths);
            for path in paths.iter().filter(|p| !p.is_empty()) {
                // Known: a declared property, inside one (a map-valued property), above one, or
                // a part of a generated credential given whole (`tls: ((cert))` gives `tls.ca`
                // beside the declared `tls.certificate`: BOSH's idiom, not a typo).
                let known = declared.iter().any(|d| {
                    path == d
                        || path.strip_prefix(d).is_some_and(|r| r.starts_with('.'))
                        || d.strip_prefix(path.as_str()).is_some_and(|r| r.starts_with('.'))
                        || part_of_a_declared_credential(path, d)
                });
                if !known {
                    warnings.push(format!(
                        "/instance_groups/{gi}/jobs/{ji}/properties: job `{}` declares no property `{path}`; it is ignored",
                        j.name
                    ));
                }
            }
        }
    }
    warnings
}

/// Whether `path` (`tls.ca`) is a sibling of the declared `declared` (`tls.certificate`) within
/// the value of a generated certificate, RSA or SSH key variable.
fn part_of_a_declared_credential(path: &str, declared: &str) -> bool {
    const PARTS: [&str; 5] = ["ca", "certificate", "private_key", "public_key", "public_key_fingerprint"];
    let split = |p: &str| p.rsplit_once('.').map(|(parent, last)| (parent.to_string(), last.to_string()));
    match (split(path), split(declared)) {
        (Some((parent, last)), Some((declared_parent, declared_last))) => {
            parent == declared_parent && PARTS.contains(&last.as_str()) && PARTS.contains(&declared_last.as_str())
        }
        _ => false,
    }
}

/// Each group (by position in the manifest) with its placed instances.
type Placed = Vec<(usize, Vec<Slot>)>;

/// Placement and addresses: each group's instances (index, AZ), the instances that go, and every
/// instance's addresses — kept instances' reserved before anyone new is given one.
fn place(
    input: &PlanningInput<'_>,
    rng: &mut dyn RngCore,
    taken: &mut BTreeSet<Ipv4Addr>,
) -> Result<(Placed, Vec<InstanceRecord>), PlanError> {
    let m = input.manifest;
    let group_names: BTreeSet<&str> = m.instance_groups.iter().map(|g| g.name.as_str()).collect();
    let mut deletes: Vec<InstanceRecord> =
        input.existing.iter().filter(|i| !group_names.contains(i.group.as_str())).cloned().collect();
    for d in &deletes {
        taken.extend(d.held_addresses());
    }
    let mut placed: Placed = Vec::new();
    for (gi, g) in m.instance_groups.iter().enumerate() {
        let (slots, gone) = placement::place_group(g, input.existing, rng);
        for d in &gone {
            taken.extend(d.held_addresses());
        }
        deletes.extend(gone);
        placed.push((gi, slots));
    }
    for (_, slots) in &placed {
        for e in slots.iter().filter_map(|s| s.existing.as_ref()) {
            // Kept instances keep their address unless the network says otherwise.
            taken.extend(e.held_addresses());
        }
    }
    for (gi, slots) in placed.iter_mut() {
        addresses::assign_addresses(
            *gi,
            &m.instance_groups[*gi],
            input.cloud_config,
            slots,
            taken,
            input.addresses_in_use_elsewhere,
        )?;
    }
    Ok((placed, deletes))
}

/// Which VMs are replaced and, under create-swap-delete, the replacement's addresses — decided
/// before rendering, so links and templates see the addresses the VMs will have.
fn plan_replacements(input: &PlanningInput<'_>, placed: &mut [(usize, Vec<Slot>)], taken: &mut BTreeSet<Ipv4Addr>) {
    let m = input.manifest;
    for (gi, slots) in placed.iter_mut() {
        let g = &m.instance_groups[*gi];
        let update = m.update.resolve(g.update.as_ref());
        for slot in slots.iter_mut() {
            slot.recreate = decide::recreate_reasons(input, g, slot);
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
            match addresses::spare_addresses(g, input.cloud_config, &slot.az, taken) {
                Some(networks) => {
                    let was: Vec<String> = existing.ips();
                    let now: Vec<String> = networks.values().map(|n| addresses::show_ip(&n.ip).to_string()).collect();
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
}

/// Each job's properties: the job's, else the group's, else the deployment's, over the spec's
/// defaults. By (group, job).
type ResolvedProperties = BTreeMap<(String, String), serde_json::Value>;

fn resolve_properties(input: &PlanningInput<'_>, placed: &[(usize, Vec<Slot>)]) -> ResolvedProperties {
    let m = input.manifest;
    let mut out = ResolvedProperties::new();
    for (gi, _) in placed {
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
            out.insert((g.name.clone(), j.name.clone()), props);
        }
    }
    out
}

/// Properties, links, rendering, and what changes: one [`GroupPlan`] per group; and the packages
/// the instances that change install, as candidates for compilation.
fn render_groups(
    input: &PlanningInput<'_>,
    placed: &[(usize, Vec<Slot>)],
) -> Result<(Vec<GroupPlan>, Vec<PackageCompilation>), PlanError> {
    let properties = resolve_properties(input, placed);
    let providers = links::link_providers(input)?;
    let context = RenderContext { input, placed, properties: &properties, providers: &providers };
    let mut groups = Vec::new();
    let mut to_compile = Vec::new();
    for (gi, slots) in placed {
        let (group, compilations) = plan_group(&context, *gi, slots)?;
        groups.push(group);
        to_compile.extend(compilations);
    }
    Ok((groups, to_compile))
}

/// What rendering any instance needs to see.
struct RenderContext<'a, 'i> {
    input: &'a PlanningInput<'i>,
    placed: &'a [(usize, Vec<Slot>)],
    properties: &'a ResolvedProperties,
    providers: &'a [links::Provider],
}

fn plan_group(
    c: &RenderContext<'_, '_>,
    gi: usize,
    slots: &[Slot],
) -> Result<(GroupPlan, Vec<PackageCompilation>), PlanError> {
    let (input, m, cc) = (c.input, c.input.manifest, c.input.cloud_config);
    let g = &m.instance_groups[gi];
    let mut update = m.update.resolve(g.update.as_ref());
    if let Some(canaries) = input.requests.canaries {
        update.canaries = canaries;
    }
    if let Some(mif) = input.requests.max_in_flight {
        update.max_in_flight = mif;
    }
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
    let mut to_compile = Vec::new();
    for s in slots {
        let (instance, compilations) = plan_instance(c, gi, s, Some(s.index) == bootstrap_index, &persistent_disk)?;
        // An instance that stays as it is installs nothing.
        if instance.action != InstanceAction::Keep {
            to_compile.extend(compilations);
        }
        instances.push(instance);
    }
    let batches = batches::compose_batches(&update, &instances);
    let script_timeout_ms = update.script_timeout_ms.unwrap_or_else(|| {
        g.jobs
            .iter()
            .filter_map(|j| job_of(input, &j.release, &j.name).and_then(|rj| rj.spec.script_timeout))
            .max()
            .map(|s| s * 1000)
            .unwrap_or(DEFAULT_SCRIPT_TIMEOUT_MS)
    });
    Ok((GroupPlan { name: g.name.clone(), update, instances, batches, script_timeout_ms }, to_compile))
}

fn plan_instance(
    c: &RenderContext<'_, '_>,
    gi: usize,
    s: &Slot,
    bootstrap: bool,
    persistent_disk: &Option<(u64, serde_json::Value)>,
) -> Result<(InstancePlan, Vec<PackageCompilation>), PlanError> {
    let (input, m, cc) = (c.input, c.input.manifest, c.input.cloud_config);
    let g = &m.instance_groups[gi];
    let stemcell = input.stemcells.get(&g.stemcell).expect("validated").clone();
    let env = shape::vm_env(g);
    let cloud_properties = shape::vm_cloud_properties(cc, g, &s.az);
    let address = addresses::default_address(&s.networks);
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
        let props = c.properties.get(&(g.name.clone(), j.name.clone())).expect("resolved above");
        let links = links::consumed_links(input, c.providers, c.placed, c.properties, gi, ji)?;
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
        let peer_groups = if files.contains_key(LifecycleScript::PeerChanged.path()) {
            links
                .values()
                .flat_map(|l| &l.instances)
                .filter_map(|i| i.get("name").and_then(|n| n.as_str()).map(str::to_string))
                .collect()
        } else {
            BTreeSet::new()
        };
        jobs.push(RenderedJob {
            name: j.name.clone(),
            release: release.name.clone(),
            fingerprint: rj.fingerprint.clone(),
            files,
            processes: rj.spec.processes.clone(),
            packages: rj.spec.packages.clone(),
            peer_groups,
        });
    }
    let closure = shape::package_closure(input, &package_names, &gi)?;
    let installed = package_names.iter().map(|(_, name)| name.clone()).collect();
    let (packages, compilations) = compile::planned_packages(&closure, &installed, &stemcell, input.compiled);
    let configuration_hash = shape::configuration_hash(&jobs);
    let applied = AppliedState {
        stemcell: (stemcell.name.clone(), stemcell.version.clone()),
        vm_type: g.vm_type.clone(),
        cloud_properties_digest: digest_json(&cloud_properties),
        env_digest: digest_json(&env),
        networks: s.networks.iter().map(|(n, ns)| (n.clone(), ns.ip.clone())).collect(),
        jobs: applied_jobs,
        // The whole closure: a dependency's change (a new compiled package of what depends on
        // it) is a change of the instance, though it installs only what its jobs name.
        packages: compilations.iter().map(|c| (c.package.name.clone(), c.package.fingerprint.clone())).collect(),
        configuration_hash: configuration_hash.clone(),
        persistent_disk_mb: persistent_disk.as_ref().map(|(mb, _)| *mb).unwrap_or(0),
        persistent_disk_digest: persistent_disk.as_ref().map(|(_, cp)| digest_json(cp)).unwrap_or_default(),
    };
    let new_state = match g.lifecycle {
        bosun_types::manifest::Lifecycle::Errand => DesiredState::Detached,
        _ => DesiredState::Started,
    };
    let d = decide::decide(s, &applied, bootstrap, &g.name, new_state, input.requests);
    let instance = InstancePlan {
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
        stemcell,
        cloud_properties,
        env,
        persistent_disk: persistent_disk.clone(),
        jobs,
        packages,
        configuration_hash,
        applied,
    };
    Ok((instance, compilations))
}
