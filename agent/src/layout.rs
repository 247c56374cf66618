//! Where things live under the agent's root (`/var/vcap` on a real stemcell), following BOSH:
//! ```text
//! ROOT/jobs/<job>        → data/jobs/<job>/<digest>   rendered templates (symlink)
//! ROOT/packages/<pkg>    → data/packages/<pkg>/<fp>   installed packages (symlink)
//! ROOT/data/sys/log/<job>   logs        ROOT/data/sys/run/<job>   pid files
//! ROOT/data/blobs            verified blobs    ROOT/data/compile    package builds
//! ROOT/store                 the persistent disk (or an ephemeral directory without one)
//! ROOT/data/persistent/<cid>  where a persistent disk that is a device is mounted
//! ROOT/bosh/spec.json        the ledger: applied spec, generation and desired run state
//! ROOT/bosh/settings.json    the settings from the instance metadata (0600), when read there
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }
    pub fn create(&self) -> Result<(), (PathBuf, std::io::Error)> {
        for d in [
            self.jobs(),
            self.packages(),
            self.blobs(),
            self.compile(),
            self.root.join("data/jobs"),
            self.root.join("data/packages"),
            self.root.join("data/sys/log"),
            self.root.join("data/sys/run"),
            self.root.join("bosh"),
            self.root.join("data/tmp"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| (d.clone(), e))?;
        }
        let store = self.store();
        if std::fs::symlink_metadata(&store).is_err() {
            std::fs::create_dir_all(&store).map_err(|e| (store.clone(), e))?;
        }
        Ok(())
    }
    pub fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }
    pub fn job(&self, name: &str) -> PathBuf {
        self.jobs().join(name)
    }
    pub fn packages(&self) -> PathBuf {
        self.root.join("packages")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("data/blobs")
    }
    pub fn compile(&self) -> PathBuf {
        self.root.join("data/compile")
    }
    /// Every job's log directory is in here.
    pub fn log_root(&self) -> PathBuf {
        self.root.join("data/sys/log")
    }
    pub fn log_dir(&self, job: &str) -> PathBuf {
        self.log_root().join(job)
    }
    pub fn run_dir(&self, job: &str) -> PathBuf {
        self.root.join("data/sys/run").join(job)
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    /// Where the device of persistent disk `cid` is mounted (`None` for a cid that is not a
    /// plain name).
    pub fn disk_mount_point(&self, cid: &str) -> Option<PathBuf> {
        crate::disks::is_plain_name(cid).then(|| self.root.join("data/persistent").join(cid))
    }
    /// The settings last read from the instance metadata, for a boot when it does not answer.
    pub fn settings_copy(&self) -> PathBuf {
        self.root.join("bosh/settings.json")
    }
    pub fn ledger(&self) -> PathBuf {
        self.root.join("bosh/spec.json")
    }

    /// The environment every job process and script sees, so templates can find the VM's paths.
    pub fn job_env(&self, job: &str) -> Vec<(String, String)> {
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut env: Vec<(String, String)> = vec![
            ("BOSUN_ROOT".into(), s(self.root.clone())),
            ("BOSUN_JOB_NAME".into(), job.to_string()),
            ("BOSUN_JOB_DIR".into(), s(self.job(job))),
            ("BOSUN_PACKAGES_DIR".into(), s(self.packages())),
            ("BOSUN_LOG_DIR".into(), s(self.log_dir(job))),
            ("BOSUN_RUN_DIR".into(), s(self.run_dir(job))),
            ("BOSUN_STORE_DIR".into(), s(self.store())),
            ("BOSUN_DATA_DIR".into(), s(self.root.join("data"))),
            ("TMPDIR".into(), s(self.root.join("data/tmp"))),
        ];
        // Which stemcell this VM runs (a node can report it, e.g. as a label).
        if let Some(stemcell) = crate::stemcell_info() {
            env.push(("BOSUN_STEMCELL_NAME".into(), stemcell.name));
            env.push(("BOSUN_STEMCELL_VERSION".into(), stemcell.version));
        }
        env
    }
}

/// Replaces `path` with `bytes` so that after a crash it holds either the old or the new content:
/// a temporary file written and synced, renamed over the old one, and the directory synced so the
/// rename itself is durable. Blocking: call it off the async threads.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_durably_with_mode(path, bytes, 0o644)
}

/// [`write_durably`], the file made with `mode` (0o600 for what holds a secret).
pub fn write_durably_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.json");
        write_durably(&path, b"a long first version").unwrap();
        write_durably(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!path.with_extension("tmp").exists());
    }
}
