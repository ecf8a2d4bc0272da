//! Decode: few query rows over many keys ("flash-decoding", split-KV).
//!
//! With `S_q·g` small, tiling over queries leaves threads idle and K/V are read once anyway: the
//! cost is memory bandwidth. So the keys of each key/value head are cut into chunks, one job per
//! (head, chunk); a job streams its keys once, computing every stacked query row against each key
//! (dot products over D) and running the shared online-softmax step per block of [`BLOCK`] keys.
//! Each job leaves a partial `(m, l, A)` per row; a final pass merges the partials of a row with
//! `RowState::merge` (the LSE merge) and normalises.

use super::tile::{self, fix_scores, mask_scores, Bounds, Cover, RowMap, ScoreFix, SharedMut};
use crate::dispatch::{Capabilities, Exactness, Inputs, Method, OutputMut, Stats};
use crate::error::Result;
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::online_softmax::RowState;
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::problem::Problem;
use crate::tensor::TensorRef;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most stacked query rows (`S_q·H/H_kv`) per key/value head this path accepts.
pub const MAX_ROWS: usize = 16;
/// Fewest keys for which splitting pays off; below it `sdpa-flash` is as fast.
pub const MIN_KV: usize = 256;
/// Keys per online-softmax step.
pub const BLOCK: usize = 64;
/// Smallest key chunk per job (bounds the merge work and per-job overhead).
const MIN_CHUNK: usize = 512;

/// `sdpa-decode`.
#[derive(Debug, Clone, Copy)]
pub struct Decode;

impl Method for Decode {
    fn name(&self) -> &'static str {
        "sdpa-decode"
    }
    fn family(&self) -> &'static str {
        "sdpa"
    }
    fn description(&self) -> &'static str {
        "exact softmax attention for decoding: keys split across threads, partials merged by LSE"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn capabilities(&self) -> Capabilities {
        super::capabilities(1024, Some(MAX_ROWS), MIN_KV)
    }
    fn scratch_bytes(&self, p: &Problem, _: &Resolved, par: Par) -> usize {
        let plan = Plan::new(p, par);
        let rows = tile::rows_per_head(p);
        let partials = p.b * p.h_kv * plan.chunks * rows * (p.d_v + 2);
        let worker = rows * p.d + BLOCK * (p.d + p.d_v) + rows * BLOCK;
        4 * (partials + plan.threads * worker)
    }
    fn forward(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        forward_at(Level::current(), p, inputs, params, par, out);
        Ok(Stats::exact(params))
    }
}

/// Runs the kernel at a given SIMD level (clamped to the CPU's).
pub fn forward_at(
    level: Level,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    par: Par,
    out: OutputMut,
) {
    run(level.min(Level::detected()), p, inputs, params, par, out);
}

struct Plan {
    threads: usize,
    chunk: usize,
    chunks: usize,
}

impl Plan {
    fn new(p: &Problem, par: Par) -> Self {
        let threads = par.threads();
        let heads = p.b * p.h_kv;
        // Enough jobs for every thread (×4 for balance), chunks a multiple of BLOCK.
        let want_chunks = (4 * threads).div_ceil(heads).max(1);
        let chunk = tile::round_up(p.s_kv.div_ceil(want_chunks).max(MIN_CHUNK), BLOCK);
        Self { threads, chunk, chunks: p.s_kv.div_ceil(chunk) }
    }
}

