//! `compile_package`, on a compilation VM: the package's compiled dependencies are installed at
//! `packages/<dep>`, its source is unpacked into a compile directory, `packaging` runs there with
//! BOSH's variables (`BOSH_COMPILE_TARGET`, `BOSH_INSTALL_TARGET`, `BOSH_PACKAGE_NAME`,
//! `BOSH_PACKAGE_VERSION`) within the timeout, and the install target is packed as a `.tgz` and
//! uploaded to the director, which checks its digest.
//!
//! `BOSH_INSTALL_TARGET` is `packages/<name>` — the path the package has on every VM that installs
//! it — so whatever `packaging` bakes into the binaries (rpaths, wrapper scripts) holds there too.

use crate::dialer::Dialer;
use crate::installer::{io, safe_component, switch_link, unpack, InstallError, Installer};
use crate::layout::Layout;
use bosun_types::digest::Sha256Writer;
use bosun_types::protocol::{encode_line, AgentMessage, BlobHeader, BlobRef, CompiledPackage, PackageToCompile};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Lines of `packaging`'s output an error carries.
const OUTPUT_TAIL_LINES: usize = 20;
/// How often a running compilation reports.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// Reports, every [`PROGRESS_EVERY`] until aborted, how long `packaging` of `package` has run and
/// the last line it printed, as `progress` on command `id`.
pub async fn report_progress(layout: Layout, package: String, id: u64, tx: tokio::sync::mpsc::Sender<AgentMessage>) {
    report_every(PROGRESS_EVERY, layout, package, id, tx).await
}

async fn report_every(
    every: Duration,
    layout: Layout,
    package: String,
    id: u64,
    tx: tokio::sync::mpsc::Sender<AgentMessage>,
) {
    let started = Instant::now();
    let log = layout.log_dir("packaging").join(format!("{package}.log"));
    loop {
        tokio::time::sleep(every).await;
        let last = output_tail(&log).await.lines().last().unwrap_or("").chars().take(200).collect::<String>();
        let message = format!("{package}: {} s; last line: {last}", started.elapsed().as_secs());
        if tx.send(AgentMessage::Progress { id, message }).await.is_err() {
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("package `{package}`: {message}")]
    Packaging { package: String, message: String },
    #[error("uploading the compiled package: {0}")]
    Upload(String),
}

pub struct Compiler<'a> {
    pub layout: &'a Layout,
    pub dialer: &'a Dialer,
    pub agent_id: &'a str,
    /// The machine's build cache for compilers, if the director offers one.
    pub build_cache: Option<&'a Path>,
}

impl Compiler<'_> {
    pub async fn compile(&self, p: &PackageToCompile, timeout: Duration) -> Result<CompiledPackage, CompileError> {
        let failed = |message: String| CompileError::Packaging { package: p.name.clone(), message };
        if !safe_component(&p.name) || !safe_component(&p.fingerprint) {
            return Err(failed("name or fingerprint is not a safe path component".into()));
        }
        let installer = Installer { layout: self.layout, dialer: self.dialer, agent_id: self.agent_id };
        for dep in &p.dependencies {
            if !safe_component(&dep.name) {
                return Err(failed(format!("dependency `{}` is not a safe path component", dep.name)));
            }
            installer.install_compiled(&dep.name, &dep.compiled).await?;
        }
        let source = installer.fetch_blob(&p.source).await?;
        let compile = self.layout.compile().join(format!("{}-{}", p.name, p.fingerprint));
        let target = self.layout.root.join("data/packages").join(&p.name).join(format!("compiling-{}", p.fingerprint));
        for d in [&compile, &target] {
            let _ = tokio::fs::remove_dir_all(d).await;
        }
        unpack(&source, &compile).await.map_err(failed)?;
        tokio::fs::create_dir_all(&target).await.map_err(|e| InstallError::Io { path: target.clone(), source: e })?;
        let install_target = self.layout.packages().join(&p.name);
        switch_link(&install_target, &target).await?;

        let build_cache = match self.build_cache {
            Some(dir) => usable_build_cache(dir).await,
            None => None,
        };
        let started = Instant::now();
        run_packaging(self.layout, p, &compile, &install_target, build_cache.as_deref(), timeout).await?;
        let packaging_ms = started.elapsed().as_millis() as u64;
        tracing::info!(package = %p.name, packaging_ms, "packaging finished");

        let archive = self.layout.root.join("data/tmp").join(format!("{}-{}.tgz", p.name, p.fingerprint));
        let compiled = pack(&target, &archive).await.map_err(failed)?;
        let uploaded = self.upload(&archive, &compiled).await;
        let _ = tokio::fs::remove_file(&archive).await;
        let _ = tokio::fs::remove_dir_all(&compile).await;
        uploaded?;
        Ok(CompiledPackage { compiled, packaging_ms })
    }

    async fn upload(&self, archive: &Path, blob: &BlobRef) -> Result<(), CompileError> {
        put_blob(self.dialer, self.agent_id, archive, blob).await.map_err(CompileError::Upload)
    }
}

