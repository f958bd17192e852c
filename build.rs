//! Marks builds made as root with `cfg(arbor_root)`, so that tests which need root
//! (mounts, device nodes, `trusted.*` xattrs) are compiled as ignored otherwise:
//! `cargo test` as a user reports them as ignored instead of passing them untested.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(arbor_root)");
    // `sudo` and `su` change these, so a build by another user is made afresh.
    for var in ["USER", "SUDO_UID", "HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok());
    if uid.as_deref().map(str::trim) == Some("0") {
        println!("cargo::rustc-cfg=arbor_root");
    }
}
