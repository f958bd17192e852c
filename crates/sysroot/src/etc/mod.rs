//! `/etc`: the machine's own configuration on top of the image's defaults.
//!
//! A deployment's `/etc` is a real copy, edited in place, made from the image's
//! defaults (`/usr/etc`) and merged with the `/etc` it replaces ([`merge`]). [`drift`]
//! says how a `/etc` differs from its defaults (`arbor etc diff`); users and groups
//! are merged entry by entry ([`userdb`]).

pub mod drift;
pub mod merge;
pub mod stored;
pub mod userdb;
