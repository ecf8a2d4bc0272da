//! Tiled sparse attention over a [`BlockList`]: the online-softmax recurrence of `sdpa::flash`,
//! driven by key lists instead of a key range.
//!
//! Per key/value head, K is packed once transposed (`Kᵀ: [D][ldk]`, zero past `S_kv`) and V once
//! row-major (`[ldk][dv_pad]`), so a key chunk starting at *any* key is a strided panel of `Kᵀ`
//! (key blocks of MInference's conversion start anywhere) and a contiguous run of V rows. Columns
//! are gathered [`CHUNK`] at a time into a small panel of the same shape, each key with one
//! contiguous read: from the caller's K row when K is f32 with unit stride along D, else from a
//! row-major copy of K that patterns of one query row per block (SEA's per-row lists, which
//! gather the most) get; other layouts read one `Kᵀ` line per dimension. Those patterns also run
//! a one-row micro-block. Patterns of several rows per block also get each query head's distinct
//! columns packed once per call (`ColPanel`): a chunk of columns that is a run of that set (the
//! vertical columns most query blocks of vertical-slash share) is read in place, not gathered.
//! A chunk shorter than
//! [`CHUNK`] scores and exponentiates only the vectors that hold its keys.
//!
//! A job is one (query head, query block): its `bm` rows are packed block-transposed (`MR` rows
//! per micro-block), then for each chunk of keys
//! 1. `S = Q Kᵀ` in registers (`MR × NV` vectors per step);
//! 2. keys outside a row's mask interval (or past the chunk) become `−∞`; the shared
//!    online-softmax step turns scores into probabilities and returns the rescale factor `α`;
//! 3. `O ← diag(α)·O + P·V` chunk of value columns by chunk.
//!
//! Jobs go through an atomic counter, last query blocks first (under a causal mask they see the
//! most keys); every worker enters the SIMD level itself. Scratch: packed K/V of one kv head (and
//! its query heads' packed columns) plus per worker a query block, its accumulator, a score tile
//! and a gathered panel.

use super::{union_interval, BlockList, CHUNK};
use crate::dispatch::{Inputs, OutputMut};
use crate::memory::Scratch;
use crate::methods::sdpa::tile::{round_up, SharedMut};
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::online_softmax::{RowState, LOG2_E};
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::problem::Problem;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Register blocking per level: `(MR rows, NV vectors)` (as `sdpa::flash`).
const fn blocking(level: Level) -> (usize, usize) {
    match level {
        Level::Avx512 => (6, 4),
        Level::Avx2 => (6, 2),
        Level::Scalar => (4, 4),
    }
}

const fn lanes(level: Level) -> usize {
    match level {
        Level::Avx512 => 16,
        Level::Avx2 => 8,
        Level::Scalar => 1,
    }
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Plan {
    dv_pad: usize,
    ldk: usize,
    bm_pad: usize,
    threads: usize,
}

impl Plan {
    fn new(p: &Problem, bm: usize, level: Level, par: Par) -> Self {
        let level = level.min(Level::detected());
        Self {
            dv_pad: round_up(p.d_v, lanes(level)),
            // A chunk may start at any key below S_kv and read CHUNK keys.
            ldk: round_up(p.s_kv, CHUNK) + CHUNK,
            bm_pad: round_up(bm, blocking(level).0),
            threads: par.threads(),
        }
    }

    fn worker_floats(&self, d: usize) -> usize {
        self.bm_pad * (d + self.dv_pad + CHUNK + 1) + CHUNK * (d + self.dv_pad)
    }
}

/// Bytes of scratch [`forward`] allocates for `pattern`'s block size.
pub fn scratch_bytes(p: &Problem, bm: usize, par: Par) -> usize {
    let plan = Plan::new(p, bm, Level::current(), par);
    let rows = if bm == 1 { plan.ldk * p.d } else { 0 }; // row-major K for one-row gathers
    4 * (plan.ldk * (p.d + plan.dv_pad) + rows + plan.threads * plan.worker_floats(p.d))
}

/// Per-worker scratch.
struct Worker {
    q: Scratch,              // [bm_pad/MR][D][MR] packed query block
    o: Scratch,              // [bm_pad, dv_pad] unnormalised accumulator
    s: Scratch,              // [bm_pad, CHUNK]  scores, then probabilities, of one chunk
    kg: Scratch,             // [D][CHUNK]       gathered key columns
    vg: Scratch,             // [CHUNK][dv_pad]  gathered value rows
    alpha: Vec<f32>,         // [bm_pad]
    state: Vec<RowState>,    // [bm_pad]
    iv: Vec<(usize, usize)>, // [bm] mask interval of each row
    partial: Vec<bool>,      // [bm_pad] per micro-block: some row masks a key of the chunk
    qrow: Vec<f32>,          // [D]
}

/// What the workers of one kv head share.
struct Shared<'a> {
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    params: &'a Resolved,
    pattern: &'a BlockList,
    b: usize,
    hk: usize,
    kt: &'a [f32],
    vp: &'a [f32],
    /// Row-major K (`[ldk][D]`) when one query row per block gathers columns (empty otherwise):
    /// a gathered key is then one contiguous read instead of one `Kᵀ` line per dimension.
    kr: &'a [f32],
    /// Per query head of the group, its listed columns packed once (blocks of more than one
    /// query row only; see [`ColPanel`]).
    colp: &'a [ColPanel],
    plan: Plan,
    qmul: f32,
    next: AtomicUsize,
    pairs: &'a AtomicU64,
    o_out: SharedMut<f32>,
    lse_out: SharedMut<f32>,
}

