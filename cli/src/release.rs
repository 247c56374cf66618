//! Release directories: `bosun sync-blobs` fetches the blobs `config/blobs.yml` lists and checks
//! their digests; `bosun create-release` builds a content-addressed release tarball from
//! `jobs/`, `packages/`, `src/` and `blobs/`.

use crate::InputError;
use anyhow::{Context, Result};
use bosun_types::digest::sha256_digest;
use bosun_types::release::{
    BlobsYml, DebianPackage, DebianSourceFile, JobSpec, PackageSpec, ReleaseArtifact, ReleaseManifest,
};
use bosun_types::tarball::{deterministic_tgz, deterministic_tgz_at, fingerprint, Entry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn input(m: impl Into<String>) -> anyhow::Error {
    InputError::new(m).into()
}

fn file_digest(path: &Path) -> Result<(u64, String)> {
    Ok(bosun_types::digest::sha256_of_reader(std::fs::File::open(path)?)?)
}

pub fn release_name(dir: &Path) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Final {
        name: String,
    }
    let path = dir.join("config/final.yml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| input(format!("{}: {e} (is {} a release directory?)", path.display(), dir.display())))?;
    let f: Final = serde_yaml::from_str(&text).map_err(|e| input(format!("{}: {e}", path.display())))?;
    Ok(f.name)
}

/// `apt-get VERB… -q PACKAGE=VERSION` in `work`, through this machine's own apt sources (with
/// `apt_options`, a private configuration such as [`suite_apt_options`] makes); a failure names
/// the blob and says what usually fixes it.
fn apt_get(work: &Path, blob: &str, verb: &[&str], package: &str, version: &str, apt_options: &[String]) -> Result<()> {
    let out = std::process::Command::new("apt-get")
        .args(apt_options)
        .args(verb)
        .args(["-q", &format!("{package}={version}")])
        .current_dir(work)
        .output()
        .with_context(|| format!("running apt-get {}", verb[0]))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let hint = if err.contains("deb-src") || err.contains("Unable to find a source package") {
        " (apt's sources need a deb-src line: run ci/setup)"
    } else if err.contains("Unable to locate") || err.contains("not found") {
        " (run `apt-get update` first)"
    } else {
        ""
    };
    Err(input(format!("blob {blob}: apt-get {} {package}={version} failed{hint}: {}", verb[0], err.trim())))
}

/// This machine's Debian `deb` sources (deb822 `.sources` stanzas and one-line `.list` entries)
/// for its own release, moved to `suite`: the same mirrors and keyrings, another suite.
fn sources_for_suite(apt_dir: &Path, codename: &str, suite: &str) -> String {
    let mut out = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(apt_dir.join("sources.list.d"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.insert(0, apt_dir.join("sources.list"));
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim().eq_ignore_ascii_case(key).then(|| v.trim().to_string())
                    })
                };
                let types = field("Types").unwrap_or_default();
                let suites = field("Suites").unwrap_or_default();
                if !types.split_whitespace().any(|t| t == "deb") || !suites.split_whitespace().any(|x| x == codename) {
                    continue;
                }
                out.push_str(&format!("Types: deb\nSuites: {suite}\n"));
                for key in ["URIs", "Components", "Signed-By"] {
                    if let Some(v) = field(key) {
                        out.push_str(&format!("{key}: {v}\n"));
                    }
                }
                out.push('\n');
            }
        } else if name == "sources.list" || name.ends_with(".list") {
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() != Some(&"deb") {
                    continue;
                }
                // deb [options] URI SUITE COMPONENTS…
                let at = if words.get(1).is_some_and(|w| w.starts_with('[')) {
                    words.iter().position(|w| w.ends_with(']')).map_or(usize::MAX, |i| i + 2)
                } else {
                    2
                };
                if words.get(at) == Some(&codename) {
                    let mut moved = words.clone();
                    moved[at] = suite;
                    out.push_str(&format!("{}\n", moved.join(" ")));
                }
            }
        }
    }
    out
}

