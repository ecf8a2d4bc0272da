//! GGUF (versions 2 and 3) reader: a memory-mapped file, its metadata and its tensor table, and
//! dequantisation of the stored block formats to row-major f32.
//!
//! The layout, all little-endian: the magic `GGUF`, a `u32` version, a `u64` tensor count, a
//! `u64` metadata count, then the metadata pairs (a string key, a `u32` value type, the value),
//! then one record per tensor (name, `u32` number of dimensions, that many `u64` extents with the
//! innermost first, `u32` ggml type id, `u64` offset into the data section), then padding up to
//! the alignment (`general.alignment`, 32 when absent) and the data section. Strings are a `u64`
//! byte length followed by the bytes; arrays are a `u32` element type, a `u64` count and the
//! elements.
//!
//! Every length, count and offset is checked against the size of the file before it is used, so
//! a truncated or lying file gives [`ModelError::Malformed`] rather than a panic or a huge
//! allocation.

pub mod quant;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{ModelError, Result};

const FORMAT: &str = "GGUF";
const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor can have.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays inside arrays that the reader accepts.
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u8` (type id 0).
    U8(u8),
    /// `i8` (type id 1).
    I8(i8),
    /// `u16` (type id 2).
    U16(u16),
    /// `i16` (type id 3).
    I16(i16),
    /// `u32` (type id 4).
    U32(u32),
    /// `i32` (type id 5).
    I32(i32),
    /// `u64` (type id 10).
    U64(u64),
    /// `i64` (type id 11).
    I64(i64),
    /// `f32` (type id 6).
    F32(f32),
    /// `f64` (type id 12).
    F64(f64),
    /// `bool` stored as one byte, 0 or 1 (type id 7).
    Bool(bool),
    /// UTF-8 string (type id 8); bytes that are not UTF-8 are replaced by U+FFFD.
    Str(String),
    /// Array of values of one type (type id 9).
    Array(Vec<Value>),
}

impl Value {
    /// The value as an `i128` if it is an integer of any width.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// The storage type of a tensor, with ggml's numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float (id 0).
    F32,
    /// IEEE half (id 1).
    F16,
    /// bfloat16 (id 30).
    BF16,
    /// 32-element blocks, 4-bit, scale only (id 2).
    Q4_0,
    /// 32-element blocks, 4-bit, scale and minimum (id 3).
    Q4_1,
    /// 32-element blocks, 5-bit, scale only (id 6).
    Q5_0,
    /// 32-element blocks, 5-bit, scale and minimum (id 7).
    Q5_1,
    /// 32-element blocks, 8-bit, scale only (id 8).
    Q8_0,
    /// 32-element blocks, 8-bit, scale and sum (id 9).
    Q8_1,
    /// 256-element super-blocks, 2-bit (id 10).
    Q2K,
    /// 256-element super-blocks, 3-bit (id 11).
    Q3K,
    /// 256-element super-blocks, 4-bit with 6-bit sub-block scales and minima (id 12).
    Q4K,
    /// 256-element super-blocks, 5-bit with 6-bit sub-block scales and minima (id 13).
    Q5K,
    /// 256-element super-blocks, 6-bit with 8-bit sub-block scales (id 14).
    Q6K,
    /// 256-element super-blocks, 8-bit, used for intermediate products (id 15).
    Q8K,
    /// Any other id (the i-quants, integer types, f64, ...).
    Other(u32),
}

impl GgmlType {
    /// The type for a ggml id.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Q8K => "Q8_K",
            Self::Other(id) => return write!(f, "ggml type {id}"),
        };
        f.write_str(s)
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Extents as stored: `ne[0]` (the innermost, contiguous one) first.
    pub dims: Vec<u64>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape, outermost first (the stored extents reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (1 for a tensor with no dimensions).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// Size of the stored data in bytes, or `None` when the type's block size is unknown.
    pub fn n_bytes(&self) -> Option<usize> {
        let n = self.n_elements();
        let be = quant::block_elems(self.dtype)?;
        let bb = quant::block_bytes(self.dtype)?;
        if !n.is_multiple_of(be) {
            return None;
        }
        (n / be).checked_mul(bb)
    }
}

/// A memory-mapped GGUF file with its parsed metadata and tensor table.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    alignment: u64,
    data_start: usize,
    meta: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.meta.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, detail: impl Into<String>) -> ModelError {
        ModelError::malformed(self.path, FORMAT, detail)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count, checked to be payable by the bytes left at `min_each` bytes per item.
    fn count(&mut self, min_each: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let need = n.checked_mul(min_each as u64);
        match need {
            Some(need) if need <= self.remaining() as u64 => Ok(n as usize),
            _ => Err(self.err(format!(
                "{what} {n} at offset {at} needs at least {} bytes but only {} remain",
                need.map_or_else(|| "2^64 or more".to_string(), |v| v.to_string()),
                self.remaining()
            ))),
        }
    }

    fn bytes_str(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.count(1, &format!("length of {what}"))?;
        self.take(n, what)
    }

    /// A string that must be valid UTF-8 (keys and tensor names).
    fn strict_str(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let b = self.bytes_str(what)?;
        String::from_utf8(b.to_vec())
            .map_err(|e| self.err(format!("{what} at offset {at} is not UTF-8: {e}")))
    }

    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(self.u16(key)?),
            3 => Value::I16(self.u16(key)? as i16),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => {
                let at = self.pos;
                match self.u8(key)? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(self.err(format!(
                            "key `{key}`: bool at offset {at} has byte {b}, expected 0 or 1"
                        )))
                    }
                }
            }
            8 => Value::Str(String::from_utf8_lossy(self.bytes_str(key)?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "key `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                    )));
                }
                let at = self.pos;
                let elem = self.u32(key)?;
                let min_each = min_value_size(elem).ok_or_else(|| {
                    self.err(format!(
                        "key `{key}`: unknown array element type {elem} at offset {at}"
                    ))
                })?;
                let n = self.count(min_each, &format!("element count of array `{key}`"))?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1, key)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            other => {
                return Err(self.err(format!(
                    "key `{key}`: unknown value type {other} at offset {}",
                    self.pos - 4
                )))
            }
        })
    }
}

