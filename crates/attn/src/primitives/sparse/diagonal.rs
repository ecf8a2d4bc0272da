//! Exact softmax attention over **diagonals and columns**, element by element: the support of a
//! query row at position `p` is
//!
//! ```text
//! support(p) = ( { p − δ : δ ∈ Δ }  ∪  C ) ∩ interval_of_mask(p)
//! ```
//!
//! for a sorted set of distances `Δ` and a sorted set of key columns `C` per query head (a key
//! that is both on a listed diagonal and a listed column counts once). This is the element-wise
//! meaning of MInference's Vertical-Slash pattern (spec §2.2 step 6) without the 64-key block
//! expansion of its kernel (step 7): an isolated diagonal costs one key per row, not up to 64.
//!
//! ## The kernel: one SIMD lane per query row
//!
//! The rows of a query block are the lanes of a vector (16 rows with AVX-512, 8 with AVX2, 1 with
//! the scalar level). For a distance `δ`, lane `t` (position `p₀ + t`) needs key `p₀ + t − δ`:
//! the keys of all lanes are **consecutive**, so with K packed in key blocks of 16, each
//! transposed (`[S_kv/16][D][16]`), the score vector of `δ` is `Σ_d Qᵀ[d] · K[p₀ − δ ..][d]` — one vector load and one FMA per `d` for
//! `LANES` pairs, with no horizontal reduction and no block expansion. The same holds for `P·V`
//! with `Vᵀ`. A column `c` is the same key for every lane: its score vector is
//! `Σ_d Qᵀ[d] · broadcast(k_c[d])`. Softmax statistics are per lane, so the online-softmax
//! recurrence runs lane-wise with no reduction across the vector either.
//!
//! A job is one (query head, tile of [`TILE`] rows); the tile's queries, accumulator and
//! statistics are row-contiguous (`[D][SPAN]`), so a lane block may start at any row. Three
//! passes, each ending every (block, group of [`G`] items) with one lane-wise online-softmax step
//! and `O ← diag(α)·O + Σ_g p_g ⊙ values_g`:
//! 1. **columns**, gathered into `[D][G]` panels, broadcast over the lanes;
//! 2. **bands**: a run of at least `RUN_MIN` (8) consecutive distances `[δa, δb]` is, for a block,
//!    the consecutive keys `p₀ − δb ..= p₀ + L − 1 − δa`, read `G` at a time from `Kᵀ`/`Vᵀ` and
//!    broadcast over the lanes (a key outside a lane's band is masked) — cache-friendly like a
//!    dense tile, at most `L − 1` keys per row more than the band;
//! 3. **scattered distances**, one residue class `c = δ mod L` at a time: the lane blocks of
//!    class `c` start at positions `≡ c (mod L)`, so every window `p₀ − δ ..` starts on a 64-byte
//!    line (one line per row of `Kᵀ`/`Vᵀ` with AVX-512). These pairs are memory-bound: a window
//!    serves one (block, distance) only.
//!
//! Items that cross the mask boundary or the end of the rows take a masked path with per-lane
//! validity (a key both on a listed distance and in a column is kept by the distance only);
//! groups invisible to a block are skipped. A band group inside every lane's interval that only
//! crosses the band's edges gets its lane mask from the edges alone (two shifts, no lane loop).
//!
//! Cost: `2·D` flops per lane per item (scores) plus `2·D_v` (values) — the flops of exact
//! attention on exactly the listed pairs. Memory: K and V of one kv head in key blocks, padded by
//! 16 zero keys on each side, plus per worker one tile's queries, accumulator and statistics.

use super::reference;
use crate::dispatch::{Inputs, OutputMut};
use crate::error::{Error, Result};
use crate::memory::Scratch;
use crate::methods::sdpa::tile::SharedMut;
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::online_softmax::LOG2_E;
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::problem::Problem;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Query rows per job.
pub const TILE: usize = 256;
/// Diagonals or columns scored together (register group).
pub const G: usize = 8;
/// Zero keys before and after the packed `Kᵀ` / `Vᵀ` rows: a lane window that overlaps
/// `[0, S_kv)` at all stays inside the buffer.
const PAD: usize = 16;
/// Consecutive distances from which a run is read as a band of consecutive keys (broadcast
/// path, cache-friendly) instead of one window per distance.
const RUN_MIN: usize = 8;
/// Widest lane count of any level.
const MAX_LANES: usize = 16;

/// The support of one query head: distances `δ = p − j` and key columns, both strictly
/// ascending.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiagHead {
    /// Diagonal distances (a row at position `p` reads key `p − δ`).
    pub diagonals: Vec<u32>,
    /// Key columns every row reads (subject to its mask).
    pub columns: Vec<u32>,
}

/// Per query head `(b, h)` (index `b·H + h`) a [`DiagHead`]. See the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagList {
    s_q: usize,
    s_kv: usize,
    heads: Vec<DiagHead>,
}