/// Splits the keys into jobs, runs them on the workers (each enters the SIMD level itself) and
/// merges the partials.
fn run(level: Level, p: &Problem, inputs: &Inputs, params: &Resolved, par: Par, out: OutputMut) {
    let plan = Plan::new(p, par);
    let rows = tile::rows_per_head(p);
    let (d, dv) = (p.d, p.d_v);
    let map = RowMap { g: p.group() };
    let heads = p.b * p.h_kv;
    let njobs = heads * plan.chunks;
    // Partials per (head, chunk, row): accumulator [dv] and state.
    let mut acc = vec![0.0f32; njobs * rows * dv];
    let mut states = vec![RowState::EMPTY; njobs * rows];
    let accp = SharedMut(acc.as_mut_ptr());
    let stp = SharedMut(states.as_mut_ptr());
    let qmul = tile::q_multiplier(params);
    let next = AtomicUsize::new(0);
    par.run(plan.threads.min(njobs), |_| {
        let mut q = vec![0.0f32; rows * d];
        let mut kbuf = vec![0.0f32; d];
        let mut vbuf = vec![0.0f32; dv];
        let mut s = vec![0.0f32; rows * BLOCK];
        loop {
            let job = next.fetch_add(1, Ordering::Relaxed);
            if job >= njobs {
                break;
            }
            let (head, chunk) = (job / plan.chunks, job % plan.chunks);
            let (b, hk) = (head / p.h_kv, head % p.h_kv);
            for r in 0..rows {
                let (i, h) = map.row(hk, r);
                inputs.q.read_row(b, h, i, qmul, &mut q[r * d..(r + 1) * d]);
            }
            // SAFETY: job owns its partial slots.
            let (a, st) = unsafe {
                (
                    std::slice::from_raw_parts_mut(accp.get().add(job * rows * dv), rows * dv),
                    std::slice::from_raw_parts_mut(stp.get().add(job * rows), rows),
                )
            };
            let k0 = chunk * plan.chunk;
            let k1 = (k0 + plan.chunk).min(p.s_kv);
            let job = Job { p, params, k: &inputs.k, v: &inputs.v, b, hk, map, rows, q: &q };
            // A closure run by rayon does not inherit target features: enter the level here.
            let bufs = Bufs { kbuf: &mut kbuf, vbuf: &mut vbuf, s: &mut s, acc: a, st };
            dispatch(level, JobRun { job, k0, k1, bufs });
        }
    });
    // Merge the chunks of every row and normalise.
    let (o_out, lse_out) = (out.o, out.lse);
    for head in 0..heads {
        let (b, hk) = (head / p.h_kv, head % p.h_kv);
        for r in 0..rows {
            let (i, h) = map.row(hk, r);
            let orow = (b * p.h + h) * p.s_q + i;
            let dst = &mut o_out[orow * dv..(orow + 1) * dv];
            let first = head * plan.chunks;
            let mut state = states[first * rows + r];
            dst.copy_from_slice(&acc[(first * rows + r) * dv..(first * rows + r + 1) * dv]);
            for c in 1..plan.chunks {
                let slot = (first + c) * rows + r;
                let (fa, fb) = state.merge(states[slot]);
                for (x, y) in dst.iter_mut().zip(&acc[slot * dv..(slot + 1) * dv]) {
                    *x = fa * *x + fb * y;
                }
            }
            let (inv, lse) = state.finish();
            dst.iter_mut().for_each(|x| *x *= inv);
            lse_out[orow] = lse;
        }
    }
}

/// Scratch and partial-result slots of one job.
struct Bufs<'a> {
    kbuf: &'a mut [f32],
    vbuf: &'a mut [f32],
    s: &'a mut [f32],
    acc: &'a mut [f32],
    st: &'a mut [RowState],
}

struct JobRun<'a> {
    job: Job<'a>,
    k0: usize,
    k1: usize,
    bufs: Bufs<'a>,
}

impl Kernel for JobRun<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        self.job.run::<S>(self.k0, self.k1, self.bufs);
    }
}

struct Job<'a> {
    p: &'a Problem,
    params: &'a Resolved,
    k: &'a TensorRef<'a>,
    v: &'a TensorRef<'a>,
    b: usize,
    hk: usize,
    map: RowMap,
    rows: usize,
    q: &'a [f32],
}

