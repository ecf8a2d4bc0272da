//! The real models against the reference outputs of `scripts/reference/models.py`
//! (fixtures in `tests/fixtures/models/`): token ids, MiniLM embeddings, SmolLM2 and Gemma-3
//! per-token log-probs and perplexities; plus the invariants of the forward pass (chunked prefill
//! and KV-cache decode equal one-shot prefill, per-head plans, captures).
//!
//! The models are fetched into `$ATTN_HOME` on first use (`attn_models::fetch::ensure`).

use std::path::PathBuf;
use std::sync::OnceLock;

use attn_models::bert::Bert;
use attn_models::decoder::{Decoder, ForwardOpts, KvCache};
use attn_models::plan::{AttentionPlan, Choice, Override};
use attn_models::{Capture, RunCtx};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn smollm2() -> &'static Decoder {
    static M: OnceLock<Decoder> = OnceLock::new();
    M.get_or_init(|| attn_models::model::load("smollm2").unwrap().into_decoder().unwrap())
}

fn gemma3() -> &'static Decoder {
    static M: OnceLock<Decoder> = OnceLock::new();
    M.get_or_init(|| attn_models::model::load("gemma3").unwrap().into_decoder().unwrap())
}

fn minilm() -> &'static Bert {
    static M: OnceLock<Bert> = OnceLock::new();
    M.get_or_init(|| attn_models::model::load("minilm").unwrap().into_encoder().unwrap())
}

fn log_probs(m: &Decoder, tokens: &[u32], plan: AttentionPlan, opts: ForwardOpts) -> Vec<f64> {
    let mut ctx = RunCtx::new(plan);
    let mut cache = KvCache::default();
    let h = m.forward(&tokens[..tokens.len() - 1], &mut cache, &mut ctx, opts).unwrap();
    m.log_probs(&h, &tokens[1..], ctx.dense()).unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let fx = fixture("minilm.json");
    let m = minilm();
    let sents = fx["sentences"].as_array().unwrap();
    let texts: Vec<&str> = sents.iter().map(|s| s["text"].as_str().unwrap()).collect();
    for (s, t) in sents.iter().zip(&texts) {
        assert_eq!(m.tokenize(t).unwrap(), ids(&s["token_ids"]), "token ids of {t:?}");
    }
    // Batched (padded, key-padding mask) through the public text API.
    let e = m.embed(&texts, 4, &mut RunCtx::exact()).unwrap();
    let h = m.config.hidden_size;
    for (i, s) in sents.iter().enumerate() {
        let want = floats(&s["embedding"]);
        let got = &e[i * h..(i + 1) * h];
        let cos: f64 = want.iter().zip(got).map(|(a, b)| a * f64::from(*b)).sum::<f64>()
            / want.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!(cos >= 0.99999, "sentence {i}: cosine {cos}");
    }
}

#[test]
fn smollm2_log_probs_and_tokens_match_transformers() {
    let fx = fixture("smollm2.json");
    let m = smollm2();
    let text = fx["text"]["content"].as_str().unwrap();
    assert_eq!(m.tokenizer.encode(text, false).unwrap(), ids(&fx["text_token_ids"]));
    let tokens = ids(&fx["token_ids"]);
    let lp = log_probs(m, &tokens, AttentionPlan::exact(), ForwardOpts::default());
    let d = max_abs_diff(&lp, &floats(&fx["logprobs"]["values"]));
    assert!(d <= 2e-3, "max |Δ log p| = {d}");
}

#[test]
fn gemma3_log_probs_and_tokens_match_transformers() {
    let fx = fixture("gemma3.json");
    let m = gemma3();
    let text = fx["text"]["content"].as_str().unwrap();
    let text_ids = ids(&fx["text_token_ids"]);
    assert_eq!(m.tokenizer.encode(text, false).unwrap(), text_ids);
    let tokens = ids(&fx["token_ids"]);
    assert_eq!(tokens[0], m.tokenizer.bos_id().unwrap(), "Gemma wants BOS first");
    let lp = log_probs(m, &tokens, AttentionPlan::exact(), ForwardOpts::default());
    let d = max_abs_diff(&lp, &floats(&fx["logprobs"]["values"]));
    assert!(d <= 2e-3, "max |Δ log p| = {d}");
}

