//! Removing what was uploaded: `delete-release`, `delete-stemcell` and `clean-up [--all]`.
//!
//! Nothing a deployment needs is removed. A release version is needed when a deployment's
//! manifest names it (or names `latest` and it is the newest), or when an instance runs a job whose
//! content no other remaining version of the release holds (a recreate must render the same job).
//! A stemcell is needed when a VM runs on it or a manifest names it (`latest`: the newest). What
//! is decided here is pure ([`Inventory`]); the executor deletes stemcells through the CPI, then
//! the records, then compiled packages nothing needs, and lets blob collection take the blobs.

use crate::records::{CompiledPackageRecord, DeploymentRecord, InstanceRecord, ReleaseRecord, StemcellRecord};
use crate::store::{tables, StoreError};
use crate::tasks::Task;
use crate::Director;
use std::collections::{BTreeMap, BTreeSet};

/// What exists, read from the store in one go.
pub struct Inventory {
    pub deployments: Vec<DeploymentRecord>,
    pub instances: Vec<InstanceRecord>,
    pub releases: Vec<ReleaseRecord>,
    pub stemcells: Vec<StemcellRecord>,
    pub compiled: Vec<CompiledPackageRecord>,
}

/// Versions of one name, oldest first, in BOSH's version order.
fn by_version<'a, T>(items: impl Iterator<Item = &'a T>, version: impl Fn(&T) -> &str) -> Vec<&'a T>
where
    T: 'a,
{
    let mut v: Vec<&T> = items.collect();
    v.sort_by(|a, b| bosun_types::version::compare(version(a), version(b)));
    v
}

impl Inventory {
    pub async fn load(d: &Director) -> Result<Self, StoreError> {
        Ok(Inventory {
            deployments: d.state.list(tables::DEPLOYMENTS, "").await?,
            instances: d.state.list(tables::INSTANCES, "").await?,
            releases: d.state.list(tables::RELEASES, "").await?,
            stemcells: d.state.list(tables::STEMCELLS, "").await?,
            compiled: d.state.list(tables::COMPILED_PACKAGES, "").await?,
        })
    }

    fn newest_release(&self, name: &str) -> Option<&ReleaseRecord> {
        by_version(self.releases.iter().filter(|r| r.name == name), |r| &r.version).pop()
    }

    /// The deployments that need release `r` if the versions in `leaving` (which holds `r`) go.
    pub fn release_users(&self, r: &ReleaseRecord, leaving: &BTreeSet<(String, String)>) -> Vec<String> {
        let remaining_fingerprints: BTreeSet<&str> = self
            .releases
            .iter()
            .filter(|x| x.name == r.name && !leaving.contains(&(x.name.clone(), x.version.clone())))
            .flat_map(|x| x.jobs.iter().map(|j| j.fingerprint.as_str()))
            .collect();
        let only_here: BTreeSet<&str> =
            r.jobs.iter().map(|j| j.fingerprint.as_str()).filter(|f| !remaining_fingerprints.contains(f)).collect();
        let newest = self.newest_release(&r.name).map(|n| n.version.as_str());
        let mut users: BTreeSet<String> = BTreeSet::new();
        for dep in &self.deployments {
            let named = dep.refs().releases.iter().any(|x| {
                x.name == r.name
                    && (x.version.0 == r.version || (x.version.0 == "latest" && newest == Some(&r.version)))
            });
            if named {
                users.insert(dep.name.clone());
            }
        }
        for i in &self.instances {
            let runs = i.applied.as_ref().is_some_and(|a| {
                a.jobs.iter().any(|j| j.release == r.name && only_here.contains(j.fingerprint.as_str()))
            });
            if runs {
                users.insert(i.deployment.clone());
            }
        }
        users.into_iter().collect()
    }

