//! The text formats arbor reads from trees and disks it did not write: origin files,
//! BLS entries, dpkg status, treefiles, `arbor=` kernel arguments, entry names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = arbor_sysroot::Origin::parse(text);
    let _ = arbor_boot::bls::BlsEntry::parse(text);
    let _ = arbor_store::dpkg::parse_status(text);
    let _ = arbor_packages::treefile::Treefile::parse(text);
    let _ = arbor_sysroot::parse_arbor_karg(text);
    let _ = arbor_boot::parse_counter(text);
});
