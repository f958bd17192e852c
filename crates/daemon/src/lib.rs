//! `arbord`: the D-Bus face of the library, for settings panels and dashboards.
//!
//! Bus name `org.arbor.Arbor1`, root object `/org/arbor/Arbor1` with the
//! `org.arbor.Arbor1.Sysroot` interface (state as properties, methods that start
//! transactions); each transaction is an object `/org/arbor/Arbor1/Transaction/N` with
//! the `org.arbor.Arbor1.Transaction` interface (progress signals, `Finished`). The
//! interfaces are written down in `dbus/org.arbor.Arbor1.xml` and explained in
//! `docs/dbus.md`.
//!
//! The daemon calls the same library functions as the CLI and takes the same sysroot
//! lock, so the two exclude each other. It keeps no state of its own that matters: the
//! deployments are on disk and the history is in the state database, so it may exit
//! when idle and be started again by D-Bus activation at the next call.

mod auth;
mod checked;
pub mod cli;
mod clients;
mod error;
mod options;
mod policy;
mod snapshot;
mod sysroot_iface;
mod transaction;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use checked::Checked;
pub use error::DaemonError;
use sysroot_iface::SysrootIface;
use transaction::Active;

/// The well-known bus name.
pub const BUS_NAME: &str = "org.arbor.Arbor1";
/// The root object.
pub const ROOT_PATH: &str = "/org/arbor/Arbor1";
/// The sysroot interface's name.
pub const SYSROOT_INTERFACE: &str = "org.arbor.Arbor1.Sysroot";
/// The transaction interface's name.
pub const TRANSACTION_INTERFACE: &str = "org.arbor.Arbor1.Transaction";

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The sysroot it manages (`/` on a machine).
    pub sysroot: PathBuf,
    /// The running system's root, which apply-live and usroverlay change (`/`).
    pub root: PathBuf,
    /// The bus to serve on. `None`: the bus that activated us (`DBUS_STARTER_ADDRESS`),
    /// else the system bus.
    pub bus_address: Option<String>,
    /// Exit after this long without calls or a running transaction; `None` never exits.
    pub idle_exit: Option<Duration>,
}

/// What the interfaces share: the sysroot, the running transaction, the idle clock.
pub(crate) struct Shared {
    sysroot: PathBuf,
    /// What the status cache watches for changes: the lock file (every transaction
    /// writes it), and the boot entries' folder and selector, as resolved once at
    /// start (`/` is opened as `/sysroot`, and systemd-boot's entries are on the ESP).
    watched: Vec<PathBuf>,
    root: PathBuf,
    conn: OnceLock<zbus::Connection>,
    active: Mutex<Option<Active>>,
    /// Finished transaction objects, oldest first; only the last few stay exported.
    finished: Mutex<std::collections::VecDeque<String>>,
    next_transaction: AtomicU64,
    last_activity: Mutex<Instant>,
    /// Clients that keep the daemon from exiting on idle.
    clients: clients::Clients,
}

impl Shared {
    /// Restarts the idle clock: called by every method and property read.
    fn touch(&self) {
        *self.last_activity.lock().unwrap() = Instant::now();
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.lock().unwrap().is_some() || self.clients.any() {
            return None;
        }
        Some(self.last_activity.lock().unwrap().elapsed())
    }

    fn conn(&self) -> &zbus::Connection {
        self.conn
            .get()
            .expect("the connection is set before serving")
    }

    /// A bus name left the bus: a transaction it started that still waits for its
    /// Start is abandoned, and it is no longer a registered client.
    fn departed(&self, name: &str) {
        if let Some(a) = self.active.lock().unwrap().as_ref()
            && a.owner == name
            && transaction::abandon(&a.go)
        {
            tracing::info!(caller = %name, "the caller left before Start: abandoned");
        }
        if self.clients.unregister(name) {
            tracing::info!(client = %name, "the client left the bus: forgotten");
        }
    }

    fn next_path(&self) -> String {
        let n = self.next_transaction.fetch_add(1, Ordering::Relaxed);
        format!("{ROOT_PATH}/Transaction/{n}")
    }
}

/// The daemon's state for `opts`, failing early (with the path) on a bad sysroot.
fn shared(opts: &DaemonOptions) -> Result<Arc<Shared>> {
    let opened = arbor_sysroot::Sysroot::open(&opts.sysroot)?;
    let entries = opened.entry_store();
    let watched = vec![
        opened.path().join("arbor/lock"),
        opened.boot_dir().join("loader"),
        entries.kernels_root().join("loader/entries"),
        // An edit of the policy file by hand is announced too.
        arbor_ops::update::policy::Policy::location(None),
    ];
    Ok(Arc::new(Shared {
        sysroot: opts.sysroot.clone(),
        watched,
        root: opts.root.clone(),
        conn: OnceLock::new(),
        active: Mutex::new(None),
        finished: Mutex::new(std::collections::VecDeque::new()),
        next_transaction: AtomicU64::new(1),
        last_activity: Mutex::new(Instant::now()),
        clients: clients::Clients::default(),
    }))
}

