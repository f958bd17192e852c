//! `arbor serve`: a JSON HTTP API for dashboards and small-device web pages
//! (docs/serve.md). It is a D-Bus client of `arbord`, never part of it: the daemon and
//! polkit decide what its calls may do, by the uid it runs as. It listens on a unix
//! socket by default; on a TCP address only with a token file, and then every request
//! must carry the token.

mod api;
pub mod bus;
pub mod proxy;

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};

/// The socket `arbor serve` listens on when told nothing else.
pub const DEFAULT_SOCKET: &str = "/run/arbor-serve/api.sock";

/// The shortest token accepted: guessing it must be hopeless.
const MIN_TOKEN: usize = 16;

/// Where and how to listen.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// A unix socket (the default, [`DEFAULT_SOCKET`], when `listen` is not given).
    pub socket: Option<PathBuf>,
    /// The socket's permission bits (default 0600: only its owner connects).
    pub socket_mode: Option<u32>,
    /// A TCP address instead: needs `token_file`.
    pub listen: Option<SocketAddr>,
    /// A file holding the token requests must carry (`Authorization: Bearer …`);
    /// readable by its owner only.
    pub token_file: Option<PathBuf>,
    /// The bus `arbord` is on (default: the system bus).
    pub bus_address: Option<String>,
}

/// Reads the token: a file no one but its owner may read, holding at least
/// [`MIN_TOKEN`] characters.
pub fn read_token(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        meta.is_file() && meta.len() <= 4096,
        "{}: a token file is a small regular file",
        path.display()
    );
    ensure!(
        meta.permissions().mode() & 0o077 == 0,
        "{}: others may read it (mode {:o}); make it readable by its owner only (chmod 600)",
        path.display(),
        meta.permissions().mode() & 0o777
    );
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string();
    ensure!(
        token.len() >= MIN_TOKEN && token.bytes().all(|b| b.is_ascii_graphic()),
        "{}: the token must be at least {MIN_TOKEN} printable characters without spaces",
        path.display()
    );
    Ok(token)
}

/// Serves until SIGTERM or SIGINT.
pub fn listen(opts: &ServeOptions) -> Result<()> {
    if opts.listen.is_some() && opts.token_file.is_none() {
        bail!(
            "listening on TCP needs --token-file: without a token anyone who reaches the port could update this system"
        );
    }
    let token = opts.token_file.as_deref().map(read_token).transpose()?;
    // A client that hangs up mid-answer must not take the server down with SIGPIPE
    // (which `arbor` restores to its default for the CLI's pipes).
    arbor_core::sys::ignore_sigpipe();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let conn = api::connect(opts.bus_address.as_deref())
            .await
            .context("connecting to the bus arbord is on")?;
        let app = api::router(Arc::new(api::Ctx::new(
            conn,
            opts.bus_address.clone(),
            token,
        )));
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (mut term, mut int) = (
                signal(SignalKind::terminate()).expect("SIGTERM handler"),
                signal(SignalKind::interrupt()).expect("SIGINT handler"),
            );
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        };
        match opts.listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?;
                tracing::info!("serving the API on http://{addr}");
                axum::serve(l, app).with_graceful_shutdown(stop).await?;
            }
            None => {
                let path = opts
                    .socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
                let l = bind_socket(&path, opts.socket_mode.unwrap_or(0o600))?;
                tracing::info!("serving the API on {}", path.display());
                let served = axum::serve(l, app).with_graceful_shutdown(stop).await;
                let _ = std::fs::remove_file(&path);
                served?;
            }
        }
        anyhow::Ok(())
    })
}

/// Binds the unix socket at `path` with `mode`. A socket left by an earlier run is
/// replaced; any other file there is an error, never removed.
fn bind_socket(path: &Path, mode: u32) -> Result<tokio::net::UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        ensure!(
            m.file_type().is_socket(),
            "{} exists and is not a socket: refusing to replace it",
            path.display()
        );
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Bound in a private folder beside it (0700), given `mode`, then renamed into
    // place: no moment where it is open wider than asked.
    let dir = path.parent().unwrap_or(Path::new("."));
    let private = tempfile::Builder::new().prefix(".serve.").tempdir_in(dir)?;
    let aside = private.path().join("api.sock");
    let l = tokio::net::UnixListener::bind(&aside)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&aside, path).with_context(|| format!("placing {}", path.display()))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_must_be_private_and_long_enough() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(&f).unwrap_err().to_string();
        assert!(e.contains("others may read it"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&f).unwrap(), "0123456789abcdef0123");
        std::fs::write(&f, "short").unwrap();
        assert!(
            read_token(&f)
                .unwrap_err()
                .to_string()
                .contains("at least 16")
        );
        assert!(read_token(&d.path().join("none")).is_err());
    }

    #[test]
    fn tcp_without_a_token_is_refused() {
        let opts = ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServeOptions::default()
        };
        let e = listen(&opts).unwrap_err().to_string();
        assert!(e.contains("needs --token-file"), "{e}");
    }

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("api.sock");
        std::fs::write(&f, "not a socket").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let e = bind_socket(&f, 0o600).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "not a socket");
        std::fs::remove_file(&f).unwrap();
        drop(bind_socket(&f, 0o600).unwrap());
        let l = bind_socket(&f, 0o660).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(l);
    }
}
