//! Compiled releases, in BOSH's layout: `bosun export-release NAME/VERSION OS/VERSION` packs a
//! release's jobs with its packages as compiled for that stemcell (`compiled_packages/`), and
//! `bosun inspect-release` lists a release's jobs and packages with the stemcells each package is
//! compiled for. (Uploading a compiled release records its packages as compiled: `uploads`.)

use crate::planner::keyed_for_stemcell;
use crate::records::{CompiledPackageRecord, ReleasePackage, ReleaseRecord};
use crate::store::{tables, StoreError};
use crate::Director;
use bosun_types::api::{InspectJob, InspectPackage, ReleaseInspectView};
use bosun_types::release::{CompiledArtifact, ReleaseArtifact, ReleaseManifest};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("release `{0}` is not uploaded")]
    NoRelease(String),
    #[error("`{0}` is not OS/VERSION")]
    BadStemcell(String),
    #[error("release {release} has no job `{job}`")]
    NoJob { release: String, job: String },
    #[error(
        "release {release} is not compiled for {stemcell}: package(s) {missing} (deploy it on that stemcell first)"
    )]
    NotCompiled { release: String, stemcell: String, missing: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the compiled release")]
    Io(#[source] std::io::Error),
}

/// Each package of the release with its compiled key for the stemcell (dependencies first).
fn keys_for(release: &ReleaseRecord, os: &str, version: &str) -> Vec<(ReleasePackage, String)> {
    keyed_for_stemcell(&release.packages, os, version).into_iter().map(|(p, key, _)| (p.clone(), key)).collect()
}

async fn release(d: &Director, name: &str, version: &str) -> Result<Option<ReleaseRecord>, StoreError> {
    d.state.get(tables::RELEASES, &format!("{name}/{version}")).await
}

/// Writes the compiled release tarball into the director's scratch directory and returns its path
/// (the caller streams it and removes it).
/// `jobs`: only these jobs and the packages they need (BOSH's `--job`); empty: all of them.
pub async fn export(
    d: &Director,
    name: &str,
    version: &str,
    stemcell: &str,
    jobs: &[String],
) -> Result<PathBuf, ExportError> {
    let (os, stemcell_version) = stemcell
        .split_once('/')
        .filter(|(o, v)| !o.is_empty() && !v.is_empty() && !v.contains('/'))
        .ok_or_else(|| ExportError::BadStemcell(stemcell.to_string()))?;
    let mut r = release(d, name, version).await?.ok_or_else(|| ExportError::NoRelease(format!("{name}/{version}")))?;
    if !jobs.is_empty() {
        if let Some(j) = jobs.iter().find(|j| !r.jobs.iter().any(|x| &x.name == *j)) {
            return Err(ExportError::NoJob { release: format!("{name}/{version}"), job: j.clone() });
        }
        r.jobs.retain(|j| jobs.contains(&j.name));
        // The packages those jobs need, with their dependencies.
        let mut wanted: Vec<String> = r.jobs.iter().flat_map(|j| j.spec.packages.clone()).collect();
        let mut keep = std::collections::BTreeSet::new();
        while let Some(p) = wanted.pop() {
            if keep.insert(p.clone()) {
                if let Some(pkg) = r.packages.iter().find(|x| x.name == p) {
                    wanted.extend(pkg.dependencies.clone());
                }
            }
        }
        r.packages.retain(|p| keep.contains(&p.name));
    }
    let mut compiled: Vec<(ReleasePackage, CompiledPackageRecord)> = Vec::new();
    let mut missing = Vec::new();
    for (p, key) in keys_for(&r, os, stemcell_version) {
        match d.state.get(tables::COMPILED_PACKAGES, &key).await? {
            Some(rec) => compiled.push((p, rec)),
            None => missing.push(p.name),
        }
    }
    if !missing.is_empty() {
        return Err(ExportError::NotCompiled {
            release: format!("{name}/{version}"),
            stemcell: stemcell.to_string(),
            missing: missing.join(", "),
        });
    }
    let manifest = ReleaseManifest {
        name: r.name.clone(),
        version: bosun_types::manifest::Version(r.version.clone()),
        commit_hash: r.commit_hash.clone(),
        uncommitted_changes: false,
        jobs: r
            .jobs
            .iter()
            .map(|j| ReleaseArtifact {
                name: j.name.clone(),
                version: j.fingerprint.clone(),
                fingerprint: j.fingerprint.clone(),
                sha1: j.blob.digest.clone(),
                dependencies: vec![],
                packages: j.spec.packages.clone(),
            })
            .collect(),
        packages: vec![],
        compiled_packages: compiled
            .iter()
            .map(|(p, rec)| CompiledArtifact {
                name: p.name.clone(),
                version: p.fingerprint.clone(),
                fingerprint: p.fingerprint.clone(),
                sha1: rec.blob.digest.clone(),
                stemcell: stemcell.to_string(),
                dependencies: p.dependencies.clone(),
            })
            .collect(),
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for j in &r.jobs {
        files.push((format!("jobs/{}.tgz", j.name), d.blobstore.path(&j.blob.digest).map_err(io_of)?));
    }
    for (p, rec) in &compiled {
        files.push((format!("compiled_packages/{}.tgz", p.name), d.blobstore.path(&rec.blob.digest).map_err(io_of)?));
    }
    let mf = serde_yaml::to_string(&manifest).expect("a manifest serializes");
    let dir = d.config.state_dir.join("tmp");
    let out = dir.join(format!("export-{}.tgz", uuid::Uuid::new_v4().simple()));
    let out2 = out.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::File::create(&out2)?;
        // Its members are archives already: gzip's fastest level.
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
        let mut header = tar::Header::new_gnu();
        header.set_size(mf.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "release.MF", mf.as_bytes())?;
        for (name, path) in files {
            tar.append_path_with_name(&path, &name)?;
        }
        let gz = tar.into_inner()?;
        gz.finish()?.sync_all()
    })
    .await
    .map_err(|e| ExportError::Io(std::io::Error::other(e)))?
    .map_err(ExportError::Io)?;
    Ok(out)
}

