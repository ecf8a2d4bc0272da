//! Masks as types.
//!
//! A mask says which keys each query row may attend to. Positions follow the library convention
//! (spec §0.2): query row `i` (0-based in the query block) sits at absolute position
//! `p_i = q_offset + i`, with `q_offset` taken from [`crate::Params::q_offset`] and defaulting to
//! `S_kv − S_q`; key `j` sits at position `j`. With `S_q = 3`, `S_kv = 5` the default causal mask is
//! aligned bottom-right:
//!
//! ```text
//!          keys j: 0 1 2 3 4
//! row 0 (p = 2):   x x x . .
//! row 1 (p = 3):   x x x x .
//! row 2 (p = 4):   x x x x x
//! ```
//!
//! A row whose allowed set is empty is *fully masked*: every method returns `o = 0` and
//! `lse = −∞` for it, never NaN.
//!
//! Every structured kind allows, per row, one contiguous interval of keys ([`Mask::interval`]); fast
//! kernels use the interval to skip whole tiles and to mask only the tiles that straddle its ends.
//! [`Mask::allowed`] is the element-wise definition used by references, written straight from the
//! formulas below and independent of the interval code.

use crate::error::{Error, Result};
use std::sync::Arc;

/// Which keys each query may attend to. Combine kinds with [`Mask::And`].
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Mask {
    /// Every query attends to every key.
    #[default]
    None,
    /// `j ≤ p_i`.
    Causal,
    /// Sliding window: `p_i − left ≤ j ≤ p_i + right`; `None` leaves that side unbounded.
    /// A causal window of `W` keys (the current one included) is `left = W − 1, right = 0`,
    /// see [`Mask::sliding_window`].
    Window {
        /// Keys allowed before the query position.
        left: Option<usize>,
        /// Keys allowed after the query position.
        right: Option<usize>,
    },
    /// Per batch element `b`, keys `j < lengths[b]` are real and the rest is padding.
    KeyPadding {
        /// Valid key count per batch element (`B` entries, each ≤ `S_kv`).
        lengths: Vec<usize>,
    },
    /// Prefix-LM: the first `prefix` keys are visible to every query (bidirectional prefix), the
    /// rest causally: `j < prefix || j ≤ p_i`.
    PrefixLm {
        /// Length of the bidirectional prefix.
        prefix: usize,
    },
    /// Packed sequences: query rows and keys are cut into consecutive segments of the given
    /// lengths; a query sees only the keys of its own segment. With `causal`, inside segment `s`
    /// query `i` (local index `i_s`) sees local keys `j_s ≤ i_s + kv_len_s − q_len_s`
    /// (bottom-right alignment per segment). `q_offset` is ignored by this kind.
    BlockDiagonal {
        /// Query rows per segment; they sum to `S_q`.
        q_lens: Vec<usize>,
        /// Keys per segment; they sum to `S_kv`.
        kv_lens: Vec<usize>,
        /// Causal inside each segment.
        causal: bool,
    },
    /// An explicit boolean matrix, `true` = allowed.
    Dense(DenseMask),
    /// A key is allowed when every mask in the list allows it (e.g. causal AND key padding).
    And(Vec<Mask>),
}

/// The kinds of [`Mask`], for capability declarations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MaskKind {
    /// [`Mask::None`]
    None,
    /// [`Mask::Causal`]
    Causal,
    /// [`Mask::Window`]
    Window,
    /// [`Mask::KeyPadding`]
    KeyPadding,
    /// [`Mask::PrefixLm`]
    PrefixLm,
    /// [`Mask::BlockDiagonal`]
    BlockDiagonal,
    /// [`Mask::Dense`]
    Dense,
}

impl MaskKind {
    /// Every kind, in declaration order.
    pub const ALL: [MaskKind; 7] = [
        MaskKind::None,
        MaskKind::Causal,
        MaskKind::Window,
        MaskKind::KeyPadding,
        MaskKind::PrefixLm,
        MaskKind::BlockDiagonal,
        MaskKind::Dense,
    ];

    /// kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            MaskKind::None => "none",
            MaskKind::Causal => "causal",
            MaskKind::Window => "window",
            MaskKind::KeyPadding => "key-padding",
            MaskKind::PrefixLm => "prefix-lm",
            MaskKind::BlockDiagonal => "block-diagonal",
            MaskKind::Dense => "dense",
        }
    }
}

