//! The support of SEA (spec §3.2 steps 6–8, with the training-free estimate of README), shared by
//! the fast path and the reference: the cell grid, the per-cell key moments, the estimate of every
//! query row on its visible cells (faer GEMMs over blocks of [`ROWS`] rows), the per-row top-k of
//! cells, and their keys as a [`BlockList`] with one query row per block (`bm = 1`): each chosen
//! cell a key block of the narrowest cell's width, plus a column for a cell one key wider.
//!
//! Deterministic: every estimate comes from the same GEMM shapes whatever the thread count (one job
//! is one block of rows of one head; faer runs each sequentially), so both implementations attend
//! over the same support at every SIMD level and thread count.

use super::{Budget, Estimate, Sea};
use crate::dispatch::Inputs;
use crate::error::{Error, Result};
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::gemm::gemm_bt;
use crate::primitives::rng::{purpose, Key, Stream};
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::primitives::sparse::{BlockList, HeadList};
use crate::problem::Problem;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Query rows per estimate GEMM (one job).
pub const ROWS: usize = 64;

/// Narrowest cell width given to the executors as key blocks; narrower cells go as columns.
pub const MIN_BLOCK: usize = 16;

/// The compressed key axis: `T_M` cells over `[0, S_kv)`, cell `c` holding keys
/// `[round(c·S_kv/T_M), round((c+1)·S_kv/T_M))` (round half up), empty cells dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    bounds: Vec<usize>,
    /// The narrowest cell's width (kept: every row's key list asks for it).
    min_width: usize,
}

impl Grid {
    /// The grid of `cells` cells over `s_kv` keys (`cells ≥ 1`).
    pub fn new(s_kv: usize, cells: usize) -> Self {
        let t = cells as u128;
        let mut bounds: Vec<usize> =
            (0..=t).map(|c| ((2 * c * s_kv as u128 + t) / (2 * t)) as usize).collect();
        bounds.dedup();
        let min_width = bounds.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(1);
        Self { bounds, min_width }
    }

    /// Non-empty cells `C = min(T_M, S_kv)`.
    pub fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys `[start, end)` of cell `c`.
    pub fn range(&self, c: usize) -> (usize, usize) {
        (self.bounds[c], self.bounds[c + 1])
    }

    /// The width of the narrowest cell (cells are this wide or one key wider).
    pub fn min_width(&self) -> usize {
        self.min_width
    }

    /// The cell holding key `j < S_kv`.
    pub fn cell_of(&self, j: usize) -> usize {
        self.bounds.partition_point(|&e| e <= j) - 1
    }
}

/// f64 bits in ascending total order (−NaN < −∞ < … < −0 < +0 < … < +∞ < NaN).
fn ascending64(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | 1 << 63
    }
}

/// f32 bits in ascending total order; `ascending32(x) ≤ ascending32(y)` exactly when
/// `ascending64(f64::from(x)) ≤ ascending64(f64::from(y))`.
fn ascending32(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 1 << 31
    }
}

/// What a query row may select: its visible keys and cells, the forced cell and the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPlan {
    /// Visible keys `[lo, hi)` (the mask's interval; `lo ≥ hi`: none).
    pub lo: usize,
    /// One past the last visible key.
    pub hi: usize,
    /// Visible cells `[first, end)` (those holding a visible key).
    pub first: usize,
    /// One past the last visible cell.
    pub end: usize,
    /// Forced sink cells `[first, first + sink)` (clipped to the visible cells).
    pub sinks: (usize, usize),
    /// Forced local cells: the cell of the row's own position (the diagonal) and the `local`
    /// visible cells before it; empty when the position is not visible.
    pub local: (usize, usize),
    /// Cells kept `κ_i` (every visible cell when the budget covers every visible key).
    pub kappa: usize,
}

