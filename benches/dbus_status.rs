//! Latency of a status read over D-Bus: `Properties.Get(Sysroot, Deployments)` from a
//! Rust client, 1000 times after a warm-up. Run by `benches/dbus.sh`, which starts a
//! private bus and `arbord` and passes the bus address in `ARBOR_BUS_ADDRESS`.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Ok(address) = std::env::var("ARBOR_BUS_ADDRESS") else {
        println!("run benches/dbus.sh: it starts the bus and the daemon");
        return;
    };
    let conn = zbus::blocking::connection::Builder::address(address.as_str())
        .expect("bus address")
        .build()
        .expect("connecting to the bus");
    let read = || {
        let t = Instant::now();
        let reply = conn
            .call_method(
                Some("org.arbor.Arbor1"),
                "/org/arbor/Arbor1",
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.arbor.Arbor1.Sysroot", "Deployments"),
            )
            .expect("reading Deployments");
        let v: zbus::zvariant::OwnedValue = reply.body().deserialize().expect("a variant");
        std::hint::black_box(v);
        t.elapsed()
    };
    for _ in 0..100 {
        read();
    }
    let mut times: Vec<Duration> = (0..1000).map(|_| read()).collect();
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "status read (Get Deployments), 1000 calls: median {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
        us(times[499]),
        us(times[899]),
        us(times[989]),
        us(times[999])
    );
}
