//! `arbor`: the command-line edge over the arbor library.

fn main() {
    arbor::sys::default_sigpipe();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ARBOR_LOG"))
        .with_writer(std::io::stderr)
        .init();
    std::process::exit(arbor::cli::run_from_env());
}
