//! Transaction objects: one per started method, `/org/arbor/Arbor1/Transaction/N`.
//!
//! The method call returns the object's path at once; the work runs in a worker thread
//! that holds the sysroot lock, so a client that disconnects does not stop it. Progress
//! goes out as signals, and the outcome stays readable as properties (`Running`,
//! `Success`, `ErrorMessage`, `Result`) for a client that subscribed late. The last
//! [`KEEP_FINISHED`] finished objects stay exported; older ones are removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use zbus::object_server::{ObjectServer, SignalEmitter};
use zbus::zvariant::OwnedObjectPath;
use zbus::{interface, message::Header};

use super::auth::{self, Caller};
use super::{DaemonError, Shared, announce_changes};
use crate::error::ErrorKind;
use crate::lock::WriterLock;
use crate::ops::{self, Initiator, Request};
use crate::progress::{Cancelled, Observer};
use crate::sysroot::Sysroot;

/// How many finished transaction objects stay readable.
pub const KEEP_FINISHED: usize = 16;

/// The work of a transaction: runs with the lock held, returns its typed result as JSON.
/// It records itself in the history ([`op`] does it as every operation does).
pub type Job = Box<
    dyn FnOnce(&Sysroot, &WriterLock, &Initiator, &dyn Observer) -> Result<serde_json::Value>
        + Send
        + 'static,
>;

/// The job of a library operation: what the CLI runs for the same verb.
pub fn op(req: Request) -> Job {
    Box::new(move |sysroot, lock, who, obs| {
        Ok(serde_json::to_value(ops::run_locked(
            sysroot, lock, &req, who, obs,
        )?)?)
    })
}

/// The running transaction, as `ActiveTransaction` shows it and `Busy` errors name it.
pub(crate) struct Active {
    pub method: String,
    pub initiator: String,
    pub path: String,
    pub cancel: Arc<AtomicBool>,
}

impl Active {
    pub fn describe(&self) -> String {
        format!(
            "transaction {} ({}, started by {}) is running",
            self.path, self.method, self.initiator
        )
    }
}

#[derive(Debug, Default)]
struct State {
    running: bool,
    success: bool,
    error: String,
    error_name: String,
    percent: u32,
    result: String,
}