impl DiagList {
    /// Validates and wraps per-head supports (`B·H` of them, batch-major).
    ///
    /// # Errors
    /// [`Error::InvalidParam`] (`name = "pattern"`) when a list is not strictly ascending, a
    /// column is not below `S_kv`, or `S_kv` does not fit `u32`.
    pub fn new(s_q: usize, s_kv: usize, heads: Vec<DiagHead>) -> Result<Self> {
        let err =
            |detail: String| Error::InvalidParam { op: "DiagList::new", name: "pattern", detail };
        if s_kv > u32::MAX as usize - 2 * PAD {
            return Err(err(format!("S_kv = {s_kv} does not fit u32 key indices")));
        }
        for (hi, h) in heads.iter().enumerate() {
            if h.diagonals.windows(2).any(|w| w[1] <= w[0]) {
                return Err(err(format!("head {hi}: diagonals not strictly ascending")));
            }
            if h.columns.windows(2).any(|w| w[1] <= w[0]) {
                return Err(err(format!("head {hi}: columns not strictly ascending")));
            }
            if h.columns.last().is_some_and(|&c| c as usize >= s_kv) {
                return Err(err(format!("head {hi}: column beyond S_kv = {s_kv}")));
            }
        }
        Ok(Self { s_q, s_kv, heads })
    }

    /// Query heads `B·H`.
    pub fn heads(&self) -> usize {
        self.heads.len()
    }

    /// The support of query head `bh`.
    pub fn head(&self, bh: usize) -> &DiagHead {
        &self.heads[bh]
    }

    /// The keys row `i` of head `bh` attends to, ascending (the mask applied, each key once).
    pub fn support(&self, params: &Resolved, bh: usize, b: usize, i: usize) -> Vec<usize> {
        let (lo, hi) = params.mask.interval(&params.geometry, b, i);
        let p = params.position(i);
        let h = &self.heads[bh];
        let mut keys: Vec<usize> = h
            .diagonals
            .iter()
            .map(|&dl| p - dl as i64)
            .chain(h.columns.iter().map(|&c| c as i64))
            .filter(|&j| j >= lo as i64 && j < hi as i64)
            .map(|j| j as usize)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    fn check(&self, p: &Problem) {
        assert_eq!(
            (self.heads.len(), self.s_q, self.s_kv),
            (p.b * p.h, p.s_q, p.s_kv),
            "pattern built for another problem"
        );
    }
}

/// The specification: plain loops, f64 accumulation, over [`DiagList::support`]. Returns the
/// pairs scored (the support sizes).
///
/// # Panics
/// When the pattern was built for another `B·H`, `S_q` or `S_kv` than the problem.
pub fn forward_reference(
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    pattern: &DiagList,
    out: OutputMut,
) -> u64 {
    pattern.check(p);
    let mut pairs = 0u64;
    let mut acc = vec![0.0f64; p.d_v];
    for b in 0..p.b {
        for h in 0..p.h {
            let bh = b * p.h + h;
            for i in 0..p.s_q {
                let r = bh * p.s_q + i;
                let keys = pattern.support(params, bh, b, i);
                pairs += keys.len() as u64;
                let lse = reference::softmax_row_f64(p, inputs, params, (b, h, i), &keys, &mut acc);
                for (x, a) in out.o[r * p.d_v..(r + 1) * p.d_v].iter_mut().zip(&acc) {
                    *x = *a as f32;
                }
                out.lse[r] = lse as f32;
            }
        }
    }
    pairs
}

/// Bytes of scratch [`forward`] allocates.
pub fn scratch_bytes(p: &Problem, pattern_columns: usize, par: Par) -> usize {
    let keys = key_blocks(p.s_kv) * 16;
    let panel = pattern_columns.div_ceil(G) * G * (p.d + p.d_v) * p.group();
    4 * (keys * (p.d + p.d_v) + 32 + panel + par.threads() * SPAN * (p.d + p.d_v + 2))
}

/// Key blocks of the packed K / V: [`PAD`] zero keys, the keys, at least `PAD` zero keys, in
/// blocks of 16.
fn key_blocks(s_kv: usize) -> usize {
    (s_kv + 2 * PAD).div_ceil(16)
}

/// Offset of key `j` (`−PAD ≤ j`), element 0, in a packed buffer of rows `width` wide: key
/// block `(j + PAD) / 16` is `[width][16]`, so element `d` of key `j` is at `offset + 16·d`.
#[inline(always)]
fn key_offset(j: i64, width: usize) -> usize {
    let u = (j + PAD as i64) as usize;
    (u / 16) * 16 * width + u % 16
}

/// Columns of a worker's row-contiguous tile buffers: the tile's rows at `MAX_LANES ..` with
/// room for lane blocks that start up to `MAX_LANES − 1` rows before the tile or end after it.
const SPAN: usize = TILE + 2 * MAX_LANES;

/// What the workers of one kv head share.
struct Shared<'a> {
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    params: &'a Resolved,
    pattern: &'a DiagList,
    b: usize,
    hk: usize,
    /// K and V of the kv head in key blocks ([`key_offset`]); both start on a 64-byte line.
    kt: *const f32,
    vt: *const f32,
    /// Per query head of the group: gathered column panels `[group][D][G]`, `[group][D_v][G]`,
    /// and the bitmap of its diagonals.
    kc: &'a [Vec<f32>],
    vc: &'a [Vec<f32>],
    diag_bits: &'a [Vec<u64>],
    qmul: f32,
    ntiles: usize,
    next: AtomicUsize,
    pairs: &'a AtomicU64,
    o_out: SharedMut<f32>,
    lse_out: SharedMut<f32>,
}

// SAFETY: the packed buffers behind `kt` / `vt` outlive the parallel section and are only read.
unsafe impl Sync for Shared<'_> {}

