//! Seeded inputs: a small counter-based generator, 4-D tensors in every dtype and layout the
//! library accepts, and random dense masks.
//!
//! Strided layouts leave elements of the buffer outside the view; those are filled with NaN, so a
//! kernel that reads past its view (a wrong stride, a row too long) produces NaN and fails.

use attn::{DType, DenseMask, TensorRef};
use half::{bf16, f16};

/// SplitMix64: the state is a counter advanced by a fixed odd constant and every output is a
/// bijective mix of it. Small, fast, and good enough for test data; streams keyed by
/// `(seed, purpose)` are independent for practical purposes.
#[derive(Debug, Clone)]
pub struct Rng {
    counter: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { counter: mix(seed ^ GOLDEN) }
    }

    /// An independent stream for `(seed, purpose)` (e.g. one per tensor).
    pub fn stream(seed: u64, purpose: u64) -> Self {
        Self::new(mix(seed).wrapping_add(mix(purpose.wrapping_mul(GOLDEN) ^ 0x5851_F42D)))
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(GOLDEN);
        mix(self.counter)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.uniform() * n as f64) as usize % n
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A uniformly random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

/// How the elements of a `[B, H, S, D]` tensor sit in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Row-major `[B, H, S, D]` ([`TensorRef::new`]).
    Bhsd,
    /// A `[B, S, H, D]` buffer viewed as `[B, H, S, D]` ([`TensorRef::from_bshd`]).
    Bshd,
    /// `[B, H, S, D]` with gaps after every row, head and batch (NaN in the gaps).
    Padded,
    /// Element stride 2 along `D`, the odd elements NaN (the path without unit-stride rows).
    StridedD,
}

impl Layout {
    /// Every layout.
    pub const ALL: [Layout; 4] = [Layout::Bhsd, Layout::Bshd, Layout::Padded, Layout::StridedD];

    /// Short name for case labels.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Bhsd => "bhsd",
            Layout::Bshd => "bshd",
            Layout::Padded => "padded",
            Layout::StridedD => "strided-d",
        }
    }

    /// `(strides, buffer length)` of `shape = [B, H, S, D]` in this layout.
    pub fn strides(self, shape: [usize; 4]) -> ([usize; 4], usize) {
        let [b, h, s, d] = shape;
        match self {
            Layout::Bhsd => ([h * s * d, s * d, d, 1], b * h * s * d),
            Layout::Bshd => ([s * h * d, d, h * d, 1], b * h * s * d),
            Layout::Padded => {
                let row = d + 3;
                let head = s * row + 5;
                let batch = h * head + 7;
                ([batch, head, row, 1], b * batch)
            }
            Layout::StridedD => ([2 * h * s * d, 2 * s * d, 2 * d, 2], 2 * b * h * s * d),
        }
    }
}

/// The owned storage of a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum Buf {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
}

/// An owned 4-D tensor `[B, H, S, D]` in some dtype and layout; [`Tensor::view`] lends it to the
/// library.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The buffer (elements outside the view are NaN).
    pub buf: Buf,
    /// `[B, H, S, D]`.
    pub shape: [usize; 4],
    /// The layout.
    pub layout: Layout,
    strides: [usize; 4],
}

impl Tensor {
    /// A tensor whose every element is `f(b, h, s, d)` rounded to `dtype`.
    pub fn from_fn(
        dtype: DType,
        shape: [usize; 4],
        layout: Layout,
        mut f: impl FnMut(usize, usize, usize, usize) -> f32,
    ) -> Self {
        let (strides, len) = layout.strides(shape);
        let mut vals = vec![f32::NAN; len];
        let [nb, nh, ns, nd] = shape;
        for b in 0..nb {
            for h in 0..nh {
                for s in 0..ns {
                    for d in 0..nd {
                        vals[b * strides[0] + h * strides[1] + s * strides[2] + d * strides[3]] =
                            f(b, h, s, d);
                    }
                }
            }
        }
        let buf = match dtype {
            DType::F32 => Buf::F32(vals),
            DType::F16 => Buf::F16(vals.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Buf::BF16(vals.iter().map(|&x| bf16::from_f32(x)).collect()),
        };
        Self { buf, shape, layout, strides }
    }

    /// Random elements: `N(0, sigma²)` (`sigma > 0`) or uniform in `[−|sigma|, |sigma|)`
    /// (`sigma < 0`), rounded to `dtype`.
    pub fn random(
        rng: &mut Rng,
        dtype: DType,
        shape: [usize; 4],
        layout: Layout,
        sigma: f32,
    ) -> Self {
        Self::from_fn(dtype, shape, layout, |_, _, _, _| {
            if sigma > 0.0 {
                (rng.normal() * sigma as f64) as f32
            } else {
                rng.range(sigma as f64, -sigma as f64) as f32
            }
        })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.buf {
            Buf::F32(_) => DType::F32,
            Buf::F16(_) => DType::F16,
            Buf::BF16(_) => DType::BF16,
        }
    }

    /// The view the library reads (`[B, S, H, D]` buffers go through [`TensorRef::from_bshd`]).
    pub fn view(&self) -> TensorRef<'_> {
        let data: attn::Data = match &self.buf {
            Buf::F32(x) => x[..].into(),
            Buf::F16(x) => x[..].into(),
            Buf::BF16(x) => x[..].into(),
        };
        let [b, h, s, d] = self.shape;
        let t = match self.layout {
            Layout::Bhsd => TensorRef::new(data, self.shape),
            Layout::Bshd => TensorRef::from_bshd(data, [b, s, h, d]),
            Layout::Padded | Layout::StridedD => {
                TensorRef::with_strides(data, self.shape, self.strides)
            }
        };
        t.expect("attn-testing builds only valid views")
    }

