//! Tiled exact attention with online softmax (FlashAttention's forward pass, for CPUs).
//!
//! Work is cut into tiles of [`BR`] stacked query rows (all `g` query heads that share a key/value
//! head, position-major; see `tile::RowMap`) and [`BC`] keys. For each query tile, a worker walks the
//! key tiles its rows can see; for each key tile it
//! 1. computes `S = Q Kᵀ` panel by panel, every block of `MR` rows against the packed key panel in
//!    registers (`MR × NV` vectors), skipping the panels no row of the block can see;
//! 2. applies softcap / ALiBi / the mask (only on blocks that straddle the mask's edge) and runs the
//!    shared online-softmax step per row, turning `S` into `P` and producing the rescale factor `α`;
//! 3. updates the accumulator `O ← diag(α)·O + P·V` chunk by chunk of value columns.
//!
//! Memory: keys are packed once per key/value head into panels `[D][W]` (`W = NV·lanes` keys) so
//! that one vector load gives `W` consecutive keys of one dimension; values are packed per key tile
//! into contiguous column chunks. Heads are processed in groups whose packed copies fit
//! [`PACK_BUDGET`]; per worker, scratch holds one query tile, its accumulator and one `BR × BC`
//! score tile. Everything is allocated (from the scratch pool) before the parallel phase; the tile
//! loop allocates nothing.
//!
//! Threads: tiles of a head group are handed out through an atomic counter, head by head (workers
//! share that head's K/V in cache) and longest first within a head (for causal masks the last query
//! tiles see the most keys), to at most `Par::threads()` workers.

use super::tile::{
    self, fix_scores, mask_scores, round_up, Bounds, Cover, RowMap, ScoreFix, SharedMut,
};
use crate::dispatch::{Capabilities, Exactness, Inputs, Method, OutputMut, Stats};
use crate::error::Result;
use crate::memory::Scratch;
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::online_softmax::RowState;
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::problem::Problem;
use crate::tensor::{Data, TensorRef};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Keys per tile: a multiple of every level's panel width; panels of every level divide it.
pub const BC: usize = 128;
/// Query rows per tile: a multiple of every level's `MR`; large enough that each key tile loaded
/// from L2/L3 serves many rows, small enough that the accumulator (`BR × D_v`) stays in L2.
pub const BR: usize = 96;
/// Row blocks per query tile at the smallest `MR`.
const MAX_BLOCKS: usize = BR / 4;
/// Largest packed K/V copy held at once (bytes); heads are processed in groups that fit it.
pub const PACK_BUDGET: usize = 64 << 20;

/// `sdpa-flash`.
#[derive(Debug, Clone, Copy)]
pub struct Flash;

