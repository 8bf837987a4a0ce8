//! Master-key files and rotation without downtime.
//!
//! With a key file `K` (`<data-dir>/master.key`, or `HUB_MASTER_KEY_FILE`), the vault is built
//! from `K` (the current key, used to encrypt) plus every key it may still meet: `K.next` (a
//! rotation in progress) and `K.retired-<key id>` (keys rotated out). Decryption picks the key by
//! the key id written in each ciphertext.
//!
//! `rotate` (the `aigne-hub admin rotate-master-key` command) runs while servers keep serving:
//! 1. write the new key to `K.next` (0600, fsynced) — from now on every process that reloads can
//!    decrypt under it;
//! 2. re-encrypt every credential under the new key in one transaction (compare-and-swap per row,
//!    repeated until no row is left under an old key); the transaction bumps the configuration
//!    version, so running servers reload within a second, re-reading the key files first;
//! 3. copy `K` to `K.retired-<old id>`, then atomically rename `K.next` over `K`.
//!
//! A crash at any step leaves a set of files from which every row still decrypts, and running
//! `rotate` again resumes with the same `K.next`. A server started before the rotation keeps its
//! in-memory snapshot (already decrypted) and, on its next reload, re-reads the files and finds the
//! new key. Retired keys stay until the operator deletes them; rows written under the old key by a
//! server that had not yet reloaded remain readable (and are re-encrypted by the next rotation).
//! A master key given as a value (`HUB_MASTER_KEY`) cannot be rotated in place: rotation needs files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{HubOptions, MasterKeySource};
use crate::hub::{OpenError, open_credential, open_store_and_vault, seal_credential};
use crate::store::Store;
use crate::vault::{self, Vault, VaultError};

/// Why a rotation failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(
        "the master key is given by value (HUB_MASTER_KEY); rotation needs a key file: move the key into a file and set HUB_MASTER_KEY_FILE (or use <data-dir>/master.key)"
    )]
    KeyIsAValue,
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("credential {id}: {source}")]
    Credential {
        id: String,
        #[source]
        source: VaultError,
    },
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("credentials kept changing while re-encrypting; run the rotation again")]
    Unsettled,
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct RotateReport {
    pub old_key_id: String,
    pub new_key_id: String,
    pub rewrapped: usize,
    pub retired_path: PathBuf,
}

