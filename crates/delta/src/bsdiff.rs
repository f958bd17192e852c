//! bsdiff for large executables, whose rebuilt code shifts addresses all over: bsdiff
//! follows that, zstd's patch mode does not.
//!
//! `qbsdiff` finds the matches and writes BSDIFF40, whose three streams (controls, the
//! bytewise difference, new bytes) are bzip2. xz shrinks those streams by 8% on a
//! Debian point update (120 kB of 1.55 MB), so format 2 stores them as xz
//! ([`Encoding::BsdiffXz`]); BSDIFF40 itself is still applied for format 1 deltas.
//! xz runs at preset 6 with a dictionary the size of the stream: "extreme" takes
//! another 3% off and doubles the time a publisher spends generating.
//!
//! [`Encoding::BsdiffXz`]: super::Encoding::BsdiffXz

use std::io::{Read, Write};

use anyhow::{Context, Result, ensure};
use integer_encoding::VarInt;
use liblzma::stream::{Check, Filters, LzmaOptions, Stream};

use super::MAX_OBJECT;
use super::format::Cursor;

/// The largest dictionary the encoder uses (it sizes it to the stream).
const XZ_MAX_DICT: u64 = 64 << 20;
/// The most memory an xz stream of a delta may ask for to be decoded: the largest
/// dictionary arbor writes, and room for the decoder's own state. A hostile stream
/// asking for more is refused, on each of the threads that decode a batch.
const XZ_MEMLIMIT: u64 = XZ_MAX_DICT + (16 << 20);

/// The bsdiff of `old` → `new`, its streams compressed with xz.
pub(super) fn diff(old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
    let mut bsdiff40 = Vec::new();
    // One thread per file: the files themselves are diffed in parallel. bzip2 at its
    // fastest, as it is undone right away.
    qbsdiff::Bsdiff::new(old, new)
        .parallel_scheme(qbsdiff::ParallelScheme::Never)
        .compression_level(1)
        .compare(std::io::Cursor::new(&mut bsdiff40))?;
    let (ctrl, diff, extra) = split_bsdiff40(&bsdiff40)?;
    let unbz = |s: &[u8]| -> Result<Vec<u8>> {
        let mut v = Vec::new();
        bzip2::read::BzDecoder::new(s).read_to_end(&mut v)?;
        Ok(v)
    };
    let (ctrl, diff, extra) = (unbz(ctrl)?, unbz(diff)?, unbz(extra)?);
    let (ctrl_xz, diff_xz, extra_xz) = (xz(&ctrl)?, xz(&diff)?, xz(&extra)?);
    let mut out = Vec::new();
    for n in [
        ctrl.len(),
        diff.len(),
        extra.len(),
        ctrl_xz.len(),
        diff_xz.len(),
    ] {
        out.extend_from_slice(&(n as u64).encode_var_vec());
    }
    out.extend_from_slice(&ctrl_xz);
    out.extend_from_slice(&diff_xz);
    out.extend_from_slice(&extra_xz);
    Ok(out)
}

/// BSDIFF40's three bzip2 streams.
fn split_bsdiff40(p: &[u8]) -> Result<(&[u8], &[u8], &[u8])> {
    ensure!(
        p.len() >= 32 && &p[..8] == b"BSDIFF40",
        "qbsdiff wrote no BSDIFF40"
    );
    let len = |at: usize| usize::try_from(qbsdiff_int(&p[at..at + 8])).ok();
    let (c, d) = (len(8).context("BSDIFF40")?, len(16).context("BSDIFF40")?);
    ensure!(32 + c + d <= p.len(), "qbsdiff wrote a short BSDIFF40");
    Ok((&p[32..32 + c], &p[32 + c..32 + c + d], &p[32 + c + d..]))
}

/// A bsdiff integer: eight bytes little-endian, sign and magnitude.
fn qbsdiff_int(b: &[u8]) -> i64 {
    let x = u64::from_le_bytes(b.try_into().expect("eight bytes"));
    let magnitude = (x & !(1 << 63)) as i64;
    if x >> 63 == 1 {
        magnitude.wrapping_neg()
    } else {
        magnitude
    }
}

