//! What an operation gave: the outcome document. One type for the three channels: the
//! CLI's `--json`, the D-Bus transaction's `Result` (`a{sv}`) and `arbor serve`'s
//! HTTP answers. The document carries `format_version` and `kind` (which verb's
//! payload it is) beside the payload's own fields, so a reader knows what it holds
//! without guessing from its shape.

use serde::Serialize;
use zvariant::Value;

use crate::update::UpdateResult;
use arbor_core::wire::{FORMAT_VERSION, entries, take};
use arbor_live::UsrStatus;
use arbor_live::apply::ApplyResult;
use arbor_live::hotfix_commit::OverlayCommit;
use arbor_live::request::OverlayListing;
use arbor_store::prune::PruneReport;
use arbor_sysroot::Deployment;
use arbor_sysroot::deploy::{CleanupResult, DeployResult};
use arbor_sysroot::etc_state::RestoreResult;
use arbor_sysroot::reset::ResetResult;
use arbor_sysroot::status::StatusRow;

/// What `upgrade` found and did.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct UpgradeOutcome {
    /// A new deployment was made (or, with download-only, fetched).
    pub upgraded: bool,
    /// The remote update's report, for a deployment following a channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateResult>,
    /// The deploy, for a deployment following a local ref.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployResult>,
    /// What following a registry image found and fetched (`switch`, and `upgrade` of
    /// a deployment that follows an image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<crate::image_follow::ImageUpdate>,
}

/// The deployments in boot order, with their roles.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct BootOrder {
    /// Index 0 boots next.
    pub deployments: Vec<StatusRow>,
}

/// The default deployment's kernel arguments (after an edit).
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct Kargs {
    /// Besides `arbor=`, in order.
    pub kargs: Vec<String>,
}

/// The payload of [`Outcome::Done`]: no fields.
#[derive(Serialize)]
struct Nothing {}

/// The document as serde writes it: the payload's fields flattened beside the two
/// that say what it is.
#[derive(Serialize)]
struct Document<'a, T: Serialize> {
    format_version: u32,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// Declares [`Outcome`] with one boxed payload per variant and its `kind` word, and
/// the conversions that follow from that list (so a new variant cannot be forgotten
/// in one of them).
macro_rules! outcomes {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $kind:literal, )*) => {
        /// What an operation gave, by verb: the outcome document (module docs).
        #[derive(Clone, Debug)]
        pub enum Outcome {
            $( $(#[$doc])* $variant(Box<$ty>), )*
            /// Nothing to report beyond success (remote remove).
            Done,
        }

        impl Outcome {
            /// The document's `kind`: which payload it carries.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( Outcome::$variant(_) => $kind, )*
                    Outcome::Done => "done",
                }
            }
        }

        impl Serialize for Outcome {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let kind = self.kind();
                let format_version = FORMAT_VERSION;
                match self {
                    $( Outcome::$variant(body) => Document { format_version, kind, body: &**body }.serialize(s), )*
                    Outcome::Done => Document { format_version, kind, body: &Nothing {} }.serialize(s),
                }
            }
        }

        impl From<Outcome> for Value<'_> {
            fn from(o: Outcome) -> Self {
                let kind = o.kind();
                let body: Value<'_> = match o {
                    $( Outcome::$variant(body) => (*body).into(), )*
                    Outcome::Done => Value::from(std::collections::HashMap::<String, Value<'_>>::new()),
                };
                let mut e = entries(body).expect("every payload is a dictionary");
                e.insert("format_version".into(), FORMAT_VERSION.into());
                e.insert("kind".into(), kind.into());
                Value::from(e)
            }
        }

        impl TryFrom<Value<'_>> for Outcome {
            type Error = zvariant::Error;
            fn try_from(v: Value<'_>) -> Result<Self, Self::Error> {
                // The derived conversions take owned ('static) values.
                let v: Value<'static> = v.try_to_owned()?.into();
                let mut e = entries(v.try_clone()?)?;
                let version: u32 = take(&mut e, "format_version")?;
                if version > FORMAT_VERSION {
                    return Err(zvariant::Error::Message(format!(
                        "an outcome of format {version}: this arbor reads up to {FORMAT_VERSION}"
                    )));
                }
                let kind: String = take(&mut e, "kind")?;
                Ok(match kind.as_str() {
                    $( $kind => Outcome::$variant(Box::new(<$ty>::try_from(v)?)), )*
                    "done" => Outcome::Done,
                    other => {
                        return Err(zvariant::Error::Message(format!(
                            "an outcome of unknown kind '{other}'"
                        )))
                    }
                })
            }
        }
    };
}

