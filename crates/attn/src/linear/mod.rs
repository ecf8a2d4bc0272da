//! Linear and recurrent attention: a `K × V` state per head instead of the `n × n` matrix.
//!
//! Each mechanism comes in three forms that compute the same function (spec `linear.md` Part A):
//! - **reference** — the naive quadratic form, plain loops, f64 accumulation;
//! - **recurrent** — one token at a time, state in and out (decode; cost per token independent of
//!   the position);
//! - **chunked** — chunkwise-parallel prefill: inside a chunk of `C` tokens the quadratic form,
//!   across chunks the state is passed on (for the delta rule the UT representation, solved by
//!   forward substitution, with every decay factor of the form `exp(γ_i − γ_j) ≤ 1`).
//!
//! Layout: the kernels work on one head at a time, rows contiguous: `q, k: [T, K]`,
//! `v: [T, V]`, state `[K, V]` row-major, per-token gates `g: [T]` (natural-log decay, `≤ 0`) and
//! `beta: [T]`. [`gated_delta_rule`] takes the fla layout (`q, k: [B, T, H, K]`, `v: [B, T, H, V]`,
//! `g, beta: [B, T, H]`, state `[B, H, K, V]`) and gathers each head.
//!
//! Mechanisms: [`vanilla`] (kernelised linear attention with a feature map) and [`delta`] (the
//! gated delta rule of Gated DeltaNet and KDA); [`nala`] adds NaLaFormer's norm-aware feature maps
//! on top of [`vanilla`]. The FAVOR+ positive random feature map plugs into
//! [`FeatureMap`] once the shared RNG (`primitives/rng.rs`) lands: it needs a seeded projection
//! matrix, so it will be a variant carrying that matrix rather than a pure element-wise map.

pub mod delta;
pub mod nala;
pub mod vanilla;

pub use delta::{gated_delta_rule, DeltaInputs};

/// Element-wise feature map `φ` of kernelised linear attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeatureMap {
    /// `φ(x) = x`.
    Identity,
    /// `φ(x) = elu(x) + 1` (Katharopoulos et al. 2020): positive, so the normaliser is positive.
    Elu1,
    /// `φ(x) = elu(x)` (`x` for `x > 0`, `eˣ − 1` otherwise): can be negative (transNormer T1's
    /// kernel, used without a normaliser).
    Elu,
    /// `φ(x) = max(x, 0)`.
    Relu,
}

impl FeatureMap {
    /// `φ(x)` in f32.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            FeatureMap::Identity => x,
            FeatureMap::Elu1 => {
                if x > 0.0 {
                    x + 1.0
                } else {
                    // The crate's exp2 polynomial (relative error ≤ 2.4e-7): libm's expf call
                    // was most of the chunked forms' time.
                    crate::primitives::simd::exp2_scalar(x * std::f32::consts::LOG2_E)
                }
            }
            FeatureMap::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            FeatureMap::Relu => x.max(0.0),
        }
    }

    /// `φ(x)` in f64 (references).
    #[inline]
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            FeatureMap::Identity => x,
            FeatureMap::Elu1 => {
                if x > 0.0 {
                    x + 1.0
                } else {
                    x.exp()
                }
            }
            FeatureMap::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            FeatureMap::Relu => x.max(0.0),
        }
    }

    /// The name used in method specs (`identity`, `elu1`, `elu`, `relu`).
    pub fn name(self) -> &'static str {
        match self {
            FeatureMap::Identity => "identity",
            FeatureMap::Elu1 => "elu1",
            FeatureMap::Elu => "elu",
            FeatureMap::Relu => "relu",
        }
    }

    /// Parses [`FeatureMap::name`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "identity" => Some(FeatureMap::Identity),
            "elu1" | "elu+1" => Some(FeatureMap::Elu1),
            "elu" => Some(FeatureMap::Elu),
            "relu" => Some(FeatureMap::Relu),
            _ => None,
        }
    }
}

/// Which keys query row `i` reads in a causal linear method: keys `0..=pos_i` clamped to the
/// sequence, as a count (`0` = none). `pos_i = q_offset + i` (spec §0: bottom-right alignment
/// is the caller's `q_offset`).
#[inline]
pub fn keys_seen(q_offset: i64, i: usize, s_kv: usize) -> usize {
    (q_offset + i as i64 + 1).clamp(0, s_kv as i64) as usize
}

/// `a · b` in f32 (a fixed order: 8 interleaved partial sums, then a fixed tree; the compiler
/// may vectorise it but not reorder it, so results do not depend on the SIMD level).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `y += a · x`.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}