/// The `org.arbor.Arbor1.Transaction` interface of one transaction.
pub struct TransactionIface {
    method: String,
    caller: Caller,
    state: Arc<Mutex<State>>,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

/// Progress, messages and cancellation of one transaction.
#[interface(name = "org.arbor.Arbor1.Transaction")]
impl TransactionIface {
    /// Asks the transaction to stop at its next safe point; it then finishes with
    /// success false. Past the last safe point it finishes normally.
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), DaemonError> {
        self.shared.touch();
        let who = auth::caller(conn, &hdr).await?;
        if who.bus_name != self.caller.bus_name {
            auth::authorize(conn, &hdr, "org.arbor.Arbor1.cancel").await?;
        }
        self.cancel.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The method that started it (`Deploy`, `Rollback`, …).
    #[zbus(property(emits_changed_signal = "const"))]
    fn method(&self) -> String {
        self.method.clone()
    }

    /// Who started it: bus name, uid and pid.
    #[zbus(property(emits_changed_signal = "const"))]
    fn initiator(&self) -> String {
        self.caller.describe()
    }

    /// True until it finished.
    #[zbus(property)]
    fn running(&self) -> bool {
        self.state.lock().unwrap().running
    }

    /// Whether it finished well (false while running).
    #[zbus(property)]
    fn success(&self) -> bool {
        self.state.lock().unwrap().success
    }

    /// Why it failed; empty otherwise.
    #[zbus(property)]
    fn error_message(&self) -> String {
        self.state.lock().unwrap().error.clone()
    }

    /// The D-Bus error name of its failure's case (`org.arbor.Arbor1.Error.Offline`,
    /// ... docs/dbus.md), for a client that acts on it; empty unless it failed.
    #[zbus(property)]
    fn error_name(&self) -> String {
        self.state.lock().unwrap().error_name.clone()
    }

    /// Overall progress, 0 to 100.
    #[zbus(property)]
    fn percent(&self) -> u32 {
        self.state.lock().unwrap().percent
    }

    /// What it did, as JSON (the same document the CLI prints in JSON); empty until
    /// it succeeded.
    #[zbus(property)]
    fn result(&self) -> String {
        self.state.lock().unwrap().result.clone()
    }

    /// Something worth telling the user.
    #[zbus(signal)]
    async fn message(emitter: &SignalEmitter<'_>, text: &str) -> zbus::Result<()>;

    /// A named step begins (`checkout`, `etc`, `kernel`, `boot-entries`, …).
    #[zbus(signal)]
    async fn task_begin(emitter: &SignalEmitter<'_>, task: &str) -> zbus::Result<()>;

    /// The step of that name ended.
    #[zbus(signal)]
    async fn task_end(emitter: &SignalEmitter<'_>, task: &str) -> zbus::Result<()>;

    /// Overall progress with what is being done.
    #[zbus(signal)]
    async fn percent_progress(
        emitter: &SignalEmitter<'_>,
        text: &str,
        percent: u32,
    ) -> zbus::Result<()>;

    /// Bytes and objects fetched so far of a download, and the totals.
    #[zbus(signal)]
    async fn download_progress(
        emitter: &SignalEmitter<'_>,
        bytes_done: u64,
        bytes_total: u64,
        objects_done: u32,
        objects_total: u32,
    ) -> zbus::Result<()>;

    /// The end: whether it succeeded, and why not.
    #[zbus(signal)]
    async fn finished(
        emitter: &SignalEmitter<'_>,
        success: bool,
        error_message: &str,
    ) -> zbus::Result<()>;
}

/// Forwards the library's progress calls as signals of one transaction object.
struct BusObserver {
    emitter: SignalEmitter<'static>,
    state: Arc<Mutex<State>>,
    cancel: Arc<AtomicBool>,
    /// When DownloadProgress was last sent: at most four a second.
    last_download: Mutex<Option<std::time::Instant>>,
}

impl BusObserver {
    /// Signals are best effort: a vanished client must not fail the transaction.
    fn emit<F: std::future::Future<Output = zbus::Result<()>>>(&self, f: F) {
        if let Err(e) = zbus::block_on(f) {
            tracing::warn!("emitting a signal: {e}");
        }
    }
}

impl Observer for BusObserver {
    fn task_begin(&self, task: &str) {
        self.emit(TransactionIface::task_begin(&self.emitter, task));
    }

    fn task_end(&self, task: &str) {
        self.emit(TransactionIface::task_end(&self.emitter, task));
    }

    fn message(&self, text: &str) {
        self.emit(TransactionIface::message(&self.emitter, text));
    }

    fn percent(&self, text: &str, percent: u32) {
        self.state.lock().unwrap().percent = percent;
        self.emit(TransactionIface::percent_progress(
            &self.emitter,
            text,
            percent,
        ));
    }

    fn download(&self, done: u64, total: u64) {
        {
            let mut last = self.last_download.lock().unwrap();
            if last.is_some_and(|t| t.elapsed().as_millis() < 250) && done < total {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        // Objects are not counted separately: bytes are what a user waits for.
        self.emit(TransactionIface::download_progress(
            &self.emitter,
            done,
            total,
            0,
            0,
        ));
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Starts `job` as a new transaction object, or says who is busy.
///
/// The daemon's own slot is checked first, then the sysroot lock is taken here, in the
/// call: a CLI transaction holding it makes this call fail at once, naming it.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    server: &ObjectServer,
    method: &str,
    caller: Caller,
    job: Job,
) -> Result<OwnedObjectPath, DaemonError> {
    let path = shared.next_path();
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut active = shared.active.lock().unwrap();
        if let Some(a) = active.as_ref() {
            return Err(DaemonError::Busy(a.describe()));
        }
        *active = Some(Active {
            method: method.to_string(),
            initiator: caller.describe(),
            path: path.clone(),
            cancel: cancel.clone(),
        });
    }
    let taken = Sysroot::open(&shared.sysroot)
        .and_then(|s| ops::lock_now(&s).map(|l| (s, l)))
        // A lock held by the CLI is named org.arbor.Arbor1.Error.Busy by its kind.
        .map_err(DaemonError::failed);
    let (sysroot, lock) = match taken {
        Ok(t) => t,
        Err(e) => {
            *shared.active.lock().unwrap() = None;
            return Err(e);
        }
    };
    let state = Arc::new(Mutex::new(State {
        running: true,
        ..State::default()
    }));
    let iface = TransactionIface {
        method: method.to_string(),
        caller: caller.clone(),
        state: state.clone(),
        cancel: cancel.clone(),
        shared: shared.clone(),
    };
    if let Err(e) = server.at(path.as_str(), iface).await {
        *shared.active.lock().unwrap() = None;
        return Err(e.into());
    }
    let object_path = OwnedObjectPath::try_from(path.clone()).map_err(zbus::Error::from)?;
    let emitter = SignalEmitter::new(shared.conn(), path.clone())?.into_owned();
    let obs = BusObserver {
        emitter,
        state,
        cancel,
        last_download: Mutex::new(None),
    };
    let shared = shared.clone();
    let who = Initiator {
        command: format!("D-Bus {method} by {}", caller.describe()),
        uid: caller.uid,
    };
    std::thread::spawn(move || {
        // A panic in the job ends the transaction as failed instead of leaving it
        // active forever (every later call Busy, the daemon never idle).
        let run = std::panic::AssertUnwindSafe(|| job(&sysroot, &lock, &who, &obs));
        let result = std::panic::catch_unwind(run)
            .unwrap_or_else(|p| Err(anyhow::anyhow!("{}", ops::panic_message(&*p))));
        drop(lock);
        finish(&shared, &obs, &path, result);
    });
    Ok(object_path)
}

/// Publishes the outcome: properties first, then the sysroot's new state, then
/// `Finished`, so a client that reacts to `Finished` reads the new state.
fn finish(shared: &Arc<Shared>, obs: &BusObserver, path: &str, result: Result<serde_json::Value>) {
    let error = match &result {
        Ok(_) => String::new(),
        Err(e) if e.chain().any(|c| c.is::<Cancelled>()) => Cancelled.to_string(),
        Err(e) => format!("{e:#}"),
    };
    {
        let mut st = obs.state.lock().unwrap();
        st.running = false;
        st.success = result.is_ok();
        st.error = error.clone();
        st.error_name = match &result {
            Ok(_) => String::new(),
            Err(e) => ErrorKind::of(e).dbus_name().to_string(),
        };
        if let Ok(v) = &result {
            st.result = v.to_string();
            st.percent = 100;
        }
    }
    *shared.active.lock().unwrap() = None;
    let conn = shared.conn().clone();
    obs.emit(async {
        let iref = conn
            .object_server()
            .interface::<_, TransactionIface>(path)
            .await?;
        let t = iref.get().await;
        let e = iref.signal_emitter();
        t.running_changed(e).await?;
        t.success_changed(e).await?;
        t.error_message_changed(e).await?;
        t.error_name_changed(e).await?;
        t.percent_changed(e).await?;
        t.result_changed(e).await
    });
    announce_changes(shared);
    obs.emit(TransactionIface::finished(
        &obs.emitter,
        error.is_empty(),
        &error,
    ));
    let old: Vec<String> = {
        let mut f = shared.finished.lock().unwrap();
        f.push_back(path.to_string());
        let excess = f.len().saturating_sub(KEEP_FINISHED);
        f.drain(..excess).collect()
    };
    for p in old {
        obs.emit(async {
            conn.object_server()
                .remove::<TransactionIface, _>(p.as_str())
                .await
                .map(|_| ())
        });
    }
}