/// The key file of these options, if the key lives in a file.
pub fn key_file(opts: &HubOptions) -> Option<PathBuf> {
    match &opts.master_key {
        Some(MasterKeySource::Value(_)) => None,
        Some(MasterKeySource::File(p)) => Some(p.clone()),
        None => Some(opts.data_dir.join("master.key")),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> VaultError + '_ {
    move |source| VaultError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Keys other than the current one that may still be needed: `K.next`, `K.retired-*`.
fn extra_keys(path: &Path) -> Result<Vec<[u8; 32]>, VaultError> {
    let mut keys = Vec::new();
    let next = sibling(path, ".next");
    if next.exists() {
        keys.push(vault::parse_master_key(
            &fs::read_to_string(&next).map_err(io_err(&next))?,
        )?);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!(
        "{}.retired-",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut retired: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    retired.sort();
    for p in retired {
        keys.push(vault::parse_master_key(
            &fs::read_to_string(&p).map_err(io_err(&p))?,
        )?);
    }
    Ok(keys)
}

/// Builds the vault of these options: the current key (the file is created 0600 when absent) and
/// the keys a rotation keeps.
pub fn load_vault(opts: &HubOptions) -> Result<Vault, VaultError> {
    match &opts.master_key {
        Some(MasterKeySource::Value(v)) => Ok(Vault::new(vault::parse_master_key(v.expose())?)),
        _ => {
            let path = key_file(opts).unwrap_or_else(|| opts.data_dir.join("master.key"));
            let mut v = Vault::new(vault::load_or_create_key_file(&path)?);
            for k in extra_keys(&path)? {
                v = v.with_retired(k);
            }
            Ok(v)
        }
    }
}

fn write_private(path: &Path, key: &[u8; 32]) -> Result<(), VaultError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(hex::encode(key).as_bytes())
        .map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Re-encrypts every credential under `vault`'s current key. Returns how many rows changed.
pub async fn rewrap_all(store: &dyn Store, vault: &Vault) -> Result<usize, RotateError> {
    let mut total = 0;
    for _ in 0..10 {
        let rows = store.list_credentials().await?;
        let mut updates = Vec::new();
        for row in rows
            .iter()
            .filter(|r| Vault::key_id_of(&r.ciphertext) != Some(vault.key_id()))
        {
            let secret = open_credential(vault, row).map_err(|source| RotateError::Credential {
                id: row.id.clone(),
                source,
            })?;
            let ct = seal_credential(vault, &row.id, &secret)?;
            updates.push((row.id.clone(), row.ciphertext.clone(), ct));
        }
        if updates.is_empty() {
            return Ok(total);
        }
        total += store.rewrap_ciphertexts(&updates).await?;
    }
    Err(RotateError::Unsettled)
}

/// Rotates the master key (see the module documentation for the steps and their safety).
pub async fn rotate(opts: &HubOptions) -> Result<RotateReport, RotateError> {
    let path = key_file(opts).ok_or(RotateError::KeyIsAValue)?;
    let (store, _) = open_store_and_vault(opts)?;
    let old_key = vault::load_or_create_key_file(&path)?;
    let next = sibling(&path, ".next");
    // Resume an interrupted rotation with its key; otherwise a fresh one.
    let new_key = if next.exists() {
        vault::parse_master_key(&fs::read_to_string(&next).map_err(io_err(&next))?)?
    } else {
        let k = vault::generate_master_key();
        write_private(&next, &k)?;
        sync_dir(&next);
        k
    };
    let old_id = Vault::new(old_key).key_id().to_string();
    let mut vault = Vault::new(new_key).with_retired(old_key);
    for k in extra_keys(&path)? {
        vault = vault.with_retired(k);
    }
    let new_id = vault.key_id().to_string();
    let rewrapped = rewrap_all(store.as_ref(), &vault).await?;
    let retired_path = sibling(&path, &format!(".retired-{old_id}"));
    if old_id != new_id {
        write_private(&retired_path, &old_key)?;
    }
    fs::rename(&next, &path).map_err(io_err(&path))?;
    sync_dir(&path);
    // Running servers re-read the key files on their next reload; bump the version so they do
    // even when no credential needed re-encrypting.
    store.set_setting("master_key_id", &new_id).await?;
    let _ = crate::iam::record(
        store.as_ref(),
        &crate::iam::Actor::cli(),
        "vault.rotate",
        &new_id,
        Some(
            serde_json::json!({"old_key_id": old_id, "new_key_id": new_id, "rewrapped": rewrapped}),
        ),
    )
    .await;
    Ok(RotateReport {
        old_key_id: old_id,
        new_key_id: new_id,
        rewrapped,
        retired_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_includes_next_and_retired_keys() -> Result<(), VaultError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let opts = HubOptions::new(dir.path());
        let path = dir.path().join("master.key");
        let v1 = load_vault(&opts)?;
        let ct = v1.encrypt("secret", "c1")?;
        // A new current key, the old one retired: old ciphertexts still open.
        write_private(
            &sibling(&path, ".retired-x"),
            &vault::load_or_create_key_file(&path)?,
        )?;
        write_private(&path, &vault::generate_master_key())?;
        let v2 = load_vault(&opts)?;
        assert_ne!(v1.key_id(), v2.key_id());
        assert_eq!(v2.decrypt(&ct, "c1")?, "secret");
        // A key in `.next` is accepted too.
        let next_key = vault::generate_master_key();
        write_private(&sibling(&path, ".next"), &next_key)?;
        let ct3 = Vault::new(next_key).encrypt("third", "c3")?;
        assert_eq!(load_vault(&opts)?.decrypt(&ct3, "c3")?, "third");
        Ok(())
    }
}
