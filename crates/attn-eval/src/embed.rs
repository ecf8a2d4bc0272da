//! Embedding fidelity: sentence/document embeddings of an encoder with each method, their cosine
//! to the exact run's, and — on the Lee corpus — the Pearson and Spearman correlation of the
//! embeddings' pairwise cosines with the 1225 human similarity judgements.

use std::time::Instant;

use attn_models::bert::Bert;
use attn_models::{AttentionPlan, RunCtx};

use crate::schema::{Cost, Quality};
use crate::EvalError;

/// Documents and (optionally) human pairwise similarities.
#[derive(Debug, Clone)]
pub struct EmbedInput {
    /// The texts.
    pub docs: Vec<String>,
    /// `similarity[i][j]`: human judgement for `i < j`, if known.
    pub similarity: Option<Vec<Vec<f64>>>,
    /// Batch size of the encoder calls.
    pub batch: usize,
}

/// Embeddings and cost of one run.
#[derive(Debug, Clone)]
pub struct EmbedRun {
    /// `[docs, hidden]`, unit rows.
    pub emb: Vec<f32>,
    /// Seconds in forward passes.
    pub prefill_s: f64,
    /// Seconds in attention calls.
    pub attention_s: f64,
    /// Seconds in attention calls per layer, indexed by layer.
    pub attention_by_layer_s: Vec<f64>,
    /// Pairs exact attention scores.
    pub exact_pairs: u64,
    /// Pairs the methods scored, as they report them (estimation and block expansion included).
    pub computed_pairs: u64,
    /// Tokens processed (without padding).
    pub tokens: usize,
}

/// Embeds every document with `plan`.
///
/// # Errors
/// Model and attention errors.
pub fn run(
    model: &Bert,
    input: &EmbedInput,
    plan: &AttentionPlan,
    threads: usize,
) -> Result<EmbedRun, EvalError> {
    let mut ctx = RunCtx::new(plan.clone());
    ctx.threads = threads;
    let texts: Vec<&str> = input.docs.iter().map(String::as_str).collect();
    let tokens =
        texts.iter().map(|t| model.tokenize(t).map(|v| v.len())).sum::<Result<usize, _>>()?;
    let t = Instant::now();
    let emb = model.embed(&texts, input.batch, &mut ctx)?;
    Ok(EmbedRun {
        emb,
        prefill_s: t.elapsed().as_secs_f64(),
        attention_s: ctx.stats.time.as_secs_f64(),
        attention_by_layer_s: ctx.stats.layer_seconds(),
        exact_pairs: ctx.stats.allowed_pairs,
        computed_pairs: ctx.stats.computed_pairs,
        tokens,
    })
}

/// Quality and cost of `run` against the exact run.
pub fn compare(
    model: &Bert,
    input: &EmbedInput,
    exact: &EmbedRun,
    run: &EmbedRun,
) -> (Quality, Cost) {
    let h = model.config.hidden_size;
    let n = input.docs.len();
    let dot = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>()
    };
    let cos: Vec<f64> =
        (0..n).map(|i| dot(&exact.emb[i * h..(i + 1) * h], &run.emb[i * h..(i + 1) * h])).collect();
    let mut q = Quality {
        cosine_mean: Some(cos.iter().sum::<f64>() / n.max(1) as f64),
        cosine_min: cos.iter().copied().reduce(f64::min),
        ..Quality::default()
    };
    if let Some(sim) = &input.similarity {
        let (mut model_s, mut human) = (Vec::new(), Vec::new());
        for (i, row) in sim.iter().enumerate().take(n) {
            for (j, &s) in row.iter().enumerate().take(n).skip(i + 1) {
                model_s.push(dot(&run.emb[i * h..(i + 1) * h], &run.emb[j * h..(j + 1) * h]));
                human.push(s);
            }
        }
        q.pearson = Some(pearson(&model_s, &human));
        q.spearman = Some(pearson(&ranks(&model_s), &ranks(&human)));
    }
    let cost = Cost {
        prefill_s: Some(run.prefill_s),
        attention_s: Some(run.attention_s),
        attention_by_layer_s: run.attention_by_layer_s.clone(),
        exact_pairs: Some(run.exact_pairs),
        scored_pairs: Some(run.computed_pairs),
        tokens_per_s: Some(run.tokens as f64 / run.prefill_s.max(1e-9)),
        ..Cost::default()
    };
    (q, cost)
}

/// Pearson correlation.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// Ranks with ties averaged (for Spearman).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlations() {
        // Hand-computed: deviations (−1.5, −.5, .5, 1.5) and (−1.5, .5, −.5, 1.5): 4 / √(5·5).
        assert!((pearson(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]) - 0.8).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        let s = pearson(&ranks(&[1.0, 5.0, 2.0]), &ranks(&[10.0, 50.0, 20.0]));
        assert!((s - 1.0).abs() < 1e-12);
    }
}
