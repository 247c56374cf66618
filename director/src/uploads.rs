//! Release and stemcell uploads: unpack, verify every digest and fingerprint, store the blobs, and
//! record the result. Idempotent: the same name, version and bytes again is a no-op; the same name
//! and version with other bytes is refused.

use crate::records::{CompiledPackageRecord, ReleaseJob, ReleasePackage, ReleaseRecord, StemcellRecord};
use crate::store::tables;
use crate::Director;
use bosun_types::api::UploadResult;
use bosun_types::protocol::BlobRef;
use bosun_types::release::{JobSpec, ReleaseArtifact, ReleaseManifest, StemcellManifest};
use bosun_types::tarball::{fingerprint, read_tgz, Entry};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest job archive (templates) we read into memory.
const JOB_LIMIT: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Invalid(String),
    #[error("reading the upload")]
    Io(#[source] std::io::Error),
    /// Writing what the upload holds failed (a full disk, most often): not the tarball's fault.
    #[error("storing the upload")]
    Storing(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Blobs(#[from] crate::blobstore::BlobError),
    #[error("the CPI refused the stemcell")]
    Cpi(#[source] bosun_cpi::CpiError),
}

fn invalid(m: impl Into<String>) -> UploadError {
    UploadError::Invalid(m.into())
}

pub fn release_key(name: &str, version: &str) -> String {
    format!("{name}/{version}")
}

/// Unpacks an outer tarball (gzip'd or not) into `dir`: regular files and directories only, none
/// outside it. A link is refused (followed later, it would read a file of the director's machine).
fn unpack_outer(tarball: &Path, dir: &Path) -> Result<(), UploadError> {
    let mut f = std::fs::File::open(tarball).map_err(UploadError::Io)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(UploadError::Io)?;
    let f = std::fs::File::open(tarball).map_err(UploadError::Io)?;
    let reader: Box<dyn Read> =
        if n == 2 && magic == [0x1f, 0x8b] { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    let mut a = tar::Archive::new(reader);
    for entry in a.entries().map_err(|e| invalid(format!("not a tarball: {e}")))? {
        let mut entry = entry.map_err(|e| invalid(format!("corrupt tarball: {e}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            let path = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
            return Err(invalid(format!(
                "the tarball's entry `{path}` is a {}; only regular files and directories are accepted",
                match kind {
                    tar::EntryType::Symlink => "symbolic link",
                    tar::EntryType::Link => "hard link",
                    _ => "special file",
                }
            )));
        }
        match entry.unpack_in(dir) {
            Ok(true) => {}
            Ok(false) => return Err(invalid("the tarball holds a path outside its root")),
            Err(e) if disk_full(&e) => return Err(UploadError::Storing(e)),
            Err(e) => return Err(invalid(format!("corrupt tarball: {e}"))),
        }
    }
    Ok(())
}

/// Whether an error comes from a full disk (or quota), anywhere in its chain.
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let errno = io.raw_os_error();
            if io.kind() == std::io::ErrorKind::StorageFull
                || errno == Some(nix::errno::Errno::ENOSPC as i32)
                || errno == Some(nix::errno::Errno::EDQUOT as i32)
            {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                if disk_full(inner) {
                    return true;
                }
            }
        }
        next = e.source();
    }
    false
}

fn file_digest(path: &Path) -> Result<String, UploadError> {
    let f = std::fs::File::open(path).map_err(UploadError::Io)?;
    Ok(bosun_types::digest::sha256_of_reader(f).map_err(UploadError::Io)?.1)
}

#[derive(Clone, Copy)]
enum Kind {
    Package,
    Job,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Package => "package",
            Kind::Job => "job",
        }
    }
    fn dir(self) -> &'static str {
        match self {
            Kind::Package => "packages",
            Kind::Job => "jobs",
        }
    }
}

