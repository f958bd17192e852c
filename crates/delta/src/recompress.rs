//! Compressed-aware records: an xz file (trixie's `.ko.xz` kernel modules) is diffed by
//! its *decompressed* content and compressed again on apply, as Android's imgdiff does
//! for zip entries. Two xz files of similar content share almost nothing once
//! compressed, so a plain diff of the `.xz` bytes saves nothing.
//!
//! This is sound only where compressing again gives the very same bytes. The generator
//! reads the recipe from the stream's own headers (check, dictionary, whether the
//! multi-threaded encoder wrote it), compresses the content again and keeps the record
//! only if every byte matches; otherwise the file takes an ordinary encoding. The
//! client rebuilds the same way, and the object's hash proves the result, as for every
//! record. liblzma is linked statically (the `static` feature), so both sides run the
//! same encoder whatever the system's xz is.
//!
//! A record's data: the recipe (four bytes), the inner encoding (one byte), the
//! content's length (varint), then the inner record: zstd, zstd against the base's
//! content, or bsdiff against it. Every size is bounded before it is allocated, and a
//! recipe asking for more encoder memory than [`MAX_DICT_PROPS`] allows is refused.

use std::borrow::Cow;
use std::io::{Read, Write};

use anyhow::{Context, Result, bail, ensure};
use integer_encoding::VarInt;
use liblzma::stream::{Check, Filters, LzmaOptions, MtStreamBuilder, Stream};

use super::format::Cursor;
use super::{Encoding, bsdiff, compress, decompress};

/// The largest decompressed content a recompressed record may have. Kernel modules are
/// a few MB at most; a larger xz file is sent as it is.
pub(super) const MAX_INNER: u64 = 256 << 20;
/// The largest dictionary a recipe may name, as LZMA2's one-byte property (22 is
/// 8 MiB, xz's default): it bounds the encoder's memory to about 100 MB per thread.
const MAX_DICT_PROPS: u8 = 22;
/// The decoder's memory limit for the streams this module reads: the largest
/// dictionary a recipe may have, and room for the decoder's state.
const XZ_MEMLIMIT: u64 = (8 << 20) + (16 << 20);
/// The presets tried when looking for a recipe: xz's default (the kernel's) and -9.
const PRESETS: [u8; 2] = [6, 9];
/// xz's stream magic.
const XZ_MAGIC: &[u8; 6] = b"\xfd7zXZ\0";

/// How an xz file was compressed, as far as it matters for compressing it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Recipe {
    /// The integrity check's id (0 none, 1 CRC32, 4 CRC64, 10 SHA-256).
    check: u8,
    /// Written by the multi-threaded encoder (`xz -T`), which stores each block's
    /// sizes in its header; the single-threaded encoder does not.
    threaded: bool,
    /// The preset the LZMA2 options start from.
    preset: u8,
    /// LZMA2's dictionary size property.
    dict_props: u8,
}

impl Recipe {
    fn to_bytes(self) -> [u8; 4] {
        [
            self.check,
            u8::from(self.threaded),
            self.preset,
            self.dict_props,
        ]
    }

    fn from_bytes(b: &[u8]) -> Result<Recipe> {
        let r = Recipe {
            check: b[0],
            threaded: match b[1] {
                0 => false,
                1 => true,
                t => bail!("an xz recipe with encoder kind {t}"),
            },
            preset: b[2],
            dict_props: b[3],
        };
        r.check()?;
        ensure!(r.preset <= 9, "an xz recipe with preset {}", r.preset);
        ensure!(
            r.dict_props <= MAX_DICT_PROPS,
            "an xz recipe with a dictionary larger than arbor accepts (property {})",
            r.dict_props
        );
        Ok(r)
    }

    fn check(self) -> Result<Check> {
        Ok(match self.check {
            0 => Check::None,
            1 => Check::Crc32,
            4 => Check::Crc64,
            10 => Check::Sha256,
            c => bail!("an xz recipe with check {c}"),
        })
    }

    /// LZMA2's dictionary size for the property byte (the xz file format, 5.3.1).
    fn dict_size(self) -> u32 {
        (2 | u32::from(self.dict_props & 1)) << (self.dict_props / 2 + 11)
    }

