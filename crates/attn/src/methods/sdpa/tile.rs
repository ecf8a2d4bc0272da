//! Pieces shared by the fast sdpa paths: row mapping under GQA, mask classification of a block,
//! score post-processing (softcap, ALiBi, mask) in base-2 units, and input packing.

use crate::mask::Mask;
use crate::params::Resolved;
use crate::primitives::online_softmax::LOG2_E;
use crate::primitives::simd::Simd;
use crate::problem::Problem;

/// The query rows of one key/value head, stacked position-major: row `r` of kv head `hk` is query
/// position `i = r / g` of query head `hk·g + r % g`. Stacking the `g` heads that share K/V lets one
/// pass over K/V serve all of them, and keeps rows of equal position together so causal tiles stay
/// triangular.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowMap {
    pub g: usize,
}

impl RowMap {
    /// `(query position i, query head h)` of row `r` of kv head `hk`.
    #[inline(always)]
    pub fn row(&self, hk: usize, r: usize) -> (usize, usize) {
        (r / self.g, hk * self.g + r % self.g)
    }
}

/// How a block of rows meets a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cover {
    /// No row may see any key of the range: skip the block.
    Empty,
    /// Every row sees every key of the range: no masking needed.
    Full,
    /// Mixed: apply the mask element by element.
    Partial,
}

/// The key intervals of a block of rows: their union `[ulo, uhi)` and intersection `[ilo, ihi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub ulo: usize,
    pub uhi: usize,
    pub ilo: usize,
    pub ihi: usize,
}

impl Bounds {
    /// No row sees any key.
    pub const EMPTY: Bounds = Bounds { ulo: 0, uhi: 0, ilo: 0, ihi: 0 };

    /// Bounds of the rows at `positions` (query positions of batch `b`).
    #[inline]
    pub fn of(
        mask: &Mask,
        params: &Resolved,
        b: usize,
        positions: impl Iterator<Item = usize>,
    ) -> Bounds {
        let (mut ulo, mut uhi, mut ilo, mut ihi) = (usize::MAX, 0, 0, usize::MAX);
        for i in positions {
            let (lo, hi) = mask.interval(&params.geometry, b, i);
            if lo < hi {
                ulo = ulo.min(lo);
                uhi = uhi.max(hi);
            }
            ilo = ilo.max(lo);
            ihi = ihi.min(hi);
        }
        if ulo >= uhi {
            return Bounds::EMPTY;
        }
        Bounds { ulo, uhi, ilo, ihi }
    }

    /// How the rows meet keys `[j0, j1)`; `dense` when the mask has an element-wise part.
    #[inline(always)]
    pub fn cover(&self, j0: usize, j1: usize, dense: bool) -> Cover {
        if self.uhi <= j0 || self.ulo >= j1 || self.ulo >= self.uhi {
            Cover::Empty
        } else if self.ilo <= j0 && j1 <= self.ihi && !dense {
            Cover::Full
        } else {
            Cover::Partial
        }
    }
}

/// What turns raw dot products (already multiplied by the scale, and by `log2 e` unless softcap is
/// on) into base-2 scores for one row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScoreFix {
    /// `Some(c)`: scores are natural units times scale; apply `c·tanh(z/c)` then `·log2 e`.
    pub softcap: Option<f32>,
    /// ALiBi slope in base-2 units (`m_h · log2 e`), 0 for none.
    pub slope2: f32,
    /// Position of the row.
    pub pos: i64,
}

/// Applies softcap and ALiBi to `s` (keys `j0..j0 + s.len()`), in place. `s.len()` is a multiple
/// of `S::LANES`.
///
/// # Safety
/// The CPU must support `S`.
#[inline(always)]
pub(crate) unsafe fn fix_scores<S: Simd>(s: &mut [f32], j0: usize, fix: ScoreFix) {
    if let Some(c) = fix.softcap {
        // c·tanh(z/c)·log2e with tanh(x) = 1 − 2/(e^{2x} + 1); e^{2x} = 2^{2x·log2e}.
        let ptr = s.as_mut_ptr();
        unsafe {
            let k = S::splat(2.0 * LOG2_E / c);
            let one = S::splat(1.0);
            let two = S::splat(2.0);
            let out = S::splat(c * LOG2_E);
            let mut i = 0;
            while i < s.len() {
                let e = S::exp2(S::mul(S::load(ptr.add(i)), k));
                let t = S::sub(one, S::div(two, S::add(e, one)));
                S::store(ptr.add(i), S::mul(t, out));
                i += S::LANES;
            }
        }
    }
    if fix.slope2 != 0.0 {
        for (t, x) in s.iter_mut().enumerate() {
            *x -= fix.slope2 * (fix.pos - (j0 + t) as i64).unsigned_abs() as f32;
        }
    }
}

/// Sets to `−∞` the scores of keys `j0..j0 + s.len()` that the mask forbids to row `i` of head `h`.
#[inline]
pub(crate) fn mask_scores(
    s: &mut [f32],
    mask: &Mask,
    params: &Resolved,
    b: usize,
    h: usize,
    i: usize,
    j0: usize,
) {
    let (lo, hi) = mask.interval(&params.geometry, b, i);
    let n = s.len();
    // Structured part: everything outside [lo, hi) (two fills, no per-key test).
    let (a, z) = (lo.saturating_sub(j0).min(n), hi.saturating_sub(j0).min(n));
    if a >= z {
        s.fill(f32::NEG_INFINITY);
        return;
    }
    s[..a].fill(f32::NEG_INFINITY);
    s[z..].fill(f32::NEG_INFINITY);
    if mask.has_dense() {
        for (t, x) in s[a..z].iter_mut().enumerate() {
            if !mask.allowed(&params.geometry, b, h, i, j0 + a + t) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// The base-2 multiplier folded into packed queries: `scale·log2 e`, or `scale` alone when
/// softcap needs natural units first.
pub(crate) fn q_multiplier(params: &Resolved) -> f32 {
    if params.softcap.is_some() {
        params.scale
    } else {
        params.scale * LOG2_E
    }
}

/// ALiBi slope of query head `h` in base-2 units.
#[inline(always)]
pub(crate) fn slope2(params: &Resolved, h: usize) -> f32 {
    params.slope(h) * LOG2_E
}

/// Rounds `x` up to a multiple of `m`.
#[inline(always)]
pub(crate) fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Query rows per kv head.
pub(crate) fn rows_per_head(p: &Problem) -> usize {
    p.s_q * p.group()
}

/// A raw pointer that may be shared across worker threads because every worker writes a
/// disjoint set of elements (each output row belongs to exactly one tile or job).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: used only for disjoint writes, documented at each use.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    #[inline(always)]
    pub fn get(&self) -> *mut T {
        self.0
    }
}
