//! SEA (spec §3): an estimate of each query's attention compressed to `T_M` key cells, a
//! per-query top-k over the cells, and exact softmax attention on the keys of the chosen cells.
//! Training-free: the estimate of a cell's log attention mass comes from per-cell key statistics
//! (per-dimension extremes by default; or mean and variance), optionally after a random or a
//! loaded projection. See
//! `README.md` in this folder.
//!
//! - [`estimate`]: the support (cell grid, estimates, per-row top-k) as a [`BlockList`] of
//!   per-row key lists — shared by both implementations.
//! - [`reference`](mod@reference): the plain-loop f64 definition of the estimate and the
//!   selection, which the tests hold [`estimate`] to.
//! - the attention over the support: [`crate::primitives::sparse::kernel`] (fast) or
//!   [`crate::primitives::sparse::reference`] (f64).

pub mod estimate;
pub mod reference;

use crate::dispatch::{parse_param, Inputs, OutputMut, ParamInfo, Reason, Stats};
use crate::error::{Error, Result};
use crate::mask::MaskKind;
use crate::methods::pattern::{positive, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::primitives::sparse::{kernel, reference as exec_ref, BlockList};
use crate::problem::Problem;
use std::sync::Arc;

/// How many keys a query row keeps (before rounding up to whole cells).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// `k` keys (`k_i = min(k, L_i)`): the paper's `k`.
    Count(usize),
    /// A fraction `f ∈ (0, 1]` of the row's visible keys (`k_i = ⌈f·L_i⌉`).
    Fraction(f64),
}

impl Budget {
    /// Keys row `i` keeps out of its `l` visible ones (`1 ≤ k_i ≤ l` for `l ≥ 1`).
    pub fn keys(self, l: usize) -> usize {
        let k = match self {
            Budget::Count(k) => k,
            Budget::Fraction(f) => (f * l as f64).ceil() as usize,
        };
        k.clamp(1, l.max(1))
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Count(k) => write!(f, "{k}"),
            Budget::Fraction(x) => write!(f, "{}%", x * 100.0),
        }
    }
}

/// A trained (loadable) estimator: projections `W_q`, `W_k` (`r × D`, row-major, f32) applied to
/// queries and keys before the cell statistics (`q' = W_q q`, `k' = W_k k`). Its file format:
/// safetensors with the f32 tensors `sea.w_q` and `sea.w_k`, both `[r, D]` (README).
#[derive(Debug, Clone, PartialEq)]
pub struct Estimator {
    rank: usize,
    d: usize,
    w_q: Vec<f32>,
    w_k: Vec<f32>,
}

impl Estimator {
    /// An estimator of rank `r = w_q.len() / d` for head dimension `d`.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] when `d` is 0, the weights are empty, their lengths differ or are
    /// not a multiple of `d`, or a weight is not finite.
    pub fn new(d: usize, w_q: Vec<f32>, w_k: Vec<f32>) -> Result<Self> {
        let err = |detail: String| Error::InvalidParam {
            op: "sea::Estimator::new",
            name: "weights",
            detail,
        };
        if d == 0 || w_q.is_empty() || w_q.len() != w_k.len() || !w_q.len().is_multiple_of(d) {
            return Err(err(format!(
                "w_q ({}) and w_k ({}) must both hold r·D values, D = {d}",
                w_q.len(),
                w_k.len()
            )));
        }
        if let Some(x) = w_q.iter().chain(&w_k).find(|x| !x.is_finite()) {
            return Err(err(format!("non-finite weight {x}")));
        }
        Ok(Self { rank: w_q.len() / d, d, w_q, w_k })
    }

    /// The projection width `r`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The head dimension `D` it was trained for.
    pub fn head_dim(&self) -> usize {
        self.d
    }

    /// `(W_q, W_k)`, each `[r, D]` row-major.
    pub fn weights(&self) -> (&[f32], &[f32]) {
        (&self.w_q, &self.w_k)
    }
}

