//! `arbor serve`: the JSON HTTP API for dashboards (docs/serve.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use arbor_serve::ServeOptions;

/// `arbor serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Listen on this unix socket (default /run/arbor-serve/api.sock).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// The socket's permission bits, in octal (default 600: only its owner connects).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
    /// Listen on this TCP address instead (needs --token-file).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Require 'Authorization: Bearer TOKEN' with the token in FILE (mode 600).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The bus arbord is on (default: the system bus).
    #[arg(long, value_name = "ADDRESS")]
    pub bus_address: Option<String>,
}

fn parse_mode(s: &str) -> Result<u32> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => bail!("'{s}' is not a permission mode in octal (such as 600 or 660)"),
    }
}

/// Runs `arbor serve` until SIGTERM or SIGINT.
pub fn serve(a: &ServeArgs) -> Result<i32> {
    arbor_serve::listen(&ServeOptions {
        socket: a.socket.clone(),
        socket_mode: a.socket_mode,
        listen: a.listen,
        token_file: a.token_file.clone(),
        bus_address: a.bus_address.clone(),
    })?;
    Ok(0)
}
