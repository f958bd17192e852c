//! The canonical, versioned encoding of every object kind (specified in `docs/format.md`).
//!
//! Every encoding starts with an 8-byte tag naming kind and version, then fixed-width
//! little-endian integers and u32-length-prefixed byte strings. Sorting and uniqueness
//! rules make the encoding of a given tree unique, so the same tree gives the same ids
//! on every machine. Decoding is strict: objects read from disk or the network are
//! hostile until proven otherwise, so anything that could name a path outside the tree
//! (`/`, `..`, empty names), trailing bytes, unsorted or oversized fields is refused.

use super::object::ObjectId;
pub use arbor_core::meta::{Meta, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, Xattrs};

/// Tag of a file object header, version 1.
pub const FILE_TAG: &[u8; 8] = b"arbrfil1";
/// Tag of a dirtree object, version 1.
pub const DIRTREE_TAG: &[u8; 8] = b"arbrdtr1";
/// Tag of a dirmeta object, version 1.
pub const DIRMETA_TAG: &[u8; 8] = b"arbrdmt1";
/// Tag of a commit object, version 1.
pub const COMMIT_TAG: &[u8; 8] = b"arbrcmt1";

const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;
const XATTR_NAME_MAX: usize = 255;
const XATTR_VALUE_MAX: usize = 65536;
const XATTRS_MAX: usize = 1024;
const TEXT_MAX: usize = 1 << 20;
const METADATA_MAX: usize = 4096;

/// Why bytes are not a valid object encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The object ended early.
    #[error("truncated")]
    Truncated,
    /// Bytes follow the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// The tag is not this kind's, or is a version this build does not read.
    #[error("unknown tag {0:?} (wrong kind, or a newer format version)")]
    Tag(String),
    /// A field breaks a rule of the format.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> DecodeError {
    DecodeError::Invalid(msg.into())
}

/// What a file object holds besides its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileBody {
    /// A regular file: its size and the BLAKE3 of its bytes.
    Regular { size: u64, content: [u8; 32] },
    /// A symlink and its target, never followed.
    Symlink { target: Vec<u8> },
}

/// The header of a file object; its hash is the file object's id.
///
/// Hashing the content's digest rather than the content itself lets an unchanged file
/// (known by the inode cache) get its id without reading a byte.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileHeader {
    /// Mode (S_IFREG or S_IFLNK), owner, xattrs.
    pub meta: Meta,
    /// Content digest or symlink target.
    pub body: FileBody,
}

/// One file entry of a dirtree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Single path component.
    pub name: Vec<u8>,
    /// The file object.
    pub file: ObjectId,
}

/// One subdirectory entry of a dirtree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Single path component.
    pub name: Vec<u8>,
    /// The subdirectory's contents.
    pub tree: ObjectId,
    /// The subdirectory's own mode, owner, xattrs.
    pub meta: ObjectId,
}

/// A directory's contents: files and subdirectories, each list sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirTree {
    /// Non-directory entries.
    pub files: Vec<FileEntry>,
    /// Directory entries.
    pub dirs: Vec<DirEntry>,
}