/// Checks one job or package of release.MF against its archive in the unpacked tarball: a safe
/// name, the archive present, its digest and its content fingerprint as listed. Returns the
/// archive's path, its blob reference and its files.
fn verify_artifact(
    work: &Path,
    key: &str,
    kind: Kind,
    a: &ReleaseArtifact,
    extra: &[String],
    limit: u64,
) -> Result<(PathBuf, BlobRef, BTreeMap<String, Entry>), UploadError> {
    let (noun, dir) = (kind.noun(), kind.dir());
    bosun_types::manifest::check_name("release.MF", format!("/{dir}"), &a.name).map_err(|e| invalid(e.to_string()))?;
    let at = format!("release {key}: {noun} `{}`", a.name);
    let path = work.join(dir).join(format!("{}.tgz", a.name));
    if !path.is_file() {
        return Err(invalid(format!("{at}: {dir}/{}.tgz is missing from the tarball", a.name)));
    }
    let digest = file_digest(&path)?;
    if digest != a.sha1 {
        return Err(invalid(format!("{at}: digest mismatch (release.MF says {}, the tarball holds {digest})", a.sha1)));
    }
    let bytes = std::fs::read(&path).map_err(UploadError::Io)?;
    let files = read_tgz(&bytes, limit).map_err(|e| invalid(format!("{at}: {e}")))?;
    let fp = fingerprint(&files, extra);
    if fp != a.fingerprint {
        return Err(invalid(format!(
            "{at}: fingerprint mismatch (release.MF says {}, the content gives {fp})",
            a.fingerprint
        )));
    }
    let blob = BlobRef { digest, size: bytes.len() as u64 };
    Ok((path, blob, files))
}

/// A compiled package of a compiled release, checked.
struct CompiledUpload {
    path: PathBuf,
    name: String,
    fingerprint: String,
    os: String,
    stemcell_version: String,
    dependencies: Vec<String>,
    blob: BlobRef,
}

/// A release whose every digest and fingerprint checked out, not yet recorded.
struct VerifiedRelease {
    key: String,
    record: ReleaseRecord,
    compiled: Vec<CompiledUpload>,
    /// Each package and job archive with the blob it is.
    artifacts: Vec<(PathBuf, BlobRef)>,
}

/// Processes an uploaded release tarball: verified on a blocking thread, then recorded.
pub async fn upload_release(director: &Director, tarball: PathBuf, work: PathBuf) -> Result<UploadResult, UploadError> {
    let verified = tokio::task::spawn_blocking(move || verify_release(&tarball, &work))
        .await
        .map_err(|e| UploadError::Io(std::io::Error::other(e)))??;
    let VerifiedRelease { key, mut record, artifacts, compiled } = verified;
    // Everything checked out; only now does the upload touch the director's state.
    let existing = director.state.get(tables::RELEASES, &key).await?;
    if let Some(existing) = &existing {
        if existing.tarball_digest == record.tarball_digest {
            // The same release again: its blobs are stored again where one went missing or
            // corrupt (the way an operator repairs them).
            store_artifacts(director, artifacts).await?;
            return Ok(UploadResult { name: record.name, version: record.version, already_present: true });
        }
        // As BOSH does: the compiled form of a release already uploaded (its jobs and packages,
        // or some of them, by fingerprint) adds its compiled packages to it.
        if compiled.is_empty() || !part_of(&record, existing) {
            return Err(invalid(format!(
                "release {key} is already uploaded with other content; give the new one another version"
            )));
        }
    }
    store_artifacts(director, artifacts).await?;
    if let Some(existing) = existing {
        record_compiled(director, &existing, &compiled).await?;
        return Ok(UploadResult { name: existing.name, version: existing.version, already_present: true });
    }
    record.uploaded_at = director.clock.unix_secs();
    record_compiled(director, &record, &compiled).await?;
    director.state.put(tables::RELEASES, &key, &record).await?;
    Ok(UploadResult { name: record.name, version: record.version, already_present: false })
}

/// Puts a verified release's jobs and packages into the blobstore (a copy already there and
/// sound is kept; a corrupt one is replaced).
async fn store_artifacts(director: &Director, artifacts: Vec<(PathBuf, BlobRef)>) -> Result<(), UploadError> {
    let blobstore = director.blobstore.clone();
    tokio::task::spawn_blocking(move || -> Result<(), UploadError> {
        for (path, artifact) in &artifacts {
            let stored = blobstore.put_file(path)?;
            debug_assert_eq!(&stored, artifact);
        }
        Ok(())
    })
    .await
    .map_err(|e| UploadError::Io(std::io::Error::other(e)))?
}

/// Whether every job and package of `part` is in `whole` with the same fingerprint (a compiled
/// release may carry some of a release's jobs: `export-release --job`).
fn part_of(part: &ReleaseRecord, whole: &ReleaseRecord) -> bool {
    part.jobs.iter().all(|j| whole.jobs.iter().any(|w| w.name == j.name && w.fingerprint == j.fingerprint))
        && part
            .packages
            .iter()
            .all(|p| whole.packages.iter().any(|w| w.name == p.name && w.fingerprint == p.fingerprint))
}