impl RowPlan {
    /// The plan of query row `i` of batch `b`: `k_i` keys of the `L_i = hi − lo` visible ones,
    /// `κ_i = clamp(max(⌈k_i·C/S_kv⌉, forced), 1, V_i)` cells of the `V_i` visible (all of them
    /// when `k_i ≥ L_i`), `C/S_kv` being cells per key of the grid.
    pub fn new(c: &Sea, grid: &Grid, params: &Resolved, b: usize, i: usize) -> Self {
        let (lo, hi) = params.mask.interval(&params.geometry, b, i);
        if lo >= hi {
            return Self { lo, hi, first: 0, end: 0, sinks: (0, 0), local: (0, 0), kappa: 0 };
        }
        let (first, end) = (grid.cell_of(lo), grid.cell_of(hi - 1) + 1);
        let sinks = (first, (first + c.sink).min(end));
        let pos = params.position(i);
        let local = if lo as i64 <= pos && pos < hi as i64 {
            let dc = grid.cell_of(pos as usize);
            (dc.saturating_sub(c.local).max(first), dc + 1)
        } else {
            (0, 0)
        };
        let mut plan = Self { lo, hi, first, end, sinks, local, kappa: 0 };
        let (l, v) = (hi - lo, end - first);
        let k = c.budget.keys(l);
        plan.kappa = if k >= l {
            v
        } else {
            let s_kv = grid.bounds[grid.len()];
            (k * grid.len()).div_ceil(s_kv).max(plan.forced()).clamp(1, v)
        };
        plan
    }

    /// True when cell `c` is always kept.
    pub fn is_forced(&self, c: usize) -> bool {
        (self.sinks.0 <= c && c < self.sinks.1) || (self.local.0 <= c && c < self.local.1)
    }

    /// Number of forced cells.
    pub fn forced(&self) -> usize {
        let free: usize = self.free().iter().map(|r| r.len()).sum();
        self.end.saturating_sub(self.first) - free
    }

