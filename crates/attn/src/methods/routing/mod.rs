//! Routing Transformer attention (spec §6): queries and keys routed to the clusters of a
//! spherical k-means (fitted on the call's own unit queries and keys — the training-free mode —
//! or loaded), each query attending with an exact softmax to the keys of its clusters plus a
//! local window — one softmax over the union of its clusters (`combine=union`, the default), or
//! the spec's average of one softmax per cluster (`combine=average`, §6.2 step 5); see
//! `README.md` in this folder.
//!
//! - [`clusters`]: the centroids and the routing, shared by both implementations (f32 with a
//!   fixed summation order, so the support is bitwise the same at every SIMD level and thread
//!   count).
//! - [`reference`](mod@reference): softmax over each row's support, pair by pair in f64.
//! - [`tiled`]: per cluster, its keys gathered once and its queries in tiles of 64 rows against
//!   tiles of 256 keys (faer GEMMs, vectorised online softmax), then the local window, merged by
//!   log-sum-exp; heads in parallel.

pub mod clusters;
pub mod reference;
pub mod tiled;

use crate::dispatch::{parse_param, Inputs, OutputMut, ParamInfo, Reason, Stats};
use crate::error::{Error, Result};
use crate::mask::{Mask, MaskKind};
use crate::methods::pattern::{positive, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::problem::Problem;
pub use clusters::{Centroids, Routes};
use std::sync::Arc;

/// Query rows per tile of the fast path (and of the pair count).
pub const ROW_TILE: usize = 64;
/// Keys per tile of the fast path.
pub const KEY_TILE: usize = 256;

/// How tokens are assigned to clusters (spec §6.2 step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// [`Balance::TopW`] without a mask, [`Balance::Nearest`] under causal (the default).
    Auto,
    /// Each query joins its `r` nearest centroids and each key its `r_k` nearest: a token's
    /// clusters depend on that token alone, so causal rows never see later keys.
    Nearest,
    /// Balanced (official routing): each cluster takes the `w_q` queries and `w_k` keys most
    /// similar to its centroid over the whole sequence (`w = ⌈S / C⌉`, times `r` / `r_k`). Not
    /// causal: a later key can evict an earlier one from a cluster, so a causal mask rejects it.
    TopW,
}

impl Balance {
    /// The parameter value: `auto`, `nearest` or `topw`.
    pub fn name(self) -> &'static str {
        match self {
            Balance::Auto => "auto",
            Balance::Nearest => "nearest",
            Balance::TopW => "topw",
        }
    }
}

/// How a query's per-cluster attention becomes its output (spec §6.2 step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// [library choice] One softmax over the union of the query's clusters' keys (each pair
    /// counted once: the LSE merge with the `− ln c_ij` correction); a query no top-`w` cluster
    /// took joins its nearest cluster (the default).
    Union,
    /// The spec's scatter-back: one ordinary softmax per cluster that selected the query (over
    /// that cluster's keys plus the sinks and local window), the output
    /// `Σ_c o_c / (count + `[`AVERAGE_EPS`]`)`; a query no cluster selected gets `o = 0`,
    /// `lse = −∞` (it is not moved to its nearest cluster).
    Average,
}

impl Combine {
    /// The parameter value: `union` or `average`.
    pub fn name(self) -> &'static str {
        match self {
            Combine::Union => "union",
            Combine::Average => "average",
        }
    }
}

/// The constant added to a query's cluster count under [`Combine::Average`]: the pip port's
/// `scatter_mean` (`sum / (count + 1e-5)`; the official code adds 0.01).
pub const AVERAGE_EPS: f32 = 1e-5;