    /// The deployments that need stemcell `s`: a VM on it, or a manifest naming it.
    pub fn stemcell_users(&self, s: &StemcellRecord) -> Vec<String> {
        let mut users: BTreeSet<String> = self
            .instances
            .iter()
            .filter(|i| i.vm.as_ref().is_some_and(|v| v.stemcell_cid == s.cid))
            .map(|i| i.deployment.clone())
            .collect();
        for dep in &self.deployments {
            let named = dep.refs().stemcells.iter().any(|x| {
                let matches = |c: &StemcellRecord| {
                    x.os.as_ref().is_none_or(|o| *o == c.operating_system)
                        && x.name.as_ref().is_none_or(|n| *n == c.name)
                };
                if !matches(s) {
                    return false;
                }
                if x.version.0 == "latest" {
                    let newest = by_version(self.stemcells.iter().filter(|c| matches(c)), |c| &c.version).pop();
                    newest.is_some_and(|n| n.cid == s.cid)
                } else {
                    x.version.0 == s.version
                }
            });
            if named {
                users.insert(dep.name.clone());
            }
        }
        users.into_iter().collect()
    }

    /// `clean-up`: the releases and stemcells nothing needs, all of them with `all`, else all but
    /// the newest two versions of each name (as BOSH keeps them).
    pub fn unused(&self, all: bool) -> (Vec<ReleaseRecord>, Vec<StemcellRecord>) {
        let keep = if all { 0 } else { 2 };
        let mut leaving: BTreeSet<(String, String)> = BTreeSet::new();
        let mut releases = Vec::new();
        let names: BTreeSet<&str> = self.releases.iter().map(|r| r.name.as_str()).collect();
        for name in names {
            let versions = by_version(self.releases.iter().filter(|r| r.name == name), |r| &r.version);
            let candidates = &versions[..versions.len().saturating_sub(keep)];
            // Oldest first, each judged with those already leaving gone.
            for r in candidates {
                let key = (r.name.clone(), r.version.clone());
                let mut trial = leaving.clone();
                trial.insert(key.clone());
                if self.release_users(r, &trial).is_empty() {
                    leaving = trial;
                    releases.push((*r).clone());
                }
            }
        }
        let mut stemcells = Vec::new();
        let names: BTreeSet<&str> = self.stemcells.iter().map(|s| s.name.as_str()).collect();
        for name in names {
            let versions = by_version(self.stemcells.iter().filter(|s| s.name == name), |s| &s.version);
            for s in &versions[..versions.len().saturating_sub(keep)] {
                if self.stemcell_users(s).is_empty() {
                    stemcells.push((*s).clone());
                }
            }
        }
        (releases, stemcells)
    }

    /// Compiled packages no longer needed once `releases` and `stemcells` are gone: their
    /// package is in no remaining release or their stemcell is gone, and no instance runs them.
    pub fn compiled_left_over(&self, releases: &[ReleaseRecord], stemcells: &[StemcellRecord]) -> Vec<String> {
        let gone: BTreeSet<(&str, &str)> = releases.iter().map(|r| (r.name.as_str(), r.version.as_str())).collect();
        let packaged: BTreeSet<&str> = self
            .releases
            .iter()
            .filter(|r| !gone.contains(&(r.name.as_str(), r.version.as_str())))
            .flat_map(|r| r.packages.iter().map(|p| p.fingerprint.as_str()))
            .collect();
        let gone_cells: BTreeSet<&str> = stemcells.iter().map(|s| s.cid.as_str()).collect();
        let cells: BTreeSet<(&str, &str)> = self
            .stemcells
            .iter()
            .filter(|s| !gone_cells.contains(s.cid.as_str()))
            .map(|s| (s.operating_system.as_str(), s.version.as_str()))
            .collect();
        let running: BTreeSet<&str> = self
            .instances
            .iter()
            .filter_map(|i| i.applied.as_ref())
            .flat_map(|a| a.packages.values().map(String::as_str))
            .collect();
        self.compiled
            .iter()
            .filter(|c| {
                let orphaned = !packaged.contains(c.fingerprint.as_str())
                    || !cells.contains(&(c.stemcell_os.as_str(), c.stemcell_version.as_str()));
                orphaned && !running.contains(c.fingerprint.as_str())
            })
            .map(|c| c.key.clone())
            .collect()
    }
}