/// apt-get options for a private apt configuration (sources, lists, cache under `dir`) that sees
/// this machine's Debian mirrors at `suite` (e.g. the next release) and nothing else; its package
/// lists are fetched here. The machine's own apt configuration is left as it is.
fn suite_apt_options(dir: &Path, blob: &str, suite: &str) -> Result<Vec<String>> {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .ok_or_else(|| input(format!("blob {blob}: /etc/os-release names no VERSION_CODENAME")))?;
    if suite.is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(input(format!("blob {blob}: `{suite}` is not a Debian suite name")));
    }
    let sources = sources_for_suite(Path::new("/etc/apt"), &codename, suite);
    if sources.is_empty() {
        return Err(input(format!(
            "blob {blob}: this machine's apt sources have no Debian `{codename}` source to move to `{suite}`"
        )));
    }
    let parts = dir.join("sources.list.d");
    std::fs::create_dir_all(&parts)?;
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
    std::fs::write(parts.join(format!("{suite}.sources")), &sources)?;
    let opt = |k: &str, v: &Path| format!("-oDir::{k}={}", v.display());
    let options = vec![
        opt("Etc::SourceList", &parts.join("none.list")),
        opt("Etc::SourceParts", &parts),
        opt("State::Lists", &dir.join("lists")),
        opt("Cache", &dir.join("cache")),
    ];
    let out = std::process::Command::new("apt-get")
        .args(&options)
        .args(["-q", "update"])
        .output()
        .context("running apt-get update")?;
    if !out.status.success() {
        return Err(input(format!(
            "blob {blob}: apt-get update for suite `{suite}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(options)
}

/// Fetches every blob that is missing or does not match its digest. Returns how many it fetched.
pub fn sync_blobs(dir: &Path) -> Result<usize> {
    sync_blobs_via(dir, blob_cache().as_deref())
}

/// [`sync_blobs`], with the machine's blob cache given (none: fetch only).
fn sync_blobs_via(dir: &Path, cache: Option<&Path>) -> Result<usize> {
    let path = dir.join("config/blobs.yml");
    if !path.exists() {
        return Ok(0);
    }
    let blobs: BlobsYml = bosun_types::yaml::from_str(&path.display().to_string(), &std::fs::read_to_string(&path)?)
        .map_err(|e| input(e.to_string()))?;
    let mut fetched = 0;
    for (name, entry) in &blobs {
        if name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(input(format!("{}: blob path `{name}` must stay inside blobs/", path.display())));
        }
        let target = dir.join("blobs").join(name);
        if target.exists() && file_digest(&target)?.1 == entry.sha {
            continue;
        }
        std::fs::create_dir_all(target.parent().expect("inside blobs/"))?;
        let work = tempfile::tempdir_in(dir.join("blobs"))?;
        // A copy kept outside the clone by an earlier fetch, checked like a fresh one.
        let cached_name = bosun_types::digest::parse_sha256(&entry.sha).map(|hex| format!("sha256-{hex}"));
        if let Some(cached) = cache.zip(cached_name.as_ref()).map(|(c, n)| c.join(n)).filter(|c| c.is_file()) {
            let copy = work.path().join("cached");
            if std::fs::copy(&cached, &copy).is_ok() && file_digest(&copy)? == (entry.size, entry.sha.clone()) {
                std::fs::rename(&copy, &target)?;
                continue;
            }
        }
        let source = entry.source.clone().unwrap_or_default();
        let got = match (&source.debian, &source.debian_source, &source.url) {
            (None, Some(DebianSourceFile { package, version, file }), None) => {
                eprintln!("fetching {name} (Debian source package {package}={version}, {file})");
                apt_get(work.path(), name, &["source", "--download-only"], package, version, &[])?;
                let p = work.path().join(file);
                if file.contains('/') || !p.is_file() {
                    return Err(input(format!("blob {name}: source package {package}={version} has no file `{file}`")));
                }
                p
            }
            (Some(DebianPackage { package, version, suite }), None, None) => {
                let options = match suite {
                    Some(suite) => {
                        eprintln!("fetching {name} (Debian package {package}={version} from {suite})");
                        suite_apt_options(&work.path().join(".apt"), name, suite)?
                    }
                    None => {
                        eprintln!("fetching {name} (Debian package {package}={version})");
                        Vec::new()
                    }
                };
                apt_get(work.path(), name, &["download"], package, version, &options)?;
                std::fs::read_dir(work.path())?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "deb"))
                    .ok_or_else(|| input(format!("blob {name}: apt-get download produced no .deb")))?
            }
            (None, None, Some(url)) => {
                let Some(local) = url.strip_prefix("file://") else {
                    return Err(input(format!(
                        "blob {name}: only file:// and Debian sources can be fetched on this machine ({url})"
                    )));
                };
                let p = work.path().join("blob");
                std::fs::copy(local, &p).with_context(|| format!("blob {name}: copying {local}"))?;
                p
            }
            (None, None, None) => {
                return Err(input(format!(
                    "blob {name} is missing from blobs/ and {} gives no source for it",
                    path.display()
                )))
            }
            _ => {
                return Err(input(format!(
                    "{}: blob {name}: give one source, `debian`, `debian_source` or `url`, not several",
                    path.display()
                )))
            }
        };
        let (size, digest) = file_digest(&got)?;
        if digest != entry.sha || size != entry.size {
            return Err(input(format!(
                "blob {name}: fetched {size} bytes with digest {digest}; blobs.yml pins {} bytes with {}",
                entry.size, entry.sha
            )));
        }
        if let Some((cache, cached_name)) = cache.zip(cached_name) {
            // Best effort: a mirror that drops this version later finds it here.
            let kept = cache.join(cached_name);
            let tmp = cache.join(format!(".{}.tmp", std::process::id()));
            if std::fs::create_dir_all(cache).is_ok() && std::fs::copy(&got, &tmp).is_ok() {
                let _ = std::fs::rename(&tmp, &kept);
            }
        }
        std::fs::rename(&got, &target)?;
        fetched += 1;
    }
    Ok(fetched)
}

