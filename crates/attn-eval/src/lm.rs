//! Language modelling: perplexity over fixed windows, KL divergence of every next-token
//! distribution to the exact run, top-1 agreement, and loss by position bucket, on the same
//! tokens for the exact baseline and each method.
//!
//! Memory stays O(S): each run keeps only its final hidden states (`S × hidden` floats); logits
//! are computed block by block when the runs are compared, exact's once for all of them.

use rayon::prelude::*;
use std::time::Instant;

use attn_models::decoder::{Decoder, ForwardOpts, KvCache};
use attn_models::{AttentionPlan, RunCtx};

use crate::schema::{Cost, Quality};
use crate::EvalError;

/// The tokens of one comparison: windows of a token stream.
#[derive(Debug, Clone)]
pub struct LmInput {
    /// Windows, each evaluated from an empty cache (BOS first where the model wants one).
    pub windows: Vec<Vec<u32>>,
    /// Loss buckets per window.
    pub buckets: usize,
    /// Per window, the first target (index into `window[1..]`) that counts; the ones before it
    /// were scored by the previous window (strided evaluation). Empty = every target counts.
    pub scored_from: Vec<usize>,
}

impl LmInput {
    /// The first tokens of `text` cut into windows of `window` tokens (0 = one window of
    /// `tokens`), each window starting with BOS when the model's tokenizer adds one; BOS counts
    /// as one of the window's tokens (as the reference script counts it).
    ///
    /// # Errors
    /// [`EvalError::Data`] when the text has fewer tokens than asked or a window is under 2.
    pub fn new(
        model: &Decoder,
        text: &str,
        tokens: usize,
        window: usize,
    ) -> Result<Self, EvalError> {
        Self::strided(model, text, tokens, window, 0)
    }

    /// As [`LmInput::new`], but windows start every `stride` tokens (0 = one window after the
    /// other) and each scores only the tokens the previous windows did not: every scored token
    /// but those of the first window sees at least `window − stride` tokens of context (the
    /// usual "sliding window" perplexity). The text tokens covered are those of
    /// [`LmInput::new`] with the same `tokens` and `window`.
    ///
    /// # Errors
    /// As [`LmInput::new`].
    pub fn strided(
        model: &Decoder,
        text: &str,
        tokens: usize,
        window: usize,
        stride: usize,
    ) -> Result<Self, EvalError> {
        let tok = &model.tokenizer;
        let window = if window == 0 { tokens } else { window.min(tokens) };
        let bos = if tok.adds_bos() { tok.bos_id() } else { None };
        let per = window.saturating_sub(usize::from(bos.is_some()));
        if per < 1 {
            return Err(EvalError::Data(format!("a window of {window} tokens predicts nothing")));
        }
        let stride = if stride == 0 || stride > per { per } else { stride };
        let n_windows = tokens.div_ceil(window);
        let need = n_windows * per;
        // Tokenize a prefix that holds enough tokens (with a margin, so that cutting the text does
        // not change the last tokens kept), growing it if not.
        let mut chars = need.saturating_mul(6).max(1024);
        let ids = loop {
            let end = text.char_indices().nth(chars).map_or(text.len(), |(i, _)| i);
            let ids = tok.encode(&text[..end], false)?;
            if ids.len() >= need + 16 || end == text.len() {
                break ids;
            }
            chars *= 2;
        };
        if ids.len() < need {
            return Err(EvalError::Data(format!(
                "the text has only {} tokens, {need} asked",
                ids.len()
            )));
        }
        let ids = &ids[..need];
        // Window starts: every `stride` tokens, the last one ending exactly at `need`.
        let mut starts: Vec<usize> =
            (0..).map(|k| k * stride).take_while(|s| s + per < need).collect();
        if starts.last().is_none_or(|&s| s + per < need) {
            starts.push(need.saturating_sub(per));
        }
        starts.dedup();
        // Target t of a window starting at s predicts id s + t (+1 without BOS).
        let off = usize::from(bos.is_none());
        let (mut windows, mut scored_from) = (Vec::new(), Vec::new());
        let mut covered = 0usize;
        for s in starts {
            let w: Vec<u32> = bos.into_iter().chain(ids[s..s + per].iter().copied()).collect();
            if w.len() < 2 {
                continue;
            }
            scored_from.push(covered.saturating_sub(s + off).min(w.len() - 1));
            covered = s + per;
            windows.push(w);
        }
        Ok(Self { windows, buckets: 8, scored_from })
    }

    /// First counted target of window `wi`.
    pub fn first_scored(&self, wi: usize) -> usize {
        self.scored_from.get(wi).copied().unwrap_or(0)
    }

    /// Targets that count, over all windows.
    pub fn predicted(&self) -> usize {
        self.windows.iter().enumerate().map(|(i, w)| w.len() - 1 - self.first_scored(i)).sum()
    }
}

