//! AES-256-GCM envelope for provider credentials.
//!
//! Ciphertext text form: `v1:<key id>:<base64(nonce || ciphertext+tag)>`. The key id is the first
//! 8 bytes (hex) of SHA-256 of the master key, so a rotated key is recognised. The associated data
//! binds each ciphertext to its credential id: a ciphertext copied onto another row does not decrypt.
//! There is no plaintext path.

use std::fs;
use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Errors of the vault. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The master key is not 32 bytes of hex or base64.
    #[error("master key must be 32 bytes, given as 64 hex characters or base64")]
    BadMasterKey,
    /// The ciphertext was written under another master key.
    #[error(
        "credential was encrypted with master key {found}, but the current master key is {current}"
    )]
    WrongKey { found: String, current: String },
    /// Tampered or truncated ciphertext.
    #[error("credential ciphertext is corrupt or was tampered with")]
    Corrupt,
    /// Reading or writing the key file failed.
    #[error("master key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Holds the master key (one current key; `decrypt` also accepts retired keys during rotation).
pub struct Vault {
    current: (String, Aes256Gcm),
    retired: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault(key id {})", self.current.0)
    }
}

fn key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::digest(key);
    hex::encode(&digest[..8])
}

/// Parses a master key given as 64 hex characters or base64 of 32 bytes.
pub fn parse_master_key(text: &str) -> Result<[u8; 32], VaultError> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(t).map_err(|_| VaultError::BadMasterKey)?
    } else {
        B64.decode(t).map_err(|_| VaultError::BadMasterKey)?
    };
    bytes.try_into().map_err(|_| VaultError::BadMasterKey)
}

/// Generates a fresh random master key.
pub fn generate_master_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

/// Loads the key file, or creates it (mode 0600) with a fresh key when absent.
pub fn load_or_create_key_file(path: &Path) -> Result<[u8; 32], VaultError> {
    let io = |source| VaultError::Io {
        path: path.display().to_string(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => parse_master_key(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_master_key();
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut file = opts.open(path).map_err(io)?;
            file.write_all(hex::encode(key).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

impl Vault {
    pub fn new(master_key: [u8; 32]) -> Vault {
        let id = key_id(&master_key);
        Vault {
            current: (
                id,
                Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&master_key)),
            ),
            retired: Vec::new(),
        }
    }

    /// Adds a retired key that `decrypt` still accepts (used while rotating).
    pub fn with_retired(mut self, old_key: [u8; 32]) -> Vault {
        let id = key_id(&old_key);
        self.retired
            .push((id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&old_key))));
        self
    }

    pub fn key_id(&self) -> &str {
        &self.current.0
    }

    /// Encrypts `plaintext`, bound to `context` (the credential id).
    pub fn encrypt(&self, plaintext: &str, context: &str) -> Result<String, VaultError> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: context.as_bytes(),
        };
        let ct = self
            .current
            .1
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| VaultError::Corrupt)?;
        let mut blob = Vec::with_capacity(12 + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(format!("v1:{}:{}", self.current.0, B64.encode(blob)))
    }

    /// The key id a ciphertext was written under.
    pub fn key_id_of(ciphertext: &str) -> Option<&str> {
        let mut parts = ciphertext.splitn(3, ':');
        match (parts.next(), parts.next()) {
            (Some("v1"), Some(id)) => Some(id),
            _ => None,
        }
    }

    pub fn decrypt(&self, ciphertext: &str, context: &str) -> Result<String, VaultError> {
        let mut parts = ciphertext.splitn(3, ':');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(VaultError::Corrupt);
        };
        let cipher = if id == self.current.0 {
            &self.current.1
        } else if let Some((_, c)) = self.retired.iter().find(|(rid, _)| rid == id) {
            c
        } else {
            return Err(VaultError::WrongKey {
                found: id.to_string(),
                current: self.current.0.clone(),
            });
        };
        let blob = B64.decode(body).map_err(|_| VaultError::Corrupt)?;
        if blob.len() < 12 + 16 {
            return Err(VaultError::Corrupt);
        }
        let (nonce, ct) = blob.split_at(12);
        let pt = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Corrupt)?;
        String::from_utf8(pt).map_err(|_| VaultError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let v = Vault::new([7u8; 32]);
        let ct = v.encrypt("sk-secret-value", "cred-1").unwrap_or_default();
        assert!(!ct.contains("sk-secret"));
        assert!(ct.starts_with("v1:"));
        assert_eq!(
            v.decrypt(&ct, "cred-1").ok().as_deref(),
            Some("sk-secret-value")
        );
        // Bound to its row.
        assert!(matches!(v.decrypt(&ct, "cred-2"), Err(VaultError::Corrupt)));
        // Random nonce: two encryptions differ.
        assert_ne!(
            ct,
            v.encrypt("sk-secret-value", "cred-1").unwrap_or_default()
        );
    }

    #[test]
    fn wrong_key_is_named_and_retired_keys_decrypt() {
        let old = Vault::new([1u8; 32]);
        let ct = old.encrypt("k", "c").unwrap_or_default();
        let new = Vault::new([2u8; 32]);
        assert!(matches!(
            new.decrypt(&ct, "c"),
            Err(VaultError::WrongKey { .. })
        ));
        let rotating = Vault::new([2u8; 32]).with_retired([1u8; 32]);
        assert_eq!(rotating.decrypt(&ct, "c").ok().as_deref(), Some("k"));
    }

    #[test]
    fn tampering_is_detected() {
        let v = Vault::new([3u8; 32]);
        let ct = v.encrypt("value", "c").unwrap_or_default();
        let mut bytes = ct.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap_or_default();
        assert!(v.decrypt(&tampered, "c").is_err());
    }

    #[test]
    fn master_key_forms() {
        let hexkey = "00".repeat(32);
        assert!(parse_master_key(&hexkey).is_ok());
        assert!(parse_master_key(&B64.encode([9u8; 32])).is_ok());
        assert!(parse_master_key("short").is_err());
    }

    #[test]
    fn key_file_is_created_private() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let path = dir.path().join("master.key");
        let k1 = load_or_create_key_file(&path).ok();
        let k2 = load_or_create_key_file(&path).ok();
        assert!(k1.is_some());
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
    }
}
