//! Offline per-head plan search (`attn plan`): MInference's idea — every head of a model has a
//! stable sparse shape — widened to every registered method, exact attention included.
//!
//! 1. One exact forward over calibration tokens records the Q, K, V every attention head saw
//!    (capture hooks of `attn-models`).
//! 2. For each (layer, head), exact attention gives the reference output `O` and the
//!    log-sum-exp `lse` of every row; each candidate (a method spec with a budget) runs on the
//!    same Q/K/V and is scored by
//!    - **recall**: mean over rows of `exp(lse_c − lse)`, the share of the exact attention mass
//!      on the keys the candidate attends to (≤ 1 for methods that attend to a subset of keys);
//!    - **error**: relative Frobenius error `‖O_c − O‖ / ‖O‖` of the head's output;
//!    - **cost**: the (query, key) pairs it reports scoring (`attn::Stats::computed_pairs`:
//!      estimation passes and block expansion included), against the pairs exact attention scores.
//! 3. Each head gets the cheapest candidate that keeps `recall ≥ target_recall` and
//!    `error ≤ max_error`; when none is cheaper than exact, the head stays exact. Its scores are
//!    written beside the choice in the plan file.
//!
//!    Or, under a **speed budget** (`speedup`): the plan whose summed cost is at most exact's
//!    over `speedup` and whose summed head error is smallest — a multiple-choice knapsack,
//!    solved greedily on each head's lower convex hull of (cost, error), steepest error drop per
//!    unit of cost first, then topped up with any single change that still fits (see
//!    [`choose_budget`]). The quality bounds do not apply in this mode.
//!
//! **Cheapest** is measured in pairs weighted by what a pair costs each candidate on this
//! machine: every call is timed, and a candidate's weight is its seconds per pair summed over
//! all heads, over exact attention's seconds per pair summed the same way (sums over hundreds of
//! calls, so the weights are steadier than single timings; they still vary from run to run, and
//! so may a few choices). Sparse kernels pay for gathering, block edges and estimation; without
//! the weight the search picks patterns with fewer pairs that take longer than exact.

use std::collections::BTreeMap;
use std::time::Instant;

use attn::Prefs;
use attn_models::capture::{Capture, Captured};
use attn_models::decoder::{Decoder, ForwardOpts, KvCache};
use attn_models::plan::Override;
use attn_models::{AttentionPlan, Choice, RunCtx};

use crate::EvalError;

/// How the search chooses.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// Smallest attention-mass recall a chosen candidate keeps on the calibration tokens
    /// (mean over rows). Default 0.95.
    pub target_recall: f64,
    /// Largest relative output error a chosen candidate may have. Default 0.1.
    pub max_error: f64,
    /// Candidate method specs (`name:key=value,…`); empty = [`default_candidates`].
    pub candidates: Vec<String>,
    /// Threads for the attention calls.
    pub threads: usize,
    /// Layers to search (the others stay exact and are not recorded); `None` = all.
    pub layers: Option<std::collections::BTreeSet<usize>>,
    /// A speed budget instead of the quality bounds: the searched heads' summed cost at most
    /// exact's over this factor, with the smallest summed error ([`choose_budget`]).
    pub speedup: Option<f64>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            target_recall: 0.95,
            max_error: 0.1,
            candidates: Vec::new(),
            threads: rayon::current_num_threads(),
            layers: None,
            speedup: None,
        }
    }
}

/// The candidates searched by default for causal prefill of `s` tokens: budget ladders of the
/// sparse-prefill methods (budgets at or above `s` are left out: they cost what exact costs),
/// then every other registered approximation of softmax attention at its defaults.
pub fn default_candidates(s: usize) -> Vec<String> {
    let mut c = Vec::new();
    for w in [256, 512, 1024, 2048, 4096, 8192] {
        if w < s {
            c.push(format!("streaming:sink=64,window={w}"));
        }
    }
    for local in [512, 1024, 2048] {
        if local < s {
            c.push(format!("a-shape:sink=64,local={local}"));
        }
    }
    for (v, sl) in [(64, 128), (128, 256), (256, 512), (512, 1024), (1000, 2048), (2000, 4096)] {
        if v + sl < s {
            c.push(format!("vertical-slash:vertical={v},slash={sl}"));
        }
    }
    for k in [8, 16, 32, 64, 128] {
        if k * 64 < s {
            c.push(format!("block-sparse:top_k={k}"));
        }
    }
    let named: Vec<String> =
        c.iter().map(|x| x.split(':').next().unwrap_or("").to_string()).collect();
    for m in attn::registry().methods() {
        // Approximations of softmax attention only: linear and recurrent mechanisms compute
        // another function (a different model), not a cheaper version of this one.
        if m.exactness() == attn::Exactness::Approximate
            && !m.is_reference()
            && m.capabilities().max_query_rows.is_none()
            && !named.iter().any(|n| n == m.name())
        {
            c.push(m.name().to_string());
        }
    }
    c
}

