//! Content digests. bosun addresses every blob by `sha256:<hex>`.

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of the bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Accepts `sha256:<64 hex>` and returns the hex part; rejects anything else (digests come from
/// hostile places: manifests, tarballs, HTTP paths).
pub fn parse_sha256(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

/// The byte count and `sha256:<hex>` of everything `r` yields (a file, streamed).
pub fn sha256_of_reader(mut r: impl std::io::Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256Writer::default();
    let n = std::io::copy(&mut r, &mut h)?;
    Ok((n, h.finish()))
}

/// An incremental sha256 that renders as `sha256:<hex>`.
#[derive(Default)]
pub struct Sha256Writer(Sha256);

impl Sha256Writer {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

impl std::io::Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn digests_round_trip() {
        let d = sha256_digest(b"abc");
        assert_eq!(parse_sha256(&d).map(str::len), Some(64));
        assert!(parse_sha256("sha256:../../etc/passwd").is_none());
        assert!(parse_sha256("md5:abc").is_none());
    }
}