/// The distinct columns one query head lists, packed once per call: `Kᵀ` as `[D][ld]` and V as
/// `[cols][dv_pad]`. A chunk of a query block's columns that is a run of consecutive entries of
/// `cols` is read in place from here instead of being gathered (most query blocks list the same
/// vertical columns); other chunks are gathered as before. Same keys, same order: same bits.
struct ColPanel {
    cols: Vec<u32>,
    ld: usize,
    kt: Scratch, // [D][ld], ld ≥ cols + CHUNK (a chunk reads up to CHUNK keys past its start)
    v: Scratch,  // [cols][dv_pad]
}

impl ColPanel {
    /// Packs `cols` of kv head `(b, hk)` from the packed head (`Kᵀ` `[D][ldk]`, V `[ldk][dv_pad]`).
    fn new(cols: Vec<u32>, d: usize, dv_pad: usize, kt: &[f32], ldk: usize, vp: &[f32]) -> Self {
        let ld = round_up(cols.len(), CHUNK) + CHUNK;
        let mut pk = Scratch::take(d * ld);
        let mut pv = Scratch::take(cols.len() * dv_pad);
        for dd in 0..d {
            let (src, dst) = (&kt[dd * ldk..(dd + 1) * ldk], &mut pk[dd * ld..(dd + 1) * ld]);
            for (t, &c) in cols.iter().enumerate() {
                dst[t] = src[c as usize];
            }
            dst[cols.len()..].fill(0.0);
        }
        for (t, &c) in cols.iter().enumerate() {
            let c = c as usize;
            pv[t * dv_pad..(t + 1) * dv_pad].copy_from_slice(&vp[c * dv_pad..(c + 1) * dv_pad]);
        }
        Self { cols, ld, kt: pk, v: pv }
    }

    /// Bytes of the panels of a call whose query heads list at most `cols` distinct columns each.
    fn bytes(p: &Problem, cols: usize, dv_pad: usize) -> usize {
        let cols = cols.min(p.s_kv);
        4 * p.group() * ((round_up(cols, CHUNK) + CHUNK) * p.d + cols * dv_pad)
    }

    /// Where `part` (ascending, a subset of `cols`) starts in the panel, when it is a run of
    /// consecutive entries.
    #[inline]
    fn run_start(&self, part: &[u32]) -> Option<usize> {
        let (first, last) = (*part.first()?, *part.last()?);
        let i0 = self.cols.partition_point(|&c| c < first);
        (self.cols.get(i0 + part.len() - 1) == Some(&last)).then_some(i0)
    }
}