/// `put_blob`: ask, send the bytes, hear whether the director stored them.
pub(crate) async fn put_blob(dialer: &Dialer, agent_id: &str, archive: &Path, blob: &BlobRef) -> Result<(), String> {
    let stream = dialer.connect().await.map_err(|e| format!("connecting to the director: {e}"))?;
    let mut stream = tokio::io::BufReader::new(stream);
    let ask = AgentMessage::PutBlob { agent_id: agent_id.to_string(), digest: blob.digest.clone(), size: blob.size };
    stream.get_mut().write_all(&encode_line(&ask)).await.map_err(|e| format!("asking: {e}"))?;
    read_header(&mut stream).await?;
    let mut file = tokio::fs::File::open(archive).await.map_err(|e| format!("{}: {e}", archive.display()))?;
    tokio::io::copy(&mut file, stream.get_mut()).await.map_err(|e| format!("sending: {e}"))?;
    stream.get_mut().flush().await.map_err(|e| format!("sending: {e}"))?;
    read_header(&mut stream).await
}

async fn read_header<S: tokio::io::AsyncRead + Unpin>(stream: &mut tokio::io::BufReader<S>) -> Result<(), String> {
    let mut line = Vec::new();
    stream.take(64 * 1024).read_until(b'\n', &mut line).await.map_err(|e| format!("reading the answer: {e}"))?;
    let header: BlobHeader = serde_json::from_slice(&line).map_err(|e| format!("malformed answer: {e}"))?;
    match header.error {
        Some(e) => Err(format!("the director refused: {e}")),
        None => Ok(()),
    }
}

/// Runs `packaging` in `compile` with BOSH's variables, its output in the `packaging` log
/// directory; on failure the error carries the output's last lines.
async fn run_packaging(
    layout: &Layout,
    p: &PackageToCompile,
    compile: &Path,
    install_target: &Path,
    build_cache: Option<&Path>,
    timeout: Duration,
) -> Result<(), CompileError> {
    let failed = |message: String| CompileError::Packaging { package: p.name.clone(), message };
    let log_dir = layout.log_dir("packaging");
    tokio::fs::create_dir_all(&log_dir).await.map_err(io(&log_dir))?;
    let log_path = log_dir.join(format!("{}.log", p.name));
    let log = tokio::fs::File::create(&log_path).await.map_err(io(&log_path))?.into_std().await;
    let log2 = log.try_clone().map_err(io(&log_path))?;
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-e")
        .arg("packaging")
        .current_dir(compile)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .env("BOSH_COMPILE_TARGET", compile)
        .env("BOSH_INSTALL_TARGET", install_target)
        .env("BOSH_PACKAGE_NAME", &p.name)
        .env("BOSH_PACKAGE_VERSION", &p.fingerprint)
        .env("BOSH_PACKAGES_DIR", layout.packages())
        .env("BOSUN_ROOT", &layout.root)
        .env("TMPDIR", layout.root.join("data/tmp"));
    if let Some(dir) = build_cache {
        cmd.env("BOSUN_BUILD_CACHE", dir);
    }
    cmd.process_group(0).kill_on_drop(true);
    let status = match tokio::time::timeout(timeout, cmd.status()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(failed(format!("could not run packaging: {e}"))),
        Err(_) => {
            let tail = output_tail(&log_path).await;
            return Err(failed(format!("packaging ran longer than {} s:\n{tail}", timeout.as_secs())));
        }
    };
    if !status.success() {
        return Err(failed(format!("packaging failed ({status}):\n{}", output_tail(&log_path).await)));
    }
    Ok(())
}

