//! Reading named f32 tensors from safetensors files (memory-mapped) with typed errors that name
//! the file and the tensor.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// A memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    names: Vec<String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps and validates the header of `path`.
    ///
    /// # Errors
    /// [`ModelError::Io`] or [`ModelError::Malformed`] (truncated, lying header, overlapping data).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        // SAFETY: the mapping is read-only and private to this process; a concurrent writer
        // truncating the file could fault, as with every mmap-based loader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| ModelError::malformed(&path, "safetensors", e.to_string()))?;
        let names = st.names().into_iter().cloned().collect();
        Ok(Self { path, map, names })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The shape of tensor `name`.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`], [`ModelError::Malformed`].
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let st = SafeTensors::deserialize(&self.map)
            .map_err(|e| ModelError::malformed(&self.path, "safetensors", e.to_string()))?;
        let t = st.tensor(name).map_err(|_| ModelError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        Ok(t.shape().to_vec())
    }

    /// Tensor `name` as f32 (f32, f16 and bf16 are accepted), checked against `shape`.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`], [`ModelError::WrongShape`], [`ModelError::UnknownDtype`].
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let st = SafeTensors::deserialize(&self.map)
            .map_err(|e| ModelError::malformed(&self.path, "safetensors", e.to_string()))?;
        let t = st.tensor(name).map_err(|_| ModelError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        if t.shape() != shape {
            return Err(ModelError::WrongShape {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape().to_vec(),
            });
        }
        let b = t.data();
        Ok(match t.dtype() {
            Dtype::F32 => {
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Dtype::F16 => {
                b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnknownDtype {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        })
    }
}

/// A trained SEA estimator (`attn::methods::sea::Estimator`) from a safetensors file holding
/// `sea.w_q` and `sea.w_k`, both `[r, D]` (f32, f16 or bf16): the projections applied to queries
/// and keys before the cell statistics (see `crates/attn/src/methods/sea/README.md`).
///
/// # Errors
/// [`ModelError::Io`], [`ModelError::Malformed`], [`ModelError::MissingTensor`],
/// [`ModelError::WrongShape`] (`sea.w_k` not of `sea.w_q`'s shape, or not 2-D),
/// [`ModelError::Attention`] (non-finite weights).
pub fn sea_estimator(path: impl AsRef<Path>) -> Result<attn::methods::sea::Estimator> {
    let f = SafetensorsFile::open(path)?;
    let shape = f.shape("sea.w_q")?;
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return Err(ModelError::WrongShape {
            path: f.path.clone(),
            tensor: "sea.w_q".into(),
            expected: vec![0, 0],
            found: shape,
        });
    }
    let w_q = f.f32("sea.w_q", &shape)?;
    let w_k = f.f32("sea.w_k", &shape)?;
    Ok(attn::methods::sea::Estimator::new(shape[1], w_q, w_k)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn write(name: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> PathBuf {
        let bytes: Vec<Vec<u8>> =
            tensors.iter().map(|t| t.2.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .zip(&bytes)
            .map(|(t, b)| (t.0.to_string(), TensorView::new(Dtype::F32, t.1.clone(), b).unwrap()))
            .collect();
        let data = safetensors::serialize(views, &None).unwrap();
        let path = std::env::temp_dir().join(format!("attn-sea-{}-{name}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn sea_estimator_loads_and_checks_shapes() {
        let w: Vec<f32> = (0..3 * 8).map(|i| i as f32 / 10.0).collect();
        let ok =
            write("ok", &[("sea.w_q", vec![3, 8], w.clone()), ("sea.w_k", vec![3, 8], w.clone())]);
        let e = sea_estimator(&ok).unwrap();
        assert_eq!((e.rank(), e.head_dim()), (3, 8));
        assert_eq!(e.weights().0, &w[..]);
        let bad =
            write("bad", &[("sea.w_q", vec![3, 8], w.clone()), ("sea.w_k", vec![4, 6], w.clone())]);
        assert!(matches!(sea_estimator(&bad), Err(ModelError::WrongShape { .. })));
        let missing = write("missing", &[("sea.w_q", vec![3, 8], w)]);
        assert!(matches!(sea_estimator(&missing), Err(ModelError::MissingTensor { .. })));
        for p in [ok, bad, missing] {
            let _ = std::fs::remove_file(p);
        }
    }
}
