//! A reader for R's lazy-load databases (`*.rdb` + `*.rdx`) and the subset of R's XDR
//! serialization format they need: character, integer, double and logical vectors, lists,
//! pairlists (attributes) and symbols.
//!
//! Format, as R writes it (`serialize`, version 2 or 3, XDR = big-endian):
//! - header: `X\n`, then the format version, the writing R version and the minimal reading R
//!   version (i32 each); version 3 adds the native encoding (i32 length + bytes, e.g. `UTF-8`);
//! - an item: a flags word (i32) whose low 8 bits are the type, bit 8 "is object", bit 9 "has
//!   attributes", bit 10 "has tag", and bits 12.. the "levels" (for strings: 2 = bytes,
//!   4 = latin1, 8 = UTF-8, 64 = ASCII); then a type-dependent body:
//!   - vectors (`LGLSXP` 10, `INTSXP` 13, `REALSXP` 14, `STRSXP` 16, `VECSXP` 19): an i32 length
//!     (−1 = a long length as two i32 halves) and the elements (i32, f64, `CHARSXP` items or
//!     items), then the attribute pairlist if bit 9 is set;
//!   - `CHARSXP` (9): an i32 byte length (−1 = `NA_character_`) and the bytes;
//!   - `LISTSXP` (2, a pairlist): the attributes (bit 9), the tag (bit 10, a symbol), the value,
//!     then the rest of the list as another item (`NILVALUE_SXP` 254 ends it);
//!   - `SYMSXP` (1): its name as a `CHARSXP`; each symbol read is added to a reference table,
//!     and `REFSXP` (255) items point back into it (index in the flags' upper 24 bits, or in a
//!     following i32 when those are 0).
//! - `.rdx`: one gzip-compressed serialized list `(variables, references, compressed)`;
//!   `variables` is a named list of `c(offset, length)` into the `.rdb`;
//! - `.rdb` record (for `compressed = TRUE`): the uncompressed length as a big-endian u32,
//!   then a zlib stream holding one serialized object.
//!
//! Every length is checked against the bytes that remain, so truncated or lying input gives
//! [`ModelError::Malformed`] naming the file, never a panic or a huge allocation.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

const FORMAT: &str = "R serialization";
const MAX_DEPTH: usize = 200;

/// A deserialized R value with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct RObject {
    /// The value.
    pub data: RData,
    /// Attributes by name (`names`, `class`, …), in stored order.
    pub attributes: Vec<(String, RObject)>,
}

/// The value part of an [`RObject`] (the types the reader supports).
#[derive(Debug, Clone, PartialEq)]
pub enum RData {
    /// `NULL`.
    Null,
    /// A symbol (name).
    Symbol(String),
    /// A logical vector (`None` = `NA`).
    Logical(Vec<Option<bool>>),
    /// An integer vector (`None` = `NA`).
    Integer(Vec<Option<i32>>),
    /// A double vector (`NA` is a NaN).
    Real(Vec<f64>),
    /// A character vector (`None` = `NA`).
    Character(Vec<Option<String>>),
    /// A generic vector (`list(...)`).
    List(Vec<RObject>),
    /// A pairlist: (tag, value) cells.
    Pairlist(Vec<(Option<String>, RObject)>),
}

impl RObject {
    fn plain(data: RData) -> Self {
        Self { data, attributes: Vec::new() }
    }

    /// The attribute `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&RObject> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The `names` attribute as strings (`NA` as the empty string).
    pub fn names(&self) -> Option<Vec<String>> {
        match &self.attribute("names")?.data {
            RData::Character(v) => Some(v.iter().map(|s| s.clone().unwrap_or_default()).collect()),
            _ => None,
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
    native_latin1: bool,
    refs: Vec<RObject>,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, detail: impl Into<String>) -> ModelError {
        ModelError::malformed(self.path, FORMAT, format!("at byte {}: {}", self.pos, detail.into()))
    }

    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(
                self.err(format!("needs {n} bytes, {} left (truncated?)", self.remaining()))
            );
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self) -> Result<i32> {
        let s = self.take(4)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn f64(&mut self) -> Result<f64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(f64::from_be_bytes(a))
    }

