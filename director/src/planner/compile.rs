//! Compilation: which packages an instance installs, each named by the key of its compiled form
//! (the package's name and fingerprint, the stemcell's OS and version, and its dependencies'
//! keys), and which of those keys nobody has compiled yet — in dependency order — with the
//! compilation VMs' shape and addresses.

use super::addresses::{dynamic_settings, pick_dynamic, settings};
use super::model::{perr, CompilationPlan, CompilationWorker, PackageCompilation, PlanError, PlannedPackage};
use crate::records::{ReleasePackage, StemcellRecord};
use bosun_types::cloud_config::{CloudConfig, Compilation, NetworkType};
use bosun_types::manifest::DeploymentManifest;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The key of a package compiled for a stemcell: the same source, stemcell and dependencies
/// always give the same key, and anything else gives another.
pub fn compiled_key(name: &str, fingerprint: &str, os: &str, version: &str, dependency_keys: &[String]) -> String {
    let mut h = bosun_types::digest::Sha256Writer::default();
    for part in [name, fingerprint, os, version] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    let mut deps = dependency_keys.to_vec();
    deps.sort();
    for d in deps {
        h.update(d.as_bytes());
        h.update(&[0]);
    }
    h.finish()
}

/// A package, its compiled key, and every package below it (name, key).
pub type KeyedPackage<'a> = (&'a ReleasePackage, String, Vec<(String, String)>);

/// A closed set of packages keyed for a stemcell: each with its compiled key and every package
/// below it (by name, with its key), dependencies before dependents. The one place keys are
/// worked out — the planner, `export-release` and compiled-release uploads all ask here. A
/// dependency outside the set is left out (the release upload refuses such sets).
pub fn keyed_for_stemcell<'a>(
    packages: impl IntoIterator<Item = &'a ReleasePackage>,
    os: &str,
    version: &str,
) -> Vec<KeyedPackage<'a>> {
    let packages: Vec<&ReleasePackage> = packages.into_iter().collect();
    let by_name: BTreeMap<&str, &ReleasePackage> = packages.iter().map(|p| (p.name.as_str(), *p)).collect();
    fn visit<'a>(
        p: &'a ReleasePackage,
        by_name: &BTreeMap<&str, &'a ReleasePackage>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<&'a ReleasePackage>,
    ) {
        if !seen.insert(p.name.clone()) {
            return;
        }
        for d in &p.dependencies {
            if let Some(dep) = by_name.get(d.as_str()) {
                visit(dep, by_name, seen, order);
            }
        }
        order.push(p);
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for p in &packages {
        visit(p, &by_name, &mut seen, &mut order);
    }
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let mut below: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for p in order {
        let mut all: BTreeSet<String> = BTreeSet::new();
        for d in p.dependencies.iter().filter(|d| keys.contains_key(*d)) {
            all.insert(d.clone());
            all.extend(below.get(d).cloned().unwrap_or_default());
        }
        let direct: Vec<String> = p.dependencies.iter().filter_map(|d| keys.get(d).cloned()).collect();
        let key = compiled_key(&p.name, &p.fingerprint, os, version, &direct);
        keys.insert(p.name.clone(), key.clone());
        below.insert(p.name.clone(), all.clone());
        out.push((p, key, all.iter().map(|d| (d.clone(), keys[d].clone())).collect()));
    }
    out
}

/// The stemcell line a version belongs to: its major version (BOSH's `StemcellVersion.match`
/// compares the first component). Packages of a compiled release are recorded for their
/// stemcell's line too (`stemcell_line_version`), and serve every stemcell of that line.
pub fn stemcell_line_version(version: &str) -> String {
    format!("line:{}", version.split('.').next().unwrap_or(version))
}

