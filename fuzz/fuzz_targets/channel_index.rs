//! A channel index (`CHANNEL.json`, a TUF target): parses or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = arbor_remote::index::ChannelIndex::parse(data, "stable");
});
