//! `fetch_logs`: the job logs packed into a bounded `.tgz` for the director (`bosun logs`).
//!
//! Bounded so a VM with runaway logs cannot fill the director's disk: the newest files go in
//! first, a file that does not fit whole gives its end (the newest lines), and what was cut or
//! left out is listed in `TRUNCATED.txt` inside the archive.

use crate::layout::Layout;
use bosun_types::protocol::BlobRef;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One log file to pack: where it is, its name in the archive, its size and age.
struct LogFile {
    path: PathBuf,
    name: String,
    size: u64,
    modified: std::time::SystemTime,
}

/// Every regular file under `dir` (symlinks not followed), named `prefix/relative`.
fn files_under(dir: &Path, prefix: &str, out: &mut Vec<LogFile>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else { continue };
        let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
        if meta.is_dir() {
            files_under(&e.path(), &name, out);
        } else if meta.is_file() {
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            out.push(LogFile { path: e.path(), name, size: meta.len(), modified });
        }
    }
}

/// Packs the logs of `jobs` (every job when empty) into `archive`. Blocking.
pub fn pack_logs(layout: &Layout, jobs: &[String], max_bytes: u64, archive: &Path) -> Result<BlobRef, String> {
    let root = layout.log_root();
    let chosen: Vec<String> = if jobs.is_empty() {
        let mut all: Vec<String> = std::fs::read_dir(&root)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        all.sort();
        all
    } else {
        for j in jobs {
            if !bosun_types::yaml::is_safe_name(j) {
                return Err(format!("`{j}` is not a job name"));
            }
        }
        jobs.to_vec()
    };
    let mut files = Vec::new();
    for job in &chosen {
        files_under(&root.join(job), job, &mut files);
    }
    files.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| a.name.cmp(&b.name)));
    if let Some(parent) = archive.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let file = std::fs::File::create(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut left = max_bytes;
    let mut cut = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut gz);
        for f in &files {
            let take = f.size.min(left);
            if take == 0 && f.size > 0 {
                cut.push(format!("{}: left out ({} bytes)", f.name, f.size));
                continue;
            }
            let Ok(mut src) = std::fs::File::open(&f.path) else { continue };
            // The end of a file that does not fit: its newest lines.
            if take < f.size {
                if src.seek(SeekFrom::Start(f.size - take)).is_err() {
                    continue;
                }
                cut.push(format!("{}: only its last {take} of {} bytes", f.name, f.size));
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(take);
            header.set_mode(0o600);
            header.set_mtime(f.modified.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
            header.set_cksum();
            // A log still being written may grow meanwhile: exactly `take` bytes go in.
            tar.append_data(&mut header, &f.name, src.take(take)).map_err(|e| format!("packing {}: {e}", f.name))?;
            left -= take;
        }
        if !cut.is_empty() {
            let text = format!("The logs were over {max_bytes} bytes; newest files first:\n{}\n", cut.join("\n"));
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            tar.append_data(&mut header, "TRUNCATED.txt", text.as_bytes()).map_err(|e| format!("packing: {e}"))?;
        }
        tar.finish().map_err(|e| format!("packing: {e}"))?;
    }
    let file = gz.finish().map_err(|e| format!("packing: {e}"))?;
    file.sync_all().map_err(|e| format!("packing: {e}"))?;
    drop(file);
    let (size, digest) = bosun_types::digest::sha256_of_reader(
        std::fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?,
    )
    .map_err(|e| format!("hashing: {e}"))?;
    Ok(BlobRef { digest, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &Path) -> Vec<(String, String)> {
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(archive).unwrap());
        let mut tar = tar::Archive::new(gz);
        let mut out: Vec<(String, String)> = tar
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut text = String::new();
                e.read_to_string(&mut text).unwrap();
                (name, text)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn logs_are_packed_by_job_newest_first_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(&dir.path().join("root"));
        let etcd = layout.log_dir("etcd");
        std::fs::create_dir_all(etcd.join("old")).unwrap();
        std::fs::write(etcd.join("old/etcd.log.1"), "a".repeat(100)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(etcd.join("etcd.log"), "first\nsecond\nthird\n").unwrap();
        std::fs::create_dir_all(layout.log_dir("kubelet")).unwrap();
        std::fs::write(layout.log_dir("kubelet").join("kubelet.log"), "k\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", etcd.join("passwd")).unwrap();
        let archive = dir.path().join("logs.tgz");

        let blob = pack_logs(&layout, &["etcd".into()], 1 << 20, &archive).unwrap();
        assert_eq!(blob.size, std::fs::metadata(&archive).unwrap().len());
        let got = entries(&archive);
        assert_eq!(
            got,
            vec![
                ("etcd/etcd.log".into(), "first\nsecond\nthird\n".into()),
                ("etcd/old/etcd.log.1".into(), "a".repeat(100))
            ],
            "the job's files, not the other job's, no symlink followed"
        );

        // 30 bytes: the newest file whole (19 bytes), the older one's last 11, and a note.
        pack_logs(&layout, &["etcd".into()], 30, &archive).unwrap();
        let got = entries(&archive);
        assert_eq!(got[0], ("TRUNCATED.txt".into(), "The logs were over 30 bytes; newest files first:\netcd/old/etcd.log.1: only its last 11 of 100 bytes\n".into()));
        assert_eq!(got[2], ("etcd/old/etcd.log.1".into(), "a".repeat(11)));

        let all = pack_logs(&layout, &[], 1 << 20, &archive);
        assert!(all.is_ok());
        assert_eq!(entries(&archive).len(), 3, "every job's");
        assert!(pack_logs(&layout, &["../etc".into()], 1 << 20, &archive).is_err());
    }
}