/// Serves the daemon's objects to one peer over `socket`, without a bus (zbus p2p):
/// how tests exercise the real interfaces in-process. The peer is authorized by the
/// socket's credentials (only root may change anything: there is no polkit to ask).
/// The connection serves as long as it is kept.
pub fn serve_peer(
    opts: &DaemonOptions,
    socket: std::os::unix::net::UnixStream,
) -> Result<zbus::blocking::Connection> {
    let shared = shared(opts)?;
    let guid = zbus::Guid::generate();
    let conn = zbus::blocking::connection::Builder::unix_stream(socket)
        .server(guid)?
        .p2p()
        .serve_at(ROOT_PATH, Checked::new(SysrootIface::new(shared.clone())))?
        .build()
        .context("serving a peer")?;
    let _ = shared.conn.set(conn.inner().clone());
    Ok(conn)
}

/// Serves the sysroot on the bus until idle (or for ever without an idle limit).
pub fn run_daemon(opts: &DaemonOptions) -> Result<()> {
    let shared = shared(opts)?;
    let address = opts
        .bus_address
        .clone()
        .or_else(|| std::env::var("DBUS_STARTER_ADDRESS").ok());
    let builder = match &address {
        Some(a) => zbus::blocking::connection::Builder::address(a.as_str())
            .with_context(|| format!("bus address {a}"))?,
        None => zbus::blocking::connection::Builder::system()?,
    };
    let iface = Checked::new(SysrootIface::new(shared.clone()));
    let bus = address.as_deref().unwrap_or("the system bus");
    let conn = builder
        .serve_at(ROOT_PATH, iface)?
        .build()
        .with_context(|| format!("connecting to {bus}"))?;
    let _ = shared.conn.set(conn.inner().clone());
    // The name last: calls queued by activation arrive as soon as we own it.
    conn.request_name(BUS_NAME)
        .with_context(|| format!("taking the name {BUS_NAME} on {bus}"))?;
    tracing::info!(sysroot = %opts.sysroot.display(), "serving {BUS_NAME}");
    watch_departures(&conn, shared.clone())?;
    let watcher = watch::Watcher::new(&shared.watched)?;
    let mut seen = snapshot::Fingerprint::read(&shared.watched);
    // Announcements that could not read the state in a row: tried again soon, up to
    // ten times (a sysroot that stays unreadable waits for the next change instead).
    let mut failed = 0u32;
    loop {
        // Asleep until a watched folder changes, or the idle limit may have come.
        let mut timeout = opts.idle_exit.map(|limit| match shared.idle_for() {
            Some(idle) => limit.saturating_sub(idle).max(Duration::from_millis(10)),
            // Busy (a transaction, a registered client): look again a limit later.
            None => limit,
        });
        let retry = (1..10).contains(&failed);
        if retry {
            let soon = Duration::from_millis(200);
            timeout = Some(timeout.map_or(soon, |t| t.min(soon)));
        }
        if watcher.wait(timeout)? || retry {
            // A transaction of ours is writing: it announces everything when it ends
            // (announcing its lock being taken would only come before its progress).
            if shared.active.lock().unwrap().is_some() {
                failed = 0;
                continue;
            }
            // State changed by someone else (the CLI, a boot service): tell the
            // watchers, if what the status is read from moved.
            let now = snapshot::Fingerprint::read(&shared.watched);
            if now != seen || retry {
                failed = if announce_changes(&shared) {
                    0
                } else {
                    failed + 1
                };
                seen = now;
            }
            // On to the idle check: a folder that keeps changing (the ancestor
            // watched for a policy folder not made yet) must not keep us up.
        }
        shared.clients.forget_departed(&conn);
        if let (Some(limit), Some(idle)) = (opts.idle_exit, shared.idle_for())
            && idle >= limit
        {
            break;
        }
    }
    tracing::info!("idle: exiting");
    // Give the name up first, so the next call activates a new daemon instead of
    // reaching this one as it goes.
    conn.release_name(BUS_NAME)?;
    Ok(())
}

/// Follows NameOwnerChanged: whoever leaves the bus is [`Shared::departed`] at once,
/// so a caller killed between its call and its Start holds nobody up.
fn watch_departures(conn: &zbus::blocking::Connection, shared: Arc<Shared>) -> Result<()> {
    let bus = zbus::blocking::fdo::DBusProxy::new(conn)?;
    let changes = bus.receive_name_owner_changed()?;
    std::thread::Builder::new()
        .name("departures".into())
        .spawn(move || {
            for signal in changes {
                if let Ok(a) = signal.args()
                    && a.new_owner().is_none()
                {
                    shared.departed(a.name());
                }
            }
        })?;
    Ok(())
}

/// Emits PropertiesChanged for everything the sysroot's state feeds; false when the
/// state could not be read (a CLI transaction halfway through switching the boot
/// entries), so that the caller tries again.
pub(crate) fn announce_changes(shared: &Shared) -> bool {
    let conn = shared.conn().clone();
    let r = zbus::block_on(async {
        let iref = conn
            .object_server()
            .interface::<_, Checked<SysrootIface>>(ROOT_PATH)
            .await?;
        let i = iref.get().await;
        let e = iref.signal_emitter();
        i.deployments_changed(e).await?;
        i.booted_deployment_changed(e).await?;
        i.pending_deployment_changed(e).await?;
        i.rollback_deployment_changed(e).await?;
        i.staged_deployment_changed(e).await?;
        i.etc_conflicts_changed(e).await?;
        i.update_state_changed(e).await?;
        i.active_transaction_changed(e).await?;
        i.last_transaction_changed(e).await?;
        i.update_status_changed(e).await?;
        i.available_update_changed(e).await?;
        i.automatic_update_policy_changed(e).await
    });
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("announcing changes: {e}");
            false
        }
    }
}
