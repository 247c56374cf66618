//! Job log rotation, as BOSH's agent does with logrotate (`size`, `rotate`, `copytruncate`): a
//! job's log over the size limit is copied to `NAME.1` (older copies shift to `.2` … and the
//! oldest is dropped) and then truncated in place. Processes write their logs with `O_APPEND`, so
//! they carry on at the start of the emptied file without being told.

use std::path::Path;
use std::time::Duration;

/// A log grows to this before it is rotated.
pub const MAX_LOG_BYTES: u64 = 50 << 20;
/// Rotated copies kept per log.
pub const KEEP: u32 = 5;
/// How often the logs are looked at.
pub const EVERY: Duration = Duration::from_secs(30);

/// Rotates every `*.log` under `log_root/<job>/` that is over `max_bytes`; blocking. Returns how
/// many were rotated.
pub fn rotate_logs(log_root: &Path, max_bytes: u64, keep: u32) -> std::io::Result<usize> {
    let mut rotated = 0;
    let Ok(jobs) = std::fs::read_dir(log_root) else { return Ok(0) };
    for job in jobs.flatten() {
        let Ok(files) = std::fs::read_dir(job.path()) else { continue };
        for f in files.flatten() {
            let path = f.path();
            let is_log = path.extension().is_some_and(|e| e == "log");
            let meta = match f.metadata() {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            if is_log && meta.len() > max_bytes {
                rotate(&path, keep)?;
                rotated += 1;
            }
        }
    }
    Ok(rotated)
}

fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| {
        let mut name = path.as_os_str().to_os_string();
        name.push(format!(".{n}"));
        std::path::PathBuf::from(name)
    };
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        if numbered(n).exists() {
            std::fs::rename(numbered(n), numbered(n + 1))?;
        }
    }
    std::fs::copy(path, numbered(1))?;
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)
}

/// Rotates the logs every [`EVERY`] until the agent ends.
pub async fn run(log_root: std::path::PathBuf) {
    loop {
        tokio::time::sleep(EVERY).await;
        let root = log_root.clone();
        match tokio::task::spawn_blocking(move || rotate_logs(&root, MAX_LOG_BYTES, KEEP)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(rotated = n, "job logs rotated"),
            Ok(Err(e)) => tracing::warn!(error = %e, "rotating job logs failed"),
            Err(e) => tracing::warn!(error = %e, "rotating job logs failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_over_its_limit_is_copied_and_truncated_keeping_a_bounded_history() {
        let root = tempfile::tempdir().unwrap();
        let job = root.path().join("etcd");
        std::fs::create_dir_all(&job).unwrap();
        let log = job.join("etcd.stdout.log");
        // The writer keeps an O_APPEND descriptor open across rotations, as a job process does.
        let mut writer = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        for round in 1..=4u8 {
            writer.write_all(&[b'0' + round; 100]).unwrap();
            assert_eq!(rotate_logs(root.path(), 64, 3).unwrap(), 1);
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        }
        // Three copies at most, newest first.
        assert_eq!(std::fs::read(job.join("etcd.stdout.log.1")).unwrap(), vec![b'4'; 100]);
        assert_eq!(std::fs::read(job.join("etcd.stdout.log.2")).unwrap(), vec![b'3'; 100]);
        assert_eq!(std::fs::read(job.join("etcd.stdout.log.3")).unwrap(), vec![b'2'; 100]);
        assert!(!job.join("etcd.stdout.log.4").exists());
        // The writer carries on at the start of the emptied file.
        writer.write_all(b"after").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"after");
        // Under the limit: left alone.
        assert_eq!(rotate_logs(root.path(), 64, 3).unwrap(), 0);
    }
}
