//! Health reports (docs/fleet.md): after each boot verdict a machine sends one small
//! signed report about the deployment it booted, and the publisher's rollout
//! controller counts them. This module is the part both sides share: the report, its
//! signed envelope, and the checks a reader applies to an envelope from outside.
//!
//! The key is the machine's own (made at its first report, kept under `/var`): it
//! proves nothing about who the machine is, only that every report under one key came
//! from one machine, so a controller counts one verdict per machine and version, and a
//! forged report cannot speak for another machine's key.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::index::valid_channel;
use arbor_core::fsutil;
use arbor_store::ObjectId;

/// The report format this arbor writes and reads.
pub const REPORT_FORMAT: u32 = 1;

/// The largest envelope a reader takes: a report is a few hundred bytes.
pub const MAX_REPORT: u64 = 4096;

/// What the machine concluded about the deployment a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Its health check passed.
    Good,
    /// Its health check failed.
    Failed,
    /// The loader gave up on it and booted the deployment before it again.
    RolledBack,
}

impl Verdict {
    /// The word used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Failed => "failed",
            Verdict::RolledBack => "rolled-back",
        }
    }
}

/// One report: no hostname, no address, nothing that names the machine but its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_FORMAT`].
    pub format: u32,
    /// The channel the deployment came from.
    pub channel: String,
    /// Its version in that channel.
    pub version: String,
    /// Its commit.
    pub commit: ObjectId,
    /// The machine's phase bucket for that version ([`crate::index::device_phase`]):
    /// the controller counts a phase's machines by it.
    pub bucket: u8,
    /// The verdict.
    pub verdict: Verdict,
    /// Milliseconds from the boot to the verdict (absent when the policy keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_to_verdict_ms: Option<u64>,
    /// Unix time of the verdict, in milliseconds: of two reports of one machine on
    /// one version, the later one counts.
    pub at_ms: i64,
}

/// A report as sent: its JSON text, exactly as signed, with the key and signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignedReport {
    /// The report's JSON text.
    pub report: String,
    /// The machine's Ed25519 public key, hex.
    pub key: String,
    /// The signature of `report`'s bytes, hex.
    pub signature: String,
}

/// Why a report from outside is not counted: the controller counts each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejected {
    /// Larger than [`MAX_REPORT`], or not the envelope's JSON.
    Malformed,
    /// The signature does not verify under the key.
    BadSignature,
    /// A report format this arbor does not read.
    UnknownFormat,
}

impl SignedReport {
    /// Reads an envelope from outside and checks its signature and format.
    pub fn verify(bytes: &[u8]) -> Result<(String, Report), Rejected> {
        if bytes.len() as u64 > MAX_REPORT {
            return Err(Rejected::Malformed);
        }
        let env: SignedReport = serde_json::from_slice(bytes).map_err(|_| Rejected::Malformed)?;
        let key = hex::decode(&env.key).map_err(|_| Rejected::Malformed)?;
        let sig = hex::decode(&env.signature).map_err(|_| Rejected::Malformed)?;
        if key.len() != 32 {
            return Err(Rejected::Malformed);
        }
        UnparsedPublicKey::new(&signature::ED25519, &key)
            .verify(env.report.as_bytes(), &sig)
            .map_err(|_| Rejected::BadSignature)?;
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let f: Format = serde_json::from_str(&env.report).map_err(|_| Rejected::Malformed)?;
        if f.format != REPORT_FORMAT {
            return Err(Rejected::UnknownFormat);
        }
        let report: Report = serde_json::from_str(&env.report).map_err(|_| Rejected::Malformed)?;
        Ok((env.key, report))
    }
}

/// The machine's report key: an Ed25519 key pair in a PKCS#8 file readable by root only.
pub struct MachineKey {
    pair: Ed25519KeyPair,
}