    /// The forced visible cells, each once (sinks first, then the local cells outside them).
    pub fn forced_cells(&self) -> impl Iterator<Item = usize> + '_ {
        let sinks = self.sinks.0.max(self.first)..self.sinks.1.min(self.end);
        let local = self.local.0.max(self.first)..self.local.1.min(self.end);
        let s2 = sinks.clone();
        sinks.chain(local.filter(move |c| !s2.contains(c)))
    }

    /// The visible cells that are not forced: at most three ascending ranges (the gaps the sink
    /// and local intervals leave in `[first, end)`).
    pub fn free(&self) -> [std::ops::Range<usize>; 3] {
        let clip = |(a, b): (usize, usize)| (a.max(self.first), b.min(self.end));
        let (mut x, mut y) = (clip(self.sinks), clip(self.local));
        if x.0 >= x.1 {
            x = (self.end, self.end);
        }
        if y.0 >= y.1 {
            y = (self.end, self.end);
        }
        if y.0 < x.0 {
            std::mem::swap(&mut x, &mut y);
        }
        // x starts first; the gaps: before x, between x and y, after both
        let mid_start = x.1.min(self.end);
        [self.first..x.0, mid_start..y.0.max(mid_start), x.1.max(y.1).min(self.end)..self.end]
    }

    /// Appends the chosen cells, ascending, to `out`: the forced cells and the other visible cells
    /// of largest `est(c)`, ties to the smaller cell (spec §0.4.6), `κ_i` in all. `keys` is
    /// scratch: one integer per candidate cell whose ascending order is that ranking (the
    /// estimate's bits in descending total order, then the cell), so the selection compares
    /// integers.
    pub fn choose(&self, est: impl Fn(usize) -> f64, keys: &mut Vec<u128>, out: &mut Vec<u32>) {
        let key = |c: usize| u128::from(!ascending64(est(c))) << 32 | c as u128;
        let start = out.len();
        if self.kappa >= self.end - self.first {
            out.extend(self.first as u32..self.end as u32);
            return;
        }
        keys.clear();
        keys.extend(self.free().into_iter().flatten().map(&key));
        let forced = self.end - self.first - keys.len();
        let take = self.kappa - forced;
        if take > 0 {
            if take < keys.len() {
                keys.select_nth_unstable(take - 1);
            }
            out.extend(keys[..take].iter().map(|&k| k as u32));
        }
        out.extend(self.forced_cells().map(|c| c as u32));
        out[start..].sort_unstable();
    }

    /// [`choose`](Self::choose) on f32 estimates `est[c − base]`, with the same result as
    /// `choose(|c| f64::from(est[c − base]))` (widening keeps the total order), faster on long
    /// rows: a threshold `τ` from a strided sample of the row, then only the cells whose estimate
    /// is at least `τ` (in the total order) are ranked. When at least as many cells as are to be
    /// taken pass, every cell of the top `κ_i` is among them (a cell below `τ` ranks below all
    /// of them), so the choice is exact; otherwise the whole row is ranked.
    pub fn choose_f32(&self, est: &[f32], base: usize, keys: &mut Vec<u128>, out: &mut Vec<u32>) {
        const SAMPLE: usize = 256;
        let visible = self.end - self.first;
        let forced = self.forced();
        let (cand, take) = (visible - forced, self.kappa.saturating_sub(forced));
        let whole = |keys: &mut Vec<u128>, out: &mut Vec<u32>| {
            self.choose(|c| f64::from(est[c - base]), keys, out)
        };
        if self.kappa >= visible || take == 0 || cand < 4 * SAMPLE || take * 8 > cand {
            return whole(keys, out);
        }
        // the key of `choose`
        let key = |c: usize| u128::from(!ascending64(f64::from(est[c - base]))) << 32 | c as u128;
        // τ: about twice the share of the row to be taken, from SAMPLE evenly spaced cells.
        let step = visible / SAMPLE;
        let mut sample = [0u32; SAMPLE];
        for (t, x) in sample.iter_mut().enumerate() {
            *x = ascending32(est[self.first + t * step - base]);
        }
        let rank = ((2 * take * SAMPLE).div_ceil(cand) + 4).min(SAMPLE - 1);
        sample.select_nth_unstable_by(rank, |a, b| b.cmp(a));
        let tau = sample[rank];
        keys.clear();
        for r in self.free() {
            for (c, &e) in r.clone().zip(&est[r.start - base..r.end - base]) {
                if ascending32(e) >= tau {
                    keys.push(key(c));
                }
            }
        }
        if keys.len() < take {
            return whole(keys, out);
        }
        let start = out.len();
        if take < keys.len() {
            keys.select_nth_unstable(take - 1);
        }
        out.extend(keys[..take].iter().map(|&k| k as u32));
        out.extend(self.forced_cells().map(|c| c as u32));
        out[start..].sort_unstable();
    }

    /// Appends the keys of `cells` (ascending) as key blocks of `grid.min_width()` keys (one per
    /// cell, at its start) and the one key a wider cell has left as a column; on a grid of cells
    /// narrower than [`MIN_BLOCK`] keys, every key as a column (the executors score each block as
    /// a tile of its own, so one-key blocks cost a tile each; columns are gathered
    /// [`CHUNK`](crate::primitives::sparse::CHUNK) at a time — the same support). Keys outside
    /// `[lo, hi)` stay in: the executors mask them (so the row's support is the visible keys of
    /// its cells).
    pub fn pieces(&self, grid: &Grid, cells: &[u32], blocks: &mut Vec<u32>, cols: &mut Vec<u32>) {
        let bn = grid.min_width();
        for &c in cells {
            let (s, e) = grid.range(c as usize);
            if bn < MIN_BLOCK {
                cols.extend(s as u32..e as u32);
            } else {
                blocks.push(s as u32);
                cols.extend((s + bn) as u32..e as u32);
            }
        }
    }
}

/// The projection of the estimate: `(W_q, W_k, r)`, both `[r, D]`; `None` for none (`r = D`).
pub fn projection(c: &Sea, d: usize) -> Option<(Vec<f32>, Vec<f32>, usize)> {
    if let Some(e) = &c.trained {
        let (q, k) = e.weights();
        return Some((q.to_vec(), k.to_vec(), e.rank()));
    }
    if c.rank == 0 {
        return None;
    }
    // Gaussian rows scaled by r^{-1/2}: E[(Wq)·(Wk)] = q·k (Johnson–Lindenstrauss).
    let s = Stream::new(Key { seed: c.seed, layer: 0, head: 0, purpose: purpose::SEA_PROJECTION });
    let inv = 1.0 / (c.rank as f64).sqrt();
    let w: Vec<f32> = (0..c.rank * d).map(|i| (s.gaussian_at(i as u64) * inv) as f32).collect();
    Some((w.clone(), w, c.rank))
}

