//! The shared case grid: shapes, masks, parameters, dtypes and layouts every implementation is
//! held to (filtered by what it declares it can run).
//!
//! The default grid is a covering set sized for CI (every value of every axis appears, and the
//! pairs that matter — GQA × causal × `S_q ≠ S_kv`, large D × masks, decode shapes × masks — are
//! crossed); `ATTN_FULL_GRID=1` crosses every shape with every mask.

use crate::rand::Rng;
use attn::{DenseMask, Inputs, Mask, Params, TensorRef};
use half::{bf16, f16};

/// Element type and memory layout of the generated inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Contiguous `[B, H, S, D]`.
    Bhsd,
    /// A `[B, S, H, D]` buffer viewed as `[B, H, S, D]` (strided).
    Bshd,
}

/// Element type of the generated inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dt {
    /// f32
    F32,
    /// f16
    F16,
    /// bf16
    BF16,
}

/// One test case.
#[derive(Debug, Clone)]
pub struct Case {
    /// `[B, H, H_kv, S_q, S_kv, D, D_v]`.
    pub dims: [usize; 7],
    /// Parameters (mask, softcap, ALiBi, offset).
    pub params: Params,
    /// Input element type.
    pub dtype: Dt,
    /// Input layout.
    pub layout: Layout,
    /// Seed of the inputs.
    pub seed: u64,
    /// Input magnitude (1 by default; large values stress the softmax).
    pub scale: f32,
}

impl Case {
    /// Test id encoding the shape and options.
    pub fn name(&self) -> String {
        let [b, h, hk, sq, sk, d, dv] = self.dims;
        format!(
            "b{b}_h{h}x{hk}_sq{sq}_skv{sk}_d{d}_dv{dv}_{:?}_{:?}_{}{}{}",
            self.dtype,
            self.layout,
            mask_label(&self.params.mask),
            self.params.q_offset.map_or(String::new(), |o| format!("_off{o}")),
            if self.params.softcap.is_some() {
                "_softcap"
            } else if self.params.alibi_slopes.is_some() {
                "_alibi"
            } else {
                ""
            }
        )
    }

    /// Generates the inputs.
    pub fn data(&self) -> CaseData {
        let [b, h, hk, sq, sk, d, dv] = self.dims;
        let mut rng = Rng::new(self.seed);
        let q = rng.vec(b * h * sq * d, self.scale);
        let k = rng.vec(b * hk * sk * d, self.scale);
        let v = rng.vec(b * hk * sk * dv, 1.0);
        CaseData::new(
            self.dtype,
            self.layout,
            [b, h, sq, d],
            q,
            [b, hk, sk, d],
            k,
            [b, hk, sk, dv],
            v,
        )
    }
}

fn mask_label(m: &Mask) -> String {
    match m {
        Mask::None => "none".into(),
        Mask::Causal => "causal".into(),
        Mask::Window { left, right } => {
            format!("window{}-{}", left.map_or(-1, |x| x as i64), right.map_or(-1, |x| x as i64))
        }
        Mask::KeyPadding { .. } => "padding".into(),
        Mask::PrefixLm { prefix } => format!("prefix{prefix}"),
        Mask::BlockDiagonal { causal, .. } => {
            format!("blockdiag{}", if *causal { "_causal" } else { "" })
        }
        Mask::Dense(_) => "dense".into(),
        Mask::And(l) => l.iter().map(mask_label).collect::<Vec<_>>().join("+"),
    }
}

/// Owned input storage of one case.
#[derive(Debug, Clone)]
pub struct CaseData {
    bufs: [Buf; 3],
    shapes: [[usize; 4]; 3],
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl CaseData {
    /// Stores `q`, `k`, `v` (given in `[B, H, S, D]` order) in the dtype and layout asked for.
    #[allow(clippy::too_many_arguments)] // three tensors and their shapes
    pub fn new(
        dt: Dt,
        layout: Layout,
        qs: [usize; 4],
        q: Vec<f32>,
        ks: [usize; 4],
        k: Vec<f32>,
        vs: [usize; 4],
        v: Vec<f32>,
    ) -> Self {
        let conv = |x: Vec<f32>, s: [usize; 4]| {
            let x = if layout == Layout::Bshd { to_bshd(&x, s) } else { x };
            match dt {
                Dt::F32 => Buf::F32(x),
                Dt::F16 => Buf::F16(x.iter().map(|&a| f16::from_f32(a)).collect()),
                Dt::BF16 => Buf::BF16(x.iter().map(|&a| bf16::from_f32(a)).collect()),
            }
        };
        CaseData { bufs: [conv(q, qs), conv(k, ks), conv(v, vs)], shapes: [qs, ks, vs], layout }
    }

    /// Views of the three tensors.
    pub fn inputs(&self) -> Inputs<'_> {
        let view = |i: usize| {
            let [b, h, s, d] = self.shapes[i];
            let data: attn::Data = match &self.bufs[i] {
                Buf::F32(x) => attn::Data::F32(x),
                Buf::F16(x) => attn::Data::F16(x),
                Buf::BF16(x) => attn::Data::BF16(x),
            };
            match self.layout {
                Layout::Bhsd => TensorRef::new(data, [b, h, s, d]),
                Layout::Bshd => TensorRef::from_bshd(data, [b, s, h, d]),
            }
            .expect("case shapes are consistent")
        };
        Inputs { q: view(0), k: view(1), v: view(2) }
    }
}

