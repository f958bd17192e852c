//! arbor: image-based, transactional updates for Debian-family systems.
//!
//! The operating system is a content-addressed tree kept in an object [`store`]; an
//! update is a new tree deployed beside the running one. This library does all the
//! work; the `arbor` CLI and the `arbord` daemon are thin layers that parse, call one
//! function here, and print the typed result. Nothing in here prints (see the
//! `print_stdout` lint), except the [`cli`] module, which is the CLI's edge.

pub mod boot;
pub mod checkout;
pub mod cli;
pub mod commit;
pub mod compose;
pub mod daemon;
#[cfg(test)]
mod decoder_props;
pub mod delta;
pub mod diff;
pub mod error;
pub mod etc;
pub mod failpoint;
pub mod fsutil;
pub mod fuse;
pub mod inspect;
pub mod install;
pub mod live;
pub mod lock;
pub mod mounts;
pub mod ops;
pub mod ostree_interop;
pub mod packages;
pub mod progress;
pub mod publish;
pub mod remote;
pub mod serve;
pub mod statedb;
pub mod store;
pub mod sys;
pub mod sysroot;
pub mod update;
