//! Online index estimation of Vertical-Slash (spec §2.2 steps 1–7), shared by the fast path and
//! the reference. Everything here is deterministic: the same selection at every SIMD level and
//! thread count (fixed-order dot products, sums in a fixed chunk order), so both implementations
//! attend over the same support.

use super::{VerticalSlash, MIN_SLASH, MIN_VERTICAL};
use crate::dispatch::Inputs;
use crate::error::Result;
use crate::methods::pattern::{dot_fixed, dot_fixed4, top_k};
use crate::methods::sdpa::tile::SharedMut;
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::primitives::sparse::diagonal::{DiagHead, DiagList};
use crate::primitives::sparse::{BlockList, HeadList};
use crate::problem::Problem;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Keys per estimation job (fixed: the order of partial sums must not depend on threads).
const KEYS: usize = 512;

/// Bytes the estimation allocates.
pub fn scratch_bytes(c: &VerticalSlash, p: &Problem) -> usize {
    let l = c.last_q.min(p.s_q);
    4 * (l * (p.s_kv + p.d) + 2 * p.s_kv + 2 * l * p.s_kv.div_ceil(KEYS))
}

/// The vertical scores `a_v[j]` (column sums of the estimated attention of the last `L` rows)
/// and slash scores `a_s[δ]` (sums along the diagonal at distance `δ = p_r − j`), before
/// forcing; both of length `S_kv`. Query head `h` of batch `b`.
pub fn scores(
    c: &VerticalSlash,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    b: usize,
    h: usize,
    par: Par,
) -> (Vec<f32>, Vec<f32>) {
    let l = c.last_q.min(p.s_q);
    let (s_kv, d) = (p.s_kv, p.d);
    let r0 = p.s_q - l; // first estimation row
    let hk = h / p.group();
    let mut q = vec![0.0f32; l * d]; // [L, D]
    for r in 0..l {
        inputs.q.read_row(b, h, r0 + r, 1.0, &mut q[r * d..(r + 1) * d]);
    }
    let pos: Vec<i64> = (0..l).map(|r| params.position(r0 + r)).collect();
    let nchunks = s_kv.div_ceil(KEYS);
    let mut z = vec![0.0f32; l * s_kv]; // [L, S_kv] scores, then exp(z − m_r)
    let mut part = vec![0.0f32; nchunks * l]; // [chunk, L] maxima, then partial sums
    let (zp, pp) = (SharedMut(z.as_mut_ptr()), SharedMut(part.as_mut_ptr()));

    // 1. Scores and per-chunk row maxima (keys after a row's position are −∞).
    let next = AtomicUsize::new(0);
    par.run(par.threads().min(nchunks), |_| {
        dispatch(
            Level::current(),
            ScoreJobs {
                inputs,
                b,
                hk,
                q: &q,
                pos: &pos,
                scale: params.scale,
                zp,
                pp,
                next: &next,
                nchunks,
                s_kv,
                d,
            },
        )
    });
    let m: Vec<f32> = (0..l)
        .map(|r| (0..nchunks).map(|ch| part[ch * l + r]).fold(f32::NEG_INFINITY, f32::max))
        .collect();
    // 2. exp(z − m_r) in place and per-chunk row sums.
    let next = AtomicUsize::new(0);
    par.run(par.threads().min(nchunks), |_| loop {
        let ch = next.fetch_add(1, Ordering::Relaxed);
        if ch >= nchunks {
            break;
        }
        let (j0, j1) = (ch * KEYS, ((ch + 1) * KEYS).min(s_kv));
        for (r, &mr) in m.iter().enumerate() {
            // SAFETY: chunk ch owns columns j0..j1 of z and entry (ch, r) of part.
            let row =
                unsafe { std::slice::from_raw_parts_mut(zp.get().add(r * s_kv + j0), j1 - j0) };
            let mut sum = 0.0f32;
            for x in row.iter_mut() {
                *x = if mr == f32::NEG_INFINITY { 0.0 } else { (*x - mr).exp() };
                sum += *x;
            }
            unsafe { *pp.get().add(ch * l + r) = sum };
        }
    });
    let inv: Vec<f32> = (0..l)
        .map(|r| {
            let s: f32 = (0..nchunks).map(|ch| part[ch * l + r]).sum();
            if s > 0.0 {
                1.0 / s
            } else {
                0.0
            }
        })
        .collect();
    // 3. Column sums and diagonal sums of the normalised strip.
    let mut a_v = vec![0.0f32; s_kv];
    let mut a_s = vec![0.0f32; s_kv];
    let (avp, asp) = (SharedMut(a_v.as_mut_ptr()), SharedMut(a_s.as_mut_ptr()));
    let next = AtomicUsize::new(0);
    par.run(par.threads().min(nchunks), |_| loop {
        let ch = next.fetch_add(1, Ordering::Relaxed);
        if ch >= nchunks {
            break;
        }
        let (t0, t1) = (ch * KEYS, ((ch + 1) * KEYS).min(s_kv));
        // SAFETY: chunk ch owns entries t0..t1 of a_v and a_s (zero from the allocation).
        let (v, s) = unsafe {
            (
                std::slice::from_raw_parts_mut(avp.get().add(t0), t1 - t0),
                std::slice::from_raw_parts_mut(asp.get().add(t0), t1 - t0),
            )
        };
        // Row by row (contiguous reads of z), each entry summing over r in ascending order:
        // the same additions in the same order as one entry at a time.
        for (r, &ir) in inv.iter().enumerate() {
            let zr = &z[r * s_kv..(r + 1) * s_kv];
            for (x, &zz) in v.iter_mut().zip(&zr[t0..t1]) {
                *x += zz * ir;
            }
            // Diagonal δ = t holds key p_r − t; it exists for t ∈ [p_r − S_kv + 1, p_r].
            let lo = (pos[r] - s_kv as i64 + 1).max(t0 as i64);
            let hi = pos[r].min(t1 as i64 - 1);
            for t in lo.max(0)..=hi {
                s[(t as usize) - t0] += zr[(pos[r] - t) as usize] * ir;
            }
        }
    });
    (a_v, a_s)
}

