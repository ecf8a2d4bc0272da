//! The fast path of `routing`: per cluster, its keys and values gathered once (`n × D`,
//! `n × D_v`, padded to whole tiles); its queries in tiles of [`ROW_TILE`] rows against tiles of
//! up to [`KEY_TILE`] keys (under causal only the keys up to the tile's last position): a faer
//! GEMM (`primitives::gemm`) for the scores, the masks (causal; sinks and local window taken out; `− ln c_ij` when a
//! pair shares several clusters), the shared online
//! softmax ([`RowState`], vector `exp2`), a GEMM for `P·V`; each row's piece LSE-merged into
//! its output. Then the sinks and local windows, in tiles of consecutive queries. With
//! `combine=average` the sinks and windows come first, kept apart, and each row's piece of a
//! cluster is merged with them (that cluster's own softmax) and added to the row's sum, divided
//! by `count + 1e-5` at the end. One head per job, heads in parallel; a head is sequential, so
//! the result is the same bits at any thread count.

use super::{Combine, Routes, Routing, AVERAGE_EPS, KEY_TILE, ROW_TILE};
use crate::dispatch::{Inputs, OutputMut};
use crate::mask::Mask;
use crate::methods::pattern::for_each_head;
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::gemm::{gemm, gemm_bt};
use crate::primitives::merge::merge_weights;
use crate::primitives::online_softmax::{RowState, LOG2_E};
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::problem::Problem;

/// Score columns are padded to this many (the widest SIMD register), so every row of a tile is
/// whole registers for [`RowState::update`].
const PAD: usize = 16;

/// Per-worker buffers, sized once.
pub struct Work {
    /// Gathered keys, `(S_kv + PAD) × D`.
    k: Vec<f32>,
    /// Gathered values, `(S_kv + PAD) × D_v`.
    v: Vec<f32>,
    /// Query tile (scaled), `ROW_TILE × D`.
    q: Vec<f32>,
    /// Scores / probabilities, `ROW_TILE × KEY_TILE`.
    s: Vec<f32>,
    /// Unnormalised outputs, `ROW_TILE × D_v`.
    acc: Vec<f32>,
    st: [RowState; ROW_TILE],
    alpha: [f32; ROW_TILE],
    pos: [i64; ROW_TILE],
    /// `ln c` for the duplicate correction, `c = 0..=r` (entry 0 unused).
    ln_count: Vec<f32>,
    /// Positions (in the gathered keys) of the keys that are in several clusters.
    multi: Vec<u32>,
    /// Per cluster: is it one of the current query's clusters (`C` entries, all false between
    /// rows).
    mark: Vec<bool>,
    /// With at most [`MASK_CLUSTERS`] clusters: each query's and each key's clusters as a bit
    /// set, so `c_ij` is one popcount (`S_q` and `S_kv` entries; empty otherwise).
    qmask: Vec<u64>,
    kmask: Vec<u64>,
    /// Average only: every row's sinks-and-window piece, `S_q × D_v` and `S_q` (empty
    /// otherwise).
    fo: Vec<f32>,
    flse: Vec<f32>,
}

/// Clusters up to which [`Work`] keeps the cluster sets as `u64` bit sets.
const MASK_CLUSTERS: usize = 64;

impl Work {
    fn new(p: &Problem) -> Self {
        Self {
            k: vec![0.0; (p.s_kv + PAD) * p.d],
            v: vec![0.0; (p.s_kv + PAD) * p.d_v],
            q: vec![0.0; ROW_TILE * p.d],
            s: vec![0.0; ROW_TILE * KEY_TILE],
            acc: vec![0.0; ROW_TILE * p.d_v],
            st: [RowState::EMPTY; ROW_TILE],
            alpha: [1.0; ROW_TILE],
            pos: [0; ROW_TILE],
            ln_count: Vec::new(),
            multi: Vec::with_capacity(p.s_kv),
            mark: Vec::new(),
            qmask: Vec::with_capacity(p.s_q),
            kmask: Vec::with_capacity(p.s_kv),
            fo: Vec::new(),
            flse: Vec::new(),
        }
    }

