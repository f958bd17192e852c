//! The wire format: the documents arbor hands out (status, update status, outcome,
//! history entry, available update) are one set of types, serialised by serde for
//! `--json` and HTTP, and turned into real D-Bus `a{sv}` dictionaries by zvariant's
//! derives (`Type`, `Value`, `OwnedValue` with `signature = "dict"`) for `arbord`. Both
//! encodings use the same field names. Each top-level document carries
//! [`FORMAT_VERSION`] as `format_version`.
//!
//! Here: the version, the D-Bus encoding of an object id (a hex string, as JSON
//! has it), and the two helpers of the few types whose dictionary is written by hand
//! because serde flattens a field into it (zvariant's derive would nest it).

use std::collections::HashMap;

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

/// The signature of every document on the bus: `a{sv}`.
pub const DICT: &Signature = <HashMap<String, OwnedValue> as Type>::SIGNATURE;

/// A dictionary's entries by name: what a hand-written conversion adds a flattened
/// field's entries to, or reads them from.
pub fn entries(v: Value<'_>) -> zvariant::Result<HashMap<String, Value<'_>>> {
    HashMap::try_from(v)
}

/// Entry `key` of `entries`, converted; a missing entry is a wrong type, as zvariant's
/// derive has it.
pub fn take<'a, T>(entries: &mut HashMap<String, Value<'a>>, key: &str) -> zvariant::Result<T>
where
    T: TryFrom<Value<'a>>,
    T::Error: Into<zvariant::Error>,
{
    entries
        .remove(key)
        .ok_or(zvariant::Error::IncorrectType)?
        .downcast()
}

/// A document as the entries of a D-Bus method's `a{sv}` reply (a method's reply is
/// serialized by serde, which would make a struct of a document).
pub fn dict<'a, T: Into<Value<'a>>>(doc: T) -> zvariant::Result<HashMap<String, OwnedValue>> {
    HashMap::try_from(doc.into())
}

/// A document that may be absent (the booted deployment, the offered update): on the
/// bus an `a{sv}` that is empty when absent, since D-Bus has no null; in JSON `null`.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Maybe<T>(pub Option<T>);

impl<T> Type for Maybe<T> {
    const SIGNATURE: &'static Signature = DICT;
}

impl<'a, T: Into<Value<'a>>> From<Maybe<T>> for Value<'a> {
    fn from(m: Maybe<T>) -> Self {
        match m.0 {
            Some(doc) => doc.into(),
            None => Value::from(HashMap::<String, Value<'a>>::new()),
        }
    }
}

impl<T> TryFrom<OwnedValue> for Maybe<T>
where
    T: TryFrom<OwnedValue, Error = zvariant::Error>,
{
    type Error = zvariant::Error;
    fn try_from(v: OwnedValue) -> Result<Self, Self::Error> {
        if entries(Value::from(v.try_clone()?))?.is_empty() {
            return Ok(Maybe(None));
        }
        T::try_from(v).map(|doc| Maybe(Some(doc)))
    }
}

impl<T> TryFrom<Maybe<T>> for OwnedValue
where
    T: for<'a> Into<Value<'a>>,
{
    type Error = zvariant::Error;
    fn try_from(m: Maybe<T>) -> Result<Self, Self::Error> {
        OwnedValue::try_from(Value::from(m))
    }
}

/// The `OwnedValue` conversions of a type whose `Value` conversions are written by hand.
#[macro_export]
macro_rules! owned_value_through_value {
    ($t:ty) => {
        impl TryFrom<zvariant::OwnedValue> for $t {
            type Error = zvariant::Error;
            fn try_from(v: zvariant::OwnedValue) -> Result<Self, Self::Error> {
                <$t>::try_from(zvariant::Value::from(v))
            }
        }

        impl TryFrom<$t> for zvariant::OwnedValue {
            type Error = zvariant::Error;
            fn try_from(v: $t) -> Result<Self, Self::Error> {
                zvariant::OwnedValue::try_from(zvariant::Value::from(v))
            }
        }
    };
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
