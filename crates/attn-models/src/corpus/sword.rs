//! A reader for SWORD "zText" Bible modules (as in Debian's `sword-text-*` packages) and an
//! OSIS-markup-to-plain-text converter.
//!
//! A zText module stores each testament (`ot`, `nt`) in three files:
//! - `.bzs`: 12-byte records, one per compressed block: offset into `.bzz`, compressed size,
//!   uncompressed size (u32 little-endian each);
//! - `.bzz`: the zlib-compressed blocks, back to back;
//! - `.bzv`: 10-byte records, one per versification slot (module and testament headings, book
//!   and chapter headings, then verses, in canonical order): block number (u32), byte offset
//!   inside the uncompressed block (u32) and byte size (u16), little-endian; size 0 = empty slot.
//!
//! Each non-empty slot is UTF-8 OSIS XML. [`osis_to_text`] drops `<note>…</note>` (footnotes and
//! cross-references) and every other tag, decodes XML entities and normalises whitespace.

use std::io::Read;
use std::path::Path;

use crate::error::{ModelError, Result};

const FORMAT: &str = "SWORD zText";

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The non-empty slots of one testament, as raw OSIS strings in index order. `base` is the
/// testament's path without extension (e.g. `…/ot`), used to name the files in errors.
///
/// # Errors
/// [`ModelError::Malformed`] for record files of the wrong size, a block or slot pointing outside
/// its file, a corrupt zlib block, a block whose size differs from its record, or invalid UTF-8.
pub fn decode_ztext(bzs: &[u8], bzz: &[u8], bzv: &[u8], base: &Path) -> Result<Vec<String>> {
    let bzs_path = base.with_extension("bzs");
    let bzz_path = base.with_extension("bzz");
    let bzv_path = base.with_extension("bzv");
    if !bzs.len().is_multiple_of(12) {
        return Err(ModelError::malformed(
            &bzs_path,
            FORMAT,
            format!("{} bytes is not a whole number of 12-byte block records", bzs.len()),
        ));
    }
    if !bzv.len().is_multiple_of(10) {
        return Err(ModelError::malformed(
            &bzv_path,
            FORMAT,
            format!("{} bytes is not a whole number of 10-byte verse records", bzv.len()),
        ));
    }
    let blocks: Vec<(u32, u32, u32)> = bzs
        .chunks_exact(12)
        .map(|r| (u32_le(&r[0..4]), u32_le(&r[4..8]), u32_le(&r[8..12])))
        .collect();
    let mut cached: Option<(usize, Vec<u8>)> = None;
    let mut out = Vec::new();
    for (slot, r) in bzv.chunks_exact(10).enumerate() {
        let block = u32_le(&r[0..4]) as usize;
        let offset = u32_le(&r[4..8]) as usize;
        let size = u16::from_le_bytes([r[8], r[9]]) as usize;
        if size == 0 {
            continue;
        }
        if cached.as_ref().map(|(b, _)| *b) != Some(block) {
            let &(start, csize, usize_) = blocks.get(block).ok_or_else(|| {
                ModelError::malformed(
                    &bzv_path,
                    FORMAT,
                    format!("slot {slot} names block {block}, but there are {}", blocks.len()),
                )
            })?;
            let (start, end) = (start as u64, start as u64 + csize as u64);
            if end > bzz.len() as u64 {
                return Err(ModelError::malformed(
                    &bzs_path,
                    FORMAT,
                    format!(
                        "block {block} spans bytes {start}..{end} of a {}-byte .bzz",
                        bzz.len()
                    ),
                ));
            }
            let mut data = Vec::with_capacity((usize_ as usize).min(64 << 20));
            flate2::read::ZlibDecoder::new(&bzz[start as usize..end as usize])
                .take(usize_ as u64 + 1)
                .read_to_end(&mut data)
                .map_err(|e| {
                    ModelError::malformed(&bzz_path, FORMAT, format!("block {block}: zlib: {e}"))
                })?;
            if data.len() != usize_ as usize {
                return Err(ModelError::malformed(
                    &bzz_path,
                    FORMAT,
                    format!(
                        "block {block} decompresses to {} bytes, its record says {usize_}",
                        data.len()
                    ),
                ));
            }
            cached = Some((block, data));
        }
        let data = &cached.as_ref().map(|(_, d)| d).expect("cached above");
        let bytes = data.get(offset..offset.saturating_add(size)).ok_or_else(|| {
            ModelError::malformed(
                &bzv_path,
                FORMAT,
                format!(
                    "slot {slot} spans {offset}..{} of block {block} ({} bytes)",
                    offset + size,
                    data.len()
                ),
            )
        })?;
        let s = std::str::from_utf8(bytes).map_err(|e| {
            ModelError::malformed(&bzz_path, FORMAT, format!("slot {slot}: not UTF-8: {e}"))
        })?;
        out.push(s.to_string());
    }
    Ok(out)
}