/// One candidate on one head.
#[derive(Debug, Clone)]
pub struct Score {
    /// The candidate spec.
    pub spec: String,
    /// Mean attention-mass recall over rows.
    pub recall: f64,
    /// Smallest row recall.
    pub recall_min: f64,
    /// With a retrieval calibration prompt ([`search_with_retrieval`]): mean recall over its
    /// last [`RETRIEVAL_ROWS`] rows (the question, which has to reach back to the needle);
    /// `None` without one.
    pub retrieval_recall: Option<f64>,
    /// Relative Frobenius output error.
    pub error: f64,
    /// Pairs it scored.
    pub pairs: u64,
    /// Wall time of the call, seconds.
    pub time_s: f64,
}

/// Every score of one head, and the choice.
#[derive(Debug, Clone)]
pub struct HeadResult {
    /// Layer.
    pub layer: usize,
    /// Query head.
    pub head: usize,
    /// Pairs exact attention scores on this head.
    pub exact_pairs: u64,
    /// Wall time of the exact call, seconds.
    pub exact_time_s: f64,
    /// Every candidate that could run, in candidate order.
    pub scores: Vec<Score>,
    /// Index into `scores` of the choice; `None` = exact.
    pub chosen: Option<usize>,
}

/// What [`search`] found.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    /// The plan: exact by default, one override per head that is not exact.
    pub plan: AttentionPlan,
    /// Per head, every score.
    pub heads: Vec<HeadResult>,
    /// Candidates that could not run on some heads: the spec, the first reason, and on how
    /// many heads.
    pub skipped: Vec<(String, String, usize)>,
    /// Calibration tokens.
    pub tokens: usize,
    /// Cost weight of each candidate: its seconds per pair over exact's (see the module doc).
    pub weights: BTreeMap<String, f64>,
}

impl SearchOutcome {
    /// Pairs the plan scores over pairs exact attention scores, on the calibration tokens.
    pub fn density(&self) -> f64 {
        let (mut p, mut e) = (0u64, 0u64);
        for h in &self.heads {
            e += h.exact_pairs;
            p += h.chosen.map_or(h.exact_pairs, |i| h.scores[i].pairs);
        }
        p as f64 / e.max(1) as f64
    }

    /// Weighted cost of the plan's choices (pairs × cost weight; exact: its pairs) over exact's
    /// pairs: what a speed budget bounds.
    pub fn weighted_ratio(&self) -> f64 {
        let (mut c, mut e) = (0.0, 0.0);
        for h in &self.heads {
            e += h.exact_pairs as f64;
            c += h.chosen.map_or(h.exact_pairs as f64, |i| weighted(&h.scores[i], &self.weights));
        }
        c / e.max(1.0)
    }

    /// Mean over heads of the chosen candidate's relative output error (exact: 0).
    pub fn mean_error(&self) -> f64 {
        let s: f64 = self.heads.iter().map(|h| h.chosen.map_or(0.0, |i| h.scores[i].error)).sum();
        s / self.heads.len().max(1) as f64
    }

    /// Measured attention time of the plan's choices over exact's, summed over heads (single
    /// timings: indicative).
    pub fn time_ratio(&self) -> f64 {
        let (mut t, mut e) = (0.0, 0.0);
        for h in &self.heads {
            e += h.exact_time_s;
            t += h.chosen.map_or(h.exact_time_s, |i| h.scores[i].time_s);
        }
        t / e.max(1e-12)
    }

    /// Heads per chosen method name (`exact` included).
    pub fn histogram(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for h in &self.heads {
            let name = h.chosen.map_or("exact".to_string(), |i| {
                h.scores[i].spec.split(':').next().unwrap_or("").to_string()
            });
            *m.entry(name).or_insert(0) += 1;
        }
        m
    }
}

