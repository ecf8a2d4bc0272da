//! The online-softmax step shared by every tiled, decode and split-KV path.
//!
//! A row's state after seeing some keys is `(m, l)` plus an unnormalised accumulator `A` kept by
//! the caller: `m` the running maximum of the scores, `l = Σ 2^(z − m)`, `A = Σ 2^(z − m) v`.
//! Scores are in **base-2 units** (pre-multiplied by `log2 e`, so every exponential is one `exp2`);
//! [`RowState::finish`] converts the log-sum-exp back to natural log.
//!
//! Seeing a new tile of scores `s`:
//! ```text
//! m' = max(m, max s);   p = 2^(s − m');   α = 2^(m − m');   l' = α·l + Σ p;   A' = α·A + p·V
//! ```
//! While everything seen is masked (`m' = −∞`) the step leaves `l = 0`, writes `p = 0` and returns
//! `α = 1`, so `−∞ − (−∞)` is never evaluated; a row that stays fully masked finishes with
//! `o = 0` and `lse = −∞`.

use super::simd::Simd;

/// `log2(e)`: multiply natural-log scores by it to get base-2 scores.
pub const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// How far (base-2 units) a tile's maximum may exceed the running one before the running maximum
/// is moved: `2^8 = 256` bounds the unnormalised probabilities.
pub const RESCALE_THRESHOLD: f32 = 8.0;

/// Running max and sum of one row (base-2 units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowState {
    /// Reference maximum: within [`RESCALE_THRESHOLD`] of the true running maximum (`−∞` until an
    /// allowed key is seen).
    pub m: f32,
    /// `Σ 2^(z − m)` over the keys seen.
    pub l: f32,
}

impl Default for RowState {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl RowState {
    /// The state before any key.
    pub const EMPTY: RowState = RowState { m: f32::NEG_INFINITY, l: 0.0 };

    /// Takes a tile of raw scores `s` whose base-2 scores are `c·s`, overwrites them with
    /// `p = 2^(c·s − m')` and returns the factor `α` by which the caller must rescale its
    /// accumulator. Masked scores are `−∞` and give `p = 0` (then `c` must be positive; pass
    /// `c = 1` for scores already in base 2). Folding `c` here instead of into the queries saves a
    /// rounding per query element.
    ///
    /// `s.len()` must be a multiple of `S::LANES`.
    ///
    /// # Safety
    /// The CPU must support `S` (call from a [`super::simd::Kernel`]).
    #[inline(always)]
    pub unsafe fn update<S: Simd>(&mut self, s: &mut [f32], c: f32) -> f32 {
        debug_assert_eq!(s.len() % S::LANES, 0);
        let ptr = s.as_ptr();
        let n = s.len();
        unsafe {
            let vc = S::splat(c);
            let mut vm = S::splat(f32::NEG_INFINITY);
            let mut i = 0;
            while i < n {
                vm = S::max(vm, S::mul(S::load(ptr.add(i)), vc));
                i += S::LANES;
            }
            self.update_with_max::<S>(s, c, S::reduce_max(vm))
        }
    }

    /// [`RowState::update`] when the caller already knows `m_tile = max(c·s)` (e.g. a score
    /// micro-kernel that kept the maximum while it wrote `s`): one pass over the tile instead of
    /// two. `m_tile` must be exactly the maximum of `c·s` (for `c > 0`, `c·max(s)` is: rounding
    /// is monotone), so the result is bitwise the same as `update`'s.
    ///
    /// # Safety
    /// The CPU must support `S` (call from a [`super::simd::Kernel`]).
    #[inline(always)]
    pub unsafe fn update_with_max<S: Simd>(&mut self, s: &mut [f32], c: f32, m_tile: f32) -> f32 {
        debug_assert_eq!(s.len() % S::LANES, 0);
        let ptr = s.as_mut_ptr();
        let n = s.len();
        unsafe {
            let vc = S::splat(c);
            // Keep the running maximum unless the tile exceeds it by more than the threshold
            // (always move it away from −∞).
            let m_new = if m_tile > self.m + RESCALE_THRESHOLD { m_tile } else { self.m };
            if m_new == f32::NEG_INFINITY {
                s.fill(0.0);
                return 1.0;
            }
            let vmn = S::splat(-m_new);
            let mut vs = S::splat(0.0);
            let mut i = 0;
            while i < n {
                let p = S::exp2(S::fma(S::load(ptr.add(i)), vc, vmn));
                S::store(ptr.add(i), p);
                vs = S::add(vs, p);
                i += S::LANES;
            }
            let alpha =
                if m_new == self.m { 1.0 } else { super::simd::exp2_scalar(self.m - m_new) };
            self.l = alpha * self.l + S::reduce_sum(vs);
            self.m = m_new;
            alpha
        }
    }