fn to_bshd(x: &[f32], [b, h, s, d]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                let src = ((bi * h + hi) * s + si) * d;
                let dst = ((bi * s + si) * h + hi) * d;
                out[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    out
}

/// The masks crossed with every shape, for given `B`, `H`, `S_q`, `S_kv`.
pub fn masks(b: usize, h: usize, s_q: usize, s_kv: usize, seed: u64) -> Vec<Mask> {
    let mut rng = Rng::new(seed);
    let lengths: Vec<usize> =
        (0..b).map(|i| if i == 1 { 0 } else { 1 + rng.below(s_kv) }).collect();
    // Packed sequences: up to three segments (one may be empty on the query side).
    let cut = |n: usize, r: &mut Rng| {
        let a = r.below(n + 1);
        let c = r.below(n + 1 - a);
        vec![a, c, n - a - c]
    };
    let (q_lens, kv_lens) = (cut(s_q, &mut rng), cut(s_kv, &mut rng));
    // Dense: random, with every third query row fully masked.
    let dense: Vec<bool> = (0..b * h * s_q * s_kv)
        .map(|t| {
            let row = (t / s_kv) % s_q;
            row % 3 != 1 && rng.below(4) != 0
        })
        .collect();
    vec![
        Mask::None,
        Mask::Causal,
        Mask::sliding_window(1 + s_kv / 3),
        Mask::Window { left: Some(3), right: Some(5) },
        Mask::Window { left: None, right: Some(0) },
        Mask::KeyPadding { lengths: lengths.clone() },
        Mask::PrefixLm { prefix: s_kv / 2 },
        Mask::BlockDiagonal { q_lens: q_lens.clone(), kv_lens: kv_lens.clone(), causal: false },
        Mask::BlockDiagonal { q_lens, kv_lens, causal: true },
        Mask::Dense(DenseMask::new(dense, [b, h, s_q, s_kv]).expect("dense shape")),
        Mask::And(vec![Mask::Causal, Mask::KeyPadding { lengths }]),
    ]
}

/// Shapes `[B, H, H_kv, S_q, S_kv, D, D_v]` of the grid.
pub const SHAPES: &[[usize; 7]] = &[
    [1, 1, 1, 1, 1, 32, 32],
    [2, 4, 4, 63, 63, 64, 64],
    [1, 8, 2, 65, 100, 80, 80],
    [2, 8, 1, 100, 63, 128, 128],
    [1, 4, 4, 1, 1000, 64, 64],
    [1, 8, 2, 1, 300, 128, 128],
    [1, 8, 1, 4, 513, 256, 256],
    [1, 4, 2, 100, 100, 256, 256],
    [1, 2, 1, 65, 65, 64, 32],
    [2, 2, 2, 33, 77, 48, 80],
    [1, 2, 2, 17, 40, 20, 12],
    [1, 2, 2, 1000, 1000, 64, 64],
];

/// The case grid (see the module doc).
pub fn grid() -> Vec<Case> {
    let full = std::env::var("ATTN_FULL_GRID").is_ok_and(|v| v == "1");
    let mut out = Vec::new();
    for (si, &dims) in SHAPES.iter().enumerate() {
        let [b, h, _, sq, sk, _, _] = dims;
        let big = sq * sk >= 500_000;
        let all = masks(b, h, sq, sk, si as u64);
        let n = all.len();
        for (mi, mask) in all.into_iter().enumerate() {
            // Covering set: none and causal for every shape, four more masks rotating by shape
            // (the big shape keeps none and causal only).
            let pick = full || mi <= 1 || (!big && (mi + n - si % n) % n < 4);
            if !pick {
                continue;
            }
            let base = Case {
                dims,
                params: Params::default().with_mask(mask),
                dtype: Dt::F32,
                layout: Layout::Bhsd,
                seed: 100 + si as u64,
                scale: 1.0,
            };
            out.push(base.clone());
        }
        // q_offset explicit, negative and past the keys.
        if !big {
            for off in [-5i64, 7] {
                let mut c = Case {
                    dims,
                    params: Params::causal(),
                    dtype: Dt::F32,
                    layout: Layout::Bhsd,
                    seed: 200 + si as u64,
                    scale: 1.0,
                };
                c.params.q_offset = Some(off);
                out.push(c);
            }
        }
    }
    // Softcap, ALiBi, dtypes, layout, large magnitudes on a few shapes.
    for &dims in &[SHAPES[2], SHAPES[5], SHAPES[9]] {
        let [_, h, ..] = dims;
        let mk = |params: Params, dtype: Dt, layout: Layout, scale: f32| Case {
            dims,
            params,
            dtype,
            layout,
            seed: 7,
            scale,
        };
        out.push(mk(Params { softcap: Some(5.0), ..Params::causal() }, Dt::F32, Layout::Bhsd, 3.0));
        let slopes: Vec<f32> = (0..h).map(|i| 0.5f32.powi(i as i32 + 1)).collect();
        out.push(mk(
            Params { alibi_slopes: Some(slopes.clone()), ..Params::causal() },
            Dt::F32,
            Layout::Bhsd,
            1.0,
        ));
        out.push(mk(
            Params { alibi_slopes: Some(slopes), ..Params::default() },
            Dt::F32,
            Layout::Bshd,
            1.0,
        ));
        out.push(mk(Params::causal(), Dt::F16, Layout::Bhsd, 1.0));
        out.push(mk(Params::default(), Dt::BF16, Layout::Bshd, 1.0));
        out.push(mk(Params::causal(), Dt::F32, Layout::Bshd, 30.0));
    }
    out
}