/// The first `n` tokens of Emma, BOS included (and counted) where the model wants one — the
/// reference script's convention.
fn emma_tokens(m: &Decoder, n: usize) -> Vec<u32> {
    let text = attn_models::corpus::austen("emma").unwrap();
    let mut t = Vec::new();
    if m.tokenizer.adds_bos() {
        t.push(m.tokenizer.bos_id().unwrap());
    }
    let end = text.char_indices().nth(n * 8).map_or(text.len(), |(i, _)| i);
    let ids = m.tokenizer.encode(&text[..end], false).unwrap();
    t.extend_from_slice(&ids[..n - t.len()]);
    t
}

fn perplexity(m: &Decoder, tokens: &[u32]) -> f64 {
    let lp = log_probs(m, tokens, AttentionPlan::exact(), ForwardOpts { chunk: 1024 });
    (-lp.iter().sum::<f64>() / lp.len() as f64).exp()
}

#[test]
fn smollm2_perplexity_on_4096_tokens_of_emma_matches_the_reference() {
    let fx = fixture("smollm2.json");
    let m = smollm2();
    let tokens = emma_tokens(m, 4096);
    assert_eq!(&tokens[..16], &ids(&fx["perplexity"]["first_token_ids"])[..]);
    assert_eq!(&tokens[4096 - 16..], &ids(&fx["perplexity"]["last_token_ids"])[..]);
    let want = fx["perplexity"]["value"].as_f64().unwrap();
    let got = perplexity(m, &tokens);
    assert!((got / want - 1.0).abs() < 0.005, "perplexity {got} vs reference {want}");
}

#[test]
fn gemma3_perplexity_on_2048_tokens_of_emma_matches_the_reference() {
    let fx = fixture("gemma3.json");
    let m = gemma3();
    let tokens = emma_tokens(m, 2048);
    let want = fx["perplexity"]["value"].as_f64().unwrap();
    let got = perplexity(m, &tokens);
    assert!((got / want - 1.0).abs() < 0.005, "perplexity {got} vs reference {want}");
}

#[test]
fn chunked_prefill_and_cached_decode_equal_one_shot_prefill() {
    let fx = fixture("smollm2.json");
    let m = smollm2();
    let tokens = ids(&fx["token_ids"]);
    let one = log_probs(m, &tokens, AttentionPlan::exact(), ForwardOpts::default());
    for chunk in [1, 7, 64] {
        let c = log_probs(m, &tokens, AttentionPlan::exact(), ForwardOpts { chunk });
        assert!(max_abs_diff(&one, &c) < 1e-4, "chunk {chunk}");
    }
    // Gemma: its sliding window (512) must hold across chunk boundaries too.
    let g = gemma3();
    let gt = emma_tokens(g, 700);
    let one = log_probs(g, &gt, AttentionPlan::exact(), ForwardOpts::default());
    let c = log_probs(g, &gt, AttentionPlan::exact(), ForwardOpts { chunk: 300 });
    assert!(max_abs_diff(&one, &c) < 1e-3);
}