/// Searches a plan for `model` on the calibration `tokens` (one exact forward, then every
/// candidate on every head). `on_head` is called after each head (for progress).
///
/// # Errors
/// [`EvalError::Model`] when the exact forward fails, [`EvalError::Data`] for no tokens, bad
/// settings, or candidate specs that do not parse.
pub fn search(
    model: &Decoder,
    tokens: &[u32],
    cfg: &SearchConfig,
    on_head: impl FnMut(usize, usize),
) -> Result<SearchOutcome, EvalError> {
    search_with_retrieval(model, tokens, None, cfg, on_head)
}

/// Rows at the end of a retrieval calibration prompt whose recall is scored
/// ([`Score::retrieval_recall`]): the question and the answer prefix.
pub const RETRIEVAL_ROWS: usize = 32;

/// [`search`], plus a retrieval prompt (a passkey or needle sample, token ids): one more exact
/// forward records every head on it, every candidate runs on those records too, and a head's
/// choice must also keep `target_recall` of the exact mass on the prompt's last
/// [`RETRIEVAL_ROWS`] rows. A method that keeps most of a text's mass can still drop the few
/// far keys a question must reach (on SmolLM2 at 8k, plans chosen on text alone lost a passkey
/// in three); MInference calibrates its patterns on a retrieval example for the same reason.
///
/// # Errors
/// As [`search`]; also a retrieval prompt shorter than [`RETRIEVAL_ROWS`] + 1 tokens.
pub fn search_with_retrieval(
    model: &Decoder,
    tokens: &[u32],
    retrieval: Option<&[u32]>,
    cfg: &SearchConfig,
    mut on_head: impl FnMut(usize, usize),
) -> Result<SearchOutcome, EvalError> {
    if let Some(r) = retrieval {
        if r.len() <= RETRIEVAL_ROWS {
            return Err(EvalError::Data(format!(
                "the retrieval prompt needs more than {RETRIEVAL_ROWS} tokens (got {})",
                r.len()
            )));
        }
    }
    if tokens.len() < 2 {
        return Err(EvalError::Data("plan search needs at least 2 calibration tokens".into()));
    }
    check(cfg)?;
    let candidates = if cfg.candidates.is_empty() {
        default_candidates(tokens.len())
    } else {
        cfg.candidates.clone()
    };
    for c in &candidates {
        attn::methods::build(c).map_err(|e| EvalError::Data(format!("candidate `{c}`: {e}")))?;
    }
    let captured = record(model, tokens, cfg)?;
    // Scored head by head, each record dropped once scored; the retrieval prompt's records come
    // after, so only one set is held at a time.
    let rounds = if retrieval.is_some() { 2 } else { 1 };
    let total = rounds * captured.len();
    let mut heads = Vec::with_capacity(captured.len());
    let mut skipped: Vec<(String, String, usize)> = Vec::new();
    for (i, c) in captured.into_iter().enumerate() {
        heads.push(score_head(&c, &candidates, cfg, &mut skipped)?);
        on_head(i + 1, total);
    }
    if let Some(r) = retrieval {
        let records = record(model, r, cfg)?;
        if records.len() != heads.len() {
            return Err(EvalError::Data(
                "the retrieval prompt recorded other heads than the text".into(),
            ));
        }
        let n = heads.len();
        for (i, (rec, h)) in records.into_iter().zip(heads.iter_mut()).enumerate() {
            // Both forwards record the same (layer, head) sequence.
            if (rec.layer, rec.head) != (h.layer, h.head) {
                return Err(EvalError::Data(
                    "the retrieval prompt recorded other heads than the text".into(),
                ));
            }
            score_retrieval(&rec, h, cfg)?;
            on_head(n + i + 1, total);
        }
    }
    let weights = weights(&heads);
    let plan = select(&mut heads, cfg, &weights)?;
    Ok(SearchOutcome { plan, heads, skipped, tokens: tokens.len(), weights })
}

/// One exact forward over `tokens` recording the Q/K/V of every searched head.
fn record(model: &Decoder, tokens: &[u32], cfg: &SearchConfig) -> Result<Vec<Captured>, EvalError> {
    let mut ctx = RunCtx::exact();
    ctx.threads = cfg.threads;
    ctx.capture = Some(Capture::new(cfg.layers.clone(), None));
    let mut cache = KvCache::default();
    model.forward(tokens, &mut cache, &mut ctx, ForwardOpts::default())?;
    Ok(ctx.capture.take().map(|c| c.items).unwrap_or_default())
}

