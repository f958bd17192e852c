//! The bottom of arbor: what every layer needs and none owns. File system helpers that
//! never follow a symlink out of a tree ([`fsutil`]), the writer lock, object ids, the
//! metadata of an inode, the typed errors callers tell apart, progress and
//! cancellation, failpoints, the mount table, and all of arbor's `unsafe` ([`sys`]).
//! It depends on nothing of arbor's.

pub mod error;
pub mod failpoint;
pub mod fsutil;
pub mod lock;
pub mod meta;
pub mod mounts;
pub mod names;
pub mod object;
pub mod progress;
pub mod sys;
pub mod wire;
