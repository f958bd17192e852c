//! `arbor`: the command line, an edge over the arbor crates (`crates/`). It parses
//! arguments, calls one library operation, and prints the typed result; the work is
//! the libraries'. docs/architecture.md says which crate owns what.

pub mod cli;
