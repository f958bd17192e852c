//! `arbor-prepare-root`: the initramfs edge. It links only what prepare-root needs (the
//! boot pieces and the file system helpers): no OSTree, GLib, SQLite, HTTP or TLS.

fn main() {
    std::process::exit(arbor_prepare_root::run_from_env());
}
