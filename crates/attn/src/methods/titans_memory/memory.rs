//! The memory network `M` (an MLP whose weights are the state), its decode state, and the rules
//! the three forms share: which memory a query row reads, and the seeded initial weights.
//!
//! Weights are one flat `[P_M]` vector: layer `l` is `W_l: [w_{l+1}, w_l]` row-major (out × in)
//! at [`Shape::offset`]`(l)`, with widths `w_0 = D` (keys), `w_1 … w_{L−1} = hidden`,
//! `w_L = D_v` (values). `M(x) = W_{L−1} σ(… σ(W_0 x))`: no bias, σ between layers.

use crate::primitives::rng::{purpose, Key, Stream};
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};

/// The non-linearity between memory layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// `x · Φ(x)` in its tanh form `½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))`.
    Gelu,
    /// `x · sigmoid(x)`.
    Silu,
}

const GELU_C: f64 = 0.797_884_560_802_865_4; // √(2/π)
const GELU_A: f64 = 0.044_715;

impl Act {
    /// `(σ(x), σ'(x))` in f64.
    #[inline]
    pub fn eval_f64(self, x: f64) -> (f64, f64) {
        match self {
            Act::Gelu => {
                let t = (GELU_C * (x + GELU_A * x * x * x)).tanh();
                let d = 0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x);
                (0.5 * x * (1.0 + t), d)
            }
            Act::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                (x * s, s * (1.0 + x * (1.0 - s)))
            }
        }
    }

    /// `(σ(x), σ'(x))` in f32.
    #[inline]
    pub fn eval(self, x: f32) -> (f32, f32) {
        match self {
            Act::Gelu => {
                let (c, a) = (GELU_C as f32, GELU_A as f32);
                let t = (c * (x + a * x * x * x)).tanh();
                let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * a * x * x);
                (0.5 * x * (1.0 + t), d)
            }
            Act::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                (x * s, s * (1.0 + x * (1.0 - s)))
            }
        }
    }

    /// The name used in method specs (`gelu`, `silu`).
    pub fn name(self) -> &'static str {
        match self {
            Act::Gelu => "gelu",
            Act::Silu => "silu",
        }
    }

    /// Parses [`Act::name`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gelu" => Some(Act::Gelu),
            "silu" | "swish" => Some(Act::Silu),
            _ => None,
        }
    }
}

/// `σ` in place over `z`, and `σ'` of the first `d.len()` entries into `d` (`d.len() ≤ z.len()`),
/// vectorised at `level` (the chunked form's activations: with libm's `tanhf` they were half of
/// its time). Both activations go through one exponential, [`Simd::exp2`] (relative error
/// ≤ 3e-7), with `s = 1/(1 + e^{2u})`, `u = √(2/π)(x + 0.044715 x³)`:
/// GELU `= x (1 − s)` and `σ' = (1 − s)(1 + 2 x s u')` (from `½(1 + tanh u) = 1 − s`,
/// `1 − tanh² u = 4 s (1 − s)`); SiLU with `s = 1/(1 + e^{−x})`: `x s` and `s (1 + x (1 − s))`.
/// The argument of `2^·` is clamped to `±126` (the exponential's normal range), where `s` is
/// within 1.2e-38 of 0 or 1: no overflow, and a NaN input stays NaN in the output.
pub(crate) fn act_rows(level: Level, act: Act, z: &mut [f32], d: &mut [f32]) {
    dispatch(level, ActRows { act, z, d });
}

struct ActRows<'a> {
    act: Act,
    z: &'a mut [f32],
    d: &'a mut [f32],
}

impl Kernel for ActRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let (nd, n) = (self.d.len(), self.z.len());
        debug_assert!(nd <= n);
        // SAFETY: `dispatch` runs this at a level the CPU has; every pointer is an in-bounds
        // block of LANES elements of `z` or `d` (the tails go through the one-lane level).
        unsafe {
            let z = self.z.as_mut_ptr();
            let d = self.d.as_mut_ptr();
            let mut i = 0;
            while i + S::LANES <= nd {
                let (y, g) = act_lanes::<S>(self.act, S::load(z.add(i)));
                S::store(z.add(i), y);
                S::store(d.add(i), g);
                i += S::LANES;
            }
            while i < nd {
                let (y, g) = act_lanes::<crate::primitives::simd::Scalar>(self.act, *z.add(i));
                *z.add(i) = y;
                *d.add(i) = g;
                i += 1;
            }
            while i + S::LANES <= n {
                let (y, _) = act_lanes::<S>(self.act, S::load(z.add(i)));
                S::store(z.add(i), y);
                i += S::LANES;
            }
            while i < n {
                *z.add(i) = act_lanes::<crate::primitives::simd::Scalar>(self.act, *z.add(i)).0;
                i += 1;
            }
        }
    }
}