/// What a removal did, for the task's result.
#[derive(Debug, Default)]
pub struct Removed {
    pub releases: Vec<String>,
    pub stemcells: Vec<String>,
    pub compiled_packages: usize,
    pub orphaned_disks: usize,
    pub blobs: usize,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        write!(
            f,
            "deleted releases: {}; stemcells: {}; {} compiled package(s), {} orphaned disk(s), {} blob(s)",
            list(&self.releases),
            list(&self.stemcells),
            self.compiled_packages,
            self.orphaned_disks,
            self.blobs
        )
    }
}

/// Deletes these releases and stemcells (already judged unneeded), the compiled packages left
/// over, every orphaned disk with `orphaned_disks`, and collects the blobs nothing references.
pub async fn remove(
    d: &Director,
    task: &Task,
    releases: Vec<ReleaseRecord>,
    stemcells: Vec<StemcellRecord>,
    orphaned_disks: bool,
) -> Result<Removed, String> {
    // Judged again as the task runs: a deploy may have begun to use one since it was asked for.
    let inventory = Inventory::load(d).await.map_err(|e| e.to_string())?;
    let refused = refusals(&inventory, &releases, &stemcells);
    if !refused.is_empty() {
        return Err(format!("nothing deleted: {}", refused.join("; ")));
    }
    let compiled = inventory.compiled_left_over(&releases, &stemcells);
    let mut removed = Removed::default();
    if orphaned_disks {
        let orphans: Vec<crate::records::OrphanedDiskRecord> =
            d.state.list(tables::ORPHANED_DISKS, "").await.map_err(|e| e.to_string())?;
        for o in orphans {
            task.info("delete disk", None, format!("orphaned disk {} (was {}'s)", o.disk_cid, o.instance)).await;
            crate::disks::delete_orphan(d, &o.disk_cid).await.map_err(|e| bosun_types::error_chain(&e))?;
            removed.orphaned_disks += 1;
        }
    }
    for s in &stemcells {
        let name = format!("{}/{}", s.name, s.version);
        task.info("delete stemcell", None, format!("{name} (CPI stemcell {})", s.cid)).await;
        match d.cpi.delete_stemcell(&s.cid).await {
            Ok(()) | Err(bosun_cpi::CpiError::StemcellNotFound(_)) => {}
            Err(e) => return Err(format!("deleting stemcell {name}: {e}")),
        }
        let key = crate::uploads::release_key(&s.name, &s.version);
        d.state.delete(tables::STEMCELLS, &key).await.map_err(|e| e.to_string())?;
        removed.stemcells.push(name);
    }
    for r in &releases {
        let name = format!("{}/{}", r.name, r.version);
        task.info("delete release", None, name.clone()).await;
        let key = crate::uploads::release_key(&r.name, &r.version);
        d.state.delete(tables::RELEASES, &key).await.map_err(|e| e.to_string())?;
        removed.releases.push(name);
    }
    for key in &compiled {
        d.state.delete(tables::COMPILED_PACKAGES, key).await.map_err(|e| e.to_string())?;
    }
    removed.compiled_packages = compiled.len();
    d.state.flush().await.map_err(|e| e.to_string())?;
    removed.blobs = crate::blob_gc::collect(d).await?.deleted;
    Ok(removed)
}

/// The users of each release and stemcell named, for a refusal that names them all.
pub fn refusals(inv: &Inventory, releases: &[ReleaseRecord], stemcells: &[StemcellRecord]) -> Vec<String> {
    let leaving: BTreeSet<(String, String)> = releases.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in releases {
        let users = inv.release_users(r, &leaving);
        if !users.is_empty() {
            out.insert(format!("release {}/{}", r.name, r.version), users);
        }
    }
    for s in stemcells {
        let users = inv.stemcell_users(s);
        if !users.is_empty() {
            out.insert(format!("stemcell {}/{}", s.name, s.version), users);
        }
    }
    out.into_iter().map(|(what, users)| format!("{what} is used by deployment(s) {}", users.join(", "))).collect()
}
