//! The shared case grid: shapes, masks, parameters, dtypes and layouts every implementation is
//! held to (each implementation runs the cases it declares it can run).
//!
//! [`grid`] is a covering set sized for CI (2 cores): every value of every axis appears, and the
//! pairs that matter are crossed — GQA × causal × `S_q ≠ S_kv`, `D = 256` × causal, decode shapes
//! (`S_q·H/H_kv ≤ 16`, `S_kv ≥ 256`) × every mask kind and dtype — while square `S = 1000` cases
//! stay few. The test `ci_grid_covers_every_axis` below checks those claims. With
//! `ATTN_FULL_GRID=1`, [`grid`] is the full cross product of shapes and masks instead (hours on a
//! laptop; dtype, layout, softcap and ALiBi rotate along it).

use crate::rand::{random_dense_mask, Layout, Rng, Tensor};
use attn::{DType, Inputs, Mask, Params};

/// A mask recipe; [`MaskSpec::build`] turns it into a [`Mask`] for a given geometry, drawing
/// lengths, segments and dense flags from the case's seed.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSpec {
    /// [`Mask::None`].
    None,
    /// [`Mask::Causal`].
    Causal,
    /// [`Mask::sliding_window`] of `w` keys.
    SlidingWindow(usize),
    /// [`Mask::Window`].
    Window {
        /// Keys before the query position.
        left: Option<usize>,
        /// Keys after the query position.
        right: Option<usize>,
    },
    /// [`Mask::KeyPadding`] with random lengths in `1..=S_kv`; the last batch element has length 0
    /// when `B ≥ 2`.
    KeyPadding,
    /// [`Mask::PrefixLm`].
    PrefixLm(usize),
    /// [`Mask::BlockDiagonal`] with three random segments (possibly empty ones).
    BlockDiagonal {
        /// Causal inside each segment.
        causal: bool,
    },
    /// [`Mask::Dense`], random with fully masked rows ([`random_dense_mask`]); `broadcast`
    /// gives shape `[1, H, S_q, S_kv]`, else `[B, 1, S_q, S_kv]`.
    Dense {
        /// Broadcast over the batch instead of over the heads.
        broadcast: bool,
    },
    /// [`Mask::And`] of the parts.
    And(Vec<MaskSpec>),
}

impl MaskSpec {
    /// The mask for `[B, H, S_q, S_kv]`.
    pub fn build(&self, rng: &mut Rng, b: usize, h: usize, s_q: usize, s_kv: usize) -> Mask {
        match self {
            MaskSpec::None => Mask::None,
            MaskSpec::Causal => Mask::Causal,
            MaskSpec::SlidingWindow(w) => Mask::sliding_window(*w),
            MaskSpec::Window { left, right } => Mask::Window { left: *left, right: *right },
            MaskSpec::KeyPadding => Mask::KeyPadding {
                lengths: (0..b)
                    .map(|i| if b > 1 && i == b - 1 { 0 } else { 1 + rng.below(s_kv) })
                    .collect(),
            },
            MaskSpec::PrefixLm(p) => Mask::PrefixLm { prefix: *p },
            MaskSpec::BlockDiagonal { causal } => {
                let cut = |n: usize, r: &mut Rng| {
                    let a = r.below(n + 1);
                    let c = r.below(n + 1 - a);
                    vec![a, c, n - a - c]
                };
                let q_lens = cut(s_q, rng);
                let kv_lens = cut(s_kv, rng);
                Mask::BlockDiagonal { q_lens, kv_lens, causal: *causal }
            }
            MaskSpec::Dense { broadcast } => {
                let shape = if *broadcast { [1, h, s_q, s_kv] } else { [b, 1, s_q, s_kv] };
                Mask::Dense(random_dense_mask(rng, shape, 0.6))
            }
            MaskSpec::And(parts) => {
                Mask::And(parts.iter().map(|m| m.build(rng, b, h, s_q, s_kv)).collect())
            }
        }
    }