/// `routing`: k-means routing of queries and keys, attention inside the clusters plus a local
/// window.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Clusters `C`; 0 means `⌈S_kv / window⌉` (ignored with loaded centroids).
    pub clusters: usize,
    /// Target keys per cluster `w` when `clusters = 0` (official routing window 512).
    pub window: usize,
    /// Lloyd iterations of the training-free k-means (port: 10).
    pub iters: usize,
    /// Clusters each query attends to, `r` (its `r` nearest centroids; keys go to one cluster).
    pub memberships: usize,
    /// Clusters each key joins, `r_k` (its `r_k` nearest centroids).
    pub key_memberships: usize,
    /// Local window `L`: every query also sees keys `p_i − L < j ≤ p_i` (1 = its own position).
    pub local: usize,
    /// Sink keys: every query also sees keys `j < sink` (allowed by the mask); 0 = none.
    pub sink: usize,
    /// Seed of the k-means initialisation (keyed with the query head, spec §0.4.5).
    pub seed: u64,
    /// Cluster assignment: nearest centroid or balanced top-`w` (`Auto`: top-`w` without a mask,
    /// nearest under causal).
    pub balance: Balance,
    /// Union softmax over the query's clusters, or the average of per-cluster softmaxes.
    pub combine: Combine,
    /// Loaded centroids `[H, C, D]`; `None` fits them on the input.
    pub centroids: Option<Arc<Centroids>>,
}

impl Routing {
    /// Defaults: `C = ⌈S_kv/512⌉` (official window), 10 k-means iterations (port), one cluster per
    /// query and per key, a local window of 256 (the port's local attention window, spec §6.3; the
    /// paper pairs routing heads with local heads), no sinks, seed 0, centroids fitted on the
    /// input, one softmax over the union of the query's clusters.
    pub const DEFAULT: Routing = Routing {
        clusters: 0,
        window: 512,
        iters: 10,
        memberships: 1,
        key_memberships: 1,
        local: 256,
        sink: 0,
        seed: 0,
        balance: Balance::Auto,
        combine: Combine::Union,
        centroids: None,
    };

    /// The default method with loaded centroids (`[H, C, D]`, one set per query head): the
    /// k-means is skipped; `clusters`, `window`, `iters` and `seed` no longer matter.
    pub fn with_centroids(centroids: Centroids) -> Self {
        Self { centroids: Some(Arc::new(centroids)), ..Self::DEFAULT }
    }

    /// The assignment used under `mask`: `balance`, with `Auto` resolved (top-`w` without a
    /// mask, nearest under causal).
    pub fn balance_for(&self, mask: &Mask) -> Balance {
        match (self.balance, mask) {
            (Balance::Auto, Mask::Causal) => Balance::Nearest,
            (Balance::Auto, _) => Balance::TopW,
            (b, _) => b,
        }
    }

    /// Keys `[lo, hi)` of row `i`'s local window: `p_i − L < j ≤ p_i`, clipped to `[0, S_kv)`.
    #[inline]
    pub fn local_range(&self, params: &Resolved, s_kv: usize, i: usize) -> (usize, usize) {
        let pos = params.position(i);
        let hi = (pos + 1).clamp(0, s_kv as i64);
        let lo = (pos + 1 - self.local as i64).clamp(0, hi);
        (lo as usize, hi as usize)
    }

    /// True when key `j` is in row `i`'s local window.
    #[inline]
    pub fn in_local(&self, params: &Resolved, i: usize, j: usize) -> bool {
        let (pos, j) = (params.position(i), j as i64);
        j <= pos && j > pos - self.local as i64
    }

    /// True when key `j` is one row `i` always sees: a sink allowed by the mask, or in its local
    /// window.
    #[inline]
    pub fn in_fixed(&self, params: &Resolved, i: usize, j: usize) -> bool {
        (j < self.sink && allowed(params, i, j)) || self.in_local(params, i, j)
    }

    /// The keys the rows `i0..i1` (ascending) always see, ascending, into `out`: the sinks (under
    /// causal only up to the last row's position) and the union of the rows' local windows.
    pub fn fixed_keys(
        &self,
        params: &Resolved,
        s_kv: usize,
        i0: usize,
        i1: usize,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        let top = params.position(i1 - 1);
        let sink_end = match params.mask {
            Mask::Causal => self.sink.min((top + 1).clamp(0, s_kv as i64) as usize),
            _ => self.sink.min(s_kv),
        };
        out.extend(0..sink_end as u32);
        if self.local > 0 {
            let (lo, _) = self.local_range(params, s_kv, i0);
            let (_, hi) = self.local_range(params, s_kv, i1 - 1);
            out.extend(lo.max(sink_end) as u32..hi.max(sink_end) as u32);
        }
    }

