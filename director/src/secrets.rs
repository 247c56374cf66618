//! Encryption at rest for secrets in the store (variables): ChaCha20-Poly1305 with a key kept in
//! the state directory, readable by the director's user only.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use std::path::Path;

#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secrets key file {0} is not 32 bytes")]
    BadKey(String),
    #[error("a stored secret could not be decrypted (wrong key or corrupt record)")]
    Decrypt,
    #[error("secrets key {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SecretBox {
    /// Loads the key, creating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::Io { path: path.display().to_string(), source };
        let key = match std::fs::read(path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                rand::thread_rng().fill_bytes(&mut k);
                crate::write_private(path, &k).map_err(io)?;
                k
            }
            Err(e) => return Err(io(e)),
        };
        if key.len() != 32 {
            return Err(SecretError::BadKey(path.display().to_string()));
        }
        Ok(Self { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) })
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend(self.cipher.encrypt(Nonce::from_slice(&nonce), plaintext).expect("encryption cannot fail"));
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < 12 {
            return Err(SecretError::Decrypt);
        }
        self.cipher.decrypt(Nonce::from_slice(&sealed[..12]), &sealed[12..]).map_err(|_| SecretError::Decrypt)
    }
}