/// A closed set of packages keyed for a stemcell as an instance installs them: each package's
/// exact key when it is compiled (or must be compiled) for this very stemcell, or — as BOSH does
/// for compiled releases — the key it was recorded under for the stemcell's line, when only
/// that is compiled. Dependencies carry the keys chosen for them.
pub fn resolved_for_stemcell<'a>(
    packages: impl IntoIterator<Item = &'a ReleasePackage>,
    os: &str,
    version: &str,
    compiled: &BTreeSet<String>,
) -> Vec<KeyedPackage<'a>> {
    let packages: Vec<&ReleasePackage> = packages.into_iter().collect();
    let exact = keyed_for_stemcell(packages.iter().copied(), os, version);
    let line = keyed_for_stemcell(packages.iter().copied(), os, &stemcell_line_version(version));
    let line_keys: BTreeMap<&str, &str> = line.iter().map(|(p, key, _)| (p.name.as_str(), key.as_str())).collect();
    let chosen: BTreeMap<String, String> = exact
        .iter()
        .map(|(p, key, _)| {
            let on_line = line_keys[p.name.as_str()];
            let pick = if !compiled.contains(key) && compiled.contains(on_line) { on_line } else { key };
            (p.name.clone(), pick.to_string())
        })
        .collect();
    exact
        .into_iter()
        .map(|(p, _, below)| {
            let below = below.into_iter().map(|(name, _)| (name.clone(), chosen[&name].clone())).collect();
            (p, chosen[&p.name].clone(), below)
        })
        .collect()
}

/// The packages an instance installs — those its jobs name, as BOSH installs them: a package's
/// `dependencies` are what compiling it needs, and a job that needs one at run time names it —
/// and what compiling each package of the closure would take.
pub(super) fn planned_packages(
    closure: &[(String, ReleasePackage)],
    installed: &BTreeSet<String>,
    stemcell: &StemcellRecord,
    compiled: &BTreeSet<String>,
) -> (Vec<PlannedPackage>, Vec<PackageCompilation>) {
    let release_of: BTreeMap<&str, &str> = closure.iter().map(|(r, p)| (p.name.as_str(), r.as_str())).collect();
    let mut planned = Vec::new();
    let mut compilations = Vec::new();
    for (p, key, dependencies) in
        resolved_for_stemcell(closure.iter().map(|(_, p)| p), &stemcell.operating_system, &stemcell.version, compiled)
    {
        if installed.contains(&p.name) {
            planned.push(PlannedPackage {
                name: p.name.clone(),
                fingerprint: p.fingerprint.clone(),
                // The agent installs in dependency order within what it is sent.
                dependencies: p.dependencies.iter().filter(|d| installed.contains(*d)).cloned().collect(),
                compiled_key: key.clone(),
            });
        }
        compilations.push(PackageCompilation {
            key,
            package: p.clone(),
            release: release_of[p.name.as_str()].to_string(),
            stemcell: stemcell.clone(),
            dependencies,
        });
    }
    (planned, compilations)
}

/// What must be compiled (not in `compiled`), in dependency order, and the compilation VMs to do
/// it on: at most `workers`, each with its addresses on the compilation network.
pub(super) fn plan_compilation(
    m: &DeploymentManifest,
    cc: &CloudConfig,
    candidates: Vec<PackageCompilation>,
    compiled: &BTreeSet<String>,
    taken: &mut BTreeSet<Ipv4Addr>,
) -> Result<Option<CompilationPlan>, PlanError> {
    let mut packages: Vec<PackageCompilation> = Vec::new();
    let mut queued: BTreeSet<String> = BTreeSet::new();
    // Candidates arrive dependencies-first per instance; keeping the first sighting keeps that order.
    for c in candidates {
        if !compiled.contains(&c.key) && queued.insert(c.key.clone()) {
            packages.push(c);
        }
    }
    if packages.is_empty() {
        return Ok(None);
    }
    if let Some(p) = packages.iter().find(|p| p.package.compiled_only) {
        return Err(perr(
            "/stemcells",
            format!(
                "release {} is a compiled release: its package `{}` is not compiled for stemcell {}/{} and the release carries no source to compile it",
                p.release, p.package.name, p.stemcell.operating_system, p.stemcell.version
            ),
        ));
    }
    let (config, at) = match (&m.compilation, &cc.compilation) {
        (Some(c), _) => (c, "/compilation"),
        (None, Some(c)) => (c, "cloud-config: /compilation"),
        (None, None) => {
            let names: Vec<&str> = packages.iter().map(|p| p.package.name.as_str()).collect();
            return Err(perr(
                "/compilation",
                format!(
                    "packages {} must be compiled, but neither the manifest nor the cloud-config has a `compilation` block",
                    names.join(", ")
                ),
            ));
        }
    };
    check_config(config, cc, at)?;
    let cloud_properties = match (&config.cloud_properties, &config.vm_type) {
        (Some(cp), _) => cp.clone(),
        (None, Some(vt)) => {
            cc.vm_types.iter().find(|v| &v.name == vt).map(|v| v.cloud_properties.clone()).unwrap_or_default()
        }
        (None, None) => serde_json::json!({}),
    };
    let net = cc.network(&config.network).expect("checked");
    let wanted = (config.workers as usize).min(packages.len()).max(1);
    let mut workers = Vec::new();
    for _ in 0..wanted {
        let address = if net.kind == NetworkType::Dynamic {
            dynamic_settings(net, &config.az, vec!["dns".into(), "gateway".into()])
        } else {
            let subnets =
                cc.resolved_subnets(&config.network).map_err(|e| perr(format!("{at}/network"), e.to_string()))?;
            match pick_dynamic(&subnets, &config.az, taken) {
                Some((s, ip)) => {
                    taken.insert(ip);
                    settings(s, ip, vec!["dns".into(), "gateway".into()])
                }
                None if workers.is_empty() => {
                    return Err(perr(
                        format!("{at}/network"),
                        format!("network `{}` has no free address for a compilation VM", config.network),
                    ))
                }
                None => break, // fewer workers than asked: the addresses there are
            }
        };
        workers.push(CompilationWorker { networks: [(config.network.clone(), address)].into() });
    }
    Ok(Some(CompilationPlan {
        packages,
        workers,
        az: config.az.clone(),
        cloud_properties,
        env: config.env.clone().unwrap_or_else(|| serde_json::json!({})),
        reuse_vms: config.reuse_compilation_vms,
    }))
}