    /// A vector length, checked so that `len * min_elem` bytes can still follow.
    fn length(&mut self, min_elem: usize) -> Result<usize> {
        let n = self.i32()?;
        let n: u64 = match n {
            -1 => {
                let hi = self.i32()? as u32 as u64;
                let lo = self.i32()? as u32 as u64;
                (hi << 32) | lo
            }
            n if n < 0 => return Err(self.err(format!("negative length {n}"))),
            n => n as u64,
        };
        let need = n.checked_mul(min_elem as u64);
        match need {
            Some(need) if need <= self.remaining() as u64 => Ok(n as usize),
            _ => Err(self.err(format!(
                "length {n} needs at least {} bytes, {} left",
                n.saturating_mul(min_elem as u64),
                self.remaining()
            ))),
        }
    }

    fn header(&mut self) -> Result<()> {
        let magic = self.take(2)?;
        match magic {
            b"X\n" => {}
            b"A\n" | b"B\n" => {
                return Err(self.err("only the XDR (binary big-endian) format is supported"))
            }
            _ => return Err(self.err(format!("bad magic {magic:?}, expected \"X\\n\""))),
        }
        let version = self.i32()?;
        let _writer = self.i32()?;
        let _min_reader = self.i32()?;
        match version {
            2 => {}
            3 => {
                let n = self.i32()?;
                if !(0..=63).contains(&n) {
                    return Err(self.err(format!("native encoding name of length {n}")));
                }
                let enc = String::from_utf8_lossy(self.take(n as usize)?).to_ascii_lowercase();
                self.native_latin1 = matches!(enc.as_str(), "latin1" | "iso-8859-1" | "iso8859-1");
            }
            v => return Err(self.err(format!("unsupported serialization version {v}"))),
        }
        Ok(())
    }