/// What a run leaves for comparison.
#[derive(Debug, Clone)]
pub struct LmRun {
    /// Final hidden states per window, `[len − 1, hidden]` (the rows that predict a token).
    pub hidden: Vec<Vec<f32>>,
    /// Seconds in forward passes.
    pub prefill_s: f64,
    /// Seconds in attention calls.
    pub attention_s: f64,
    /// Seconds in attention calls per layer, indexed by layer.
    pub attention_by_layer_s: Vec<f64>,
    /// Pairs exact attention scores under the masks (sum over layers and heads).
    pub exact_pairs: u64,
    /// Pairs the methods scored, as they report them (estimation and block expansion included).
    pub computed_pairs: u64,
}

/// Runs the model over every window with `plan`.
///
/// # Errors
/// Model and attention errors.
pub fn run(
    model: &Decoder,
    input: &LmInput,
    plan: &AttentionPlan,
    threads: usize,
) -> Result<LmRun, EvalError> {
    let mut ctx = RunCtx::new(plan.clone());
    ctx.threads = threads;
    let mut hidden = Vec::new();
    let t = Instant::now();
    for w in &input.windows {
        let mut cache = KvCache::default();
        let h = model.forward(&w[..w.len() - 1], &mut cache, &mut ctx, ForwardOpts::default())?;
        hidden.push(h);
    }
    Ok(LmRun {
        hidden,
        prefill_s: t.elapsed().as_secs_f64(),
        attention_s: ctx.stats.time.as_secs_f64(),
        attention_by_layer_s: ctx.stats.layer_seconds(),
        exact_pairs: ctx.stats.allowed_pairs,
        computed_pairs: ctx.stats.computed_pairs,
    })
}

/// Quality of `run` (and its cost) against the exact run on the same input: [`compare_all`]
/// with one run.
pub fn compare(
    model: &Decoder,
    input: &LmInput,
    exact: &LmRun,
    run: &LmRun,
    threads: usize,
) -> (Quality, Cost) {
    compare_all(model, input, exact, &[run], threads).1.remove(0)
}

/// The cost of `run` on `input`: its times and pairs as the run measured them.
pub fn cost(input: &LmInput, run: &LmRun) -> Cost {
    Cost {
        prefill_s: Some(run.prefill_s),
        attention_s: Some(run.attention_s),
        attention_by_layer_s: run.attention_by_layer_s.clone(),
        exact_pairs: Some(run.exact_pairs),
        scored_pairs: Some(run.computed_pairs),
        tokens_per_s: Some(input.predicted() as f64 / run.prefill_s.max(1e-9)),
        ..Cost::default()
    }
}

/// Running sums of one run's comparison.
struct Tally {
    nll: f64,
    kl: f64,
    agree: usize,
    n: usize,
    bucket_sum: Vec<f64>,
    bucket_n: Vec<usize>,
}

impl Tally {
    fn new(nb: usize) -> Self {
        Self { nll: 0.0, kl: 0.0, agree: 0, n: 0, bucket_sum: vec![0.0; nb], bucket_n: vec![0; nb] }
    }

    fn add(&mut self, bucket: usize, loss: f64, kl: f64, same: bool) {
        self.nll += loss;
        self.bucket_sum[bucket] += loss;
        self.bucket_n[bucket] += 1;
        self.kl += kl.max(0.0);
        self.agree += usize::from(same);
        self.n += 1;
    }

    fn quality(&self, per_window: usize) -> Quality {
        let nb = self.bucket_sum.len();
        let n_f = self.n.max(1) as f64;
        let loss_by_position = (0..nb)
            .filter(|&b| self.bucket_n[b] > 0)
            .map(|b| {
                let mean = self.bucket_sum[b] / self.bucket_n[b] as f64;
                (b * per_window / nb, (b + 1) * per_window / nb, mean)
            })
            .collect();
        Quality {
            perplexity: Some((self.nll / n_f).exp()),
            kl_to_exact: Some(self.kl / n_f),
            top1_agreement: Some(self.agree as f64 / n_f),
            loss_by_position,
            ..Quality::default()
        }
    }
}