outcomes! {
    /// deploy of a local ref, install/uninstall/override.
    Deployed(DeployResult) = "deployed",
    /// deploy of a remote channel or version, rebase, check, download, auto-update.
    Update(UpdateResult) = "update",
    /// upgrade.
    Upgrade(UpgradeOutcome) = "upgrade",
    /// rollback: the boot order after it (`deployments`, as `status` has them).
    Order(BootOrder) = "boot-order",
    /// kargs: the default deployment's kernel arguments after the edit.
    Kargs(Kargs) = "kargs",
    /// cleanup.
    Cleanup(CleanupResult) = "cleanup",
    /// prune.
    Prune(PruneReport) = "prune",
    /// undeploy, pin: the deployment concerned.
    Deployment(Deployment) = "deployment",
    /// apply-live.
    ApplyLive(ApplyResult) = "apply-live",
    /// apply-live --reset, and usroverlay's status and changes of it.
    UsrStatus(UsrStatus) = "usr-status",
    /// usroverlay --list.
    OverlayListing(OverlayListing) = "overlay-listing",
    /// usroverlay --commit.
    OverlayCommit(OverlayCommit) = "overlay-commit",
    /// reset.
    Reset(ResetResult) = "reset",
    /// etc restore.
    EtcRestore(RestoreResult) = "etc-restore",
}

impl Outcome {
    /// The switch `--apply` prepared (soft-reboot, kexec or reboot), which the caller
    /// starts once it has reported the outcome ([`arbor_live::activate::start`]).
    pub fn switch(&self) -> Option<&arbor_live::activate::Switch> {
        let update = match self {
            Outcome::Update(r) => Some(r.as_ref()),
            Outcome::Upgrade(u) => u.update.as_ref(),
            _ => None,
        };
        update?.applied.as_ref()?.switch.as_ref()
    }
}

impl zvariant::Type for Outcome {
    const SIGNATURE: &'static zvariant::Signature = arbor_core::wire::DICT;
}
arbor_core::owned_value_through_value!(Outcome);

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_store::ObjectId;

    fn samples() -> Vec<Outcome> {
        vec![
            Outcome::Kargs(Box::new(Kargs {
                kargs: vec!["quiet".into()],
            })),
            Outcome::Prune(Box::new(PruneReport {
                dry_run: true,
                objects_kept: 3,
                objects_removed: 2,
                bytes_removed: 1 << 40,
            })),
            Outcome::EtcRestore(Box::new(RestoreResult {
                deployment: "os/x.0".into(),
                restored: vec!["/etc/a".into()],
                snapshot: ObjectId([9; 32]),
            })),
            Outcome::Done,
        ]
    }

    #[test]
    fn the_json_and_the_bus_say_the_same_kind_version_and_fields() {
        for o in samples() {
            let json = serde_json::to_value(&o).unwrap();
            assert_eq!(json["kind"], o.kind());
            assert_eq!(json["format_version"], FORMAT_VERSION);
            let bus = entries(Value::from(o.clone())).unwrap();
            let mut keys: Vec<&String> = bus.keys().collect();
            keys.sort();
            let mut json_keys: Vec<&String> = json.as_object().unwrap().keys().collect();
            json_keys.sort();
            assert_eq!(keys, json_keys, "{json}");
            // And back, as `arbor serve` reads it.
            let back = Outcome::try_from(Value::from(o.clone())).unwrap();
            assert_eq!(serde_json::to_value(&back).unwrap(), json);
        }
    }

    #[test]
    fn a_u64_stays_a_u64_on_the_bus() {
        let o = &samples()[1];
        let bus = entries(Value::from(o.clone())).unwrap();
        assert_eq!(bus["bytes_removed"], Value::U64(1 << 40));
    }

    #[test]
    fn an_unknown_kind_or_a_newer_format_is_refused_by_name() {
        let mut e = entries(Value::from(Outcome::Done)).unwrap();
        e.insert("kind".into(), "teleport".into());
        let err = Outcome::try_from(Value::from(e.clone())).unwrap_err();
        assert!(err.to_string().contains("unknown kind 'teleport'"), "{err}");
        e.insert("kind".into(), "done".into());
        e.insert("format_version".into(), (FORMAT_VERSION + 1).into());
        let err = Outcome::try_from(Value::from(e)).unwrap_err();
        assert!(err.to_string().contains("format"), "{err}");
    }
}
