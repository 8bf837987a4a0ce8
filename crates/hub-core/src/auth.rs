//! API keys and principals.
//!
//! Keys are `ahk_` + 40 random base62 characters (~238 bits). Only their SHA-256 is stored: with
//! that much entropy a fast hash is the right tool (a slow KDF protects low-entropy passwords, and
//! would cost every request). Lookup is an in-memory hash map from digest to principal: no database
//! round trip on the hot path.

use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::FastMap;

/// Roles, as Blocklet Server passports name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    Owner,
    Admin,
    Member,
    Guest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Guest => "guest",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "member" => Role::Member,
            "guest" => Role::Guest,
            _ => return None,
        })
    }

    pub fn is_admin(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// Who is calling: resolved from an API key, from memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Id of the API key used.
    pub key_id: String,
    pub user_id: String,
    pub role: Role,
    /// Team (tenant) the key belongs to, if any.
    pub team_id: Option<String>,
}

/// SHA-256 digest of a key, the form stored and looked up.
pub type KeyDigest = [u8; 32];

pub fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new random API key.
pub fn generate_key() -> String {
    let mut rng = rand::rngs::OsRng;
    let body: String = (0..40)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("ahk_{body}")
}

/// The part of a key shown for recognition (`ahk_AbCd1234`).
pub fn key_prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

/// In-memory index of active keys.
#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    by_digest: FastMap<KeyDigest, Arc<Principal>>,
}

impl KeyIndex {
    pub fn insert(&mut self, digest: KeyDigest, principal: Principal) {
        self.by_digest.insert(digest, Arc::new(principal));
    }

    pub fn lookup(&self, token: &str) -> Option<Arc<Principal>> {
        self.by_digest.get(&digest(token)).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_indexed_by_digest() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with("ahk_") && a.len() == 44);
        let mut idx = KeyIndex::default();
        idx.insert(
            digest(&a),
            Principal {
                key_id: "k1".into(),
                user_id: "u1".into(),
                role: Role::Owner,
                team_id: None,
            },
        );
        assert_eq!(
            idx.lookup(&a).map(|p| p.key_id.clone()).as_deref(),
            Some("k1")
        );
        assert!(idx.lookup(&b).is_none());
        assert_eq!(key_prefix(&a).len(), 12);
    }
}