    /// Merges another row state over a disjoint key set into this one; returns the factors
    /// `(a_self, a_other)` by which the two accumulators must be scaled before adding them.
    #[inline]
    pub fn merge(&mut self, other: RowState) -> (f32, f32) {
        let m = self.m.max(other.m);
        if m == f32::NEG_INFINITY {
            return (1.0, 0.0);
        }
        let (a, b) = ((self.m - m).exp2(), (other.m - m).exp2());
        self.l = a * self.l + b * other.l;
        self.m = m;
        (a, b)
    }

    /// `(1 / l, lse)` with `lse` in natural log; `(0, −∞)` for a fully masked row.
    #[inline]
    pub fn finish(&self) -> (f32, f32) {
        if self.l == 0.0 || self.m == f32::NEG_INFINITY {
            (0.0, f32::NEG_INFINITY)
        } else {
            (1.0 / self.l, (self.m + self.l.log2()) * std::f32::consts::LN_2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::simd::{dispatch, Kernel, Level};

    /// Streams `scores` through `RowState::update` in tiles of `tile`, accumulating `Σ p·x`.
    struct Stream<'a> {
        scores: &'a [f32],
        x: &'a [f32],
        tile: usize,
    }
    impl Kernel for Stream<'_> {
        type Output = (f32, f32);
        #[inline(always)]
        fn run<S: Simd>(self) -> (f32, f32) {
            let mut st = RowState::EMPTY;
            let mut acc = 0.0f32;
            for (sc, xs) in self.scores.chunks(self.tile).zip(self.x.chunks(self.tile)) {
                let mut buf = sc.to_vec();
                let alpha = unsafe { st.update::<S>(&mut buf, 1.0) };
                acc = acc * alpha + buf.iter().zip(xs).map(|(p, x)| p * x).sum::<f32>();
            }
            let (inv, lse) = st.finish();
            (acc * inv, lse)
        }
    }

    #[test]
    fn streaming_equals_softmax_at_every_level_and_tile() {
        let n = 96;
        let mut z: Vec<f64> = (0..n).map(|i| ((i * 37 % 23) as f64 - 11.0) * 0.7).collect();
        // A fully masked first tile must not poison the row.
        z[..20].fill(f64::NEG_INFINITY);
        let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.3).cos()).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l: f64 = z.iter().map(|&s| (s - m).exp()).sum();
        let want_o: f64 = z.iter().zip(&x).map(|(&s, &x)| (s - m).exp() * x).sum::<f64>() / l;
        let want_lse = m + l.ln();
        let scores: Vec<f32> = z.iter().map(|&s| (s * std::f64::consts::LOG2_E) as f32).collect();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        for level in Level::available() {
            for tile in [16, 32, 48, 96] {
                let (o, lse) = dispatch(level, Stream { scores: &scores, x: &xf, tile });
                assert!((o as f64 - want_o).abs() < 1e-5, "{level:?} tile {tile}: {o} vs {want_o}");
                assert!(
                    (lse as f64 - want_lse).abs() < 1e-5,
                    "{level:?} tile {tile}: {lse} vs {want_lse}"
                );
            }
        }
    }

    #[test]
    fn fully_masked_row_finishes_to_zero() {
        let scores = vec![f32::NEG_INFINITY; 32];
        let x = vec![1.0f32; 32];
        for level in Level::available() {
            let (o, lse) = dispatch(level, Stream { scores: &scores, x: &x, tile: 16 });
            assert_eq!(o, 0.0);
            assert_eq!(lse, f32::NEG_INFINITY);
        }
    }

    #[test]
    fn merge_matches_single_pass() {
        let mut a = RowState { m: 3.0, l: 2.0 };
        let b = RowState { m: 5.0, l: 1.5 };
        let (fa, fb) = a.merge(b);
        assert!((a.l - (2.0 * 0.25 + 1.5)).abs() < 1e-6);
        assert_eq!((fa, fb), (0.25, 1.0));
        let mut e = RowState::EMPTY;
        assert_eq!(e.merge(RowState::EMPTY), (1.0, 0.0));
        assert_eq!(e.finish().1, f32::NEG_INFINITY);
    }
}
