//! What the store records of an inode besides its content: mode (with the type
//! bits), owner and extended attributes. The file system helpers ([`crate::fsutil`])
//! read and apply it; the store encodes it (its `encoding`).

/// File-type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// Regular file type bits.
pub const S_IFREG: u32 = 0o100000;
/// Directory type bits.
pub const S_IFDIR: u32 = 0o040000;
/// Symlink type bits.
pub const S_IFLNK: u32 = 0o120000;

/// Extended attributes, sorted by name, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Xattrs(Vec<(Vec<u8>, Vec<u8>)>);

impl Xattrs {
    /// Builds the canonical (sorted) form from pairs in any order.
    pub fn new(mut pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        pairs.sort();
        pairs.dedup_by(|a, b| a.0 == b.0);
        Xattrs(pairs)
    }
    /// The pairs, sorted by name.
    pub fn pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.0
    }
    /// True when there are none, the common case worth a fast path.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Mode, owner and xattrs: what a file object or a directory carries besides content.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Extended attributes (security.capability among them).
    pub xattrs: Xattrs,
}