impl Method for Flash {
    fn name(&self) -> &'static str {
        "sdpa-flash"
    }
    fn family(&self) -> &'static str {
        "sdpa"
    }
    fn description(&self) -> &'static str {
        "exact softmax attention: tiled online softmax, packed K, SIMD at run time, threads over query tiles"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn capabilities(&self) -> Capabilities {
        super::capabilities(1024, None, 0)
    }
    fn scratch_bytes(&self, p: &Problem, _: &Resolved, par: Par) -> usize {
        Plan::new(p, Level::current(), par).scratch_bytes()
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

/// Bytes of scratch [`forward_at`] allocates at the current SIMD level.
pub fn scratch_bytes(p: &Problem, par: Par) -> usize {
    Plan::new(p, Level::current(), par).scratch_bytes()
}

/// Register blocking per level: `(MR rows, NV vectors)`; `MR·NV` accumulators plus `NV` loads and
/// one broadcast fit the register file (32 zmm, 16 ymm).
const fn blocking(level: Level) -> (usize, usize) {
    match level {
        Level::Avx512 => (6, 4),
        Level::Avx2 => (6, 2),
        Level::Scalar => (4, 4),
    }
}

/// Sizes of one call.
struct Plan {
    lanes: usize,
    dv_pad: usize,
    s_kv_pad: usize,
    heads_per_group: usize,
    threads: usize,
    d: usize,
}

impl Plan {
    fn new(p: &Problem, level: Level, par: Par) -> Self {
        let level = level.min(Level::detected());
        let lanes = match level {
            Level::Avx512 => 16,
            Level::Avx2 => 8,
            Level::Scalar => 1,
        };
        let dv_pad = round_up(p.d_v, lanes);
        let s_kv_pad = round_up(p.s_kv, BC);
        let per_head = 4 * s_kv_pad * (p.d + dv_pad);
        let heads = p.b * p.h_kv;
        let heads_per_group = (PACK_BUDGET / per_head.max(1)).clamp(1, heads);
        Self { lanes, dv_pad, s_kv_pad, heads_per_group, threads: par.threads(), d: p.d }
    }

    fn worker_floats(&self) -> usize {
        BR * self.d + BR * self.dv_pad + BR * BC + BR + BR * self.lanes
    }

    fn scratch_bytes(&self) -> usize {
        let per_head = self.s_kv_pad * (self.d + self.dv_pad);
        4 * (self.heads_per_group * per_head + self.threads * self.worker_floats())
            + self.threads * BR * 8
    }
}

/// Per-worker scratch.
struct Worker {
    q: Scratch,           // [BR/MR, D, MR] packed query tile
    qrow: Vec<f32>,       // [D]          one query row being packed
    o: Scratch,           // [BR, dv_pad] unnormalised accumulator
    s: Scratch,           // [BR, BC]     scores, then probabilities, of one key tile
    rmax: Scratch,        // [BR, lanes]  lane-wise maximum of each row's raw scores in the tile
    alpha: Vec<f32>,      // [BR]         rescale factor of each row for the current key tile
    state: Vec<RowState>, // [BR]
}

/// What every worker of one head group shares.
struct Shared<'a> {
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    params: &'a Resolved,
    group: &'a [(usize, usize)],
    kpack: &'a [f32],
    vpack: &'a [f32],
    vdirect: Option<&'a [f32]>,
    k_len: usize,
    v_len: usize,
    dv_pad: usize,
    ntiles: usize,
    rows: usize,
    qmul: f32,
    next: AtomicUsize,
    o_out: SharedMut<f32>,
    lse_out: SharedMut<f32>,
}

/// One worker's loop over the group's query tiles. Entered through [`dispatch`] by each worker
/// (a closure run by rayon does not inherit the caller's target features, so every worker enters
/// the SIMD level itself).
struct WorkerLoop<'a, 'b> {
    sh: &'a Shared<'b>,
    wk: &'a mut Worker,
}