/// Per key/value head: the cell features `G [C, F]` (`F = factor·r`: Mean `μ_c`, Gauss
/// `[μ_c, σ²_c]`, Bound `[max_c k', min_c k']` of the cell's projected keys) and `ln n_c`.
struct Cells {
    g: Vec<f32>,
    bias: Vec<f32>,
    /// `Gᵀ [F, C]` for the per-row dimension selection (`dims`); empty without it.
    gt: Vec<f32>,
}

/// The dimensions the estimate of a query row uses, ascending, into `out`: all `r` (`dims` 0 or
/// `≥ r`), or its `dims` of largest `|q'_t|`, ties to the smaller `t` (SparQ's selection). `x` is
/// the row's `q'`.
pub fn top_dims(dims: usize, x: &[f32], out: &mut Vec<usize>) {
    out.clear();
    out.extend(0..x.len());
    if dims == 0 || dims >= x.len() {
        return;
    }
    out.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
    out.truncate(dims);
    out.sort_unstable();
}

/// `e[i] = Σ_(row, a) a · gt[row·stride + i]` over `terms` in order (a multiply, then an add:
/// the same rounding at every SIMD level, so the support does not depend on it).
struct DimsRow<'a> {
    e: &'a mut [f32],
    gt: &'a [f32],
    stride: usize,
    start: usize,
    terms: &'a [(usize, f32)],
}

impl Kernel for DimsRow<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let n = self.e.len();
        self.e.fill(0.0);
        let split = n - n % S::LANES;
        for &(row, a) in self.terms {
            let g = &self.gt[row * self.stride + self.start..row * self.stride + self.start + n];
            // SAFETY: every access lies inside `e[..split]` / `g[..split]`; `dispatch` runs
            // this at a level the CPU has.
            unsafe {
                let av = S::splat(a);
                for i in (0..split).step_by(S::LANES) {
                    let ep = self.e.as_mut_ptr().add(i);
                    S::store(ep, S::add(S::load(ep), S::mul(av, S::load(g.as_ptr().add(i)))));
                }
            }
            for (e, g) in self.e[split..].iter_mut().zip(&g[split..]) {
                *e += a * g;
            }
        }
    }
}

/// `x [n, D] → x Wᵀ [n, r]` (or a copy when there is no projection).
fn project(x: &[f32], n: usize, d: usize, w: Option<(&[f32], usize)>) -> Vec<f32> {
    match w {
        None => x.to_vec(),
        Some((w, r)) => {
            let mut y = vec![0.0f32; n * r];
            gemm_bt(&mut y, x, w, [n, d, r], false);
            y
        }
    }
}

fn cells(
    p: &Problem,
    inputs: &Inputs,
    grid: &Grid,
    kind: Estimate,
    w_k: Option<(&[f32], usize)>,
    b: usize,
    hk: usize,
) -> Cells {
    let d = p.d;
    let mut k = vec![0.0f32; p.s_kv * d]; // [S_kv, D]
    for j in 0..p.s_kv {
        inputs.k.read_row(b, hk, j, 1.0, &mut k[j * d..(j + 1) * d]);
    }
    let r = w_k.map_or(d, |w| w.1);
    let kp = project(&k, p.s_kv, d, w_k); // [S_kv, r]
    let f = kind.factor() * r;
    let mut g = vec![0.0f32; grid.len() * f];
    let mut bias = vec![0.0f32; grid.len()];
    let (mut s1, mut s2) = (vec![0.0f64; r], vec![0.0f64; r]);
    for c in 0..grid.len() {
        let (s, e) = grid.range(c);
        let n = (e - s) as f64;
        let gc = &mut g[c * f..(c + 1) * f];
        if kind == Estimate::Bound {
            // [max_c k', min_c k']
            let (hi, lo) = gc.split_at_mut(r);
            hi.fill(f32::NEG_INFINITY);
            lo.fill(f32::INFINITY);
            for row in kp[s * r..e * r].chunks_exact(r) {
                for t in 0..r {
                    hi[t] = hi[t].max(row[t]);
                    lo[t] = lo[t].min(row[t]);
                }
            }
        } else {
            s1.fill(0.0);
            s2.fill(0.0);
            for row in kp[s * r..e * r].chunks_exact(r) {
                for t in 0..r {
                    let x = row[t] as f64;
                    s1[t] += x;
                    s2[t] += x * x;
                }
            }
            for t in 0..r {
                let mean = s1[t] / n;
                gc[t] = mean as f32;
                if kind == Estimate::Gauss {
                    gc[r + t] = (s2[t] / n - mean * mean).max(0.0) as f32;
                }
            }
        }
        bias[c] = n.ln() as f32;
    }
    Cells { g, bias, gt: Vec::new() }
}

