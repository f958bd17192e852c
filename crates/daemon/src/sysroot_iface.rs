//! The `org.arbor.Arbor1.Sysroot` interface on `/org/arbor/Arbor1`: the sysroot's state
//! as properties, and the methods that start transactions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zbus::message::Header;
use zbus::object_server::{ObjectServer, SignalEmitter};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{fdo, interface};

use super::options::{self, Options};
use super::snapshot::{Fingerprint, Snapshot};
use super::transaction::{self, Call, Job};
use super::{DaemonError, Shared, auth, policy};
use arbor_core::wire::{Maybe, dict};
use arbor_live::{self as live, apply::ApplyOptions};
use arbor_ops::update::Action;
use arbor_ops::update::policy::Policy;
use arbor_ops::update::state::{Offer, UpdateRecord};
use arbor_ops::{DeployRequest, Request, UpgradeRequest};
use arbor_packages::layer::LayerEdit;
use arbor_statedb::HistoryEntry;
use arbor_sysroot::Sysroot;
use arbor_sysroot::etc_state;
use arbor_sysroot::kargs::KargEdit;
use arbor_sysroot::reset::ResetLevel;
use arbor_sysroot::status::{Status, StatusRow, UpdateState};

/// An `a{sv}` dictionary: what the methods that return a document reply with.
pub type Dict = HashMap<String, OwnedValue>;

/// A document as a method's reply.
fn reply<'a, T: Into<zbus::zvariant::Value<'a>>>(doc: T) -> anyhow::Result<Dict> {
    Ok(dict(doc)?)
}

/// The sysroot interface's object.
pub struct SysrootIface {
    shared: Arc<Shared>,
    cache: Mutex<Option<(Fingerprint, Arc<Snapshot>)>>,
}

