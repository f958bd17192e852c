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
use super::checked::Checked;
use super::{DaemonError, Shared, announce_changes};
use arbor_core::lock::WriterLock;
use arbor_core::progress::{Cancelled, Download, Observer};
use arbor_core::wire::Maybe;
use arbor_ops::error::ErrorKind;
use arbor_ops::{self as ops, Initiator, Outcome, Request};
use arbor_sysroot::Sysroot;

/// How many finished transaction objects stay readable.
pub const KEEP_FINISHED: usize = 16;

/// The work of a transaction: runs with the lock held, returns its outcome document.
/// It records itself in the history ([`op`] does it as every operation does).
pub type Job = Box<
    dyn FnOnce(&Sysroot, &WriterLock, &Initiator, &dyn Observer) -> Result<Outcome>
        + Send
        + 'static,
>;

/// The job of a library operation: what the CLI runs for the same verb.
pub fn op(req: Request) -> Job {
    Box::new(move |sysroot, lock, who, obs| ops::perform_locked(sysroot, lock, &req, who, obs))
}

/// How long a transaction started with "wait-for-start" waits for its Start before it
/// gives up (and lets the lock go). A caller that leaves the bus, or a Cancel, ends
/// the wait at once; this bounds a caller that stays and never starts it.
pub const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The switch of a transaction waiting for Start: true starts it, false abandons it.
/// Shared by the transaction object (Start, Cancel), the daemon's Cancel and the
/// watch on callers that leave the bus; whoever comes first takes it.
pub(crate) type Go = Arc<Mutex<Option<std::sync::mpsc::Sender<bool>>>>;

/// Abandons the transaction waiting on `go`, if it still waits; true if it did.
pub(crate) fn abandon(go: &Go) -> bool {
    match go.lock().unwrap().take() {
        Some(tx) => tx.send(false).is_ok(),
        None => false,
    }
}

/// The method call that starts a transaction: its name, the polkit action it needs,
/// and whether the work waits for the caller's Start.
pub(crate) struct Call {
    pub method: &'static str,
    pub action: &'static str,
    pub wait_for_start: bool,
}

impl Call {
    /// The call of `method`, reading "wait-for-start" from its options.
    pub fn new(
        method: &'static str,
        action: &'static str,
        o: &super::options::Options,
    ) -> Result<Call, DaemonError> {
        Ok(Call {
            method,
            action,
            wait_for_start: o.bool("wait-for-start")?.unwrap_or(false),
        })
    }
}

/// The running transaction, as `ActiveTransaction` shows it and `Busy` errors name it.
pub(crate) struct Active {
    pub method: String,
    pub initiator: String,
    pub path: String,
    pub cancel: Arc<AtomicBool>,
    /// The caller's unique bus name: when it leaves, a transaction still waiting for
    /// its Start is abandoned.
    pub owner: String,
    /// Set while the work waits for Start.
    pub go: Go,
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
    task: String,
    result: Option<Outcome>,
}