/// A snapshot of a tree with its history link and description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Root dirtree.
    pub root_tree: ObjectId,
    /// Root dirmeta.
    pub root_meta: ObjectId,
    /// Previous commit on the branch, if any.
    pub parent: Option<ObjectId>,
    /// Seconds since the epoch, UTC.
    pub timestamp: i64,
    /// One-line summary.
    pub subject: String,
    /// Longer description.
    pub body: String,
    /// Key=value metadata (version, ...), sorted by key, keys unique.
    pub metadata: Vec<(String, String)>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(tag: &[u8; 8]) -> Self {
        Writer(tag.to_vec())
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn id(&mut self, id: &ObjectId) {
        self.0.extend_from_slice(&id.0);
    }
    fn meta(&mut self, m: &Meta) {
        self.u32(m.mode);
        self.u32(m.uid);
        self.u32(m.gid);
        self.u32(m.xattrs.pairs().len() as u32);
        for (k, v) in m.xattrs.pairs() {
            self.bytes(k);
            self.bytes(v);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn start(bytes: &'a [u8], tag: &[u8; 8]) -> Result<Self, DecodeError> {
        let head = bytes.get(..8).ok_or(DecodeError::Truncated)?;
        if head != tag {
            return Err(DecodeError::Tag(String::from_utf8_lossy(head).into_owned()));
        }
        Ok(Reader(&bytes[8..]))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(invalid(format!("{what} is {n} bytes, more than {max}")));
        }
        self.take(n)
    }
    fn text(&mut self, max: usize, what: &str) -> Result<String, DecodeError> {
        let b = self.bytes(max, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| invalid(format!("{what} is not UTF-8")))
    }
    fn id(&mut self) -> Result<ObjectId, DecodeError> {
        Ok(ObjectId(self.take(32)?.try_into().unwrap()))
    }
    /// A count that must fit the remaining bytes at `min_each` bytes per item, so a
    /// hostile count cannot make us allocate more than the object's own size.
    fn count(&mut self, max: usize, min_each: usize, what: &str) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_each) > self.0.len() {
            return Err(invalid(format!("{what} count {n} is impossible here")));
        }
        Ok(n)
    }
    fn meta(&mut self, dir: bool) -> Result<Meta, DecodeError> {
        let mode = self.u32()?;
        let uid = self.u32()?;
        let gid = self.u32()?;
        let fmt = mode & S_IFMT;
        let ok = if dir {
            fmt == S_IFDIR
        } else {
            fmt == S_IFREG || (fmt == S_IFLNK && mode == S_IFLNK | 0o777)
        };
        if !ok || mode & !(S_IFMT | 0o7777) != 0 {
            return Err(invalid(format!("mode {mode:o} is not allowed here")));
        }
        let n = self.count(XATTRS_MAX, 8, "xattr")?;
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.bytes(XATTR_NAME_MAX, "xattr name")?.to_vec();
            let v = self.bytes(XATTR_VALUE_MAX, "xattr value")?.to_vec();
            if k.is_empty() || k.contains(&0) {
                return Err(invalid("empty xattr name or NUL in it"));
            }
            if pairs.last().is_some_and(|(p, _)| *p >= k) {
                return Err(invalid("xattrs not sorted or not unique"));
            }
            pairs.push((k, v));
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            // Checked sorted and unique above: the canonical form as it is.
            xattrs: Xattrs::new(pairs),
        })
    }
    fn finish(self) -> Result<(), DecodeError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Checks that `name` is one safe path component: the rule that keeps checkouts in DEST.
pub fn check_name(name: &[u8]) -> Result<(), DecodeError> {
    let shown = String::from_utf8_lossy(name);
    if name.is_empty() {
        return Err(invalid("empty file name"));
    }
    if name == b"." || name == b".." {
        return Err(invalid(format!("file name '{shown}' is not allowed")));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(invalid(format!("file name '{shown}' contains '/' or NUL")));
    }
    if name.len() > NAME_MAX {
        return Err(invalid(format!(
            "file name '{shown}' is longer than {NAME_MAX} bytes"
        )));
    }
    Ok(())
}

impl FileHeader {
    /// Canonical bytes; `ObjectId::of` of them is the file object's id.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(FILE_TAG);
        w.meta(&self.meta);
        match &self.body {
            FileBody::Regular { size, content } => {
                w.u64(*size);
                w.0.extend_from_slice(content);
            }
            FileBody::Symlink { target } => w.bytes(target),
        }
        w.0
    }

    /// The file object's id.
    pub fn id(&self) -> ObjectId {
        ObjectId::of(&self.encode())
    }

    /// Strict inverse of [`FileHeader::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, FILE_TAG)?;
        let meta = r.meta(false)?;
        let body = if meta.mode & S_IFMT == S_IFREG {
            let size = r.u64()?;
            let content = r.take(32)?.try_into().unwrap();
            FileBody::Regular { size, content }
        } else {
            let target = r.bytes(PATH_MAX, "symlink target")?.to_vec();
            if target.is_empty() || target.contains(&0) {
                return Err(invalid("empty symlink target or NUL in it"));
            }
            FileBody::Symlink { target }
        };
        r.finish()?;
        Ok(FileHeader { meta, body })
    }
}

/// The dirmeta encoding of a [`Meta`] (a directory's own mode, owner and xattrs):
/// [`Meta`] is the file system's type, its encoding the store's.
pub trait DirMetaEncoding: Sized {
    /// The dirmeta object's bytes.
    fn encode_dirmeta(&self) -> Vec<u8>;
    /// Strict inverse of [`DirMetaEncoding::encode_dirmeta`].
    fn decode_dirmeta(bytes: &[u8]) -> Result<Self, DecodeError>;
}

impl DirMetaEncoding for Meta {
    fn encode_dirmeta(&self) -> Vec<u8> {
        let mut w = Writer::new(DIRMETA_TAG);
        w.meta(self);
        w.0
    }

    fn decode_dirmeta(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, DIRMETA_TAG)?;
        let m = r.meta(true)?;
        r.finish()?;
        Ok(m)
    }
}