    /// Short label for case names.
    pub fn label(&self) -> String {
        let side = |x: &Option<usize>| x.map_or("inf".to_string(), |v| v.to_string());
        match self {
            MaskSpec::None => "none".into(),
            MaskSpec::Causal => "causal".into(),
            MaskSpec::SlidingWindow(w) => format!("sliding{w}"),
            MaskSpec::Window { left, right } => format!("window{}-{}", side(left), side(right)),
            MaskSpec::KeyPadding => "keypad".into(),
            MaskSpec::PrefixLm(p) => format!("prefix{p}"),
            MaskSpec::BlockDiagonal { causal: true } => "blockdiag-causal".into(),
            MaskSpec::BlockDiagonal { causal: false } => "blockdiag".into(),
            MaskSpec::Dense { broadcast: true } => "dense-bcast".into(),
            MaskSpec::Dense { broadcast: false } => "dense".into(),
            MaskSpec::And(p) => p.iter().map(MaskSpec::label).collect::<Vec<_>>().join("+"),
        }
    }
}

/// One conformance case: a shape, a mask recipe, parameters, the input dtype and layout, and the
/// seed everything random is drawn from.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Batch.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// Key/value heads.
    pub h_kv: usize,
    /// Query rows.
    pub s_q: usize,
    /// Keys.
    pub s_kv: usize,
    /// Query/key head dimension.
    pub d: usize,
    /// Value head dimension.
    pub d_v: usize,
    /// Input dtype.
    pub dtype: DType,
    /// Input layout (all three tensors).
    pub layout: Layout,
    /// Mask recipe.
    pub mask: MaskSpec,
    /// `Params::q_offset`.
    pub q_offset: Option<i64>,
    /// `Params::softcap`.
    pub softcap: Option<f32>,
    /// ALiBi slopes `2^(−8(h+1)/H)`.
    pub alibi: bool,
    /// `Params::scale`.
    pub scale: Option<f32>,
    /// Standard deviation of the q and k entries (scores then have standard deviation
    /// `scale·√D·σ²`, i.e. `σ²` at the default scale); v is uniform in `[−1, 1)`.
    pub sigma: f32,
    /// Seed of inputs, lengths, segments and dense flags.
    pub seed: u64,
}

/// The owned inputs and parameters of a [`Case`].
#[derive(Debug, Clone)]
pub struct CaseData {
    /// `[B, H, S_q, D]`.
    pub q: Tensor,
    /// `[B, H_kv, S_kv, D]`.
    pub k: Tensor,
    /// `[B, H_kv, S_kv, D_v]`.
    pub v: Tensor,
    /// The parameters, mask built.
    pub params: Params,
}

impl CaseData {
    /// Views of the three tensors.
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs { q: self.q.view(), k: self.k.view(), v: self.v.view() }
    }
}

/// A case with every option at its default: f32, contiguous, no mask, σ = 1.2.
pub fn case(b: usize, [h, h_kv]: [usize; 2], [s_q, s_kv]: [usize; 2], d: usize) -> Case {
    Case {
        b,
        h,
        h_kv,
        s_q,
        s_kv,
        d,
        d_v: d,
        dtype: DType::F32,
        layout: Layout::Bhsd,
        mask: MaskSpec::None,
        q_offset: None,
        softcap: None,
        alibi: false,
        scale: None,
        sigma: 1.2,
        seed: 0,
    }
}

impl Case {
    /// Sets `D_v`.
    pub fn dv(mut self, d_v: usize) -> Self {
        self.d_v = d_v;
        self
    }
    /// Sets the dtype.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
    /// Sets the layout.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }
    /// Sets the mask recipe.
    pub fn mask(mut self, mask: MaskSpec) -> Self {
        self.mask = mask;
        self
    }
    /// Sets `q_offset`.
    pub fn offset(mut self, q_offset: i64) -> Self {
        self.q_offset = Some(q_offset);
        self
    }
    /// Sets the softcap.
    pub fn softcap(mut self, c: f32) -> Self {
        self.softcap = Some(c);
        self
    }
    /// Turns ALiBi on.
    pub fn alibi(mut self) -> Self {
        self.alibi = true;
        self
    }
    /// Sets the score scale.
    pub fn scale(mut self, s: f32) -> Self {
        self.scale = Some(s);
        self
    }
    /// Sets σ of q and k.
    pub fn sigma(mut self, sigma: f32) -> Self {
        self.sigma = sigma;
        self
    }
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// True for decode shapes: few stacked query rows per key/value head over many keys.
    pub fn is_decode_shape(&self) -> bool {
        self.s_q * (self.h / self.h_kv) <= 16 && self.s_kv >= 256
    }