/// Per-worker scratch. Tile buffers are row-contiguous (`[D][SPAN]`: lane `t` of a block that
/// starts at tile column `c` is column `c + t`), so a lane block may start at any row.
struct Worker {
    q: Scratch,             // [D][SPAN]   scaled queries
    o: Scratch,             // [D_v][SPAN] unnormalised accumulator
    m: Vec<f32>,            // [SPAN] running max (base 2)
    l: Vec<f32>,            // [SPAN] running sum
    bias: Vec<f32>,         // [G][L] 0 or −∞ per item and lane (masked path)
    qrow: Vec<f32>,         // [D]
    classes: Vec<Vec<u32>>, // scattered diagonals by residue class (mod L)
    bands: Vec<(i64, i64)>, // runs [δa, δb] of at least RUN_MIN consecutive distances
    iv: Vec<(i64, i64)>,    // [rows] mask interval of each row of the tile
    tail: Vec<f32>,         // [G][L] bias of a short last group: 0 for its items, −∞ after
    blocks: Vec<BlockInfo>, // lane blocks of the current pass
}

/// Sparse attention over `pattern` at the current SIMD level; returns the pairs scored (the
/// support sizes, as [`forward_reference`]).
///
/// Scores are `scale · q·k` (no softcap or ALiBi: callers reject them).
///
/// # Panics
/// When the pattern was built for another `B·H`, `S_q` or `S_kv` than the problem.
pub fn forward(
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    pattern: &DiagList,
    par: Par,
    out: OutputMut,
) -> u64 {
    forward_at(Level::current(), p, inputs, params, pattern, par, out)
}

/// Offset (in floats) that puts `buf` on a 64-byte line.
fn line_offset(buf: &[f32]) -> usize {
    (64 - buf.as_ptr() as usize % 64) % 64 / 4
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
    pattern: &DiagList,
    par: Par,
    out: OutputMut,
) -> u64 {
    pattern.check(p);
    let level = level.min(Level::detected());
    let threads = par.threads();
    let nk = key_blocks(p.s_kv) * 16;
    let mut kt = Scratch::take(p.d * nk + 16);
    let mut vt = Scratch::take(p.d_v * nk + 16);
    let (ko, vo) = (line_offset(&kt), line_offset(&vt));
    let workers: Vec<Mutex<Worker>> = (0..threads)
        .map(|_| {
            Mutex::new(Worker {
                q: Scratch::take(SPAN * p.d),
                o: Scratch::take(SPAN * p.d_v),
                m: vec![0.0; SPAN],
                l: vec![0.0; SPAN],
                bias: vec![0.0; G * MAX_LANES],
                qrow: vec![0.0; p.d],
                classes: vec![Vec::new(); MAX_LANES],
                bands: Vec::new(),
                iv: Vec::with_capacity(TILE),
                tail: vec![0.0; G * MAX_LANES],
                blocks: Vec::with_capacity(TILE / 8 + 2),
            })
        })
        .collect();
    let pairs = AtomicU64::new(0);
    let o_out = SharedMut(out.o.as_mut_ptr());
    let lse_out = SharedMut(out.lse.as_mut_ptr());
    let ntiles = p.s_q.div_ceil(TILE);
    // Diagonal distances a row can reach: positions up to q_offset + S_q (plus a lane block).
    let max_pos = (params.position(p.s_q.saturating_sub(1)) + MAX_LANES as i64).max(0) as usize;
    let nbits = max_pos + 1;
    for b in 0..p.b {
        for hk in 0..p.h_kv {
            pack(p, inputs, b, hk, par, &mut kt[ko..ko + p.d * nk], &mut vt[vo..vo + p.d_v * nk]);
            let heads = hk * p.group()..(hk + 1) * p.group();
            let mut kc = Vec::with_capacity(p.group());
            let mut vc = Vec::with_capacity(p.group());
            let mut diag_bits = Vec::with_capacity(p.group());
            for h in heads {
                let dh = pattern.head(b * p.h + h);
                let (k, v) = gather_columns(p, inputs, b, hk, &dh.columns);
                kc.push(k);
                vc.push(v);
                let mut bits = vec![0u64; nbits.div_ceil(64) + 2];
                for &dl in &dh.diagonals {
                    if (dl as usize) < nbits {
                        bits[dl as usize / 64] |= 1 << (dl % 64);
                    }
                }
                diag_bits.push(bits);
            }
            let sh = Shared {
                p,
                inputs,
                params,
                pattern,
                b,
                hk,
                kt: kt[ko..].as_ptr(),
                vt: vt[vo..].as_ptr(),
                kc: &kc,
                vc: &vc,
                diag_bits: &diag_bits,
                qmul: params.scale * LOG2_E,
                ntiles,
                next: AtomicUsize::new(0),
                pairs: &pairs,
                o_out,
                lse_out,
            };
            let njobs = p.group() * ntiles;
            par.run(threads.min(njobs), |wi| {
                let mut wk = workers[wi].lock().unwrap_or_else(|e| e.into_inner());
                dispatch(level, WorkerLoop { sh: &sh, wk: &mut wk });
            });
        }
    }
    pairs.into_inner()
}

