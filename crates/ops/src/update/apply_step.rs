//! `--apply`: carrying the activation ladder's step out once the update is staged
//! (docs/activation.md). Live is apply-live with the changed services restarted; a
//! soft-reboot, a kexec or a reboot is prepared here (finalized, assembled or loaded,
//! recorded) and started by the caller once it has said so ([`arbor_live::activate`]).

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use arbor_core::lock::WriterLock;
use arbor_live::activate::{self, Switch};
use arbor_live::activation::Step;
use arbor_live::apply::ApplyOptions;
use arbor_live::apply::Planned;
use arbor_live::ladder::{self, Activation, Limits};
use arbor_sysroot::Sysroot;

/// What `--apply` did with the staged update.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Applied {
    /// The step taken: live, soft-reboot, kexec or reboot.
    pub step: String,
    /// Live: the units restarted.
    pub restarted: Vec<String>,
    /// The switch prepared for the caller to start (`step` is not live); none on a
    /// sysroot that is not the running system, which arbor never reboots.
    pub switch: Option<Switch>,
    /// Why the step taken is stronger than the one chosen (it failed to prepare).
    pub note: String,
}

/// The ladder's limits for an update: `--apply STEP` (the mildest step allowed; none
/// or auto allows every step) and the steps the policy forbids.
pub fn limits(apply: Option<Step>, forbid: &[String]) -> Result<Limits> {
    let mut forbidden = BTreeSet::new();
    for name in forbid {
        match Step::parse(name) {
            Some(Step::Reboot) => bail!("a reboot cannot be forbidden (apply_forbid)"),
            Some(s) => {
                forbidden.insert(s);
            }
            None => bail!("apply_forbid: '{name}' is not live, soft-reboot or kexec"),
        }
    }
    Ok(Limits {
        cap: apply.unwrap_or(Step::Live),
        forbidden,
    })
}

/// Parses `--apply` and the policy's `apply`: `auto` (every step allowed) or a step,
/// the mildest allowed.
pub fn parse_apply(word: &str) -> Result<Step> {
    match word {
        "auto" => Ok(Step::Live),
        w => Step::parse(w).with_context(|| {
            format!(
                "'{w}' is not a way to apply an update: auto, live, soft-reboot, kexec or reboot"
            )
        }),
    }
}

/// Carries out `chosen` for the staged update. A soft-reboot or kexec that cannot be
/// prepared (the kernel refuses the image, the root cannot be assembled) becomes a
/// reboot, with the reason in [`Applied::note`]: the update is staged either way.
/// `planned` is the apply-live plan `chosen` was made from, if the caller has it.
pub(crate) fn carry_out(
    sysroot: &Sysroot,
    lock: &WriterLock,
    chosen: &Activation,
    planned: Option<Planned>,
) -> Result<Applied> {
    let step = Step::parse(&chosen.step).context("the chosen step")?;
    let booted = arbor_live::booted(sysroot)?;
    if step == Step::Live {
        let root = ladder::live_root(sysroot, &booted);
        let opts = ApplyOptions {
            restart_services: true,
            ..ApplyOptions::default()
        };
        let r = match planned {
            Some(plan) => arbor_live::apply::apply_live_planned(sysroot, lock, &root, &opts, plan),
            None => arbor_live::apply::apply_live(sysroot, lock, &root, &opts),
        }
        .context("applying the update live")?;
        // The step taken, in this operation's row of the history.
        sysroot.set_history_detail(match r.restarted.as_slice() {
            [] => "applied live".to_string(),
            units => format!("applied live; restarted {}", units.join(" ")),
        });
        return Ok(Applied {
            step: step.name().to_string(),
            restarted: r.restarted,
            ..Applied::default()
        });
    }
    if !sysroot.is_running_system() {
        return Ok(Applied {
            step: step.name().to_string(),
            note: "not the running system: nothing was switched".to_string(),
            ..Applied::default()
        });
    }
    match activate::prepare(sysroot, lock, step) {
        Ok(s) => Ok(Applied {
            step: step.name().to_string(),
            switch: Some(s),
            ..Applied::default()
        }),
        Err(e) if step != Step::Reboot => {
            tracing::warn!("{step} could not be prepared, rebooting instead: {e:#}");
            let s = activate::prepare(sysroot, lock, Step::Reboot)?;
            Ok(Applied {
                step: Step::Reboot.name().to_string(),
                switch: Some(s),
                note: format!("{step} could not be prepared: {e:#}"),
                ..Applied::default()
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_words_and_forbidden_steps_parse() {
        assert_eq!(parse_apply("auto").unwrap(), Step::Live);
        assert_eq!(parse_apply("kexec").unwrap(), Step::Kexec);
        assert!(format!("{:#}", parse_apply("fast").unwrap_err()).contains("'fast'"));
        let l = limits(Some(Step::SoftReboot), &["kexec".into()]).unwrap();
        assert_eq!(l.cap, Step::SoftReboot);
        assert!(l.forbidden.contains(&Step::Kexec));
        assert!(limits(None, &["reboot".into()]).is_err());
        assert!(limits(None, &["warp".into()]).is_err());
    }
}