impl Cells {
    /// Fills `gt` with `Gᵀ [F, C]` (for the per-row dimension selection).
    fn transpose(&mut self, f: usize) {
        let nc = self.bias.len();
        self.gt = vec![0.0f32; f * nc];
        for (c, row) in self.g.chunks_exact(f).enumerate() {
            for (t, &x) in row.iter().enumerate() {
                self.gt[t * nc + c] = x;
            }
        }
    }
}

/// Bytes the estimation allocates (features, cell moments, one job's buffers per worker, and the
/// key lists: at most `min(S_kv, k_i + 2 cells)` keys per row).
pub fn scratch_bytes(c: &Sea, p: &Problem, par: Par) -> usize {
    let grid_len = c.cells.min(p.s_kv).max(1);
    let r = c.trained.as_ref().map_or(if c.rank == 0 { p.d } else { c.rank }, |e| e.rank());
    let f = c.estimate.factor() * r;
    let width = p.s_kv.div_ceil(grid_len);
    let per_row = match c.budget {
        Budget::Count(k) => k.saturating_add(2 * width),
        Budget::Fraction(x) => (x * p.s_kv as f64).ceil() as usize + 2 * width,
    }
    .min(p.s_kv);
    let heads = p.b * p.h;
    let copies = if c.dims > 0 && c.dims < r { 2 } else { 1 };
    4 * (p.b * p.h_kv * grid_len * (copies * f + 1)
        + par.threads() * (p.s_kv * (p.d + r) + ROWS * (p.d + f + grid_len))
        + heads * p.s_q * (per_row + 2))
}