/// Records a compiled release's packages as compiled for their stemcells, under the keys the
/// planner will look for (`planner::keyed_for_stemcell`, the one place keys are worked out).
async fn record_compiled(
    director: &Director,
    release: &ReleaseRecord,
    compiled: &[CompiledUpload],
) -> Result<(), UploadError> {
    let mut by_stemcell: BTreeMap<(&str, &str), Vec<&CompiledUpload>> = BTreeMap::new();
    for c in compiled {
        by_stemcell.entry((c.os.as_str(), c.stemcell_version.as_str())).or_default().push(c);
    }
    for ((os, version), uploads) in by_stemcell {
        for c in &uploads {
            if let Some(d) = c.dependencies.iter().find(|d| !uploads.iter().any(|u| &u.name == *d)) {
                return Err(invalid(format!(
                    "release {}/{}: compiled package `{}` depends on `{d}`, which is not compiled for {os}/{version} in it",
                    release.name, release.version, c.name
                )));
            }
        }
        // Nothing may depend on itself, directly or not.
        for c in &uploads {
            let mut todo: Vec<&String> = c.dependencies.iter().collect();
            let mut seen = std::collections::BTreeSet::new();
            while let Some(d) = todo.pop() {
                if d == &c.name {
                    return Err(invalid(format!(
                        "release {}/{}: compiled package `{}` depends on itself",
                        release.name, release.version, c.name
                    )));
                }
                if seen.insert(d) {
                    if let Some(u) = uploads.iter().find(|u| &u.name == d) {
                        todo.extend(u.dependencies.iter());
                    }
                }
            }
        }
        let packages: Vec<ReleasePackage> = uploads
            .iter()
            .map(|c| ReleasePackage {
                name: c.name.clone(),
                fingerprint: c.fingerprint.clone(),
                blob: c.blob.clone(),
                dependencies: c.dependencies.clone(),
                compiled_only: true,
            })
            .collect();
        // Under the stemcell's exact version and under its line: BOSH lets a compiled release's
        // packages serve every stemcell of the same major version.
        let line = crate::planner::stemcell_line_version(version);
        let keyed = crate::planner::keyed_for_stemcell(&packages, os, version)
            .into_iter()
            .chain(crate::planner::keyed_for_stemcell(&packages, os, &line));
        for (p, key, dependencies) in keyed {
            if director.state.get(tables::COMPILED_PACKAGES, &key).await?.is_none() {
                let record = CompiledPackageRecord {
                    key: key.clone(),
                    name: p.name.clone(),
                    fingerprint: p.fingerprint.clone(),
                    release: format!("{}/{}", release.name, release.version),
                    stemcell_os: os.to_string(),
                    stemcell_version: version.to_string(),
                    dependencies,
                    blob: p.blob.clone(),
                    compiled_at: director.clock.unix_secs(),
                    packaging_ms: 0,
                };
                director.state.put(tables::COMPILED_PACKAGES, &key, &record).await?;
            }
        }
    }
    Ok(())
}