impl DirTree {
    /// Canonical bytes. Callers must have sorted both lists by name.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(DIRTREE_TAG);
        w.u32(self.files.len() as u32);
        for f in &self.files {
            w.bytes(&f.name);
            w.id(&f.file);
        }
        w.u32(self.dirs.len() as u32);
        for d in &self.dirs {
            w.bytes(&d.name);
            w.id(&d.tree);
            w.id(&d.meta);
        }
        w.0
    }

    /// Sorts both lists into canonical order.
    pub fn sort(&mut self) {
        self.files.sort_by(|a, b| a.name.cmp(&b.name));
        self.dirs.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Strict inverse of [`DirTree::encode`]: every name is one safe component, each
    /// list strictly sorted, and no name is both a file and a directory.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, DIRTREE_TAG)?;
        let nf = r.count(usize::MAX, 36, "file entry")?;
        let mut files: Vec<FileEntry> = Vec::with_capacity(nf);
        for _ in 0..nf {
            let name = r.bytes(NAME_MAX, "file name")?.to_vec();
            check_name(&name)?;
            if files.last().is_some_and(|p| p.name >= name) {
                return Err(invalid("file entries not sorted or not unique"));
            }
            files.push(FileEntry {
                name,
                file: r.id()?,
            });
        }
        let nd = r.count(usize::MAX, 68, "directory entry")?;
        let mut dirs: Vec<DirEntry> = Vec::with_capacity(nd);
        for _ in 0..nd {
            let name = r.bytes(NAME_MAX, "directory name")?.to_vec();
            check_name(&name)?;
            if dirs.last().is_some_and(|p| p.name >= name) {
                return Err(invalid("directory entries not sorted or not unique"));
            }
            if files.binary_search_by(|f| f.name.cmp(&name)).is_ok() {
                let shown = String::from_utf8_lossy(&name);
                return Err(invalid(format!("'{shown}' is both a file and a directory")));
            }
            let tree = r.id()?;
            let meta = r.id()?;
            dirs.push(DirEntry { name, tree, meta });
        }
        r.finish()?;
        Ok(DirTree { files, dirs })
    }
}