impl SysrootIface {
    /// The interface over the daemon's shared state.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SysrootIface {
            shared,
            cache: Mutex::new(None),
        }
    }

    fn snapshot(&self) -> fdo::Result<Arc<Snapshot>> {
        self.shared.touch();
        Snapshot::cached(&self.cache, &self.shared)
    }

    /// Starts a layering transaction; the edit is checked when it runs, under the lock.
    async fn layer(
        &self,
        edit: LayerEdit,
        options: HashMap<String, OwnedValue>,
        (hdr, conn, server): (&Header<'_>, &zbus::Connection, &ObjectServer),
        (method, action): (&'static str, &'static str),
    ) -> Result<OwnedObjectPath, DaemonError> {
        let o = Options::for_transaction(options, &["os"])?;
        let what = Call::new(method, action, &o)?;
        let req = Request::Layer {
            os: o.string("os")?,
            edit,
        };
        self.begin(hdr, conn, server, what, transaction::op(req))
            .await
    }

    fn row_where(
        &self,
        pick: impl Fn(&Status) -> Option<StatusRow>,
    ) -> fdo::Result<Maybe<StatusRow>> {
        Ok(Maybe(pick(&self.snapshot()?.status)))
    }

    async fn begin(
        &self,
        hdr: &Header<'_>,
        conn: &zbus::Connection,
        server: &ObjectServer,
        what: Call,
        job: Job,
    ) -> Result<OwnedObjectPath, DaemonError> {
        self.shared.touch();
        let caller = auth::authorize(conn, hdr, what.action).await?;
        transaction::start(&self.shared, server, &what, caller, job).await
    }

    /// [`Self::begin`] for a method that must read the system to check its arguments:
    /// the caller is authorized first, so nobody learns anything (which refs exist)
    /// from a call they may not make.
    async fn begin_checked(
        &self,
        (hdr, conn, server): (&Header<'_>, &zbus::Connection, &ObjectServer),
        what: Call,
        check: impl FnOnce() -> Result<Job, DaemonError>,
    ) -> Result<OwnedObjectPath, DaemonError> {
        self.shared.touch();
        let caller = auth::authorize(conn, hdr, what.action).await?;
        let job = check()?;
        transaction::start(&self.shared, server, &what, caller, job).await
    }
}

/// Deployments, boot roles and the running transaction, and the methods that change
/// them. Each method returns the path of a new transaction object at once.
#[interface(name = "org.arbor.Arbor1.Sysroot")]
impl SysrootIface {
    /// Deploys REFSPEC as `arbor deploy` does: a ref, a commit id, REF^ for an older
    /// commit of REF, or REMOTE:CHANNEL of a configured remote (fetched and staged as
    /// the channel offers). Options: "os" (s), "stage" (b), "kernel-args" (as,
    /// replaces the inherited ones), "version" (s: a version of the channel),
    /// "phase-override" (b).
    #[zbus(out_args("transaction"))]
    async fn deploy(
        &self,
        refspec: &str,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        options::check_args("refspec", [refspec])?;
        let o = Options::for_transaction(
            options,
            &[
                "os",
                "stage",
                "kernel-args",
                "version",
                "phase-override",
                "apply",
            ],
        )?;
        let what = Call::new("Deploy", "org.arbor.Arbor1.deploy", &o)?;
        let shared = self.shared.clone();
        self.begin_checked((&hdr, conn, server), what, move || {
            let d = DeployRequest {
                rev: (!refspec.is_empty()).then(|| refspec.to_string()),
                version: o.string("version")?,
                os: o.string("os")?,
                kargs: o.strings("kernel-args")?.unwrap_or_default(),
                stage: o.bool("stage")?.unwrap_or(false),
                phase_override: o.bool("phase-override")?.unwrap_or(false),
                apply: apply_option(&o)?,
                // The policy's max_rate caps the daemon's downloads.
                max_rate: None,
            };
            // A local ref that does not exist is the caller's mistake: say so now.
            let sysroot = Sysroot::open(&shared.sysroot).map_err(DaemonError::failed)?;
            if d.update_options(&sysroot).is_none() {
                sysroot
                    .repo()
                    .resolve_rev(refspec)
                    .map_err(|e| DaemonError::InvalidArgs(format!("{e:#}")))?;
            }
            Ok(transaction::op(Request::Deploy(d)))
        })
        .await
    }

    /// Switches to another channel as `arbor rebase` does: CHANNEL on the remote the
    /// deployment follows, or REMOTE:CHANNEL; fetches and stages what it offers. A
    /// container image (docker://HOST/NAME:TAG) is followed as `arbor switch` does.
    /// Options: "os" (s), "version" (s), "phase-override" (b); for an image "os" and
    /// "digest" (s, pins one). A registry login is for the command line.
    #[zbus(out_args("transaction"))]
    async fn rebase(
        &self,
        channel: String,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        options::check_args("channel", [channel.as_str()])?;
        if channel.is_empty() {
            return Err(DaemonError::InvalidArgs("name the channel".into()));
        }
        let (o, req) = if arbor_ops::image_follow::is_image_ref(&channel) {
            let o = Options::for_transaction(options, &["os", "digest"])?;
            let req = Request::Switch(arbor_ops::image_follow::SwitchRequest {
                image: channel,
                digest: o.string("digest")?,
                os: o.string("os")?,
                credentials: None,
            });
            (o, req)
        } else {
            let o = Options::for_transaction(options, &["os", "version", "phase-override"])?;
            let req = Request::Rebase {
                channel,
                os: o.string("os")?,
                version: o.string("version")?,
                phase_override: o.bool("phase-override")?.unwrap_or(false),
            };
            (o, req)
        };
        let what = Call::new("Rebase", "org.arbor.Arbor1.rebase", &o)?;
        self.begin(&hdr, conn, server, what, transaction::op(req))
            .await
    }

    /// Makes the rollback deployment the next boot. No options yet.
    #[zbus(out_args("transaction"))]
    async fn rollback(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        let o = Options::for_transaction(options, &[])?;
        let what = Call::new("Rollback", "org.arbor.Arbor1.rollback", &o)?;
        let job = transaction::op(Request::Rollback);
        self.begin(&hdr, conn, server, what, job).await
    }

    /// Layers archive packages (by name) on the default deployment: a new deployment.
    /// Options: "os" (s). Local files are for the CLI: the daemon would read them as
    /// root on behalf of any authorized caller.
    #[zbus(out_args("transaction"))]
    async fn install(
        &self,
        packages: Vec<String>,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        options::check_args("packages", packages.iter().map(String::as_str))?;
        let edit = LayerEdit::Install {
            names: packages,
            files: Vec::new(),
        };
        let what = ("Install", "org.arbor.Arbor1.install");
        self.layer(edit, options, (&hdr, conn, server), what).await
    }

    /// Removes layered packages: a new deployment. Options: "os" (s).
    #[zbus(out_args("transaction"))]
    async fn uninstall(
        &self,
        packages: Vec<String>,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        options::check_args("packages", packages.iter().map(String::as_str))?;
        let what = ("Uninstall", "org.arbor.Arbor1.install");
        let edit = LayerEdit::Uninstall(packages);
        self.layer(edit, options, (&hdr, conn, server), what).await
    }

    /// Deploys the tip of the ref the default deployment tracks, layers re-applied; for
    /// a deployment following a remote channel, checks, downloads (DownloadProgress)
    /// and stages the version offered to this device. The transaction's Result says
    /// `{"upgraded": false}` when there was nothing new. Options: "os" (s), "check"
    /// (b), "download-only" (b), "phase-override" (b).
    #[zbus(out_args("transaction"))]
    async fn upgrade(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        let o = Options::for_transaction(
            options,
            &["os", "check", "download-only", "phase-override", "apply"],
        )?;
        let action = if o.bool("check")?.unwrap_or(false) {
            Action::Check
        } else if o.bool("download-only")?.unwrap_or(false) {
            Action::Download
        } else {
            Action::Stage
        };
        let req = upgrade_request(&o, action)?;
        let what = Call::new("Upgrade", "org.arbor.Arbor1.upgrade", &o)?;
        self.begin(&hdr, conn, server, what, transaction::op(req))
            .await
    }

    /// Asks the followed channel what it offers this device, as a checking `arbor
    /// upgrade` does: nothing is fetched but the signed index, the offered version's
    /// package list and, when the cheapest path needs it, its manifest. The finding is
    /// AvailableUpdate (PropertiesChanged when it changes) and the transaction's Result.
    /// Options: "os" (s), "phase-override" (b).
    #[zbus(out_args("transaction"))]
    async fn check(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        let o = Options::for_transaction(options, &["os", "phase-override"])?;
        let req = upgrade_request(&o, Action::Check)?;
        let what = Call::new("Check", "org.arbor.Arbor1.check", &o)?;
        self.begin(&hdr, conn, server, what, transaction::op(req))
            .await
    }

    /// Makes the running system show the pending deployment without a reboot
    /// (docs/live.md). Options: "packages" (as), "restart-services" (b), "dry-run"
    /// (b), "force" (b), "reset" (b). The Result is the plan carried out.
    #[zbus(out_args("transaction"))]
    async fn apply_live(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        let o = Options::for_transaction(
            options,
            &["packages", "restart-services", "dry-run", "force", "reset"],
        )?;
        let reset = o.bool("reset")?.unwrap_or(false);
        let opts = ApplyOptions {
            packages: o.strings("packages")?,
            restart_services: o.bool("restart-services")?.unwrap_or(false),
            dry_run: o.bool("dry-run")?.unwrap_or(false),
            force: o.bool("force")?.unwrap_or(false),
        };
        let root = self.shared.root.clone();
        let req = if reset {
            Request::ApplyLiveReset { root }
        } else {
            Request::ApplyLive { root, opts }
        };
        let what = Call::new("ApplyLive", "org.arbor.Arbor1.apply-live", &o)?;
        self.begin(&hdr, conn, server, what, transaction::op(req))
            .await
    }

    /// A writable overlay on the running system's /usr, and what `arbor usroverlay`
    /// does with it (docs/live.md). Options: "hotfix" (b: kept across reboots), "name"
    /// (s: its label), "add" (a{sh}: destination path below /usr → an open file to copy
    /// there), "commit" (b: make it a commit and deploy it) with "message" (s), and
    /// "remove" (b: unmount and drop it).
    #[zbus(out_args("transaction"))]
    async fn usr_overlay(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        let o = Options::for_transaction(options, options::USROVERLAY_OPTIONS)?;
        let what = Call::new("UsrOverlay", "org.arbor.Arbor1.apply-live", &o)?;
        let (shared, root) = (self.shared.clone(), self.shared.root.clone());
        self.begin_checked((&hdr, conn, server), what, move || {
            let sysroot = Sysroot::open(&shared.sysroot).map_err(DaemonError::failed)?;
            // Files passed by descriptor are copied here; it goes with the job.
            let run = sysroot.run_dir().join("arbor");
            std::fs::create_dir_all(&run).map_err(|e| DaemonError::failed(e.into()))?;
            let staging = tempfile::Builder::new()
                .prefix("dbus-add.")
                .tempdir_in(&run)
                .map_err(|e| DaemonError::failed(e.into()))?;
            let req = Request::UsrOverlay {
                root,
                req: options::usroverlay_request(&o, staging.path())?,
            };
            let job = transaction::op(req);
            Ok(Box::new(move |sysroot, lock, who, obs| {
                let out = job(sysroot, lock, who, obs);
                drop(staging);
                out
            }))
        })
        .await
    }

    /// What an overlay changed, as the listing of `arbor usroverlay` has it (deployment,
    /// kind, name, mounted, committed, upper, changes): the booted deployment's, or
    /// with "deployment" (s: index or commit prefix) another deployment's kept
    /// hotfix. It only reads, so any caller may ask.
    #[zbus(out_args("listing"))]
    async fn list_usr_overlay(
        &self,
        options: HashMap<String, OwnedValue>,
    ) -> Result<Dict, DaemonError> {
        let o = Options::parse(options, &["deployment"])?;
        self.shared.touch();
        let sysroot = Sysroot::open(&self.shared.sysroot).map_err(DaemonError::failed)?;
        let which = o.string("deployment")?;
        let listing = live::request::list(&sysroot, &self.shared.root, which.as_deref())
            .map_err(DaemonError::failed)?;
        reply(listing).map_err(DaemonError::failed)
    }

    /// How a deployment's /etc differs from its image, as the JSON of `arbor etc
    /// diff` says it (docs/dbus.md): deployment, booted, staged, drift (aa{sv}: path,
    /// change, aspects), merge (for a deployment not booted yet: path, outcome, saved)
    /// and snapshot. Options: "deployment" (s: index, commit prefix or "staged";
    /// default the booted one). Needs org.arbor.Arbor1.etc-diff.
    #[zbus(out_args("diff"))]
    async fn etc_diff(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Dict, DaemonError> {
        let o = Options::parse(options, &["deployment"])?;
        self.shared.touch();
        auth::authorize(conn, &hdr, "org.arbor.Arbor1.etc-diff").await?;
        let which = o.string("deployment")?;
        let read = || -> anyhow::Result<Dict> {
            let sysroot = Sysroot::open(&self.shared.sysroot)?;
            let d = etc_state::pick(&sysroot, which.as_deref())?;
            reply(etc_state::diff(&sysroot, &d)?)
        };
        read().map_err(DaemonError::failed)
    }

    /// Puts the image's defaults of PATHS (below /etc) back, as `arbor etc restore`
    /// does, after a snapshot of /etc as it was. Options: "deployment" (s). Needs
    /// org.arbor.Arbor1.etc-restore.
    #[zbus(out_args("transaction"))]
    async fn etc_restore(
        &self,
        paths: Vec<String>,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        options::check_args("paths", paths.iter().map(String::as_str))?;
        let o = Options::for_transaction(options, &["deployment"])?;
        if paths.is_empty() || paths.len() > etc_state::MAX_RESTORE_PATHS {
            return Err(DaemonError::InvalidArgs(format!(
                "give 1 to {} paths below /etc",
                etc_state::MAX_RESTORE_PATHS
            )));
        }
        for p in &paths {
            etc_state::etc_relative(p).map_err(|e| DaemonError::InvalidArgs(format!("{e:#}")))?;
        }
        let req = Request::EtcRestore {
            deployment: o.string("deployment")?,
            paths,
        };
        let what = Call::new("EtcRestore", "org.arbor.Arbor1.etc-restore", &o)?;
        self.begin(&hdr, conn, server, what, transaction::op(req))
            .await
    }

    /// A factory reset, as `arbor reset` does at LEVEL: "etc", "var" or "all".
    /// The previous deployment stays as the rollback, so Rollback undoes it. Refused
    /// while an update is staged. Needs org.arbor.Arbor1.reset (always asks an
    /// administrator).
    #[zbus(out_args("transaction"))]
    async fn reset(
        &self,
        level: String,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        options::check_args("level", [level.as_str()])?;
        let o = Options::for_transaction(options, &[])?;
        let level =
            ResetLevel::parse(&level).map_err(|e| DaemonError::InvalidArgs(e.to_string()))?;
        let what = Call::new("Reset", "org.arbor.Arbor1.reset", &o)?;
        self.begin(
            &hdr,
            conn,
            server,
            what,
            transaction::op(Request::Reset(level)),
        )
        .await
    }

    /// The transaction history, newest first (keys as LastTransaction's). Options:
    /// "limit" (u, 1 to 1000; 20 by default).
    #[zbus(out_args("entries"))]
    async fn history(
        &self,
        options: HashMap<String, OwnedValue>,
    ) -> Result<Vec<Dict>, DaemonError> {
        let o = Options::parse(options, &["limit"])?;
        self.shared.touch();
        let limit: u32 = o.typed("limit", "an unsigned integer (u)")?.unwrap_or(20);
        if !(1..=1000).contains(&limit) {
            return Err(DaemonError::InvalidArgs("limit: 1 to 1000".into()));
        }
        let read = || -> anyhow::Result<Vec<Dict>> {
            let sysroot = Sysroot::open(&self.shared.sysroot)?;
            let db = arbor_statedb::StateDb::open(&sysroot.state_db_path())?;
            db.history(limit as usize)?.into_iter().map(reply).collect()
        };
        read().map_err(DaemonError::failed)
    }

    /// The package changes from commit FROM to commit TO (full ids), as `arbor db
    /// diff` lists them: upgraded, downgraded (name, from, to), added, removed (name,
    /// version). Options: none.
    #[zbus(out_args("changes"))]
    async fn package_diff(
        &self,
        from: String,
        to: String,
        options: HashMap<String, OwnedValue>,
    ) -> Result<Dict, DaemonError> {
        Options::parse(options, &[])?;
        self.shared.touch();
        let id = |s: &str| {
            s.parse::<arbor_store::ObjectId>()
                .map_err(|_| DaemonError::InvalidArgs("a commit is 64 hexadecimal digits".into()))
        };
        let (from, to) = (id(&from)?, id(&to)?);
        let read = || -> anyhow::Result<Dict> {
            let sysroot = Sysroot::open(&self.shared.sysroot)?;
            let repo = sysroot.repo();
            let d = arbor_store::dpkg::diff(
                &arbor_store::dpkg::packages_of(repo, &from)?,
                &arbor_store::dpkg::packages_of(repo, &to)?,
            );
            reply(d)
        };
        read().map_err(DaemonError::failed)
    }

    /// Removes unreferenced deployments and kernels, then prunes the repository.
    #[zbus(out_args("transaction"))]
    async fn cleanup(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        let o = Options::for_transaction(options, &[])?;
        let what = Call::new("Cleanup", "org.arbor.Arbor1.cleanup", &o)?;
        let job = transaction::op(Request::Cleanup);
        self.begin(&hdr, conn, server, what, job).await
    }

    /// Edits the default deployment's kernel arguments as `arbor kargs` does: append
    /// KEY=VALUE, delete KEY[=VALUE], replace KEY=[OLD=]NEW.
    #[zbus(out_args("transaction"))]
    #[allow(clippy::too_many_arguments)] // four D-Bus arguments, three injected by zbus
    async fn kernel_args(
        &self,
        append: Vec<String>,
        delete: Vec<String>,
        replace: Vec<String>,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, DaemonError> {
        let o = Options::for_transaction(options, &[])?;
        let all = append.iter().chain(&delete).chain(&replace);
        options::check_args("kernel arguments", all.map(String::as_str))?;
        let edits: Vec<KargEdit> = append
            .into_iter()
            .map(KargEdit::Append)
            .chain(delete.into_iter().map(KargEdit::Delete))
            .chain(replace.into_iter().map(KargEdit::Replace))
            .collect();
        if edits.is_empty() {
            return Err(DaemonError::InvalidArgs(
                "no kernel argument to append, delete or replace".into(),
            ));
        }
        let what = Call::new("KernelArgs", "org.arbor.Arbor1.kernel-args", &o)?;
        let job = transaction::op(Request::Kargs(edits));
        self.begin(&hdr, conn, server, what, job).await
    }

    /// Keeps the daemon running while the caller is on the bus: a panel that shows the
    /// state and follows progress registers, and the daemon does not exit on idle
    /// until it unregisters or leaves the bus. Any caller may; options: "id" (s), a
    /// name for the logs.
    async fn register_client(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), DaemonError> {
        let o = Options::parse(options, &["id"])?;
        self.shared.touch();
        let sender = client_name(&hdr)?;
        // Every option is checked before anything is recorded.
        let id = o.string("id")?.unwrap_or_default();
        self.shared.clients.register(&sender)?;
        tracing::info!(client = %sender, id = %id, "client registered");
        Ok(())
    }

    /// Undoes RegisterClient: the daemon may exit on idle again once no client is
    /// registered. Options: none.
    async fn unregister_client(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(), DaemonError> {
        Options::parse(options, &[])?;
        self.shared.touch();
        let sender = client_name(&hdr)?;
        if !self.shared.clients.unregister(&sender) {
            return Err(DaemonError::InvalidArgs(format!(
                "{sender} is not a registered client"
            )));
        }
        tracing::info!(client = %sender, "client unregistered");
        Ok(())
    }

    /// Changes the automatic-update policy (any of the names AutomaticUpdatePolicy
    /// shows) and saves it where `arbor auto-update` reads it. Needs
    /// org.arbor.Arbor1.set-policy; a wrong name or value changes nothing.
    async fn set_automatic_update_policy(
        &self,
        changes: HashMap<String, OwnedValue>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), DaemonError> {
        self.shared.touch();
        auth::authorize(conn, &hdr, "org.arbor.Arbor1.set-policy").await?;
        policy::set(changes)?;
        self.automatic_update_policy_changed(&emitter).await?;
        Ok(())
    }

    /// Cancels the active transaction: one waiting for its Start is abandoned at once,
    /// a running one stops at its next safe point (see the transaction's own Cancel).
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), DaemonError> {
        self.shared.touch();
        auth::authorize(conn, &hdr, "org.arbor.Arbor1.cancel").await?;
        let active = self.shared.active.lock().unwrap();
        let a = active.as_ref().ok_or_else(|| {
            DaemonError::failed(
                arbor_core::error::Error::NothingPending("no transaction is running".into()).into(),
            )
        })?;
        a.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        // One waiting for its Start is abandoned at once, its lock let go.
        transaction::abandon(&a.go);
        Ok(())
    }

    /// The automatic-update policy (docs/dbus.md): check_interval, auto_download,
    /// auto_install, critical_install, notify_available, preferred_time, channel.
    #[zbus(property)]
    fn automatic_update_policy(&self) -> fdo::Result<Policy> {
        self.shared.touch();
        policy::read()
    }

    /// The sysroot's path.
    #[zbus(property(emits_changed_signal = "const"))]
    fn path(&self) -> String {
        self.shared.sysroot.display().to_string()
    }

    /// Every deployment in boot order (keys in docs/dbus.md).
    #[zbus(property)]
    fn deployments(&self) -> fdo::Result<Vec<StatusRow>> {
        Ok(self.snapshot()?.status.deployments.clone())
    }

    /// The running deployment; empty when none of ours runs.
    #[zbus(property)]
    fn booted_deployment(&self) -> fdo::Result<Maybe<StatusRow>> {
        self.row_where(|s| s.booted().cloned())
    }

    /// The deployment that boots next when it is not the running one; else empty.
    #[zbus(property)]
    fn pending_deployment(&self) -> fdo::Result<Maybe<StatusRow>> {
        self.row_where(|s| s.pending().cloned())
    }

    /// What Rollback would make the default; else empty.
    #[zbus(property)]
    fn rollback_deployment(&self) -> fdo::Result<Maybe<StatusRow>> {
        self.row_where(|s| s.rollback().cloned())
    }

    /// The staged deployment (made the default at shutdown); else empty.
    #[zbus(property)]
    fn staged_deployment(&self) -> fdo::Result<Maybe<StatusRow>> {
        self.row_where(Status::staged_row)
    }

    /// The /etc files the next boot has in conflict (both this machine and the update
    /// changed them), relative to /etc: of the staged deployment, else the pending
    /// one's; empty when nothing is pending.
    #[zbus(property)]
    fn etc_conflicts(&self) -> fdo::Result<Vec<String>> {
        Ok(self.snapshot()?.status.etc_conflicts.clone())
    }

    /// idle, busy, staged (an update waits for shutdown) or pending-reboot (the next
    /// boot runs another deployment).
    #[zbus(property)]
    fn update_state(&self) -> fdo::Result<UpdateState> {
        let snap = self.snapshot()?;
        let busy = self.shared.active.lock().unwrap().is_some();
        Ok(UpdateState::of(&snap.status, busy))
    }

    /// The persisted update state machine (docs/remote.md), the document `arbor
    /// update-status` prints in JSON: state (idle, checking, downloading, verifying,
    /// staging, staged, testing, active, rolling-back, failed), remote, channel,
    /// available, version, bytes_done, bytes_total, error, rolled_back (the update did
    /// not boot well and the previous deployment runs again), last_check, offer,
    /// downloads.
    #[zbus(property)]
    fn update_status(&self) -> fdo::Result<UpdateRecord> {
        self.shared.touch();
        let read = || -> anyhow::Result<UpdateRecord> {
            let sysroot = Sysroot::open(&self.shared.sysroot)?;
            arbor_ops::update::state::current(&sysroot)
        };
        read().map_err(|e| fdo::Error::Failed(format!("{e:#}")))
    }

    /// What the followed channel offers this device, as the last check (Check, an
    /// Upgrade, or the CLI's upgrade check and auto-update) found it: version, commit,
    /// remote, channel, critical, release_notes, published, download_bytes, method and
    /// packages (upgraded, downgraded, added, removed). Empty when up to date or not yet
    /// checked, and once the offered version is staged.
    #[zbus(property)]
    fn available_update(&self) -> fdo::Result<Maybe<Offer>> {
        self.shared.touch();
        let read = || -> anyhow::Result<Maybe<Offer>> {
            let sysroot = Sysroot::open(&self.shared.sysroot)?;
            Ok(Maybe(arbor_ops::update::state::current(&sysroot)?.offer))
        };
        read().map_err(|e| fdo::Error::Failed(format!("{e:#}")))
    }

    /// The running transaction: (method, initiator, object path); empty strings when
    /// none runs.
    #[zbus(property)]
    fn active_transaction(&self) -> (String, String, String) {
        self.shared.touch();
        match self.shared.active.lock().unwrap().as_ref() {
            Some(a) => (a.method.clone(), a.initiator.clone(), a.path.clone()),
            None => Default::default(),
        }
    }

    /// The last recorded transaction, by the CLI or the daemon (keys in docs/dbus.md);
    /// read from the state database, so it survives restarts.
    #[zbus(property)]
    fn last_transaction(&self) -> fdo::Result<Maybe<HistoryEntry>> {
        Ok(Maybe(self.snapshot()?.last.clone()))
    }
}

/// The update that Upgrade and Check start, with their options "os" and
/// "phase-override".
fn upgrade_request(o: &Options, action: Action) -> Result<Request, DaemonError> {
    Ok(Request::Upgrade(UpgradeRequest {
        os: o.string("os")?,
        action,
        dry_run: false,
        phase_override: o.bool("phase-override")?.unwrap_or(false),
        apply: apply_option(o)?,
        max_rate: None,
    }))
}

/// The "apply" option: "auto" or a step (docs/activation.md).
fn apply_option(o: &Options) -> Result<Option<arbor_live::activation::Step>, DaemonError> {
    o.string("apply")?
        .map(|w| {
            arbor_ops::update::apply_step::parse_apply(&w)
                .map_err(|e| DaemonError::InvalidArgs(format!("apply: {e:#}")))
        })
        .transpose()
}

/// The caller's unique bus name, which registration is kept under.
fn client_name(hdr: &Header<'_>) -> Result<String, DaemonError> {
    hdr.sender().map(|s| s.to_string()).ok_or_else(|| {
        DaemonError::InvalidArgs("registering needs a bus: the call has no sender".into())
    })
}
