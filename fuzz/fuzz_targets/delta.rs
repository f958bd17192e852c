//! A static delta from outside: applied to a repository, it is refused or stores
//! verified objects; it never panics or allocates past its declared bounds.
//!
//! The repository holds a commit of arbor's man pages, and every input is made to
//! start from it (bytes 12..44, the FROM id, are overwritten), so the fuzzer gets past
//! the header into the index, the bases and the patches. scripts/fuzz.sh seeds a real
//! delta from the same tree.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arbor_store::commit::{CommitOptions, commit_tree};
use arbor_core::lock::LockWait;
use arbor_store::refs::RefName;
use arbor_store::{ObjectId, Repo};
use libfuzzer_sys::fuzz_target;

fn place() -> &'static (tempfile::TempDir, Repo, ObjectId) {
    static PLACE: OnceLock<(tempfile::TempDir, Repo, ObjectId)> = OnceLock::new();
    PLACE.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let r = Repo::init(&t.path().join("repo")).unwrap();
        let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("../man");
        let opts = CommitOptions {
            branch: RefName::parse("seed").unwrap(),
            subject: "seed".into(),
            body: String::new(),
            metadata: vec![],
            timestamp: 0,
            orphan: true,
            skip_special: false,
            use_cache: false,
            progress: None,
        };
        let from = commit_tree(&r, &man, &opts, LockWait::NoWait).unwrap().commit;
        (t, r, from)
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, repo, from) = place();
    let mut data = data.to_vec();
    if data.len() >= 44 {
        data[12..44].copy_from_slice(&from.0);
    }
    let file = dir.path().join("input.delta");
    std::fs::write(&file, &data).unwrap();
    let _ = arbor_delta::apply(repo, &file, LockWait::NoWait);
});
