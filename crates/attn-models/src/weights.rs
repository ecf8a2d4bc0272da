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