/// Bytes of scratch the packed columns take when each query head of a call lists at most `cols`
/// distinct key columns (patterns of more than one query row per block; add to
/// [`scratch_bytes`]).
pub fn column_panel_bytes(p: &Problem, cols: usize) -> usize {
    let plan = Plan::new(p, 2, Level::current(), Par::Seq);
    ColPanel::bytes(p, cols, plan.dv_pad)
}

/// Sparse attention over `pattern` at the current SIMD level; returns the pairs scored (equal to
/// [`BlockList::scored_pairs`]).
///
/// Scores are `scale · q·k` (no softcap or ALiBi: callers reject them).
///
/// # Panics
/// When the pattern was built for another `B·H`, `S_q` or `S_kv` than the problem.
pub fn forward(
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    pattern: &BlockList,
    par: Par,
    out: OutputMut,
) -> u64 {
    forward_at(Level::current(), p, inputs, params, pattern, par, out)
}

/// [`forward`] at a given SIMD level (clamped to the CPU's).
///
/// # Panics
/// As [`forward`].
pub fn forward_at(
    level: Level,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    pattern: &BlockList,
    par: Par,
    out: OutputMut,
) -> u64 {
    assert_eq!(
        (pattern.heads(), pattern.s_q(), pattern.s_kv()),
        (p.b * p.h, p.s_q, p.s_kv),
        "pattern built for another problem"
    );
    let level = level.min(Level::detected());
    let plan = Plan::new(p, pattern.bm(), level, par);
    let (d, dv_pad, ldk) = (p.d, plan.dv_pad, plan.ldk);
    let mut kt = Scratch::take(d * ldk);
    let mut vp = Scratch::take(ldk * dv_pad);
    let nqb = pattern.query_blocks();
    let rows = pattern.bm() == 1
        && (0..pattern.heads()).any(|bh| (0..nqb).any(|qb| !pattern.head(bh).cols(qb).is_empty()));
    let mut kr = Scratch::take(if rows { ldk * d } else { 0 });
    let workers: Vec<Mutex<Worker>> = (0..plan.threads)
        .map(|_| {
            Mutex::new(Worker {
                q: Scratch::take(plan.bm_pad * d),
                o: Scratch::take(plan.bm_pad * dv_pad),
                s: Scratch::take(plan.bm_pad * CHUNK),
                kg: Scratch::take(d * CHUNK),
                vg: Scratch::take(CHUNK * dv_pad),
                alpha: vec![1.0; plan.bm_pad],
                state: vec![RowState::EMPTY; plan.bm_pad],
                iv: vec![(0, 0); pattern.bm()],
                partial: vec![false; plan.bm_pad],
                qrow: vec![0.0; d],
            })
        })
        .collect();
    let pairs = AtomicU64::new(0);
    let o_out = SharedMut(out.o.as_mut_ptr());
    let lse_out = SharedMut(out.lse.as_mut_ptr());
    for b in 0..p.b {
        for hk in 0..p.h_kv {
            // Only the keys some query head of the group lists are packed (a chunk may read up
            // to CHUNK keys past its start): streaming's sink pass uses its first keys only.
            let key_end = (hk * p.group()..(hk + 1) * p.group())
                .map(|h| pattern.head(b * p.h + h).key_end(pattern.bn()))
                .max()
                .unwrap_or(0)
                .min(p.s_kv);
            let keys = (round_up(key_end, CHUNK) + CHUNK).min(ldk);
            pack(p, inputs, b, hk, &plan, keys, par, &mut kt, &mut vp, &mut kr);
            let colp: Vec<ColPanel> = if pattern.bm() > 1 {
                (hk * p.group()..(hk + 1) * p.group())
                    .map(|h| {
                        let cols = pattern.head(b * p.h + h).distinct_cols(p.s_kv);
                        ColPanel::new(cols, d, dv_pad, &kt, ldk, &vp)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let sh = Shared {
                p,
                inputs,
                params,
                pattern,
                b,
                hk,
                kt: &kt,
                vp: &vp,
                kr: &kr,
                colp: &colp,
                plan,
                qmul: params.scale * LOG2_E,
                next: AtomicUsize::new(0),
                pairs: &pairs,
                o_out,
                lse_out,
            };
            let njobs = p.group() * nqb;
            par.run(plan.threads.min(njobs), |wi| {
                let mut wk = workers[wi].lock().unwrap_or_else(|e| e.into_inner());
                dispatch(level, WorkerLoop { sh: &sh, wk: &mut wk });
            });
        }
    }
    pairs.into_inner()
}

/// Packs keys `0..keys` of kv head `(b, hk)` into `Kᵀ` (`[D][ldk]`) and V (`[ldk][dv_pad]`),
/// zero past `S_kv`, and K row-major (`[ldk][D]`) into `kr` when it is not empty. Keys past
/// `keys` keep whatever the buffers held: the caller never reads them.
#[allow(clippy::too_many_arguments)] // one call site; the pieces of one packing step
fn pack(
    p: &Problem,
    inputs: &Inputs,
    b: usize,
    hk: usize,
    plan: &Plan,
    keys: usize,
    par: Par,
    kt: &mut [f32],
    vp: &mut [f32],
    kr: &mut [f32],
) {
    const KEYS: usize = 256; // keys per packing job
    let (d, dv, dv_pad, ldk) = (p.d, p.d_v, plan.dv_pad, plan.ldk);
    let njobs = keys.div_ceil(KEYS);
    let next = AtomicUsize::new(0);
    let (ktp, vpp) = (SharedMut(kt.as_mut_ptr()), SharedMut(vp.as_mut_ptr()));
    let (krp, with_rows) = (SharedMut(kr.as_mut_ptr()), !kr.is_empty());
    par.run(plan.threads.min(njobs), |_| {
        let mut rows = vec![0.0f32; 16 * d];
        loop {
            let job = next.fetch_add(1, Ordering::Relaxed);
            if job >= njobs {
                break;
            }
            let (j0, j1) = (job * KEYS, ((job + 1) * KEYS).min(keys));
            // SAFETY: job owns keys [j0, j1): columns j0..j1 of every Kᵀ row and rows j0..j1 of V.
            unsafe {
                let mut g0 = j0;
                while g0 < j1 {
                    // 16 keys at a time: each Kᵀ row gets one contiguous run of 16.
                    let n = 16.min(j1 - g0);
                    let real = n.min(p.s_kv.saturating_sub(g0));
                    for l in 0..real {
                        inputs.k.read_row(b, hk, g0 + l, 1.0, &mut rows[l * d..(l + 1) * d]);
                    }
                    for dd in 0..d {
                        let dst = ktp.get().add(dd * ldk + g0);
                        for l in 0..n {
                            *dst.add(l) = if l < real { rows[l * d + dd] } else { 0.0 };
                        }
                    }
                    if with_rows {
                        let dst = std::slice::from_raw_parts_mut(krp.get().add(g0 * d), n * d);
                        dst[..real * d].copy_from_slice(&rows[..real * d]);
                        dst[real * d..].fill(0.0);
                    }
                    for l in 0..n {
                        let dst = std::slice::from_raw_parts_mut(
                            vpp.get().add((g0 + l) * dv_pad),
                            dv_pad,
                        );
                        if l < real {
                            match inputs.v.row_f32(b, hk, g0 + l) {
                                Some(src) => dst[..dv].copy_from_slice(src),
                                None => inputs.v.read_row(b, hk, g0 + l, 1.0, &mut dst[..dv]),
                            }
                            dst[dv..].fill(0.0);
                        } else {
                            dst.fill(0.0);
                        }
                    }
                    g0 += n;
                }
            }
        }
    });
}

struct WorkerLoop<'a, 'b> {
    sh: &'a Shared<'b>,
    wk: &'a mut Worker,
}

impl Kernel for WorkerLoop<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        // One query row per block (per-row key lists, e.g. SEA's): a single-row micro-block, so
        // no padded rows are scored and multiplied (a row's arithmetic is the same either way).
        let one = self.sh.pattern.bm() == 1;
        match (S::LEVEL, one) {
            (Level::Avx512, false) => worker_loop::<S, 6, 4>(self.sh, self.wk),
            (Level::Avx512, true) => worker_loop::<S, 1, 4>(self.sh, self.wk),
            (Level::Avx2, false) => worker_loop::<S, 6, 2>(self.sh, self.wk),
            (Level::Avx2, true) => worker_loop::<S, 1, 2>(self.sh, self.wk),
            (Level::Scalar, false) => worker_loop::<S, 4, 4>(self.sh, self.wk),
            (Level::Scalar, true) => worker_loop::<S, 1, 4>(self.sh, self.wk),
        }
    }
}

/// Where the keys of a chunk come from.
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// Keys `j0..j0 + n`, read in place from the packed head.
    Run(usize),
    /// Gathered columns (ascending) in the worker's panel.
    Cols(&'a [u32]),
}

#[inline(always)]
fn worker_loop<S: Simd, const MR: usize, const NV: usize>(sh: &Shared, wk: &mut Worker) {
    let (p, pat) = (sh.p, sh.pattern);
    let (d, dv, dv_pad, ldk) = (p.d, p.d_v, sh.plan.dv_pad, sh.plan.ldk);
    let (g, nqb, bm, bn) = (p.group(), pat.query_blocks(), pat.bm(), pat.bn());
    let njobs = g * nqb;
    let mut pairs = 0u64;
    loop {
        let job = sh.next.fetch_add(1, Ordering::Relaxed);
        if job >= njobs {
            break;
        }
        let qb = nqb - 1 - job / g; // last query blocks first
        let h = sh.hk * g + job % g;
        let bh = sh.b * p.h + h;
        let (i0, nrows) = (qb * bm, bm.min(p.s_q - qb * bm));
        let nrows_pad = round_up(nrows, MR);
        // Q block, block-transposed: micro-block `mb` is `[D][MR]`.
        wk.q[..nrows_pad * d].fill(0.0);
        for r in 0..nrows {
            sh.inputs.q.read_row(sh.b, h, i0 + r, 1.0, &mut wk.qrow);
            let blk = &mut wk.q[(r / MR) * MR * d..(r / MR + 1) * MR * d];
            for (dd, &x) in wk.qrow.iter().enumerate() {
                blk[dd * MR + r % MR] = x;
            }
        }
        wk.o[..nrows_pad * dv_pad].fill(0.0);
        wk.state[..nrows_pad].fill(RowState::EMPTY);
        for r in 0..nrows {
            wk.iv[r] = sh.params.mask.interval(&sh.params.geometry, sh.b, i0 + r);
        }
        let (ulo, uhi) = union_interval(&sh.params.mask, sh.params, sh.b, i0, nrows);
        let hl = pat.head(bh);
        if ulo < uhi {
            for &start in hl.blocks(qb) {
                let end = (start as usize + bn).min(p.s_kv);
                let mut c0 = start as usize;
                while c0 < end {
                    let c1 = (c0 + CHUNK).min(end);
                    if c1 > ulo && c0 < uhi {
                        pairs += (nrows * (c1 - c0)) as u64;
                        // SAFETY: c0 < S_kv, and Kᵀ rows / V hold ldk ≥ c0 + CHUNK keys.
                        let (k, v) =
                            unsafe { (sh.kt.as_ptr().add(c0), sh.vp.as_ptr().add(c0 * dv_pad)) };
                        chunk::<S, MR, NV>(
                            wk,
                            d,
                            dv_pad,
                            nrows,
                            k,
                            ldk,
                            v,
                            c1 - c0,
                            Keys::Run(c0),
                            sh.qmul,
                        );
                    }
                    c0 = c1;
                }
            }
            let cols = hl.cols(qb);
            let (a, z) = (
                cols.partition_point(|&c| (c as usize) < ulo),
                cols.partition_point(|&c| (c as usize) < uhi),
            );
            let panel = sh.colp.get(job % g);
            for part in cols[a..z].chunks(CHUNK) {
                let n = part.len();
                pairs += (nrows * n) as u64;
                // A run of the head's packed columns is read in place (lanes past `n` hold other
                // columns or zeros; the mask step sets them to −∞ as for a gathered panel); other
                // chunks are gathered into the worker's panel.
                let run = panel.and_then(|pc| Some((pc, pc.run_start(part)?)));
                let (k, ld, v) = if let Some((pc, i0)) = run {
                    // SAFETY: i0 + CHUNK ≤ ld (the panel's rows hold CHUNK keys past its last
                    // column); the V panel holds rows i0..i0 + n.
                    unsafe { (pc.kt.as_ptr().add(i0), pc.ld, pc.v.as_ptr().add(i0 * dv_pad)) }
                } else {
                    // A key is one contiguous read where one exists: the row-major copy, else the
                    // caller's row when K is f32 with unit stride along D (the values the packing
                    // copied); otherwise one `Kᵀ` line per dimension.
                    for (t, &c) in part.iter().enumerate() {
                        let c = c as usize;
                        let row = if sh.kr.is_empty() {
                            sh.inputs.k.row_f32(sh.b, sh.hk, c)
                        } else {
                            Some(&sh.kr[c * d..(c + 1) * d])
                        };
                        match row {
                            Some(src) => {
                                for (dd, &x) in src.iter().enumerate() {
                                    wk.kg[dd * CHUNK + t] = x;
                                }
                            }
                            None => {
                                for dd in 0..d {
                                    wk.kg[dd * CHUNK + t] = sh.kt[dd * ldk + c];
                                }
                            }
                        }
                    }
                    for dd in 0..d {
                        wk.kg[dd * CHUNK + n..(dd + 1) * CHUNK].fill(0.0);
                    }
                    for (t, &c) in part.iter().enumerate() {
                        let c = c as usize;
                        wk.vg[t * dv_pad..(t + 1) * dv_pad]
                            .copy_from_slice(&sh.vp[c * dv_pad..(c + 1) * dv_pad]);
                    }
                    (wk.kg.as_ptr(), CHUNK, wk.vg.as_ptr())
                };
                chunk::<S, MR, NV>(wk, d, dv_pad, nrows, k, ld, v, n, Keys::Cols(part), sh.qmul);
            }
        }
        // Finished rows. SAFETY: row (b, h, i) belongs to this job alone.
        for r in 0..nrows {
            let orow = bh * p.s_q + i0 + r;
            let (inv, lse) = wk.state[r].finish();
            unsafe {
                *sh.lse_out.get().add(orow) = lse;
                let dst = std::slice::from_raw_parts_mut(sh.o_out.get().add(orow * dv), dv);
                for (x, a) in dst.iter_mut().zip(&wk.o[r * dv_pad..r * dv_pad + dv]) {
                    *x = a * inv;
                }
            }
        }
    }
    sh.pairs.fetch_add(pairs, Ordering::Relaxed);
}

/// One chunk of `n ≤ CHUNK` keys against the query block: `k` points at a `[D][ldk]` panel of
/// the chunk's keys, `v` at their `[n][dv_pad]` value rows.
#[allow(clippy::too_many_arguments)] // the pieces of one tile step
#[inline(always)]
fn chunk<S: Simd, const MR: usize, const NV: usize>(
    wk: &mut Worker,
    d: usize,
    dv_pad: usize,
    nrows: usize,
    k: *const f32,
    ldk: usize,
    v: *const f32,
    n: usize,
    keys: Keys,
    qmul: f32,
) {
    let nblocks = nrows.div_ceil(MR);
    // Key vectors holding a key of the chunk: a short chunk (a narrow key block, the last
    // columns) scores and exponentiates only these; lanes past `n` are −∞ below, so the row's
    // maximum and sum are bitwise what the whole chunk gives.
    let nk = n.div_ceil(S::LANES);
    let width = nk * S::LANES;
    // 1. S = Q Kᵀ, every micro-block against the chunk's key vectors, NV at a time. A last
    // micro-block of at most 4 rows (64 = 10·6 + 4) runs a 4-row kernel: no padded row is
    // scored or multiplied (each row's arithmetic is the same in either kernel).
    for mb in 0..nblocks {
        let tail = MR > 4 && nrows - mb * MR <= 4;
        let mut v0 = 0;
        while v0 < nk {
            let nv = NV.min(nk - v0);
            // SAFETY: q holds nblocks·MR·D floats, the panel D rows of ≥ CHUNK keys, s CHUNK
            // floats per row; v0 + nv ≤ CHUNK / LANES.
            unsafe {
                let (q, kp) = (wk.q.as_ptr().add(mb * MR * d), k.add(v0 * S::LANES));
                let sp = wk.s.as_mut_ptr().add(mb * MR * CHUNK + v0 * S::LANES);
                match (tail, nv) {
                    (false, 1) => s_panel::<S, MR, 1, MR>(q, d, kp, ldk, sp),
                    (false, 2) => s_panel::<S, MR, 2, MR>(q, d, kp, ldk, sp),
                    (false, 3) => s_panel::<S, MR, 3, MR>(q, d, kp, ldk, sp),
                    (false, _) => s_panel::<S, MR, NV, MR>(q, d, kp, ldk, sp),
                    (true, 1) => s_panel::<S, 4, 1, MR>(q, d, kp, ldk, sp),
                    (true, 2) => s_panel::<S, 4, 2, MR>(q, d, kp, ldk, sp),
                    (true, 3) => s_panel::<S, 4, 3, MR>(q, d, kp, ldk, sp),
                    (true, _) => s_panel::<S, 4, NV, MR>(q, d, kp, ldk, sp),
                }
            }
            v0 += nv;
        }
    }
    // 2. Mask and the online-softmax step, row by row; `partial[mb]`: some row of the
    // micro-block had a masked key inside the chunk.
    wk.partial[..nblocks].fill(false);
    for r in 0..nrows {
        let (lo, hi) = wk.iv[r];
        // The keys of the chunk visible to this row form one range [a, z) of chunk slots.
        let (a, z) = match keys {
            Keys::Run(j0) => (lo.saturating_sub(j0).min(n), hi.saturating_sub(j0).min(n)),
            Keys::Cols(c) => (
                c.partition_point(|&x| (x as usize) < lo),
                c.partition_point(|&x| (x as usize) < hi),
            ),
        };
        let row = &mut wk.s[r * CHUNK..r * CHUNK + width];
        if a >= z {
            row.fill(f32::NEG_INFINITY);
        } else {
            row[..a].fill(f32::NEG_INFINITY);
            row[z..].fill(f32::NEG_INFINITY);
        }
        if a > 0 || z < n {
            wk.partial[r / MR] = true;
        }
        // SAFETY: called inside the level's dispatch; the row holds `width`, a multiple of LANES.
        wk.alpha[r] = unsafe { wk.state[r].update::<S>(row, qmul) };
    }
    // 3. O = diag(α) O + P V, chunk of value columns by chunk.
    let nvec = dv_pad / S::LANES;
    for mb in 0..nblocks {
        let rows = MR.min(nrows - mb * MR);
        let al = if wk.alpha[mb * MR..mb * MR + rows].iter().all(|&x| x == 1.0) {
            std::ptr::null()
        } else {
            wk.alpha[mb * MR..].as_ptr()
        };
        let mut col = 0;
        while col < nvec {
            let nv = NV.min(nvec - col);
            let c0 = col * S::LANES;
            // SAFETY: o holds nblocks·MR rows of dv_pad; v holds n rows of dv_pad; s holds
            // nblocks·MR rows of CHUNK ≥ n.
            unsafe {
                let o = wk.o.as_mut_ptr().add(mb * MR * dv_pad);
                let s = wk.s.as_ptr().add(mb * MR * CHUNK);
                let tail = MR > 4 && rows <= 4;
                // The zero-weight check compiled in or out: without it the weights are
                // broadcast straight from memory.
                if wk.partial[mb] {
                    pv_blocks::<S, MR, NV, true>(tail, nv, s, al, v, dv_pad, n, o, c0);
                } else {
                    pv_blocks::<S, MR, NV, false>(tail, nv, s, al, v, dv_pad, n, o, c0);
                }
            }
            col += nv;
        }
    }
}

/// [`pv_block`] for `nv` value vectors of one micro-block (`tail`: its last ≤ 4 rows only).
#[allow(clippy::too_many_arguments)] // the pieces of one tile step
#[inline(always)]
unsafe fn pv_blocks<S: Simd, const MR: usize, const NV: usize, const C: bool>(
    tail: bool,
    nv: usize,
    s: *const f32,
    al: *const f32,
    v: *const f32,
    dv_pad: usize,
    n: usize,
    o: *mut f32,
    c0: usize,
) {
    unsafe {
        match (tail, nv) {
            (false, 1) => pv_block::<S, MR, 1, C>(s, al, v, dv_pad, n, o, dv_pad, c0),
            (false, 2) => pv_block::<S, MR, 2, C>(s, al, v, dv_pad, n, o, dv_pad, c0),
            (false, 3) => pv_block::<S, MR, 3, C>(s, al, v, dv_pad, n, o, dv_pad, c0),
            (false, _) => pv_block::<S, MR, NV, C>(s, al, v, dv_pad, n, o, dv_pad, c0),
            (true, 1) => pv_block::<S, 4, 1, C>(s, al, v, dv_pad, n, o, dv_pad, c0),
            (true, 2) => pv_block::<S, 4, 2, C>(s, al, v, dv_pad, n, o, dv_pad, c0),
            (true, 3) => pv_block::<S, 4, 3, C>(s, al, v, dv_pad, n, o, dv_pad, c0),
            (true, _) => pv_block::<S, 4, NV, C>(s, al, v, dv_pad, n, o, dv_pad, c0),
        }
    }
}

/// `s[r, 0..W] = Σ_d q[d, r] · k[d·ldk + 0..W]` for `MR` rows (`q` block-transposed `[D][QS]`,
/// `QS ≥ MR`; `W = NV·lanes`, `s` row stride [`CHUNK`]).
#[inline(always)]
unsafe fn s_panel<S: Simd, const MR: usize, const NV: usize, const QS: usize>(
    q: *const f32,
    d: usize,
    k: *const f32,
    ldk: usize,
    s: *mut f32,
) {
    unsafe {
        let mut acc = [[S::splat(0.0); NV]; MR];
        for dd in 0..d {
            let kr = k.add(dd * ldk);
            let mut kv = [S::splat(0.0); NV];
            for (v, x) in kv.iter_mut().enumerate() {
                *x = S::load(kr.add(v * S::LANES));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let qb = S::splat(*q.add(dd * QS + r));
                for v in 0..NV {
                    a[v] = S::fma(qb, kv[v], a[v]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (v, x) in a.iter().enumerate() {
                S::store(s.add(r * CHUNK + v * S::LANES), *x);
            }
        }
    }
}

/// `o[r, c..c + NV·lanes] = α_r·o[r, ..] + Σ_{j<nk} p[r, j]·v[j·ldv + c..]` for `MR` rows
/// (`alpha` null: all `α_r = 1`; `p` row stride [`CHUNK`]); `CHECKED` skips keys whose `p` is
/// exactly 0 for a row, so a masked key's non-finite value never reaches the row (0·NaN).
#[allow(clippy::too_many_arguments)] // a register-blocked micro-kernel: raw pointers and strides
#[inline(always)]
unsafe fn pv_block<S: Simd, const MR: usize, const NV: usize, const CHECKED: bool>(
    p: *const f32,
    alpha: *const f32,
    v: *const f32,
    ldv: usize,
    nk: usize,
    o: *mut f32,
    ld_o: usize,
    c: usize,
) {
    unsafe {
        let mut acc = [[S::splat(0.0); NV]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            for (vi, x) in a.iter_mut().enumerate() {
                *x = S::load(o.add(r * ld_o + c + vi * S::LANES));
            }
            if !alpha.is_null() {
                let al = S::splat(*alpha.add(r));
                for x in a.iter_mut() {
                    *x = S::mul(*x, al);
                }
            }
        }
        for j in 0..nk {
            let vr = v.add(j * ldv + c);
            let mut vv = [S::splat(0.0); NV];
            for (vi, x) in vv.iter_mut().enumerate() {
                *x = S::load(vr.add(vi * S::LANES));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let pr = *p.add(r * CHUNK + j);
                if CHECKED && pr == 0.0 {
                    continue;
                }
                let pb = S::splat(pr);
                for vi in 0..NV {
                    a[vi] = S::fma(pb, vv[vi], a[vi]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (vi, x) in a.iter().enumerate() {
                S::store(o.add(r * ld_o + c + vi * S::LANES), *x);
            }
        }
    }
}