/// Checks the selection settings.
fn check(cfg: &SearchConfig) -> Result<(), EvalError> {
    if !(cfg.target_recall > 0.0 && cfg.target_recall <= 1.0) || cfg.max_error.is_nan() {
        return Err(EvalError::Data(format!(
            "target recall must be in (0, 1] and max error a number (got {}, {})",
            cfg.target_recall, cfg.max_error
        )));
    }
    if let Some(x) = cfg.speedup {
        if !(x.is_finite() && x >= 1.0) {
            return Err(EvalError::Data(format!("speed-up budget must be a number ≥ 1 (got {x})")));
        }
    }
    Ok(())
}

/// Chooses for every head (by the quality bounds, or under the speed budget when
/// `cfg.speedup` is set), records the choice in `heads`, and builds the plan: exact by default,
/// one override with its scores per head that is not exact.
///
/// # Errors
/// Bad settings; a speed budget no combination of the candidates reaches; a candidate spec that
/// does not parse.
pub fn select(
    heads: &mut [HeadResult],
    cfg: &SearchConfig,
    weights: &BTreeMap<String, f64>,
) -> Result<AttentionPlan, EvalError> {
    check(cfg)?;
    let chosen: Vec<Option<usize>> = match cfg.speedup {
        Some(x) => choose_budget(heads, weights, x)?,
        None => heads.iter().map(|h| choose(h, cfg, weights)).collect(),
    };
    let mut plan = AttentionPlan::exact();
    for (r, c) in heads.iter_mut().zip(chosen) {
        r.chosen = c;
        if let Some(k) = r.chosen {
            let s = &r.scores[k];
            let choice = Choice::parse(&s.spec)?;
            let mut score = BTreeMap::new();
            score.insert("recall".to_string(), s.recall);
            score.insert("recall_min".to_string(), s.recall_min);
            if let Some(r) = s.retrieval_recall {
                score.insert("retrieval_recall".to_string(), r);
            }
            score.insert("error".to_string(), s.error);
            score.insert("density".to_string(), s.pairs as f64 / r.exact_pairs.max(1) as f64);
            score.insert("weight".to_string(), weights.get(&s.spec).copied().unwrap_or(1.0));
            plan.overrides.push(Override {
                layer: r.layer,
                head: Some(r.head),
                choice,
                score: Some(score),
            });
        }
    }
    Ok(plan)
}

/// The call preferences of one candidate (or exact's `sdpa-flash`) in the search.
fn prefs(method: &str, cfg: &SearchConfig) -> Prefs {
    Prefs {
        method: Some(method.to_string()),
        par: attn::Par::Rayon(cfg.threads.max(1)),
        ..Prefs::default()
    }
}

/// Mean and smallest attention-mass recall `exp(lse − lse_exact)` over the rows exact attention
/// sees something on (a row the method leaves empty keeps 0); `(1, 1)` when there is none.
fn recall(lse: &[f32], exact: &[f32]) -> (f64, f64) {
    let (mut sum, mut n, mut min) = (0.0f64, 0usize, f64::INFINITY);
    for (&a, &b) in lse.iter().zip(exact) {
        if b.is_finite() {
            let r = if a.is_finite() { (f64::from(a) - f64::from(b)).exp() } else { 0.0 };
            sum += r;
            n += 1;
            min = min.min(r);
        }
    }
    if n > 0 {
        (sum / n as f64, min)
    } else {
        (1.0, 1.0)
    }
}