/// Packs K and V of kv head `(b, hk)` in key blocks ([`key_offset`]), zero in the padding.
fn pack(
    p: &Problem,
    inputs: &Inputs,
    b: usize,
    hk: usize,
    par: Par,
    kt: &mut [f32],
    vt: &mut [f32],
) {
    const BLOCKS: usize = 16; // key blocks per packing job
    let (d, dv) = (p.d, p.d_v);
    let nblk = key_blocks(p.s_kv);
    let njobs = nblk.div_ceil(BLOCKS);
    let next = AtomicUsize::new(0);
    let (ktp, vtp) = (SharedMut(kt.as_mut_ptr()), SharedMut(vt.as_mut_ptr()));
    par.run(par.threads().min(njobs), |_| {
        let mut row = vec![0.0f32; d.max(dv)];
        loop {
            let job = next.fetch_add(1, Ordering::Relaxed);
            if job >= njobs {
                break;
            }
            for blk in job * BLOCKS..((job + 1) * BLOCKS).min(nblk) {
                for (src, ptr, width) in [(&inputs.k, ktp, d), (&inputs.v, vtp, dv)] {
                    // SAFETY: this job owns key blocks job·BLOCKS .. (job + 1)·BLOCKS.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(ptr.get().add(blk * 16 * width), 16 * width)
                    };
                    for l in 0..16 {
                        let j = (blk * 16 + l) as i64 - PAD as i64;
                        if j < 0 || j >= p.s_kv as i64 {
                            (0..width).for_each(|dd| dst[dd * 16 + l] = 0.0);
                            continue;
                        }
                        src.read_row(b, hk, j as usize, 1.0, &mut row[..width]);
                        for (dd, &x) in row[..width].iter().enumerate() {
                            dst[dd * 16 + l] = x;
                        }
                    }
                }
            }
        }
    });
}

/// The listed columns of one query head gathered into panels `[group][D][G]` and
/// `[group][D_v][G]` (a short last group is padded with zero keys, always masked).
fn gather_columns(
    p: &Problem,
    inputs: &Inputs,
    b: usize,
    hk: usize,
    cols: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let ng = cols.len().div_ceil(G);
    let mut kc = vec![0.0f32; ng * G * p.d];
    let mut vc = vec![0.0f32; ng * G * p.d_v];
    let mut row = vec![0.0f32; p.d.max(p.d_v)];
    for (n, &c) in cols.iter().enumerate() {
        let (grp, g) = (n / G, n % G);
        inputs.k.read_row(b, hk, c as usize, 1.0, &mut row[..p.d]);
        for (dd, &x) in row[..p.d].iter().enumerate() {
            kc[(grp * p.d + dd) * G + g] = x;
        }
        inputs.v.read_row(b, hk, c as usize, 1.0, &mut row[..p.d_v]);
        for (dd, &x) in row[..p.d_v].iter().enumerate() {
            vc[(grp * p.d_v + dd) * G + g] = x;
        }
    }
    (kc, vc)
}

/// Bits `x .. x + n` of `bits` (bit `t` of the result = bit `x + t`; bits below 0 or past the
/// map are 0). `n ≤ 16`.
#[inline]
fn window_bits(bits: &[u64], x: i64, n: usize) -> u32 {
    let word = |w: i64| -> u64 {
        if w < 0 {
            0
        } else {
            bits.get(w as usize).copied().unwrap_or(0)
        }
    };
    let w = x.div_euclid(64);
    let sh = x.rem_euclid(64) as u32;
    let both = (word(w) as u128) | ((word(w + 1) as u128) << 64);
    ((both >> sh) as u32) & ((1u32 << n) - 1)
}

struct WorkerLoop<'a, 'b> {
    sh: &'a Shared<'b>,
    wk: &'a mut Worker,
}

impl Kernel for WorkerLoop<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        worker_loop::<S>(self.sh, self.wk)
    }
}

/// One lane block (lane `t` = query row `r₀ + t`) of the current tile: where it sits in the
/// tile buffers and what its rows may see.
#[derive(Clone, Copy)]
struct BlockInfo {
    /// Tile column of lane 0.
    col: usize,
    /// Position of lane 0 (`q_offset + r₀`).
    p0: i64,
    /// Lanes that are rows of the tile (bit t).
    real: u32,
    /// Every lane is a row of the tile.
    full: bool,
    /// Mask interval per real lane.
    lo: [i64; MAX_LANES],
    hi: [i64; MAX_LANES],
    /// Distances valid for every lane: `[dlo, dhi]` (empty when `dlo > dhi`).
    dlo: i64,
    dhi: i64,
    /// Distances valid for some lane: `≤ dmax`.
    dmax: i64,
    /// Columns valid for every lane: `[clo, chi)`; for some lane: `< cmax`.
    clo: i64,
    chi: i64,
    cmax: i64,
}