struct ScoreJobs<'a> {
    inputs: &'a Inputs<'a>,
    b: usize,
    hk: usize,
    q: &'a [f32],
    pos: &'a [i64],
    scale: f32,
    zp: SharedMut<f32>,
    pp: SharedMut<f32>,
    next: &'a AtomicUsize,
    nchunks: usize,
    s_kv: usize,
    d: usize,
}

impl Kernel for ScoreJobs<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let l = self.pos.len();
        let mut krow = vec![0.0f32; self.d];
        loop {
            let ch = self.next.fetch_add(1, Ordering::Relaxed);
            if ch >= self.nchunks {
                break;
            }
            let (j0, j1) = (ch * KEYS, ((ch + 1) * KEYS).min(self.s_kv));
            let mut mx = vec![f32::NEG_INFINITY; l];
            for j in j0..j1 {
                let k = match self.inputs.k.row_f32(self.b, self.hk, j) {
                    Some(k) => k,
                    None => {
                        self.inputs.k.read_row(self.b, self.hk, j, 1.0, &mut krow);
                        &krow
                    }
                };
                // Four rows at a time share the key (the same bits as one by one).
                let d = self.d;
                let mut dots = [0.0f32; 4];
                for (r, m) in mx.iter_mut().enumerate() {
                    if r % 4 == 0 {
                        dots = if r + 4 <= l {
                            let q = |i: usize| &self.q[(r + i) * d..(r + i + 1) * d];
                            dot_fixed4([q(0), q(1), q(2), q(3)], k)
                        } else {
                            std::array::from_fn(|i| {
                                if r + i < l {
                                    dot_fixed(&self.q[(r + i) * d..(r + i + 1) * d], k)
                                } else {
                                    0.0
                                }
                            })
                        };
                    }
                    let z = if j as i64 <= self.pos[r] {
                        self.scale * dots[r % 4]
                    } else {
                        f32::NEG_INFINITY
                    };
                    *m = m.max(z);
                    // SAFETY: chunk ch owns columns j0..j1 of z.
                    unsafe { *self.zp.get().add(r * self.s_kv + j) = z };
                }
            }
            for (r, x) in mx.iter().enumerate() {
                // SAFETY: chunk ch owns entries (ch, ·) of the partials.
                unsafe { *self.pp.get().add(ch * l + r) = *x };
            }
        }
    }
}

