//! What every sparse-pattern method shares: a configuration type with documented defaults
//! ([`SparseConfig`]), and the two registered implementations built from it — [`Fast`] (the
//! tiled sparse kernel) and [`Reference`] (the f64 executor over the same support) — so a method
//! folder holds only its pattern logic.
//!
//! The reference of an approximate method is the reference *of the approximation* (STYLE 1.3):
//! both implementations select the same support (the selection code is deterministic: no
//! dependence on SIMD level or thread count) and differ only in how attention over it is
//! computed. Each folder's `reference.rs` holds the plain-loop definition of the selection, which
//! the method's tests compare with the selection code.

use crate::dispatch::{
    parse_param, unknown_param, Capabilities, Exactness, Inputs, Method, OutputMut, ParamInfo,
    Reason, Stats,
};
use crate::error::{Error, Result};
use crate::mask::{Mask, MaskKind};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::problem::Problem;
use crate::tensor::DType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// The tiled SIMD kernel.
    Fast,
    /// Plain loops, f64.
    Reference,
}

/// The configuration of one sparse method: names, parameters, and how it runs.
pub trait SparseConfig: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Name of the fast implementation (`vertical-slash`).
    const NAME: &'static str;
    /// Name of the reference (`vertical-slash-reference`).
    const REFERENCE_NAME: &'static str;
    /// Family folder.
    const FAMILY: &'static str;
    /// One line for `attn list`.
    const DESCRIPTION: &'static str;
    /// Mask kinds the method is defined for.
    const MASKS: &'static [MaskKind];

    /// Current parameter values.
    fn params(&self) -> Vec<ParamInfo>;

    /// Sets one parameter from its text.
    ///
    /// # Errors
    /// [`Error::UnknownParam`] / [`Error::BadParam`].
    fn set(&mut self, key: &str, value: &str) -> Result<()>;

    /// Reasons beyond the capability table (default none).
    fn unsupported(&self, _p: &Problem, _params: &Params) -> Vec<Reason> {
        Vec::new()
    }

    /// Computes the method into `out`.
    ///
    /// # Errors
    /// None expected after the capability check; typed errors otherwise.
    fn forward(
        &self,
        exec: Exec,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats>;

    /// Scratch bytes of a call.
    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize;
}

/// Parses a positive count parameter (helper for [`SparseConfig::set`]).
///
/// # Errors
/// [`Error::BadParam`] for non-integers and 0.
pub fn positive(method: &str, key: &str, value: &str) -> Result<usize> {
    let n: usize = parse_param(method, key, value)?;
    if n == 0 {
        return Err(Error::BadParam {
            method: method.into(),
            key: key.into(),
            value: value.into(),
            detail: "must be ≥ 1".into(),
        });
    }
    Ok(n)
}

/// The error for an unknown key of `C` (helper for [`SparseConfig::set`]).
pub fn unknown<C: SparseConfig>(c: &C, key: &str) -> Error {
    unknown_param(C::NAME, key, &c.params())
}

/// Runs `f(work, b, h, o, lse)` once for every (batch, query head) with that head's rows of the
/// output (`o: [S_q, D_v]`, `lse: [S_q]`). Heads go round-robin to the workers of `par`, each
/// with its own scratch from `init`; one worker computes a head start to end, so results do not
/// depend on the thread count. Returns the sum of what `f` returns (computed pairs, say).
///
/// The SIMD level is a thread-local choice: callers read [`crate::primitives::simd::Level::current`] before
/// and hand it to `f`.
pub fn for_each_head<W>(
    p: &Problem,
    par: Par,
    out: OutputMut,
    init: impl Fn() -> W + Sync,
    f: impl Fn(&mut W, usize, usize, &mut [f32], &mut [f32]) -> u64 + Sync,
) -> u64 {
    let heads = p.b * p.h;
    if heads == 0 || p.s_q == 0 {
        return 0;
    }
    let slots: Vec<Mutex<(&mut [f32], &mut [f32])>> =
        out.o.chunks_mut(p.s_q * p.d_v).zip(out.lse.chunks_mut(p.s_q)).map(Mutex::new).collect();
    let total = AtomicU64::new(0);
    let jobs = par.threads().min(heads);
    par.run(jobs, |wk| {
        let mut work = init();
        let mut sum = 0;
        for bh in (wk..heads).step_by(jobs) {
            let mut slot = slots[bh].lock().unwrap_or_else(|e| e.into_inner());
            let (o, lse) = &mut *slot;
            sum += f(&mut work, bh / p.h, bh % p.h, o, lse);
        }
        total.fetch_add(sum, Ordering::Relaxed);
    });
    total.into_inner()
}

/// True when the mask is causal (the only structured mask MInference's patterns are defined for).
pub fn is_causal(mask: &Mask) -> bool {
    matches!(mask, Mask::Causal)
}

