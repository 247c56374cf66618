//! Deterministic .tgz archives: the same files give the same bytes (sorted entries, zero mtimes
//! and owners), so release artifacts and rendered jobs are content-addressed by their digest.

use std::collections::BTreeMap;

/// One file: its mode and bytes.
pub type Entry = (u32, Vec<u8>);

/// Builds a gzip'd tar of `files` (relative path → entry), directories implied.
pub fn deterministic_tgz(files: &BTreeMap<String, Entry>) -> std::io::Result<Vec<u8>> {
    deterministic_tgz_at(files, 6)
}

/// [`deterministic_tgz`] at gzip `level` (1 for archives of archives: compressing them again
/// costs seconds per hundred megabytes and saves nothing). The level is part of the bytes, so
/// archives whose digest names them keep level 6.
pub fn deterministic_tgz_at(files: &BTreeMap<String, Entry>, level: u32) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    let mut b = tar::Builder::new(gz);
    b.mode(tar::HeaderMode::Deterministic);
    for (path, (mode, bytes)) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, bytes.as_slice())?;
    }
    let gz = b.into_inner()?;
    gz.finish()
}

/// Reads every regular file of a .tgz held in memory (relative path → entry). Refuses paths
/// that climb out (`..`) or are absolute, and archives larger than `limit` bytes unpacked.
pub fn read_tgz(bytes: &[u8], limit: u64) -> std::io::Result<BTreeMap<String, Entry>> {
    use std::io::Read;
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut total = 0u64;
    for e in a.entries()? {
        let mut e = e?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e.path()?.to_string_lossy().trim_start_matches("./").to_string();
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("archive path `{path}` escapes the archive"),
            ));
        }
        total += e.header().size()?;
        if total > limit {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "archive is larger than allowed"));
        }
        let mode = e.header().mode()?;
        let mut buf = Vec::new();
        e.read_to_end(&mut buf)?;
        out.insert(path, (mode, buf));
    }
    Ok(out)
}

/// The content fingerprint of a job or package: a digest over each file's path, executable bit and
/// content digest, in path order, plus `extra` (a package's dependency names). Same content, same
/// fingerprint, whatever the archive's bytes.
pub fn fingerprint(files: &BTreeMap<String, Entry>, extra: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"bosun-fingerprint-v1\n");
    for (path, (mode, bytes)) in files {
        h.update(path.as_bytes());
        h.update(if mode & 0o111 != 0 { b"\x00755\x00" } else { b"\x00644\x00" });
        h.update(Sha256::digest(bytes));
        h.update(b"\n");
    }
    let mut extra = extra.to_vec();
    extra.sort();
    for e in extra {
        h.update(b"dep:");
        h.update(e.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn same_files_same_bytes() {
        let mut f = BTreeMap::new();
        f.insert("bin/run".to_string(), (0o755, b"#!/bin/sh\n".to_vec()));
        f.insert("config/a.yml".to_string(), (0o644, b"a: 1\n".to_vec()));
        let a = deterministic_tgz(&f).unwrap();
        assert_eq!(a, deterministic_tgz(&f).unwrap());
        let back = read_tgz(&a, 1 << 20).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn fingerprints_follow_content_not_bytes() {
        let mut f = BTreeMap::new();
        f.insert("packaging".to_string(), (0o755, b"cp a b\n".to_vec()));
        let a = fingerprint(&f, &["dep".into()]);
        assert_eq!(a, fingerprint(&f, &["dep".into()]));
        assert_ne!(a, fingerprint(&f, &[]), "dependencies count");
        f.insert("packaging".to_string(), (0o644, b"cp a b\n".to_vec()));
        assert_ne!(a, fingerprint(&f, &["dep".into()]), "the executable bit counts");
    }
}
