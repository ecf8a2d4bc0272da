//! HyperAttention (spec §5): heavy entries found by a sorted angular LSH (exact attention on the
//! diagonal blocks of the hash-sorted matrix), the rest of each row estimated from uniformly
//! sampled key columns, merged by log-sum-exp; causal by recursion on halves down to exact
//! attention below `min_seq_len`. See `README.md` in this folder.
//!
//! - [`plan`]: the support (hash codes, sorting, blocks, samples, recursion) — shared by both
//!   implementations.
//! - [`reference`](mod@reference): attention over that support, row by row in f64.
//! - fast path ([`Hyper`] under [`crate::methods::pattern::Fast`]): every piece of the support as
//!   64-row × 256-key tiles (faer GEMMs in one thread per head, vectorised online softmax), merged
//!   into the output by log-sum-exp; heads in parallel.

pub mod plan;
pub mod reference;

use crate::dispatch::{parse_param, Inputs, OutputMut, ParamInfo, Reason, Stats};
use crate::error::{Error, Result};
use crate::mask::{Mask, MaskKind};
use crate::methods::pattern::{for_each_head, is_causal, positive, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::primitives::merge::merge_weights;
use crate::primitives::simd::{dispatch, exp2_scalar, max_of, Kernel, Level, Simd};
use crate::problem::Problem;
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef};
use plan::{Head, Piece};

/// `hyper`: sortLSH heavy blocks + sampled columns (HyperAttention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hyper {
    /// Hyperplanes of the angular LSH `r` (`2^r` buckets).
    pub projections: usize,
    /// Keys per heavy block `b`.
    pub block: usize,
    /// Sampled key columns `m` per call (0: heavy blocks only).
    pub samples: usize,
    /// Below this many rows (causal: keys) attention is exact.
    pub min_seq_len: usize,
    /// Seed of the hash projection and the samples.
    pub seed: u64,
}

impl Hyper {
    /// The authors' defaults (README and benchmark script of the paper's code): 7 projections
    /// (128 buckets), blocks of 256, 256 samples, exact below 4096, seed 0.
    pub const DEFAULT: Hyper =
        Hyper { projections: 7, block: 256, samples: 256, min_seq_len: 4096, seed: 0 };

    /// The sort keys of `n` rows of head `hh` of `t` (unscaled: the sign of `x·w` is all
    /// that matters).
    fn sort_keys(
        &self,
        w: &[f32],
        t: &crate::tensor::TensorRef,
        b: usize,
        hh: usize,
        n: usize,
        d: usize,
    ) -> Vec<u32> {
        let mut x = vec![0.0f32; d];
        (0..n)
            .map(|i| {
                t.read_row(b, hh, i, 1.0, &mut x);
                plan::sort_key(w, &x)
            })
            .collect()
    }

    /// The support of `(b, h)`.
    pub(crate) fn plan_head(
        &self,
        w: &[f32],
        p: &Problem,
        inputs: &Inputs,
        causal: bool,
        b: usize,
        h: usize,
    ) -> Vec<Piece> {
        let qk = self.sort_keys(w, &inputs.q, b, h, p.s_q, p.d);
        let kk = self.sort_keys(w, &inputs.k, b, h / p.group(), p.s_kv, p.d);
        Head { cfg: self, q_keys: &qk, k_keys: &kk, b, h }.plan(causal)
    }
}

impl Default for Hyper {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Query rows per tile.
const RT: usize = 64;
/// Keys per tile.
const KT: usize = 256;

/// Tile buffers of one worker.
struct Work {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    acc: Vec<f32>,
    m: [f32; RT],
    l: [f32; RT],
    alpha: [f32; RT],
}

impl Work {
    fn new(d: usize, dv: usize) -> Self {
        Self {
            q: vec![0.0; RT * d],
            k: vec![0.0; KT * d],
            v: vec![0.0; KT * dv],
            s: vec![0.0; RT * KT],
            acc: vec![0.0; RT * dv],
            m: [0.0; RT],
            l: [0.0; RT],
            alpha: [0.0; RT],
        }
    }

    fn bytes(d: usize, dv: usize) -> usize {
        4 * (RT * d + KT * d + KT * dv + RT * KT + RT * dv + 3 * RT)
    }
}

/// One online-softmax step on a score tile (`nr × nk`, row stride `nk`): each row's running max
/// `m` and sum `l` take the tile in, the tile becomes `exp(s − m_new)` and `alpha` the factor the
/// row's accumulator must be multiplied by. A row with no finite score so far is left at zero.
struct Online<'a> {
    s: &'a mut [f32],
    nk: usize,
    m: &'a mut [f32],
    l: &'a mut [f32],
    alpha: &'a mut [f32],
}