    /// Compresses `content` as this recipe says.
    fn compress(self, content: &[u8]) -> Result<Vec<u8>> {
        let mut opts = LzmaOptions::new_preset(u32::from(self.preset))?;
        opts.dict_size(self.dict_size());
        let mut filters = Filters::new();
        filters.lzma2(&opts);
        let stream = if self.threaded {
            // One thread per file: files are compressed in parallel already. The block
            // size is left to liblzma, as `xz -T` leaves it (three dictionaries).
            MtStreamBuilder::new()
                .threads(1)
                .filters(filters)
                .check(self.check()?)
                .encoder()?
        } else {
            Stream::new_stream_encoder(&filters, self.check()?)?
        };
        let mut w =
            liblzma::write::XzEncoder::new_stream(Vec::with_capacity(content.len() / 3), stream);
        w.write_all(content)?;
        Ok(w.finish()?)
    }
}

/// Reads the recipe candidates' common part from an xz file's headers: the check, and
/// from the first block's header a single LZMA2 filter and whether sizes are stored.
/// `None` for anything else (another filter chain, an empty stream, not xz).
fn sniff(xz: &[u8]) -> Option<Recipe> {
    if xz.len() < 24 || &xz[..6] != XZ_MAGIC || xz[6] != 0 {
        return None;
    }
    let check = xz[7] & 0x0f;
    let block = &xz[12..];
    let header_len = (usize::from(block[0]) + 1) * 4;
    if block[0] == 0 || block.len() < header_len {
        return None;
    }
    let flags = block[1];
    if flags & 0x03 != 0 {
        return None; // more than one filter (a BCJ filter ahead of LZMA2)
    }
    let mut c = Cursor(&block[2..header_len]);
    let sizes = flags & 0xc0;
    for bit in [0x40, 0x80] {
        if sizes & bit != 0 {
            c.num().ok()?;
        }
    }
    let (id, props_len) = (c.num().ok()?, c.num().ok()?);
    if id != 0x21 || props_len != 1 {
        return None;
    }
    let dict_props = c.byte().ok()?;
    let recipe = Recipe {
        check,
        threaded: sizes == 0xc0,
        preset: PRESETS[0],
        dict_props,
    };
    (dict_props <= MAX_DICT_PROPS && recipe.check().is_ok()).then_some(recipe)
}

/// Decodes one xz stream of at most `max` bytes.
fn unxz(xz: &[u8], max: u64) -> Result<Vec<u8>> {
    let stream = Stream::new_stream_decoder(XZ_MEMLIMIT, 0)?;
    let mut r = liblzma::read::XzDecoder::new_stream(xz, stream).take(max + 1);
    let mut out = Vec::with_capacity(xz.len().saturating_mul(4).min(max as usize));
    r.read_to_end(&mut out).context("a corrupt xz stream")?;
    ensure!(
        out.len() as u64 <= max,
        "an xz stream of more than {max} bytes"
    );
    Ok(out)
}

/// If `payload` is an xz file that arbor can compress again to the very same bytes,
/// its recipe and content.
pub(super) fn reproducible(payload: &[u8]) -> Option<(Recipe, Vec<u8>)> {
    let found = sniff(payload)?;
    let content = unxz(payload, MAX_INNER).ok()?;
    let recipe = PRESETS
        .iter()
        .map(|&preset| Recipe { preset, ..found })
        .find(|r| r.compress(&content).is_ok_and(|again| again == payload))?;
    Some((recipe, content))
}

/// The content a recompressed record is diffed against: the base's content, or, for
/// an xz base (`.ko.xz` → `.ko.xz`), its decompressed content.
pub(super) fn base_content(base: &[u8]) -> Result<Cow<'_, [u8]>> {
    if base.starts_with(XZ_MAGIC) {
        let content = unxz(base, MAX_INNER).context("the base's xz content")?;
        Ok(Cow::Owned(content))
    } else {
        Ok(Cow::Borrowed(base))
    }
}

/// A record's data: the recipe, the inner encoding and the content's length, then the
/// inner record.
pub(super) fn encode(recipe: Recipe, inner: Encoding, content_len: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&recipe.to_bytes());
    out.push(inner as u8);
    out.extend_from_slice(&content_len.encode_var_vec());
    out.extend_from_slice(data);
    out
}

