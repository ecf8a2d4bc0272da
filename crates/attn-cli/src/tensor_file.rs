//! Reading and writing arrays: NumPy `.npy` (via `npyz`) and `.safetensors`.
//!
//! Accepted element types: f32, f16, bf16 (safetensors only: NumPy has no bf16) and f64, which is
//! rounded to f32 on reading. Fortran-order `.npy` arrays are reordered to C order. Every error
//! names the file.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use npyz::WriterBuilder;

use crate::data::{HostData, HostTensor};

/// File formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Npy,
    Safetensors,
}

impl Format {
    /// `.npy` or `.safetensors` (case-insensitive).
    pub fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("npy") => Ok(Format::Npy),
            Some("safetensors") => Ok(Format::Safetensors),
            _ => bail!("{}: unknown format; use a .npy or .safetensors file", path.display()),
        }
    }
}

/// Where one array comes from: a file and, inside a `.safetensors` file, a tensor name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub format: Format,
    /// Tensor name inside a safetensors file.
    pub name: Option<String>,
}

impl Source {
    /// Parses `FILE.npy`, `FILE.safetensors` or `FILE.safetensors:NAME`; `default_name` is the
    /// tensor read from a safetensors file when no name is given.
    pub fn parse(arg: &str, default_name: &str) -> Result<Self> {
        if let Some((file, name)) = arg.rsplit_once(':') {
            let path = PathBuf::from(file);
            if Format::of(&path).ok() == Some(Format::Safetensors) {
                if name.is_empty() {
                    bail!("{arg}: empty tensor name after ':'");
                }
                return Ok(Self { path, format: Format::Safetensors, name: Some(name.into()) });
            }
        }
        let path = PathBuf::from(arg);
        let format = Format::of(&path)?;
        let name = (format == Format::Safetensors).then(|| default_name.to_string());
        Ok(Self { path, format, name })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}:{n}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// Reads the array `src` names.
pub fn read(src: &Source) -> Result<HostTensor> {
    let t = match (src.format, &src.name) {
        (Format::Npy, _) => read_npy(&src.path),
        (Format::Safetensors, Some(name)) => read_safetensors(&src.path, name),
        (Format::Safetensors, None) => Err(anyhow!("no tensor name")),
    };
    t.with_context(|| format!("reading {src}"))
}

fn read_npy(path: &Path) -> Result<HostTensor> {
    let mut file = File::open(path)?;
    check_npy_shape(&mut file)?;
    file.seek(SeekFrom::Start(0))?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).context("not a valid .npy file")?;
    let shape: Vec<usize> = npy.shape().iter().map(|&n| n as usize).collect();
    let fortran = npy.order() == npyz::Order::Fortran;
    let dtype = npy.dtype();
    let bad_dtype = || {
        anyhow!("element type {} unsupported; expected float32, float16 or float64", dtype.descr())
    };
    let size = match &dtype {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float => t.size_field(),
        _ => return Err(bad_dtype()),
    };
    let short = "the file ends before all elements of the header's shape";
    let mut data = match size {
        2 => HostData::F16(npy.into_vec::<f16>().context(short)?),
        4 => HostData::F32(npy.into_vec::<f32>().context(short)?),
        8 => HostData::F32(
            npy.into_vec::<f64>().context(short)?.into_iter().map(|x| x as f32).collect(),
        ),
        _ => return Err(bad_dtype()),
    };
    if fortran {
        data = match data {
            HostData::F32(x) => HostData::F32(fortran_to_c(&x, &shape)),
            HostData::F16(x) => HostData::F16(fortran_to_c(&x, &shape)),
            HostData::BF16(x) => HostData::BF16(fortran_to_c(&x, &shape)),
        };
    }
    Ok(HostTensor { data, shape })
}

