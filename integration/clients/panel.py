#!/usr/bin/python3
"""A headless settings panel: a real GLib (Gio) client of org.arbor.Arbor1 for the tests.

It does what a panel does over D-Bus and reports what it sees, one JSON object per
line on stdout:

  {"signal": NAME, "path": PATH, "args": [...]}   a signal of the daemon's objects
  {"changed": {NAME: VALUE, ...}, "path": PATH}   a PropertiesChanged
  {"reply": COMMAND, "ok": true, "value": ...}    the answer to a command
  {"reply": COMMAND, "ok": false, "error": NAME, "message": TEXT}

Commands come on stdin, one per line:

  register                    RegisterClient({"id": "test panel"})
  unregister                  UnregisterClient({})
  start METHOD [JSON]         METHOD(JSON options + wait-for-start), subscribed to the
                              new transaction's signals, then its Start(): the race-free
                              pattern of docs/dbus.md. The value is the object path.
  call METHOD [JSON]          METHOD(JSON options), replying with what it returns
  tcall PATH METHOD           METHOD() on a transaction object (Start, Cancel)
  get PROPERTY                a property of /org/arbor/Arbor1
  tget PATH PROPERTY          a property of a transaction
  quit

Usage: panel.py BUS_ADDRESS
"""

import json
import sys

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

NAME = "org.arbor.Arbor1"
ROOT = "/org/arbor/Arbor1"
SYSROOT = "org.arbor.Arbor1.Sysroot"
TRANSACTION = "org.arbor.Arbor1.Transaction"


def out(obj):
    print(json.dumps(obj), flush=True)


def plain(v):
    """A GLib.Variant's value as JSON can carry it."""
    return v.unpack() if isinstance(v, GLib.Variant) else v


def options(text):
    """JSON options as a{sv}: booleans b, integers x, strings s, lists as."""
    def variant(v):
        if isinstance(v, bool):
            return GLib.Variant("b", v)
        if isinstance(v, int):
            return GLib.Variant("x", v)
        if isinstance(v, list):
            return GLib.Variant("as", v)
        return GLib.Variant("s", v)
    return {k: variant(v) for k, v in (json.loads(text) if text else {}).items()}


class Panel:
    def __init__(self, address):
        flags = (Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
                 | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION)
        self.bus = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
        # Every signal of the daemon's objects, subscribed before anything is called.
        self.bus.signal_subscribe(None, None, None, None, None,
                                  Gio.DBusSignalFlags.NONE, self.on_signal)

    def on_signal(self, _conn, _sender, path, iface, name, params):
        if not path.startswith(ROOT):
            return
        if iface == "org.freedesktop.DBus.Properties" and name == "PropertiesChanged":
            _, changed, invalidated = params.unpack()
            out({"changed": changed, "invalidated": invalidated, "path": path})
        else:
            out({"signal": name, "path": path, "args": list(params.unpack())})

    def call(self, path, iface, method, args, reply_type=None):
        return self.bus.call_sync(NAME, path, iface, method, args,
                                  GLib.VariantType(reply_type) if reply_type else None,
                                  Gio.DBusCallFlags.NONE, 120000, None)

    def get(self, path, iface, prop):
        r = self.call(path, "org.freedesktop.DBus.Properties", "Get",
                      GLib.Variant("(ss)", (iface, prop)), "(v)")
        return plain(r.unpack()[0])

    def command(self, line):
        words = line.split(None, 2)
        if not words:
            return True
        cmd, rest = words[0], words[1:]
        try:
            if cmd == "quit":
                return False
            if cmd == "register":
                self.call(ROOT, SYSROOT, "RegisterClient",
                          GLib.Variant("(a{sv})", ({"id": GLib.Variant("s", "test panel")},)))
                value = None
            elif cmd == "unregister":
                self.call(ROOT, SYSROOT, "UnregisterClient", GLib.Variant("(a{sv})", ({},)))
                value = None
            elif cmd in ("start", "call"):
                opts = options(rest[1] if len(rest) > 1 else "")
                if cmd == "start":
                    opts["wait-for-start"] = GLib.Variant("b", True)
                r = self.call(ROOT, SYSROOT, rest[0], GLib.Variant("(a{sv})", (opts,)))
                value = plain(r.unpack()[0]) if r.n_children() else None
                if cmd == "start":
                    self.call(value, TRANSACTION, "Start", None)
            elif cmd == "tcall":
                self.call(rest[0], TRANSACTION, rest[1], None)
                value = None
            elif cmd == "get":
                value = self.get(ROOT, SYSROOT, rest[0])
            elif cmd == "tget":
                path, prop = rest[0], rest[1]
                value = self.get(path, TRANSACTION, prop)
            else:
                raise ValueError("unknown command " + cmd)
            out({"reply": cmd, "ok": True, "value": value})
        except GLib.Error as e:
            out({"reply": cmd, "ok": False,
                 "error": Gio.DBusError.get_remote_error(e) or "",
                 "message": e.message})
        return True


def main():
    panel = Panel(sys.argv[1])
    loop = GLib.MainLoop()

    def on_stdin(channel, _condition):
        line = channel.readline()
        if not line or not panel.command(line.strip()):
            loop.quit()
            return False
        return True

    channel = GLib.IOChannel.unix_new(sys.stdin.fileno())
    GLib.io_add_watch(channel, GLib.PRIORITY_DEFAULT, GLib.IOCondition.IN | GLib.IOCondition.HUP,
                      on_stdin)
    out({"ready": True})
    loop.run()


if __name__ == "__main__":
    main()
