//! The plan search and the retrieval task on the real SmolLM2 (fetched on demand), on short
//! inputs so the file runs in seconds.

use std::collections::BTreeMap;

use attn_eval::lm::{self, LmInput};
use attn_eval::needle::{self, NeedleInput};
use attn_eval::retrieval::TaskKind;
use attn_eval::search::{choose, search, HeadResult, Score, SearchConfig};
use attn_models::decoder::Decoder;
use attn_models::{AttentionPlan, Choice};

fn smollm2() -> Decoder {
    attn_models::model::load("smollm2").expect("smollm2").into_decoder().expect("decoder")
}

fn tokens(m: &Decoder, n: usize) -> Vec<u32> {
    let text = attn_models::corpus::text("austen:persuasion").expect("persuasion");
    LmInput::new(m, &text, n, 0).expect("input").windows.remove(0)
}

fn score(spec: &str, recall: f64, error: f64, pairs: u64, time_s: f64) -> Score {
    Score { spec: spec.into(), recall, recall_min: recall, error, pairs, time_s }
}

#[test]
fn choose_takes_the_cheapest_weighted_candidate_that_meets_both_bounds() {
    let h = HeadResult {
        layer: 0,
        head: 0,
        exact_pairs: 1000,
        exact_time_s: 1.0,
        scores: vec![
            score("a", 0.99, 0.01, 600, 0.6),
            score("b", 0.90, 0.01, 100, 0.1), // recall too low
            score("c", 0.99, 0.50, 150, 0.1), // error too high
            score("d", 0.97, 0.02, 400, 0.4),
        ],
        chosen: None,
    };
    let cfg = SearchConfig { target_recall: 0.95, max_error: 0.1, ..SearchConfig::default() };
    let mut w = BTreeMap::new();
    assert_eq!(choose(&h, &cfg, &w), Some(3));
    // A candidate whose pairs cost three times exact's is not cheaper than 600 plain pairs.
    w.insert("d".to_string(), 3.0);
    assert_eq!(choose(&h, &cfg, &w), Some(0));
    // Nothing cheaper than exact: exact.
    w.insert("a".to_string(), 2.0);
    assert_eq!(choose(&h, &cfg, &w), None);
}