fn io_of(e: crate::blobstore::BlobError) -> ExportError {
    ExportError::Io(std::io::Error::other(e.to_string()))
}

/// A release's jobs and packages, each package with the stemcells it is compiled for.
pub async fn inspect(d: &Director, name: &str, version: &str) -> Result<Option<ReleaseInspectView>, StoreError> {
    let Some(r) = release(d, name, version).await? else { return Ok(None) };
    let compiled: Vec<CompiledPackageRecord> = d.state.list(tables::COMPILED_PACKAGES, "").await?;
    // The stemcells a package of this release was compiled for: those whose key, recomputed for
    // the stemcell, is among the records (the same source and dependencies).
    let stemcells: std::collections::BTreeSet<(String, String)> =
        compiled.iter().map(|c| (c.stemcell_os.clone(), c.stemcell_version.clone())).collect();
    let present: std::collections::BTreeSet<&str> = compiled.iter().map(|c| c.key.as_str()).collect();
    let mut compiled_for: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (os, v) in &stemcells {
        for (p, key) in keys_for(&r, os, v) {
            if present.contains(key.as_str()) {
                compiled_for.entry(p.name.clone()).or_default().push(format!("{os}/{v}"));
            }
        }
    }
    Ok(Some(ReleaseInspectView {
        name: r.name.clone(),
        version: r.version.clone(),
        commit_hash: r.commit_hash.clone(),
        jobs: r
            .jobs
            .iter()
            .map(|j| InspectJob {
                name: j.name.clone(),
                fingerprint: j.fingerprint.clone(),
                packages: j.spec.packages.clone(),
            })
            .collect(),
        packages: r
            .packages
            .iter()
            .map(|p| InspectPackage {
                name: p.name.clone(),
                fingerprint: p.fingerprint.clone(),
                dependencies: p.dependencies.clone(),
                compiled_only: p.compiled_only,
                compiled_for: compiled_for.remove(&p.name).unwrap_or_default(),
            })
            .collect(),
    }))
}
