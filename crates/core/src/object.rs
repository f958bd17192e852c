//! Object identity: the BLAKE3 id and the four object kinds.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// The name of an object: BLAKE3-256 of its canonical encoding (see `docs/format.md`).
///
/// Shown and stored as 64 lowercase hex characters; objects live at
/// `objects/<first two>/<other 62>.<kind>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// Hashes `bytes` as one whole encoding.
    pub fn of(bytes: &[u8]) -> Self {
        ObjectId(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex, the only spelling used on disk and in output.
    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).expect("64 bytes hold 32 in hex");
        String::from_utf8(buf.to_vec()).expect("hex is ASCII")
    }

    /// First 12 hex characters, for messages where the full id is noise.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    /// Path of the object below `objects/`: `xx/yyyy….kind`.
    pub fn relative_path(&self, kind: ObjectKind) -> String {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).expect("64 bytes hold 32 in hex");
        let h = std::str::from_utf8(&buf).expect("hex is ASCII");
        let ext = kind.extension();
        let mut out = String::with_capacity(65 + 1 + ext.len());
        out.push_str(&h[..2]);
        out.push('/');
        out.push_str(&h[2..]);
        out.push('.');
        out.push_str(ext);
        out
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.short())
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a string is not an object id.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not an object id (expected 64 lowercase hex characters)")]
pub struct BadObjectId(pub String);

impl FromStr for ObjectId {
    type Err = BadObjectId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadObjectId(s.to_string());
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(ObjectId(out))
    }
}

/// The kinds of object in the store, as in OSTree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// File content plus mode, owner and xattrs, or a symlink target.
    File,
    /// Sorted names mapping to file ids and (dirtree, dirmeta) pairs.
    DirTree,
    /// Mode, owner and xattrs of a directory.
    DirMeta,
    /// A snapshot: root tree, parent, time, subject, metadata.
    Commit,
}

impl ObjectKind {
    /// All kinds, for walking the store.
    pub const ALL: [ObjectKind; 4] = [
        ObjectKind::File,
        ObjectKind::DirTree,
        ObjectKind::DirMeta,
        ObjectKind::Commit,
    ];

    /// The file-name extension of this kind in `objects/`.
    pub fn extension(self) -> &'static str {
        match self {
            ObjectKind::File => "file",
            ObjectKind::DirTree => "dirtree",
            ObjectKind::DirMeta => "dirmeta",
            ObjectKind::Commit => "commit",
        }
    }

    /// The kind whose byte on the wire (its place in this enum) is `b`: packed
    /// objects and deltas name kinds this way.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// Inverse of [`ObjectKind::extension`].
    pub fn from_extension(ext: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.extension() == ext)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_path() {
        let id = ObjectId::of(b"abc");
        let back: ObjectId = id.to_hex().parse().unwrap();
        assert_eq!(id, back);
        let p = id.relative_path(ObjectKind::DirTree);
        assert_eq!(&p[..3], &format!("{}/", &id.to_hex()[..2]));
        assert!(p.ends_with(".dirtree"));
        assert_eq!(p.len(), 2 + 1 + 62 + ".dirtree".len());
    }

    #[test]
    fn rejects_bad_ids() {
        for s in ["", "zz", &"A".repeat(64), &"0".repeat(63), &"0".repeat(65)] {
            assert!(s.parse::<ObjectId>().is_err(), "{s}");
        }
    }
}