/// Fewest bytes a value of type `ty` occupies, or `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

impl GgufFile {
    /// Maps `path` and parses its header, metadata and tensor table.
    ///
    /// # Errors
    /// [`ModelError::Io`] when the file cannot be opened or mapped; [`ModelError::Malformed`]
    /// for a bad magic number, an unsupported version, truncation anywhere in the header, counts
    /// or lengths larger than the file, unknown value types, duplicate keys or tensor names, more
    /// than four dimensions, a bad alignment, or tensor data outside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(&path, e))?.len();
        if len == 0 {
            return Err(ModelError::malformed(&path, FORMAT, "empty file"));
        }
        // SAFETY: the mapping is read-only and private to this process; as with every mmap-based
        // loader, another process truncating the file while it is open could fault.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        let parsed = parse(&map, &path)?;
        Ok(Self {
            path,
            map,
            version: parsed.version,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
            meta: parsed.meta,
            meta_index: parsed.meta_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of tensor offsets.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> usize {
        self.data_start
    }

    /// Metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.meta[i].1)
    }

    /// Metadata keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.meta.iter().map(|(k, _)| k.as_str())
    }

    fn config_err(&self, key: &str, detail: impl Into<String>) -> ModelError {
        ModelError::Config { path: self.path.clone(), key: key.to_string(), detail: detail.into() }
    }