    /// Bytes a worker allocates for a call of shape `p`.
    pub fn bytes(p: &Problem) -> usize {
        4 * ((p.s_kv + PAD) * (p.d + p.d_v) + p.s_kv + ROW_TILE * (p.d + KEY_TILE + p.d_v + 4))
            + 8 * (p.s_q + p.s_kv)
    }
}

/// One online-softmax step for the rows of a score tile (row stride `w`, a multiple of [`PAD`]).
struct Softmax<'a> {
    s: &'a mut [f32],
    w: usize,
    st: &'a mut [RowState],
    alpha: &'a mut [f32],
}

impl Kernel for Softmax<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        for ((row, st), a) in self.s.chunks_exact_mut(self.w).zip(self.st).zip(self.alpha) {
            // SAFETY: dispatched at level S; `w` is a multiple of every level's lane count.
            *a = unsafe { st.update::<S>(row, LOG2_E) };
        }
    }
}

/// Where [`Head::attend`] puts each row's piece.
enum Dest<'a> {
    /// LSE-merged into the row's output: the union softmax.
    Merge,
    /// Merged with the row's sinks-and-window piece `(fo, flse)` (the cluster's own softmax over
    /// its keys and the fixed ones), then added to the row's output (a sum over its clusters)
    /// and its log-sum-exp to the row's running log-sum-exp.
    Average { fo: &'a [f32], flse: &'a [f32] },
}

/// Which part of the support a call of [`Head::attend`] computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// Keys of the rows' cluster: allowed by the mask, not sinks, outside the local window.
    Cluster,
    /// The sinks and the local window `p − L < j ≤ p` (allowed by the mask).
    Fixed,
}

/// What every piece of one head reads and writes.
struct Head<'a> {
    cfg: &'a Routing,
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    params: &'a Resolved,
    b: usize,
    h: usize,
    level: Level,
}