fn capabilities(masks: &'static [MaskKind]) -> Capabilities {
    Capabilities {
        dtypes: &[DType::F32, DType::F16, DType::BF16],
        masks,
        max_head_dim: 1024,
        gqa: true,
        softcap: false,
        alibi: false,
        max_query_rows: None,
        min_kv: 0,
    }
}

fn with_params<C: SparseConfig>(c: &C, kv: &[(&str, &str)]) -> Result<C> {
    let mut c = c.clone();
    for (k, v) in kv {
        c.set(k, v)?;
    }
    Ok(c)
}

/// The fast implementation of a sparse method.
#[derive(Debug, Clone)]
pub struct Fast<C>(pub C);

/// The f64 reference of a sparse method.
#[derive(Debug, Clone)]
pub struct Reference<C>(pub C);

macro_rules! impl_method {
    ($ty:ident, $exec:expr, $name:ident, $reference:expr) => {
        impl<C: SparseConfig> Method for $ty<C> {
            fn name(&self) -> &'static str {
                C::$name
            }
            fn family(&self) -> &'static str {
                C::FAMILY
            }
            fn description(&self) -> &'static str {
                C::DESCRIPTION
            }
            fn exactness(&self) -> Exactness {
                Exactness::Approximate
            }
            fn is_reference(&self) -> bool {
                $reference
            }
            fn capabilities(&self) -> Capabilities {
                capabilities(C::MASKS)
            }
            fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
                let mut r = crate::dispatch::check_capabilities(&self.capabilities(), p, params);
                r.extend(self.0.unsupported(p, params));
                r
            }
            fn params(&self) -> Vec<ParamInfo> {
                self.0.params()
            }
            fn with_params(&self, kv: &[(&str, &str)]) -> Result<Box<dyn Method>> {
                Ok(Box::new($ty(with_params(&self.0, kv)?)))
            }
            fn scratch_bytes(&self, p: &Problem, _: &Resolved, par: Par) -> usize {
                self.0.scratch_bytes($exec, p, par)
            }
            fn forward(
                &self,
                p: &Problem,
                inputs: &Inputs,
                params: &Resolved,
                par: Par,
                out: OutputMut,
            ) -> Result<Stats> {
                self.0.forward($exec, p, inputs, params, par, out)
            }
        }
    };
}

impl_method!(Fast, Exec::Fast, NAME, false);
impl_method!(Reference, Exec::Reference, REFERENCE_NAME, true);

/// `a·b` in f32 with a fixed summation order (16 interleaved partial sums, then a fixed tree),
/// so pattern selection gives bit-identical scores at every SIMD level and thread count (plain
/// multiply-then-add: the compiler may vectorise it but not reorder or fuse it).
#[inline(always)]
pub fn dot_fixed(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let n = a.len().min(b.len());
    let (ac, bc) = (a[..n].chunks_exact(16), b[..n].chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    tree_sum(acc)
}

/// The 16 partial sums of [`dot_fixed`] added in its fixed tree (halves, then quarters, …).
#[inline(always)]
fn tree_sum(mut acc: [f32; 16]) -> f32 {
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

/// [`dot_fixed`] of four rows `a[0..4]` with one `b`, bit for bit: the same products and sums in
/// the same order, with `b` read once for all four and four independent sum chains.
#[inline(always)]
pub fn dot_fixed4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    let n = a.iter().map(|x| x.len()).min().unwrap_or(0).min(b.len());
    let mut acc = [[0.0f32; 16]; 4];
    let full = n / 16 * 16;
    let mut c = 0;
    while c < full {
        let y = &b[c..c + 16];
        for (acc, x) in acc.iter_mut().zip(&a) {
            let x = &x[c..c + 16];
            for l in 0..16 {
                acc[l] += x[l] * y[l];
            }
        }
        c += 16;
    }
    for (acc, x) in acc.iter_mut().zip(&a) {
        for (l, (x, y)) in x[full..n].iter().zip(&b[full..n]).enumerate() {
            acc[l] += x * y;
        }
    }
    acc.map(tree_sum)
}

/// Indices of the `k` largest `scores`, ties broken by the smaller index (spec §0.4.6),
/// returned ascending.
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    let order =
        |a: &u32, b: &u32| scores[*b as usize].total_cmp(&scores[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_fixed4_has_the_bits_of_dot_fixed() {
        // Lengths with and without a remainder; values of mixed magnitude so that the order of
        // the sums shows in the last bits.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32 - 0.5) * 10f32.powi((seed % 7) as i32 - 3)
        };
        for n in [0usize, 1, 7, 16, 33, 64, 128, 130] {
            let rows: Vec<Vec<f32>> = (0..4).map(|_| (0..n).map(|_| next()).collect()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let got = dot_fixed4([&rows[0], &rows[1], &rows[2], &rows[3]], &b);
            for (r, g) in rows.iter().zip(got) {
                assert_eq!(g.to_bits(), dot_fixed(r, &b).to_bits(), "n = {n}");
            }
        }
    }
}