    /// Rows per tile of the sinks-and-window piece: the window length between 16 and
    /// [`ROW_TILE`] (a tile scores its rows against the union of their windows, `rows + L − 1`
    /// keys, so short windows take short tiles).
    pub fn fixed_tile(&self) -> usize {
        self.local.clamp(16, ROW_TILE)
    }

    /// The pairs the fast path scores for one `(b, h)`, including those masked inside a tile:
    /// per cluster and tile of [`ROW_TILE`] of its queries, the tile's rows times the cluster's
    /// keys up to the tile's last position (all of them without a mask); per tile of
    /// [`Routing::fixed_tile`] consecutive queries, the rows times their [`Routing::fixed_keys`].
    pub fn scored_pairs(&self, routes: &Routes, params: &Resolved, s_q: usize, s_kv: usize) -> u64 {
        let causal = matches!(params.mask, Mask::Causal);
        let mut pairs = 0u64;
        for c in 0..routes.clusters {
            let keys = routes.cluster_keys(c);
            for rt in routes.cluster_queries(c).chunks(ROW_TILE) {
                let top = params.position(rt[rt.len() - 1] as usize);
                let nk =
                    if causal { keys.partition_point(|&j| j as i64 <= top) } else { keys.len() };
                pairs += (rt.len() * nk) as u64;
            }
        }
        let mut fixed = Vec::new();
        let tile = self.fixed_tile();
        for i0 in (0..s_q).step_by(tile) {
            let i1 = (i0 + tile).min(s_q);
            self.fixed_keys(params, s_kv, i0, i1, &mut fixed);
            pairs += ((i1 - i0) * fixed.len()) as u64;
        }
        pairs
    }
}