impl Kernel for WorkerLoop<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        match S::LEVEL {
            Level::Avx512 => worker_loop::<S, 6, 4, 2>(self.sh, self.wk),
            Level::Avx2 => worker_loop::<S, 6, 2, 1>(self.sh, self.wk),
            Level::Scalar => worker_loop::<S, 4, 4, 2>(self.sh, self.wk),
        }
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
    let level = level.min(Level::detected());
    let plan = Plan::new(p, level, par);
    let (d, dv_pad) = (p.d, plan.dv_pad);
    let nv = blocking(level).1;
    let w = nv * plan.lanes; // keys per panel
    let rows = tile::rows_per_head(p);
    let ntiles = rows.div_ceil(BR);
    let heads: Vec<(usize, usize)> =
        (0..p.b).flat_map(|b| (0..p.h_kv).map(move |hk| (b, hk))).collect();
    let k_len = plan.s_kv_pad * d;
    let v_len = plan.s_kv_pad * dv_pad;
    let mut kpack = Scratch::take(plan.heads_per_group * k_len);
    // Values that are f32 rows of exactly one chunk, stored contiguously, already have the packed
    // layout ([S_kv][w], the chunk of every tile at offset j0·D_v): P·V reads them in place.
    let vdirect = match inputs.v.data() {
        Data::F32(x)
            if inputs.v.strides()[3] == 1 && inputs.v.strides()[2] == p.d_v && p.d_v == w =>
        {
            Some(x)
        }
        _ => None,
    };
    let mut vpack = Scratch::take(if vdirect.is_some() { 0 } else { plan.heads_per_group * v_len });
    let workers: Vec<Mutex<Worker>> = (0..plan.threads)
        .map(|_| {
            Mutex::new(Worker {
                q: Scratch::take(BR * d),
                qrow: vec![0.0; d],
                o: Scratch::take(BR * dv_pad),
                s: Scratch::take(BR * BC),
                rmax: Scratch::take(BR * plan.lanes),
                alpha: vec![1.0; BR],
                state: vec![RowState::EMPTY; BR],
            })
        })
        .collect();
    let o_out = SharedMut(out.o.as_mut_ptr());
    let lse_out = SharedMut(out.lse.as_mut_ptr());

    for group in heads.chunks(plan.heads_per_group) {
        // Phase 1: pack K (and V if needed) of the group's heads, one key tile per job.
        let tiles_kv = plan.s_kv_pad / BC;
        let kp = SharedMut(kpack.as_mut_ptr());
        let vp = SharedMut(vpack.as_mut_ptr());
        let njobs = group.len() * tiles_kv;
        let next = AtomicUsize::new(0);
        par.run(plan.threads.min(njobs), |_| {
            let mut row = vec![0.0f32; 16 * d];
            let mut vrow = vec![0.0f32; dv_pad];
            loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                if job >= njobs {
                    break;
                }
                let (gi, kt) = (job / tiles_kv, job % tiles_kv);
                let (b, hk) = group[gi];
                // SAFETY: job (gi, kt) owns keys [kt·BC, (kt+1)·BC) of head gi in both packs.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(kp.get().add(gi * k_len + kt * BC * d), BC * d)
                };
                pack_k_tile(&inputs.k, b, hk, kt * BC, w, &mut row, dst);
                if vdirect.is_some() {
                    continue;
                }
                // SAFETY: as above, for V.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        vp.get().add(gi * v_len + kt * BC * dv_pad),
                        BC * dv_pad,
                    )
                };
                pack_v_tile(&inputs.v, b, hk, kt * BC, nv * plan.lanes, &mut vrow, dst);
            }
        });

        // Phase 2: query tiles of the group, head by head, longest first.
        let sh = Shared {
            p,
            inputs,
            params,
            group,
            kpack: &kpack,
            vpack: &vpack,
            vdirect,
            k_len,
            v_len,
            dv_pad,
            ntiles,
            rows,
            qmul: tile::q_multiplier(params),
            next: AtomicUsize::new(0),
            o_out,
            lse_out,
        };
        let njobs = group.len() * ntiles;
        par.run(plan.threads.min(njobs), |wi| {
            let mut wk = workers[wi].lock().unwrap_or_else(|e| e.into_inner());
            dispatch(level, WorkerLoop { sh: &sh, wk: &mut wk });
        });
    }
}

#[inline(always)]
/// `NH = NV / 2`: the vectors of a half panel (see [`tile_forward`]).
fn worker_loop<S: Simd, const MR: usize, const NV: usize, const NH: usize>(
    sh: &Shared,
    wk: &mut Worker,
) {
    let p = sh.p;
    let dv = p.d_v;
    let map = RowMap { g: p.group() };
    let njobs = sh.group.len() * sh.ntiles;
    loop {
        let job = sh.next.fetch_add(1, Ordering::Relaxed);
        if job >= njobs {
            break;
        }
        // Head-major, so concurrent workers share one head's K/V in cache; longest tile first.
        let gi = job / sh.ntiles;
        let t = sh.ntiles - 1 - job % sh.ntiles;
        let (b, hk) = sh.group[gi];
        let ctx = TileCtx {
            p,
            params: sh.params,
            q: &sh.inputs.q,
            b,
            hk,
            map,
            kpack: &sh.kpack[gi * sh.k_len..(gi + 1) * sh.k_len],
            vpack: match sh.vdirect {
                Some(x) => {
                    let o = sh.inputs.v.offset(b, hk, 0, 0);
                    &x[o..o + p.s_kv * dv]
                }
                None => &sh.vpack[gi * sh.v_len..(gi + 1) * sh.v_len],
            },
            dv_pad: sh.dv_pad,
            qmul: sh.qmul,
        };
        let (r0, nrows) = (t * BR, BR.min(sh.rows - t * BR));
        tile_forward::<S, MR, NV, NH>(&ctx, r0, nrows, wk);
        // Write the finished rows. SAFETY: row (b, h, i) belongs to this tile alone.
        for r in 0..nrows {
            let (i, h) = map.row(hk, r0 + r);
            let orow = (b * p.h + h) * p.s_q + i;
            let (inv, lse) = wk.state[r].finish();
            unsafe {
                *sh.lse_out.get().add(orow) = lse;
                let dst = std::slice::from_raw_parts_mut(sh.o_out.get().add(orow * dv), dv);
                for (x, a) in dst.iter_mut().zip(&wk.o[r * sh.dv_pad..r * sh.dv_pad + dv]) {
                    *x = a * inv;
                }
            }
        }
    }
}
struct TileCtx<'a> {
    p: &'a Problem,
    params: &'a Resolved,
    q: &'a TensorRef<'a>,
    b: usize,
    hk: usize,
    map: RowMap,
    kpack: &'a [f32],
    vpack: &'a [f32],
    dv_pad: usize,
    qmul: f32,
}