impl Kernel for Online<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        let nk = self.nk;
        let split = nk - nk % S::LANES;
        for (r, row) in self.s.chunks_exact_mut(nk).enumerate() {
            // SAFETY: `dispatch` runs this at a level the CPU has.
            let mx = unsafe { max_of::<S>(row) };
            let m_new = self.m[r].max(mx);
            if m_new == f32::NEG_INFINITY {
                row.fill(0.0);
                self.alpha[r] = 1.0;
                continue;
            }
            let a = if self.m[r] == f32::NEG_INFINITY { 0.0 } else { (self.m[r] - m_new).exp() };
            let mut sum = 0.0f32;
            // SAFETY: `dispatch` runs this at a level the CPU has; every pointer is in `row`.
            unsafe {
                let (sub, l2e) = (S::splat(m_new), S::splat(LOG2E));
                let mut vs = S::splat(0.0);
                for t in (0..split).step_by(S::LANES) {
                    let p = row.as_mut_ptr().add(t);
                    let e = S::exp2(S::mul(S::sub(S::load(p), sub), l2e));
                    S::store(p, e);
                    vs = S::add(vs, e);
                }
                sum += S::reduce_sum(vs);
            }
            for x in &mut row[split..] {
                *x = exp2_scalar((*x - m_new) * LOG2E);
                sum += *x;
            }
            self.l[r] = self.l[r] * a + sum;
            self.m[r] = m_new;
            self.alpha[r] = a;
        }
    }
}

/// What every tile of one head reads.
struct Ctx<'a> {
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    scale: f32,
    b: usize,
    h: usize,
    level: Level,
}