impl Default for Routing {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// True when query `i` may see key `j` under the call's mask (none or causal).
#[inline]
pub fn allowed(params: &Resolved, i: usize, j: usize) -> bool {
    !matches!(params.mask, Mask::Causal) || (j as i64) <= params.position(i)
}

impl SparseConfig for Routing {
    const NAME: &'static str = "routing";
    const REFERENCE_NAME: &'static str = "routing-reference";
    const FAMILY: &'static str = "routing";
    const DESCRIPTION: &'static str =
        "Routing Transformer: spherical k-means on the input's q/k (or loaded centroids), softmax over the keys of the query's clusters + a local window";
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "clusters",
                value: self.clusters.to_string(),
                doc: "clusters C; 0 = ceil(S_kv / window) (ignored with loaded centroids)",
            },
            ParamInfo {
                name: "window",
                value: self.window.to_string(),
                doc: "target keys per cluster when clusters = 0 (official routing window 512)",
            },
            ParamInfo {
                name: "iters",
                value: self.iters.to_string(),
                doc: "Lloyd iterations of the k-means on the input (port default 10; 0 = seeded picks)",
            },
            ParamInfo {
                name: "memberships",
                value: self.memberships.to_string(),
                doc: "clusters each query attends to: its r nearest centroids (1)",
            },
            ParamInfo {
                name: "key_memberships",
                value: self.key_memberships.to_string(),
                doc: "clusters each key joins: its r_k nearest centroids (1)",
            },
            ParamInfo {
                name: "local",
                value: self.local.to_string(),
                doc: "local window L: keys p-L < j <= p are always seen (256, the port's local window; 1 = the diagonal; 0 = none)",
            },
            ParamInfo {
                name: "sink",
                value: self.sink.to_string(),
                doc: "sink keys j < sink are always seen (0 = none; not in the paper)",
            },
            ParamInfo {
                name: "seed",
                value: self.seed.to_string(),
                doc: "k-means initialisation seed, keyed with the query head (0)",
            },
            ParamInfo {
                name: "balance",
                value: self.balance.name().into(),
                doc: "cluster assignment: topw = each cluster takes its ceil(S/C)*r most similar queries and ceil(S/C)*r_k keys (balanced, official; not causal), nearest = each token its nearest centroids; auto = topw without a mask, nearest under causal",
            },
            ParamInfo {
                name: "combine",
                value: self.combine.name().into(),
                doc: "union = one softmax over the union of the query's clusters (a query no cluster took joins its nearest); average = the spec's scatter-back: per-cluster softmaxes averaged, sum / (count + 1e-5), 0 for a query no cluster took",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |detail: &str| Error::BadParam {
            method: Self::NAME.into(),
            key: key.into(),
            value: value.into(),
            detail: detail.into(),
        };
        match key {
            "clusters" => {
                let c: usize = parse_param(Self::NAME, key, value)?;
                if c > 1 << 16 {
                    return Err(bad("at most 65536 clusters"));
                }
                self.clusters = c;
            }
            "window" => self.window = positive(Self::NAME, key, value)?,
            "iters" => {
                self.iters = parse_param(Self::NAME, key, value)?;
                if self.iters > 1000 {
                    return Err(bad("at most 1000 iterations"));
                }
            }
            "memberships" => {
                self.memberships = positive(Self::NAME, key, value)?;
                if self.memberships > 1 << 16 {
                    return Err(bad("at most 65536 memberships"));
                }
            }
            "key_memberships" => {
                self.key_memberships = positive(Self::NAME, key, value)?;
                if self.key_memberships > 1 << 16 {
                    return Err(bad("at most 65536 memberships"));
                }
            }
            "local" => self.local = parse_param(Self::NAME, key, value)?,
            "sink" => self.sink = parse_param(Self::NAME, key, value)?,
            "seed" => self.seed = parse_param(Self::NAME, key, value)?,
            "balance" => {
                self.balance = match value {
                    "auto" => Balance::Auto,
                    "nearest" => Balance::Nearest,
                    "topw" => Balance::TopW,
                    _ => return Err(bad("auto, nearest or topw")),
                }
            }
            "combine" => {
                self.combine = match value {
                    "union" => Combine::Union,
                    "average" => Combine::Average,
                    _ => return Err(bad("union or average")),
                }
            }
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
        let mut r = Vec::new();
        if self.balance == Balance::TopW && matches!(params.mask, Mask::Causal) {
            r.push(Reason::Other(
                "routing: balance=topw is not causal (whether a past key makes its cluster's top-w \
                 depends on the similarities of later keys, so a future key can evict a past one); \
                 use balance=nearest (the causal default)"
                    .into(),
            ));
        }
        if let Some(c) = &self.centroids {
            if c.heads() != p.h || c.dim() != p.d {
                r.push(Reason::Other(format!(
                    "loaded centroids are [H = {}, C = {}, D = {}] but the call has H = {}, D = {}",
                    c.heads(),
                    c.clusters(),
                    c.dim(),
                    p.h,
                    p.d
                )));
            }
        }
        r
    }

    fn forward(
        &self,
        exec: Exec,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        let pairs = match exec {
            Exec::Reference => reference::forward(self, p, inputs, params, out),
            Exec::Fast => tiled::forward(self, p, inputs, params, par, out),
        };
        Ok(Stats::pairs(pairs))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        let c = self.clusters_for(p.s_kv).min(p.s_q + p.s_kv);
        let r = self.memberships.min(c) + self.key_memberships.min(c);
        // Unit queries and keys, centroids, k-means sums and assignments, routing lists.
        let routes = 4 * ((p.s_q + p.s_kv) * p.d + c * p.d)
            + 8 * c * p.d
            + 4 * (p.s_q + p.s_kv)
            + 8 * (p.s_q + p.s_kv) * r
            + 16 * (c + 1)
            + c;
        // Top-w (the mask is not known here: counted unless `nearest` is asked): the C × S
        // similarity columns, the row order and the (cluster, row) pairs (up to r·S_q + S_q
        // stranded queries, r_k·S_kv keys) while a side is routed.
        let s = p.s_q.max(p.s_kv);
        let routes = match self.balance {
            Balance::Nearest => routes,
            _ => routes + 4 * c * s + 5 * s + 8 * (p.s_q + p.s_kv) * (r + 1),
        };
        match exec {
            Exec::Reference => routes + 8 * (p.s_kv * 2 + 2 * p.d_v),
            Exec::Fast => {
                // Average: the sinks-and-window piece of every row kept apart, S_q × (D_v + 1).
                let fixed = match self.combine {
                    Combine::Union => 0,
                    Combine::Average => 4 * p.s_q * (p.d_v + 1),
                };
                par.threads().min(p.b * p.h).max(1) * (routes + fixed + tiled::Work::bytes(p))
            }
        }
    }
}