/// Refuses a header whose shape has more elements than fit in memory. npyz multiplies the
/// dimensions without overflow checks (a panic in debug builds, a wrong count in release), so a
/// corrupt header must be caught before the file reaches it.
fn check_npy_shape(file: &mut File) -> Result<()> {
    let mut head = Vec::new();
    file.take(1 << 16).read_to_end(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    let Some(dims) = text
        .find("'shape'")
        .or_else(|| text.find("\"shape\""))
        .and_then(|at| text[at..].find('(').map(|o| at + o + 1))
        .and_then(|open| text[open..].find(')').map(|c| &text[open..open + c]))
    else {
        return Ok(()); // not a header npyz accepts either; it reports the error
    };
    let mut count: u64 = 1;
    for dim in dims.split(',').map(|d| d.trim().trim_end_matches('L')).filter(|d| !d.is_empty()) {
        let Ok(n) = dim.parse::<u64>() else { return Ok(()) };
        count =
            count.checked_mul(n).filter(|&c| c <= (isize::MAX as u64) / 8).with_context(|| {
                format!("header shape ({dims}) has more elements than fit in memory")
            })?;
    }
    Ok(())
}

/// Reorders a column-major array into row-major order.
fn fortran_to_c<T: Copy>(x: &[T], shape: &[usize]) -> Vec<T> {
    let n = x.len();
    // strides of the Fortran layout: axis 0 varies fastest.
    let mut strides = vec![1usize; shape.len()];
    for a in 1..shape.len() {
        strides[a] = strides[a - 1] * shape[a - 1];
    }
    let mut index = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(x[index.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
        // next C-order index: the last axis varies fastest.
        for a in (0..shape.len()).rev() {
            index[a] += 1;
            if index[a] < shape[a] {
                break;
            }
            index[a] = 0;
        }
    }
    out
}

fn read_safetensors(path: &Path, name: &str) -> Result<HostTensor> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("not a valid .safetensors file ({e})"))?;
    let t = st.tensor(name).map_err(|_| {
        let mut names: Vec<&str> = st.names().into_iter().map(String::as_str).collect();
        names.sort_unstable();
        anyhow!("no tensor named {name:?}; the file holds: {}", names.join(", "))
    })?;
    use safetensors::Dtype as S;
    let b = t.data();
    let data = match t.dtype() {
        S::F32 => HostData::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes(le(c))).collect()),
        S::F16 => HostData::F16(b.chunks_exact(2).map(|c| f16::from_le_bytes(le(c))).collect()),
        S::BF16 => HostData::BF16(b.chunks_exact(2).map(|c| bf16::from_le_bytes(le(c))).collect()),
        S::F64 => {
            HostData::F32(b.chunks_exact(8).map(|c| f64::from_le_bytes(le(c)) as f32).collect())
        }
        other => {
            bail!("tensor {name:?} has element type {other:?}; expected F32, F16, BF16 or F64")
        }
    };
    Ok(HostTensor { data, shape: t.shape().to_vec() })
}

fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    c.try_into().expect("chunks_exact yields N bytes")
}

/// One f32 array to write.
pub struct Array<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// Writes one array to a `.npy` file (f32, C order).
pub fn write_npy(path: &Path, a: &Array) -> Result<()> {
    let go = || -> Result<()> {
        let shape: Vec<u64> = a.shape.iter().map(|&n| n as u64).collect();
        let file = BufWriter::new(File::create(path)?);
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(file)
            .begin_nd()?;
        w.extend(a.data.iter().copied())?;
        w.finish()?;
        Ok(())
    };
    go().with_context(|| format!("writing {}", path.display()))
}

/// Writes arrays to one `.safetensors` file (f32, little endian).
pub fn write_safetensors(path: &Path, arrays: &[Array]) -> Result<()> {
    let go = || -> Result<()> {
        let bytes: Vec<Vec<u8>> =
            arrays.iter().map(|a| a.data.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let views = arrays
            .iter()
            .zip(&bytes)
            .map(|(a, b)| {
                let v = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    a.shape.clone(),
                    b,
                )
                .map_err(|e| anyhow!("tensor {}: {e}", a.name))?;
                Ok((a.name, v))
            })
            .collect::<Result<Vec<_>>>()?;
        let out = safetensors::serialize(views, &None).map_err(|e| anyhow!("{e}"))?;
        let mut f = BufWriter::new(File::create(path)?);
        f.write_all(&out)?;
        f.flush()?;
        Ok(())
    };
    go().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let s = Source::parse("a/x.safetensors:query", "q").unwrap();
        assert_eq!((s.format, s.name.as_deref()), (Format::Safetensors, Some("query")));
        let s = Source::parse("x.safetensors", "k").unwrap();
        assert_eq!(s.name.as_deref(), Some("k"));
        let s = Source::parse("x.npy", "k").unwrap();
        assert_eq!((s.format, s.name), (Format::Npy, None));
        assert!(Source::parse("x.bin", "q").is_err());
        assert!(Source::parse("x.safetensors:", "q").is_err());
    }

    #[test]
    fn fortran_order() {
        // shape [2, 3]; Fortran storage lists columns: (0,0) (1,0) (0,1) (1,1) (0,2) (1,2).
        let f = [0, 3, 1, 4, 2, 5];
        assert_eq!(fortran_to_c(&f, &[2, 3]), vec![0, 1, 2, 3, 4, 5]);
    }
}