/// One xz stream of `data`, with no check of its own (the object's hash is the check).
fn xz(data: &[u8]) -> Result<Vec<u8>> {
    let mut opts = LzmaOptions::new_preset(6)?;
    let dict = (data.len() as u64)
        .next_power_of_two()
        .clamp(4096, XZ_MAX_DICT);
    opts.dict_size(dict as u32);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let stream = Stream::new_stream_encoder(&filters, Check::None)?;
    let mut w = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    w.write_all(data)?;
    Ok(w.finish()?)
}

/// Decodes one xz stream that must give exactly `len` bytes.
fn unxz(data: &[u8], len: u64, what: &str) -> Result<Vec<u8>> {
    let stream = Stream::new_stream_decoder(XZ_MEMLIMIT, 0)?;
    let mut r = liblzma::read::XzDecoder::new_stream(data, stream).take(len + 1);
    // Grown as the stream gives bytes: a declared length costs nothing until it is met.
    let mut out = Vec::with_capacity(len.min(1 << 20) as usize);
    r.read_to_end(&mut out)
        .with_context(|| format!("the patch's {what} stream is corrupt"))?;
    ensure!(
        out.len() as u64 == len,
        "the patch's {what} stream gives {} bytes, not {len}",
        out.len()
    );
    Ok(out)
}

/// Rebuilds an object of `raw_len` bytes from `old` and an [`diff`] patch.
pub(super) fn patch(old: &[u8], data: &[u8], raw_len: u64) -> Result<Vec<u8>> {
    let mut c = Cursor(data);
    let (ctrl_len, diff_len, extra_len) = (c.num()?, c.num()?, c.num()?);
    let (ctrl_xz, diff_xz) = (c.num()?, c.num()?);
    ensure!(
        ctrl_len <= MAX_OBJECT && diff_len <= raw_len && extra_len <= raw_len,
        "a patch whose streams are larger than its object"
    );
    let ctrl = unxz(c.take(ctrl_xz)?, ctrl_len, "control")?;
    let diff = unxz(c.take(diff_xz)?, diff_len, "difference")?;
    let extra = unxz(c.0, extra_len, "extra")?;
    apply_streams(old, &ctrl, &diff, &extra, raw_len)
}

/// bspatch: for each control, add `add` bytes of the difference to as many of `old`,
/// copy `copy` new bytes, then move in `old` by `seek`. The result must be `raw_len`
/// bytes, and every stream must be used up.
fn apply_streams(
    old: &[u8],
    ctrl: &[u8],
    mut diff: &[u8],
    mut extra: &[u8],
    raw_len: u64,
) -> Result<Vec<u8>> {
    ensure!(ctrl.len() % 24 == 0, "a patch with a partial control");
    let mut out = Vec::with_capacity(raw_len.min(64 << 20) as usize);
    let mut pos: i64 = 0;
    for c in ctrl.chunks_exact(24) {
        let (add, copy, seek) = (
            qbsdiff_int(&c[..8]),
            qbsdiff_int(&c[8..16]),
            qbsdiff_int(&c[16..]),
        );
        let add = usize::try_from(add).context("a patch with a negative length")?;
        let copy = usize::try_from(copy).context("a patch with a negative length")?;
        ensure!(
            (out.len() as u64)
                .saturating_add(add as u64)
                .saturating_add(copy as u64)
                <= raw_len,
            "the patch makes a larger object than declared"
        );
        ensure!(
            add <= diff.len() && copy <= extra.len(),
            "the patch runs past its data"
        );
        let from = usize::try_from(pos)
            .ok()
            .filter(|p| p.checked_add(add).is_some_and(|end| end <= old.len()))
            .context("the patch reads outside its base")?;
        out.extend(
            old[from..from + add]
                .iter()
                .zip(&diff[..add])
                .map(|(o, d)| o.wrapping_add(*d)),
        );
        out.extend_from_slice(&extra[..copy]);
        diff = &diff[add..];
        extra = &extra[copy..];
        pos = pos
            .checked_add(add as i64)
            .and_then(|p| p.checked_add(seek))
            .context("the patch seeks out of range")?;
    }
    ensure!(
        diff.is_empty() && extra.is_empty(),
        "the patch has data its controls do not use"
    );
    ensure!(
        out.len() as u64 == raw_len,
        "the patch gives {} bytes, not {raw_len}",
        out.len()
    );
    Ok(out)
}

