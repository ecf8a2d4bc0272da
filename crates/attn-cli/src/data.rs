//! Owned input arrays and the seeded generator that fills them.

use anyhow::{anyhow, bail, Result};
use attn::{DType, TensorRef};
use half::{bf16, f16};

/// Owned elements of one array, in the dtype the kernels will read.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl HostData {
    /// Rounds f32 values to `dtype`.
    pub fn from_f32(x: Vec<f32>, dtype: DType) -> Self {
        match dtype {
            DType::F32 => HostData::F32(x),
            DType::F16 => HostData::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::BF16 => HostData::BF16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HostData::F32(x) => x.len(),
            HostData::F16(x) => x.len(),
            HostData::BF16(x) => x.len(),
        }
    }

    pub fn as_data(&self) -> attn::Data<'_> {
        match self {
            HostData::F32(x) => attn::Data::F32(x),
            HostData::F16(x) => attn::Data::F16(x),
            HostData::BF16(x) => attn::Data::BF16(x),
        }
    }
}

/// An owned array with its shape (any rank, as read from a file or generated).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub data: HostData,
    pub shape: Vec<usize>,
}

impl HostTensor {
    /// Seeded values uniform in `[-1, 1)`, rounded to `dtype`; `stream` separates q, k and v.
    pub fn random(shape: [usize; 4], dtype: DType, seed: u64, stream: u64) -> Self {
        let n = shape.iter().product();
        let mut rng = SplitMix64::new(seed, stream);
        let x = (0..n).map(|_| rng.next_sym()).collect();
        Self { data: HostData::from_f32(x, dtype), shape: shape.to_vec() }
    }

    /// Given f32 values, rounded to `dtype`.
    pub fn from_f32(x: Vec<f32>, shape: [usize; 4], dtype: DType) -> Self {
        Self { data: HostData::from_f32(x, dtype), shape: shape.to_vec() }
    }

    /// A contiguous `[B, H, S, D]` view.
    pub fn view(&self) -> Result<TensorRef<'_>> {
        self.view_as(false)
    }

    /// A `[B, H, S, D]` view of a 4-D array stored `[B, H, S, D]` or, with `bshd`, `[B, S, H, D]`.
    pub fn view_as(&self, bshd: bool) -> Result<TensorRef<'_>> {
        let shape: [usize; 4] = self.shape.as_slice().try_into().map_err(|_| {
            anyhow!("expected a 4-D array, got shape {:?} ({}-D)", self.shape, self.shape.len())
        })?;
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(self.data.len()) {
            bail!("shape {shape:?} does not match the {} elements read", self.data.len());
        }
        let t = if bshd {
            TensorRef::from_bshd(self.data.as_data(), shape)
        } else {
            TensorRef::new(self.data.as_data(), shape)
        };
        Ok(t?)
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for benchmark inputs.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64, stream: u64) -> Self {
        Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)` on a grid of 2^-23 (exactly representable in f32).
    pub fn next_sym(&mut self) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        2.0 * u - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_seeded_and_in_range() {
        let a = HostTensor::random([1, 2, 3, 4], DType::F32, 7, 1);
        let b = HostTensor::random([1, 2, 3, 4], DType::F32, 7, 1);
        let c = HostTensor::random([1, 2, 3, 4], DType::F32, 7, 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let HostData::F32(x) = &a.data else { panic!() };
        assert!(x.iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