fn check_config(c: &Compilation, cc: &CloudConfig, at: &str) -> Result<(), PlanError> {
    if c.workers == 0 {
        return Err(perr(format!("{at}/workers"), "must be at least 1"));
    }
    if cc.network(&c.network).is_none() {
        return Err(perr(format!("{at}/network"), format!("unknown network `{}`", c.network)));
    }
    if let Some(az) = &c.az {
        if !cc.azs.iter().any(|a| &a.name == az) {
            return Err(perr(format!("{at}/az"), format!("unknown AZ `{az}`")));
        }
    }
    if let Some(vt) = &c.vm_type {
        if !cc.vm_types.iter().any(|v| &v.name == vt) {
            return Err(perr(format!("{at}/vm_type"), format!("unknown vm_type `{vt}`")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_types::protocol::BlobRef;

    fn package(name: &str, dependencies: &[&str]) -> ReleasePackage {
        ReleasePackage {
            name: name.into(),
            fingerprint: format!("fp-{name}"),
            blob: BlobRef { digest: "sha256:00".into(), size: 1 },
            dependencies: dependencies.iter().map(|d| d.to_string()).collect(),
            compiled_only: false,
        }
    }

    #[test]
    fn a_compiled_release_serves_its_stemcell_line_and_exact_compilations_win() {
        let packages = [package("go", &[]), package("kubernetes", &["go"]), package("proxy", &["go"])];
        let line = stemcell_line_version("621.76");
        assert_eq!(line, "line:621");
        let on_line = |name: &str| {
            keyed_for_stemcell(&packages, "jammy", &line).into_iter().find(|(p, _, _)| p.name == name).unwrap().1
        };
        let exact = |name: &str| {
            keyed_for_stemcell(&packages, "jammy", "621.76").into_iter().find(|(p, _, _)| p.name == name).unwrap().1
        };
        // go and kubernetes came in a compiled release for 621.74 (recorded for line 621 too);
        // proxy was compiled from source for 621.76 itself.
        let compiled: BTreeSet<String> = [on_line("go"), on_line("kubernetes"), exact("proxy")].into();
        let got = resolved_for_stemcell(&packages, "jammy", "621.76", &compiled);
        let key = |name: &str| got.iter().find(|(p, _, _)| p.name == name).unwrap();
        assert_eq!(key("go").1, on_line("go"));
        assert_eq!(key("kubernetes").1, on_line("kubernetes"));
        assert_eq!(key("kubernetes").2, vec![("go".to_string(), on_line("go"))], "dependencies carry the chosen keys");
        assert_eq!(key("proxy").1, exact("proxy"));
        // Another line, or nothing compiled: the exact keys, to be compiled.
        let got = resolved_for_stemcell(&packages, "jammy", "622.1", &compiled);
        assert!(got.iter().all(|(p, k, _)| {
            *k == keyed_for_stemcell(&packages, "jammy", "622.1")
                .into_iter()
                .find(|(q, _, _)| q.name == p.name)
                .unwrap()
                .1
        }));
    }
}
