//! Checks that need the whole input: every release, job, stemcell, network, AZ, VM type, disk
//! type and link the manifest names exists; every instance an operator request names exists.

use super::model::{names, perr, PlanError, PlanningInput, Selection, Slot};
use bosun_types::cloud_config::NetworkType;

pub(super) fn validate_references(input: &PlanningInput<'_>) -> Result<(), PlanError> {
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
    }
    Ok(())
}

/// Every instance an operator named must exist.
pub(super) fn check_selections(input: &PlanningInput<'_>, placed: &[(usize, Vec<Slot>)]) -> Result<(), PlanError> {
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
