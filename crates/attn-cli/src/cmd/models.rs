//! `attn embed` and `attn perplexity`: the real models from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use attn_models::decoder::{ForwardOpts, KvCache};
use attn_models::{AttentionPlan, Choice, RunCtx};
use clap::Args;
use npyz::WriterBuilder;

use crate::config::Runtime;

/// `attn embed`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Example:
  attn embed --model minilm --text sentences.txt --out emb.npy")]
pub struct EmbedArgs {
    /// Encoder: `minilm` (fetched on first use) or a folder with config.json, model.safetensors
    /// and tokenizer.json
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// Text file, one sentence per line (empty lines are skipped)
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,
    /// Output .npy file: [N, hidden] f32, unit rows
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Attention method for every layer and head (`exact`, a registered name, or name:k=v,…)
    #[arg(long, default_value = "exact")]
    pub method: String,
    /// Sentences per forward batch
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

/// `attn perplexity`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Perplexity = exp(mean negative log-likelihood) of every token after the first, in one forward \
pass over the first N tokens of FILE; where the model's tokenizer asks for BOS (Gemma) it is the \
first of the N tokens, so N − 1 text tokens are all predicted.
Example:
  attn perplexity --model smollm2 --text emma.txt --tokens 4096")]
pub struct PerplexityArgs {
    /// Causal LM: smollm2, gemma3, qwen2 (fetched on first use) or a .gguf file
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Text file, or a corpus name: emma, austen:BOOK, shakespeare, bible, essays
    #[arg(long, value_name = "FILE|NAME")]
    pub text: String,
    /// Tokens of the text to evaluate
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    /// Attention method for every layer and head (`exact`, a registered name, or name:k=v,…),
    /// or `@FILE` for a per-head plan written by `attn plan`
    #[arg(long, default_value = "exact")]
    pub method: String,
    /// Prefill chunk in tokens (0 = the whole window at once)
    #[arg(long, default_value_t = 0)]
    pub chunk: usize,
    /// Also print the attention time of each layer
    #[arg(long)]
    pub by_layer: bool,
}

/// `exact`, `name:k=v,…` (one method everywhere) or `@plan.json` (a per-head plan file).
fn plan(method: &str) -> Result<AttentionPlan> {
    if let Some(path) = method.strip_prefix('@') {
        return Ok(AttentionPlan::load(path)?);
    }
    Ok(AttentionPlan::uniform(Choice::parse(method)?))
}

pub fn embed(a: &EmbedArgs, rt: &Runtime) -> Result<()> {
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading {}", a.text.display()))?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        bail!("{} has no non-empty lines", a.text.display());
    }
    let model = attn_models::model::load(&a.model)?.into_encoder()?;
    let mut ctx = RunCtx::new(plan(&a.method)?);
    ctx.threads = rt.threads_used();
    let t = Instant::now();
    let emb = model.embed(&lines, a.batch, &mut ctx)?;
    let dt = t.elapsed().as_secs_f64();
    let h = model.config.hidden_size;
    let mut out =
        std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[lines.len() as u64, h as u64])
        .writer(&mut out)
        .begin_nd()?;
    w.extend(emb.iter().copied())?;
    w.finish()?;
    eprintln!(
        "embedded {} sentences in {dt:.3} s ({:.1}/s; attention {:.3} s) → {} [{}, {h}]",
        lines.len(),
        lines.len() as f64 / dt,
        ctx.stats.time.as_secs_f64(),
        a.out.display(),
        lines.len()
    );
    Ok(())
}

pub fn perplexity(a: &PerplexityArgs, rt: &Runtime) -> Result<()> {
    let text = if std::path::Path::new(&a.text).exists() {
        std::fs::read_to_string(&a.text).with_context(|| format!("reading {}", a.text))?
    } else {
        attn_models::corpus::text(&a.text)
            .with_context(|| format!("`{}` is neither a file nor a corpus name", a.text))?
    };
    if a.tokens < 2 {
        bail!("--tokens must be at least 2");
    }
    let model = attn_models::model::load(&a.model)?.into_decoder()?;
    if a.tokens > model.config.context {
        bail!("--tokens {} exceeds the model's context of {}", a.tokens, model.config.context);
    }
    let input = attn_eval::lm::LmInput::new(&model, &text, a.tokens, 0)?;
    let w = &input.windows[0];
    let mut ctx = RunCtx::new(plan(&a.method)?);
    ctx.threads = rt.threads_used();
    let t = Instant::now();
    let mut cache = KvCache::default();
    let hidden =
        model.forward(&w[..w.len() - 1], &mut cache, &mut ctx, ForwardOpts { chunk: a.chunk })?;
    let fwd = t.elapsed().as_secs_f64();
    let lp = model.log_probs(&hidden, &w[1..], ctx.dense())?;
    let nll = -lp.iter().sum::<f64>() / lp.len() as f64;
    let mut o = std::io::stdout().lock();
    writeln!(o, "perplexity: {:.4}", nll.exp())?;
    eprintln!(
        "{} tokens ({} predicted{}), forward {fwd:.2} s ({:.0} tokens/s), attention {:.2} s, method {}",
        a.tokens,
        lp.len(),
        if model.tokenizer.adds_bos() { ", BOS first and counted" } else { "" },
        (w.len() - 1) as f64 / fwd,
        ctx.stats.time.as_secs_f64(),
        a.method
    );
    if ctx.stats.by_method.len() > 1 || !ctx.plan.is_exact() {
        for (m, (calls, t)) in &ctx.stats.by_method {
            eprintln!("  {m:<24} {calls:>5} calls {:>8.3} s", t.as_secs_f64());
        }
        eprintln!(
            "  scored pairs {:.1} % of what the masks allow",
            100.0 * ctx.stats.computed_pairs as f64 / ctx.stats.allowed_pairs.max(1) as f64
        );
    }
    if a.by_layer {
        for (l, t) in &ctx.stats.by_layer {
            eprintln!("  layer {l:>3} attention {:>8.3} s", t.as_secs_f64());
        }
    }
    Ok(())
}