fn score_head(
    c: &Captured,
    candidates: &[String],
    cfg: &SearchConfig,
    skipped: &mut Vec<(String, String, usize)>,
) -> Result<HeadResult, EvalError> {
    let inputs = c.inputs()?;
    let params = c.head_params();
    let prefs = |m: &str| prefs(m, cfg);
    let t = Instant::now();
    let exact = attn::attend(inputs.q, inputs.k, inputs.v, &params, &prefs("sdpa-flash"))
        .map_err(attn_models::ModelError::from)?;
    let exact_time_s = t.elapsed().as_secs_f64();
    let norm = exact.o.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    let mut scores = Vec::new();
    for spec in candidates {
        let t = Instant::now();
        let out = match attn::attend(inputs.q, inputs.k, inputs.v, &params, &prefs(spec)) {
            Ok(o) => o,
            Err(e) => {
                // Recorded once per candidate; the candidate is still tried on other heads
                // (a method may reject a sliding-window layer and accept a global one).
                match skipped.iter_mut().find(|(s, _, _)| s == spec) {
                    Some(entry) => entry.2 += 1,
                    None => skipped.push((spec.clone(), e.to_string(), 1)),
                }
                continue;
            }
        };
        let (recall, recall_min) = recall(&out.lse, &exact.lse);
        let diff = out
            .o
            .iter()
            .zip(&exact.o)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum::<f64>()
            .sqrt();
        scores.push(Score {
            spec: spec.clone(),
            recall,
            recall_min,
            retrieval_recall: None,
            error: if norm > 0.0 { diff / norm } else { diff },
            pairs: out.stats.computed_pairs,
            time_s: t.elapsed().as_secs_f64(),
        });
    }
    let exact_pairs = exact.stats.computed_pairs;
    Ok(HeadResult { layer: c.layer, head: c.head, exact_pairs, exact_time_s, scores, chosen: None })
}

/// Each candidate of `h` on the retrieval prompt's records `r` of the same head: the mean recall
/// over its last [`RETRIEVAL_ROWS`] rows. A candidate that fails there keeps recall 0 (never
/// chosen by the quality bounds).
fn score_retrieval(r: &Captured, h: &mut HeadResult, cfg: &SearchConfig) -> Result<(), EvalError> {
    let inputs = r.inputs()?;
    let params = r.head_params();
    let prefs = |m: &str| prefs(m, cfg);
    let exact = attn::attend(inputs.q, inputs.k, inputs.v, &params, &prefs("sdpa-flash"))
        .map_err(attn_models::ModelError::from)?;
    let tail = exact.lse.len().saturating_sub(RETRIEVAL_ROWS);
    for s in &mut h.scores {
        let r = match attn::attend(inputs.q, inputs.k, inputs.v, &params, &prefs(&s.spec)) {
            Ok(out) => recall(&out.lse[tail..], &exact.lse[tail..]).0,
            Err(_) => 0.0,
        };
        s.retrieval_recall = Some(r);
    }
    Ok(())
}

/// Every score of every head as JSON lines (`attn plan --scores`): one candidate on one head
/// per line, with the head's exact pairs and time and whether it was chosen; [`read_scores`]
/// reads it back.
pub fn write_scores(heads: &[HeadResult]) -> String {
    let mut s = String::new();
    for h in heads {
        for (i, c) in h.scores.iter().enumerate() {
            let line = serde_json::json!({
                "layer": h.layer, "head": h.head, "candidate": c.spec,
                "recall": c.recall, "recall_min": c.recall_min, "error": c.error,
                "retrieval_recall": c.retrieval_recall,
                "pairs": c.pairs, "exact_pairs": h.exact_pairs,
                "time_s": c.time_s, "exact_time_s": h.exact_time_s,
                "chosen": h.chosen == Some(i),
            });
            s.push_str(&line.to_string());
            s.push('\n');
        }
    }
    s
}

/// The heads of a scores file written by `attn plan --scores` (JSON lines: one candidate on
/// one head per line, the heads in order), to choose again without measuring: every line's
/// `layer`, `head`, `candidate`, `recall`, `recall_min`, `error` (null = not a number),
/// `pairs`, `exact_pairs`, `time_s` and `exact_time_s`, and `retrieval_recall` where the search
/// had a retrieval prompt (absent or null: none). The choices are not read back.
///
/// # Errors
/// [`EvalError::Data`] naming the line for a line that does not parse or lacks a field, and
/// for a file with no line.
pub fn read_scores(text: &str) -> Result<Vec<HeadResult>, EvalError> {
    #[derive(serde::Deserialize)]
    struct Line {
        layer: usize,
        head: usize,
        candidate: String,
        recall: Option<f64>,
        recall_min: Option<f64>,
        #[serde(default)]
        retrieval_recall: Option<f64>,
        error: Option<f64>,
        pairs: u64,
        exact_pairs: u64,
        time_s: f64,
        exact_time_s: f64,
    }
    let mut heads: Vec<HeadResult> = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let x: Line = serde_json::from_str(l)
            .map_err(|e| EvalError::Data(format!("scores line {}: {e}", n + 1)))?;
        let score = Score {
            spec: x.candidate,
            recall: x.recall.unwrap_or(f64::NAN),
            recall_min: x.recall_min.unwrap_or(f64::NAN),
            retrieval_recall: x.retrieval_recall,
            error: x.error.unwrap_or(f64::NAN),
            pairs: x.pairs,
            time_s: x.time_s,
        };
        match heads.last_mut() {
            Some(h) if h.layer == x.layer && h.head == x.head => h.scores.push(score),
            _ => heads.push(HeadResult {
                layer: x.layer,
                head: x.head,
                exact_pairs: x.exact_pairs,
                exact_time_s: x.exact_time_s,
                scores: vec![score],
                chosen: None,
            }),
        }
    }
    if heads.is_empty() {
        return Err(EvalError::Data("the scores file has no line".into()));
    }
    Ok(heads)
}

