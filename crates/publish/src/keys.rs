//! The publisher's signing keys and root metadata.
//!
//! One Ed25519 key per TUF role (root, targets, snapshot, timestamp), each a PKCS#8
//! file readable by root only, kept outside the published folder. The root key signs
//! the root metadata, which names the other keys; `rotate` replaces one key and signs a
//! new root version with both the old and the new root keys, as TUF requires for a
//! client to follow the rotation.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use chrono::{DateTime, Utc};
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed};

use arbor_core::fsutil;

/// The four top-level roles, in the order their keys are made.
pub const ROLES: [RoleType; 4] = [
    RoleType::Root,
    RoleType::Targets,
    RoleType::Snapshot,
    RoleType::Timestamp,
];

/// A role's name as used in file names and on the command line.
pub fn role_name(r: RoleType) -> &'static str {
    match r {
        RoleType::Root => "root",
        RoleType::Targets => "targets",
        RoleType::Snapshot => "snapshot",
        RoleType::Timestamp => "timestamp",
        _ => "other",
    }
}

/// Parses a role name.
pub fn parse_role(s: &str) -> Result<RoleType> {
    ROLES
        .into_iter()
        .find(|r| role_name(*r) == s)
        .ok_or_else(|| anyhow::anyhow!("unknown role '{s}' (root, targets, snapshot, timestamp)"))
}

/// The key file of a role.
pub fn key_path(keys: &Path, role: RoleType) -> PathBuf {
    keys.join(format!("{}.pk8", role_name(role)))
}

/// Writes a fresh key for `role` into `keys` (mode 0600, written aside and renamed).
pub fn generate(keys: &Path, role: RoleType) -> Result<()> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("generating an Ed25519 key"))?;
    fsutil::write_file_atomic(&key_path(keys, role), doc.as_ref(), 0o600)
        .with_context(|| format!("writing the {} key", role_name(role)))
}

/// A role's key as tough wants it.
pub fn source(keys: &Path, role: RoleType) -> Result<Box<dyn KeySource>> {
    let path = key_path(keys, role);
    if !path.exists() {
        bail!(
            "no {} key at {} (the keys folder of 'arbor publish init')",
            role_name(role),
            path.display()
        );
    }
    Ok(Box::new(LocalKeySource { path }))
}

/// The TUF key of a key file, with its id.
async fn tuf_key(
    keys: &Path,
    role: RoleType,
) -> Result<(
    tough::schema::decoded::Decoded<tough::schema::decoded::Hex>,
    tough::schema::key::Key,
)> {
    let sign = source(keys, role)?
        .as_sign()
        .await
        .map_err(|e| anyhow::anyhow!("reading the {} key: {e}", role_name(role)))?;
    let key = sign.tuf_key();
    let id = key.key_id().map_err(|e| anyhow::anyhow!("key id: {e}"))?;
    Ok((id, key))
}

/// Builds root metadata `version` naming the current key of every role.
pub async fn make_root(keys: &Path, version: u64, expires: DateTime<Utc>) -> Result<Root> {
    let mut root = Root {
        spec_version: "1.0.0".into(),
        // Versioned metadata and digest-named targets: a client mid-update never sees
        // a new snapshot with an old targets file; timestamp.json is the one switch.
        consistent_snapshot: true,
        version: NonZeroU64::new(version).context("root version 0")?,
        expires,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for role in ROLES {
        let (id, key) = tuf_key(keys, role).await?;
        root.keys.insert(id.clone(), key);
        root.roles.insert(
            role,
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::new(1).unwrap(),
                _extra: HashMap::new(),
            },
        );
    }
    Ok(root)
}

/// Signs `root` with the root key (and, for a rotation, the previous root's key too:
/// `old_root_key`), returning the file's bytes.
pub async fn sign_root(keys: &Path, root: Root, old_root_key: Option<&Path>) -> Result<Vec<u8>> {
    let rng = SystemRandom::new();
    let new = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root.clone()),
        &[source(keys, RoleType::Root)?],
        &rng,
    )
    .await
    .map_err(|e| anyhow::anyhow!("signing root metadata: {e}"))?;
    let Some(old_path) = old_root_key else {
        return Ok(new.buffer().clone());
    };
    // The old root key signs the same content, under a root that trusts it.
    let old_source: Box<dyn KeySource> = Box::new(LocalKeySource {
        path: old_path.to_path_buf(),
    });
    let old_sign = old_source
        .as_sign()
        .await
        .map_err(|e| anyhow::anyhow!("reading the old root key: {e}"))?;
    let old_key = old_sign.tuf_key();
    let old_id = old_key.key_id().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut holder = root.clone();
    holder.keys.insert(old_id.clone(), old_key);
    holder.roles.insert(
        RoleType::Root,
        RoleKeys {
            keyids: vec![old_id],
            threshold: NonZeroU64::new(1).unwrap(),
            _extra: HashMap::new(),
        },
    );
    let by_old = SignedRole::new(root, &KeyHolder::Root(holder), &[old_source], &rng)
        .await
        .map_err(|e| anyhow::anyhow!("signing root metadata with the old key: {e}"))?;
    let both = new
        .add_old_signatures(by_old.signed().signatures.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(both.buffer().clone())
}

/// Reads a root metadata file.
pub fn read_root(path: &Path) -> Result<Signed<Root>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not TUF root metadata", path.display()))
}
