//! `arbord`: the D-Bus edge over the arbor library.

fn main() {
    arbor_core::sys::pin_mmap_threshold();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARBOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    std::process::exit(arbor_daemon::cli::run_from_env());
}