    /// Element `[b, h, s, d]` widened to f32.
    pub fn get(&self, b: usize, h: usize, s: usize, d: usize) -> f32 {
        let o = self.offset(b, h, s, d);
        match &self.buf {
            Buf::F32(x) => x[o],
            Buf::F16(x) => x[o].to_f32(),
            Buf::BF16(x) => x[o].to_f32(),
        }
    }

    /// Sets element `[b, h, s, d]` (rounded to the dtype).
    pub fn set(&mut self, b: usize, h: usize, s: usize, d: usize, x: f32) {
        let o = self.offset(b, h, s, d);
        match &mut self.buf {
            Buf::F32(v) => v[o] = x,
            Buf::F16(v) => v[o] = f16::from_f32(x),
            Buf::BF16(v) => v[o] = bf16::from_f32(x),
        }
    }

    /// The same values in another layout.
    pub fn relayout(&self, layout: Layout) -> Self {
        let mut t = Self::from_fn(self.dtype(), self.shape, layout, |_, _, _, _| 0.0);
        self.for_each(|b, h, s, d, x| t.set(b, h, s, d, x));
        t
    }

    /// The values, widened, as a contiguous `[B, H, S, D]` f64 vector.
    pub fn to_f64(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.shape.iter().product());
        self.for_each(|_, _, _, _, x| out.push(x as f64));
        out
    }

    /// Calls `f(b, h, s, d, value)` in row-major order.
    pub fn for_each(&self, mut f: impl FnMut(usize, usize, usize, usize, f32)) {
        let [nb, nh, ns, nd] = self.shape;
        for b in 0..nb {
            for h in 0..nh {
                for s in 0..ns {
                    for d in 0..nd {
                        f(b, h, s, d, self.get(b, h, s, d));
                    }
                }
            }
        }
    }

    fn offset(&self, b: usize, h: usize, s: usize, d: usize) -> usize {
        let [nb, nh, ns, nd] = self.shape;
        assert!(b < nb && h < nh && s < ns && d < nd, "index out of {:?}", self.shape);
        b * self.strides[0] + h * self.strides[1] + s * self.strides[2] + d * self.strides[3]
    }
}

/// A random dense mask of `shape = [B or 1, H or 1, S_q, S_kv]`: each key allowed with probability
/// `p_allow`, about one row in eight fully masked (at least one), one row in eight fully allowed.
pub fn random_dense_mask(rng: &mut Rng, shape: [usize; 4], p_allow: f64) -> DenseMask {
    let [nb, nh, nq, nk] = shape;
    let rows = nb * nh * nq;
    let forced_empty = rng.below(rows);
    let mut flags = Vec::with_capacity(rows * nk);
    for r in 0..rows {
        let kind = rng.below(8);
        for _ in 0..nk {
            flags.push(match kind {
                _ if r == forced_empty => false,
                0 => false,
                1 => true,
                _ => rng.bernoulli(p_allow),
            });
        }
    }
    DenseMask::new(flags, shape).expect("shape matches the buffer")
}

/// `n` deterministic values in `[−1, 1)` from a xorshift stream keyed by `seed` (quick inputs for
/// the linear-family tests, whose tolerances were set on exactly these values).
pub fn xorshift_uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, 1).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::stream(7, 1);
        let mut y = Rng::stream(7, 2);
        let mut z = Rng::stream(8, 1);
        let (x, y, z) = (x.next_u64(), y.next_u64(), z.next_u64());
        assert!(x != y && x != z && y != z);
    }

    #[test]
    fn moments_are_plausible() {
        let mut r = Rng::new(3);
        let n = 20000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        let us: Vec<f64> = (0..n).map(|_| r.uniform()).collect();
        assert!(us.iter().all(|&u| (0.0..1.0).contains(&u)));
        let counts = (0..n).fold([0usize; 5], |mut c, _| {
            c[r.below(5)] += 1;
            c
        });
        assert!(counts.iter().all(|&c| c > n / 5 - 400 && c < n / 5 + 400), "{counts:?}");
        let mut p = r.permutation(50);
        p.sort();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn every_layout_views_the_same_values() {
        let shape = [2, 3, 5, 4];
        let mut r = Rng::new(1);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let t = Tensor::random(&mut r, dtype, shape, Layout::Bhsd, 1.0);
            for layout in Layout::ALL {
                let u = t.relayout(layout);
                let v = u.view();
                assert_eq!(v.shape(), shape);
                assert_eq!(v.dtype(), dtype);
                t.for_each(|b, h, s, d, x| assert_eq!(v.get(b, h, s, d).to_bits(), x.to_bits()));
                assert_eq!(u.to_f64(), t.to_f64());
            }
        }
    }

    #[test]
    fn dense_masks_have_fully_masked_rows() {
        let mut r = Rng::new(5);
        let m = random_dense_mask(&mut r, [2, 1, 9, 13], 0.5);
        let g = attn::MaskGeometry { b: 2, h: 3, s_q: 9, s_kv: 13, q_offset: 4 };
        let empty = (0..2)
            .flat_map(|b| (0..9).map(move |i| (b, i)))
            .filter(|&(b, i)| (0..13).all(|j| !m.get(b, 2, i, j)))
            .count();
        assert!(empty >= 1);
        assert!(attn::Mask::Dense(m).validate(&g).is_ok());
    }
}