impl Commit {
    /// Canonical bytes; metadata must be sorted by key (see [`Commit::new_metadata`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(COMMIT_TAG);
        w.id(&self.root_tree);
        w.id(&self.root_meta);
        match &self.parent {
            Some(p) => {
                w.u8(1);
                w.id(p);
            }
            None => w.u8(0),
        }
        w.u64(self.timestamp as u64);
        w.bytes(self.subject.as_bytes());
        w.bytes(self.body.as_bytes());
        w.u32(self.metadata.len() as u32);
        for (k, v) in &self.metadata {
            w.bytes(k.as_bytes());
            w.bytes(v.as_bytes());
        }
        w.0
    }

    /// Puts key=value pairs into canonical order; a key given twice keeps its last value.
    pub fn new_metadata(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in pairs {
            map.insert(k, v);
        }
        map.into_iter().collect()
    }

    /// Looks up one metadata value.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Strict inverse of [`Commit::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, COMMIT_TAG)?;
        let root_tree = r.id()?;
        let root_meta = r.id()?;
        let parent = match r.u8()? {
            0 => None,
            1 => Some(r.id()?),
            n => return Err(invalid(format!("parent flag {n}"))),
        };
        let timestamp = r.u64()? as i64;
        let subject = r.text(TEXT_MAX, "subject")?;
        let body = r.text(TEXT_MAX, "body")?;
        let n = r.count(METADATA_MAX, 8, "metadata")?;
        let mut metadata: Vec<(String, String)> = Vec::with_capacity(n);
        for _ in 0..n {
            let k = r.text(NAME_MAX, "metadata key")?;
            let v = r.text(TEXT_MAX, "metadata value")?;
            if k.is_empty() || metadata.last().is_some_and(|(p, _)| *p >= k) {
                return Err(invalid("metadata keys empty, unsorted or not unique"));
            }
            metadata.push((k, v));
        }
        r.finish()?;
        Ok(Commit {
            root_tree,
            root_meta,
            parent,
            timestamp,
            subject,
            body,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            xattrs: Xattrs::default(),
        }
    }

    #[test]
    fn round_trips() {
        let fh = FileHeader {
            meta: Meta {
                xattrs: Xattrs::new(vec![
                    (b"user.b".to_vec(), b"2".to_vec()),
                    (b"user.a".to_vec(), vec![]),
                ]),
                ..meta(S_IFREG | 0o4755)
            },
            body: FileBody::Regular {
                size: 5,
                content: [7; 32],
            },
        };
        assert_eq!(FileHeader::decode(&fh.encode()).unwrap(), fh);
        let link = FileHeader {
            meta: meta(S_IFLNK | 0o777),
            body: FileBody::Symlink {
                target: b"../x".to_vec(),
            },
        };
        assert_eq!(FileHeader::decode(&link.encode()).unwrap(), link);
        let m = meta(S_IFDIR | 0o755);
        assert_eq!(Meta::decode_dirmeta(&m.encode_dirmeta()).unwrap(), m);
        let t = DirTree {
            files: vec![FileEntry {
                name: b"a".to_vec(),
                file: ObjectId([1; 32]),
            }],
            dirs: vec![DirEntry {
                name: b"b".to_vec(),
                tree: ObjectId([2; 32]),
                meta: ObjectId([3; 32]),
            }],
        };
        assert_eq!(DirTree::decode(&t.encode()).unwrap(), t);
        let c = Commit {
            root_tree: ObjectId([1; 32]),
            root_meta: ObjectId([2; 32]),
            parent: Some(ObjectId([3; 32])),
            timestamp: -5,
            subject: "s".into(),
            body: String::new(),
            metadata: Commit::new_metadata(vec![
                ("version".into(), "1".into()),
                ("a".into(), "b".into()),
            ]),
        };
        assert_eq!(Commit::decode(&c.encode()).unwrap(), c);
    }

    fn tree_with_name(name: &[u8]) -> Vec<u8> {
        DirTree {
            files: vec![FileEntry {
                name: name.to_vec(),
                file: ObjectId([1; 32]),
            }],
            dirs: vec![],
        }
        .encode()
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
            let err = DirTree::decode(&tree_with_name(bad)).unwrap_err();
            assert!(matches!(err, DecodeError::Invalid(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn unsorted_duplicate_and_trailing_are_refused() {
        let f = |n: &[u8]| FileEntry {
            name: n.to_vec(),
            file: ObjectId([1; 32]),
        };
        let unsorted = DirTree {
            files: vec![f(b"b"), f(b"a")],
            dirs: vec![],
        }
        .encode();
        assert!(DirTree::decode(&unsorted).is_err());
        let dup = DirTree {
            files: vec![f(b"a"), f(b"a")],
            dirs: vec![],
        }
        .encode();
        assert!(DirTree::decode(&dup).is_err());
        let both = DirTree {
            files: vec![f(b"a")],
            dirs: vec![DirEntry {
                name: b"a".to_vec(),
                tree: ObjectId([0; 32]),
                meta: ObjectId([0; 32]),
            }],
        };
        assert!(DirTree::decode(&both.encode()).is_err());
        let mut trailing = tree_with_name(b"ok");
        trailing.push(0);
        assert_eq!(DirTree::decode(&trailing), Err(DecodeError::Trailing(1)));
        let whole = tree_with_name(b"ok");
        assert_eq!(
            DirTree::decode(&whole[..whole.len() - 1]),
            Err(DecodeError::Truncated)
        );
        assert!(DirTree::decode(&whole[..20]).is_err());
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut b = DIRTREE_TAG.to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(DirTree::decode(&b).is_err());
    }

    #[test]
    fn bad_modes_are_refused() {
        let dev = FileHeader {
            meta: meta(0o020644),
            body: FileBody::Regular {
                size: 0,
                content: [0; 32],
            },
        };
        assert!(FileHeader::decode(&dev.encode()).is_err());
        let odd_link = FileHeader {
            meta: meta(S_IFLNK | 0o755),
            body: FileBody::Symlink {
                target: b"x".to_vec(),
            },
        };
        assert!(FileHeader::decode(&odd_link.encode()).is_err());
        assert!(Meta::decode_dirmeta(&meta(S_IFREG | 0o644).encode_dirmeta()).is_err());
        assert!(matches!(
            Meta::decode_dirmeta(&FileHeader::encode(&dev)),
            Err(DecodeError::Tag(_))
        ));
    }

    /// The test vectors of `docs/format.md`, built from their descriptions there.
    fn vectors() -> Vec<(&'static str, Vec<u8>)> {
        let root = Meta {
            mode: S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            xattrs: Xattrs::default(),
        };
        let hello = FileHeader {
            meta: Meta {
                mode: S_IFREG | 0o644,
                uid: 0,
                gid: 0,
                xattrs: Xattrs::new(vec![(b"user.test".to_vec(), b"1".to_vec())]),
            },
            body: FileBody::Regular {
                size: 6,
                content: *blake3::hash(b"hello\n").as_bytes(),
            },
        };
        let link = FileHeader {
            meta: Meta {
                mode: S_IFLNK | 0o777,
                uid: 0,
                gid: 0,
                xattrs: Xattrs::default(),
            },
            body: FileBody::Symlink {
                target: b"../lib".to_vec(),
            },
        };
        let empty = DirTree::default();
        let tree = DirTree {
            files: vec![FileEntry {
                name: b"hello".to_vec(),
                file: hello.id(),
            }],
            dirs: vec![DirEntry {
                name: b"sub".to_vec(),
                tree: ObjectId::of(&empty.encode()),
                meta: ObjectId::of(&root.encode_dirmeta()),
            }],
        };
        let commit = Commit {
            root_tree: ObjectId::of(&tree.encode()),
            root_meta: ObjectId::of(&root.encode_dirmeta()),
            parent: None,
            timestamp: 1_700_000_000,
            subject: "hello".into(),
            body: String::new(),
            metadata: vec![("version".into(), "1".into())],
        };
        vec![
            ("dirmeta-root", root.encode_dirmeta()),
            ("file-hello", hello.encode()),
            ("file-symlink", link.encode()),
            ("dirtree-empty", empty.encode()),
            ("dirtree-hello", tree.encode()),
            ("commit-hello", commit.encode()),
        ]
    }

    /// The vectors written in docs/format.md are what this code produces: a change to
    /// the encoding that forgets the spec (and the format version) fails here.
    #[test]
    #[allow(clippy::print_stdout)] // ARBOR_PRINT_VECTORS prints them for the doc
    fn format_doc_test_vectors_match() {
        let doc = include_str!("../../../docs/format.md");
        let mut documented = std::collections::BTreeMap::new();
        let mut name = None;
        for line in doc.lines() {
            if let Some(n) = line.strip_prefix("vector: ") {
                name = Some(n.trim().to_string());
            } else if let (Some(n), Some(v)) = (&name, line.strip_prefix("encoding: ")) {
                documented
                    .entry(n.clone())
                    .or_insert((String::new(), String::new()))
                    .0 = v.trim().to_string();
            } else if let (Some(n), Some(v)) = (&name, line.strip_prefix("id: ")) {
                documented
                    .entry(n.clone())
                    .or_insert((String::new(), String::new()))
                    .1 = v.trim().to_string();
            }
        }
        let vectors = vectors();
        if std::env::var_os("ARBOR_PRINT_VECTORS").is_some() {
            for (n, bytes) in &vectors {
                println!(
                    "vector: {n}\nencoding: {}\nid: {}\n",
                    hex::encode(bytes),
                    ObjectId::of(bytes)
                );
            }
        }
        assert_eq!(
            documented.len(),
            vectors.len(),
            "docs/format.md lists {} vectors",
            documented.len()
        );
        for (n, bytes) in vectors {
            let (enc, id) = &documented[n];
            assert_eq!(enc, &hex::encode(&bytes), "encoding of vector {n}");
            assert_eq!(id, &ObjectId::of(&bytes).to_hex(), "id of vector {n}");
        }
    }

    /// Mutated and random bytes never panic a decoder, and whatever decodes encodes back
    /// to the very same bytes: every accepted object has exactly one encoding.
    #[test]
    fn decoders_survive_mutations_and_stay_canonical() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let check = |bytes: &[u8]| {
            if let Ok(v) = FileHeader::decode(bytes) {
                assert_eq!(v.encode(), bytes);
            }
            if let Ok(v) = DirTree::decode(bytes) {
                assert_eq!(v.encode(), bytes);
            }
            if let Ok(v) = Meta::decode_dirmeta(bytes) {
                assert_eq!(v.encode_dirmeta(), bytes);
            }
            if let Ok(v) = Commit::decode(bytes) {
                assert_eq!(v.encode(), bytes);
            }
        };
        for (_, valid) in vectors() {
            for _ in 0..2000 {
                let mut b = valid.clone();
                match next() % 4 {
                    0 => {
                        let i = next() as usize % b.len();
                        b[i] ^= 1 << (next() % 8);
                    }
                    1 => b.truncate(next() as usize % b.len()),
                    2 => b.push(next() as u8),
                    _ => {
                        let i = 8 + next() as usize % (b.len() - 8);
                        b[i] = next() as u8;
                    }
                }
                check(&b);
            }
        }
        for _ in 0..2000 {
            let len = next() as usize % 200;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let tags = [FILE_TAG, DIRTREE_TAG, DIRMETA_TAG, COMMIT_TAG];
            if b.len() >= 8 {
                b[..8].copy_from_slice(tags[next() as usize % 4]);
            }
            check(&b);
        }
    }
}
