//! What a freshly verified index means for this machine beyond the offer
//! (docs/fleet.md): where its health reports go (and the queued ones go out), and
//! whether the publisher withdrew the version it staged.

use anyhow::Result;

use arbor_core::lock::WriterLock;
use arbor_remote::index::ChannelIndex;
use arbor_statedb::HistoryKind;
use arbor_sysroot::Sysroot;

use crate::report;

/// Remembers the channel's report location and sends what waits in the outbox
/// (best effort: a report never stops an update).
pub(super) fn note_reports(sysroot: &Sysroot, os: &str, remote: &str, idx: &ChannelIndex) {
    if let Err(e) = report::note_channel(sysroot, os, remote, idx) {
        tracing::warn!("remembering where health reports go: {e:#}");
    }
    match report::flush(sysroot, os, report::SEND_TIMEOUT) {
        Ok(s) if s.sent > 0 => tracing::info!("health reports sent: {}", s.sent),
        Ok(_) => {}
        Err(e) => tracing::warn!("sending health reports: {e:#}"),
    }
}

/// Drops the pending deployment (staged, not booted) when the channel now marks its
/// version withdrawn: a halted rollout reaches machines that have not rebooted into
/// it yet. Returns the withdrawn version when it did.
pub(super) fn drop_withdrawn(
    sysroot: &Sysroot,
    lock: &WriterLock,
    os: &str,
    idx: &ChannelIndex,
) -> Result<Option<String>> {
    let pending = match sysroot.staged()? {
        Some(d) => Some(d),
        None => sysroot
            .deployments()?
            .into_iter()
            .next()
            .filter(|d| !d.booted),
    };
    let Some(d) = pending.filter(|d| d.os == os) else {
        return Ok(None);
    };
    let base = arbor_packages::layer::base_of(sysroot.repo(), &d.commit)?;
    let Some(v) = idx
        .versions
        .iter()
        .rev()
        .find(|v| v.commit == base && v.withdrawn)
    else {
        return Ok(None);
    };
    if arbor_sysroot::deploy::drop_pending(sysroot, lock)?.is_none() {
        return Ok(None);
    }
    sysroot.note(HistoryKind::Undeploy, &Ok(()));
    tracing::info!(
        "version {} was withdrawn by its publisher: the staged deployment {} was dropped",
        v.version,
        d.dir_name()
    );
    Ok(Some(v.version.clone()))
}
