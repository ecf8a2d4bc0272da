//! MInference's Vertical-Slash pattern (spec §2.2): per query head, the key columns and the
//! diagonals that the last `last_q` queries attend to most, estimated online; see `README.md` in
//! this folder.
//!
//! - [`estimate`]: vertical and slash scores from the last queries, top-k selection, and the
//!   kernel-faithful conversion to key blocks plus columns (shared by both implementations).
//! - [`reference`](mod@reference): the plain-loop f64 definitions of the scores and of the
//!   conversion's covered set, for tests; the registered reference runs the f64 executor over the
//!   same pattern.
//! - fast path: the pattern through the tiled sparse kernel.

pub mod estimate;
pub mod reference;

use crate::dispatch::{parse_param, Inputs, OutputMut, ParamInfo, Reason, Stats};
use crate::error::{Error, Result};
use crate::mask::MaskKind;
use crate::methods::pattern::{is_causal, positive, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::primitives::sparse::{diagonal, kernel, reference as exec_ref};
use crate::problem::Problem;

/// Fewest vertical columns kept whatever `vertical` says (MInference: 30).
pub const MIN_VERTICAL: usize = 30;
/// Fewest diagonals kept whatever `slash` says (MInference: 50).
pub const MIN_SLASH: usize = 50;

/// How the selected columns and diagonals become the attended keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// MInference's kernel conversion (spec §2.2 step 7): each diagonal becomes key blocks of
    /// `block` keys per query block, so an isolated diagonal costs up to `block` keys per row
    /// (the covered set is a superset of the element-wise pattern).
    Blocks,
    /// The element-wise pattern (spec §2.2 step 6): row `p` attends to `j ∈ V` and `p − δ` for
    /// `δ ∈ S`, each key once, through the diagonal kernel (`primitives::sparse::diagonal`).
    Elements,
}

impl Layout {
    /// The parameter value.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Blocks => "blocks",
            Layout::Elements => "elements",
        }
    }
}

/// `vertical-slash` configuration (the authors' run-time defaults, spec §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerticalSlash {
    /// Query rows the pattern is estimated from (the last ones; MInference 64).
    pub last_q: usize,
    /// Vertical key columns kept (MInference default 1000).
    pub vertical: usize,
    /// Diagonals kept (MInference default 6096).
    pub slash: usize,
    /// First columns always kept (MInference 30).
    pub sink: usize,
    /// Nearest diagonals always kept (MInference 100).
    pub local: usize,
    /// Query and key block size of the conversion (MInference 64).
    pub block: usize,
    /// Block conversion or element-wise pattern.
    pub layout: Layout,
}

impl VerticalSlash {
    /// MInference's defaults: `last_q = 64`, `(vertical, slash) = (1000, 6096)`, 30 sink
    /// columns, 100 local diagonals, blocks of 64.
    pub const DEFAULT: VerticalSlash = VerticalSlash {
        last_q: 64,
        vertical: 1000,
        slash: 6096,
        sink: 30,
        local: 100,
        block: 64,
        layout: Layout::Blocks,
    };
}

impl Default for VerticalSlash {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl SparseConfig for VerticalSlash {
    const NAME: &'static str = "vertical-slash";
    const REFERENCE_NAME: &'static str = "vertical-slash-reference";
    const FAMILY: &'static str = "vertical_slash";
    const DESCRIPTION: &'static str =
        "MInference Vertical-Slash: columns and diagonals estimated from the last queries (sparse kernel)";
    // Causal only; non-causal calls also get a Reason below that says why.
    const MASKS: &'static [MaskKind] = &[MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "last_q",
                value: self.last_q.to_string(),
                doc: "last query rows the pattern is estimated from (64)",
            },
            ParamInfo {
                name: "vertical",
                value: self.vertical.to_string(),
                doc: "vertical columns kept, at least 30 (1000)",
            },
            ParamInfo {
                name: "slash",
                value: self.slash.to_string(),
                doc: "diagonals kept, at least 50 (6096)",
            },
            ParamInfo {
                name: "sink",
                value: self.sink.to_string(),
                doc: "first columns always kept (30)",
            },
            ParamInfo {
                name: "local",
                value: self.local.to_string(),
                doc: "nearest diagonals always kept (100)",
            },
            ParamInfo {
                name: "block",
                value: self.block.to_string(),
                doc: "block size of the kernel conversion (64)",
            },
            ParamInfo {
                name: "layout",
                value: self.layout.name().to_string(),
                doc: "blocks = MInference's block conversion (a diagonal costs up to `block` keys \
                      per row); elements = exactly j ∈ V or p − j ∈ S, diagonal kernel (blocks)",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "last_q" => self.last_q = positive(Self::NAME, key, value)?,
            "vertical" => self.vertical = parse_param(Self::NAME, key, value)?,
            "slash" => self.slash = parse_param(Self::NAME, key, value)?,
            "sink" => self.sink = parse_param(Self::NAME, key, value)?,
            "local" => self.local = parse_param(Self::NAME, key, value)?,
            "block" => self.block = positive(Self::NAME, key, value)?,
            "layout" => {
                self.layout = match value {
                    "blocks" => Layout::Blocks,
                    "elements" => Layout::Elements,
                    _ => {
                        return Err(Error::InvalidParam {
                            op: "vertical-slash",
                            name: "layout",
                            detail: format!("`{value}`: expected `blocks` or `elements`"),
                        })
                    }
                }
            }
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn unsupported(&self, _: &Problem, params: &Params) -> Vec<Reason> {
        if is_causal(&params.mask) {
            Vec::new()
        } else {
            vec![Reason::Other(
                "vertical-slash is defined for causal prefill only (spec §2.5)".into(),
            )]
        }
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
        if self.layout == Layout::Elements {
            let (pattern, est_pairs) = estimate::diag_pattern(self, p, inputs, params, par)?;
            let pairs = match exec {
                Exec::Reference => diagonal::forward_reference(p, inputs, params, &pattern, out),
                Exec::Fast => diagonal::forward(p, inputs, params, &pattern, par, out),
            };
            return Ok(Stats::pairs(pairs + est_pairs));
        }
        let (pattern, est_pairs) = estimate::pattern(self, p, inputs, params, par)?;
        let pairs = match exec {
            Exec::Reference => exec_ref::forward(p, inputs, params, &pattern, out),
            Exec::Fast => kernel::forward(p, inputs, params, &pattern, par, out),
        };
        Ok(Stats::pairs(pairs + est_pairs))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        let est = estimate::scratch_bytes(self, p);
        if self.layout == Layout::Elements {
            let cols = self.vertical.max(MIN_VERTICAL).min(p.s_kv);
            return est
                + match exec {
                    Exec::Reference => 8 * (p.s_kv + p.d_v),
                    Exec::Fast => diagonal::scratch_bytes(p, cols, par),
                };
        }
        let cols = self.vertical.max(MIN_VERTICAL).min(p.s_kv);
        match exec {
            Exec::Reference => est + 8 * p.s_kv,
            Exec::Fast => {
                est + kernel::scratch_bytes(p, self.block, par)
                    + kernel::column_panel_bytes(p, cols)
            }
        }
    }
}