/// The support of every query head as a [`BlockList`] (`bm = 1`, per row a key block per chosen
/// cell and the wider cells' last keys as columns), and the pairs the estimate cost: per head `⌈(Σ_blocks rows·cells·F + S_kv·F
/// [+ (S_q + S_kv)·r·D]) / D⌉` — multiply-adds of the estimate GEMMs, the cell moments and (when
/// projected) the projections, in units of one `D`-long dot product (a score), as Performer counts.
///
/// # Errors
/// [`Error::InvalidParam`] from [`BlockList::new`] (not expected: the lists are built valid).
pub fn pattern(
    c: &Sea,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    par: Par,
) -> Result<(BlockList, u64)> {
    let d = p.d;
    if let Some(e) = c.trained.as_ref().filter(|e| e.head_dim() != d) {
        return Err(Error::InvalidParam {
            op: "sea",
            name: "estimator",
            detail: format!("trained for D = {}, the problem has D = {d}", e.head_dim()),
        });
    }
    let grid = Grid::new(p.s_kv, c.cells);
    // A budget that covers every row's visible keys keeps every cell: the support is the mask's,
    // no estimate is needed (its cost would be wasted), and the executors get one key block over
    // all keys per block of ROWS rows (masked inside), the layout they run fastest.
    let keeps_all = (0..p.b).all(|b| {
        (0..p.s_q).all(|i| {
            let pl = RowPlan::new(c, &grid, params, b, i);
            pl.kappa == pl.end - pl.first
        })
    });
    if keeps_all {
        let bm = ROWS.min(p.s_q).max(1);
        let heads = (0..p.b * p.h)
            .map(|_| {
                let mut hl = HeadList::new();
                for _ in 0..p.s_q.div_ceil(bm) {
                    hl.push(&[0], &[]);
                }
                hl
            })
            .collect();
        return Ok((BlockList::new(bm, p.s_kv, p.s_q, p.s_kv, heads)?, 0));
    }
    let proj = projection(c, d);
    let r = proj.as_ref().map_or(d, |w| w.2);
    let f = c.estimate.factor() * r;
    let w_q = proj.as_ref().map(|w| (&w.0[..], w.2));
    let w_k = proj.as_ref().map(|w| (&w.1[..], w.2));
    // SparQ's per-row dimension selection (`dims < r`): the estimate sums over those dimensions
    // only, as axpys over the transposed cell features, at `dims/r` of the GEMM's cost.
    let by_dims = c.dims > 0 && c.dims < r;
    let level = Level::current();

    // 1. Cell features per key/value head.
    let kv_heads = p.b * p.h_kv;
    let slots: Vec<Mutex<Option<Cells>>> = (0..kv_heads).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    par.run(par.threads().min(kv_heads), |_| loop {
        let job = next.fetch_add(1, Ordering::Relaxed);
        if job >= kv_heads {
            break;
        }
        let mut cells = cells(p, inputs, &grid, c.estimate, w_k, job / p.h_kv, job % p.h_kv);
        if by_dims {
            cells.transpose(f);
        }
        *slots[job].lock().unwrap_or_else(|e| e.into_inner()) = Some(cells);
    });
    let cells: Vec<Cells> = slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every kv head ran"))
        .collect();

    // 2. Per (query head, block of ROWS rows): estimates and the chosen keys of each row.
    let blocks = p.s_q.div_ceil(ROWS);
    let jobs = p.b * p.h * blocks;
    type Rows = (Vec<u32>, Vec<u32>, Vec<(usize, usize)>, u64); // blocks, cols, row ends, work
    let results: Vec<Mutex<Option<Rows>>> = (0..jobs).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let scale = params.scale;
    par.run(par.threads().min(jobs), |_| {
        let mut q = vec![0.0f32; ROWS * d];
        let mut fq = vec![0.0f32; ROWS * f];
        let mut est = vec![0.0f32; ROWS * grid.len()];
        let mut plans = Vec::with_capacity(ROWS);
        let (mut keys, mut chosen) = (Vec::new(), Vec::new());
        let (mut sel, mut terms) = (Vec::new(), Vec::new());
        loop {
            let job = next.fetch_add(1, Ordering::Relaxed);
            if job >= jobs {
                break;
            }
            let (bh, blk) = (job / blocks, job % blocks);
            let (b, h) = (bh / p.h, bh % p.h);
            let cl = &cells[b * p.h_kv + h / p.group()];
            let (i0, i1) = (blk * ROWS, ((blk + 1) * ROWS).min(p.s_q));
            let nr = i1 - i0;
            plans.clear();
            plans.extend((i0..i1).map(|i| RowPlan::new(c, &grid, params, b, i)));
            let (mut ca, mut cz) = (usize::MAX, 0);
            for pl in plans.iter().filter(|pl| pl.kappa > 0 && pl.kappa < pl.end - pl.first) {
                ca = ca.min(pl.first);
                cz = cz.max(pl.end);
            }
            let mut work = 0u64;
            if ca < cz {
                // Query features (Gauss [s·q', ½s²·q'²], Bound [s·q'⁺, s·q'⁻], Mean s·q') of the
                // block's rows, then E = Fq Gᵀ on cells ca..cz; with `dims`, per row the
                // selected dimensions' terms as axpys over Gᵀ.
                for (r, i) in (i0..i1).enumerate() {
                    inputs.q.read_row(b, h, i, 1.0, &mut q[r * d..(r + 1) * d]);
                }
                let qp = project(&q[..nr * d], nr, d, w_q); // [nr, r]
                let nc = cz - ca;
                if by_dims {
                    for (ri, x) in qp.chunks_exact(r).enumerate() {
                        top_dims(c.dims, x, &mut sel);
                        terms.clear();
                        for &t in &sel {
                            let a = scale * x[t];
                            match c.estimate {
                                Estimate::Mean => terms.push((t, a)),
                                Estimate::Gauss => {
                                    terms.push((t, a));
                                    terms.push((r + t, 0.5 * scale * scale * x[t] * x[t]));
                                }
                                // the key maximum where q'_t ≥ 0, the minimum where q'_t < 0
                                Estimate::Bound => {
                                    terms.push((if x[t] >= 0.0 { t } else { r + t }, a))
                                }
                            }
                        }
                        work += (nc * terms.len()) as u64;
                        let e = &mut est[ri * nc..(ri + 1) * nc];
                        let nct = grid.len();
                        dispatch(
                            level,
                            DimsRow { e, gt: &cl.gt, stride: nct, start: ca, terms: &terms },
                        );
                    }
                    if w_q.is_some() {
                        work += (nr * r * d) as u64;
                    }
                } else {
                    for (row, x) in fq.chunks_exact_mut(f).zip(qp.chunks_exact(r)) {
                        for t in 0..r {
                            match c.estimate {
                                Estimate::Mean => row[t] = scale * x[t],
                                Estimate::Gauss => {
                                    row[t] = scale * x[t];
                                    row[r + t] = 0.5 * scale * scale * x[t] * x[t];
                                }
                                Estimate::Bound => {
                                    row[t] = scale * x[t].max(0.0);
                                    row[r + t] = scale * x[t].min(0.0);
                                }
                            }
                        }
                    }
                    gemm_bt(&mut est, &fq, &cl.g[ca * f..cz * f], [nr, f, nc], false);
                    work += (nr * nc * f) as u64;
                    if w_q.is_some() {
                        work += (nr * r * d) as u64;
                    }
                }
                for (e, bias) in est[..nr * nc]
                    .chunks_exact_mut(nc)
                    .flat_map(|row| row.iter_mut().zip(&cl.bias[ca..cz]))
                {
                    *e += *bias;
                }
            }
            let (mut blks, mut cols) = (Vec::new(), Vec::new());
            let mut ends = Vec::with_capacity(nr);
            for (r, pl) in plans.iter().enumerate() {
                chosen.clear();
                if pl.kappa > 0 {
                    let nc = cz.saturating_sub(ca);
                    let row = &est[r * nc..(r + 1) * nc];
                    pl.choose_f32(row, ca, &mut keys, &mut chosen);
                }
                pl.pieces(&grid, &chosen, &mut blks, &mut cols);
                ends.push((blks.len(), cols.len()));
            }
            let res = (blks, cols, ends, work);
            *results[job].lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
        }
    });

    // 3. Assemble per head, rows in order.
    let per_head_fixed =
        (p.s_kv * f) as u64 + if w_k.is_some() { (p.s_kv * r * d) as u64 } else { 0 };
    let mut heads = Vec::with_capacity(p.b * p.h);
    let mut pairs = 0u64;
    let mut it = results.into_iter();
    for _ in 0..p.b * p.h {
        let mut hl = HeadList::new();
        let mut work = per_head_fixed;
        for _ in 0..blocks {
            let (blks, cols, ends, w) = it
                .next()
                .and_then(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
                .expect("every job ran");
            let (mut sb, mut sc) = (0, 0);
            for (eb, ec) in ends {
                hl.push(&blks[sb..eb], &cols[sc..ec]);
                (sb, sc) = (eb, ec);
            }
            work += w;
        }
        pairs += work.div_ceil(d as u64);
        heads.push(hl);
    }
    let pattern =
        BlockList::new(1, grid.min_width(), p.s_q, p.s_kv, heads).map_err(|e| match e {
            Error::InvalidParam { detail, .. } => {
                Error::InvalidParam { op: "sea::estimate::pattern", name: "pattern", detail }
            }
            other => other,
        })?;
    Ok((pattern, pairs))
}