/// Seconds per pair of each candidate, over all heads, relative to exact's.
pub fn weights(heads: &[HeadResult]) -> BTreeMap<String, f64> {
    let (mut et, mut ep) = (0.0, 0u64);
    let mut sums: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for h in heads {
        et += h.exact_time_s;
        ep += h.exact_pairs;
        for s in &h.scores {
            let e = sums.entry(s.spec.clone()).or_default();
            e.0 += s.time_s;
            e.1 += s.pairs;
        }
    }
    let exact_rate = et / ep.max(1) as f64;
    sums.into_iter()
        .map(|(k, (t, p))| {
            let rate = t / p.max(1) as f64;
            (k, if exact_rate > 0.0 && rate > 0.0 { rate / exact_rate } else { 1.0 })
        })
        .collect()
}

/// The cheapest candidate of `h` (pairs × weight) that meets the quality bounds (recall, and
/// retrieval recall where scored, at least `target_recall`; error at most `max_error`) and costs
/// less than exact; `None` = exact.
pub fn choose(
    h: &HeadResult,
    cfg: &SearchConfig,
    weights: &BTreeMap<String, f64>,
) -> Option<usize> {
    let cost = |s: &Score| weighted(s, weights);
    h.scores
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.recall >= cfg.target_recall
                && s.retrieval_recall.is_none_or(|r| r >= cfg.target_recall)
                && s.error <= cfg.max_error
                && cost(s) < h.exact_pairs as f64
        })
        .min_by(|a, b| cost(a.1).total_cmp(&cost(b.1)))
        .map(|(i, _)| i)
}

/// The weighted cost of a score: its pairs × its candidate's weight (1 when unknown).
fn weighted(s: &Score, weights: &BTreeMap<String, f64>) -> f64 {
    s.pairs as f64 * weights.get(&s.spec).copied().unwrap_or(1.0)
}