/// One query tile (`nrows` stacked rows from `r0`) against every key tile it can see; leaves the
/// unnormalised accumulator in `wk.o` and the row states in `wk.state`.
#[inline(always)]
fn tile_forward<S: Simd, const MR: usize, const NV: usize, const NH: usize>(
    c: &TileCtx,
    r0: usize,
    nrows: usize,
    wk: &mut Worker,
) {
    let (d, dv_pad) = (c.p.d, c.dv_pad);
    let mask = &c.params.mask;
    let w = NV * S::LANES;
    let nrows_pad = round_up(nrows, MR);
    // Q tile packed block-transposed: block `bi` is `[D][MR]`, so the micro-kernel broadcasts
    // `q[r, d]` from one pointer with constant offsets.
    wk.q[..nrows_pad * d].fill(0.0);
    for r in 0..nrows {
        let (i, h) = c.map.row(c.hk, r0 + r);
        c.q.read_row(c.b, h, i, 1.0, &mut wk.qrow);
        let blk = &mut wk.q[(r / MR) * MR * d..(r / MR + 1) * MR * d];
        for (dd, &x) in wk.qrow.iter().enumerate() {
            blk[dd * MR + r % MR] = x;
        }
    }
    wk.o[..nrows_pad * dv_pad].fill(0.0);
    wk.state[..nrows].fill(RowState::EMPTY);

    // Keys any row of the tile may see: rows are position-major, so positions are contiguous.
    let (i_first, i_last) = (r0 / c.map.g, (r0 + nrows - 1) / c.map.g);
    let (mut lo, mut hi) = (usize::MAX, 0);
    for i in i_first..=i_last {
        let (l, h) = mask.interval(&c.params.geometry, c.b, i);
        if l < h {
            lo = lo.min(l);
            hi = hi.max(h);
        }
    }
    if lo >= hi {
        return; // every row fully masked
    }
    // Per row block: the union and the intersection of its rows' key intervals, so that each
    // (row block, key tile) pair is classified in O(1) and computes only the panels it can see.
    let mut bounds = [Bounds::EMPTY; MAX_BLOCKS];
    for (bi, rb) in (0..nrows).step_by(MR).enumerate() {
        let rvalid = MR.min(nrows - rb);
        bounds[bi] =
            Bounds::of(mask, c.params, c.b, (rb..rb + rvalid).map(|r| c.map.row(c.hk, r0 + r).0));
    }
    let dense = mask.has_dense();
    let fixes = c.params.softcap.is_some() || c.params.alibi_slopes.is_some();
    let nblocks = nrows.div_ceil(MR);
    let nvec = dv_pad / S::LANES;
    // Per row block for the current key tile: how it meets the tile, and the keys [klo, khi) of
    // the tile that some row of the block may see.
    let mut seen = [(Cover::Empty, 0usize, 0usize); MAX_BLOCKS];
    for kt in lo / BC..hi.div_ceil(BC) {
        let j0 = kt * BC;
        let ktile = &c.kpack[j0 * d..(j0 + BC) * d];
        for (bi, x) in seen[..nblocks].iter_mut().enumerate() {
            let bd = bounds[bi];
            let cover = bd.cover(j0, j0 + BC, dense);
            *x = if cover == Cover::Empty {
                (cover, 0, 0)
            } else {
                (cover, bd.ulo.max(j0) - j0, bd.uhi.min(j0 + BC) - j0)
            };
        }
        // 1. S = Q Kᵀ: panel-major, so one key panel serves every row block from L1. The
        //    micro-kernel also keeps each row's lane-wise maximum, which spares the softmax step
        //    its first pass on blocks that need no masking.
        wk.rmax[..nrows_pad * S::LANES].fill(f32::NEG_INFINITY);
        for pnl in 0..BC / w {
            let (k0, k1) = (pnl * w, (pnl + 1) * w);
            for (bi, &(cover, klo, khi)) in seen[..nblocks].iter().enumerate() {
                if cover == Cover::Empty || khi <= k0 || klo >= k1 {
                    continue;
                }
                // Where the block sees only one half of the panel (the diagonal of a causal
                // mask, the edge of a window), only that half is computed: the softmax span
                // [a, z) below is lane-aligned and so never reaches into the other half.
                let half = w / 2;
                let (off, n) = if NH > 0 && khi <= k0 + half {
                    (0, NH)
                } else if NH > 0 && klo >= k0 + half {
                    (half, NH)
                } else {
                    (0, NV)
                };
                // SAFETY: q holds nrows_pad ≥ (bi + 1)·MR rows of D; the panel holds D × w
                // floats and off + n·lanes ≤ w; s holds BR rows of BC.
                unsafe {
                    let (q, k) =
                        (wk.q[bi * MR * d..].as_ptr(), ktile[pnl * d * w + off..].as_ptr());
                    let s = wk.s[bi * MR * BC + k0 + off..].as_mut_ptr();
                    let rmax = wk.rmax[bi * MR * S::LANES..].as_mut_ptr();
                    if n == NV {
                        s_panel::<S, MR, NV>(q, d, k, w, s, rmax)
                    } else {
                        s_panel::<S, MR, NH>(q, d, k, w, s, rmax)
                    }
                }
            }
        }
        // 2. scores → probabilities, α per row, over the lane-aligned span [a, z) ⊇ [klo, khi)
        //    of the block: keys outside it are invisible to every row and P·V skips them.
        for (bi, &(cover, klo, khi)) in seen[..nblocks].iter().enumerate() {
            if cover == Cover::Empty {
                continue;
            }
            let (a, z) = (klo / S::LANES * S::LANES, khi.div_ceil(S::LANES) * S::LANES);
            for r in bi * MR..(bi + 1) * MR {
                let row = &mut wk.s[r * BC + a..r * BC + z];
                if r >= nrows {
                    row.fill(0.0); // padding rows: P = 0, never written out
                    wk.alpha[r] = 1.0;
                    continue;
                }
                let (i, h) = c.map.row(c.hk, r0 + r);
                if !fixes {
                    // Plain scores: the multiplier is folded into the softmax step (a masked
                    // −∞ stays −∞ under it).
                    wk.alpha[r] = if cover == Cover::Full {
                        // Every panel of the tile was computed: the kept maximum is the row's.
                        unsafe {
                            let m = S::reduce_max(S::load(wk.rmax.as_ptr().add(r * S::LANES)));
                            wk.state[r].update_with_max::<S>(row, c.qmul, m * c.qmul)
                        }
                    } else {
                        mask_scores(row, mask, c.params, c.b, h, i, j0 + a);
                        unsafe { wk.state[r].update::<S>(row, c.qmul) }
                    };
                    continue;
                }
                row.iter_mut().for_each(|x| *x *= c.qmul);
                let fix = ScoreFix {
                    softcap: c.params.softcap,
                    slope2: tile::slope2(c.params, h),
                    pos: c.params.position(i),
                };
                unsafe { fix_scores::<S>(row, j0 + a, fix) };
                if cover == Cover::Partial {
                    mask_scores(row, mask, c.params, c.b, h, i, j0 + a);
                }
                wk.alpha[r] = unsafe { wk.state[r].update::<S>(row, 1.0) };
            }
        }
        // 3. O = diag(α) O + P V: column-chunk-major, so one V chunk serves every row block.
        let mut col = 0;
        while col < nvec {
            let nv = NV.min(nvec - col);
            for (bi, &(cover, klo, khi)) in seen[..nblocks].iter().enumerate() {
                if cover == Cover::Empty {
                    continue;
                }
                let partial = cover == Cover::Partial;
                // SAFETY: o holds nrows_pad rows of dv_pad; V rows j0+klo..j0+khi exist and
                // hold dv_pad floats each; s holds BR rows of BC ≥ khi.
                unsafe {
                    let o = wk.o[bi * MR * dv_pad..].as_mut_ptr();
                    // Packed V chunk `col`: [BC keys][nv·lanes], after `col` full chunks.
                    let vstride = nv * S::LANES;
                    let v = c.vpack.as_ptr().add(j0 * dv_pad + BC * col * S::LANES + klo * vstride);
                    let s = wk.s.as_ptr().add(bi * MR * BC + klo);
                    // After the first tiles the running maxima rarely move (lazy rescaling), so
                    // most blocks skip the multiply by α.
                    let al = if wk.alpha[bi * MR..(bi + 1) * MR].iter().all(|&a| a == 1.0) {
                        std::ptr::null()
                    } else {
                        wk.alpha[bi * MR..].as_ptr()
                    };
                    let nk = khi - klo;
                    let c0 = col * S::LANES;
                    // The zero-weight check compiled in only where the mask cuts the block:
                    // elsewhere the weights are broadcast straight from memory.
                    if partial {
                        pv_vectors::<S, MR, NV, true>(nv, s, al, v, vstride, nk, o, dv_pad, c0);
                    } else {
                        pv_vectors::<S, MR, NV, false>(nv, s, al, v, vstride, nk, o, dv_pad, c0);
                    }
                }
            }
            col += nv;
        }
    }
}