    fn charsxp_body(&mut self, flags: i32) -> Result<Option<String>> {
        let n = self.i32()?;
        if n == -1 {
            return Ok(None);
        }
        if n < 0 {
            return Err(self.err(format!("string length {n}")));
        }
        let bytes = self.take(n as usize)?;
        let levels = (flags as u32) >> 12;
        const BYTES: u32 = 2;
        const LATIN1: u32 = 4;
        const UTF8: u32 = 8;
        const ASCII: u32 = 64;
        let latin1 =
            levels & LATIN1 != 0 || (levels & (UTF8 | ASCII | BYTES) == 0 && self.native_latin1);
        if latin1 {
            return Ok(Some(bytes.iter().map(|&b| b as char).collect()));
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Some(s.to_string())),
            Err(e) => Err(self.err(format!("string is not valid UTF-8: {e}"))),
        }
    }

    fn charsxp(&mut self) -> Result<Option<String>> {
        let flags = self.i32()?;
        if flags & 0xff != 9 {
            return Err(
                self.err(format!("expected a CHARSXP (type 9), found type {}", flags & 0xff))
            );
        }
        self.charsxp_body(flags)
    }

    fn attributes(&mut self, has: bool) -> Result<Vec<(String, RObject)>> {
        if !has {
            return Ok(Vec::new());
        }
        let a = self.item()?;
        match a.data {
            RData::Pairlist(cells) => {
                Ok(cells.into_iter().map(|(t, v)| (t.unwrap_or_default(), v)).collect())
            }
            RData::Null => Ok(Vec::new()),
            _ => Err(self.err("attributes are not a pairlist")),
        }
    }

    fn item(&mut self) -> Result<RObject> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH}")));
        }
        self.depth += 1;
        let flags = self.i32()?;
        let r = self.item_body(flags);
        self.depth -= 1;
        r
    }

    fn item_body(&mut self, flags: i32) -> Result<RObject> {
        let ty = flags & 0xff;
        let has_attr = flags & (1 << 9) != 0;
        match ty {
            254 => Ok(RObject::plain(RData::Null)),
            255 => {
                let mut idx = (flags as u32 >> 8) as usize;
                if idx == 0 {
                    idx = self.i32()?.max(0) as usize;
                }
                match idx.checked_sub(1).and_then(|i| self.refs.get(i)) {
                    Some(o) => Ok(o.clone()),
                    None => Err(self.err(format!("reference {idx} to an unknown object"))),
                }
            }
            1 => {
                let name = self.charsxp()?.unwrap_or_default();
                let sym = RObject::plain(RData::Symbol(name));
                self.refs.push(sym.clone());
                Ok(sym)
            }
            2 => self.pairlist(flags),
            9 => Ok(RObject::plain(RData::Character(vec![self.charsxp_body(flags)?]))),
            10 | 13 => {
                let n = self.length(4)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let x = self.i32()?;
                    v.push((x != i32::MIN).then_some(x));
                }
                let data = if ty == 10 {
                    RData::Logical(v.into_iter().map(|x| x.map(|x| x != 0)).collect())
                } else {
                    RData::Integer(v)
                };
                Ok(RObject { data, attributes: self.attributes(has_attr)? })
            }
            14 => {
                let n = self.length(8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.f64()?);
                }
                Ok(RObject { data: RData::Real(v), attributes: self.attributes(has_attr)? })
            }
            16 => {
                let n = self.length(8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.charsxp()?);
                }
                Ok(RObject { data: RData::Character(v), attributes: self.attributes(has_attr)? })
            }
            19 | 20 => {
                let n = self.length(4)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.item()?);
                }
                Ok(RObject { data: RData::List(v), attributes: self.attributes(has_attr)? })
            }
            _ => Err(self.err(format!("unsupported R object type {ty}"))),
        }
    }

    /// A pairlist starting with a cell whose flags were just read; the CDR chain is followed
    /// iteratively so that long lists do not recurse.
    fn pairlist(&mut self, first: i32) -> Result<RObject> {
        let mut cells = Vec::new();
        let mut attributes = Vec::new();
        let mut flags = first;
        loop {
            let a = self.attributes(flags & (1 << 9) != 0)?;
            if cells.is_empty() {
                attributes = a;
            }
            let tag = if flags & (1 << 10) != 0 {
                match self.item()?.data {
                    RData::Symbol(s) => Some(s),
                    RData::Null => None,
                    _ => return Err(self.err("pairlist tag is not a symbol")),
                }
            } else {
                None
            };
            let value = self.item()?;
            cells.push((tag, value));
            flags = self.i32()?;
            match flags & 0xff {
                2 => continue,
                254 => break,
                t => return Err(self.err(format!("pairlist continues with type {t}"))),
            }
        }
        Ok(RObject { data: RData::Pairlist(cells), attributes })
    }
}

/// Deserializes one object from R's XDR serialization format (`X\n` header). `path` names the
/// file in errors.
///
/// # Errors
/// [`ModelError::Malformed`] for a bad header, truncated or lying lengths, invalid UTF-8 or an
/// unsupported object type.
pub fn unserialize(bytes: &[u8], path: &Path) -> Result<RObject> {
    let mut r = Reader { b: bytes, pos: 0, path, native_latin1: false, refs: Vec::new(), depth: 0 };
    r.header()?;
    r.item()
}

/// Decompresses the `.rdb` record at `offset` with `length` bytes (a big-endian u32 with the
/// uncompressed size, then a zlib stream) and checks the size it claims.
///
/// # Errors
/// [`ModelError::Malformed`] if the record lies outside `rdb`, the zlib stream is corrupt, or the
/// output size differs from the header.
pub fn decompress_record(rdb: &[u8], offset: u64, length: u64, path: &Path) -> Result<Vec<u8>> {
    let bad = |d: String| ModelError::malformed(path, "R lazy-load database", d);
    let end = offset.checked_add(length).filter(|&e| e <= rdb.len() as u64).ok_or_else(|| {
        bad(format!(
            "record at {offset} with {length} bytes runs past the end ({} bytes)",
            rdb.len()
        ))
    })?;
    let rec = &rdb[offset as usize..end as usize];
    if rec.len() < 5 {
        return Err(bad(format!("record at {offset} has only {} bytes", rec.len())));
    }
    let size = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]) as u64;
    let mut out = Vec::with_capacity(size.min(64 << 20) as usize);
    flate2::read::ZlibDecoder::new(&rec[4..])
        .take(size + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("record at {offset}: zlib: {e}")))?;
    if out.len() as u64 != size {
        return Err(bad(format!(
            "record at {offset} decompresses to {}{} bytes, its header says {size}",
            out.len(),
            if out.len() as u64 > size { "+" } else { "" }
        )));
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ModelError::io(path, e))
}