    /// Test id encoding everything that defines the case (unique within a grid).
    pub fn name(&self) -> String {
        let heads = if self.h == self.h_kv {
            format!("h{}", self.h)
        } else {
            format!("h{}x{}", self.h, self.h_kv)
        };
        let mut s = format!("b{}_{heads}_sq{}_skv{}_d{}", self.b, self.s_q, self.s_kv, self.d);
        if self.d_v != self.d {
            s += &format!("_dv{}", self.d_v);
        }
        s += &format!("_{}_{}_{}", self.mask.label(), self.dtype.name(), self.layout.name());
        if let Some(o) = self.q_offset {
            s += &format!("_off{o}");
        }
        if let Some(c) = self.softcap {
            s += &format!("_softcap{c}");
        }
        if self.alibi {
            s += "_alibi";
        }
        if let Some(x) = self.scale {
            s += &format!("_scale{x}");
        }
        s + &format!("_sigma{}_seed{}", self.sigma, self.seed)
    }

    /// Generates the inputs and parameters (deterministic in the case).
    pub fn data(&self) -> CaseData {
        let stream = |purpose| Rng::stream(self.seed, purpose);
        let q = Tensor::random(
            &mut stream(1),
            self.dtype,
            [self.b, self.h, self.s_q, self.d],
            self.layout,
            self.sigma,
        );
        let k = Tensor::random(
            &mut stream(2),
            self.dtype,
            [self.b, self.h_kv, self.s_kv, self.d],
            self.layout,
            self.sigma,
        );
        let v = Tensor::random(
            &mut stream(3),
            self.dtype,
            [self.b, self.h_kv, self.s_kv, self.d_v],
            self.layout,
            -1.0,
        );
        let mask = self.mask.build(&mut stream(4), self.b, self.h, self.s_q, self.s_kv);
        let params = Params {
            scale: self.scale,
            softcap: self.softcap,
            alibi_slopes: self.alibi.then(|| alibi_slopes(self.h)),
            mask,
            q_offset: self.q_offset,
        };
        CaseData { q, k, v, params }
    }
}

/// The ALiBi slopes of the paper for `h` heads: `2^(−8(i+1)/h)`.
pub fn alibi_slopes(h: usize) -> Vec<f32> {
    (0..h).map(|i| (-8.0 * (i + 1) as f32 / h as f32).exp2()).collect()
}

/// The grid in force: [`ci_grid`], or [`full_grid`] when `ATTN_FULL_GRID=1`.
pub fn grid() -> Vec<Case> {
    if std::env::var("ATTN_FULL_GRID").is_ok_and(|v| v == "1") {
        full_grid()
    } else {
        ci_grid()
    }
}