/// Checks an uploaded release: every archive's digest and fingerprint, every job's spec and
/// templates, every dependency. Blocking.
fn verify_release(tarball: &Path, work: &Path) -> Result<VerifiedRelease, UploadError> {
    let tarball_digest = file_digest(tarball)?;
    unpack_outer(tarball, work)?;
    let mf_text =
        std::fs::read_to_string(work.join("release.MF")).map_err(|_| invalid("the tarball has no release.MF"))?;
    let mf: ReleaseManifest =
        bosun_types::yaml::from_str("release.MF", &mf_text).map_err(|e| invalid(e.to_string()))?;
    bosun_types::manifest::check_name("release.MF", "/name", &mf.name).map_err(|e| invalid(e.to_string()))?;
    let version = mf.version.0.clone();
    let key = release_key(&mf.name, &version);
    let at = |what: &str, name: &str| format!("release {key}: {what} `{name}`");
    let mut packages = Vec::new();
    for p in &mf.packages {
        let (path, blob, files) = verify_artifact(work, &key, Kind::Package, p, &p.dependencies, u64::MAX)?;
        if !files.contains_key("packaging") {
            return Err(invalid(format!("{}: no packaging script", at("package", &p.name))));
        }
        let fp = p.fingerprint.clone();
        packages.push((
            path,
            ReleasePackage {
                name: p.name.clone(),
                fingerprint: fp,
                blob,
                dependencies: p.dependencies.clone(),
                compiled_only: false,
            },
        ));
    }
    // A compiled release's packages: the compiled tarballs, each for the stemcell it names.
    let mut compiled = Vec::new();
    for c in &mf.compiled_packages {
        bosun_types::manifest::check_name("release.MF", "/compiled_packages", &c.name)
            .map_err(|e| invalid(e.to_string()))?;
        let at = at("compiled package", &c.name);
        let path = work.join("compiled_packages").join(format!("{}.tgz", c.name));
        if !path.is_file() {
            return Err(invalid(format!("{at}: compiled_packages/{}.tgz is missing from the tarball", c.name)));
        }
        let digest = file_digest(&path)?;
        if digest != c.sha1 {
            return Err(invalid(format!(
                "{at}: digest mismatch (release.MF says {}, the tarball holds {digest})",
                c.sha1
            )));
        }
        let (os, stemcell_version) = c
            .stemcell
            .split_once('/')
            .filter(|(o, v)| !o.is_empty() && !v.is_empty() && !v.contains('/'))
            .ok_or_else(|| invalid(format!("{at}: stemcell `{}` is not OS/VERSION", c.stemcell)))?;
        let size = std::fs::metadata(&path).map_err(UploadError::Io)?.len();
        let blob = BlobRef { digest, size };
        if !packages.iter().any(|(_, p): &(PathBuf, ReleasePackage)| p.name == c.name) {
            packages.push((
                path.clone(),
                ReleasePackage {
                    name: c.name.clone(),
                    fingerprint: c.fingerprint.clone(),
                    blob: blob.clone(),
                    dependencies: c.dependencies.clone(),
                    compiled_only: true,
                },
            ));
        }
        compiled.push(CompiledUpload {
            path,
            name: c.name.clone(),
            fingerprint: c.fingerprint.clone(),
            os: os.to_string(),
            stemcell_version: stemcell_version.to_string(),
            dependencies: c.dependencies.clone(),
            blob,
        });
    }
    for (_, p) in &packages {
        for d in &p.dependencies {
            if !packages.iter().any(|(_, x)| &x.name == d) {
                return Err(invalid(format!("{}: depends on `{d}`, which the release lacks", at("package", &p.name))));
            }
        }
    }
    let mut jobs = Vec::new();
    for j in &mf.jobs {
        let (path, blob, files) = verify_artifact(work, &key, Kind::Job, j, &[], JOB_LIMIT)?;
        let fp = j.fingerprint.clone();
        let spec_bytes = &files.get("job.MF").ok_or_else(|| invalid(format!("{}: no job.MF", at("job", &j.name))))?.1;
        let spec: JobSpec =
            bosun_types::yaml::from_str(&format!("jobs/{}.tgz:job.MF", j.name), &String::from_utf8_lossy(spec_bytes))
                .map_err(|e| invalid(e.to_string()))?;
        if spec.name != j.name {
            return Err(invalid(format!("{}: job.MF names it `{}`", at("job", &j.name), spec.name)));
        }
        let mut templates = BTreeMap::new();
        for src in spec.templates.keys() {
            let (_, bytes) = files
                .get(&format!("templates/{src}"))
                .ok_or_else(|| invalid(format!("{}: template `{src}` is missing", at("job", &j.name))))?;
            let text = String::from_utf8(bytes.clone())
                .map_err(|_| invalid(format!("{}: template `{src}` is not UTF-8", at("job", &j.name))))?;
            templates.insert(src.clone(), text);
        }
        for dest in spec.templates.values() {
            if dest.starts_with('/') || dest.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(invalid(format!(
                    "{}: template destination `{dest}` must be a relative path inside the job",
                    at("job", &j.name)
                )));
            }
        }
        for p in &spec.packages {
            if !packages.iter().any(|(_, x)| &x.name == p) {
                return Err(invalid(format!("{}: needs package `{p}`, which the release lacks", at("job", &j.name))));
            }
        }
        jobs.push((path, ReleaseJob { name: j.name.clone(), fingerprint: fp, blob, spec, templates }));
    }
    let artifacts = packages
        .iter()
        .map(|(p, a)| (p.clone(), a.blob.clone()))
        .chain(compiled.iter().map(|c| (c.path.clone(), c.blob.clone())))
        .chain(jobs.iter().map(|(p, j)| (p.clone(), j.blob.clone())))
        .collect();
    let record = ReleaseRecord {
        name: mf.name.clone(),
        version: version.clone(),
        commit_hash: mf.commit_hash.clone(),
        jobs: jobs.into_iter().map(|(_, j)| j).collect(),
        packages: packages.into_iter().map(|(_, p)| p).collect(),
        tarball_digest,
        uploaded_at: 0,
    };
    Ok(VerifiedRelease { key, record, artifacts, compiled })
}