/// Choices under a speed budget: the summed weighted cost of all heads at most their summed
/// exact pairs over `speedup`, with the smallest summed relative output error (exact: cost its
/// pairs, error 0). Candidates with a non-finite error are never chosen.
///
/// Greedy on the multiple-choice knapsack: every head starts at its cheapest option; the steps
/// along each head's lower convex hull of (cost, error) are taken steepest error drop per unit
/// of cost first, as long as they fit (a head whose next step does not fit takes no later
/// step); then, while some single change of one head to another option fits the remaining
/// budget and lowers the error, the one that lowers it most is made.
///
/// # Errors
/// [`EvalError::Data`] when even the cheapest option of every head exceeds the budget (the
/// message says the largest speed-up the candidates reach).
pub fn choose_budget(
    heads: &[HeadResult],
    weights: &BTreeMap<String, f64>,
    speedup: f64,
) -> Result<Vec<Option<usize>>, EvalError> {
    // Per head, its options: (cost, error, choice), exact first.
    let options: Vec<Vec<(f64, f64, Option<usize>)>> = heads
        .iter()
        .map(|h| {
            let mut o = vec![(h.exact_pairs as f64, 0.0, None)];
            for (i, s) in h.scores.iter().enumerate() {
                let c = weighted(s, weights);
                if s.error.is_finite() && c.is_finite() {
                    o.push((c, s.error, Some(i)));
                }
            }
            o
        })
        .collect();
    let exact_total: f64 = heads.iter().map(|h| h.exact_pairs as f64).sum();
    let budget = exact_total / speedup;
    // Each head's lower convex hull, from its cheapest option (lowest error among equals) to its
    // most accurate one: indices into its options.
    let hulls: Vec<Vec<usize>> = options
        .iter()
        .map(|o| {
            let mut idx: Vec<usize> = (0..o.len()).collect();
            idx.sort_by(|&a, &b| o[a].0.total_cmp(&o[b].0).then(o[a].1.total_cmp(&o[b].1)));
            let mut hull: Vec<usize> = Vec::new();
            for i in idx {
                // Keep only options that lower the error (the others are dominated).
                if hull.last().is_some_and(|&l| o[i].1 >= o[l].1) {
                    continue;
                }
                // Pop while the last hull point lies on or above the chord to the new one.
                while hull.len() >= 2 {
                    let (a, b) = (o[hull[hull.len() - 2]], o[hull[hull.len() - 1]]);
                    let c = o[i];
                    let cross = (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0);
                    if cross <= 0.0 {
                        hull.pop();
                    } else {
                        break;
                    }
                }
                hull.push(i);
            }
            hull
        })
        .collect();
    let mut at: Vec<usize> = hulls.iter().map(|h| h[0]).collect();
    let mut total: f64 = at.iter().enumerate().map(|(h, &i)| options[h][i].0).sum();
    if total > budget * (1.0 + 1e-12) {
        return Err(EvalError::Data(format!(
            "no plan reaches a {speedup}× speed-up with these candidates: the cheapest option of \
             every head reaches {:.2}× (in weighted pairs)",
            exact_total / total
        )));
    }
    // Hull steps, steepest error drop per unit of cost first (ties: head, then position).
    let mut steps: Vec<(f64, usize, usize)> = Vec::new();
    for (h, hull) in hulls.iter().enumerate() {
        for j in 1..hull.len() {
            let (a, b) = (options[h][hull[j - 1]], options[h][hull[j]]);
            steps.push(((a.1 - b.1) / (b.0 - a.0).max(f64::MIN_POSITIVE), h, j));
        }
    }
    steps.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let mut blocked = vec![false; heads.len()];
    for &(_, h, j) in &steps {
        if blocked[h] || at[h] != hulls[h][j - 1] {
            continue;
        }
        let delta = options[h][hulls[h][j]].0 - options[h][at[h]].0;
        if total + delta <= budget {
            total += delta;
            at[h] = hulls[h][j];
        } else {
            blocked[h] = true;
        }
    }
    // Top-up: the single change that fits and lowers the error most, until none does.
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (h, o) in options.iter().enumerate() {
            let (c0, e0, _) = o[at[h]];
            for (i, &(c, e, _)) in o.iter().enumerate() {
                let gain = e0 - e;
                if gain > 0.0 && total - c0 + c <= budget && best.is_none_or(|b| gain > b.0) {
                    best = Some((gain, h, i));
                }
            }
        }
        let Some((_, h, i)) = best else { break };
        total += options[h][i].0 - options[h][at[h]].0;
        at[h] = i;
    }
    Ok(at.iter().enumerate().map(|(h, &i)| options[h][i].2).collect())
}

/// Exact attention probabilities of a recorded head, and those of the method `spec` (computed by
/// running it with the identity matrix as values, so its output rows *are* its probabilities:
/// needs `S_kv ≤ 1024`, the largest value width the kernels take), both `[S_q, S_kv]`.
///
/// # Errors
/// [`EvalError::Data`] for heads longer than 1024 keys; attention errors of either run.
pub fn probability_maps(c: &Captured, spec: &str) -> Result<(Vec<f32>, Vec<f32>), EvalError> {
    let n = c.s_kv;
    if n > 1024 {
        return Err(EvalError::Data(format!(
            "attention maps need at most 1024 keys (the head has {n}); record fewer tokens"
        )));
    }
    let exact = c.probabilities()?;
    let mut eye = vec![0f32; n * n];
    for i in 0..n {
        eye[i * n + i] = 1.0;
    }
    let inputs = c.inputs()?;
    let v = attn::TensorRef::new(&eye[..], [1, 1, n, n]).map_err(attn_models::ModelError::from)?;
    let prefs = Prefs { method: Some(spec.to_string()), ..Prefs::default() };
    let o = attn::attend(inputs.q, inputs.k, v, &c.head_params(), &prefs)
        .map_err(attn_models::ModelError::from)?;
    Ok((exact, o.o))
}
