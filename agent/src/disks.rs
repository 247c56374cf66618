//! Persistent disks: where a CPI's hint says a disk is (a directory, or a cloud's block device
//! made a filesystem and mounted), and copying one disk's tree onto another for a migration.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("clearing {path}")]
    Clear {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("running cp")]
    Spawn(#[source] std::io::Error),
    #[error("cp failed: {0}")]
    Failed(String),
}

/// Where a persistent disk's contents are, from the hint the CPI's attach_disk gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A directory (the local CPI's disks, Docker's volumes): used as it is.
    Directory(PathBuf),
    /// A block device (a cloud's volume): given a filesystem when new, mounted by the agent.
    Device(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("the disk hint {0} names neither a directory nor a device (path, volume_id)")]
    BadHint(String),
    #[error("no device for the disk after {waited:?}: looked for {}", .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoDevice { looked: Vec<PathBuf>, waited: Duration },
    #[error("running {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {device} failed: {stderr}")]
    Failed { program: &'static str, device: String, stderr: String },
    #[error("preparing the mount point {path}")]
    MountPoint {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a device the hint names may appear under `dev` (the machine's `/dev`), most specific
/// first: by the cloud's volume id (EC2 Nitro instances give it as the NVMe device's serial),
/// then the device name the CPI asked for, then Xen's renaming of it (`sdf` → `xvdf`).
pub fn device_candidates(dev: &Path, hint: &serde_json::Value) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(id) = hint.get("volume_id").and_then(|v| v.as_str()).filter(|id| is_plain_name(id)) {
        out.push(dev.join("disk/by-id").join(format!("nvme-Amazon_Elastic_Block_Store_{}", id.replace('-', ""))));
    }
    if let Some(name) = hint.get("path").and_then(|p| p.as_str()).and_then(|p| p.strip_prefix("/dev/")) {
        if is_plain_name(name) {
            out.push(dev.join(name));
            if let Some(rest) = name.strip_prefix("sd") {
                out.push(dev.join(format!("xvd{rest}")));
            }
        }
    }
    out
}

/// A name that stays inside the directory it is joined to.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// The disk the hint names: a directory as it is; otherwise the first of the device candidates
/// that is a block device, waited for up to `wait` (a cloud's attachment can be reported before
/// the device shows in the guest).
pub async fn resolve(dev: &Path, hint: &serde_json::Value, wait: Duration) -> Result<DiskSource, MountError> {
    if let Some(path) = hint.get("path").and_then(|p| p.as_str()) {
        if tokio::fs::metadata(path).await.map(|m| m.is_dir()).unwrap_or(false) {
            return Ok(DiskSource::Directory(PathBuf::from(path)));
        }
    }
    let looked = device_candidates(dev, hint);
    if looked.is_empty() {
        return Err(MountError::BadHint(hint.to_string()));
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        for candidate in &looked {
            if let Ok(meta) = tokio::fs::metadata(candidate).await {
                if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
                    return Ok(DiskSource::Device(candidate.clone()));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MountError::NoDevice { looked, waited: wait });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Mounts `device` at `mount_point` unless it is mounted there already, first making an ext4
/// filesystem on it when it has none (a new volume; a volume with one keeps its data).
pub async fn mount_device(device: &Path, mount_point: &Path) -> Result<(), MountError> {
    tokio::fs::create_dir_all(mount_point)
        .await
        .map_err(|source| MountError::MountPoint { path: mount_point.display().to_string(), source })?;
    if is_mount_point(mount_point).await {
        return Ok(());
    }
    // blkid exits 2 when it finds no filesystem signature: only then is the device formatted.
    let probe = run("blkid", &["-p", "-o", "value", "-s", "TYPE"], device).await?;
    match probe.status.code() {
        Some(0) => {}
        Some(2) => {
            let made = run("mkfs.ext4", &["-q", "-F"], device).await?;
            check("mkfs.ext4", device, &made)?;
        }
        _ => check("blkid", device, &probe)?,
    }
    let mounted = tokio::process::Command::new("mount")
        .arg(device)
        .arg(mount_point)
        .output()
        .await
        .map_err(|source| MountError::Spawn { program: "mount", source })?;
    check("mount", device, &mounted)
}

/// Unmounts whatever is mounted at `mount_point` (nothing when nothing is) and removes the empty
/// mount point.
pub async fn unmount(mount_point: &Path) -> Result<(), MountError> {
    if is_mount_point(mount_point).await {
        let out = tokio::process::Command::new("umount")
            .arg(mount_point)
            .output()
            .await
            .map_err(|source| MountError::Spawn { program: "umount", source })?;
        check("umount", mount_point, &out)?;
    }
    let _ = tokio::fs::remove_dir(mount_point).await;
    Ok(())
}

/// Whether something is mounted at `path` (its device differs from its parent's).
async fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(here), Some(Ok(parent))) = (
        tokio::fs::metadata(path).await,
        match path.parent() {
            Some(p) => Some(tokio::fs::metadata(p).await),
            None => None,
        },
    ) else {
        return false;
    };
    here.dev() != parent.dev()
}

async fn run(program: &'static str, args: &[&str], device: &Path) -> Result<std::process::Output, MountError> {
    tokio::process::Command::new(program)
        .args(args)
        .arg(device)
        .output()
        .await
        .map_err(|source| MountError::Spawn { program, source })
}

fn check(program: &'static str, device: &Path, out: &std::process::Output) -> Result<(), MountError> {
    if out.status.success() {
        return Ok(());
    }
    Err(MountError::Failed {
        program,
        device: device.display().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Makes `to` an exact copy of `from`: whatever `to` held first is removed (a migration that was
/// interrupted is redone from the start), then everything is copied keeping owners, modes, links
/// and timestamps (`cp -a`).
pub async fn copy_tree(from: &Path, to: &Path) -> Result<(), CopyError> {
    for p in [from, to] {
        if !tokio::fs::metadata(p).await.map(|m| m.is_dir()).unwrap_or(false) {
            return Err(CopyError::NotADirectory(p.display().to_string()));
        }
    }
    let clear = |source| CopyError::Clear { path: to.display().to_string(), source };
    let mut entries = tokio::fs::read_dir(to).await.map_err(clear)?;
    while let Some(e) = entries.next_entry().await.map_err(clear)? {
        let p = e.path();
        let is_dir = e.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
        if is_dir { tokio::fs::remove_dir_all(&p).await } else { tokio::fs::remove_file(&p).await }.map_err(clear)?;
    }
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .await
        .map_err(CopyError::Spawn)?;
    if !out.status.success() {
        return Err(CopyError::Failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_volume_is_looked_for_by_id_then_by_name_then_by_xens_name() {
        let hint = serde_json::json!({"path": "/dev/sdf", "volume_id": "vol-0abc12"});
        assert_eq!(
            device_candidates(Path::new("/dev"), &hint),
            ["/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc12", "/dev/sdf", "/dev/xvdf"]
                .map(PathBuf::from)
                .to_vec()
        );
        // A hostile hint names nothing outside the device directory.
        let hint = serde_json::json!({"path": "/dev/../etc/passwd", "volume_id": "../x"});
        assert!(device_candidates(Path::new("/dev"), &hint).is_empty());
        assert!(device_candidates(Path::new("/dev"), &serde_json::json!({"path": "/var/x"})).is_empty());
    }

    #[tokio::test]
    async fn a_directory_hint_is_used_as_it_is_and_a_missing_device_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let hint = serde_json::json!({"path": dir.path()});
        let found = resolve(Path::new("/dev"), &hint, Duration::ZERO).await.unwrap();
        assert_eq!(found, DiskSource::Directory(dir.path().to_path_buf()));
        let hint = serde_json::json!({"path": "/dev/sdf", "volume_id": "vol-1"});
        let err = resolve(dir.path(), &hint, Duration::from_millis(300)).await.unwrap_err().to_string();
        assert!(err.contains("no device for the disk after 300ms") && err.contains("/sdf"), "{err}");
        // A regular file where the device should be is not a device.
        std::fs::write(dir.path().join("sdf"), b"").unwrap();
        assert!(resolve(dir.path(), &hint, Duration::ZERO).await.is_err());
    }

    #[tokio::test]
    async fn copies_everything_and_replaces_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(a.join("etcd/member")).unwrap();
        std::fs::write(a.join("etcd/member/wal"), b"log").unwrap();
        std::os::unix::fs::symlink("member/wal", a.join("etcd/link")).unwrap();
        std::fs::create_dir_all(b.join("stale")).unwrap();
        std::fs::write(b.join("stale/x"), b"old").unwrap();
        copy_tree(&a, &b).await.unwrap();
        assert_eq!(std::fs::read(b.join("etcd/member/wal")).unwrap(), b"log");
        assert_eq!(std::fs::read_link(b.join("etcd/link")).unwrap(), Path::new("member/wal"));
        assert!(!b.join("stale").exists());
        assert!(copy_tree(&a, &dir.path().join("missing")).await.is_err());
    }
}
