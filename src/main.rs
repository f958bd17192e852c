//! `arbor`: the command-line edge over the arbor library.

fn main() {
    arbor::cli::init_process();
    std::process::exit(arbor::cli::run_from_env());
}
