//! A static delta from outside: applied to a repository, it is refused or stores
//! verified objects; it never panics or allocates past its declared bounds.
#![no_main]

use std::sync::OnceLock;

use arbor::lock::LockWait;
use arbor::store::Repo;
use libfuzzer_sys::fuzz_target;

fn place() -> &'static (tempfile::TempDir, Repo) {
    static PLACE: OnceLock<(tempfile::TempDir, Repo)> = OnceLock::new();
    PLACE.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let r = Repo::init(&t.path().join("repo")).unwrap();
        (t, r)
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, repo) = place();
    let file = dir.path().join("input.delta");
    std::fs::write(&file, data).unwrap();
    let _ = arbor::delta::apply(repo, &file, LockWait::NoWait);
});