/// Rebuilds an xz object of `raw_len` bytes from its base's bytes and a record's data.
pub(super) fn rebuild(base: &[u8], data: &[u8], raw_len: u64) -> Result<Vec<u8>> {
    let mut c = Cursor(data);
    let recipe = Recipe::from_bytes(c.take(4)?)?;
    let inner = Encoding::from_byte(c.byte()?)?;
    let content_len = c.num()?;
    ensure!(
        content_len <= MAX_INNER,
        "a recompressed record of {content_len} bytes, more than arbor accepts"
    );
    let old = base_content(base)?;
    let content = match inner {
        Encoding::Full => decompress(c.0, content_len, None)?,
        Encoding::Patch => decompress(c.0, content_len, Some(&old))?,
        Encoding::BsdiffXz => bsdiff::patch(&old, c.0, content_len)?,
        e => bail!("a recompressed record with inner encoding {e:?}"),
    };
    let out = recipe.compress(&content)?;
    ensure!(
        out.len() as u64 == raw_len,
        "compressing again gives {} bytes, not {raw_len}",
        out.len()
    );
    Ok(out)
}

/// The smallest inner record for `content` against `old`: zstd's patch, or bsdiff for
/// a large executable.
pub(super) fn inner_record(old: &[u8], content: &[u8], level: i32) -> Result<(Encoding, Vec<u8>)> {
    if content.starts_with(b"\x7fELF") && content.len() > super::BSDIFF_FROM {
        return Ok((Encoding::BsdiffXz, bsdiff::diff(old, content)?));
    }
    Ok((Encoding::Patch, compress(content, level, Some(old))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| format!("symbol_{} {}\n", i % 977, i / 13).into_bytes())
            .collect()
    }

    fn xz_cli(args: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = std::process::Command::new("xz")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("xz");
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn what_xz_wrote_is_reproduced_byte_for_byte() {
        let data = sample();
        // The kernel's `xz --check=crc32 --lzma2=dict=1MiB`, threaded as xz 5.6+ runs
        // by default, and single-threaded as older xz did; and preset 9 (CRC64).
        for args in [
            &["-T2", "-c", "--check=crc32", "--lzma2=dict=1MiB"][..],
            &["-T1", "-c", "--check=crc32", "--lzma2=dict=1MiB"][..],
            &["-T1", "-c", "--lzma2=preset=9,dict=4MiB"][..],
        ] {
            let file = xz_cli(args, &data);
            let (recipe, content) = reproducible(&file).unwrap_or_else(|| panic!("{args:?}"));
            assert_eq!(content, data);
            let old = base_content(&file).unwrap();
            let (inner, rec) = inner_record(&old, &content, 19).unwrap();
            let enc = encode(recipe, inner, content.len() as u64, &rec);
            assert_eq!(rebuild(&file, &enc, file.len() as u64).unwrap(), file);
        }
    }

    #[test]
    fn other_streams_and_hostile_recipes_are_refused() {
        let data = sample();
        // A BCJ filter ahead of LZMA2 is not a recipe arbor reproduces.
        assert!(reproducible(&xz_cli(&["-c", "--x86", "--lzma2"], &data)).is_none());
        assert!(reproducible(b"not xz at all, not even close to it").is_none());
        // `xz -9`'s 64 MiB dictionary would cost a client 670 MB to compress again.
        assert!(reproducible(&xz_cli(&["-T1", "-c", "-9"], &data)).is_none());
        let file = xz_cli(&["-T1", "-c"], &data);
        let (recipe, content) = reproducible(&file).unwrap();
        let rec = compress(&content, 3, None).unwrap();
        let good = encode(recipe, Encoding::Full, content.len() as u64, &rec);
        // A dictionary beyond the bound, an unknown check, a content length past the
        // limit, a wrong object length: each named, none allocated.
        let mut big = good.clone();
        big[3] = 40;
        let e = rebuild(&[], &big, file.len() as u64).unwrap_err();
        assert!(format!("{e:#}").contains("dictionary"), "{e:#}");
        let mut check = good.clone();
        check[0] = 7;
        assert!(rebuild(&[], &check, file.len() as u64).is_err());
        let huge = encode(recipe, Encoding::Full, MAX_INNER + 1, &rec);
        let e = rebuild(&[], &huge, file.len() as u64).unwrap_err();
        assert!(
            format!("{e:#}").contains("more than arbor accepts"),
            "{e:#}"
        );
        let e = rebuild(&[], &good, file.len() as u64 + 1).unwrap_err();
        assert!(format!("{e:#}").contains("compressing again"), "{e:#}");
    }
}