/// `s[r, 0..W] = Σ_d q[d, r] · panel[d, 0..W]` for `MR` rows (`q` block-transposed `[D][MR]`);
/// `W = NV·lanes` keys, panel row stride `ld ≥ W`, `s` row stride `BC`.
/// `rmax[r]` (one vector per row) becomes the lane-wise maximum of itself and the row's scores.
#[inline(always)]
unsafe fn s_panel<S: Simd, const MR: usize, const NV: usize>(
    q: *const f32,
    d: usize,
    k: *const f32,
    ld: usize,
    s: *mut f32,
    rmax: *mut f32,
) {
    unsafe {
        let mut acc = [[S::splat(0.0); NV]; MR];
        for dd in 0..d {
            let kr = k.add(dd * ld);
            let mut kv = [S::splat(0.0); NV];
            for (v, x) in kv.iter_mut().enumerate() {
                *x = S::load(kr.add(v * S::LANES));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let qb = S::splat(*q.add(dd * MR + r));
                for v in 0..NV {
                    a[v] = S::fma(qb, kv[v], a[v]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let mut m = S::load(rmax.add(r * S::LANES));
            for (v, x) in a.iter().enumerate() {
                S::store(s.add(r * BC + v * S::LANES), *x);
                m = S::max(m, *x);
            }
            S::store(rmax.add(r * S::LANES), m);
        }
    }
}

/// [`pv_block`] for `nv ≤ NV` value vectors.
#[allow(clippy::too_many_arguments)] // the pieces of one tile step
#[inline(always)]
unsafe fn pv_vectors<S: Simd, const MR: usize, const NV: usize, const C: bool>(
    nv: usize,
    p: *const f32,
    alpha: *const f32,
    v: *const f32,
    vstride: usize,
    nk: usize,
    o: *mut f32,
    ld_o: usize,
    c: usize,
) {
    unsafe {
        match nv {
            1 => pv_block::<S, MR, 1, C>(p, alpha, v, vstride, nk, o, ld_o, c),
            2 => pv_block::<S, MR, 2, C>(p, alpha, v, vstride, nk, o, ld_o, c),
            3 => pv_block::<S, MR, 3, C>(p, alpha, v, vstride, nk, o, ld_o, c),
            _ => pv_block::<S, MR, NV, C>(p, alpha, v, vstride, nk, o, ld_o, c),
        }
    }
}

/// `o[r, c..c+NV·lanes] = α_r · o[r, ..] + Σ_{j<nk} p[r, j] · v[j, c..]` for `MR` rows
/// (`alpha` null: all `α_r = 1`); `CHECKED` skips keys whose `p` is exactly 0 for a row.
#[allow(clippy::too_many_arguments)] // a register-blocked micro-kernel: raw pointers and strides
#[inline(always)]
unsafe fn pv_block<S: Simd, const MR: usize, const NV: usize, const CHECKED: bool>(
    p: *const f32,
    alpha: *const f32,
    v: *const f32,
    vstride: usize,
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
            let vr = v.add(j * vstride);
            let mut vv = [S::splat(0.0); NV];
            for (vi, x) in vv.iter_mut().enumerate() {
                *x = S::load(vr.add(vi * S::LANES));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let pr = *p.add(r * BC + j);
                // Masked blocks: a key hidden from this row must not touch it, even when its
                // value is NaN/∞ (0·NaN would be NaN), e.g. stale slots of a paged cache.
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

/// Packs keys `[j0, j0 + BC)` of head `(b, hk)` into `BC / w` panels `[D][w]` (zeros past `S_kv`).
///
/// Keys go in groups of 16 (or `w`): each dimension `dd` of the group is gathered from the 16 rows
/// and written as one contiguous run, so stores stream instead of scattering one float per line.
/// `stage` (16·D floats) holds rows converted to f32 when the input is not f32 with unit stride.
fn pack_k_tile(
    k: &TensorRef,
    b: usize,
    hk: usize,
    j0: usize,
    w: usize,
    stage: &mut [f32],
    dst: &mut [f32],
) {
    let [_, _, s_kv, d] = k.shape();
    let nk = BC.min(s_kv.saturating_sub(j0));
    if nk < BC {
        dst.fill(0.0);
    }
    let g = 16.min(w);
    let direct = matches!(k.data(), Data::F32(_)) && k.strides()[3] == 1;
    let mut t0 = 0;
    while t0 < nk {
        let n = g.min(nk - t0);
        if !direct {
            for l in 0..n {
                k.read_row(b, hk, j0 + t0 + l, 1.0, &mut stage[l * d..(l + 1) * d]);
            }
        }
        let mut srcs: [&[f32]; 16] = [&[]; 16];
        for (l, src) in srcs.iter_mut().enumerate().take(n) {
            *src = if direct {
                k.row_f32(b, hk, j0 + t0 + l).unwrap_or(&[])
            } else {
                &stage[l * d..(l + 1) * d]
            };
        }
        let panel = &mut dst[(t0 / w) * d * w..(t0 / w + 1) * d * w];
        let lane0 = t0 % w;
        for dd in 0..d {
            let out = &mut panel[dd * w + lane0..dd * w + lane0 + n];
            for (o, src) in out.iter_mut().zip(&srcs[..n]) {
                *o = src[dd];
            }
        }
        t0 += n;
    }
}

/// Packs values `[j0, j0 + BC)` of head `(b, hk)` chunk-major: chunk `c` (columns
/// `[c·w, c·w + w_c)`, `w_c = min(w, dv_pad − c·w)`) is `[BC][w_c]` at offset `BC·c·w`, so the P·V
/// micro-kernel streams one contiguous block per chunk. Zeros past `S_kv` and `D_v`.
fn pack_v_tile(
    v: &TensorRef,
    b: usize,
    hk: usize,
    j0: usize,
    w: usize,
    row: &mut [f32],
    dst: &mut [f32],
) {
    let [_, _, s_kv, dv] = v.shape();
    let dv_pad = row.len();
    let nk = BC.min(s_kv.saturating_sub(j0));
    if nk < BC {
        dst.fill(0.0);
    }
    row[dv..].fill(0.0);
    let direct = dv == dv_pad && matches!(v.data(), Data::F32(_)) && v.strides()[3] == 1;
    for t in 0..nk {
        let src: &[f32] = match v.row_f32(b, hk, j0 + t) {
            Some(r) if direct => r,
            _ => {
                v.read_row(b, hk, j0 + t, 1.0, &mut row[..dv]);
                row
            }
        };
        let mut c0 = 0;
        while c0 < dv_pad {
            let wc = w.min(dv_pad - c0);
            dst[BC * c0 + t * wc..BC * c0 + (t + 1) * wc].copy_from_slice(&src[c0..c0 + wc]);
            c0 += wc;
        }
    }
}
