//! The long-context retrieval task of the eval: samples from [`crate::retrieval`] (passkey and
//! RULER-style needles in the essays), a prefill of the whole prompt with the method under test,
//! then greedy decoding with **exact** attention (decode attends one query row to the cache the
//! method's prefill built, so only the prefill is approximated — MInference's setting), scored
//! by RULER's string match.
//!
//! Decoding stops at the first newline or end-of-sequence token, or after
//! [`crate::retrieval::max_new_tokens`] tokens: every answer of these tasks fits on one line, and
//! a 135M model otherwise keeps writing until the limit.

use std::time::Instant;

use attn_models::decoder::{Decoder, ForwardOpts, KvCache};
use attn_models::{AttentionPlan, RunCtx};

use crate::retrieval::{self, Sample, TaskKind};
use crate::schema::{Cost, Quality};
use crate::EvalError;

/// The samples of one comparison, tokenized.
#[derive(Debug, Clone)]
pub struct NeedleInput {
    /// Each sample and its prompt's token ids (BOS first where the model wants one).
    pub samples: Vec<(Sample, Vec<u32>)>,
    /// Tokens that end an answer (newline tokens).
    pub stop: Vec<u32>,
}

impl NeedleInput {
    /// `count` samples of each of `kinds` with prompts of at most `tokens` tokens (minus the
    /// answer's room), haystack from the essays, keyed by `seed`.
    ///
    /// # Errors
    /// [`EvalError::Data`] when a sample cannot be generated (target too small, haystack too
    /// short), [`EvalError::Model`] for tokenizer or data errors.
    pub fn new(
        model: &Decoder,
        kinds: &[TaskKind],
        tokens: usize,
        count: usize,
        seed: u64,
    ) -> Result<Self, EvalError> {
        let tok = &model.tokenizer;
        let bos = if tok.adds_bos() { tok.bos_id() } else { None };
        let haystack = if kinds.iter().any(TaskKind::uses_haystack) {
            attn_models::corpus::text("essays")?
        } else {
            String::new()
        };
        let count_tokens = |s: &str| tok.encode(s, false).map_or(usize::MAX / 2, |v| v.len());
        let mut samples = Vec::new();
        for kind in kinds {
            let room = retrieval::max_new_tokens(kind) + usize::from(bos.is_some());
            let target = tokens.checked_sub(room).filter(|&t| t > 0).ok_or_else(|| {
                EvalError::Data(format!("{tokens} tokens leave no room for a {kind} prompt"))
            })?;
            for index in 0..count {
                let s = retrieval::generate(kind, &haystack, target, &count_tokens, seed, index)
                    .map_err(|e| EvalError::Data(e.to_string()))?;
                let mut ids: Vec<u32> = bos.into_iter().collect();
                ids.extend(tok.encode(&s.prompt, false)?);
                samples.push((s, ids));
            }
        }
        let mut stop: Vec<u32> = tok.encode("\n", false)?;
        stop.extend(tok.eos_id());
        Ok(Self { samples, stop })
    }
}

/// What one method did on every sample.
#[derive(Debug, Clone)]
pub struct NeedleRun {
    /// Decoded answer of each sample.
    pub outputs: Vec<String>,
    /// Score of each sample in `[0, 1]`.
    pub scores: Vec<f64>,
    /// Wall time of the prefills (seconds, summed).
    pub prefill_s: f64,
    /// Attention time inside the prefills.
    pub attention_s: f64,
    /// Seconds in attention calls per layer, indexed by layer.
    pub attention_by_layer_s: Vec<f64>,
    /// Pairs exact attention scores in the prefills.
    pub exact_pairs: u64,
    /// Pairs the methods scored in the prefills.
    pub computed_pairs: u64,
    /// Prompt tokens prefilled.
    pub tokens: usize,
}

/// Prefills every sample with `plan`, decodes greedily with exact attention, scores.
///
/// # Errors
/// Model errors of the exact decode; a failing method's prefill error is returned too (the
/// caller turns it into a failed row).
pub fn run(
    model: &Decoder,
    input: &NeedleInput,
    plan: &AttentionPlan,
    threads: usize,
) -> Result<NeedleRun, EvalError> {
    let mut ctx = RunCtx::new(plan.clone());
    ctx.threads = threads;
    let mut dec = RunCtx::exact();
    dec.threads = threads;
    let mut r = NeedleRun {
        outputs: Vec::new(),
        scores: Vec::new(),
        prefill_s: 0.0,
        attention_s: 0.0,
        attention_by_layer_s: Vec::new(),
        exact_pairs: 0,
        computed_pairs: 0,
        tokens: 0,
    };
    let hd = model.config.hidden;
    for (sample, ids) in &input.samples {
        let max_new = retrieval::max_new_tokens(&sample.kind);
        if ids.len() + max_new > model.config.context {
            return Err(EvalError::Data(format!(
                "{} prompt tokens + {max_new} exceed the model's context of {}",
                ids.len(),
                model.config.context
            )));
        }
        let mut cache = KvCache::default();
        let t = Instant::now();
        let h = model.forward(ids, &mut cache, &mut ctx, ForwardOpts::default())?;
        r.prefill_s += t.elapsed().as_secs_f64();
        r.tokens += ids.len();
        let mut last = h[h.len() - hd..].to_vec();
        let mut out = Vec::new();
        for _ in 0..max_new {
            let logits = model.logits_block(&last, dec.dense());
            let next = argmax(&logits);
            if input.stop.contains(&next) {
                break;
            }
            out.push(next);
            last = model.forward(&[next], &mut cache, &mut dec, ForwardOpts::default())?;
        }
        let text = model.tokenizer.decode(&out, true)?;
        r.scores.push(retrieval::score(sample, &text));
        r.outputs.push(text);
    }
    r.attention_s = ctx.stats.time.as_secs_f64();
    r.attention_by_layer_s = ctx.stats.layer_seconds();
    r.exact_pairs = ctx.stats.allowed_pairs;
    r.computed_pairs = ctx.stats.computed_pairs;
    Ok(r)
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in x.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}

/// Accuracy of `run` and its agreement with the exact run (same decoded answer), and its cost.
pub fn compare(exact: &NeedleRun, run: &NeedleRun) -> (Quality, Cost) {
    let n = run.scores.len().max(1) as f64;
    let same_as_exact: Vec<bool> =
        exact.outputs.iter().zip(&run.outputs).map(|(a, b)| a == b).collect();
    let same = same_as_exact.iter().filter(|&&s| s).count();
    let q = Quality {
        accuracy: Some(run.scores.iter().sum::<f64>() / n),
        top1_agreement: Some(same as f64 / n),
        sample_scores: run.scores.clone(),
        same_as_exact,
        ..Quality::default()
    };
    let c = Cost {
        prefill_s: Some(run.prefill_s),
        attention_s: Some(run.attention_s),
        attention_by_layer_s: run.attention_by_layer_s.clone(),
        exact_pairs: Some(run.exact_pairs),
        scored_pairs: Some(run.computed_pairs),
        tokens_per_s: Some(run.tokens as f64 / run.prefill_s.max(1e-9)),
        ..Cost::default()
    };
    (q, c)
}
