//! `arbor-prepare-root`: the initramfs edge over the arbor library.

fn main() {
    std::process::exit(arbor::cli::prepare_root::run_from_env());
}
