//! Attention fidelity on captured real Q/K/V: per (layer, head), the relative Frobenius error
//! `‖O_method − O_exact‖_F / ‖O_exact‖_F` of the attention output, each head run alone through
//! the method with the masks and scale the model used, and the attention mass the method's support
//! keeps (`exp(lse_method − lse_exact)`, mean over rows).

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

/// One head through `choice` (exact → `sdpa-flash`): output, LSE, pairs scored.
fn run_head(c: &Captured, choice: &Choice, threads: usize) -> Result<attn::Output, EvalError> {
    let inputs: Inputs = c.inputs()?;
    let prefs = Prefs {
        method: Some(if choice.is_exact() { "sdpa-flash".into() } else { choice.label() }),
        par: attn::Par::Rayon(threads.max(1)),
        ..Prefs::default()
    };
    Ok(attn::attend(inputs.q, inputs.k, inputs.v, &c.head_params(), &prefs)
        .map_err(attn_models::ModelError::from)?)
}

/// Per-(layer, head) relative output error and attention-mass recall (mean over rows of
/// `exp(lse_method − lse_exact)`) of `plan` on the captured heads, with the time spent in the
/// method's calls and the pairs it scored against the pairs exact attention scores.
///
/// # Errors
/// Attention errors of the method (the caller records them as a failed row).
pub fn compare(
    heads: &[Captured],
    exact: &[attn::Output],
    plan: &AttentionPlan,
    layers: usize,
    n_heads: usize,
    threads: usize,
) -> Result<(Quality, Cost), EvalError> {
    let mut err = vec![vec![f64::NAN; n_heads]; layers];
    let mut rec = vec![vec![f64::NAN; n_heads]; layers];
    let (mut time, mut pairs, mut exact_pairs) = (0f64, 0u64, 0u64);
    for (c, e) in heads.iter().zip(exact) {
        let t = Instant::now();
        let o = run_head(c, plan.choice(c.layer, c.head), threads)?;
        time += t.elapsed().as_secs_f64();
        pairs += o.stats.computed_pairs;
        exact_pairs += e.stats.computed_pairs;
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in o.o.iter().zip(&e.o) {
            num += (f64::from(*a) - f64::from(*b)).powi(2);
            den += f64::from(*b).powi(2);
        }
        err[c.layer][c.head] = (num / den.max(f64::MIN_POSITIVE)).sqrt();
        let (mut sum, mut n) = (0f64, 0usize);
        for (&a, &b) in o.lse.iter().zip(&e.lse) {
            if b.is_finite() {
                sum += if a.is_finite() { (f64::from(a) - f64::from(b)).exp() } else { 0.0 };
                n += 1;
            }
        }
        rec[c.layer][c.head] = if n > 0 { sum / n as f64 } else { 1.0 };
    }
    let q = Quality { head_error: err, head_recall: rec, ..Quality::default() };
    let c = Cost {
        attention_s: Some(time),
        scored_pairs: Some(pairs),
        exact_pairs: Some(exact_pairs),
        ..Cost::default()
    };
    Ok((q, c))
}

/// Exact outputs of every captured head (sdpa-flash, f32).
///
/// # Errors
/// Attention errors.
pub fn exact_outputs(heads: &[Captured], threads: usize) -> Result<Vec<attn::Output>, EvalError> {
    heads.iter().map(|c| run_head(c, &Choice::exact(), threads)).collect()
}