/// A dense boolean mask of shape `[B or 1, H or 1, S_q, S_kv]` (size-1 axes broadcast).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseMask {
    data: Arc<[bool]>,
    shape: [usize; 4],
}

impl DenseMask {
    /// Wraps a row-major buffer.
    ///
    /// # Errors
    /// [`Error::Mask`] when the length is not the product of the shape.
    pub fn new(data: impl Into<Arc<[bool]>>, shape: [usize; 4]) -> Result<Self> {
        let data = data.into();
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Mask {
                op: "DenseMask::new",
                detail: format!(
                    "buffer holds {} flags, shape {shape:?} needs {}",
                    data.len(),
                    shape.iter().product::<usize>()
                ),
            });
        }
        Ok(Self { data, shape })
    }

    /// `[B or 1, H or 1, S_q, S_kv]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The flag for `(b, h, i, j)`, broadcasting size-1 axes.
    #[inline]
    pub fn get(&self, b: usize, h: usize, i: usize, j: usize) -> bool {
        let [nb, nh, nq, nk] = self.shape;
        let b = if nb == 1 { 0 } else { b };
        let h = if nh == 1 { 0 } else { h };
        self.data[((b * nh + h) * nq + i) * nk + j]
    }
}

/// The geometry a mask is evaluated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskGeometry {
    /// Batch size.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// Query rows.
    pub s_q: usize,
    /// Keys.
    pub s_kv: usize,
    /// Absolute position of query row 0.
    pub q_offset: i64,
}

impl Mask {
    /// The causal sliding window of `w ≥ 1` keys ending at the query position: `0 ≤ p_i − j < w`.
    pub fn sliding_window(w: usize) -> Self {
        Mask::Window { left: Some(w.saturating_sub(1)), right: Some(0) }
    }