impl Job<'_> {
    /// Streams keys `[k0, k1)` for every row, leaving unnormalised partials in `acc`/`st`.
    #[inline(always)]
    fn run<S: Simd>(&self, k0: usize, k1: usize, bufs: Bufs) {
        let Bufs { kbuf, vbuf, s, acc, st } = bufs;
        let (d, dv, rows) = (self.p.d, self.p.d_v, self.rows);
        let mask = &self.params.mask;
        acc.fill(0.0);
        st.fill(RowState::EMPTY);
        let bounds =
            Bounds::of(mask, self.params, self.b, (0..rows).map(|r| self.map.row(self.hk, r).0));
        let dense = mask.has_dense();
        for j0 in (k0..k1).step_by(BLOCK) {
            let nk = BLOCK.min(k1 - j0);
            let cover = bounds.cover(j0, j0 + nk, dense);
            if cover == Cover::Empty {
                continue;
            }
            // Scores of every row against the block's keys.
            for t in 0..nk {
                prefetch_row(self.k, self.b, self.hk, j0 + t + PREFETCH, k1);
                let kr = match self.k.row_f32(self.b, self.hk, j0 + t) {
                    Some(r) => r,
                    None => {
                        self.k.read_row(self.b, self.hk, j0 + t, 1.0, kbuf);
                        &*kbuf
                    }
                };
                for r in 0..rows {
                    s[r * BLOCK + t] = unsafe { dot::<S>(&self.q[r * d..(r + 1) * d], kr) };
                }
            }
            for r in 0..rows {
                let row = &mut s[r * BLOCK..(r + 1) * BLOCK];
                row[nk..].fill(f32::NEG_INFINITY);
                let (i, h) = self.map.row(self.hk, r);
                if self.params.softcap.is_some() || self.params.alibi_slopes.is_some() {
                    let fix = ScoreFix {
                        softcap: self.params.softcap,
                        slope2: tile::slope2(self.params, h),
                        pos: self.params.position(i),
                    };
                    unsafe { fix_scores::<S>(row, j0, fix) };
                    row[nk..].fill(f32::NEG_INFINITY);
                }
                if cover == Cover::Partial {
                    mask_scores(&mut row[..nk], mask, self.params, self.b, h, i, j0);
                }
                let alpha = unsafe { st[r].update::<S>(row, 1.0) };
                if alpha != 1.0 {
                    acc[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= alpha);
                }
            }
            // Accumulate P·V.
            for t in 0..nk {
                prefetch_row(self.v, self.b, self.hk, j0 + t + PREFETCH, k1);
                let vr = match self.v.row_f32(self.b, self.hk, j0 + t) {
                    Some(r) => r,
                    None => {
                        self.v.read_row(self.b, self.hk, j0 + t, 1.0, vbuf);
                        &*vbuf
                    }
                };
                for r in 0..rows {
                    let pw = s[r * BLOCK + t];
                    if pw != 0.0 {
                        unsafe { axpy::<S>(pw, vr, &mut acc[r * dv..(r + 1) * dv]) };
                    }
                }
            }
        }
    }
}

/// Rows ahead of the current one whose cache lines are requested early (see [`prefetch_row`]).
const PREFETCH: usize = 16;

/// Asks the cache for row `j` of head `(b, h)` (f32 rows only; nothing past `end`). The two key
/// and value streams are read once, a row per step, with a few dot products per row in between:
/// the hardware prefetcher alone left the single-thread loop waiting on memory.
#[inline(always)]
fn prefetch_row(t: &TensorRef, b: usize, h: usize, j: usize, end: usize) {
    #[cfg(target_arch = "x86_64")]
    if j < end {
        if let Some(row) = t.row_f32(b, h, j) {
            let (p, bytes) = (row.as_ptr().cast::<i8>(), std::mem::size_of_val(row));
            let mut off = 0;
            while off < bytes {
                // SAFETY: prefetch is a hint (SSE, part of x86_64); the address is inside `row`.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        p.add(off),
                    )
                };
                off += 64;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (t, b, h, j, end);
}

/// `Σ a_i b_i` (vector body, scalar tail).
#[inline(always)]
unsafe fn dot<S: Simd>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let body = n - n % S::LANES;
    unsafe {
        let (mut s0, mut s1) = (S::splat(0.0), S::splat(0.0));
        let mut i = 0;
        while i + 2 * S::LANES <= body {
            s0 = S::fma(S::load(a.as_ptr().add(i)), S::load(b.as_ptr().add(i)), s0);
            s1 = S::fma(
                S::load(a.as_ptr().add(i + S::LANES)),
                S::load(b.as_ptr().add(i + S::LANES)),
                s1,
            );
            i += 2 * S::LANES;
        }
        if i < body {
            s0 = S::fma(S::load(a.as_ptr().add(i)), S::load(b.as_ptr().add(i)), s0);
        }
        let mut s = S::reduce_sum(S::add(s0, s1));
        for t in body..n {
            s += a[t] * b[t];
        }
        s
    }
}

/// `y += a · x` (vector body, scalar tail).
#[inline(always)]
unsafe fn axpy<S: Simd>(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let body = n - n % S::LANES;
    unsafe {
        let va = S::splat(a);
        let mut i = 0;
        while i < body {
            let p = y.as_mut_ptr().add(i);
            S::store(p, S::fma(va, S::load(x.as_ptr().add(i)), S::load(p)));
            i += S::LANES;
        }
    }
    for t in body..n {
        y[t] += a * x[t];
    }
}
