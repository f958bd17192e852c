//! Object encodings (dirtree, commit, dirmeta): any bytes decode to an error or to a
//! value that encodes back to the same bytes, with only safe names.
#![no_main]

use arbor_store::encoding::{Commit, DirMetaEncoding, DirTree, Meta, check_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = DirTree::decode(data) {
        for n in t.files.iter().map(|f| &f.name).chain(t.dirs.iter().map(|d| &d.name)) {
            assert!(check_name(n).is_ok(), "an unsafe name decoded: {n:?}");
        }
        assert_eq!(t.encode(), data, "a dirtree with two encodings");
    }
    if let Ok(c) = Commit::decode(data) {
        assert_eq!(Commit::decode(&c.encode()).unwrap(), c);
    }
    if let Ok(m) = Meta::decode_dirmeta(data) {
        assert_eq!(Meta::decode_dirmeta(&m.encode_dirmeta()).unwrap(), m);
    }
});