/// The plain text of a zText module folder: the old testament then the new (either may be
/// absent, not both), one line per non-empty slot (verse, heading or preface).
///
/// # Errors
/// [`ModelError::Io`] if a file cannot be read; [`ModelError::Malformed`] as [`decode_ztext`],
/// or when the folder holds neither testament.
pub fn read_ztext(dir: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut found = false;
    for t in ["ot", "nt"] {
        let base = dir.join(t);
        if !base.with_extension("bzs").exists() {
            continue;
        }
        found = true;
        let read = |ext: &str| {
            let p = base.with_extension(ext);
            std::fs::read(&p).map_err(|e| ModelError::io(&p, e))
        };
        for osis in decode_ztext(&read("bzs")?, &read("bzz")?, &read("bzv")?, &base)? {
            let line = osis_to_text(&osis);
            if !line.is_empty() {
                lines.push(line);
            }
        }
    }
    if !found {
        return Err(ModelError::malformed(dir, FORMAT, "no ot.bzs or nt.bzs in the module folder"));
    }
    Ok(lines)
}

/// Tags after which a word boundary is implied even when no space is written.
const STRUCTURAL: &[&str] = &[
    "div",
    "title",
    "p",
    "l",
    "lg",
    "lb",
    "chapter",
    "verse",
    "milestone",
    "list",
    "item",
    "head",
    "table",
    "row",
    "cell",
    "speaker",
    "speech",
    "figure",
    "br",
];

fn decode_entity(e: &str) -> Option<char> {
    match e {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let n = if let Some(h) = e.strip_prefix("#x").or_else(|| e.strip_prefix("#X")) {
                u32::from_str_radix(h, 16).ok()?
            } else {
                e.strip_prefix('#')?.parse().ok()?
            };
            char::from_u32(n)
        }
    }
}

/// OSIS XML → plain text: `<note>…</note>` removed with its content, every other tag removed
/// (a structural tag such as `<l/>`, `<div/>` or `<title>` and a removed note separate words
/// that would otherwise touch), entities decoded, runs of whitespace collapsed to one space,
/// ends trimmed.
pub fn osis_to_text(osis: &str) -> String {
    let mut out = String::with_capacity(osis.len() / 3);
    let mut pending = false;
    let mut rest = osis;
    fn emit(c: char, out: &mut String, pending: &mut bool) {
        let last = out.chars().next_back();
        if c.is_whitespace() {
            if last.is_some_and(|l| !l.is_whitespace()) {
                out.push(' ');
            }
        } else {
            if *pending
                && last.is_some_and(|l| !l.is_whitespace())
                && (c.is_alphanumeric() || "“‘([".contains(c))
            {
                out.push(' ');
            }
            out.push(c);
        }
        *pending = false;
    }
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => {
                let Some(end) = rest.find('>') else { break };
                let tag = &rest[1..end];
                rest = &rest[end + 1..];
                let closing = tag.starts_with('/');
                let self_closing = tag.ends_with('/');
                let name: &str = tag
                    .trim_start_matches('/')
                    .split(|c: char| c.is_whitespace() || c == '/')
                    .next()
                    .unwrap_or("");
                if name == "note" && !closing && !self_closing {
                    // Skip to the matching </note> (notes do not nest in practice; count anyway).
                    let mut depth = 1usize;
                    while depth > 0 {
                        let Some(lt) = rest.find('<') else {
                            rest = "";
                            break;
                        };
                        let Some(gt) = rest[lt..].find('>') else {
                            rest = "";
                            break;
                        };
                        let inner = &rest[lt + 1..lt + gt];
                        if inner.starts_with("/note") {
                            depth -= 1;
                        } else if inner.starts_with("note") && !inner.ends_with('/') {
                            depth += 1;
                        }
                        rest = &rest[lt + gt + 1..];
                    }
                    pending = true;
                } else if STRUCTURAL.contains(&name) {
                    pending = true;
                }
            }
            '&' => {
                let decoded = rest[1..]
                    .find(';')
                    .filter(|&i| i <= 10)
                    .and_then(|i| decode_entity(&rest[1..1 + i]).map(|ch| (ch, i + 2)));
                match decoded {
                    Some((ch, len)) => {
                        emit(ch, &mut out, &mut pending);
                        rest = &rest[len..];
                    }
                    None => {
                        emit('&', &mut out, &mut pending);
                        rest = &rest[1..];
                    }
                }
            }
            _ => {
                emit(c, &mut out, &mut pending);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}