impl Head<'_> {
    /// Attention of `rows` (ascending) over `keys` (ascending) restricted to `piece`, merged by
    /// log-sum-exp into `o` / `lse` (the head's rows). With `routes` (several clusters per query
    /// and per key), each pair's score is lowered by `ln c_ij`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        w: &mut Work,
        routes: Option<&Routes>,
        rows: &[u32],
        keys: &[u32],
        piece: Piece,
        dest: &Dest,
        o: &mut [f32],
        lse: &mut [f32],
    ) {
        let (d, dv) = (self.p.d, self.p.d_v);
        let hk = self.h / self.p.group();
        let causal = matches!(self.params.mask, Mask::Causal);
        let local = self.cfg.local as i64;
        let sink = self.cfg.sink as i64;
        let n = keys.len();
        for (t, &j) in keys.iter().enumerate() {
            self.inputs.k.read_row(self.b, hk, j as usize, 1.0, &mut w.k[t * d..(t + 1) * d]);
            self.inputs.v.read_row(self.b, hk, j as usize, 1.0, &mut w.v[t * dv..(t + 1) * dv]);
        }
        w.multi.clear();
        if let Some(rs) = routes {
            let several = |&(_, &j): &(usize, &u32)| rs.clusters_of_key(j as usize).len() > 1;
            w.multi.extend(keys.iter().enumerate().filter(several).map(|(t, _)| t as u32));
        }
        // Zero rows after the last key: a tile may reach up to PAD − 1 rows past it.
        w.k[n * d..(n + PAD) * d].fill(0.0);
        w.v[n * dv..(n + PAD) * dv].fill(0.0);
        for rt in rows.chunks(ROW_TILE) {
            let nr = rt.len();
            for (r, &i) in rt.iter().enumerate() {
                let i = i as usize;
                self.inputs.q.read_row(
                    self.b,
                    self.h,
                    i,
                    self.params.scale,
                    &mut w.q[r * d..(r + 1) * d],
                );
                w.pos[r] = self.params.position(i);
            }
            let (lo_pos, top) = (w.pos[0], w.pos[nr - 1]);
            // Keys a row of the tile may see (under causal: up to the last row's position).
            let nk_all = if causal { keys.partition_point(|&j| j as i64 <= top) } else { n };
            w.st[..nr].fill(RowState::EMPTY);
            w.acc[..nr * dv].fill(0.0);
            for k0 in (0..nk_all).step_by(KEY_TILE) {
                let nk = (nk_all - k0).min(KEY_TILE);
                let wd = nk.div_ceil(PAD) * PAD;
                let (first, last) = (keys[k0] as i64, keys[k0 + nk - 1] as i64);
                // S = Q·Kᵀ: nr × wd.
                gemm_bt(&mut w.s, &w.q, &w.k[k0 * d..], [nr, d, wd], false);
                // The tile needs masking unless every (row, key) is in the piece.
                let whole = match piece {
                    // Every key a non-sink before every row's window, or (no mask) after every row.
                    Piece::Cluster => {
                        first >= sink && (last <= lo_pos - local || (!causal && first > top))
                    }
                    // Every key inside every row's window.
                    Piece::Fixed => first > top - local && last <= lo_pos,
                };
                let kt = &keys[k0..k0 + nk];
                // Tile positions of the keys in several clusters (ascending).
                let mk = &w.multi[w.multi.partition_point(|&t| (t as usize) < k0)
                    ..w.multi.partition_point(|&t| (t as usize) < k0 + nk)];
                // Keys are ascending: each part of a row's mask is a run of the tile.
                let s_end = kt.partition_point(|&j| (j as i64) < sink); // sinks: [0, s_end)
                let ninf = f32::NEG_INFINITY;
                for (r, srow) in w.s[..nr * wd].chunks_exact_mut(wd).enumerate() {
                    let pos = w.pos[r];
                    // Keys ≤ pos: [0, a); keys ≤ pos − L: [0, b); the window is [b, a).
                    let a = kt.partition_point(|&j| j as i64 <= pos);
                    let b = kt.partition_point(|&j| j as i64 <= pos - local);
                    match piece {
                        _ if whole => {}
                        Piece::Cluster => {
                            // Sinks, then the window and (causal) every later key.
                            srow[..s_end].fill(ninf);
                            let lo = b.max(s_end);
                            if causal {
                                srow[lo..nk].fill(ninf);
                            } else if a > lo {
                                srow[lo..a].fill(ninf);
                            }
                        }
                        Piece::Fixed => {
                            // Keep the sinks seen, [0, sk), and the window [b, a).
                            let sk = if causal { s_end.min(a) } else { s_end };
                            if b > sk {
                                srow[sk..b].fill(ninf);
                            }
                            srow[a.max(sk)..nk].fill(ninf);
                        }
                    }
                    // − ln c_ij where both the query and the key are in several clusters (a
                    // pair with one of them in this cluster only shares exactly this one).
                    if let Some(rs) = routes {
                        let qc = rs.clusters_of(rt[r] as usize);
                        if qc.len() > 1 && !w.qmask.is_empty() {
                            // c_ij = |clusters(i) ∩ clusters(j)| as a popcount of bit sets.
                            let qm = w.qmask[rt[r] as usize];
                            for &t in mk {
                                let t = t as usize - k0;
                                if srow[t] != ninf {
                                    let j = kt[t] as usize;
                                    srow[t] -= w.ln_count[(qm & w.kmask[j]).count_ones() as usize];
                                }
                            }
                        } else if qc.len() > 1 {
                            // c_ij = Σ_{c ∈ clusters(j)} [c ∈ clusters(i)], by a mark per cluster.
                            qc.iter().for_each(|&c| w.mark[c as usize] = true);
                            for &t in mk {
                                let t = t as usize - k0;
                                if srow[t] != ninf {
                                    let kc = rs.clusters_of_key(kt[t] as usize);
                                    let c = kc.iter().filter(|&&c| w.mark[c as usize]).count();
                                    srow[t] -= w.ln_count[c];
                                }
                            }
                            qc.iter().for_each(|&c| w.mark[c as usize] = false);
                        }
                    }
                    srow[nk..].fill(ninf);
                }
                dispatch(
                    self.level,
                    Softmax {
                        s: &mut w.s[..nr * wd],
                        w: wd,
                        st: &mut w.st[..nr],
                        alpha: &mut w.alpha[..nr],
                    },
                );
                for r in 0..nr {
                    let a = w.alpha[r];
                    if a != 1.0 {
                        w.acc[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= a);
                    }
                }
                // acc += P·V: nr × D_v.
                gemm(&mut w.acc, &w.s, &w.v[k0 * dv..], [nr, wd, dv], true);
            }
            for (r, &i) in rt.iter().enumerate() {
                let (inv_l, piece_lse) = w.st[r].finish();
                if let Dest::Average { fo, flse } = dest {
                    let i = i as usize;
                    let y = &w.acc[r * dv..(r + 1) * dv];
                    let out = &mut o[i * dv..(i + 1) * dv];
                    let f = &fo[i * dv..(i + 1) * dv];
                    // This cluster's softmax: the piece merged with the fixed keys' piece.
                    let (a, c, cl_lse) = if piece_lse == f32::NEG_INFINITY {
                        (1.0, 0.0, flse[i])
                    } else {
                        let (a, c, m) = merge_weights(flse[i], piece_lse);
                        (a, c * inv_l, m)
                    };
                    if cl_lse == f32::NEG_INFINITY {
                        continue; // an empty softmax: adds 0 (the count still holds it)
                    }
                    match (a == 0.0, c == 0.0) {
                        (true, _) => out.iter_mut().zip(y).for_each(|(x, y)| *x += y * c),
                        (_, true) => out.iter_mut().zip(f).for_each(|(x, f)| *x += a * f),
                        _ => out.iter_mut().zip(f.iter().zip(y)).for_each(|(x, (f, y))| {
                            *x += a * f + c * y;
                        }),
                    }
                    lse[i] = merge_weights(lse[i], cl_lse).2;
                    continue;
                }
                if piece_lse == f32::NEG_INFINITY {
                    continue; // no key in this piece
                }
                let i = i as usize;
                if lse[i] == f32::NEG_INFINITY {
                    // The row's first piece: what the merge with nothing gives (weights 0 and
                    // 1, lse + ln 1), without its exp and ln.
                    let out = &mut o[i * dv..(i + 1) * dv];
                    out.iter_mut()
                        .zip(&w.acc[r * dv..(r + 1) * dv])
                        .for_each(|(x, y)| *x = y * inv_l);
                    lse[i] = piece_lse + 0.0;
                    continue;
                }
                let (a, c, merged) = merge_weights(lse[i], piece_lse);
                let c = c * inv_l;
                for (x, y) in o[i * dv..(i + 1) * dv].iter_mut().zip(&w.acc[r * dv..(r + 1) * dv]) {
                    *x = if a == 0.0 { y * c } else { a * *x + y * c };
                }
                lse[i] = merged;
            }
        }
    }

    /// The whole head: routing, every cluster, then the local windows (average: the local
    /// windows first). Returns the pairs scored.
    fn run(&self, w: &mut Work, o: &mut [f32], lse: &mut [f32]) -> u64 {
        let (p, params, cfg) = (self.p, self.params, self.cfg);
        o.fill(0.0);
        lse.fill(f32::NEG_INFINITY);
        let routes = cfg.routes(p, self.inputs, params, self.b, self.h);
        let average = cfg.combine == Combine::Average;
        // A pair can share several clusters only when queries and keys both have several (the
        // average takes one softmax per cluster: no correction).
        let dup = !average && routes.memberships > 1 && routes.key_memberships > 1;
        w.ln_count = (0..=routes.memberships).map(|c| (c.max(1) as f32).ln()).collect();
        w.mark.clear();
        w.mark.resize(routes.clusters, false);
        w.qmask.clear();
        w.kmask.clear();
        if dup && routes.clusters <= MASK_CLUSTERS {
            let bits = |cs: &[u32]| cs.iter().fold(0u64, |m, &c| m | 1 << c);
            w.qmask.extend((0..p.s_q).map(|i| bits(routes.clusters_of(i))));
            w.kmask.extend((0..p.s_kv).map(|j| bits(routes.clusters_of_key(j))));
        }
        if !average {
            for c in 0..routes.clusters {
                let rows = routes.cluster_queries(c);
                if rows.is_empty() || routes.cluster_keys(c).is_empty() {
                    continue;
                }
                let rs = if dup { Some(&routes) } else { None };
                let keys = routes.cluster_keys(c);
                self.attend(w, rs, rows, keys, Piece::Cluster, &Dest::Merge, o, lse);
            }
            self.fixed(w, o, lse);
            return cfg.scored_pairs(&routes, params, p.s_q, p.s_kv);
        }
        // Average: the fixed piece of every row first, kept apart.
        let (mut fo, mut flse) = (std::mem::take(&mut w.fo), std::mem::take(&mut w.flse));
        fo.clear();
        fo.resize(p.s_q * p.d_v, 0.0);
        flse.clear();
        flse.resize(p.s_q, f32::NEG_INFINITY);
        self.fixed(w, &mut fo, &mut flse);
        let dest = Dest::Average { fo: &fo, flse: &flse };
        for c in 0..routes.clusters {
            let rows = routes.cluster_queries(c);
            // A cluster without keys still gives its rows the softmax over their fixed keys.
            if !rows.is_empty() {
                self.attend(w, None, rows, routes.cluster_keys(c), Piece::Cluster, &dest, o, lse);
            }
        }
        // The mean over the query's clusters: Σ_c o_c / (n + 1e-5), lse = ln((1/n) Σ_c e^lse_c);
        // a query in no cluster keeps o = 0, lse = −∞.
        let dv = p.d_v;
        for (i, (out, l)) in o.chunks_exact_mut(dv).zip(lse.iter_mut()).enumerate() {
            let n = routes.clusters_of(i).len();
            if n > 0 {
                let inv = 1.0 / (n as f32 + AVERAGE_EPS);
                out.iter_mut().for_each(|x| *x *= inv);
                *l -= (n as f32).ln();
            }
        }
        (w.fo, w.flse) = (fo, flse);
        cfg.scored_pairs(&routes, params, p.s_q, p.s_kv)
    }

    /// The sinks and local windows of every row, in tiles of [`Routing::fixed_tile`]
    /// consecutive queries, LSE-merged into `o` / `lse`.
    fn fixed(&self, w: &mut Work, o: &mut [f32], lse: &mut [f32]) {
        let (p, params, cfg) = (self.p, self.params, self.cfg);
        let mut rows: Vec<u32> = Vec::with_capacity(ROW_TILE);
        let mut keys: Vec<u32> = Vec::new();
        let tile = cfg.fixed_tile();
        for i0 in (0..p.s_q).step_by(tile) {
            let i1 = (i0 + tile).min(p.s_q);
            cfg.fixed_keys(params, p.s_kv, i0, i1, &mut keys);
            if keys.is_empty() {
                continue;
            }
            rows.clear();
            rows.extend(i0 as u32..i1 as u32);
            self.attend(w, None, &rows, &keys, Piece::Fixed, &Dest::Merge, o, lse);
        }
    }
}

/// The fast path: heads in parallel over `par` ([`for_each_head`]); returns the pairs scored.
pub fn forward(
    cfg: &Routing,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    par: Par,
    out: OutputMut,
) -> u64 {
    // Workers run at the caller's level (a thread-local setting).
    let level = Level::current();
    for_each_head(
        p,
        par,
        out,
        || Work::new(p),
        |work, b, h, o, lse| Head { cfg, p, inputs, params, b, h, level }.run(work, o, lse),
    )
}
