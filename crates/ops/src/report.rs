//! This machine's health reports (docs/fleet.md): after each boot verdict, one signed
//! report per deployment the verdict is about goes into an outbox under `/var`, and is
//! sent by `PUT` to the location the channel's signed index names: at once, and again
//! at each update check while the server cannot take it. Nothing here ever fails a
//! health check or an update: a report that cannot be made or sent is logged and kept.
//!
//! What the policy's `reports` allows: `off` (the default), `on`, or `no-boot-time`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use arbor_core::fsutil;
use arbor_remote::index::{ChannelIndex, device_phase};
use arbor_remote::report::{MachineKey, REPORT_FORMAT, Report, Verdict, report_name, report_url};
use arbor_remote::rollout::ReportForm;
use arbor_sysroot::{Deployment, Sysroot, health::HealthReport};

use crate::update::Policy;

/// The most reports an outbox keeps: a machine offline for a year does not fill /var.
const MAX_QUEUED: usize = 100;

/// How long one send may take at a boot verdict: the health check is not held longer.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What a policy lets a report say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporting {
    /// No reports.
    Off,
    /// Reports with the time from boot to verdict.
    On,
    /// Reports without it.
    NoBootTime,
}

/// Parses the policy's `reports` value.
pub fn parse_reporting(word: &str) -> Result<Reporting> {
    match word {
        "" | "off" => Ok(Reporting::Off),
        "on" => Ok(Reporting::On),
        "no-boot-time" => Ok(Reporting::NoBootTime),
        w => anyhow::bail!("reports = {w:?}: give \"off\", \"on\" or \"no-boot-time\""),
    }
}

/// The reports folder: `/var/lib/arbor/reports` of the running system, or of the
/// stateroot's `/var` in a folder sysroot.
pub fn reports_dir(sysroot: &Sysroot, os: &str) -> PathBuf {
    if sysroot.is_running_system() {
        PathBuf::from("/var/lib/arbor/reports")
    } else {
        sysroot.stateroot(os).join("var/lib/arbor/reports")
    }
}

/// What the last verified index of a channel said about reports: where they go, and
/// its versions by commit (a report names the channel's version, which the commit's
/// own version label need not be).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Sink {
    /// The folder URL reports are `PUT` into (empty with a form).
    reports: String,
    /// Or the S3 form they are posted through.
    #[serde(default)]
    form: Option<ReportForm>,
    versions: BTreeMap<String, String>,
}

fn sink_path(dir: &Path, remote: &str, channel: &str) -> PathBuf {
    dir.join(format!("sink~{remote}~{channel}.json"))
}