#[test]
fn per_head_plans_route_heads_and_captures_record_them() {
    let fx = fixture("smollm2.json");
    let m = smollm2();
    let tokens = &ids(&fx["token_ids"])[..48];
    let exact = log_probs(m, tokens, AttentionPlan::exact(), ForwardOpts::default());
    let mut plan = AttentionPlan::exact();
    plan.overrides.push(Override {
        layer: 2,
        head: Some(4),
        choice: Choice::method("sdpa-reference"),
        score: None,
    });
    plan.overrides.push(Override {
        layer: 5,
        head: None,
        choice: Choice::method("sdpa-reference"),
        score: None,
    });
    plan.validate(m.config.layers.len(), m.config.heads).unwrap();
    let mut ctx = RunCtx::new(plan);
    ctx.capture = Some(Capture::new(Some([2].into()), Some([4, 5].into())));
    let mut cache = KvCache::default();
    let h = m
        .forward(&tokens[..tokens.len() - 1], &mut cache, &mut ctx, ForwardOpts::default())
        .unwrap();
    let lp = m.log_probs(&h, &tokens[1..], ctx.dense()).unwrap();
    assert!(max_abs_diff(&exact, &lp) < 1e-4);
    assert_eq!(ctx.stats.by_method["sdpa-reference"].0, 2, "{:?}", ctx.stats.by_method);
    let cap = ctx.capture.unwrap();
    assert_eq!(cap.items.len(), 2);
    // The file's metadata is JSON carrying each record's scale (1/√64 for SmolLM2).
    let file =
        std::env::temp_dir().join(format!("attn-capture-{}.safetensors", std::process::id()));
    cap.save_safetensors(&file, 0).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta.len(), 2);
    for (key, json) in &meta {
        let j: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(j["scale"].as_f64(), Some(0.125), "{key}: {json}");
        assert_eq!(j["mask"].as_str(), Some("Causal"), "{key}: {json}");
    }
    for c in &cap.items {
        assert_eq!((c.layer, c.kv_head), (2, c.head / 3));
        assert_eq!((c.s_q, c.s_kv, c.head_dim), (47, 47, 64));
        let p = c.probabilities().unwrap();
        for i in 0..c.s_q {
            let row = &p[i * c.s_kv..(i + 1) * c.s_kv];
            assert!((row.iter().map(|&x| f64::from(x)).sum::<f64>() - 1.0).abs() < 1e-5);
            assert!(row[i + 1..].iter().all(|&x| x == 0.0), "causal");
        }
    }
    // An unknown method is a typed error, not a fallback.
    let mut ctx = RunCtx::new(AttentionPlan::uniform(Choice::method("no-such-method")));
    assert!(m
        .forward(&tokens[..4], &mut KvCache::default(), &mut ctx, ForwardOpts::default())
        .is_err());
}

#[test]
fn bad_inputs_give_typed_errors() {
    let m = smollm2();
    let mut ctx = RunCtx::exact();
    assert!(m.forward(&[], &mut KvCache::default(), &mut ctx, ForwardOpts::default()).is_err());
    assert!(m
        .forward(&[u32::MAX], &mut KvCache::default(), &mut ctx, ForwardOpts::default())
        .is_err());
    assert!(m.log_probs(&[0.0; 576], &[1, 2], ctx.dense()).is_err());
    let dir = std::env::temp_dir().join(format!("attn-models-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("cut.gguf");
    let src = std::fs::read(attn_models::fetch::ensure("smollm2").unwrap()).unwrap();
    std::fs::write(&f, &src[..src.len() / 2]).unwrap();
    let e = Decoder::load_gguf(&f).unwrap_err();
    assert!(e.to_string().contains("cut.gguf"), "{e}");
    assert!(Bert::load(&dir).is_err(), "a folder without config.json");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A method without key-padding support runs a padded batch one sequence at a time, unmasked:
/// at a budget that covers every key it equals exact attention on the padded batch.
#[test]
fn padded_batches_run_methods_without_key_padding_per_sequence() {
    let m = minilm();
    let texts = [
        "A short one.",
        "A much longer sentence that forces the others in its batch to be padded by several tokens.",
        "Middle length, with some padding.",
    ];
    let exact = m.embed(&texts, 3, &mut RunCtx::exact()).unwrap();
    let full = AttentionPlan::uniform(Choice::parse("block-sparse:top_k=1000").unwrap());
    let mut ctx = RunCtx::new(full);
    let got = m.embed(&texts, 3, &mut ctx).unwrap();
    for (a, b) in exact.iter().zip(&got) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // One call per sequence and layer-run, not one per batch.
    assert_eq!(ctx.stats.calls, 3 * 6);
}