impl BlockInfo {
    /// The block of lanes `r₀ .. r₀ + ln` (`r₀` may start before the tile) of the tile whose
    /// rows are `t0 .. t0 + rows`.
    fn new(sh: &Shared, iv: &[(i64, i64)], t0: usize, rows: usize, r0: i64, ln: usize) -> Self {
        let p0 = sh.params.position(0) + r0;
        let mut info = BlockInfo {
            col: (MAX_LANES as i64 + r0 - t0 as i64) as usize,
            p0,
            real: 0,
            full: true,
            lo: [0; MAX_LANES],
            hi: [0; MAX_LANES],
            dlo: i64::MIN,
            dhi: i64::MAX,
            dmax: i64::MIN,
            clo: i64::MIN,
            chi: i64::MAX,
            cmax: i64::MIN,
        };
        for t in 0..ln {
            let r = r0 + t as i64;
            if r < t0 as i64 || r >= (t0 + rows) as i64 {
                info.full = false;
                continue;
            }
            info.real |= 1 << t;
            let (lo, hi) = iv[(r - t0 as i64) as usize];
            let pt = p0 + t as i64;
            info.lo[t] = lo;
            info.hi[t] = hi;
            info.dlo = info.dlo.max(pt - hi + 1);
            info.dhi = info.dhi.min(pt - lo);
            info.clo = info.clo.max(lo);
            info.chi = info.chi.min(hi);
            if lo < hi {
                info.dmax = info.dmax.max(pt - lo);
                info.cmax = info.cmax.max(hi);
            }
        }
        if !info.full {
            // Padding lanes are never valid: no group is valid for every lane.
            info.dhi = i64::MIN;
            info.chi = i64::MIN;
        }
        info
    }

    /// Lanes (bit t) whose key — `base + t` for a diagonal, `base` for a column — lies in the
    /// lane's interval.
    #[inline]
    fn valid_lanes(&self, base: i64, diagonal: bool) -> u32 {
        let mut m = 0u32;
        let mut real = self.real;
        while real != 0 {
            let t = real.trailing_zeros() as usize;
            real &= real - 1;
            let j = if diagonal { base + t as i64 } else { base };
            if j >= self.lo[t] && j < self.hi[t] {
                m |= 1 << t;
            }
        }
        m
    }
}