    fn wrong_type(&self, key: &str, want: &str, v: &Value) -> ModelError {
        self.config_err(key, format!("expected {want}, found {}", v.type_name()))
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.config_err(key, "missing"))
    }

    fn as_str<'s>(&self, key: &str, v: &'s Value) -> Result<&'s str> {
        match v {
            Value::Str(s) => Ok(s),
            other => Err(self.wrong_type(key, "string", other)),
        }
    }

    fn as_u32(&self, key: &str, v: &Value) -> Result<u32> {
        let i = v.as_int().ok_or_else(|| self.wrong_type(key, "integer", v))?;
        u32::try_from(i).map_err(|_| self.config_err(key, format!("{i} does not fit in u32")))
    }

    fn as_f32(&self, key: &str, v: &Value) -> Result<f32> {
        match *v {
            Value::F32(x) => Ok(x),
            Value::F64(x) => Ok(x as f32),
            ref other => Err(self.wrong_type(key, "float", other)),
        }
    }

    fn as_bool(&self, key: &str, v: &Value) -> Result<bool> {
        match *v {
            Value::Bool(b) => Ok(b),
            ref other => Err(self.wrong_type(key, "bool", other)),
        }
    }

    fn as_array<'s>(&self, key: &str, v: &'s Value) -> Result<&'s [Value]> {
        match v {
            Value::Array(a) => Ok(a),
            other => Err(self.wrong_type(key, "array", other)),
        }
    }

    /// String value of `key`.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the file and key when it is missing or not a string.
    pub fn str(&self, key: &str) -> Result<&str> {
        self.as_str(key, self.required(key)?)
    }

    /// Integer value of `key` (any integer type whose value fits in `u32`).
    ///
    /// # Errors
    /// [`ModelError::Config`] when missing, not an integer, or out of range.
    pub fn u32(&self, key: &str) -> Result<u32> {
        self.as_u32(key, self.required(key)?)
    }

    /// Float value of `key` (`f32`, or `f64` rounded to `f32`).
    ///
    /// # Errors
    /// [`ModelError::Config`] when missing or not a float.
    pub fn f32(&self, key: &str) -> Result<f32> {
        self.as_f32(key, self.required(key)?)
    }

    /// Boolean value of `key`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when missing or not a bool.
    pub fn bool(&self, key: &str) -> Result<bool> {
        self.as_bool(key, self.required(key)?)
    }

    /// Like [`GgufFile::str`], but `None` when the key is absent.
    ///
    /// # Errors
    /// [`ModelError::Config`] when present with another type.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|v| self.as_str(key, v)).transpose()
    }

    /// Like [`GgufFile::u32`], but `None` when the key is absent.
    ///
    /// # Errors
    /// [`ModelError::Config`] when present with another type or out of range.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|v| self.as_u32(key, v)).transpose()
    }

    /// Like [`GgufFile::f32`], but `None` when the key is absent.
    ///
    /// # Errors
    /// [`ModelError::Config`] when present with another type.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key).map(|v| self.as_f32(key, v)).transpose()
    }

    /// Like [`GgufFile::bool`], but `None` when the key is absent.
    ///
    /// # Errors
    /// [`ModelError::Config`] when present with another type.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| self.as_bool(key, v)).transpose()
    }

    /// Array of strings under `key`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when missing, not an array, or an element is not a string.
    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        let a = self.as_array(key, self.required(key)?)?;
        a.iter()
            .enumerate()
            .map(|(i, v)| self.as_str(key, v).map_err(|_| self.element_err(key, i, "string", v)))
            .collect()
    }

    /// Array of floats under `key` (`f32` or `f64` elements).
    ///
    /// # Errors
    /// [`ModelError::Config`] when missing, not an array, or an element is not a float.
    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let a = self.as_array(key, self.required(key)?)?;
        a.iter()
            .enumerate()
            .map(|(i, v)| self.as_f32(key, v).map_err(|_| self.element_err(key, i, "float", v)))
            .collect()
    }

    /// Array of integers under `key` (any integer elements whose values fit in `i32`).
    ///
    /// # Errors
    /// [`ModelError::Config`] when missing, not an array, or an element is not an integer that
    /// fits in `i32`.
    pub fn i32_array(&self, key: &str) -> Result<Vec<i32>> {
        let a = self.as_array(key, self.required(key)?)?;
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_int()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| self.element_err(key, i, "integer fitting in i32", v))
            })
            .collect()
    }

    fn element_err(&self, key: &str, i: usize, want: &str, v: &Value) -> ModelError {
        let found = match v.as_int() {
            Some(x) => format!("{} {x}", v.type_name()),
            None => v.type_name().to_string(),
        };
        self.config_err(key, format!("element {i}: expected {want}, found {found}"))
    }

    /// The tensor table in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The table entry of tensor `name`.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`] when there is no such tensor.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i]).ok_or_else(|| {
            ModelError::MissingTensor { path: self.path.clone(), tensor: name.to_string() }
        })
    }

    /// The stored bytes of tensor `name`, borrowed from the mapping.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`]; [`ModelError::UnknownDtype`] when the size of the type is
    /// unknown; [`ModelError::Malformed`] if the bytes are not inside the file (which `open`
    /// already rules out).
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        let n = t.n_bytes().ok_or_else(|| self.unknown_dtype(t))?;
        let start = (t.offset as usize).checked_add(self.data_start);
        let end = start.and_then(|s| s.checked_add(n));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.map.len() => Ok(&self.map[s..e]),
            _ => Err(ModelError::malformed(
                &self.path,
                FORMAT,
                format!("tensor `{name}`: data outside the file"),
            )),
        }
    }

    fn unknown_dtype(&self, t: &TensorInfo) -> ModelError {
        ModelError::UnknownDtype {
            path: self.path.clone(),
            tensor: t.name.clone(),
            dtype: t.dtype.to_string(),
        }
    }

    /// Tensor `name` dequantised to row-major f32 (`n_elements` values), in parallel over blocks.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`]; [`ModelError::UnknownDtype`] for types other than F32,
    /// F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        if !quant::supported(t.dtype) {
            return Err(self.unknown_dtype(t));
        }
        let bytes = self.raw(name)?;
        let mut out = vec![0f32; t.n_elements()];
        quant::dequantize_into(t.dtype, bytes, &mut out).map_err(|detail| {
            ModelError::malformed(&self.path, FORMAT, format!("tensor `{name}`: {detail}"))
        })?;
        Ok(out)
    }

    /// Like [`GgufFile::dequantize`], after checking that the row-major shape is `expected`.
    ///
    /// # Errors
    /// [`ModelError::WrongShape`] when the shapes differ, and those of [`GgufFile::dequantize`].
    pub fn dequantize_shaped(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let found = t.shape();
        if found != expected {
            return Err(ModelError::WrongShape {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        self.dequantize(name)
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_start: usize,
    meta: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

fn parse(buf: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.array::<4>("magic")?;
    if &magic != MAGIC {
        return Err(c.err(format!("bad magic {magic:02x?}, expected \"GGUF\"")));
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " (a big-endian file; only little-endian is supported)"
        } else {
            ""
        };
        return Err(c.err(format!("unsupported version {version}{hint}; expected 2 or 3")));
    }
    // Smallest tensor record: empty name (8), n_dims (4), type (4), offset (8).
    let n_tensors = c.u64("tensor count")?;
    // Smallest metadata pair: empty key (8), type (4), a one-byte value.
    let n_kv = c.count(13, "metadata count")?;
    let max_tensors = (c.remaining() / 24) as u64;
    if n_tensors > max_tensors {
        return Err(c.err(format!(
            "tensor count {n_tensors} needs more bytes than the {} left in the file",
            c.remaining()
        )));
    }
    let n_tensors = n_tensors as usize;

    let mut meta = Vec::with_capacity(n_kv);
    let mut meta_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.strict_str(&format!("key of metadata pair {i}"))?;
        let ty = c.u32(&format!("value type of `{key}`"))?;
        let v = c.value(ty, 0, &key)?;
        if meta_index.insert(key.clone(), meta.len()).is_some() {
            return Err(c.err(format!("duplicate metadata key `{key}`")));
        }
        meta.push((key, v));
    }

    let alignment = match meta_index.get("general.alignment").map(|&i| &meta[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_int() {
            Some(a) if a > 0 && a <= u32::MAX as i128 && (a as u64).is_power_of_two() => a as u64,
            _ => {
                return Err(c.err(format!(
                    "general.alignment must be a power of two that fits in u32, found {v:?}"
                )))
            }
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.strict_str(&format!("name of tensor {i}"))?;
        let at = c.pos;
        let n_dims = c.u32(&format!("dimension count of tensor `{name}`"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.err(format!(
                "tensor `{name}`: {n_dims} dimensions at offset {at}, at most {MAX_DIMS} allowed"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n: u64 = 1;
        for _ in 0..n_dims {
            let d = c.u64(&format!("dimensions of tensor `{name}`"))?;
            n = n.checked_mul(d).filter(|&n| n <= i64::MAX as u64).ok_or_else(|| {
                c.err(format!("tensor `{name}`: element count overflows ({dims:?} x {d})"))
            })?;
            dims.push(d);
        }
        let dtype = GgmlType::from_id(c.u32(&format!("type of tensor `{name}`"))?);
        let offset = c.u64(&format!("offset of tensor `{name}`"))?;
        if let Some(be) = quant::block_elems(dtype) {
            let inner = dims.first().copied().unwrap_or(1);
            if !inner.is_multiple_of(be as u64) {
                return Err(c.err(format!(
                    "tensor `{name}`: innermost extent {inner} is not a multiple of the {dtype} \
                     block size {be}"
                )));
            }
        }
        if !offset.is_multiple_of(alignment) {
            return Err(c.err(format!(
                "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let info = TensorInfo { name, dims, dtype, offset };
        if tensor_index.insert(info.name.clone(), tensors.len()).is_some() {
            return Err(c.err(format!("duplicate tensor name `{}`", info.name)));
        }
        tensors.push(info);
    }

    let data_start = align_up(c.pos as u64, alignment).unwrap_or(u64::MAX);
    if data_start > buf.len() as u64 && !tensors.is_empty() {
        return Err(c.err(format!(
            "truncated: data section would start at offset {data_start} but the file has {} bytes",
            buf.len()
        )));
    }
    let data_start = data_start.min(buf.len() as u64) as usize;
    let data_len = (buf.len() - data_start) as u64;
    for t in &tensors {
        let Some(size) = t.n_bytes() else {
            // Unknown block size: only the start can be checked.
            if t.offset > data_len {
                return Err(c.err(format!(
                    "tensor `{}`: offset {} is past the end of the data section ({data_len} bytes)",
                    t.name, t.offset
                )));
            }
            continue;
        };
        let end = t.offset.checked_add(size as u64);
        if end.is_none_or(|e| e > data_len) {
            return Err(c.err(format!(
                "tensor `{}`: bytes {}..{} (type {}, {} elements) lie outside the data section of \
                 {data_len} bytes",
                t.name,
                t.offset,
                end.map_or_else(|| "overflow".to_string(), |e| e.to_string()),
                t.dtype,
                t.n_elements()
            )));
        }
    }
    Ok(Parsed { version, alignment, data_start, meta, meta_index, tensors, tensor_index })
}
