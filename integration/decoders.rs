//! Property tests of every decoder of outside bytes: whatever the input, a decoder
//! returns a value or an error, never panics; what the encoders write decodes back
//! to itself; and no decoded name is empty, `.`, `..`, or holds `/` or NUL.
//! (The same decoders run under cargo-fuzz: `fuzz/`, `scripts/fuzz.sh`.)

use proptest::prelude::*;

use arbor_store::ObjectId;
use arbor_store::encoding::{
    Commit, DirEntry, DirMetaEncoding, DirTree, FileEntry, Meta, Xattrs, check_name,
};

fn id() -> impl Strategy<Value = ObjectId> {
    any::<[u8; 32]>().prop_map(ObjectId)
}

/// A valid single path component.
fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 1..40).prop_filter("a path component", |n| {
        !n.contains(&b'/') && n.as_slice() != b"." && n.as_slice() != b".."
    })
}

fn tree() -> impl Strategy<Value = DirTree> {
    (
        proptest::collection::btree_map(name(), id(), 0..8),
        proptest::collection::btree_map(name(), (id(), id()), 0..8),
    )
        .prop_map(|(files, dirs)| {
            let mut t = DirTree {
                files: files
                    .into_iter()
                    .map(|(name, file)| FileEntry { name, file })
                    .collect(),
                dirs: dirs
                    .into_iter()
                    .map(|(name, (tree, meta))| DirEntry { name, tree, meta })
                    .collect(),
            };
            // A name is a file or a directory, not both.
            let files: std::collections::BTreeSet<Vec<u8>> =
                t.files.iter().map(|f| f.name.clone()).collect();
            t.dirs.retain(|d| !files.contains(&d.name));
            t.sort();
            t
        })
}

fn commit() -> impl Strategy<Value = Commit> {
    (
        id(),
        id(),
        proptest::option::of(id()),
        any::<i64>(),
        ".{0,40}",
        ".{0,80}",
        proptest::collection::btree_map("[a-z.]{1,12}", ".{0,20}", 0..6),
    )
        .prop_map(
            |(root_tree, root_meta, parent, timestamp, subject, body, md)| Commit {
                root_tree,
                root_meta,
                parent,
                timestamp,
                subject,
                body,
                metadata: md.into_iter().collect(),
            },
        )
}

fn names_are_safe(t: &DirTree) -> bool {
    t.files
        .iter()
        .map(|f| &f.name)
        .chain(t.dirs.iter().map(|d| &d.name))
        .all(|n| check_name(n).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn dirtrees_round_trip(t in tree()) {
        prop_assert_eq!(DirTree::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn commits_round_trip(c in commit()) {
        prop_assert_eq!(Commit::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn dirmeta_round_trips(mode in any::<u32>(), uid in any::<u32>(), gid in any::<u32>(),
                           x in proptest::collection::vec(("[a-z.]{1,16}", proptest::collection::vec(any::<u8>(), 0..16)), 0..4)) {
        let meta = Meta {
            mode: 0o040000 | (mode & 0o7777),
            uid,
            gid,
            xattrs: Xattrs::new(x.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect()),
        };
        prop_assert_eq!(Meta::decode_dirmeta(&meta.encode_dirmeta()).unwrap(), meta);
    }

    #[test]
    fn object_decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(t) = DirTree::decode(&bytes) {
            prop_assert!(names_are_safe(&t));
        }
        let _ = Commit::decode(&bytes);
        let _ = Meta::decode_dirmeta(&bytes);
        let _ = arbor_remote::pack::Manifest::decode(&bytes);
        let _ = arbor_remote::index::ChannelIndex::parse(&bytes, "stable");
    }

    /// A valid tree with one byte changed decodes to an error or to a tree whose
    /// names are still safe.
    #[test]
    fn damaged_dirtrees_stay_safe(t in tree(), at in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut bytes = t.encode();
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(t) = DirTree::decode(&bytes) {
            prop_assert!(names_are_safe(&t));
        }
    }

    #[test]
    fn text_decoders_take_any_text(text in "(?s).{0,400}") {
        let _ = arbor_sysroot::Origin::parse(&text);
        let _ = arbor_boot::bls::BlsEntry::parse(&text);
        let _ = arbor_store::dpkg::parse_status(&text);
        let _ = arbor_packages::treefile::Treefile::parse(&text);
        let _ = arbor_sysroot::parse_arbor_karg(&text);
        let _ = arbor_boot::parse_counter(&text);
    }

    /// Line-shaped input (what these formats look like) reaches deeper than noise.
    #[test]
    fn text_decoders_take_any_lines(lines in proptest::collection::vec("[a-zA-Z_-]{0,12}[:= ]{0,2}[ -~]{0,30}", 0..20)) {
        let text = lines.join("\n");
        let _ = arbor_sysroot::Origin::parse(&text);
        let _ = arbor_boot::bls::BlsEntry::parse(&text);
        let _ = arbor_store::dpkg::parse_status(&text);
        let _ = arbor_packages::treefile::Treefile::parse(&text);
    }

    #[test]
    fn unsafe_names_are_refused(prefix in "[a-z]{0,5}", suffix in "[a-z]{0,5}", bad in prop::sample::select(vec!["/", "\0"])) {
        let n = format!("{prefix}{bad}{suffix}");
        prop_assert!(check_name(n.as_bytes()).is_err());
    }
}

#[test]
fn the_special_names_are_refused() {
    for n in [&b""[..], b".", b"..", b"a/b", b"a\0b", b"/"] {
        assert!(check_name(n).is_err(), "{n:?}");
    }
    assert!(check_name(&[b'a'; 256]).is_err());
}