/// The training-free estimate `ê_ic` of a cell's log attention mass `ln Σ_{j∈c} exp(s·q·k_j)`
/// (README; `q'`, `k'` projected when there is a projection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimate {
    /// `ln n_c + s·q'·μ_c`: the mean key of the cell (first cumulant).
    Mean,
    /// `ln n_c + s·q'·μ_c + ½s²·Σ_t q'_t²·σ²_ct`: mean and per-dimension variance (second-order
    /// cumulant expansion with a diagonal covariance).
    Gauss,
    /// `ln n_c + s·Σ_t max(q'_t·max_c k'_t, q'_t·min_c k'_t)`: the upper bound of the cell's best
    /// score from its per-dimension key extremes.
    Bound,
}

impl Estimate {
    /// Features per projected dimension (the width of the GEMM is `factor·r`).
    pub fn factor(self) -> usize {
        match self {
            Estimate::Mean => 1,
            Estimate::Gauss | Estimate::Bound => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Estimate::Mean => "mean",
            Estimate::Gauss => "gauss",
            Estimate::Bound => "bound",
        }
    }
}

/// `sea`: compressed attention estimate, per-query top-k cells, exact attention on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Sea {
    /// Keys per query row (`k`), a count or a fraction of the row's visible keys.
    pub budget: Budget,
    /// Cells `T_M` of the compressed key axis.
    pub cells: usize,
    /// Width `r` of the training-free random projection (0: none, the estimate uses all `D`
    /// dimensions). Ignored by a trained estimator.
    pub rank: usize,
    /// The estimate of a cell's attention mass.
    pub estimate: Estimate,
    /// Dimensions of the estimate per query row: the `dims` of largest `|q'_t|` (SparQ's
    /// selection); 0 (or `≥ r`): all `r`.
    pub dims: usize,
    /// Leading cells always kept (attention sinks).
    pub sink: usize,
    /// Cells before the diagonal's always kept (the diagonal's cell always is).
    pub local: usize,
    /// Seed of the random projection.
    pub seed: u64,
    /// A loaded estimator; `None`: training-free.
    pub trained: Option<Arc<Estimator>>,
}

impl Sea {
    /// The defaults: the OPT scripts' `k = 64`, `T_M = 256` (spec §3.3); the training-free
    /// estimate from per-dimension key extremes on all `D` dimensions [library choice, README];
    /// seed 0.
    pub const DEFAULT: Sea = Sea {
        budget: Budget::Count(64),
        cells: 256,
        rank: 0,
        estimate: Estimate::Bound,
        dims: 0,
        sink: 0,
        local: 0,
        seed: 0,
        trained: None,
    };

    /// This configuration with a trained estimator.
    pub fn with_estimator(mut self, e: Arc<Estimator>) -> Self {
        self.trained = Some(e);
        self
    }
}

impl Default for Sea {
    fn default() -> Self {
        Self::DEFAULT
    }
}

fn bad(key: &str, value: &str, detail: &str) -> Error {
    Error::BadParam {
        method: Sea::NAME.into(),
        key: key.into(),
        value: value.into(),
        detail: detail.into(),
    }
}

/// `64` (a count), `25%` or `0.25` (a fraction of the visible keys).
fn parse_budget(value: &str) -> Result<Budget> {
    let frac = |x: f64| {
        if x > 0.0 && x <= 1.0 {
            Ok(Budget::Fraction(x))
        } else {
            Err(bad("k", value, "a fraction must lie in (0, 1] (a percentage in (0, 100])"))
        }
    };
    if let Some(p) = value.strip_suffix('%') {
        let x: f64 = p.trim().parse().map_err(|_| bad("k", value, "expected a percentage"))?;
        frac(x / 100.0)
    } else if value.contains('.') || value.contains('e') {
        let x: f64 = value.parse().map_err(|_| bad("k", value, "expected a fraction"))?;
        frac(x)
    } else if value.bytes().all(|c| c.is_ascii_digit()) {
        Ok(Budget::Count(positive(Sea::NAME, "k", value)?))
    } else {
        Err(bad("k", value, "expected a count (64), a percentage (25%) or a fraction (0.25)"))
    }
}