impl MachineKey {
    /// Reads the key at `path`, or makes one there (written aside, synced, renamed).
    pub fn load_or_create(path: &Path) -> Result<MachineKey> {
        let doc = match std::fs::read(path) {
            Ok(doc) => doc,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("generating the machine's report key"))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                fsutil::write_file_atomic(path, doc.as_ref(), 0o600)
                    .with_context(|| format!("writing {}", path.display()))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&doc)
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 key", path.display()))?;
        Ok(MachineKey { pair })
    }

    /// The public key, hex: the machine's name in reports.
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// Signs a report into its envelope's bytes.
    pub fn sign(&self, report: &Report) -> Result<Vec<u8>> {
        ensure!(
            report.format == REPORT_FORMAT,
            "report format {}",
            report.format
        );
        let text = serde_json::to_string(report)?;
        let env = SignedReport {
            signature: hex::encode(self.pair.sign(text.as_bytes()).as_ref()),
            key: self.public_hex(),
            report: text,
        };
        let bytes = serde_json::to_vec(&env)?;
        if bytes.len() as u64 > MAX_REPORT {
            bail!("a report of {} bytes (at most {MAX_REPORT})", bytes.len());
        }
        Ok(bytes)
    }
}

/// Where one report goes: `<reports>/<channel>/<first 16 of key>-<ms>.json`. A
/// machine's reports never overwrite another's, and its later reports sort after
/// its earlier ones.
pub fn report_url(reports: &str, channel: &str, key_hex: &str, at_ms: i64) -> Result<String> {
    Ok(format!(
        "{}/{}",
        reports.trim_end_matches('/'),
        report_name(channel, key_hex, at_ms)?
    ))
}

/// A report's name below the reports folder (or an S3 form's key prefix):
/// `<channel>/<first 16 of key>-<ms>.json`.
pub fn report_name(channel: &str, key_hex: &str, at_ms: i64) -> Result<String> {
    ensure!(valid_channel(channel), "'{channel}' is not a channel name");
    ensure!(
        key_hex.len() >= 16 && key_hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "a report key must be hex"
    );
    Ok(format!("{channel}/{}-{at_ms}.json", &key_hex[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            format: REPORT_FORMAT,
            channel: "stable".into(),
            version: "13.2".into(),
            commit: "ab".repeat(32).parse().unwrap(),
            bucket: 7,
            verdict: Verdict::Failed,
            boot_to_verdict_ms: Some(20_500),
            at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_signed_report_verifies_and_any_change_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/arbor/reports/key.pk8");
        let key = MachineKey::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The same key again, not a new one.
        assert_eq!(
            MachineKey::load_or_create(&path).unwrap().public_hex(),
            key.public_hex()
        );
        let bytes = key.sign(&report()).unwrap();
        let (who, r) = SignedReport::verify(&bytes).unwrap();
        assert_eq!((who, r), (key.public_hex(), report()));

        let mut env: SignedReport = serde_json::from_slice(&bytes).unwrap();
        env.report = env.report.replace("failed", "good");
        let forged = serde_json::to_vec(&env).unwrap();
        assert_eq!(
            SignedReport::verify(&forged).unwrap_err(),
            Rejected::BadSignature
        );
        // Another machine's key cannot vouch for it either.
        let other = MachineKey::load_or_create(&dir.path().join("other")).unwrap();
        env = serde_json::from_slice(&bytes).unwrap();
        env.key = other.public_hex();
        assert_eq!(
            SignedReport::verify(&serde_json::to_vec(&env).unwrap()).unwrap_err(),
            Rejected::BadSignature
        );
        assert_eq!(
            SignedReport::verify(&vec![b' '; 5000]).unwrap_err(),
            Rejected::Malformed
        );
        let mut newer = report();
        newer.format = 2;
        let text = serde_json::to_string(&newer).unwrap();
        let env = SignedReport {
            signature: hex::encode(key.pair.sign(text.as_bytes()).as_ref()),
            key: key.public_hex(),
            report: text,
        };
        assert_eq!(
            SignedReport::verify(&serde_json::to_vec(&env).unwrap()).unwrap_err(),
            Rejected::UnknownFormat
        );
    }

    #[test]
    fn a_report_goes_below_its_channel_under_its_key() {
        assert_eq!(
            report_url("http://h/r/", "stable", &"ab".repeat(32), 5).unwrap(),
            "http://h/r/stable/abababababababab-5.json"
        );
        assert!(report_url("http://h/r", "../x", &"ab".repeat(32), 5).is_err());
    }
}