/// Where fetched blobs are also kept, by digest, for every clone on this machine:
/// `BOSUN_BLOB_CACHE`, else `/var/cache/bosun/blobs` where it can be made; none otherwise.
fn blob_cache() -> Option<PathBuf> {
    let dir = std::env::var_os("BOSUN_BLOB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/bosun/blobs"));
    std::fs::create_dir_all(&dir).ok().map(|()| dir)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else { return Ok(()) };
    for e in rd {
        let e = e?;
        let r = rel.join(e.file_name());
        if e.file_type()?.is_dir() {
            walk(root, &r, out)?;
        } else if e.file_type()?.is_file() {
            out.push(r);
        }
    }
    Ok(())
}

/// The directories directly inside `dir`, sorted (none if it does not exist).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn mode_of(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(if std::fs::metadata(path)?.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 })
}

/// The dev version of a release whose content has `digest`, as BOSH numbers dev releases:
/// `0+dev.N`, N one more than the greatest made from this release directory before, or the
/// version this content was given before. Kept in `dev_releases/NAME/index.yml` (content digest →
/// version), under a lock: concurrent `create-release`s of one directory agree.
fn dev_version(index_dir: &Path, digest: &str) -> Result<String> {
    #[derive(serde::Serialize, serde::Deserialize, Default)]
    struct DevIndex {
        #[serde(default)]
        builds: BTreeMap<String, String>,
    }
    std::fs::create_dir_all(index_dir).map_err(|e| input(format!("{}: {e}", index_dir.display())))?;
    let lock_path = index_dir.join(".index.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| input(format!("{}: {e}", lock_path.display())))?;
    let _locked = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| input(format!("locking {}: {e}", lock_path.display())))?;
    let index_path = index_dir.join("index.yml");
    let mut index: DevIndex = match std::fs::read_to_string(&index_path) {
        Ok(text) => {
            bosun_types::yaml::from_str(&index_path.display().to_string(), &text).map_err(|e| input(e.to_string()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DevIndex::default(),
        Err(e) => return Err(input(format!("{}: {e}", index_path.display()))),
    };
    if let Some(v) = index.builds.get(digest) {
        return Ok(v.clone());
    }
    let next = index.builds.values().filter_map(|v| bosun_types::version::dev_sequence(v)).max().unwrap_or(0) + 1;
    let version = format!("0+dev.{next}");
    index.builds.insert(digest.to_string(), version.clone());
    let tmp = index_dir.join(".index.yml.tmp");
    std::fs::write(&tmp, serde_yaml::to_string(&index)?)?;
    std::fs::rename(&tmp, &index_path)?;
    Ok(version)
}

/// Builds the release tarball; returns its path and version.
pub fn create_release(dir: &Path, version: Option<&str>, tarball: Option<&Path>) -> Result<(PathBuf, String)> {
    let name = release_name(dir)?;
    let mut candidates: Vec<(PathBuf, PathBuf)> = Vec::new(); // (base dir, relative path)
    for base in ["src", "blobs"] {
        let mut files = Vec::new();
        walk(&dir.join(base), Path::new(""), &mut files)?;
        candidates.extend(files.into_iter().map(|f| (dir.join(base), f)));
    }
    let mut packages = Vec::new();
    let mut package_tgz = BTreeMap::new();
    for pdir in subdirs(&dir.join("packages")) {
        let spec_path = pdir.join("spec");
        let spec: PackageSpec = bosun_types::yaml::from_str(
            &spec_path.display().to_string(),
            &std::fs::read_to_string(&spec_path).map_err(|e| input(format!("{}: {e}", spec_path.display())))?,
        )
        .map_err(|e| input(e.to_string()))?;
        let mut files: BTreeMap<String, Entry> = BTreeMap::new();
        let packaging = pdir.join("packaging");
        files.insert(
            "packaging".into(),
            (0o755, std::fs::read(&packaging).map_err(|e| input(format!("{}: {e}", packaging.display())))?),
        );
        let excluded = {
            let mut b = globset::GlobSetBuilder::new();
            for g in &spec.excluded_files {
                b.add(
                    globset::Glob::new(g)
                        .map_err(|e| input(format!("{}: excluded_files `{g}`: {e}", spec_path.display())))?,
                );
            }
            b.build()?
        };
        for pattern in &spec.files {
            let glob = globset::Glob::new(pattern)
                .map_err(|e| input(format!("{}: files `{pattern}`: {e}", spec_path.display())))?
                .compile_matcher();
            let mut matched = false;
            for (base, rel) in &candidates {
                if glob.is_match(rel) && !excluded.is_match(rel) {
                    matched = true;
                    let full = base.join(rel);
                    files.insert(rel.to_string_lossy().into_owned(), (mode_of(&full)?, std::fs::read(&full)?));
                }
            }
            if !matched {
                return Err(input(format!(
                    "package `{}`: `{pattern}` matches no file in src/ or blobs/ (run `bosun sync-blobs`?)",
                    spec.name
                )));
            }
        }
        let fp = fingerprint(&files, &spec.dependencies);
        let tgz = deterministic_tgz(&files)?;
        packages.push(ReleaseArtifact {
            name: spec.name.clone(),
            version: fp.clone(),
            fingerprint: fp,
            sha1: sha256_digest(&tgz),
            dependencies: spec.dependencies.clone(),
            packages: vec![],
        });
        package_tgz.insert(spec.name, tgz);
    }
    let mut jobs = Vec::new();
    let mut job_tgz = BTreeMap::new();
    for jdir in subdirs(&dir.join("jobs")) {
        let spec_path = jdir.join("spec");
        let spec_text =
            std::fs::read_to_string(&spec_path).map_err(|e| input(format!("{}: {e}", spec_path.display())))?;
        let spec: JobSpec = bosun_types::yaml::from_str(&spec_path.display().to_string(), &spec_text)
            .map_err(|e| input(e.to_string()))?;
        let mut files: BTreeMap<String, Entry> = BTreeMap::new();
        files.insert("job.MF".into(), (0o644, spec_text.into_bytes()));
        for src in spec.templates.keys() {
            let p = jdir.join("templates").join(src);
            files.insert(
                format!("templates/{src}"),
                (
                    0o644,
                    std::fs::read(&p)
                        .map_err(|e| input(format!("job `{}`: template {}: {e}", spec.name, p.display())))?,
                ),
            );
        }
        for p in &spec.packages {
            if !package_tgz.contains_key(p) {
                return Err(input(format!(
                    "job `{}` needs package `{p}`, which {} lacks",
                    spec.name,
                    dir.join("packages").display()
                )));
            }
        }
        let fp = fingerprint(&files, &[]);
        let tgz = deterministic_tgz(&files)?;
        jobs.push(ReleaseArtifact {
            name: spec.name.clone(),
            version: fp.clone(),
            fingerprint: fp,
            sha1: sha256_digest(&tgz),
            dependencies: vec![],
            packages: spec.packages.clone(),
        });
        job_tgz.insert(spec.name, tgz);
    }
    let version = match version {
        Some(v) => v.to_string(),
        None => {
            // The same jobs and packages give the same dev version; new content the next one.
            let all: Vec<&str> = jobs.iter().chain(packages.iter()).map(|a| a.fingerprint.as_str()).collect();
            dev_version(&dir.join("dev_releases").join(&name), &sha256_digest(all.join("\n").as_bytes()))?
        }
    };
    let commit_hash = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mf = ReleaseManifest {
        name: name.clone(),
        version: bosun_types::manifest::Version(version.clone()),
        commit_hash,
        uncommitted_changes: false,
        jobs,
        packages,
        compiled_packages: vec![],
    };
    let mut outer: BTreeMap<String, Entry> = BTreeMap::new();
    outer.insert("release.MF".into(), (0o644, serde_yaml::to_string(&mf)?.into_bytes()));
    for (n, t) in job_tgz {
        outer.insert(format!("jobs/{n}.tgz"), (0o644, t));
    }
    for (n, t) in package_tgz {
        outer.insert(format!("packages/{n}.tgz"), (0o644, t));
    }
    // The release's own archive holds archives: gzip's fastest level (nothing names it by digest).
    let bytes = deterministic_tgz_at(&outer, 1)?;
    let path = match tarball {
        Some(p) => p.to_path_buf(),
        None => dir.join("dev_releases").join(&name).join(format!("{name}-{version}.tgz")),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes)?;
    Ok((path, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_versions_count_up_with_new_content_and_stay_with_the_same() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dev_version(dir.path(), "sha256:a").unwrap(), "0+dev.1");
        assert_eq!(dev_version(dir.path(), "sha256:b").unwrap(), "0+dev.2");
        assert_eq!(dev_version(dir.path(), "sha256:a").unwrap(), "0+dev.1");
        assert_eq!(dev_version(dir.path(), "sha256:c").unwrap(), "0+dev.3");
        // Newer is greater in BOSH's order (a content hash would have sorted at random).
        assert_eq!(bosun_types::version::compare("0+dev.3", "0+dev.2"), std::cmp::Ordering::Greater);
    }

    #[test]
    fn another_suite_uses_the_machines_own_debian_mirrors_and_keyrings() {
        let apt = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(apt.path().join("sources.list.d")).unwrap();
        std::fs::write(
            apt.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n\
             Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
             Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(
            apt.path().join("sources.list"),
            "deb [arch=amd64] http://other.example/debian bookworm main\ndeb http://x.example/d bullseye main\n",
        )
        .unwrap();
        let got = sources_for_suite(apt.path(), "bookworm", "trixie");
        assert_eq!(
            got,
            "deb [arch=amd64] http://other.example/debian trixie main\n\
             Types: deb\nSuites: trixie\nURIs: http://mirror.example/debian\nComponents: main\nSigned-By: /k.gpg\n\n"
        );
    }

    #[test]
    fn a_fetched_blob_is_kept_by_digest_and_found_there_when_its_source_is_gone() {
        let work = tempfile::tempdir().unwrap();
        let (release, cache, source) =
            (work.path().join("rel"), work.path().join("cache"), work.path().join("src.bin"));
        std::fs::create_dir_all(release.join("config")).unwrap();
        std::fs::write(&source, b"a blob's bytes").unwrap();
        let sha = sha256_digest(b"a blob's bytes");
        std::fs::write(
            release.join("config/blobs.yml"),
            format!("pkg/b.bin:\n  size: 14\n  sha: {sha}\n  source:\n    url: file://{}\n", source.display()),
        )
        .unwrap();
        assert_eq!(sync_blobs_via(&release, Some(&cache)).unwrap(), 1);
        let hex = sha.strip_prefix("sha256:").unwrap();
        assert_eq!(std::fs::read(cache.join(format!("sha256-{hex}"))).unwrap(), b"a blob's bytes");
        // The source disappears (a mirror moved on) and so does the clone's copy: the cache answers.
        std::fs::remove_file(&source).unwrap();
        std::fs::remove_file(release.join("blobs/pkg/b.bin")).unwrap();
        assert_eq!(sync_blobs_via(&release, Some(&cache)).unwrap(), 0, "nothing fetched");
        assert_eq!(std::fs::read(release.join("blobs/pkg/b.bin")).unwrap(), b"a blob's bytes");
        // A cached copy with other bytes is not used.
        std::fs::remove_file(release.join("blobs/pkg/b.bin")).unwrap();
        std::fs::write(cache.join(format!("sha256-{hex}")), b"other bytes!!!").unwrap();
        let e = sync_blobs_via(&release, Some(&cache)).unwrap_err();
        assert!(e.to_string().contains("copying"), "{e}");
    }
}