#[test]
fn searched_plan_runs_what_it_chose_and_exact_where_nothing_qualifies() {
    let m = smollm2();
    let t = tokens(&m, 320);
    let cand = "streaming:sink=4,window=64".to_string();
    // No quality bound: every head where the window is cheaper gets it.
    let loose = SearchConfig {
        target_recall: 1e-9,
        max_error: f64::INFINITY,
        candidates: vec![cand.clone()],
        threads: 2,
        layers: None,
    };
    let mut seen = 0;
    let out = search(&m, &t, &loose, |done, total| {
        assert!(done <= total);
        seen = done;
    })
    .expect("search");
    let heads = m.config.layers.len() * m.config.heads;
    assert_eq!(out.heads.len(), heads);
    assert_eq!(seen, heads);
    for h in &out.heads {
        assert_eq!(h.scores.len(), 1, "one candidate scored per head");
        let s = &h.scores[0];
        assert!(s.recall > 0.0 && s.recall <= 1.0 + 1e-6, "subset support: recall {}", s.recall);
        assert!(s.pairs < h.exact_pairs, "a 64-key window scores fewer pairs than causal");
    }
    // The plan's overrides are exactly the chosen heads, and each carries its scores.
    let chosen = out.heads.iter().filter(|h| h.chosen.is_some()).count();
    assert_eq!(out.plan.overrides.len(), chosen);
    for o in &out.plan.overrides {
        assert_eq!(o.choice.label(), cand);
        let s = o.score.as_ref().expect("score");
        assert!(s.contains_key("recall") && s.contains_key("error") && s.contains_key("density"));
    }
    // Saved and loaded, it round-trips.
    let dir = std::env::temp_dir().join(format!("attn-search-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plan.json");
    out.plan.save(&path).expect("save");
    assert_eq!(AttentionPlan::load(&path).expect("load"), out.plan);
    // Where the plan chose the window everywhere, it runs what the uniform method runs.
    if chosen == heads {
        let input = LmInput { windows: vec![t.clone()], buckets: 1, scored_from: Vec::new() };
        let a = lm::run(&m, &input, &out.plan, 2).expect("plan");
        let b = lm::run(&m, &input, &AttentionPlan::uniform(Choice::parse(&cand).unwrap()), 2)
            .expect("uniform");
        assert_eq!(a.hidden, b.hidden, "per-head calls equal the per-layer call");
        assert_eq!(a.computed_pairs, b.computed_pairs);
    }
    // A bound nothing approximate can meet leaves every head exact.
    let strict = SearchConfig { target_recall: 1.0, max_error: 0.0, ..loose };
    let out = search(&m, &t, &strict, |_, _| {}).expect("search");
    assert!(out.plan.is_exact(), "{:?}", out.plan.overrides.first());
    assert!((out.density() - 1.0).abs() < 1e-12);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn search_rejects_bad_settings_with_typed_errors() {
    let m = smollm2();
    let t = tokens(&m, 16);
    let bad = SearchConfig { target_recall: 1.5, ..SearchConfig::default() };
    assert!(search(&m, &t, &bad, |_, _| {}).is_err());
    let unknown =
        SearchConfig { candidates: vec!["no-such-method".into()], ..SearchConfig::default() };
    let e = search(&m, &t, &unknown, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("no-such-method"), "{e}");
    assert!(search(&m, &t[..1], &SearchConfig::default(), |_, _| {}).is_err());
}

#[test]
fn passkey_prefill_with_exact_equals_itself_and_scores_answers() {
    let m = smollm2();
    let input = NeedleInput::new(&m, &[TaskKind::Passkey], 400, 2, 7).expect("samples");
    assert_eq!(input.samples.len(), 2);
    for (s, ids) in &input.samples {
        assert!(ids.len() <= 400, "{} tokens", ids.len());
        assert_eq!(s.answers.len(), 1);
    }
    let exact = needle::run(&m, &input, &AttentionPlan::exact(), 2).expect("exact");
    let flash =
        needle::run(&m, &input, &AttentionPlan::uniform(Choice::parse("sdpa-flash").unwrap()), 2)
            .expect("flash");
    let (q, c) = needle::compare(&exact, &flash);
    assert_eq!(q.top1_agreement, Some(1.0), "{:?} vs {:?}", exact.outputs, flash.outputs);
    assert_eq!(q.accuracy, Some(exact.scores.iter().sum::<f64>() / 2.0));
    for (sc, out) in exact.scores.iter().zip(&exact.outputs) {
        assert!((0.0..=1.0).contains(sc));
        assert!(!out.contains('\n'), "decoding stops at a newline: {out:?}");
    }
    assert!(c.scored_pairs.unwrap() > 0 && c.scored_pairs == c.exact_pairs);
    // Too few tokens for any prompt: a typed error, not a panic.
    assert!(NeedleInput::new(&m, &[TaskKind::Passkey], 10, 1, 7).is_err());
}

#[test]
fn fidelity_is_zero_for_exact_and_measures_a_window_per_head() {
    let m = smollm2();
    let t = tokens(&m, 200);
    let heads = attn_eval::fidelity::capture(&m, &t, 2).expect("capture");
    let (layers, n) = (m.config.layers.len(), m.config.heads);
    assert_eq!(heads.len(), layers * n);
    let exact = attn_eval::fidelity::exact_outputs(&heads, 2).expect("exact");
    let (q, c) =
        attn_eval::fidelity::compare(&heads, &exact, &AttentionPlan::exact(), layers, n, 2)
            .expect("exact");
    assert!(q.head_error.iter().flatten().all(|&e| e == 0.0));
    assert!(q.head_recall.iter().flatten().all(|&r| r == 1.0));
    assert_eq!(c.scored_pairs, c.exact_pairs);
    // A 16-key window on one layer only: that layer loses mass, the others are untouched.
    let mut plan = AttentionPlan::exact();
    plan.overrides.push(attn_models::plan::Override {
        layer: 3,
        head: None,
        choice: Choice::parse("streaming:sink=0,window=16").unwrap(),
        score: None,
    });
    let (q, c) = attn_eval::fidelity::compare(&heads, &exact, &plan, layers, n, 2).expect("plan");
    for (l, (errs, recs)) in q.head_error.iter().zip(&q.head_recall).enumerate() {
        for (&e, &r) in errs.iter().zip(recs) {
            if l == 3 {
                assert!(e > 0.0 && r < 1.0 && r > 0.0, "layer 3: error {e}, recall {r}");
            } else {
                assert!(e == 0.0 && r == 1.0, "layer {l}: error {e}, recall {r}");
            }
        }
    }
    assert!(c.scored_pairs < c.exact_pairs);
}

#[test]
fn probability_maps_of_exact_agree_and_a_window_zeroes_what_it_skips() {
    let m = smollm2();
    let t = tokens(&m, 96);
    let heads = attn_eval::fidelity::capture(&m, &t, 2).expect("capture");
    let c = &heads[7];
    let n = c.s_kv;
    let (exact, flash) = attn_eval::search::probability_maps(c, "sdpa-flash").expect("maps");
    for (a, b) in exact.iter().zip(&flash) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
    let (_, win) =
        attn_eval::search::probability_maps(c, "streaming:sink=0,window=8").expect("win");
    for i in 0..n {
        let row = &win[i * n..(i + 1) * n];
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "row {i} sums to {sum}");
        for (j, &p) in row.iter().enumerate() {
            if j > i || i - j >= 8 {
                assert_eq!(p, 0.0, "({i}, {j}) is outside the causal 8-key window");
            }
        }
    }
    // A plot of them is a PNG.
    let dir = std::env::temp_dir().join(format!("attn-maps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("maps.png");
    let panel = attn_eval::plot::MapPanel { title: "t".into(), n, exact, method: win };
    attn_eval::plot::attention_maps(&[panel], "maps", &path).expect("png");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn strided_windows_score_every_token_once_with_long_context() {
    let m = smollm2();
    let text = attn_models::corpus::text("austen:persuasion").expect("persuasion");
    // SmolLM2 adds no BOS: one 300-token window predicts ids[1..300].
    let all = LmInput::new(&m, &text, 300, 0).expect("one window").windows.remove(0);
    let s = LmInput::strided(&m, &text, 300, 300, 0).expect("stride 0");
    assert_eq!(s.windows, vec![all.clone()]);
    let strided = LmInput::strided(&m, &text, 300, 100, 0).expect("windows");
    // Windows of 100 tokens one after the other, as LmInput::new cuts them.
    assert_eq!(strided.windows, LmInput::new(&m, &text, 300, 100).unwrap().windows);
    let s = LmInput::strided(&m, &text, 300, 100, 40).expect("sliding");
    assert_eq!(s.windows.len(), 6, "starts 0, 40, …, 160, then 200 to end at 300");
    let mut counted = Vec::new();
    for (i, w) in s.windows.iter().enumerate() {
        assert_eq!(w.len(), 100);
        counted.extend_from_slice(&w[1 + s.first_scored(i)..]);
        if i > 0 {
            // Every counted target of a later window has at least window − stride of context.
            assert!(s.first_scored(i) + 1 >= 100 - 40, "window {i}: from {}", s.first_scored(i));
        }
    }
    assert_eq!(counted, all[1..].to_vec(), "each token predicted exactly once, in order");
    assert_eq!(s.predicted(), 299);
    // The run and the comparison honour the counted targets.
    let small = LmInput::strided(&m, &text, 128, 64, 16).expect("small");
    assert!(small.windows.len() > 2);
    let e = lm::run(&m, &small, &AttentionPlan::exact(), 2).expect("run");
    let (q, _) = lm::compare(&m, &small, &e, &e, 2);
    assert_eq!(q.kl_to_exact, Some(0.0));
    assert!(q.perplexity.unwrap().is_finite());
}