/// `(σ(x), σ'(x))` on one register (see [`act_rows`]).
///
/// # Safety
/// The CPU supports `S`'s level.
#[inline(always)]
unsafe fn act_lanes<S: Simd>(act: Act, x: S::V) -> (S::V, S::V) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // SAFETY: the caller guarantees the level.
    unsafe {
        let one = S::splat(1.0);
        let (zero, lo) = (S::splat(0.0), S::splat(-126.0));
        // min(max(a, −126), 126) as max(−max(−a, −126), −126): the Simd trait has no min.
        let clamp = |a: S::V| S::max(S::sub(zero, S::max(S::sub(zero, a), lo)), lo);
        match act {
            Act::Gelu => {
                let (c, a) = (GELU_C as f32, GELU_A as f32);
                let x2 = S::mul(x, x);
                // u' = c (1 + 3a x²), 2u log2(e) = 2c log2(e) · x (1 + a x²)
                let du = S::fma(S::splat(3.0 * a * c), x2, S::splat(c));
                let arg =
                    S::mul(S::mul(S::splat(2.0 * c * LOG2E), x), S::fma(S::splat(a), x2, one));
                let s = S::div(one, S::add(one, S::exp2(clamp(arg))));
                let h = S::sub(one, s);
                let two_xs = S::mul(S::mul(S::splat(2.0), x), s);
                (S::mul(x, h), S::mul(h, S::fma(two_xs, du, one)))
            }
            Act::Silu => {
                let arg = S::mul(S::splat(-LOG2E), x);
                let s = S::div(one, S::add(one, S::exp2(clamp(arg))));
                let g = S::mul(s, S::fma(x, S::sub(one, s), one));
                (S::mul(x, s), g)
            }
        }
    }
}

/// The memory MLP's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// `D`: key/query width (the memory's input).
    pub dk: usize,
    /// `D_v`: value width (the memory's output).
    pub dv: usize,
    /// Width of the hidden layers (unused when `layers = 1`).
    pub hidden: usize,
    /// `L_M ≥ 1`: number of weight matrices (`1` = linear memory `M ∈ R^{D_v×D}`).
    pub layers: usize,
}

impl Shape {
    /// `w_l`, `l ∈ 0..=L`.
    #[inline]
    pub fn width(&self, l: usize) -> usize {
        if l == 0 {
            self.dk
        } else if l == self.layers {
            self.dv
        } else {
            self.hidden
        }
    }

    /// Start of `W_l` in the flat weights.
    pub fn offset(&self, l: usize) -> usize {
        (0..l).map(|i| self.width(i + 1) * self.width(i)).sum()
    }

    /// `P_M`: number of weights.
    pub fn params(&self) -> usize {
        self.offset(self.layers)
    }

    /// The widest layer (buffer sizing).
    pub fn max_width(&self) -> usize {
        (0..=self.layers).map(|l| self.width(l)).max().unwrap_or(0)
    }
}

/// The memory's initial weights for `seed`: every layer but the last Xavier-uniform
/// (`U(−a, a)`, `a = √(6 / (fan_in + fan_out))`) from the counter-based stream
/// `(seed, layer l, head 0, MEMORY_INIT)`, the last layer zero, so the empty memory retrieves
/// `0` (and a linear memory starts at `M = 0`). One initial memory for every head.
pub fn init(shape: &Shape, seed: u64) -> Vec<f32> {
    let mut w = vec![0.0f32; shape.params()];
    for l in 0..shape.layers - 1 {
        let (fo, fi) = (shape.width(l + 1), shape.width(l));
        let a = (6.0 / (fi + fo) as f64).sqrt();
        let rng =
            Stream::new(Key { seed, layer: l as u64, head: 0, purpose: purpose::MEMORY_INIT });
        let off = shape.offset(l);
        for (i, x) in w[off..off + fo * fi].iter_mut().enumerate() {
            *x = ((2.0 * rng.uniform_at(i as u64) - 1.0) * a) as f32;
        }
    }
    w
}