impl SparseConfig for Sea {
    const NAME: &'static str = "sea";
    const REFERENCE_NAME: &'static str = "sea-reference";
    const FAMILY: &'static str = "sea";
    const DESCRIPTION: &'static str =
        "SEA: attention estimated on T_M key cells from per-cell key extremes, per-query top-k cells (+ the diagonal's), exact softmax on their keys";
    const MASKS: &'static [MaskKind] = &[
        MaskKind::None,
        MaskKind::Causal,
        MaskKind::Window,
        MaskKind::KeyPadding,
        MaskKind::PrefixLm,
        MaskKind::BlockDiagonal,
    ];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "k",
                value: self.budget.to_string(),
                doc: "keys per query: a count (64, the OPT scripts') or a fraction of the visible keys (25% or 0.25)",
            },
            ParamInfo {
                name: "cells",
                value: self.cells.to_string(),
                doc: "compressed key cells T_M (default 256, the OPT scripts')",
            },
            ParamInfo {
                name: "rank",
                value: self.rank.to_string(),
                doc: "random projection width of the estimate, 0 = all D dimensions (default 0)",
            },
            ParamInfo {
                name: "estimate",
                value: self.estimate.name().to_string(),
                doc: "cell estimate: bound (per-dimension key extremes), gauss (mean + variance), mean (default bound)",
            },
            ParamInfo {
                name: "dims",
                value: self.dims.to_string(),
                doc: "dimensions of the estimate per query: its dims largest |q_t| (SparQ), 0 = all (default 0)",
            },
            ParamInfo {
                name: "sink",
                value: self.sink.to_string(),
                doc: "leading cells always kept (default 0)",
            },
            ParamInfo {
                name: "local",
                value: self.local.to_string(),
                doc: "cells before the diagonal's always kept (default 0; the diagonal's always is)",
            },
            ParamInfo {
                name: "seed",
                value: self.seed.to_string(),
                doc: "seed of the random projection (rank > 0)",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "k" => self.budget = parse_budget(value)?,
            "cells" => self.cells = positive(Self::NAME, key, value)?,
            "rank" => self.rank = parse_param(Self::NAME, key, value)?,
            "estimate" => {
                self.estimate = match value {
                    "mean" => Estimate::Mean,
                    "gauss" => Estimate::Gauss,
                    "bound" => Estimate::Bound,
                    _ => return Err(bad(key, value, "bound, gauss or mean")),
                }
            }
            "dims" => self.dims = parse_param(Self::NAME, key, value)?,
            "sink" => self.sink = parse_param(Self::NAME, key, value)?,
            "local" => self.local = parse_param(Self::NAME, key, value)?,
            "seed" => self.seed = parse_param(Self::NAME, key, value)?,
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
        let mut r = Vec::new();
        if params.mask.has_dense() {
            r.push(Reason::Other("sea: dense element masks are not supported".into()));
        }
        if let Some(e) = &self.trained {
            if e.head_dim() != p.d {
                r.push(Reason::Other(format!(
                    "sea: the trained estimator is for D = {}, the problem has D = {}",
                    e.head_dim(),
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
        let (pattern, est_pairs) = estimate::pattern(self, p, inputs, params, par)?;
        let pairs = match exec {
            Exec::Reference => exec_ref::forward(p, inputs, params, &pattern, out),
            Exec::Fast => kernel::forward(p, inputs, params, &pattern, par, out),
        };
        Ok(Stats::pairs(pairs + est_pairs))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        let est = estimate::scratch_bytes(self, p, par);
        match exec {
            Exec::Reference => est + 16 * (p.out_len() + p.lse_len()) + 8 * p.s_kv,
            Exec::Fast => est + kernel::scratch_bytes(p, 1, par),
        }
    }
}

/// The pattern of `c` on a problem (for tests and analysis): per query head a [`BlockList`] of
/// per-row key lists (`bm = 1`), and the pairs the estimate cost.
///
/// # Errors
/// As the registered implementations.
pub fn support(
    c: &Sea,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    par: Par,
) -> Result<(BlockList, u64)> {
    estimate::pattern(c, p, inputs, params, par)
}