/// The build cache the director offered, made if missing (owner-only: it holds build outputs that
/// later compilations trust); `None`, logged, when this VM cannot use it (a VM that does not see
/// the director's machine's filesystem, or a path that is not an absolute directory).
async fn usable_build_cache(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.is_absolute() {
        tracing::warn!(dir = %dir.display(), "build cache refused: not an absolute path");
        return None;
    }
    let made = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
            std::fs::metadata(&dir)
        }
    })
    .await;
    match made {
        // Another user's, or one others may write to: its entries cannot be trusted.
        Ok(Ok(m)) if m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0 => {
            Some(dir.to_path_buf())
        }
        Ok(Ok(_)) => {
            tracing::warn!(dir = %dir.display(), "build cache refused: not a directory only this agent's user may write");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "build cache not usable; compiling without it");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "build cache check did not finish");
            None
        }
    }
}

async fn output_tail(log: &Path) -> String {
    let text = tokio::fs::read_to_string(log).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n")
}

/// Packs `dir`'s contents into a `.tgz` at `archive` and returns its reference. Symlinks stay
/// symlinks; file modes are kept.
async fn pack(dir: &Path, archive: &Path) -> Result<BlobRef, String> {
    let (dir, archive): (PathBuf, PathBuf) = (dir.to_path_buf(), archive.to_path_buf());
    tokio::task::spawn_blocking(move || -> Result<BlobRef, String> {
        use std::io::Write;
        if let Some(parent) = archive.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let file = std::fs::File::create(&archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        {
            let mut tar = tar::Builder::new(&mut gz);
            tar.follow_symlinks(false);
            tar.append_dir_all(".", &dir).map_err(|e| format!("packing {}: {e}", dir.display()))?;
            tar.finish().map_err(|e| format!("packing: {e}"))?;
        }
        let file = gz.finish().map_err(|e| format!("packing: {e}"))?;
        file.sync_all().map_err(|e| format!("packing: {e}"))?;
        drop(file);
        let mut hasher = Sha256Writer::default();
        let mut f = std::fs::File::open(&archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        let size = std::io::copy(&mut f, &mut hasher).map_err(|e| format!("hashing: {e}"))?;
        hasher.flush().map_err(|e| format!("hashing: {e}"))?;
        Ok(BlobRef { digest: hasher.finish(), size })
    })
    .await
    .map_err(|e| format!("pack worker failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_reports_say_how_long_and_the_last_line_printed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let log_dir = layout.log_dir("packaging");
        std::fs::create_dir_all(&log_dir).unwrap();
        std::fs::write(log_dir.join("kubernetes.log"), "+++ generating\n+++ Building go targets\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let reporter = tokio::spawn(report_every(Duration::from_millis(20), layout, "kubernetes".into(), 7, tx));
        let first = rx.recv().await.expect("a report");
        reporter.abort();
        match first {
            AgentMessage::Progress { id, message } => {
                assert_eq!(id, 7);
                assert!(message.starts_with("kubernetes: 0 s; last line: +++ Building go targets"), "{message}");
            }
            other => panic!("expected progress, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn packaging_finds_the_build_cache_made_owner_only_and_an_unsafe_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let layout = Layout::new(&root);
        std::fs::create_dir_all(layout.root.join("data/tmp")).unwrap();
        let cache = dir.path().join("cache/debian");
        let offered = usable_build_cache(&cache).await.expect("made");
        assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);

        let compile = dir.path().join("compile");
        let target = dir.path().join("install");
        std::fs::create_dir_all(&compile).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(compile.join("packaging"), "echo \"$BOSUN_BUILD_CACHE\" > \"$BOSH_INSTALL_TARGET/cache\"\n")
            .unwrap();
        let p = PackageToCompile {
            name: "golang-thing".into(),
            fingerprint: "f1".into(),
            source: BlobRef { digest: "sha256:00".into(), size: 0 },
            dependencies: vec![],
        };
        run_packaging(&layout, &p, &compile, &target, Some(&offered), Duration::from_secs(30)).await.unwrap();
        assert_eq!(std::fs::read_to_string(target.join("cache")).unwrap().trim(), cache.to_str().unwrap());
        run_packaging(&layout, &p, &compile, &target, None, Duration::from_secs(30)).await.unwrap();
        assert_eq!(std::fs::read_to_string(target.join("cache")).unwrap().trim(), "", "no cache: no variable");

        // One that others may write to could hold anybody's build outputs.
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(usable_build_cache(&cache).await, None);
        assert_eq!(usable_build_cache(Path::new("relative/cache")).await, None);
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert_eq!(usable_build_cache(&dir.path().join("file")).await, None);
    }
}