/// The memory of one head between calls (decode state). Invariant: `filled = 0` ⇒
/// `start = mem`.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Weights at the start of the current chunk (`M_0`): every gradient of the chunk is taken
    /// here, and the chunk's queries read it.
    pub start: Vec<f32>,
    /// Weights after the last stored token (`M_t`).
    pub mem: Vec<f32>,
    /// Momentum ("past surprise") after the last stored token (`S_t`).
    pub mom: Vec<f32>,
    /// Tokens of the current chunk already stored (`0 ..= chunk`; `chunk` = the chunk is complete
    /// and the next token starts a new one).
    pub filled: usize,
    /// Tokens stored since the state was created.
    pub keys: u64,
}

impl State {
    /// A fresh memory at `init`, no momentum.
    pub fn new(init: &[f32]) -> Self {
        Self {
            start: init.to_vec(),
            mem: init.to_vec(),
            mom: vec![0.0; init.len()],
            filled: 0,
            keys: 0,
        }
    }

    /// The weights a query reads now: the memory before the chunk that holds the next key
    /// (`mem` when the current chunk is complete, else `start`).
    pub fn readable(&self, chunk: usize) -> &[f32] {
        if self.filled >= chunk {
            &self.mem
        } else {
            &self.start
        }
    }
}

/// The weights and momentum of a [`State`] in f64 for the length of one call: the fast forms add
/// every update to these and round to the f32 state as they go (`mem`) and at the end (`mom`).
/// Summed in f32, the ~`T` rounding errors of `M ← (1 − α) M + S` and `S ← η S + u` random-walk
/// to ~1e-5 of the weights over 4096 tokens; in f64 the f32 forms stay within ~3e-6 of the f64
/// reference there (the rest: the f32 gradients).
pub(crate) struct Acc64 {
    pub(crate) mem: Vec<f64>,
    pub(crate) mom: Vec<f64>,
}

impl Acc64 {
    /// The state's weights and momentum, widened.
    pub(crate) fn new(st: &State) -> Self {
        Self {
            mem: st.mem.iter().map(|&x| x as f64).collect(),
            mom: st.mom.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Rounds the momentum into the state (`mem` is kept rounded by every update).
    pub(crate) fn finish(&self, st: &mut State) {
        for (d, &s) in st.mom.iter_mut().zip(&self.mom) {
            *d = s as f32;
        }
    }
}

/// How many of the call's `t` keys query row `i` reads after: its position `p = q_offset + i`
/// clamped to `[0, t]` (strict causality: key `p` itself is not yet stored).
#[inline]
pub fn reads_after(q_offset: i64, i: usize, t: usize) -> usize {
    (q_offset + i as i64).clamp(0, t as i64) as usize
}

/// `lse` of row `i`: `0` when it may see a key (or the state already holds keys), `−∞` otherwise.
#[inline]
pub fn lse_of(q_offset: i64, i: usize, t: usize, stored: u64) -> f32 {
    if crate::linear::keys_seen(q_offset, i, t) > 0 || stored > 0 {
        0.0
    } else {
        f32::NEG_INFINITY
    }
}

/// Per-token gates, each `[T]`: learning rate `θ_t ≥ 0`, momentum `η_t ∈ [0, 1)`, forgetting
/// `α_t ∈ [0, 1]`.
#[derive(Debug, Clone, Copy)]
pub struct Gates<'a> {
    /// `θ_t`.
    pub lr: &'a [f32],
    /// `η_t`.
    pub momentum: &'a [f32],
    /// `α_t`.
    pub decay: &'a [f32],
}

/// One head's inputs, rows contiguous: `q: [S_q, D]`, `k: [T, D]`, `v: [T, D_v]`.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Queries (raw: L2-normalised by the kernels when `l2norm`).
    pub q: &'a [f32],
    /// Keys (raw).
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Gates per key.
    pub gates: Gates<'a>,
}

/// What one call computes beyond the inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// The memory network.
    pub shape: Shape,
    /// Its non-linearity.
    pub act: Act,
    /// Mini-batch (chunk) length `b`: gradients inside a chunk are taken at the chunk-start
    /// weights, and queries read the memory before their chunk. Part of the function.
    pub chunk: usize,
    /// L2-normalise q and k.
    pub l2norm: bool,
    /// Bound on each token's gradient norm `‖∇ℓ_t‖` (Frobenius, all layers): a larger gradient
    /// is scaled down to it before the step; `f32::INFINITY` = no bound.
    pub clip: f32,
    /// Absolute position of query row 0 (row `i` reads the memory after `q_offset + i` keys).
    pub q_offset: i64,
}