#[inline(always)]
fn worker_loop<S: Simd>(sh: &Shared, wk: &mut Worker) {
    let p = sh.p;
    let (d, dv) = (p.d, p.d_v);
    let ln = S::LANES;
    let g = p.group();
    let njobs = g * sh.ntiles;
    let mut pairs = 0u64;
    loop {
        let job = sh.next.fetch_add(1, Ordering::Relaxed);
        if job >= njobs {
            break;
        }
        let tile = sh.ntiles - 1 - job / g; // last tiles first: under a causal mask they see most
        let hg = job % g;
        let h = sh.hk * g + hg;
        let bh = sh.b * p.h + h;
        let t0 = tile * TILE;
        let rows = TILE.min(p.s_q - t0);
        // Queries scaled to base-2 logits, row-contiguous: row t0 + r at column MAX_LANES + r.
        wk.q.fill(0.0);
        for r in 0..rows {
            sh.inputs.q.read_row(sh.b, h, t0 + r, sh.qmul, &mut wk.qrow);
            for (dd, &x) in wk.qrow.iter().enumerate() {
                wk.q[dd * SPAN + MAX_LANES + r] = x;
            }
        }
        wk.o.fill(0.0);
        // A finite floor instead of −∞: `α = 2^(m − m')` stays defined for rows with no key yet.
        wk.m.fill(M_FLOOR);
        wk.l.fill(0.0);
        let dh = sh.pattern.head(bh);
        let bits = &sh.diag_bits[hg];
        // Mask interval of every row of the tile, once.
        wk.iv.clear();
        wk.iv.extend((t0..t0 + rows).map(|r| {
            let (lo, hi) = sh.params.mask.interval(&sh.params.geometry, sh.b, r);
            (lo as i64, hi as i64)
        }));

        // Columns: lane blocks aligned with the tile.
        wk.blocks.clear();
        for r0 in (t0..t0 + rows).step_by(ln) {
            wk.blocks.push(BlockInfo::new(sh, &wk.iv, t0, rows, r0 as i64, ln));
        }
        for (grp, chunk) in dh.columns.chunks(G).enumerate() {
            let kc = sh.kc[hg][grp * G * d..(grp + 1) * G * d].as_ptr();
            let vc = sh.vc[hg][grp * G * dv..(grp + 1) * G * dv].as_ptr();
            for bi in 0..wk.blocks.len() {
                let info = wk.blocks[bi];
                if chunk[0] as i64 >= info.cmax {
                    continue; // no lane sees any of these columns (ascending)
                }
                let full = info.full
                    && chunk[0] as i64 >= info.clo
                    && (chunk[chunk.len() - 1] as i64) < info.chi
                    && chunk.iter().all(|&c| window_bits(bits, info.p0 - c as i64, ln) == 0);
                let bias = if full {
                    pairs += (chunk.len() * ln) as u64;
                    tail_bias(&mut wk.tail, chunk.len(), ln)
                } else {
                    pairs += masked(&mut wk.bias, ln, |gi| match chunk.get(gi) {
                        Some(&c) => {
                            info.valid_lanes(c as i64, false)
                                & !window_bits(bits, info.p0 - c as i64, ln)
                        }
                        None => 0,
                    });
                    Some(wk.bias.as_ptr())
                };
                // SAFETY: the block's columns lie inside the tile buffers; the panels hold
                // G·D and G·D_v values.
                unsafe {
                    let st = State::<S>::at(wk, info.col);
                    let mut acc = scores_cols::<S>(st.q, kc, G, d);
                    let pv = st.softmax(&mut acc, bias);
                    st.pv_cols(&pv, vc, G, dv);
                }
            }
        }

        // Runs of at least RUN_MIN consecutive distances are bands (below); the rest go by
        // residue class.
        for cl in wk.classes.iter_mut() {
            cl.clear();
        }
        wk.bands.clear();
        let diags = &dh.diagonals;
        let mut a = 0;
        while a < diags.len() {
            let mut e = a + 1;
            while e < diags.len() && diags[e] == diags[e - 1] + 1 {
                e += 1;
            }
            if e - a >= RUN_MIN {
                wk.bands.push((diags[a] as i64, diags[e - 1] as i64));
            } else {
                for &dl in &diags[a..e] {
                    wk.classes[dl as usize % ln].push(dl);
                }
            }
            a = e;
        }

        // Bands of consecutive distances [δa, δb]: lane t reads keys p_t − δb ..= p_t − δa, so
        // the block reads the consecutive keys p₀ − δb ..= p₀ + L − 1 − δa, G at a time, each
        // broadcast over the lanes from Kᵀ / Vᵀ (a key outside a lane's band is masked).
        for bi in 0..wk.blocks.len() {
            let info = wk.blocks[bi];
            let last = info.p0 + ln as i64 - 1; // position of the block's last lane
            for bn in 0..wk.bands.len() {
                let (da, db) = wk.bands[bn];
                // groups of G keys start on multiples of G: one half line per element
                let j_lo = (info.p0 - db).max(0) / G as i64 * G as i64;
                let j_hi = (last - da).min(p.s_kv as i64 - 1); // inclusive
                let mut j = j_lo;
                while j <= j_hi {
                    let full = info.full
                        && j >= last - db
                        && j + G as i64 - 1 <= info.p0 - da
                        && j >= info.clo
                        && j + G as i64 <= info.chi;
                    let bias = if full {
                        pairs += (G * ln) as u64;
                        None
                    } else if info.full && j >= info.clo && j + G as i64 <= info.chi {
                        // Every key of the group lies in every lane's interval: only the band
                        // edges mask, as lane ranges (no per-lane loop).
                        pairs += masked(&mut wk.bias, ln, |gi| {
                            let jj = j + gi as i64;
                            if jj > j_hi {
                                return 0;
                            }
                            band_lanes(jj + da - info.p0, jj + db - info.p0, ln)
                        });
                        Some(wk.bias.as_ptr())
                    } else {
                        pairs += masked(&mut wk.bias, ln, |gi| {
                            let jj = j + gi as i64;
                            if jj > j_hi {
                                return 0;
                            }
                            // lanes with jj + δa ≤ p_t ≤ jj + δb, inside their interval
                            band_lanes(jj + da - info.p0, jj + db - info.p0, ln)
                                & info.valid_lanes(jj, false)
                        });
                        Some(wk.bias.as_ptr())
                    };
                    // SAFETY: keys j .. j + G (j a multiple of G) lie in one key block within
                    // [0, S_kv + G) ⊂ the padded buffer.
                    unsafe {
                        let st = State::<S>::at(wk, info.col);
                        let kc = sh.kt.add(key_offset(j, d));
                        let vc = sh.vt.add(key_offset(j, dv));
                        let mut acc = scores_cols::<S>(st.q, kc, 16, d);
                        let pv = st.softmax(&mut acc, bias);
                        st.pv_cols(&pv, vc, 16, dv);
                    }
                    j += G as i64;
                }
            }
        }

        // Diagonals, one residue class at a time: in class c every lane block starts at a
        // position ≡ c (mod L), so for δ ≡ c its keys p₀ − δ … p₀ − δ + L − 1 are one aligned
        // run — one 64-byte line per row of Kᵀ / Vᵀ with AVX-512.
        let pos0 = sh.params.position(0);
        for c in 0..ln {
            if wk.classes[c].is_empty() {
                continue;
            }
            // First block start r₀ ≤ t0 with q_offset + r₀ ≡ c (mod L).
            let first = t0 as i64 - (t0 as i64 + pos0 - c as i64).rem_euclid(ln as i64);
            wk.blocks.clear();
            let mut r0 = first;
            while r0 < (t0 + rows) as i64 {
                wk.blocks.push(BlockInfo::new(sh, &wk.iv, t0, rows, r0, ln));
                r0 += ln as i64;
            }
            let class = std::mem::take(&mut wk.classes[c]);
            for chunk in class.chunks(G) {
                for bi in 0..wk.blocks.len() {
                    let info = wk.blocks[bi];
                    if chunk[0] as i64 > info.dmax {
                        continue; // beyond every lane's first key (ascending)
                    }
                    let mut starts = [0i64; G]; // first key of each window
                    let full = info.full
                        && chunk[0] as i64 >= info.dlo
                        && chunk[chunk.len() - 1] as i64 <= info.dhi;
                    let bias = if full {
                        starts = [-(PAD as i64); G]; // a short group's last items: padding
                        for (s, &dl) in starts.iter_mut().zip(chunk) {
                            *s = info.p0 - dl as i64;
                        }
                        pairs += (chunk.len() * ln) as u64;
                        tail_bias(&mut wk.tail, chunk.len(), ln)
                    } else {
                        pairs += masked(&mut wk.bias, ln, |gi| {
                            let valid = match chunk.get(gi) {
                                Some(&dl) => info.valid_lanes(info.p0 - dl as i64, true),
                                None => 0,
                            };
                            // A window no lane may use is read from the padding instead.
                            starts[gi] =
                                if valid == 0 { -(PAD as i64) } else { info.p0 - chunk[gi] as i64 };
                            valid
                        });
                        Some(wk.bias.as_ptr())
                    };
                    // SAFETY: a window with a valid lane starts in (−L, S_kv), aligned to L
                    // inside one key block of the padded buffer; invalid items read the
                    // leading padding block.
                    unsafe {
                        let st = State::<S>::at(wk, info.col);
                        let mut acc = scores_diag::<S>(st.q, sh.kt, d, &starts);
                        let pv = st.softmax(&mut acc, bias);
                        st.pv_diag(&pv, sh.vt, dv, &starts);
                    }
                }
            }
            wk.classes[c] = class;
        }

        // Normalise and write the rows.
        for r in 0..rows {
            let col = MAX_LANES + r;
            let row = bh * p.s_q + t0 + r;
            let (m, l) = (wk.m[col], wk.l[col]);
            // SAFETY: row `row` of o and lse belongs to this job only.
            unsafe {
                let o = std::slice::from_raw_parts_mut(sh.o_out.get().add(row * dv), dv);
                if l > 0.0 {
                    let inv = 1.0 / l;
                    for (dd, x) in o.iter_mut().enumerate() {
                        *x = wk.o[dd * SPAN + col] * inv;
                    }
                    *sh.lse_out.get().add(row) = (m + l.log2()) * std::f32::consts::LN_2;
                } else {
                    o.fill(0.0);
                    *sh.lse_out.get().add(row) = f32::NEG_INFINITY;
                }
            }
        }
    }
    sh.pairs.fetch_add(pairs, Ordering::Relaxed);
}