/// Exact's own quality and the quality (and cost) of each of `runs` against the exact run on
/// the same input.
///
/// Logits are compared block by block. Exact's logits, its log-sum-exp, argmax and
/// exponentials of a block are computed once and serve every run, so each run costs one
/// logits product and one exponential pass over the vocabulary per position (the runs'
/// hidden states are what the caller holds, `S × hidden` floats each). A run whose hidden states
/// equal exact's bit for bit in a block gets exact's numbers for it without logits. The
/// numbers do not depend on how many runs are compared together.
pub fn compare_all(
    model: &Decoder,
    input: &LmInput,
    exact: &LmRun,
    runs: &[&LmRun],
    threads: usize,
) -> (Quality, Vec<(Quality, Cost)>) {
    let (hd, vocab) = (model.config.hidden, model.config.vocab);
    let th = attn_models::ops::Threads(threads);
    let per_window = input.windows.first().map_or(1, |w| w.len() - 1).max(1);
    let nb = input.buckets.max(1);
    let mut exact_tally = Tally::new(nb);
    let mut tallies: Vec<Tally> = runs.iter().map(|_| Tally::new(nb)).collect();
    // Exact's exponentials `exp(x − max)` of the block's counted rows, f64 (as the KL sums).
    let mut ebuf: Vec<f64> = Vec::new();
    for (wi, w) in input.windows.iter().enumerate() {
        let targets = &w[1..];
        let he = &exact.hidden[wi];
        const BLOCK: usize = 128;
        // Logits only from the first counted target on.
        let first = input.first_scored(wi) / BLOCK * BLOCK;
        for start in (first..targets.len()).step_by(BLOCK) {
            let end = (start + BLOCK).min(targets.len());
            let xe = &he[start * hd..end * hd];
            let le = model.logits_block(xe, th);
            let scored = input.first_scored(wi).max(start)..end;
            let bucket = |t: usize| (t * nb / per_window).min(nb - 1);
            // Exact's rows (in parallel: each row's numbers do not depend on the others).
            ebuf.resize(scored.len() * vocab, 0.0);
            let stats: Vec<(f64, usize, f64)> = ebuf
                .par_chunks_mut(vocab)
                .zip(scored.clone().into_par_iter())
                .map(|(buf, t)| {
                    let i = t - start;
                    lse_argmax_into(&le[i * vocab..(i + 1) * vocab], buf)
                })
                .collect();
            for (t, &(lse_e, _, _)) in scored.clone().zip(&stats) {
                let loss = lse_e - f64::from(le[(t - start) * vocab + targets[t] as usize]);
                exact_tally.add(bucket(t), loss, 0.0, true);
            }
            for (run, tally) in runs.iter().zip(tallies.iter_mut()) {
                let xm = &run.hidden[wi][start * hd..end * hd];
                // The same hidden states bit for bit (exact against itself, an exact twin): the
                // same logits, so exact's loss and KL 0, without computing them.
                if xe.iter().zip(xm).all(|(a, b)| a.to_bits() == b.to_bits()) {
                    for (t, &(lse_e, _, _)) in scored.clone().zip(&stats) {
                        let loss = lse_e - f64::from(le[(t - start) * vocab + targets[t] as usize]);
                        tally.add(bucket(t), loss, 0.0, true);
                    }
                    continue;
                }
                let lm = model.logits_block(xm, th);
                let per_row: Vec<(f64, f64, bool)> = scored
                    .clone()
                    .into_par_iter()
                    .zip(ebuf.par_chunks(vocab))
                    .zip(stats.par_iter())
                    .map(|((t, ex), &(lse_e, arg_e, z))| {
                        let i = t - start;
                        let (re, rm) =
                            (&le[i * vocab..(i + 1) * vocab], &lm[i * vocab..(i + 1) * vocab]);
                        let (lse_m, arg_m) = lse_argmax(rm);
                        let loss = lse_m - f64::from(rm[targets[t] as usize]);
                        // KL(exact ‖ method) = Σ p_e (log p_e − log p_m), p_e = e_i / Σ e.
                        let mut k = 0f64;
                        for ((&a, &b), &e) in re.iter().zip(rm).zip(ex) {
                            let lpe = f64::from(a) - lse_e;
                            k += e / z * (lpe - (f64::from(b) - lse_m));
                        }
                        (loss, k, arg_e == arg_m)
                    })
                    .collect();
                // Summed in position order, as one thread would.
                for (t, (loss, k, same)) in scored.clone().zip(per_row) {
                    tally.add(bucket(t), loss, k, same);
                }
            }
        }
    }
    let results = runs
        .iter()
        .zip(&tallies)
        .map(|(run, tally)| (tally.quality(per_window), cost(input, run)))
        .collect();
    (exact_tally.quality(per_window), results)
}

/// Log-sum-exp and first argmax of a row of logits.
fn lse_argmax(r: &[f32]) -> (f64, usize) {
    let (m, arg) = max_argmax(r);
    let s: f64 = r.iter().map(|&v| f64::from(v - m).exp()).sum();
    (f64::from(m) + s.ln(), arg)
}

/// [`lse_argmax`], keeping the exponentials `exp(x_i − max)` in `buf` (`buf.len() == r.len()`)
/// and returning their sum (summed in the same order) third.
fn lse_argmax_into(r: &[f32], buf: &mut [f64]) -> (f64, usize, f64) {
    let (m, arg) = max_argmax(r);
    for (e, &v) in buf.iter_mut().zip(r) {
        *e = f64::from(v - m).exp();
    }
    let s: f64 = buf.iter().sum();
    (f64::from(m) + s.ln(), arg, s)
}

/// Row maximum and its first index.
fn max_argmax(r: &[f32]) -> (f32, usize) {
    let (mut arg, mut m) = (0, f32::NEG_INFINITY);
    for (i, &v) in r.iter().enumerate() {
        if v > m {
            m = v;
            arg = i;
        }
    }
    (m, arg)
}
