//! Typed clients of `arbord`'s two interfaces (dbus/org.arbor.Arbor1.xml): the
//! properties decode into the library's own documents, the same types the daemon
//! encodes them from, so `arbor serve` answers with the JSON the CLI prints.

use std::collections::HashMap;

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use arbor_core::wire::Maybe;
use arbor_ops::Outcome;
use arbor_ops::update::policy::Policy;
use arbor_ops::update::state::{Offer, UpdateRecord};
use arbor_statedb::HistoryEntry;
use arbor_sysroot::status::{StatusRow, UpdateState};

/// Options of a method (`a{sv}`).
pub type Options = HashMap<String, OwnedValue>;

/// `org.arbor.Arbor1.Sysroot`: the part `arbor serve` uses.
#[zbus::proxy(
    interface = "org.arbor.Arbor1.Sysroot",
    default_service = "org.arbor.Arbor1",
    default_path = "/org/arbor/Arbor1",
    gen_blocking = false
)]
pub trait Sysroot {
    /// Starts a check of the followed channel.
    fn check(&self, options: Options) -> zbus::Result<OwnedObjectPath>;
    /// Starts an upgrade.
    fn upgrade(&self, options: Options) -> zbus::Result<OwnedObjectPath>;
    /// Starts a rollback.
    fn rollback(&self, options: Options) -> zbus::Result<OwnedObjectPath>;
    /// Changes the automatic-update policy.
    fn set_automatic_update_policy(&self, changes: Options) -> zbus::Result<()>;

    /// idle, busy, staged or pending-reboot.
    #[zbus(property)]
    fn update_state(&self) -> zbus::Result<UpdateState>;
    /// The running deployment.
    #[zbus(property)]
    fn booted_deployment(&self) -> zbus::Result<Maybe<StatusRow>>;
    /// The deployment that boots next when it is not the running one.
    #[zbus(property)]
    fn pending_deployment(&self) -> zbus::Result<Maybe<StatusRow>>;
    /// What Rollback would make the default.
    #[zbus(property)]
    fn rollback_deployment(&self) -> zbus::Result<Maybe<StatusRow>>;
    /// The staged deployment.
    #[zbus(property)]
    fn staged_deployment(&self) -> zbus::Result<Maybe<StatusRow>>;
    /// What the followed channel offers.
    #[zbus(property)]
    fn available_update(&self) -> zbus::Result<Maybe<Offer>>;
    /// The update state machine.
    #[zbus(property)]
    fn update_status(&self) -> zbus::Result<UpdateRecord>;
    /// The running transaction: (method, initiator, path).
    #[zbus(property)]
    fn active_transaction(&self) -> zbus::Result<(String, String, String)>;
    /// The last recorded transaction.
    #[zbus(property)]
    fn last_transaction(&self) -> zbus::Result<Maybe<HistoryEntry>>;
    /// The automatic-update policy.
    #[zbus(property)]
    fn automatic_update_policy(&self) -> zbus::Result<Policy>;
}

/// `org.arbor.Arbor1.Transaction`: one transaction.
#[zbus::proxy(
    interface = "org.arbor.Arbor1.Transaction",
    default_service = "org.arbor.Arbor1",
    gen_blocking = false
)]
pub trait Transaction {
    /// Starts a transaction made with "wait-for-start".
    fn start(&self) -> zbus::Result<()>;
    /// Cancels it (one waiting for its Start is abandoned at once).
    fn cancel(&self) -> zbus::Result<()>;

    /// The method that made it.
    #[zbus(property)]
    fn method(&self) -> zbus::Result<String>;
    /// True until it finished.
    #[zbus(property)]
    fn running(&self) -> zbus::Result<bool>;
    /// It finished well.
    #[zbus(property)]
    fn success(&self) -> zbus::Result<bool>;
    /// Progress, 0 to 100.
    #[zbus(property)]
    fn percent(&self) -> zbus::Result<u32>;
    /// The step under way.
    #[zbus(property)]
    fn current_task(&self) -> zbus::Result<String>;
    /// Why it failed.
    #[zbus(property)]
    fn error_message(&self) -> zbus::Result<String>;
    /// The D-Bus error name of the failure.
    #[zbus(property)]
    fn error_name(&self) -> zbus::Result<String>;
    /// The outcome document, once it succeeded.
    #[zbus(property)]
    fn result(&self) -> zbus::Result<Maybe<Outcome>>;
}