/// Processes an uploaded stemcell tarball: checks the image digest and the CPI's formats, then
/// hands the image to the CPI.
pub async fn upload_stemcell(
    director: &Director,
    tarball: PathBuf,
    work: PathBuf,
) -> Result<UploadResult, UploadError> {
    let (mf, image, digest) = {
        let work = work.clone();
        tokio::task::spawn_blocking(move || -> Result<_, UploadError> {
            let digest = file_digest(&tarball)?;
            unpack_outer(&tarball, &work)?;
            let text = std::fs::read_to_string(work.join("stemcell.MF"))
                .map_err(|_| invalid("the tarball has no stemcell.MF"))?;
            let mf: StemcellManifest =
                bosun_types::yaml::from_str("stemcell.MF", &text).map_err(|e| invalid(e.to_string()))?;
            let image = work.join("image");
            if !image.is_file() {
                return Err(invalid("the tarball has no image"));
            }
            let image_digest = file_digest(&image)?;
            if image_digest != mf.sha1 {
                return Err(invalid(format!(
                    "stemcell {}/{}: image digest mismatch (stemcell.MF says {}, the image is {image_digest})",
                    mf.name, mf.version, mf.sha1
                )));
            }
            Ok((mf, image, digest))
        })
        .await
        .map_err(|e| UploadError::Io(std::io::Error::other(e)))??
    };
    bosun_types::manifest::check_name("stemcell.MF", "/name", &mf.name).map_err(|e| invalid(e.to_string()))?;
    let key = release_key(&mf.name, &mf.version.0);
    if let Some(existing) = director.state.get(tables::STEMCELLS, &key).await? {
        if existing.digest == digest {
            return Ok(UploadResult { name: mf.name, version: mf.version.0, already_present: true });
        }
        return Err(invalid(format!("stemcell {key} is already uploaded with other content")));
    }
    let info = director.cpi.info().await.map_err(UploadError::Cpi)?;
    if !mf.stemcell_formats.iter().any(|f| info.stemcell_formats.contains(f)) {
        return Err(invalid(format!(
            "stemcell {key} has formats [{}]; the `{}` CPI takes [{}]",
            mf.stemcell_formats.join(", "),
            director.cpi.name(),
            info.stemcell_formats.join(", ")
        )));
    }
    let cid = director.cpi.create_stemcell(&image, &mf.cloud_properties).await.map_err(UploadError::Cpi)?;
    let record = StemcellRecord {
        name: mf.name.clone(),
        version: mf.version.0.clone(),
        operating_system: mf.operating_system.clone(),
        cid,
        api_version: mf.api_version,
        digest,
        uploaded_at: director.clock.unix_secs(),
    };
    director.state.put(tables::STEMCELLS, &key, &record).await?;
    Ok(UploadResult { name: mf.name, version: mf.version.0, already_present: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_a_corrupt_tarball() {
        let enospc = std::io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32);
        assert!(disk_full(&enospc));
        // As the tar crate reports it: its own error around the cause.
        let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(nix::errno::Errno::EDQUOT as i32));
        assert!(disk_full(&wrapped));
        assert!(!disk_full(&std::io::Error::new(std::io::ErrorKind::InvalidData, "bad header")));
        let e = UploadError::Storing(enospc);
        assert!(
            bosun_types::error_chain(&e).starts_with("storing the upload: No space left on device"),
            "{}",
            bosun_types::error_chain(&e)
        );
    }

    #[test]
    fn links_in_an_uploaded_tarball_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join("t.tgz");
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            std::fs::File::create(&tgz).unwrap(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "release.MF", "/etc/passwd").unwrap();
        b.into_inner().unwrap().finish().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let err = unpack_outer(&tgz, &out).unwrap_err().to_string();
        assert!(err.contains("`release.MF` is a hard link"), "{err}");
        assert!(!out.join("release.MF").exists());
    }
}
