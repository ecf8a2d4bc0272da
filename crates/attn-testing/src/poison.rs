//! NaN poisoning (STYLE rule 4): outputs are filled with NaN before a call, so an element a kernel
//! forgets to write stays NaN and fails every comparison. Calls go through [`attn::prepare`] and
//! [`attn::Prepared::run`], the entry that writes into buffers the caller owns.

use attn::{prepare_in, registry, Inputs, OutputMut, Params, Prefs, Prepared, Registry, Stats};

/// A buffer of `n` NaNs.
pub fn nan_buffer(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// The result of a poisoned call.
#[derive(Debug, Clone)]
pub struct Run {
    /// `[B, H, S_q, D_v]`.
    pub o: Vec<f32>,
    /// `[B, H, S_q]`.
    pub lse: Vec<f32>,
    /// What `prepare` decided.
    pub prepared: Prepared,
    /// What the call reported.
    pub stats: Stats,
}

impl Run {
    /// Name of the implementation that ran.
    pub fn method(&self) -> &'static str {
        self.prepared.selection.chosen.name()
    }
}

/// Prepares the call, fills fresh output buffers with NaN and runs into them (with `prefs.par`).
///
/// # Errors
/// Whatever [`attn::prepare`] or [`attn::Prepared::run`] report.
pub fn run_poisoned(inputs: &Inputs, params: &Params, prefs: &Prefs) -> attn::Result<Run> {
    run_poisoned_in(registry(), inputs, params, prefs)
}

/// [`run_poisoned`] against another registry.
///
/// # Errors
/// Whatever [`attn::prepare_in`] or [`attn::Prepared::run`] report.
pub fn run_poisoned_in(
    reg: Registry,
    inputs: &Inputs,
    params: &Params,
    prefs: &Prefs,
) -> attn::Result<Run> {
    let prepared = prepare_in(reg, inputs, params, prefs)?;
    let mut o = nan_buffer(prepared.problem.out_len());
    let mut lse = nan_buffer(prepared.problem.lse_len());
    let stats = prepared.run(inputs, prefs.par, OutputMut { o: &mut o, lse: &mut lse })?;
    Ok(Run { o, lse, prepared, stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use attn::TensorRef;

    #[test]
    fn poisoned_run_writes_every_element() {
        let x: Vec<f32> = (0..2 * 3 * 5 * 4).map(|i| (i as f32 * 0.7).sin()).collect();
        let t = TensorRef::new(&x[..], [2, 3, 5, 4]).unwrap();
        let r = run_poisoned(&Inputs { q: t, k: t, v: t }, &Params::causal(), &Prefs::default())
            .unwrap();
        assert_eq!(r.o.len(), 2 * 3 * 5 * 4);
        assert!(r.o.iter().chain(&r.lse).all(|v| !v.is_nan()));
        assert!(!r.method().is_empty());
    }
}
