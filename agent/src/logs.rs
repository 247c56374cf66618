//! `fetch_logs`: the job logs packed into a bounded `.tgz` for the director (`bosun logs`); and
//! `follow_logs`: their last lines, then each line as it is written (`bosun logs --follow`).
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

/// The log files of `jobs` (every job's when empty). Blocking.
fn log_files(layout: &Layout, jobs: &[String]) -> Result<Vec<LogFile>, String> {
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
    Ok(files)
}

/// Packs the logs of `jobs` (every job when empty) into `archive`. Blocking.
pub fn pack_logs(layout: &Layout, jobs: &[String], max_bytes: u64, archive: &Path) -> Result<BlobRef, String> {
    let mut files = log_files(layout, jobs)?;
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

/// Where following stands in each log file: the offset read up to, and a line begun there.
#[derive(Default)]
pub struct Follower {
    files: std::collections::HashMap<PathBuf, (u64, Vec<u8>)>,
    started: bool,
}

/// The longest line passed on whole; longer ones are cut.
const MAX_LINE: usize = 4000;

impl Follower {
    /// The lines written since the last call, each as `job/file: line` — on the first call, the
    /// last `lines` lines of each file. A file that appears later is read from its start; one
    /// that shrank (rotated by copying and truncating) is read again from its start. Blocking.
    pub fn poll(&mut self, layout: &Layout, jobs: &[String], lines: usize) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut files = log_files(layout, jobs)?;
        files.sort_by(|a, b| a.name.cmp(&b.name));
        for f in files {
            let first = !self.started;
            let (offset, partial) = self.files.entry(f.path.clone()).or_insert_with(|| {
                // At the start only the end of a file is read: at most 64 KiB, enough for the
                // last lines asked for.
                (if first { f.size.saturating_sub(64 << 10) } else { 0 }, Vec::new())
            });
            if f.size < *offset {
                *offset = 0;
                partial.clear();
            }
            if f.size == *offset {
                continue;
            }
            let Ok(mut src) = std::fs::File::open(&f.path) else { continue };
            if src.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut buf = Vec::new();
            let Ok(n) = src.take(f.size - *offset).read_to_end(&mut buf) else { continue };
            *offset += n as u64;
            partial.extend_from_slice(&buf);
            let mut got = Vec::new();
            while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                let text: String = String::from_utf8_lossy(&line[..line.len() - 1]).chars().take(MAX_LINE).collect();
                got.push(format!("{}: {text}", f.name));
            }
            if partial.len() > MAX_LINE {
                got.push(format!("{}: {}", f.name, String::from_utf8_lossy(&std::mem::take(partial))));
            }
            if first {
                let skip = got.len().saturating_sub(lines);
                got.drain(..skip);
            }
            out.extend(got);
        }
        self.started = true;
        Ok(out)
    }
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

    #[test]
    fn following_gives_the_last_lines_then_each_new_one_across_rotation_and_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(&dir.path().join("root"));
        let etcd = layout.log_dir("etcd");
        std::fs::create_dir_all(&etcd).unwrap();
        std::fs::write(etcd.join("etcd.log"), "1\n2\n3\n4\n").unwrap();
        let mut f = Follower::default();
        assert_eq!(f.poll(&layout, &[], 2).unwrap(), ["etcd/etcd.log: 3", "etcd/etcd.log: 4"]);
        assert!(f.poll(&layout, &[], 2).unwrap().is_empty());
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new().append(true).open(etcd.join("etcd.log")).unwrap();
        log.write_all(b"5\nhalf").unwrap();
        assert_eq!(f.poll(&layout, &[], 2).unwrap(), ["etcd/etcd.log: 5"], "a line is passed on once whole");
        log.write_all(b" done\n").unwrap();
        std::fs::write(etcd.join("new.log"), "a\nb\nc\n").unwrap();
        assert_eq!(
            f.poll(&layout, &[], 2).unwrap(),
            ["etcd/etcd.log: half done", "etcd/new.log: a", "etcd/new.log: b", "etcd/new.log: c"],
            "a file appearing later is followed from its start"
        );
        std::fs::write(etcd.join("etcd.log"), "after rotation\n").unwrap();
        assert_eq!(f.poll(&layout, &[], 2).unwrap(), ["etcd/etcd.log: after rotation"]);
        assert!(f.poll(&layout, &["../x".into()], 2).is_err());
    }
}