/// The selected vertical columns and slash distances (both ascending) from the scores: forced
/// sinks and local diagonals, then the top `max(vertical, 30)` / `max(slash, 50)` (at most
/// `S_kv`), ties to the smaller index.
pub fn select(c: &VerticalSlash, mut a_v: Vec<f32>, mut a_s: Vec<f32>) -> (Vec<u32>, Vec<u32>) {
    let n = a_v.len();
    a_v[..c.sink.min(n)].fill(f32::INFINITY);
    a_s[..c.local.min(n)].fill(f32::INFINITY);
    let nv = c.vertical.max(MIN_VERTICAL).min(n);
    let ns = c.slash.max(MIN_SLASH).min(n);
    (top_k(&a_v, nv), top_k(&a_s, ns))
}

/// MInference's conversion of one query block (spec §2.2 step 7): `e` is one past the last
/// position of the block's rows; `verticals` and `slashes` ascending. Returns the key block
/// starts (width `bs`) and the extra columns.
pub fn convert(
    bs: usize,
    s_kv: usize,
    e: i64,
    verticals: &[u32],
    slashes: &[u32],
) -> (Vec<u32>, Vec<u32>) {
    let bs_i = bs as i64;
    // Ranges [start, end) from the distances, largest distance (left-most range) first.
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &dist in slashes.iter().rev() {
        let dist = dist as i64;
        if dist >= e {
            continue;
        }
        let end = (e - dist).max(bs_i);
        let start = end - bs_i;
        match ranges.last_mut() {
            Some(cur) if start <= cur.1 => {
                if end > cur.1 {
                    cur.1 += bs_i; // extend by exactly one block (the kernel's rule)
                }
            }
            _ => ranges.push((start, end)),
        }
    }
    let mut blocks = Vec::new();
    for &(start, end) in &ranges {
        let mut t = start;
        while t < end && t < s_kv as i64 {
            blocks.push(t as u32);
            t += bs_i;
        }
    }
    // Columns strictly left of the range they precede; inside a range or after the last: dropped.
    let mut cols = Vec::new();
    let mut ri = 0;
    for &v in verticals {
        let v64 = v as i64;
        while ri < ranges.len() && ranges[ri].1 <= v64 {
            ri += 1;
        }
        if ri < ranges.len() && v64 < ranges[ri].0 {
            cols.push(v);
        }
    }
    (blocks, cols)
}

/// The selected `(verticals, slashes)` of one query head, both ascending.
pub type Selection = (Vec<u32>, Vec<u32>);

/// The [`Selection`] of every query head (batch-major) and the pairs the estimation scored
/// (`L · S_kv` per head).
pub fn selection(
    c: &VerticalSlash,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    par: Par,
) -> (Vec<Selection>, u64) {
    let mut heads = Vec::with_capacity(p.b * p.h);
    for b in 0..p.b {
        for h in 0..p.h {
            let (a_v, a_s) = scores(c, p, inputs, params, b, h, par);
            heads.push(select(c, a_v, a_s));
        }
    }
    let l = c.last_q.min(p.s_q);
    (heads, (p.b * p.h * l * p.s_kv) as u64)
}

/// The kernel-faithful pattern of every query head (MInference's block conversion, step 7) and
/// the pairs the estimation scored (`L · S_kv` per head).
///
/// # Errors
/// Only if the pattern fails validation (a bug).
pub fn pattern(
    c: &VerticalSlash,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    par: Par,
) -> Result<(BlockList, u64)> {
    let bs = c.block;
    let (sel, pairs) = selection(c, p, inputs, params, par);
    let mut heads = Vec::with_capacity(sel.len());
    for (v, s) in &sel {
        let mut hl = HeadList::new();
        for qb in 0..p.s_q.div_ceil(bs) {
            let last = (qb * bs + bs).min(p.s_q) - 1;
            let (blocks, cols) = convert(bs, p.s_kv, params.position(last) + 1, v, s);
            hl.push(&blocks, &cols);
        }
        heads.push(hl);
    }
    Ok((BlockList::new(bs, bs, p.s_q, p.s_kv, heads)?, pairs))
}

/// The element-wise pattern of every query head (spec §2.2 step 6: `j ∈ V` or `p − j ∈ S`, no
/// block expansion) and the pairs the estimation scored.
///
/// # Errors
/// Only if the pattern fails validation (a bug).
pub fn diag_pattern(
    c: &VerticalSlash,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    par: Par,
) -> Result<(DiagList, u64)> {
    let (sel, pairs) = selection(c, p, inputs, params, par);
    let heads =
        sel.into_iter().map(|(columns, diagonals)| DiagHead { diagonals, columns }).collect();
    Ok((DiagList::new(p.s_q, p.s_kv, heads)?, pairs))
}