/// The factor a token's step is scaled by: `min(1, clip / ‖∇ℓ‖)` from `‖∇ℓ‖² = Σ_l ‖g_l‖² ‖x_l‖²`
/// (the layer gradients are the outer products `g_l x_lᵀ`, whose Frobenius norm is
/// `‖g_l‖ ‖x_l‖`), in f64.
pub(crate) fn clip_factor(clip: f32, grad_sq: f64) -> f64 {
    let n = grad_sq.sqrt();
    if n > clip as f64 {
        clip as f64 / n
    } else {
        1.0
    }
}

/// `Σ x²` in f64, in 8 interleaved partial sums (one chain of dependent f64 adds was a
/// latency-bound tenth of the chunked form's time).
pub(crate) fn sq64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64 * v as f64;
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| v as f64 * v as f64).sum();
    acc.iter().sum::<f64>() + tail
}

/// `x / ‖x‖` (when `on`) into `dst`, the norm taken in f64 (as the delta rule's).
pub(crate) fn l2n32(x: &[f32], on: bool, dst: &mut [f32]) {
    let inv = if on {
        let n = sq64(x).sqrt();
        (1.0 / n.max(1e-6)) as f32
    } else {
        1.0
    };
    for (d, &a) in dst.iter_mut().zip(x) {
        *d = a * inv;
    }
}

/// `x / ‖x‖` (when `on`) in f64.
pub(crate) fn l2n64(x: &[f32], on: bool) -> Vec<f64> {
    let n = if on { x.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>().sqrt() } else { 1.0 };
    let inv = if on { 1.0 / n.max(1e-6) } else { 1.0 };
    x.iter().map(|&a| a as f64 * inv).collect()
}

/// Flush-to-zero and denormals-are-zero on this thread while alive (x86-64; elsewhere nothing).
///
/// A memory that forgets (`α > 0`) shrinks toward its all-zero state, and its weights, momentum
/// and gradients can reach the subnormal range, where every f32 operation costs ~100× (measured:
/// a 2-layer memory with `α = 0.01` took 342 s at 64k tokens instead of ~25 s). The fast forms
/// therefore treat subnormals as zero; the f64 reference is unaffected (its subnormals start at
/// 1e-308), and outputs differ from it only below `f32::MIN_POSITIVE`.
pub(crate) struct FlushSubnormals {
    #[cfg(target_arch = "x86_64")]
    old: u32,
}

impl FlushSubnormals {
    /// Sets FTZ (MXCSR bit 15) and DAZ (bit 6), keeping the old control word.
    pub(crate) fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let mut old: u32 = 0;
            // SAFETY: stmxcsr/ldmxcsr read and write the SSE control word of this thread only;
            // the pointers are to live local u32s.
            unsafe {
                std::arch::asm!("stmxcsr [{}]", in(reg) &mut old as *mut u32, options(nostack));
                let new = old | 0x8040;
                std::arch::asm!("ldmxcsr [{}]", in(reg) &new as *const u32, options(nostack, readonly));
            }
            Self { old }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self {}
    }
}

impl Drop for FlushSubnormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: restores the control word read in `new` on the same thread (the guard is not
        // Send: it holds no data that would let it move, and it lives in one kernel call).
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.old as *const u32, options(nostack, readonly));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_activations_match_f64_at_every_level() {
        // Dense over [-12, 12], the tails, and NaN (must stay NaN).
        let mut xs: Vec<f32> = (0..4801).map(|i| -12.0 + i as f32 * 0.005).collect();
        xs.extend([-1e30, -80.0, -30.0, 30.0, 80.0, 1e30, 0.0, -0.0, 1e-20]);
        for level in Level::available() {
            for act in [Act::Gelu, Act::Silu] {
                let mut z = xs.clone();
                let mut d = vec![0.0f32; xs.len() - 3]; // the last rows: value only
                act_rows(level, act, &mut z, &mut d);
                for (i, &x) in xs.iter().enumerate() {
                    let (y, g) = act.eval_f64(x as f64);
                    let ctx = format!("{} {} x={x}", level.name(), act.name());
                    let tol = |v: f64| 2e-6 * v.abs().max(1.0);
                    assert!((z[i] as f64 - y).abs() <= tol(y), "{ctx}: {} vs {y}", z[i]);
                    if i < d.len() && x.abs() < 1e20 {
                        assert!((d[i] as f64 - g).abs() <= tol(g), "{ctx}: σ' {} vs {g}", d[i]);
                    }
                }
                let mut nan = [f32::NAN; 17];
                act_rows(level, act, &mut nan, &mut [0.0; 17]);
                assert!(nan.iter().all(|v| v.is_nan()), "{} {}", level.name(), act.name());
            }
        }
    }
}