/// The covering set run by `cargo test` (see the module doc).
pub fn ci_grid() -> Vec<Case> {
    use DType::{BF16, F16};
    use Layout::{Bshd, Padded, StridedD};
    use MaskSpec as M;
    let and = |a: MaskSpec, b: MaskSpec| M::And(vec![a, b]);
    let general = vec![
        case(1, [1, 1], [1, 1], 32),
        case(1, [4, 4], [1, 1], 64).mask(M::Causal),
        case(2, [8, 2], [1, 1], 128).mask(M::KeyPadding),
        case(2, [4, 4], [63, 63], 64).mask(M::Causal),
        case(1, [8, 2], [65, 65], 80).mask(M::Causal).layout(Bshd),
        case(2, [8, 1], [100, 100], 128).mask(M::SlidingWindow(17)).dtype(F16),
        case(1, [4, 4], [65, 100], 64).mask(M::Causal).layout(Padded),
        case(2, [8, 2], [65, 100], 128).mask(M::Causal).dtype(BF16),
        case(1, [8, 1], [100, 63], 64).mask(M::Causal),
        case(1, [4, 4], [100, 63], 32).layout(StridedD),
        case(1, [4, 4], [100, 63], 256).dv(32).mask(M::Causal),
        case(2, [4, 4], [63, 63], 256).mask(M::Causal),
        case(1, [8, 2], [100, 100], 256).dv(64),
        case(1, [4, 4], [63, 65], 80).dv(128).mask(M::PrefixLm(20)),
        case(1, [8, 2], [65, 65], 64).mask(M::Window { left: Some(5), right: Some(3) }),
        case(2, [4, 4], [100, 100], 64).mask(M::Window { left: None, right: Some(2) }),
        case(1, [1, 1], [63, 100], 128).mask(M::Window { left: Some(10), right: None }).offset(20),
        case(2, [8, 2], [65, 100], 64).mask(M::KeyPadding),
        case(2, [1, 1], [100, 100], 32).mask(M::PrefixLm(10)).dtype(F16),
        case(1, [4, 4], [100, 100], 64).mask(M::BlockDiagonal { causal: true }),
        case(2, [8, 1], [65, 63], 80).mask(M::BlockDiagonal { causal: false }).dtype(BF16),
        case(2, [4, 4], [63, 100], 64).mask(M::Dense { broadcast: false }),
        case(1, [8, 1], [65, 100], 80).mask(M::Dense { broadcast: true }).dtype(F16),
        case(1, [8, 2], [100, 100], 128).mask(and(M::Causal, M::KeyPadding)),
        case(2, [8, 2], [100, 100], 64)
            .mask(and(M::SlidingWindow(33), M::Dense { broadcast: true }))
            .layout(Padded),
        case(2, [4, 4], [65, 65], 32).mask(and(M::PrefixLm(7), M::KeyPadding)).layout(StridedD),
        case(1, [4, 4], [65, 65], 64).mask(M::Causal).offset(10),
        case(2, [8, 1], [63, 100], 32).mask(M::Causal).offset(-20),
        case(1, [4, 4], [100, 100], 64).mask(M::Causal).softcap(5.0).sigma(6.0),
        case(1, [8, 2], [65, 100], 64).mask(M::Causal).alibi(),
        case(2, [4, 4], [63, 63], 128).softcap(30.0).alibi().dtype(F16).layout(Bshd),
        case(1, [4, 4], [100, 100], 64).mask(M::Causal).sigma(6.0),
        case(1, [1, 1], [65, 65], 64).scale(0.5).sigma(3.0).layout(StridedD),
        case(2, [8, 2], [63, 65], 32).mask(M::Window { left: Some(0), right: Some(0) }).dtype(BF16),
        // Square S = 1000: few, small heads.
        case(1, [1, 1], [1000, 1000], 64).mask(M::Causal),
        case(1, [1, 1], [1000, 1000], 32)
            .mask(M::Window { left: Some(64), right: Some(64) })
            .dtype(BF16)
            .layout(Bshd),
    ];
    // Decode shapes: S_q·g ≤ 16 over S_kv ≥ 256 (split-KV paths), every mask kind and dtype.
    let decode = vec![
        case(1, [1, 1], [1, 1000], 64),
        case(2, [8, 2], [1, 1000], 128).mask(M::Causal).layout(Bshd),
        case(2, [8, 1], [1, 1000], 80).mask(M::KeyPadding).dtype(F16),
        case(1, [4, 4], [2, 1000], 256).dv(128).mask(M::SlidingWindow(300)).dtype(BF16),
        case(2, [8, 2], [2, 1000], 64).mask(M::Dense { broadcast: false }),
        case(1, [4, 4], [1, 1000], 32).softcap(5.0).alibi().sigma(3.0),
        case(2, [8, 1], [2, 1000], 64).mask(and(M::Causal, M::KeyPadding)),
        case(1, [1, 1], [16, 1000], 128).mask(M::BlockDiagonal { causal: true }),
        case(1, [8, 2], [1, 300], 64).mask(M::PrefixLm(50)).layout(StridedD),
        case(1, [8, 1], [1, 1000], 64).mask(M::Window { left: Some(200), right: None }).offset(500),
        case(1, [4, 4], [4, 1000], 64).mask(M::Causal).offset(-3),
        case(2, [4, 4], [1, 1000], 128).sigma(6.0).layout(Padded),
        case(1, [8, 2], [1, 1000], 64).mask(M::Dense { broadcast: true }).dtype(F16),
        case(1, [8, 2], [2, 700], 80).mask(M::BlockDiagonal { causal: false }),
        case(2, [1, 1], [16, 1000], 32).mask(M::Causal).dtype(BF16),
        case(1, [1, 1], [1, 2100], 64).mask(M::KeyPadding).alibi(),
    ];
    // Tile and chunk edges of today's kernels (sdpa-flash: 96 stacked rows × 128 keys; sdpa-decode:
    // 64-key steps, ≥ 512-key chunks), and enough heads for sdpa-flash to pack K/V in several
    // groups (64 MiB each; at D = 256 and 1000 keys a head packs 2 MiB, so 2 × 20 heads make a
    // full group of 32 that spans both batch elements and a partial group of 8): cheap, and
    // where off-by-one errors live.
    let edges = vec![
        case(1, [1, 1], [96, 128], 64).mask(M::Causal),
        case(1, [2, 1], [48, 129], 32).mask(M::SlidingWindow(40)),
        case(1, [3, 1], [65, 257], 80).mask(M::KeyPadding).dtype(F16),
        case(2, [1, 1], [97, 256], 64).mask(M::Dense { broadcast: false }).layout(Bshd),
        case(1, [1, 1], [1, 512], 64).mask(M::KeyPadding),
        case(1, [1, 1], [1, 513], 64).mask(M::Causal).offset(511),
        case(1, [8, 1], [2, 1537], 32).mask(M::Window { left: Some(600), right: Some(3) }),
        case(2, [20, 20], [1, 1000], 256).mask(M::Causal),
    ];
    general
        .into_iter()
        .chain(decode)
        .chain(edges)
        .enumerate()
        .map(|(i, c)| c.seed(1000 + i as u64))
        .collect()
}

