//! Marks builds made as root with `cfg(arbor_root)`, so that tests which need root
//! (mounts, device nodes, `trusted.*` xattrs) are compiled as ignored otherwise:
//! `cargo test` as a user reports them as ignored instead of passing them untested.
//! `ARBOR_TEST_AS_USER=1` makes a root build like a user's, for
//! scripts/test-unprivileged.sh, which runs it as one.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(arbor_root)");
    // `sudo` and `su` change these, so a build by another user is made afresh.
    for var in ["USER", "SUDO_UID", "HOME", "ARBOR_TEST_AS_USER"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok());
    let as_user = std::env::var_os("ARBOR_TEST_AS_USER").is_some_and(|v| v == "1");
    if uid.as_deref().map(str::trim) == Some("0") && !as_user {
        println!("cargo::rustc-cfg=arbor_root");
    }
}