/// Floor of the running maximum (base 2): below any finite score of a real call, above `−∞`.
const M_FLOOR: f32 = -1.0e30;

/// `None` for a whole group; for a short one (`n < G` items) the bias that masks the rest.
#[inline]
fn tail_bias(tail: &mut [f32], n: usize, ln: usize) -> Option<*const f32> {
    if n == G {
        return None;
    }
    tail[..n * ln].fill(0.0);
    tail[n * ln..G * ln].fill(f32::NEG_INFINITY);
    Some(tail.as_ptr())
}

/// The masked path of one group: `valid(g)` gives item `g`'s valid lanes; fills `bias` (`[G][L]`)
/// and returns the pairs kept.
#[inline]
fn masked(bias: &mut [f32], ln: usize, mut valid: impl FnMut(usize) -> u32) -> u64 {
    let mut n = 0;
    for gi in 0..G {
        let v = valid(gi);
        n += v.count_ones() as u64;
        fill_bias(&mut bias[gi * ln..(gi + 1) * ln], v);
    }
    n
}

/// Lanes `t ∈ [a, b] ∩ [0, ln)` as bits (`ln ≤ 16`).
#[inline(always)]
fn band_lanes(a: i64, b: i64, ln: usize) -> u32 {
    let (lo, hi) = (a.max(0), b.min(ln as i64 - 1));
    if lo > hi {
        0
    } else {
        ((1u64 << (hi + 1)) - (1u64 << lo)) as u32
    }
}

/// `bias[t] = 0` for valid lanes, `−∞` otherwise.
#[inline]
fn fill_bias(bias: &mut [f32], valid: u32) {
    for (t, x) in bias.iter_mut().enumerate() {
        *x = if valid >> t & 1 == 1 { 0.0 } else { f32::NEG_INFINITY };
    }
}

/// Raw pointers to one lane block's columns of the worker's tile buffers (row stride
/// [`SPAN`]).
struct State<S: Simd> {
    q: *const f32,
    o: *mut f32,
    m: *mut f32,
    l: *mut f32,
    _s: std::marker::PhantomData<S>,
}

impl<S: Simd> State<S> {
    #[inline(always)]
    unsafe fn at(wk: &mut Worker, col: usize) -> Self {
        unsafe {
            State {
                q: wk.q.as_ptr().add(col),
                o: wk.o.as_mut_ptr().add(col),
                m: wk.m.as_mut_ptr().add(col),
                l: wk.l.as_mut_ptr().add(col),
                _s: std::marker::PhantomData,
            }
        }
    }

    /// One lane-wise online-softmax step over `G` score vectors (base 2): adds the bias (masked
    /// path), updates `m` and `l`, turns the scores into `p` and returns them with `α`.
    #[inline(always)]
    unsafe fn softmax(&self, acc: &mut [S::V; G], bias: Option<*const f32>) -> ([S::V; G], S::V) {
        unsafe {
            if let Some(bias) = bias {
                for (gi, a) in acc.iter_mut().enumerate() {
                    *a = S::add(*a, S::load(bias.add(gi * S::LANES)));
                }
            }
            let m_old = S::load(self.m);
            let mut m_new = m_old;
            for a in acc.iter() {
                m_new = S::max(m_new, *a);
            }
            let alpha = S::exp2(S::sub(m_old, m_new));
            let mut sum = S::splat(0.0);
            for a in acc.iter_mut() {
                *a = S::exp2(S::sub(*a, m_new));
                sum = S::add(sum, *a);
            }
            S::store(self.m, m_new);
            S::store(self.l, S::fma(S::load(self.l), alpha, sum));
            (*acc, alpha)
        }
    }