/// The index of a lazy-load database: the `.rdx` bytes (gzip-compressed or plain serialization)
/// → (object name, offset, length) into the `.rdb`.
///
/// # Errors
/// [`ModelError::Malformed`] (naming `path`) for a corrupt stream, a structure other than R's
/// `list(variables, references, compressed)`, or a compression other than zlib.
pub fn parse_index(rdx: &[u8], path: &Path) -> Result<Vec<(String, u64, u64)>> {
    let bad = |d: &str| ModelError::malformed(path, "R lazy-load index", d.to_string());
    let plain;
    let bytes: &[u8] = if rdx.starts_with(&[0x1f, 0x8b]) {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(rdx)
            .take(256 << 20)
            .read_to_end(&mut v)
            .map_err(|e| bad(&format!("gzip: {e}")))?;
        plain = v;
        &plain
    } else {
        rdx
    };
    let index = unserialize(bytes, path)?;
    let RData::List(parts) = &index.data else { return Err(bad("not a list")) };
    let names = index.names().ok_or_else(|| bad("index list has no names"))?;
    let get = |n: &str| names.iter().position(|x| x == n).and_then(|i| parts.get(i));
    let compressed = get("compressed").ok_or_else(|| bad("no `compressed` entry"))?;
    let zlib = match &compressed.data {
        RData::Logical(v) => v.first() == Some(&Some(true)),
        RData::Integer(v) => v.first() == Some(&Some(1)),
        RData::Real(v) => v.first() == Some(&1.0),
        _ => false,
    };
    if !zlib {
        return Err(bad(&format!(
            "unsupported compression {:?} (only zlib, `TRUE`)",
            compressed.data
        )));
    }
    let vars = get("variables").ok_or_else(|| bad("no `variables` entry"))?;
    let RData::List(entries) = &vars.data else { return Err(bad("`variables` is not a list")) };
    let var_names = vars.names().ok_or_else(|| bad("`variables` has no names"))?;
    if var_names.len() != entries.len() {
        return Err(bad("`variables` names and values differ in length"));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (name, e) in var_names.into_iter().zip(entries) {
        let pair: Vec<f64> = match &e.data {
            RData::Integer(v) => v.iter().map(|x| x.map_or(f64::NAN, f64::from)).collect(),
            RData::Real(v) => v.clone(),
            _ => return Err(bad(&format!("`{name}` position is not numeric"))),
        };
        let ok = |x: f64| x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x < 2f64.powi(53);
        match pair.as_slice() {
            [o, l] if ok(*o) && ok(*l) => out.push((name, *o as u64, *l as u64)),
            _ => return Err(bad(&format!("`{name}` position {pair:?} is not c(offset, length)"))),
        }
    }
    Ok(out)
}

/// Every character vector stored in the lazy-load database `rdx` + `rdb`, by object name, in
/// index order (objects of other types are skipped).
///
/// # Errors
/// [`ModelError::Io`] if a file cannot be read; [`ModelError::Malformed`] (naming the file) for
/// corrupt content.
pub fn read_character_vectors(
    rdx: &Path,
    rdb: &Path,
) -> Result<Vec<(String, Vec<Option<String>>)>> {
    let index = parse_index(&read_file(rdx)?, rdx)?;
    let db = read_file(rdb)?;
    let mut out = Vec::new();
    for (name, offset, length) in index {
        let raw = decompress_record(&db, offset, length, rdb)?;
        let obj = unserialize(&raw, &record_path(rdb, &name))?;
        if let RData::Character(v) = obj.data {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// `file.rdb[object]`, for error messages about one record.
fn record_path(rdb: &Path, name: &str) -> PathBuf {
    let mut s = rdb.as_os_str().to_owned();
    s.push(format!("[{name}]"));
    PathBuf::from(s)
}