/// The `org.arbor.Arbor1.Transaction` interface of one transaction.
pub struct TransactionIface {
    method: String,
    caller: Caller,
    state: Arc<Mutex<State>>,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
    /// Set while the work waits for Start: true starts it, false abandons it.
    go: Go,
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
        // A transaction still waiting for Start is abandoned at once.
        abandon(&self.go);
        Ok(())
    }

    /// Begins the work of a transaction started with the option "wait-for-start", once
    /// the caller has subscribed to its signals: nothing is missed. Only the caller
    /// that started it may; a second Start, or one on a transaction that did not
    /// wait, is InvalidArgs.
    async fn start(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), DaemonError> {
        self.shared.touch();
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        if sender != self.caller.bus_name {
            return Err(DaemonError::AccessDenied(format!(
                "only {} (who started it) may start this transaction",
                self.caller.bus_name
            )));
        }
        let go = self.go.lock().unwrap().take().ok_or_else(|| {
            DaemonError::InvalidArgs(
                "this transaction is not waiting for Start (already started, or started without \"wait-for-start\")".into(),
            )
        })?;
        go.send(true).map_err(|_| {
            DaemonError::InvalidArgs("this transaction gave up waiting for Start".into())
        })
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

    /// The step under way (`check`, `download`, `checkout`, …; the names TaskBegin
    /// sends); empty between steps and once finished. With Percent, what a client
    /// that connects mid-way shows before the next signal.
    #[zbus(property)]
    fn current_task(&self) -> String {
        self.state.lock().unwrap().task.clone()
    }

    /// What it did: the outcome document (`format_version`, `kind` and the verb's
    /// fields, as the CLI prints it in JSON); empty until it succeeded.
    #[zbus(property)]
    fn result(&self) -> Maybe<Outcome> {
        Maybe(self.state.lock().unwrap().result.clone())
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

    /// Bytes and objects fetched so far of a download, the totals, and the mean rate
    /// in bytes per second. Objects are a full fetch's objects, or a delta chain's
    /// deltas. At most four a second, and always the last one.
    #[zbus(signal)]
    async fn download_progress(
        emitter: &SignalEmitter<'_>,
        bytes_done: u64,
        bytes_total: u64,
        objects_done: u32,
        objects_total: u32,
        bytes_per_second: u64,
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
    /// When the download was first reported, and its bytes then: the rate's origin.
    rate: Mutex<Option<(std::time::Instant, u64)>>,
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
        self.state.lock().unwrap().task = task.to_string();
        self.emit(TransactionIface::task_begin(&self.emitter, task));
    }

    fn task_end(&self, task: &str) {
        {
            let mut st = self.state.lock().unwrap();
            if st.task == task {
                st.task.clear();
            }
        }
        self.emit(TransactionIface::task_end(&self.emitter, task));
    }

    fn message(&self, text: &str) {
        self.emit(TransactionIface::message(&self.emitter, text));
    }

    fn percent(&self, text: &str, percent: u32) {
        // Never backwards: a step that restarts its own count (or a late call from a
        // worker thread) does not pull the figure a panel shows back.
        let percent = {
            let mut st = self.state.lock().unwrap();
            st.percent = st.percent.max(percent.min(100));
            st.percent
        };
        self.emit(TransactionIface::percent_progress(
            &self.emitter,
            text,
            percent,
        ));
    }

    fn download(&self, d: &Download) {
        let rate = {
            let mut r = self.rate.lock().unwrap();
            let (since, from) = *r.get_or_insert((std::time::Instant::now(), d.bytes_done));
            let secs = since.elapsed().as_secs_f64();
            // The mean since the first report of this transaction's download.
            if secs > 0.0 {
                (d.bytes_done.saturating_sub(from) as f64 / secs) as u64
            } else {
                0
            }
        };
        {
            let mut last = self.last_download.lock().unwrap();
            if last.is_some_and(|t| t.elapsed().as_millis() < 250) && d.bytes_done < d.bytes_total {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        self.emit(TransactionIface::download_progress(
            &self.emitter,
            d.bytes_done,
            d.bytes_total,
            count(d.items_done),
            count(d.items_total),
            rate,
        ));
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Clears the daemon's slot for a transaction when dropped, unless the worker took it
/// over: a start that fails at any step after taking the slot leaves it free.
struct Slot<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.shared.active.lock().unwrap() = None;
        }
    }
}

/// Starts `job` as a new transaction object, or says who is busy.
///
/// The daemon's own slot is checked first, then the sysroot lock is taken here, in the
/// call: a CLI transaction holding it makes this call fail at once, naming it.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    server: &ObjectServer,
    call: &Call,
    caller: Caller,
    job: Job,
) -> Result<OwnedObjectPath, DaemonError> {
    let method = call.method;
    let path = shared.next_path();
    let cancel = Arc::new(AtomicBool::new(false));
    let (go_tx, started) = std::sync::mpsc::channel();
    let go: Go = Arc::new(Mutex::new(call.wait_for_start.then_some(go_tx)));
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
            owner: caller.bus_name.clone(),
            go: go.clone(),
        });
    }
    let mut slot = Slot {
        shared,
        armed: true,
    };
    // A lock held by the CLI is named org.arbor.Arbor1.Error.Busy by its kind.
    let (sysroot, lock) = Sysroot::open(&shared.sysroot)
        .and_then(|s| ops::lock_now(&s).map(|l| (s, l)))
        .map_err(DaemonError::failed)?;
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
        go: go.clone(),
    };
    let object_path = OwnedObjectPath::try_from(path.clone()).map_err(zbus::Error::from)?;
    let emitter = SignalEmitter::new(shared.conn(), path.clone())?.into_owned();
    server.at(path.as_str(), Checked::new(iface)).await?;
    let obs = BusObserver {
        emitter,
        state,
        cancel,
        last_download: Mutex::new(None),
        rate: Mutex::new(None),
    };
    let who = Initiator {
        command: format!("D-Bus {method} by {}", caller.describe()),
        uid: caller.uid,
    };
    let wait = call.wait_for_start;
    // The worker owns the slot from here: it frees it when it finishes.
    slot.armed = false;
    let worker_shared = shared.clone();
    std::thread::spawn(move || {
        let shared = worker_shared;
        if wait && !started.recv_timeout(START_TIMEOUT).unwrap_or(false) {
            // Cancelled, abandoned or never started: nothing ran. The lock goes with it.
            drop(lock);
            let e = anyhow::Error::new(Cancelled).context("not started: no Start came");
            finish(&shared, &obs, &path, Err(e));
            return;
        }
        // A panic in the job ends the transaction as failed instead of leaving it
        // active forever (every later call Busy, the daemon never idle).
        let run = std::panic::AssertUnwindSafe(|| job(&sysroot, &lock, &who, &obs));
        let result = std::panic::catch_unwind(run)
            .unwrap_or_else(|p| Err(anyhow::anyhow!("{}", ops::panic_message(&*p))));
        drop(lock);
        finish(&shared, &obs, &path, result);
        arbor_core::sys::release_free_memory();
    });
    // A caller gone before the transaction existed missed the watch on departures:
    // its transaction would wait for a Start that cannot come.
    if wait && !caller_present(shared, &caller.bus_name).await {
        tracing::info!(caller = %caller.bus_name, "the caller left before Start: abandoned");
        abandon(&go);
    }
    Ok(object_path)
}

