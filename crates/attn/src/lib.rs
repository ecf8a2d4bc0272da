//! # attn — attention kernels behind one interface
//!
//! Every attention mechanism in this crate is a [`Method`]: a named implementation that declares
//! what it can run ([`Capabilities`]), explains every rejection ([`Reason`]), says how much memory
//! it needs, and writes its output and per-row log-sum-exp into caller-sized buffers. Each method
//! family lives in one folder under `methods/` with a *reference* (plain loops, f64 accumulation:
//! the specification) and one or more fast implementations held to it by the conformance suite
//! of `attn-testing`.
//!
//! ```
//! use attn::{attend, Params, Prefs, TensorRef};
//! let (b, h, s, d) = (1, 2, 5, 8);
//! let x: Vec<f32> = (0..b * h * s * d).map(|i| (i as f32 * 0.37).sin()).collect();
//! let q = TensorRef::new(&x[..], [b, h, s, d])?;
//! let out = attend(q, q, q, &Params::causal(), &Prefs::default())?;
//! assert_eq!(out.o.len(), b * h * s * d);
//! assert!(out.lse.iter().all(|l| l.is_finite()));
//! # Ok::<(), attn::Error>(())
//! ```
//!
//! Semantics, shared by every method (spec §0):
//! - shapes `q: [B, H, S_q, D]`, `k: [B, H_kv, S_kv, D]`, `v: [B, H_kv, S_kv, D_v]` with
//!   `H_kv | H` (see [`Problem`]); any strides ([`TensorRef`]); f32, f16 or bf16 inputs, f32 output,
//!   accumulation in f32 (fast paths) or f64 (references);
//! - scores, softcap, ALiBi and mask in the order documented on [`Params`]; positions and mask
//!   alignment as documented in [`mask`];
//! - a fully masked row returns `o = 0` and `lse = −∞`, never NaN.

#![deny(missing_docs)]

pub mod dispatch;
pub mod error;
pub mod linear;
pub mod mask;
pub mod memory;
pub mod methods;
pub mod par;
pub mod params;
pub mod primitives;
pub mod problem;
pub mod tensor;

pub use dispatch::{
    Capabilities, Exactness, Inputs, Method, MethodRef, Output, OutputMut, ParamInfo, Prefs,
    Reason, Registry, Selection, Stats,
};
pub use error::{Error, Result};
pub use mask::{DenseMask, Mask, MaskGeometry, MaskKind};
pub use methods::registry;
pub use par::Par;
pub use params::{Params, Resolved};
pub use primitives::merge::{merge_lse, merge_lse_into};
pub use problem::Problem;
pub use tensor::{DType, Data, TensorRef};

/// Computes attention, choosing the implementation from the registry (or the one forced in
/// `prefs`). See the crate documentation for the semantics.
///
/// # Errors
/// Every bad input gives a typed [`Error`]: shape disagreements, `H % H_kv ≠ 0`, empty
/// dimensions, invalid parameters or masks, non-finite inputs (when `prefs.check_finite`), a
/// memory need above the budget, or no implementation that accepts the problem.
pub fn attend(
    q: TensorRef,
    k: TensorRef,
    v: TensorRef,
    params: &Params,
    prefs: &Prefs,
) -> Result<Output> {
    let prepared = prepare(&Inputs { q, k, v }, params, prefs)?;
    let p = prepared.problem;
    let mut o = try_zeroed(p.out_len(), "output")?;
    let mut lse = try_zeroed(p.lse_len(), "lse")?;
    let stats =
        prepared.run(&Inputs { q, k, v }, prefs.par, OutputMut { o: &mut o, lse: &mut lse })?;
    Ok(Output { o, lse, problem: p, method: prepared.selection.chosen.name(), stats })
}

/// A validated call, ready to run into buffers the caller owns (see [`prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The problem.
    pub problem: Problem,
    /// Parameters with defaults filled in.
    pub params: Resolved,
    /// The implementation chosen and the ones rejected.
    pub selection: Selection,
    /// Bytes of scratch the implementation will allocate.
    pub scratch_bytes: usize,
}

impl Prepared {
    /// Runs the chosen implementation into `out` (`o`: `[B, H, S_q, D_v]`, `lse`: `[B, H, S_q]`)
    /// and returns what it cost.
    ///
    /// # Errors
    /// [`Error::Shape`] when the inputs are not of the prepared problem or the buffers have the
    /// wrong length; whatever the method reports.
    pub fn run(&self, inputs: &Inputs, par: Par, out: OutputMut) -> Result<Stats> {
        let p = &self.problem;
        let given = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v)?;
        if given != *p {
            return Err(Error::Shape {
                op: "Prepared::run",
                detail: format!("prepared for {} but given {}", p.label(), given.label()),
            });
        }
        if out.o.len() != p.out_len() || out.lse.len() != p.lse_len() {
            return Err(Error::Shape {
                op: "Prepared::run",
                detail: format!(
                    "output buffers hold {} and {} elements; [B,H,S_q,D_v] and [B,H,S_q] need {} and {}",
                    out.o.len(),
                    out.lse.len(),
                    p.out_len(),
                    p.lse_len()
                ),
            });
        }
        self.selection.chosen.forward(p, inputs, &self.params, par, out)
    }
}

/// Validates a call and selects its implementation without running it: the expert entry for
/// callers that reuse output buffers (models, benches).
///
/// # Errors
/// As [`attend`].
pub fn prepare(inputs: &Inputs, params: &Params, prefs: &Prefs) -> Result<Prepared> {
    prepare_in(registry(), inputs, params, prefs)
}

/// [`prepare`] against another registry.
///
/// # Errors
/// As [`attend`].
pub fn prepare_in(
    reg: Registry,
    inputs: &Inputs,
    params: &Params,
    prefs: &Prefs,
) -> Result<Prepared> {
    let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v)?;
    let resolved = params.resolve(&p)?;
    if prefs.check_finite {
        for (name, t) in [("q", &inputs.q), ("k", &inputs.k), ("v", &inputs.v)] {
            if let Some((index, value)) = t.first_non_finite() {
                return Err(Error::NonFinite { op: "attend", tensor: name, index, value });
            }
        }
    }
    let selection = reg.select(&p, params, prefs)?;
    let scratch_bytes = selection.chosen.scratch_bytes(&p, &resolved, prefs.par);
    let needed = scratch_bytes + 4 * (p.out_len() + p.lse_len());
    let budget = prefs.memory_budget.or_else(memory::available_bytes).unwrap_or(usize::MAX);
    if needed > budget {
        return Err(Error::MemoryBudget {
            op: selection.chosen.name().to_string(),
            needed,
            budget,
        });
    }
    Ok(Prepared { problem: p, params: resolved, selection, scratch_bytes })
}

fn try_zeroed(n: usize, what: &'static str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::MemoryBudget {
        op: format!("allocate {what}"),
        needed: 4 * n,
        budget: 0,
    })?;
    v.resize(n, 0.0);
    Ok(v)
}
