//! What holds automatic downloads back (docs/fleet.md): a metered connection, as
//! NetworkManager says, and the policy's daily byte quota. A user's own `arbor
//! upgrade` is not held back by either; its bytes count toward the day's total.

use anyhow::Result;

use super::Policy;
use super::state::UpdateRecord;

/// NetworkManager's word on the machine's connection, from its `Metered` property on
/// the system bus (`DBUS_SYSTEM_BUS_ADDRESS` names another bus): true for "yes" and
/// "guess-yes". None when it cannot be asked (no bus, no NetworkManager): a machine
/// without NetworkManager is not metered as far as arbor can tell.
pub fn metered() -> Option<bool> {
    let conn = zbus::blocking::Connection::system().ok()?;
    let nm = zbus::blocking::Proxy::new(
        &conn,
        "org.freedesktop.NetworkManager",
        "/org/freedesktop/NetworkManager",
        "org.freedesktop.NetworkManager",
    )
    .ok()?;
    // NMMetered: 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no.
    let m: u32 = nm.get_property("Metered").ok()?;
    Some(matches!(m, 1 | 3))
}

/// Today, as the quota counts days (UTC).
fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// Counts `bytes` downloaded into today's total.
pub fn count(rec: &mut UpdateRecord, bytes: u64) {
    let day = today();
    if rec.downloaded_day != day {
        rec.downloaded_day = day;
        rec.downloaded_bytes = 0;
    }
    rec.downloaded_bytes = rec.downloaded_bytes.saturating_add(bytes);
}

/// Bytes downloaded today.
pub fn today_bytes(rec: &UpdateRecord) -> u64 {
    if rec.downloaded_day == today() {
        rec.downloaded_bytes
    } else {
        0
    }
}

/// Why an automatic download of `bytes` must wait, if it must: a metered connection
/// (unless the version is critical, or the policy allows it), or a download that would
/// pass the daily quota (critical or not: the quota is the machine's bill).
pub fn hold_back(
    policy: &Policy,
    rec: &UpdateRecord,
    critical: bool,
    bytes: u64,
    metered: impl FnOnce() -> Option<bool>,
) -> Result<Option<String>> {
    if !critical && !policy.metered_download && metered() == Some(true) {
        return Ok(Some(
            "the connection is metered (NetworkManager): automatic downloads wait \
             (metered_download = true allows them; critical versions come regardless)"
                .into(),
        ));
    }
    if let Some(quota) = policy.daily_quota()? {
        let used = today_bytes(rec);
        if used.saturating_add(bytes) > quota {
            return Ok(Some(format!(
                "the daily quota: {used} bytes downloaded today, {bytes} more would pass \
                 daily_quota ({quota} bytes)"
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metered_and_quota_hold_automatic_downloads_back() {
        let mut p = Policy::default();
        let mut rec = UpdateRecord::default();
        let yes = || Some(true);
        let unknown = || None;
        assert!(
            hold_back(&p, &rec, false, 10, yes)
                .unwrap()
                .unwrap()
                .contains("metered")
        );
        assert!(
            hold_back(&p, &rec, true, 10, yes).unwrap().is_none(),
            "critical"
        );
        assert!(hold_back(&p, &rec, false, 10, unknown).unwrap().is_none());
        p.metered_download = true;
        assert!(hold_back(&p, &rec, false, 10, yes).unwrap().is_none());
        p.daily_quota = "1K".into();
        count(&mut rec, 1000);
        assert_eq!(today_bytes(&rec), 1000);
        assert!(hold_back(&p, &rec, false, 24, yes).unwrap().is_none());
        let why = hold_back(&p, &rec, true, 25, yes).unwrap().unwrap();
        assert!(why.contains("daily quota"), "{why}");
        // Yesterday's bytes do not count.
        rec.downloaded_day = "2000-01-01".into();
        assert_eq!(today_bytes(&rec), 0);
        count(&mut rec, 5);
        assert_eq!(today_bytes(&rec), 5);
    }
}
