//! Kernel arguments of the default deployment, edited as `rpm-ostree kargs` edits them.

use anyhow::{Context, Result, bail};

use crate::Sysroot;
use arbor_core::lock::WriterLock;

/// A change to the kernel command line, as `rpm-ostree kargs` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KargEdit {
    /// Add `KEY=VALUE` (or `KEY`), even if the key is already there.
    Append(String),
    /// Remove `KEY=VALUE` exactly, or every `KEY…` when no value is given.
    Delete(String),
    /// `KEY=NEW` replaces every `KEY=…`; `KEY=OLD=NEW` replaces that one value.
    Replace(String),
}

fn key_of(arg: &str) -> &str {
    arg.split_once('=').map(|(k, _)| k).unwrap_or(arg)
}

/// Applies edits to a command line, in order; an edit that matches nothing is an error
/// (a typo should not pass silently).
pub fn edit_kargs(kargs: &[String], edits: &[KargEdit]) -> Result<Vec<String>> {
    let mut out = kargs.to_vec();
    for e in edits {
        match e {
            KargEdit::Append(a) => out.push(a.clone()),
            KargEdit::Delete(d) => {
                let before = out.len();
                if d.contains('=') {
                    out.retain(|a| a != d);
                } else {
                    out.retain(|a| key_of(a) != d);
                }
                if out.len() == before {
                    bail!("no kernel argument '{d}' to delete");
                }
            }
            KargEdit::Replace(r) => {
                let (key, rest) = r
                    .split_once('=')
                    .with_context(|| format!("--replace '{r}': expected KEY=VALUE"))?;
                let (old, new) = match rest.split_once('=') {
                    Some((old, new)) => (Some(format!("{key}={old}")), new),
                    None => (None, rest),
                };
                let mut found = false;
                for a in out.iter_mut() {
                    if key_of(a) == key && old.as_ref().is_none_or(|o| a == o) {
                        *a = format!("{key}={new}");
                        found = true;
                    }
                }
                if !found {
                    bail!(
                        "no kernel argument '{}' to replace",
                        old.unwrap_or_else(|| key.to_string())
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Edits the kernel arguments of the default deployment (index 0) and writes a new
/// boot configuration with them, the sysroot lock held; returns them.
pub fn kargs(sysroot: &Sysroot, lock: &WriterLock, edits: &[KargEdit]) -> Result<Vec<String>> {
    let mut order = sysroot.deployments()?;
    let first = order.first_mut().context("there is no deployment")?;
    first.kargs = edit_kargs(&first.kargs, edits)?;
    let new = first.kargs.clone();
    sysroot.write_boot_order(lock, &order)?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kargs_edits_follow_rpm_ostree() {
        let base = v(&["quiet", "console=tty0", "console=ttyS0,115200"]);
        assert_eq!(
            edit_kargs(&base, &[KargEdit::Append("debug".into())]).unwrap(),
            v(&["quiet", "console=tty0", "console=ttyS0,115200", "debug"])
        );
        assert_eq!(
            edit_kargs(&base, &[KargEdit::Delete("console=tty0".into())]).unwrap(),
            v(&["quiet", "console=ttyS0,115200"])
        );
        assert_eq!(
            edit_kargs(&base, &[KargEdit::Delete("console".into())]).unwrap(),
            v(&["quiet"])
        );
        assert_eq!(
            edit_kargs(&base, &[KargEdit::Replace("console=tty0=tty1".into())]).unwrap(),
            v(&["quiet", "console=tty1", "console=ttyS0,115200"])
        );
        assert_eq!(
            edit_kargs(&base, &[KargEdit::Replace("quiet=1".into())]).unwrap()[0],
            "quiet=1"
        );
        assert!(edit_kargs(&base, &[KargEdit::Delete("nosuch".into())]).is_err());
        assert!(edit_kargs(&base, &[KargEdit::Replace("nosuch=1".into())]).is_err());
    }
}
