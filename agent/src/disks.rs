//! Persistent disk contents: copying one disk's tree onto another for a migration.

use std::path::Path;

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