/// Applies a BSDIFF40 patch (bzip2 inside; format 1 deltas).
pub(super) fn patch_bsdiff40(old: &[u8], data: &[u8], raw_len: u64) -> Result<Vec<u8>> {
    // Grown as the patch writes, up to the declared size.
    let start = raw_len.min(64 << 20) as usize;
    let mut out = Bounded(Vec::with_capacity(start), raw_len as usize);
    qbsdiff::Bspatch::new(data)
        .and_then(|p| p.apply(old, &mut out))
        .context("a corrupt patch")?;
    ensure!(
        out.0.len() as u64 == raw_len,
        "the patch gives {} bytes, not {raw_len}",
        out.0.len()
    );
    Ok(out.0)
}

/// A writer that refuses to grow past a limit: a hostile patch cannot make apply
/// allocate more than the object's declared size.
struct Bounded(Vec<u8>, usize);

impl Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + b.len() > self.1 {
            return Err(std::io::Error::other(
                "the patch makes a larger object than declared",
            ));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rebuilt-executable-like pair: `new` is `old` (noise) with a block inserted,
    /// every 997th byte changed and the tail cut.
    fn pair() -> (Vec<u8>, Vec<u8>) {
        let mut x = 1u64;
        let old: Vec<u8> = (0..1_200_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let mut new = old[..1_000_000].to_vec();
        new.iter_mut()
            .step_by(997)
            .for_each(|b| *b = b.wrapping_add(3));
        new.splice(40_000..40_000, b"inserted code".repeat(500));
        (old, new)
    }

    #[test]
    fn patches_rebuild_the_new_file_and_refuse_damage() {
        let (old, new) = pair();
        let p = diff(&old, &new).unwrap();
        assert!(p.len() < new.len() / 20, "{} bytes", p.len());
        assert_eq!(patch(&old, &p, new.len() as u64).unwrap(), new);
        let n = new.len() as u64;
        // A wrong size either way, a cut patch, a flipped byte in each stream.
        assert!(patch(&old, &p, n - 1).is_err());
        assert!(patch(&old, &p, n + 1).is_err());
        for cut in [1, p.len() / 2, p.len() - 1] {
            assert!(patch(&old, &p[..cut], n).is_err(), "cut at {cut}");
        }
        for at in [12, p.len() / 2, p.len() - 8] {
            let mut bad = p.clone();
            bad[at] ^= 0x40;
            if let Ok(out) = patch(&old, &bad, n) {
                assert_ne!(out, new, "a flipped byte at {at} changed nothing");
            }
        }
        // The base must be the one the patch was made against, or at least as long.
        assert!(patch(&old[..1000], &p, n).is_err());
    }

    #[test]
    fn hostile_controls_are_refused_not_followed() {
        let ctl = |add: i64, copy: i64, seek: i64| {
            let mut v = Vec::new();
            for x in [add, copy, seek] {
                let m = x.unsigned_abs() | if x < 0 { 1 << 63 } else { 0 };
                v.extend_from_slice(&m.to_le_bytes());
            }
            v
        };
        let old = b"0123456789".to_vec();
        let ok = apply_streams(&old, &ctl(4, 2, -2), &[1; 4], b"xy", 6).unwrap();
        assert_eq!(ok, b"1234xy");
        for (ctrl, diff, extra, len, want) in [
            (ctl(-1, 0, 0), &[][..], &[][..], 0, "negative"),
            (ctl(0, 5, 0), &[][..], &[0; 5][..], 4, "larger object"),
            (ctl(20, 0, 0), &[0; 20][..], &[][..], 20, "outside its base"),
            (ctl(4, 0, 0), &[0; 3][..], &[][..], 4, "past its data"),
            (ctl(1, 0, i64::MAX), &[0; 1][..], &[][..], 1, "out of range"),
            (
                [ctl(1, 0, -5), ctl(1, 0, 0)].concat(),
                &[0; 2][..],
                &[][..],
                2,
                "outside",
            ),
            (ctl(1, 0, 0), &[0; 2][..], &[][..], 1, "do not use"),
            (ctl(1, 0, 0)[..20].to_vec(), &[0][..], &[][..], 1, "partial"),
        ] {
            let e = apply_streams(&old, &ctrl, diff, extra, len).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }
}