impl Ctx<'_> {
    /// Attention of `rows` over `keys` (causal: key index ≤ row index, keys ascending), each key
    /// weighted by `exp(ln_weight)`, merged by log-sum-exp into `o`/`lse` (rows of the head).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        w: &mut Work,
        rows: &[u32],
        keys: &[u32],
        causal: bool,
        ln_weight: f32,
        o: &mut [f32],
        lse: &mut [f32],
    ) {
        let (d, dv) = (self.p.d, self.p.d_v);
        let hk = self.h / self.p.group();
        for rt in rows.chunks(RT) {
            let nr = rt.len();
            for (r, &i) in rt.iter().enumerate() {
                self.inputs.q.read_row(
                    self.b,
                    self.h,
                    i as usize,
                    self.scale,
                    &mut w.q[r * d..(r + 1) * d],
                );
            }
            let top = rt.iter().copied().max().unwrap_or(0);
            w.m[..nr].fill(f32::NEG_INFINITY);
            w.l[..nr].fill(0.0);
            w.acc[..nr * dv].fill(0.0);
            for kt in keys.chunks(KT) {
                if causal && kt[0] > top {
                    break;
                }
                let nk = kt.len();
                for (t, &j) in kt.iter().enumerate() {
                    self.inputs.k.read_row(
                        self.b,
                        hk,
                        j as usize,
                        1.0,
                        &mut w.k[t * d..(t + 1) * d],
                    );
                    self.inputs.v.read_row(
                        self.b,
                        hk,
                        j as usize,
                        1.0,
                        &mut w.v[t * dv..(t + 1) * dv],
                    );
                }
                {
                    let dst = MatMut::from_row_major_slice_mut(&mut w.s[..nr * nk], nr, nk);
                    let lhs = MatRef::from_row_major_slice(&w.q[..nr * d], nr, d);
                    let rhs = MatRef::from_row_major_slice(&w.k[..nk * d], nk, d).transpose();
                    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, faer::Par::Seq);
                }
                if causal && kt[nk - 1] > rt.iter().copied().min().unwrap_or(0) {
                    for (r, &i) in rt.iter().enumerate() {
                        for (t, &j) in kt.iter().enumerate() {
                            if j > i {
                                w.s[r * nk + t] = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                dispatch(
                    self.level,
                    Online {
                        s: &mut w.s[..nr * nk],
                        nk,
                        m: &mut w.m[..nr],
                        l: &mut w.l[..nr],
                        alpha: &mut w.alpha[..nr],
                    },
                );
                for r in 0..nr {
                    let a = w.alpha[r];
                    if a != 1.0 {
                        w.acc[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= a);
                    }
                }
                let dst = MatMut::from_row_major_slice_mut(&mut w.acc[..nr * dv], nr, dv);
                let lhs = MatRef::from_row_major_slice(&w.s[..nr * nk], nr, nk);
                let rhs = MatRef::from_row_major_slice(&w.v[..nk * dv], nk, dv);
                matmul(dst, Accum::Add, lhs, rhs, 1.0f32, faer::Par::Seq);
            }
            for (r, &i) in rt.iter().enumerate() {
                if w.l[r].is_nan() || w.l[r] <= 0.0 {
                    continue; // no key: nothing to merge
                }
                let i = i as usize;
                let piece_lse = w.m[r] + w.l[r].ln() + ln_weight;
                let (a, c, new) = merge_weights(lse[i], piece_lse);
                let inv = c / w.l[r];
                for (x, y) in o[i * dv..(i + 1) * dv].iter_mut().zip(&w.acc[r * dv..(r + 1) * dv]) {
                    *x = if a == 0.0 { y * inv } else { a * *x + y * inv };
                }
                lse[i] = new;
            }
        }
    }
}

impl Hyper {
    fn fast(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<u64> {
        if p.b * p.h == 0 || p.s_q == 0 {
            return Ok(0);
        }
        out.o.fill(0.0);
        out.lse.fill(f32::NEG_INFINITY);
        let causal = is_causal(&params.mask);
        let w = plan::projection(self.seed, self.projections, p.d);
        let level = Level::current();
        let work = || Work::new(p.d, p.d_v);
        Ok(for_each_head(p, par, out, work, |work, b, h, o, lse| {
            let ctx = Ctx { p, inputs, scale: params.scale, b, h, level };
            let mut n = 0u64;
            for piece in self.plan_head(&w, p, inputs, causal, b, h) {
                n += piece.pairs();
                match piece {
                    Piece::Causal { lo, hi } => {
                        let idx: Vec<u32> = (lo as u32..hi as u32).collect();
                        ctx.attend(work, &idx, &idx, true, 0.0, o, lse);
                    }
                    Piece::Dense { rows, keys } => {
                        let r: Vec<u32> = (rows.0 as u32..rows.1 as u32).collect();
                        let k: Vec<u32> = (keys.0 as u32..keys.1 as u32).collect();
                        ctx.attend(work, &r, &k, false, 0.0, o, lse);
                    }
                    Piece::Gather { rows, keys, ln_weight } => {
                        ctx.attend(work, &rows, &keys, false, ln_weight, o, lse);
                    }
                }
            }
            n
        }))
    }
}

impl SparseConfig for Hyper {
    const NAME: &'static str = "hyper";
    const REFERENCE_NAME: &'static str = "hyper-reference";
    const FAMILY: &'static str = "hyper";
    const DESCRIPTION: &'static str =
        "HyperAttention: sortLSH heavy blocks + sampled columns, LSE-merged; causal by recursion on halves (exact below min_seq_len)";
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "projections",
                value: self.projections.to_string(),
                doc: "angular-LSH hyperplanes r, 2^r buckets (default 7)",
            },
            ParamInfo {
                name: "block",
                value: self.block.to_string(),
                doc: "keys per heavy block (default 256)",
            },
            ParamInfo {
                name: "samples",
                value: self.samples.to_string(),
                doc: "uniformly sampled key columns per call, 0 = blocks only (default 256)",
            },
            ParamInfo {
                name: "min_seq_len",
                value: self.min_seq_len.to_string(),
                doc: "exact attention below this many rows (causal: keys) (default 4096)",
            },
            ParamInfo {
                name: "seed",
                value: self.seed.to_string(),
                doc: "seed of the hash projection and the samples",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "projections" => {
                let r: usize = positive(Self::NAME, key, value)?;
                if r > 31 {
                    return Err(Error::BadParam {
                        method: Self::NAME.into(),
                        key: key.into(),
                        value: value.into(),
                        detail: "at most 31 hyperplanes".into(),
                    });
                }
                self.projections = r;
            }
            "block" => self.block = positive(Self::NAME, key, value)?,
            "samples" => self.samples = parse_param(Self::NAME, key, value)?,
            "min_seq_len" => self.min_seq_len = parse_param(Self::NAME, key, value)?,
            "seed" => self.seed = parse_param(Self::NAME, key, value)?,
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
        let square = p.s_q == p.s_kv && params.q_offset.unwrap_or(0) == 0;
        if matches!(params.mask, Mask::Causal) && !square {
            return vec![Reason::Other(
                "hyper: the causal recursion needs square self-attention (S_q = S_kv, q_offset 0)"
                    .into(),
            )];
        }
        Vec::new()
    }

    fn forward(
        &self,
        exec: Exec,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        let pairs = match exec {
            Exec::Reference => reference::forward(self, p, inputs, params, out),
            Exec::Fast => self.fast(p, inputs, params, par, out)?,
        };
        Ok(Stats::pairs(pairs))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        // Sort keys, sorted index lists and the pieces' row/key lists: O(S) words per worker.
        let lists = 4 * 6 * (p.s_q + p.s_kv) + 4 * self.projections * p.d;
        match exec {
            Exec::Reference => {
                lists
                    + 8 * (p.s_kv + p.d + p.d_v)
                    + 16 * p.s_q * (p.s_kv.min(self.block + self.samples + self.min_seq_len))
            }
            Exec::Fast => par.threads().min(p.b * p.h).max(1) * (Work::bytes(p.d, p.d_v) + lists),
        }
    }
}
