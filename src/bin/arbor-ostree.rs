//! `arbor-ostree`: what `arbor ostree import|export` runs. OSTree interop is its own
//! program so that `arbor` does not load libostree and the libraries behind it.

fn main() {
    arbor::cli::init_process();
    std::process::exit(arbor::cli::run_ostree_helper_from_env());
}