    /// The set of kinds used (for capability checks).
    pub fn kinds(&self) -> Vec<MaskKind> {
        let mut out = Vec::new();
        self.collect_kinds(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect_kinds(&self, out: &mut Vec<MaskKind>) {
        match self {
            Mask::None => out.push(MaskKind::None),
            Mask::Causal => out.push(MaskKind::Causal),
            Mask::Window { .. } => out.push(MaskKind::Window),
            Mask::KeyPadding { .. } => out.push(MaskKind::KeyPadding),
            Mask::PrefixLm { .. } => out.push(MaskKind::PrefixLm),
            Mask::BlockDiagonal { .. } => out.push(MaskKind::BlockDiagonal),
            Mask::Dense(_) => out.push(MaskKind::Dense),
            Mask::And(list) => list.iter().for_each(|m| m.collect_kinds(out)),
        }
    }

    /// True when some part of the mask must be tested key by key ([`Mask::Dense`]).
    pub fn has_dense(&self) -> bool {
        match self {
            Mask::Dense(_) => true,
            Mask::And(list) => list.iter().any(Mask::has_dense),
            _ => false,
        }
    }

    /// Checks the mask against the problem geometry.
    ///
    /// # Errors
    /// [`Error::Mask`] when lengths or shapes do not fit.
    pub fn validate(&self, g: &MaskGeometry) -> Result<()> {
        let err = |detail: String| Err(Error::Mask { op: "Mask::validate", detail });
        match self {
            Mask::None | Mask::Causal | Mask::Window { .. } | Mask::PrefixLm { .. } => Ok(()),
            Mask::KeyPadding { lengths } => {
                if lengths.len() != g.b {
                    return err(format!(
                        "key padding has {} lengths for B = {}",
                        lengths.len(),
                        g.b
                    ));
                }
                if let Some(&l) = lengths.iter().find(|&&l| l > g.s_kv) {
                    return err(format!("key padding length {l} > S_kv = {}", g.s_kv));
                }
                Ok(())
            }
            Mask::BlockDiagonal { q_lens, kv_lens, .. } => {
                if q_lens.len() != kv_lens.len() || q_lens.is_empty() {
                    return err(format!(
                        "block-diagonal needs as many query as key segments (≥ 1), got {} and {}",
                        q_lens.len(),
                        kv_lens.len()
                    ));
                }
                let (sq, sk) = (q_lens.iter().sum::<usize>(), kv_lens.iter().sum::<usize>());
                if sq != g.s_q || sk != g.s_kv {
                    return err(format!(
                        "block-diagonal segments sum to S_q = {sq}, S_kv = {sk}; the problem has {}, {}",
                        g.s_q, g.s_kv
                    ));
                }
                Ok(())
            }
            Mask::Dense(m) => {
                let [nb, nh, nq, nk] = m.shape;
                if (nb != 1 && nb != g.b) || (nh != 1 && nh != g.h) || nq != g.s_q || nk != g.s_kv {
                    return err(format!(
                        "dense mask shape {:?} does not broadcast to [B={}, H={}, S_q={}, S_kv={}]",
                        m.shape, g.b, g.h, g.s_q, g.s_kv
                    ));
                }
                Ok(())
            }
            Mask::And(list) => list.iter().try_for_each(|m| m.validate(g)),
        }
    }

    /// Whether query row `i` of batch `b`, head `h` may attend to key `j` — the definition.
    pub fn allowed(&self, g: &MaskGeometry, b: usize, h: usize, i: usize, j: usize) -> bool {
        let p = g.q_offset + i as i64; // absolute position of the query
        let jj = j as i64;
        match self {
            Mask::None => true,
            Mask::Causal => jj <= p,
            Mask::Window { left, right } => {
                left.is_none_or(|l| jj >= p - lim(l)) && right.is_none_or(|r| jj <= p + lim(r))
            }
            Mask::KeyPadding { lengths } => j < lengths[b],
            Mask::PrefixLm { prefix } => j < *prefix || jj <= p,
            Mask::BlockDiagonal { q_lens, kv_lens, causal } => {
                let (seg, i_local) = segment_of(q_lens, i);
                let kv_start: usize = kv_lens[..seg].iter().sum();
                if j < kv_start || j >= kv_start + kv_lens[seg] {
                    return false;
                }
                let j_local = (j - kv_start) as i64;
                !causal || j_local <= i_local as i64 + kv_lens[seg] as i64 - q_lens[seg] as i64
            }
            Mask::Dense(m) => m.get(b, h, i, j),
            Mask::And(list) => list.iter().all(|m| m.allowed(g, b, h, i, j)),
        }
    }

    /// The half-open interval `[lo, hi)` of keys that the structured parts of the mask allow to
    /// row `i` of batch `b` (clamped to `[0, S_kv]`; `lo ≥ hi` means none). Dense parts are not
    /// reflected here: callers test them with [`Mask::allowed`] when [`Mask::has_dense`] is true.
    #[inline]
    pub fn interval(&self, g: &MaskGeometry, b: usize, i: usize) -> (usize, usize) {
        let (lo, hi) = self.interval_i64(g, b, i);
        let clamp = |x: i64| x.clamp(0, g.s_kv as i64) as usize;
        (clamp(lo), clamp(hi))
    }

    fn interval_i64(&self, g: &MaskGeometry, b: usize, i: usize) -> (i64, i64) {
        let p = g.q_offset + i as i64;
        let all = (0, g.s_kv as i64);
        match self {
            Mask::None | Mask::Dense(_) => all,
            Mask::Causal => (0, p + 1),
            Mask::Window { left, right } => {
                (left.map_or(0, |l| p - lim(l)), right.map_or(g.s_kv as i64, |r| p + lim(r) + 1))
            }
            Mask::KeyPadding { lengths } => (0, lengths[b] as i64),
            Mask::PrefixLm { prefix } => (0, (p + 1).max(lim(*prefix))),
            Mask::BlockDiagonal { q_lens, kv_lens, causal } => {
                let (seg, i_local) = segment_of(q_lens, i);
                let kv_start = kv_lens[..seg].iter().sum::<usize>() as i64;
                let kv_end = kv_start + kv_lens[seg] as i64;
                let hi = if *causal {
                    kv_end.min(
                        kv_start + i_local as i64 + kv_lens[seg] as i64 - q_lens[seg] as i64 + 1,
                    )
                } else {
                    kv_end
                };
                (kv_start, hi)
            }
            Mask::And(list) => list.iter().fold(all, |(lo, hi), m| {
                let (l, h) = m.interval_i64(g, b, i);
                (lo.max(l), hi.min(h))
            }),
        }
    }

    /// Number of allowed `(b, h, i, j)` pairs over the whole problem (the `computed_pairs` of
    /// exact methods). `O(B·S_q)` for structured masks; masks with a dense part test every key
    /// inside each row's interval.
    pub fn allowed_pairs(&self, g: &MaskGeometry) -> u64 {
        let mut n = 0u64;
        for b in 0..g.b {
            for i in 0..g.s_q {
                let (lo, hi) = self.interval(g, b, i);
                if lo >= hi {
                    continue;
                }
                if self.has_dense() {
                    for h in 0..g.h {
                        n += (lo..hi).filter(|&j| self.allowed(g, b, h, i, j)).count() as u64;
                    }
                } else {
                    n += (g.h * (hi - lo)) as u64;
                }
            }
        }
        n
    }

    /// The mask as a dense `[B, H, S_q, S_kv]` boolean buffer (row-major), for references and
    /// pictures. Memory: `B·H·S_q·S_kv` bytes.
    pub fn materialize(&self, g: &MaskGeometry) -> Vec<bool> {
        let mut out = Vec::with_capacity(g.b * g.h * g.s_q * g.s_kv);
        for b in 0..g.b {
            for h in 0..g.h {
                for i in 0..g.s_q {
                    for j in 0..g.s_kv {
                        out.push(self.allowed(g, b, h, i, j));
                    }
                }
            }
        }
        out
    }
}

/// Largest `|q_offset|` accepted by [`crate::Params::resolve`]: with it, and window sizes capped
/// at `2^60`, no position arithmetic can overflow an `i64`.
pub const MAX_Q_OFFSET: i64 = 1 << 53;

/// A window size or prefix as `i64`, capped at `2^60` (beyond any sequence length).
#[inline(always)]
fn lim(x: usize) -> i64 {
    x.min(1 << 60) as i64
}

/// `(segment, index inside it)` of row `i` for consecutive segments of the given lengths.
fn segment_of(lens: &[usize], i: usize) -> (usize, usize) {
    let mut start = 0;
    for (s, &l) in lens.iter().enumerate() {
        if i < start + l {
            return (s, i - start);
        }
        start += l;
    }
    (lens.len() - 1, i - (start - lens[lens.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(s_q: usize, s_kv: usize) -> MaskGeometry {
        MaskGeometry { b: 2, h: 2, s_q, s_kv, q_offset: s_kv as i64 - s_q as i64 }
    }

    /// The interval of every structured kind equals the element-wise definition.
    #[test]
    fn interval_matches_definition() {
        let masks = vec![
            Mask::None,
            Mask::Causal,
            Mask::sliding_window(3),
            Mask::Window { left: Some(2), right: Some(1) },
            Mask::Window { left: None, right: Some(2) },
            Mask::KeyPadding { lengths: vec![5, 0] },
            Mask::PrefixLm { prefix: 4 },
            Mask::BlockDiagonal {
                q_lens: vec![2, 0, 3, 2],
                kv_lens: vec![3, 2, 1, 3],
                causal: false,
            },
            Mask::BlockDiagonal {
                q_lens: vec![2, 0, 3, 2],
                kv_lens: vec![3, 2, 1, 3],
                causal: true,
            },
            Mask::And(vec![Mask::Causal, Mask::KeyPadding { lengths: vec![6, 2] }]),
        ];
        for m in &masks {
            for &off in &[-3i64, 0, 2, 9] {
                let g = MaskGeometry { q_offset: off, ..geo(7, 9) };
                for b in 0..2 {
                    for i in 0..7 {
                        let (lo, hi) = m.interval(&g, b, i);
                        for j in 0..9 {
                            assert_eq!(
                                j >= lo && j < hi,
                                m.allowed(&g, b, 0, i, j),
                                "{m:?} off {off} b {b} i {i} j {j}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn default_alignment_is_bottom_right() {
        let g = geo(3, 5);
        let m = Mask::Causal.materialize(&MaskGeometry { b: 1, h: 1, ..g });
        let rows: Vec<usize> = m.chunks(5).map(|r| r.iter().filter(|&&x| x).count()).collect();
        assert_eq!(rows, vec![3, 4, 5]);
    }

    #[test]
    fn validate_rejects_bad_lengths() {
        let g = geo(4, 4);
        assert!(Mask::KeyPadding { lengths: vec![4] }.validate(&g).is_err());
        assert!(Mask::KeyPadding { lengths: vec![4, 5] }.validate(&g).is_err());
        let bd = Mask::BlockDiagonal { q_lens: vec![2, 1], kv_lens: vec![2, 2], causal: false };
        assert!(bd.validate(&g).is_err());
        let dm = DenseMask::new(vec![true; 12], [1, 1, 3, 4]).unwrap();
        assert!(Mask::Dense(dm).validate(&g).is_err());
        assert!(DenseMask::new(vec![true; 5], [1, 1, 2, 2]).is_err());
    }
}