/// Every mask recipe with its `q_offset`, for `S_kv` keys.
pub fn all_masks(s_kv: usize) -> Vec<(MaskSpec, Option<i64>)> {
    use MaskSpec as M;
    vec![
        (M::None, None),
        (M::Causal, None),
        (M::Causal, Some(7)),
        (M::Causal, Some(-5)),
        (M::SlidingWindow(17), None),
        (M::Window { left: Some(5), right: Some(3) }, None),
        (M::Window { left: None, right: Some(2) }, None),
        (M::Window { left: Some(10), right: None }, Some(3)),
        (M::KeyPadding, None),
        (M::PrefixLm(s_kv / 3), None),
        (M::BlockDiagonal { causal: true }, None),
        (M::BlockDiagonal { causal: false }, None),
        (M::Dense { broadcast: false }, None),
        (M::Dense { broadcast: true }, None),
        (M::And(vec![M::Causal, M::KeyPadding]), None),
        (M::And(vec![M::SlidingWindow(33), M::Dense { broadcast: false }]), None),
    ]
}

/// The full cross product: B × heads × (S_q, S_kv) × D × masks, with dtype, layout, `D_v`,
/// softcap and ALiBi rotating along it.
pub fn full_grid() -> Vec<Case> {
    let heads = [[1, 1], [4, 4], [8, 2], [8, 1]];
    let lens = [
        [1, 1],
        [63, 63],
        [65, 65],
        [100, 100],
        [1000, 1000],
        [65, 100],
        [1, 1000],
        [100, 63],
        [2, 1000],
        [16, 1000],
    ];
    let dims = [32, 64, 80, 128, 256];
    let dtypes = [DType::F32, DType::F16, DType::BF16];
    let mut out = Vec::new();
    for b in [1, 2] {
        for hh in heads {
            for ss in lens {
                for d in dims {
                    for (mask, off) in all_masks(ss[1]) {
                        let i = out.len();
                        let mut c = case(b, hh, ss, d)
                            .mask(mask)
                            .dtype(dtypes[i % 3])
                            .layout(Layout::ALL[(i / 3) % 4])
                            .seed(i as u64);
                        c.q_offset = off;
                        if i % 5 == 0 {
                            c.d_v = dims[(i / 5) % 5];
                        }
                        match i % 7 {
                            0 => c = c.softcap(5.0).sigma(3.0),
                            1 => c = c.alibi(),
                            2 => c = c.sigma(6.0),
                            _ => {}
                        }
                        out.push(c);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use attn::MaskKind;
    use std::collections::HashSet;

    fn kinds(c: &Case) -> Vec<MaskKind> {
        c.data().params.mask.kinds()
    }

    /// Some case makes sdpa-flash pack K/V in more than one group, the last one partial
    /// (f32 K/V padded to 128-key tiles and 16-lane D_v, at most `PACK_BUDGET` bytes a group).
    #[test]
    fn ci_grid_packs_flash_kv_in_several_groups() {
        let per_head =
            |c: &Case| 4 * c.s_kv.next_multiple_of(128) * (c.d + c.d_v.next_multiple_of(16));
        let budget = attn::methods::sdpa::flash::PACK_BUDGET;
        assert!(ci_grid().iter().any(|c| {
            let per_group = budget / per_head(c);
            let heads = c.b * c.h_kv;
            heads > per_group && heads % per_group != 0
        }));
    }

    #[test]
    fn ci_grid_covers_every_axis() {
        let g = ci_grid();
        let names: HashSet<String> = g.iter().map(Case::name).collect();
        assert_eq!(names.len(), g.len(), "case names must be unique");
        for b in [1, 2] {
            assert!(g.iter().any(|c| c.b == b), "B = {b}");
        }
        for hh in [[1, 1], [4, 4], [8, 2], [8, 1]] {
            assert!(g.iter().any(|c| [c.h, c.h_kv] == hh), "heads {hh:?}");
        }
        for s in [1, 63, 65, 100, 1000] {
            assert!(g.iter().any(|c| c.s_q == s && c.s_kv == s), "S = {s}");
        }
        for ss in [[65, 100], [1, 1000], [100, 63]] {
            assert!(g.iter().any(|c| [c.s_q, c.s_kv] == ss), "S_q/S_kv {ss:?}");
        }
        for d in [32, 64, 80, 128, 256] {
            assert!(g.iter().any(|c| c.d == d), "D = {d}");
        }
        assert!(g.iter().filter(|c| c.d_v != c.d).count() >= 3, "D_v ≠ D");
        for k in MaskKind::ALL {
            assert!(g.iter().any(|c| kinds(c).contains(&k)), "mask kind {k:?}");
            assert!(
                g.iter().any(|c| c.is_decode_shape() && kinds(c).contains(&k)),
                "decode shape × {k:?}"
            );
        }
        assert!(g.iter().any(|c| matches!(c.mask, MaskSpec::And(_))));
        let causal = |c: &Case| c.mask == MaskSpec::Causal;
        assert!(g.iter().any(|c| causal(c) && c.q_offset.is_none()));
        assert!(g.iter().any(|c| causal(c) && c.q_offset.is_some_and(|o| o > 0)));
        assert!(g.iter().any(|c| causal(c) && c.q_offset.is_some_and(|o| o < 0)));
        assert!(g.iter().any(|c| matches!(c.mask, MaskSpec::Window { left: None, .. })));
        assert!(g.iter().any(|c| matches!(c.mask, MaskSpec::Window { right: None, .. })));
        assert!(g.iter().any(|c| c.mask == MaskSpec::KeyPadding && c.b == 2), "length-0 row");
        for causal in [true, false] {
            assert!(g.iter().any(|c| c.mask == MaskSpec::BlockDiagonal { causal }));
        }
        for broadcast in [true, false] {
            assert!(g.iter().any(|c| kinds(c).contains(&MaskKind::Dense)
                && format!("{:?}", c.mask).contains(&format!("broadcast: {broadcast}"))));
        }
        assert!(g.iter().any(|c| c.softcap.is_some()) && g.iter().any(|c| c.alibi));
        assert!(g.iter().any(|c| c.scale.is_some()) && g.iter().any(|c| c.sigma >= 6.0));
        for dt in [DType::F32, DType::F16, DType::BF16] {
            assert!(g.iter().any(|c| c.dtype == dt && !c.is_decode_shape()), "{dt} general");
            assert!(g.iter().any(|c| c.dtype == dt && c.is_decode_shape()), "{dt} decode");
        }
        for l in Layout::ALL {
            assert!(g.iter().any(|c| c.layout == l), "{l:?}");
        }
        // Pairs that matter.
        assert!(g.iter().any(|c| c.h != c.h_kv && causal(c) && c.s_q != c.s_kv), "GQA×causal×S≠");
        assert!(g.iter().any(|c| c.d == 256 && causal(c)), "D 256 × causal");
        assert!(g.iter().any(|c| c.s_q > c.s_kv && causal(c)), "rows before the first key");
        // Few big square cases.
        assert!(g.iter().filter(|c| c.s_q * c.s_kv >= 1_000_000).count() <= 2);
    }

    #[test]
    fn full_grid_is_the_cross_product() {
        let g = full_grid();
        assert_eq!(g.len(), 2 * 4 * 10 * 5 * all_masks(100).len());
        assert_eq!(g.iter().map(Case::name).collect::<HashSet<_>>().len(), g.len());
    }

    #[test]
    fn cases_are_deterministic_and_valid() {
        for c in ci_grid() {
            let (x, y) = (c.data(), c.data());
            // (Tensors hold NaN in layout gaps, so compare the viewed values.)
            assert!(x.q.to_f64() == y.q.to_f64() && x.v.to_f64() == y.v.to_f64(), "{}", c.name());
            assert!(x.params == y.params, "{}", c.name());
            let inputs = x.inputs();
            let p = attn::Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
            x.params.resolve(&p).unwrap_or_else(|e| panic!("{}: {e}", c.name()));
        }
    }
}