/// `attn bench-model`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Times a real-model workload the way bench/models_peer.py times its peer (one warm-up, then \
--reps timed runs; median and best): a causal LM prefill of --tokens tokens (logits for the last \
position only), or an encoder embedding every line of --text. The last stdout line is JSON: \
{\"median_s\", \"best_s\", \"loaded_rss_bytes\", \"peak_rss_bytes\", …}.
Examples:
  attn bench-model --model smollm2 --text emma.txt --tokens 2048 --threads 2
  attn bench-model --model minilm --text sentences.txt --batch 32")]
pub struct BenchModelArgs {
    /// smollm2, gemma3, qwen2, minilm, or a path
    #[arg(long)]
    pub model: String,
    /// Token ids, one per line (causal LMs; else --text is tokenized)
    #[arg(long, value_name = "FILE")]
    pub ids: Option<PathBuf>,
    /// Text: for a causal LM the text whose first --tokens tokens are used; for an encoder, one
    /// sentence per line
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Prefill length (causal LMs)
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    /// Sentences per batch (encoders)
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed repetitions after one warm-up
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Attention method everywhere
    #[arg(long, default_value = "exact")]
    pub method: String,
}

pub fn bench_model(a: &BenchModelArgs, rt: &Runtime) -> Result<()> {
    let model = attn_models::model::load(&a.model)?;
    let loaded = attn::memory::rss_bytes();
    let plan = plan(&a.method)?;
    let mut times = Vec::new();
    let mut attn_times = Vec::new();
    let (what, n) = match &model {
        attn_models::model::Model::Decoder(m) => {
            let ids: Vec<u32> = match (&a.ids, &a.text) {
                (Some(f), _) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .split_whitespace()
                    .map(|t| {
                        t.parse::<u32>()
                            .with_context(|| format!("`{t}` in {} is not a token id", f.display()))
                    })
                    .collect::<Result<_>>()?,
                (None, Some(f)) => {
                    let t = std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    m.tokenizer.encode(&t, false)?
                }
                (None, None) => bail!("give --ids or --text"),
            };
            if ids.len() < a.tokens {
                bail!("only {} tokens available, --tokens {}", ids.len(), a.tokens);
            }
            let ids = &ids[..a.tokens];
            for _ in 0..=a.reps {
                let mut ctx = RunCtx::new(plan.clone());
                ctx.threads = rt.threads_used();
                let t = Instant::now();
                let h =
                    m.forward(ids, &mut KvCache::default(), &mut ctx, ForwardOpts::default())?;
                let last = &h[h.len() - m.config.hidden..];
                std::hint::black_box(m.logits_block(last, ctx.dense()));
                times.push(t.elapsed().as_secs_f64());
                attn_times.push(ctx.stats.time.as_secs_f64());
            }
            ("prefill", a.tokens)
        }
        attn_models::model::Model::Encoder(m) => {
            let f = a.text.as_ref().context("give --text (one sentence per line)")?;
            let t =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
            for _ in 0..=a.reps {
                let mut ctx = RunCtx::new(plan.clone());
                ctx.threads = rt.threads_used();
                let t = Instant::now();
                std::hint::black_box(m.embed(&lines, a.batch, &mut ctx)?);
                times.push(t.elapsed().as_secs_f64());
                attn_times.push(ctx.stats.time.as_secs_f64());
            }
            ("embed", lines.len())
        }
    };
    let timed = &mut times[1..].to_vec();
    timed.sort_by(f64::total_cmp);
    let median = timed[timed.len() / 2];
    let best = timed[0];
    let attention_median = {
        let mut v = attn_times[1..].to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let r = serde_json::json!({
        "workload": what, "model": a.model, "n": n, "threads": rt.threads_used(), "reps": a.reps,
        "median_s": median, "best_s": best, "per_s_median": n as f64 / median,
        "attention_s_median": attention_median,
        "loaded_rss_bytes": loaded, "peak_rss_bytes": attn::memory::peak_rss_bytes(),
    });
    eprintln!(
        "{what} of {n} on {}: median {median:.3} s, best {best:.3} s ({:.1}/s)",
        a.model,
        n as f64 / median
    );
    println!("{r}");
    Ok(())
}
