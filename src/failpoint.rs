//! Test hooks that make a named point fail: `ARBOR_FAILPOINTS=NAME=error` returns an
//! error there, `NAME=panic` panics there (comma-separated for several). Tests use
//! them to prove that a failure at that point loses nothing and that the daemon
//! survives a bug; unset, each point costs one environment lookup.

use anyhow::{Result, bail};

/// Fails as `ARBOR_FAILPOINTS` says for the point `name`, or does nothing.
pub fn hit(name: &str) -> Result<()> {
    let Ok(spec) = std::env::var("ARBOR_FAILPOINTS") else {
        return Ok(());
    };
    for item in spec.split(',') {
        match item.split_once('=') {
            Some((n, "panic")) if n == name => panic!("failpoint {name}"),
            Some((n, "error")) if n == name => bail!("failpoint {name}"),
            _ => {}
        }
    }
    Ok(())
}