    /// `O ← α·O + Σ_g p_g ⊙ V[start_g ..][dv]` for every value column (two partial sums per
    /// column, so the FMA chain is half as long).
    #[inline(always)]
    unsafe fn pv_diag(&self, pv: &([S::V; G], S::V), vt: *const f32, dv: usize, starts: &[i64; G]) {
        let (p, alpha) = pv;
        unsafe {
            let w: [*const f32; G] = std::array::from_fn(|gi| vt.add(key_offset(starts[gi], dv)));
            for dd in 0..dv {
                let op = self.o.add(dd * SPAN);
                let mut o = S::mul(S::load(op), *alpha);
                let mut o2 = S::mul(p[1], S::load(w[1].add(dd * 16)));
                for gi in (0..G).step_by(2) {
                    o = S::fma(p[gi], S::load(w[gi].add(dd * 16)), o);
                    if gi > 0 {
                        o2 = S::fma(p[gi + 1], S::load(w[gi + 1].add(dd * 16)), o2);
                    }
                }
                S::store(op, S::add(o, o2));
            }
        }
    }

    /// `O ← α·O + Σ_g p_g · v_g` (each value broadcast over the lanes; strides as
    /// [`scores_cols`]).
    #[inline(always)]
    unsafe fn pv_cols(&self, pv: &([S::V; G], S::V), vc: *const f32, sd: usize, dv: usize) {
        let (p, alpha) = pv;
        unsafe {
            for dd in 0..dv {
                let op = self.o.add(dd * SPAN);
                let vrow = vc.add(dd * sd);
                let mut o = S::mul(S::load(op), *alpha);
                let mut o2 = S::mul(p[1], S::splat(*vrow.add(1)));
                for gi in (0..G).step_by(2) {
                    o = S::fma(p[gi], S::splat(*vrow.add(gi)), o);
                    if gi > 0 {
                        o2 = S::fma(p[gi + 1], S::splat(*vrow.add(gi + 1)), o2);
                    }
                }
                S::store(op, S::add(o, o2));
            }
        }
    }
}

/// `acc_g = Σ_d Qᵀ[d] ⊙ K[start_g ..][d]`: the scores of `G` diagonals for all lanes (`q` has
/// row stride [`SPAN`]; each window lies in one key block).
#[inline(always)]
unsafe fn scores_diag<S: Simd>(
    q: *const f32,
    kt: *const f32,
    d: usize,
    starts: &[i64; G],
) -> [S::V; G] {
    unsafe {
        let w: [*const f32; G] = std::array::from_fn(|gi| kt.add(key_offset(starts[gi], d)));
        let mut acc = [S::splat(0.0); G];
        for dd in 0..d {
            let qv = S::load(q.add(dd * SPAN));
            for (a, wg) in acc.iter_mut().zip(&w) {
                *a = S::fma(qv, S::load(wg.add(dd * 16)), *a);
            }
        }
        acc
    }
}

/// `acc_g = Σ_d Qᵀ[d] · k_g[d]`: the scores of `G` keys shared by all lanes, key `g`'s element
/// `d` at `kc[d·sd + g]` (a gathered panel: `sd = G`; consecutive keys of a key block: `sd = 16`).
#[inline(always)]
unsafe fn scores_cols<S: Simd>(q: *const f32, kc: *const f32, sd: usize, d: usize) -> [S::V; G] {
    unsafe {
        let mut acc = [S::splat(0.0); G];
        for dd in 0..d {
            let qv = S::load(q.add(dd * SPAN));
            let krow = kc.add(dd * sd);
            for (gi, a) in acc.iter_mut().enumerate() {
                *a = S::fma(qv, S::splat(*krow.add(gi)), *a);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bits_reads_across_words_and_edges() {
        let mut bits = vec![0u64; 3];
        for x in [0usize, 5, 63, 64, 70, 130] {
            bits[x / 64] |= 1 << (x % 64);
        }
        assert_eq!(window_bits(&bits, 0, 8), 0b10_0001);
        assert_eq!(window_bits(&bits, 60, 16), (1 << 3) | (1 << 4) | (1 << 10));
        assert_eq!(window_bits(&bits, -3, 8), 1 << 3);
        assert_eq!(window_bits(&bits, 125, 16), 1 << 5);
        assert_eq!(window_bits(&bits, 1000, 16), 0);
    }

    #[test]
    fn band_lanes_clips_to_the_block() {
        assert_eq!(band_lanes(0, 15, 16), 0xffff);
        assert_eq!(band_lanes(-5, 2, 16), 0b111);
        assert_eq!(band_lanes(3, 40, 16), 0xfff8);
        assert_eq!(band_lanes(6, 5, 16), 0);
        assert_eq!(band_lanes(16, 30, 16), 0);
        assert_eq!(band_lanes(-9, -1, 8), 0);
        assert_eq!(band_lanes(2, 4, 8), 0b1_1100);
        assert_eq!(band_lanes(0, 0, 1), 1);
    }

    #[test]
    fn validation() {
        let h = |d: &[u32], c: &[u32]| DiagHead { diagonals: d.to_vec(), columns: c.to_vec() };
        assert!(DiagList::new(4, 64, vec![h(&[0, 3], &[1, 63])]).is_ok());
        assert!(DiagList::new(4, 64, vec![h(&[3, 0], &[])]).is_err());
        assert!(DiagList::new(4, 64, vec![h(&[], &[2, 2])]).is_err());
        assert!(DiagList::new(4, 64, vec![h(&[], &[64])]).is_err());
    }
}
