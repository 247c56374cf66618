//! Installs an apply spec: fetches each blob from the director, verifies its digest, unpacks the
//! compiled packages and the rendered jobs, and switches the `jobs/` and `packages/` links. Installed versions are keyed by fingerprint/digest, so re-applying the same
//! spec does nothing and a half-finished install is never used.

use crate::dialer::Dialer;
use crate::layout::Layout;
use bosun_types::digest::{parse_sha256, Sha256Writer};
use bosun_types::protocol::{encode_line, AgentMessage, ApplyPackage, ApplySpec, BlobHeader, BlobRef};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const INSTALLED_MARKER: &str = ".bosun-installed";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("blob {digest}: {message}")]
    Blob { digest: String, message: String },
    #[error("package `{package}`: {message}")]
    Package { package: String, message: String },
    #[error("job `{job}`: {message}")]
    Job { job: String, message: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_path_buf(), source }
}

/// A name or fingerprint we turn into a path component must be one.
pub(crate) fn safe_component(s: &str) -> bool {
    bosun_types::yaml::is_safe_name(s)
}

pub struct Installer<'a> {
    pub layout: &'a Layout,
    pub dialer: &'a Dialer,
    pub agent_id: &'a str,
}

impl Installer<'_> {
    pub async fn install(&self, spec: &ApplySpec) -> Result<(), InstallError> {
        for p in &spec.packages {
            if !safe_component(&p.name) || !safe_component(&p.fingerprint) {
                return Err(InstallError::Package {
                    package: p.name.clone(),
                    message: "name or fingerprint is not a safe path component".into(),
                });
            }
        }
        for j in &spec.jobs {
            if !safe_component(&j.name) {
                return Err(InstallError::Job {
                    job: j.name.clone(),
                    message: "name is not a safe path component".into(),
                });
            }
        }
        // Dependencies first; the director sends a closed set.
        let by_name: BTreeMap<&str, &ApplyPackage> = spec.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut done: Vec<String> = Vec::new();
        for p in &spec.packages {
            self.install_package_with_deps(p, &by_name, &mut done, 0).await?;
        }
        for job in &spec.jobs {
            let blob = self.fetch_blob(&job.rendered).await?;
            let hex = parse_sha256(&job.rendered.digest).expect("checked by fetch_blob");
            let target = self.layout.root.join("data/jobs").join(&job.name).join(&hex[..16]);
            if !target.join(INSTALLED_MARKER).exists() {
                let _ = tokio::fs::remove_dir_all(&target).await;
                unpack(&blob, &target).await.map_err(|m| InstallError::Job { job: job.name.clone(), message: m })?;
                tokio::fs::write(target.join(INSTALLED_MARKER), b"").await.map_err(io(&target))?;
            }
            switch_link(&self.layout.job(&job.name), &target).await?;
            for d in [self.layout.log_dir(&job.name), self.layout.run_dir(&job.name)] {
                tokio::fs::create_dir_all(&d).await.map_err(io(&d))?;
            }
        }
        Ok(())
    }

    /// Removes the links of jobs that are no longer in the spec (after they were stopped).
    pub async fn remove_other_jobs(&self, spec: &ApplySpec) {
        let Ok(mut rd) = tokio::fs::read_dir(self.layout.jobs()).await else { return };
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if !spec.jobs.iter().any(|j| j.name == name) {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }

    async fn install_package_with_deps(
        &self,
        p: &ApplyPackage,
        all: &BTreeMap<&str, &ApplyPackage>,
        done: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), InstallError> {
        if done.contains(&p.name) {
            return Ok(());
        }
        if depth > all.len() {
            return Err(InstallError::Package { package: p.name.clone(), message: "dependency cycle".into() });
        }
        for d in &p.dependencies {
            let dep = all.get(d.as_str()).ok_or_else(|| InstallError::Package {
                package: p.name.clone(),
                message: format!("dependency `{d}` is not in the spec"),
            })?;
            Box::pin(self.install_package_with_deps(dep, all, done, depth + 1)).await?;
        }
        self.install_package(p).await?;
        done.push(p.name.clone());
        Ok(())
    }

    /// Installs a compiled package: its blob unpacked under `data/packages/<name>/<digest>` and
    /// `packages/<name>` pointed at it. Nothing is built here.
    async fn install_package(&self, p: &ApplyPackage) -> Result<(), InstallError> {
        self.install_compiled(&p.name, &p.compiled).await
    }

    /// Unpacks a compiled package (unless it is here already) and links `packages/<name>` to it.
    pub async fn install_compiled(&self, name: &str, compiled: &BlobRef) -> Result<(), InstallError> {
        let hex = parse_sha256(&compiled.digest).ok_or_else(|| InstallError::Blob {
            digest: compiled.digest.clone(),
            message: "not a sha256 digest".into(),
        })?;
        let target = self.layout.root.join("data/packages").join(name).join(&hex[..16]);
        if !target.join(INSTALLED_MARKER).exists() {
            let blob = self.fetch_blob(compiled).await?;
            let _ = tokio::fs::remove_dir_all(&target).await;
            unpack(&blob, &target)
                .await
                .map_err(|m| InstallError::Package { package: name.to_string(), message: m })?;
            tokio::fs::write(target.join(INSTALLED_MARKER), b"").await.map_err(io(&target))?;
        }
        switch_link(&self.layout.packages().join(name), &target).await
    }

    /// Fetches a blob (unless already here), verifying size and digest before it is kept.
    pub async fn fetch_blob(&self, blob: &BlobRef) -> Result<PathBuf, InstallError> {
        let err = |message: String| InstallError::Blob { digest: blob.digest.clone(), message };
        let hex = parse_sha256(&blob.digest).ok_or_else(|| err("not a sha256 digest".into()))?;
        let path = self.layout.blobs().join(hex);
        if path.exists() {
            return Ok(path);
        }
        let stream = self.dialer.connect().await.map_err(|e| err(format!("connecting to the director: {e}")))?;
        let mut stream = tokio::io::BufReader::new(stream);
        let req =
            encode_line(&AgentMessage::FetchBlob { agent_id: self.agent_id.to_string(), digest: blob.digest.clone() });
        stream.get_mut().write_all(&req).await.map_err(|e| err(format!("requesting: {e}")))?;
        let mut line = Vec::new();
        (&mut stream)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| err(format!("reading the answer: {e}")))?;
        let header: BlobHeader = serde_json::from_slice(&line).map_err(|e| err(format!("malformed answer: {e}")))?;
        if let Some(e) = header.error {
            return Err(err(format!("the director refused: {e}")));
        }
        let size = header.size.ok_or_else(|| err("the answer has no size".into()))?;
        if size != blob.size {
            return Err(err(format!("the director offers {size} bytes, the spec says {}", blob.size)));
        }
        let tmp = self.layout.blobs().join(format!("{hex}.partial"));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        let mut hasher = Sha256Writer::default();
        let mut remaining = size;
        let mut buf = vec![0u8; 64 * 1024];
        while remaining > 0 {
            let want = remaining.min(buf.len() as u64) as usize;
            let n = stream.read(&mut buf[..want]).await.map_err(|e| err(format!("downloading: {e}")))?;
            if n == 0 {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(err(format!("the connection closed with {remaining} bytes to go")));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(io(&tmp))?;
            remaining -= n as u64;
        }
        file.sync_all().await.map_err(io(&tmp))?;
        let got = hasher.finish();
        if got != blob.digest {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err(format!("digest mismatch: got {got}")));
        }
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
        Ok(path)
    }
}

/// Unpacks a .tgz into `dir`; refuses entries that would land outside it.
pub(crate) async fn unpack(archive: &Path, dir: &Path) -> Result<(), String> {
    let archive = archive.to_path_buf();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let f = std::fs::File::open(&archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
        a.set_preserve_permissions(true);
        for entry in a.entries().map_err(|e| format!("reading archive: {e}"))? {
            let mut entry = entry.map_err(|e| format!("reading archive: {e}"))?;
            if !entry.unpack_in(&dir).map_err(|e| format!("unpacking: {e}"))? {
                return Err(format!("archive entry {:?} points outside its directory", entry.path().ok()));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("unpack worker failed: {e}"))?
}

/// Points `link` at `target`, atomically (a new link renamed over the old one).
pub(crate) async fn switch_link(link: &Path, target: &Path) -> Result<(), InstallError> {
    if tokio::fs::read_link(link).await.ok().as_deref() == Some(target) {
        return Ok(());
    }
    let tmp = link.with_extension("new-link");
    let _ = tokio::fs::remove_file(&tmp).await;
    tokio::fs::symlink(target, &tmp).await.map_err(io(&tmp))?;
    tokio::fs::rename(&tmp, link).await.map_err(io(link))
}
