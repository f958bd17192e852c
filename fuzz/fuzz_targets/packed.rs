//! Manifests and packed objects as a remote serves them: a manifest decodes or is
//! refused; a packed object is stored only when it is exactly the entry it claims.
#![no_main]

use std::sync::OnceLock;

use arbor_core::lock::LockWait;
use arbor_remote::pack::{self, Manifest, ManifestEntry};
use arbor_store::{ObjectId, Repo};
use libfuzzer_sys::fuzz_target;

fn repo() -> &'static Repo {
    static REPO: OnceLock<(tempfile::TempDir, Repo)> = OnceLock::new();
    &REPO
        .get_or_init(|| {
            let t = tempfile::tempdir().unwrap();
            let r = Repo::init(&t.path().join("repo")).unwrap();
            (t, r)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }
    // The manifest's claim (its raw size) first, then the packed object as served;
    // the entry's kind is the one the object says, so unpacking gets past that check.
    let Some(&kind_byte) = data.get(16) else {
        return;
    };
    let Ok(kind) = pack::kind_from_byte(kind_byte) else {
        return;
    };
    let raw = u64::from_le_bytes(data[..8].try_into().unwrap());
    let entry = ManifestEntry {
        kind,
        id: ObjectId(*blake3::hash(&data[8..]).as_bytes()),
        raw,
        packed: data.len() as u64,
    };
    let txn = arbor_store::Transaction::begin(repo(), LockWait::NoWait).unwrap();
    let _ = pack::unpack(&txn, &entry, &data[8..]);
});