/// Whether `name` is still on the bus (a peer connection has no bus: always).
async fn caller_present(shared: &Shared, name: &str) -> bool {
    let Ok(bus) = zbus::fdo::DBusProxy::new(shared.conn()).await else {
        return true;
    };
    match zbus::names::BusName::try_from(name) {
        Ok(n) => bus.name_has_owner(n).await.unwrap_or(true),
        Err(_) => true,
    }
}

/// Publishes the outcome: properties first, then the sysroot's new state, then
/// `Finished`, so a client that reacts to `Finished` reads the new state.
fn finish(shared: &Arc<Shared>, obs: &BusObserver, path: &str, result: Result<Outcome>) {
    let error = match &result {
        Ok(_) => String::new(),
        Err(e) if e.chain().any(|c| c.is::<Cancelled>()) => Cancelled.to_string(),
        Err(e) => format!("{e:#}"),
    };
    {
        let mut st = obs.state.lock().unwrap();
        st.running = false;
        st.task.clear();
        st.success = result.is_ok();
        st.error = error.clone();
        st.error_name = match &result {
            Ok(_) => String::new(),
            Err(e) => ErrorKind::of(e).dbus_name().to_string(),
        };
        if let Ok(v) = &result {
            st.result = Some(v.clone());
        }
    }
    if result.is_ok() {
        // The figure ends at 100 on success, whatever the last step reported.
        obs.percent("done", 100);
    }
    let switch = result.as_ref().ok().and_then(|o| o.switch().cloned());
    *shared.active.lock().unwrap() = None;
    let conn = shared.conn().clone();
    obs.emit(async {
        let iref = conn
            .object_server()
            .interface::<_, Checked<TransactionIface>>(path)
            .await?;
        let t = iref.get().await;
        let e = iref.signal_emitter();
        t.running_changed(e).await?;
        t.success_changed(e).await?;
        t.error_message_changed(e).await?;
        t.error_name_changed(e).await?;
        t.percent_changed(e).await?;
        t.current_task_changed(e).await?;
        t.result_changed(e).await
    });
    if !announce_changes(shared) {
        tracing::warn!("announcing the changes of {path}: the state could not be read");
    }
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
                .remove::<Checked<TransactionIface>, _>(p.as_str())
                .await
                .map(|_| ())
        });
    }
    if let Some(s) = switch {
        // `apply`: the machine switches once the callers have heard it is done.
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if let Err(e) = arbor_live::activate::start(&s) {
                tracing::error!("starting the {}: {e:#}", s.step);
            }
        });
    }
}
