//! The wire format: the documents arbor hands out (status, update status, outcome,
//! history entry, available update) are one set of types, serialised by serde for
//! `--json` and HTTP, and turned into real D-Bus `a{sv}` dictionaries by zvariant's
//! derives (`Type`, `Value`, `OwnedValue` with `signature = "dict"`) for `arbord`. Both
//! encodings use the same field names. Each top-level document carries
//! [`FORMAT_VERSION`] as `format_version`.
//!
//! Here: the version, and the D-Bus encoding of an object id (a hex string, as JSON
//! has it).

use zvariant::{OwnedValue, Signature, Type, Value};

use crate::object::ObjectId;

/// The version of every wire document; it grows when a field changes meaning or goes.
/// New fields do not change it (readers ignore what they do not know).
pub const FORMAT_VERSION: u32 = 1;

impl Type for ObjectId {
    const SIGNATURE: &'static Signature = &Signature::Str;
}

impl From<ObjectId> for Value<'_> {
    fn from(id: ObjectId) -> Self {
        Value::from(id.to_hex())
    }
}

impl TryFrom<Value<'_>> for ObjectId {
    type Error = zvariant::Error;
    fn try_from(v: Value<'_>) -> Result<Self, Self::Error> {
        String::try_from(v)?
            .parse()
            .map_err(|_| zvariant::Error::IncorrectType)
    }
}

impl TryFrom<&Value<'_>> for ObjectId {
    type Error = zvariant::Error;
    fn try_from(v: &Value<'_>) -> Result<Self, Self::Error> {
        ObjectId::try_from(v.try_clone()?)
    }
}

impl TryFrom<OwnedValue> for ObjectId {
    type Error = zvariant::Error;
    fn try_from(v: OwnedValue) -> Result<Self, Self::Error> {
        ObjectId::try_from(Value::from(v))
    }
}

impl TryFrom<ObjectId> for OwnedValue {
    type Error = zvariant::Error;
    fn try_from(id: ObjectId) -> Result<Self, Self::Error> {
        OwnedValue::try_from(Value::from(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_id_is_a_hex_string_on_the_bus() {
        let id = ObjectId([7; 32]);
        let v = Value::from(id);
        assert_eq!(v, Value::from("07".repeat(32)));
        assert_eq!(ObjectId::try_from(v).unwrap(), id);
        assert!(ObjectId::try_from(Value::from("nope")).is_err());
    }
}
