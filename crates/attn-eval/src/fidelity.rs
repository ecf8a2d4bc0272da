//! Attention fidelity on captured real Q/K/V: per (layer, head), the relative Frobenius error
//! `‖O_method − O_exact‖_F / ‖O_exact‖_F` of the attention output, each head run alone through
//! the method with the masks and scale the model used.

use std::time::Instant;

use attn::{Inputs, Prefs};
use attn_models::capture::{Capture, Captured};
use attn_models::decoder::{Decoder, ForwardOpts, KvCache};
use attn_models::plan::Choice;
use attn_models::{AttentionPlan, RunCtx};

use crate::schema::{Cost, Quality};
use crate::EvalError;

/// Captures every layer and head of one exact forward over `tokens`.
///
/// # Errors
/// Model errors.
pub fn capture(
    model: &Decoder,
    tokens: &[u32],
    threads: usize,
) -> Result<Vec<Captured>, EvalError> {
    let mut ctx = RunCtx::new(AttentionPlan::exact());
    ctx.threads = threads;
    ctx.capture = Some(Capture::new(None, None));
    let mut cache = KvCache::default();
    model.forward(tokens, &mut cache, &mut ctx, ForwardOpts::default())?;
    Ok(ctx.capture.map(|c| c.items).unwrap_or_default())
}

fn run_head(c: &Captured, choice: &Choice, threads: usize) -> Result<Vec<f32>, EvalError> {
    let inputs: Inputs = c.inputs()?;
    let prefs = Prefs {
        method: if choice.is_exact() {
            Some("sdpa-flash".into())
        } else {
            Some(choice.method.clone())
        },
        par: attn::Par::Rayon(threads.max(1)),
        ..Prefs::default()
    };
    if !choice.params.is_empty() {
        return Err(EvalError::Data(format!(
            "method `{}`: parameters are not supported yet",
            choice.label()
        )));
    }
    Ok(attn::attend(inputs.q, inputs.k, inputs.v, &c.head_params(), &prefs)
        .map_err(attn_models::ModelError::from)?
        .o)
}

/// Per-(layer, head) relative errors of `choice` on the captured heads, with the time spent in
/// the method's calls.
///
/// # Errors
/// Attention errors of the exact runs (method errors are returned too: the caller records them).
pub fn compare(
    heads: &[Captured],
    exact: &[Vec<f32>],
    choice: &Choice,
    layers: usize,
    n_heads: usize,
    threads: usize,
) -> Result<(Quality, Cost), EvalError> {
    let mut err = vec![vec![f64::NAN; n_heads]; layers];
    let t = Instant::now();
    for (c, e) in heads.iter().zip(exact) {
        let o = run_head(c, choice, threads)?;
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in o.iter().zip(e) {
            num += (f64::from(*a) - f64::from(*b)).powi(2);
            den += f64::from(*b).powi(2);
        }
        err[c.layer][c.head] = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    }
    let q = Quality { head_error: err, ..Quality::default() };
    let c = Cost { attention_s: Some(t.elapsed().as_secs_f64()), ..Cost::default() };
    Ok((q, c))
}

/// Exact outputs of every captured head (sdpa-flash, f32).
///
/// # Errors
/// Attention errors.
pub fn exact_outputs(heads: &[Captured], threads: usize) -> Result<Vec<Vec<f32>>, EvalError> {
    heads.iter().map(|c| run_head(c, &Choice::exact(), threads)).collect()
}