/// Remembers where a channel's reports go, from a freshly verified index (or forgets
/// it when the index names no location).
pub fn note_channel(sysroot: &Sysroot, os: &str, remote: &str, idx: &ChannelIndex) -> Result<()> {
    let dir = reports_dir(sysroot, os);
    let path = sink_path(&dir, remote, &idx.channel);
    let rules = idx.rollout.as_ref();
    let (url, form) = (
        rules.and_then(|r| r.reports.clone()),
        rules.and_then(|r| r.report_form.clone()),
    );
    if url.is_none() && form.is_none() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
    }
    let sink = Sink {
        reports: url.unwrap_or_default(),
        form,
        versions: idx
            .versions
            .iter()
            .rev()
            .take(64)
            .map(|v| (v.commit.to_hex(), v.version.clone()))
            .collect(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fsutil::write_file_atomic(&path, &serde_json::to_vec(&sink)?, 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_sink(dir: &Path, remote: &str, channel: &str) -> Option<Sink> {
    let bytes = std::fs::read(sink_path(dir, remote, channel)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What became of a machine's reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sent {
    /// Reports made now.
    pub made: u32,
    /// Reports the server took.
    pub sent: u32,
    /// Reports still waiting in the outbox.
    pub kept: u32,
}

/// After a boot verdict: a report on the booted deployment (good or failed) and on
/// each one the loader gave up on (rolled back), queued and sent if the policy says so
/// and the deployment's channel names a report location.
pub fn after_verdict(sysroot: &Sysroot, verdict: &HealthReport) -> Result<Sent> {
    let policy = Policy::load(None)?;
    let reporting = parse_reporting(&policy.reports)?;
    if reporting == Reporting::Off {
        return Ok(Sent::default());
    }
    let deployments = sysroot.deployments()?;
    let mut made = 0;
    let mut os = None;
    let about = std::iter::once((&verdict.deployment, verdict.passed))
        .chain(verdict.rolled_back.iter().map(|d| (d, false)));
    for (i, (name, passed)) in about.enumerate() {
        let Some(d) = deployments.iter().find(|d| &d.dir_name() == name) else {
            continue;
        };
        let v = match (i, passed) {
            (0, true) => Verdict::Good,
            (0, false) => Verdict::Failed,
            _ => Verdict::RolledBack,
        };
        let time = (i == 0 && reporting == Reporting::On)
            .then(|| boot_time_ms(sysroot))
            .flatten();
        if queue(sysroot, d, v, time)? {
            made += 1;
            os = Some(d.os.clone());
        }
    }
    let mut sent = match os {
        Some(os) => flush(sysroot, &os, SEND_TIMEOUT)?,
        None => Sent::default(),
    };
    sent.made = made;
    Ok(sent)
}

/// Milliseconds since the kernel started, on the running system.
fn boot_time_ms(sysroot: &Sysroot) -> Option<u64> {
    if !sysroot.is_running_system() {
        return None;
    }
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Signs a report on `d` into the outbox. False when its channel names no report
/// location (or it follows no remote channel).
fn queue(sysroot: &Sysroot, d: &Deployment, v: Verdict, time: Option<u64>) -> Result<bool> {
    let Some((remote, channel)) = arbor_remote::configured_refspec(sysroot, &d.origin.refspec)
    else {
        return Ok(false);
    };
    let dir = reports_dir(sysroot, &d.os);
    let Some(sink) = read_sink(&dir, remote, channel) else {
        return Ok(false);
    };
    let version = sink
        .versions
        .get(&d.commit.to_hex())
        .cloned()
        .or_else(|| d.version.clone())
        .unwrap_or_else(|| d.commit.short());
    let key = MachineKey::load_or_create(&dir.join("key.pk8"))?;
    let at_ms = chrono::Utc::now().timestamp_millis();
    let report = Report {
        format: REPORT_FORMAT,
        channel: channel.to_string(),
        bucket: device_phase(&arbor_remote::machine_id()?, channel, &version),
        version,
        commit: d.commit,
        verdict: v,
        boot_to_verdict_ms: time,
        at_ms,
    };
    let outbox = dir.join("outbox");
    std::fs::create_dir_all(&outbox)?;
    let name = format!("{at_ms:015}~{remote}~{channel}~{}.json", v.name());
    fsutil::write_file_atomic(&outbox.join(name), &key.sign(&report)?, 0o600)
        .context("queueing a health report")?;
    trim(&outbox)?;
    Ok(true)
}

/// The outbox's reports, oldest first, with their remote and channel.
fn queued(outbox: &Path) -> Result<Vec<(PathBuf, String, String)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(outbox) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", outbox.display())),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('~').collect();
        if let [_, remote, channel, _] = parts[..] {
            out.push((e.path(), remote.to_string(), channel.to_string()));
        }
    }
    out.sort();
    Ok(out)
}

fn trim(outbox: &Path) -> Result<()> {
    let q = queued(outbox)?;
    for (path, _, _) in q.iter().take(q.len().saturating_sub(MAX_QUEUED)) {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Sends the outbox's reports, oldest first, each within `timeout`. A server that
/// refuses one keeps the rest of its channel's reports for the next check.
pub fn flush(sysroot: &Sysroot, os: &str, timeout: Duration) -> Result<Sent> {
    let dir = reports_dir(sysroot, os);
    let mut sent = Sent::default();
    let mut failing: Vec<(String, String)> = Vec::new();
    for (path, remote, channel) in queued(&dir.join("outbox"))? {
        let pair = (remote, channel);
        let sink = read_sink(&dir, &pair.0, &pair.1);
        let (Some(sink), false) = (sink, failing.contains(&pair)) else {
            sent.kept += 1;
            continue;
        };
        let body = std::fs::read(&path)?;
        let Ok((key, report)) = arbor_remote::report::SignedReport::verify(&body) else {
            // Not what this machine wrote (a disk error, an older arbor's format):
            // dropped, or it would stop every later report behind it.
            tracing::warn!("dropping {}: not a signed report", path.display());
            std::fs::remove_file(&path)?;
            continue;
        };
        let result = match &sink.form {
            Some(form) => {
                let object = format!(
                    "{}{}",
                    form.key_prefix,
                    report_name(&pair.1, &key, report.at_ms)?
                );
                let mut fields: Vec<(&str, &str)> = vec![("key", &object)];
                fields.extend(form.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                arbor_remote::http::post_form(&form.url, &fields, &body, timeout)
            }
            None => {
                let url = report_url(&sink.reports, &pair.1, &key, report.at_ms)?;
                arbor_remote::http::put(&url, &body, timeout)
            }
        };
        match result {
            Ok(()) => {
                std::fs::remove_file(&path)?;
                sent.sent += 1;
            }
            Err(e) => {
                tracing::warn!("health report kept for the next check: {e}");
                failing.push(pair);
                sent.kept += 1;
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// A server that answers every request with `status` and records request lines.
    fn server(status: u16) -> (String, std::sync::mpsc::Receiver<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/r", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if h.trim().is_empty() {
                        break;
                    }
                }
                let mut body = vec![0; len];
                std::io::Read::read_exact(&mut reader, &mut body).unwrap();
                let _ = tx.send(line.trim().to_string());
                let mut conn = conn;
                let _ = write!(conn, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            }
        });
        (url, rx)
    }

    fn queued_report(sysroot: &Sysroot, dir: &Path, n: i64) {
        let key = MachineKey::load_or_create(&dir.join("key.pk8")).unwrap();
        let report = Report {
            format: REPORT_FORMAT,
            channel: "stable".into(),
            version: "2".into(),
            commit: "ab".repeat(32).parse().unwrap(),
            bucket: 3,
            verdict: Verdict::Good,
            boot_to_verdict_ms: None,
            at_ms: n,
        };
        let outbox = reports_dir(sysroot, "debian").join("outbox");
        std::fs::create_dir_all(&outbox).unwrap();
        let name = format!("{n:015}~origin~stable~good.json");
        std::fs::write(outbox.join(name), key.sign(&report).unwrap()).unwrap();
    }

    #[test]
    fn the_outbox_waits_for_a_server_that_takes_it_and_drops_what_is_not_a_report() {
        let t = tempfile::tempdir().unwrap();
        let sysroot = Sysroot::init_fs(t.path()).unwrap();
        let dir = reports_dir(&sysroot, "debian");
        std::fs::create_dir_all(dir.join("outbox")).unwrap();
        std::fs::write(
            dir.join("outbox/000000000000001~origin~stable~good.json"),
            "junk",
        )
        .unwrap();
        queued_report(&sysroot, &dir, 2);
        queued_report(&sysroot, &dir, 3);
        let sink = |url: &str| {
            let s = Sink {
                reports: url.to_string(),
                form: None,
                versions: BTreeMap::new(),
            };
            std::fs::write(
                sink_path(&dir, "origin", "stable"),
                serde_json::to_vec(&s).unwrap(),
            )
            .unwrap();
        };
        // A server that refuses: the junk is dropped, both reports wait, and only
        // the first was tried.
        let (url, seen) = server(503);
        sink(&url);
        let sent = flush(&sysroot, "debian", Duration::from_secs(5)).unwrap();
        assert_eq!((sent.sent, sent.kept), (0, 2));
        assert_eq!(seen.try_iter().count(), 1);
        assert_eq!(queued(&dir.join("outbox")).unwrap().len(), 2);
        // One that takes them: both go, oldest first, below the channel and the key.
        let (url, seen) = server(201);
        sink(&url);
        let sent = flush(&sysroot, "debian", Duration::from_secs(5)).unwrap();
        assert_eq!((sent.sent, sent.kept), (2, 0));
        let lines: Vec<String> = seen.try_iter().collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("PUT /r/stable/") && lines[0].contains("-2.json"));
        assert!(lines[1].contains("-3.json"));
        assert!(queued(&dir.join("outbox")).unwrap().is_empty());
    }
}
