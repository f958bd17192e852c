//! Checking a call's argument signature before zbus decodes it.
//!
//! zbus answers a call whose arguments do not decode as the method's with its own
//! `org.freedesktop.zbus.Error`, a name no client can act on. [`Checked`] wraps an
//! interface and compares the body's signature with what the interface introspects
//! first: a wrong one is `org.freedesktop.DBus.Error.InvalidArgs`, naming the
//! signature expected (never echoing the arguments). Everything else is the wrapped
//! interface's own behaviour.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use zbus::fdo;
use zbus::message::{Header, Message};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult, Interface, SignalEmitter};
use zbus::zvariant::{OwnedValue, Value};
use zbus::{Connection, ObjectServer};

/// An interface whose methods refuse a wrong argument signature with InvalidArgs.
pub struct Checked<I> {
    inner: I,
    /// Method name → the signature of its arguments, as introspected.
    signatures: HashMap<String, String>,
}

impl<I: Interface> Checked<I> {
    /// Wraps `inner`, reading its methods' signatures from its introspection.
    pub fn new(inner: I) -> Self {
        let mut xml = String::new();
        inner.introspect_to_writer(&mut xml, 0);
        Checked {
            inner,
            signatures: method_signatures(&xml),
        }
    }
}

impl<I> Deref for Checked<I> {
    type Target = I;
    fn deref(&self) -> &I {
        &self.inner
    }
}

impl<I> DerefMut for Checked<I> {
    fn deref_mut(&mut self) -> &mut I {
        &mut self.inner
    }
}

/// The value of `attr="…"` in one XML tag.
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let start = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Each `<method>`'s name and the concatenated types of its `in` arguments, from an
/// introspection document (zbus writes one tag per line).
pub fn method_signatures(xml: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut current: Option<String> = None;
    for line in xml.lines().map(str::trim) {
        if line.starts_with("<method ") {
            current = attr(line, "name").map(str::to_string);
            if let Some(m) = &current {
                out.insert(m.clone(), String::new());
            }
            if line.ends_with("/>") {
                current = None;
            }
        } else if line.starts_with("</method") {
            current = None;
        } else if line.starts_with("<arg ")
            && let Some(m) = &current
            && attr(line, "direction") != Some("out")
            && let Some(t) = attr(line, "type")
        {
            out.get_mut(m).unwrap().push_str(t);
        }
    }
    out
}

fn refuse<'a>(conn: &'a Connection, msg: &'a Message, text: String) -> DispatchResult<'a> {
    DispatchResult::Async(Box::pin(async move {
        conn.reply_dbus_error(&msg.header(), fdo::Error::InvalidArgs(text))
            .await
            .map(|_| ())
    }))
}

#[async_trait::async_trait]
impl<I: Interface> Interface for Checked<I> {
    fn name() -> InterfaceName<'static> {
        I::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<OwnedValue>> {
        self.inner
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        self.inner
            .get_all(server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Value<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult<'call> {
        self.inner
            .set(property_name, value, server, connection, header, emitter)
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Value<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<()>> {
        self.inner
            .set_mut(property_name, value, server, connection, header, emitter)
            .await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        if let Some(want) = self.signatures.get(name.as_str()) {
            let got = msg.body().signature().to_string();
            // An empty body's signature is written "" by some clients and "()" by
            // none: compare without the outer parentheses zvariant may add.
            let got = got
                .strip_prefix('(')
                .and_then(|g| g.strip_suffix(')'))
                .unwrap_or(&got);
            if got != want {
                let text = format!("{name} takes arguments of signature '{want}'");
                return refuse(connection, msg, text);
            }
        }
        self.inner.call(server, connection, msg, name)
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        self.inner.call_mut(server, connection, msg, name)
    }

    fn introspect_to_writer(&self, writer: &mut dyn std::fmt::Write, level: usize) {
        self.inner.introspect_to_writer(writer, level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_come_from_the_introspection() {
        let xml = r#"<interface name="x">
  <method name="Deploy">
    <arg name="refspec" type="s" direction="in"/>
    <arg name="options" type="a{sv}" direction="in"/>
    <arg name="transaction" type="o" direction="out"/>
  </method>
  <method name="Cancel">
  </method>
  <method name="Start"/>
  <property name="P" type="s" access="read"/>
</interface>"#;
        let s = method_signatures(xml);
        assert_eq!(s["Deploy"], "sa{sv}");
        assert_eq!(s["Cancel"], "");
        assert_eq!(s["Start"], "");
        assert_eq!(s.len(), 3);
    }
}
