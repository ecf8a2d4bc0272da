//! `attn plan`: search a per-(layer, head) attention plan on a model's real Q/K/V; `attn capture`:
//! record those Q/K/V to a file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use attn_eval::search::{search, SearchConfig};
use clap::Args;

use crate::config::Runtime;

/// `attn plan`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
One exact forward over --tokens calibration tokens records the Q/K/V of every head; each \
candidate method (with its budget) then runs on every head and is scored by the attention mass \
it keeps (recall: mean over rows of exp(lse_method − lse_exact)), its relative output error, and \
the (query, key) pairs it scores, each call timed. Each head gets the cheapest candidate \
(pairs × the candidate's seconds-per-pair over exact's, summed over all heads) with recall ≥ \
--target-recall and error ≤ --max-error, else exact. The plan file (JSON, versioned) holds the \
scores beside each choice; `attn eval --plan FILE` and `attn perplexity --method @FILE` run it.
Calibrate on a different text than the one you evaluate on (default: Persuasion; eval: Emma).
Examples:
  attn plan --model smollm2 --tokens 8192 --out plan.json
  attn plan --model smollm2 --tokens 4096 --candidate vertical-slash:vertical=128,slash=256 \\
      --candidate streaming:sink=64,window=1024 --target-recall 0.9 --out plan.json")]
pub struct PlanArgs {
    /// Causal LM: smollm2, gemma3, qwen2 (fetched on first use) or a .gguf file
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Calibration text: a file or a corpus name (emma, austen:BOOK, shakespeare, bible, essays)
    #[arg(long, default_value = "austen:persuasion")]
    pub text: String,
    /// Calibration tokens (the length the plan is meant for)
    #[arg(long, default_value_t = 8192)]
    pub tokens: usize,
    /// Smallest mean attention-mass recall a chosen method keeps on a head
    #[arg(long, default_value_t = 0.95)]
    pub target_recall: f64,
    /// Largest relative output error (Frobenius) a chosen method may have on a head
    #[arg(long, default_value_t = 0.1)]
    pub max_error: f64,
    /// Candidate method spec, repeatable [default: budget ladders of streaming, a-shape,
    /// vertical-slash and block-sparse, plus every other registered approximate method]
    #[arg(long)]
    pub candidate: Vec<String>,
    /// Plan file to write
    #[arg(long, value_name = "FILE", default_value = "plan.json")]
    pub out: PathBuf,
    /// Also write every score of every head (JSON lines)
    #[arg(long, value_name = "FILE")]
    pub scores: Option<PathBuf>,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: &PlanArgs, rt: &Runtime) -> Result<()> {
    let text = if std::path::Path::new(&a.text).exists() {
        std::fs::read_to_string(&a.text).with_context(|| format!("reading {}", a.text))?
    } else {
        attn_models::corpus::text(&a.text)
            .with_context(|| format!("`{}` is neither a file nor a corpus name", a.text))?
    };
    let model = attn_models::model::load(&a.model)?.into_decoder()?;
    if a.tokens < 2 || a.tokens > model.config.context {
        bail!("--tokens must be in 2..={} (the model's context)", model.config.context);
    }
    let input = attn_eval::lm::LmInput::new(&model, &text, a.tokens, 0)?;
    let tokens = &input.windows[0];
    let cfg = SearchConfig {
        target_recall: a.target_recall,
        max_error: a.max_error,
        candidates: a.candidate.clone(),
        threads: rt.threads_used(),
    };
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "plan search [{bar:30}] {pos}/{len} heads {elapsed_precise} (eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    eprintln!("{}: exact forward over {} tokens, recording every head", a.model, tokens.len());
    let outcome = search(&model, tokens, &cfg, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    outcome.plan.save(&a.out)?;
    if let Some(path) = &a.scores {
        let mut s = String::new();
        for h in &outcome.heads {
            for (i, c) in h.scores.iter().enumerate() {
                s.push_str(&serde_json::to_string(&serde_json::json!({
                    "layer": h.layer, "head": h.head, "candidate": c.spec,
                    "recall": c.recall, "recall_min": c.recall_min, "error": c.error,
                    "pairs": c.pairs, "exact_pairs": h.exact_pairs,
                    "time_s": c.time_s, "exact_time_s": h.exact_time_s,
                    "chosen": h.chosen == Some(i),
                }))?);
                s.push('\n');
            }
        }
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))?;
    }
    for (spec, why) in &outcome.skipped {
        eprintln!("skipped candidate {spec}: {why}");
    }
    println!(
        "{} heads on {} tokens of {}: target recall {}, max error {}",
        outcome.heads.len(),
        outcome.tokens,
        a.text,
        a.target_recall,
        a.max_error
    );
    println!("cost weight per candidate (seconds per pair over exact's):");
    for (spec, w) in &outcome.weights {
        println!("  {spec:<44} {w:>6.2}");
    }
    println!("chosen:");
    for (m, n) in outcome.histogram() {
        println!("  {m:<16} {n:>4} heads");
    }
    println!("scored pairs vs exact on the calibration tokens: {:.1} %", 100.0 * outcome.density());
    println!(
        "attention time of the chosen calls vs exact (single timings, indicative): {:.1} %",
        100.0 * outcome.time_ratio()
    );
    println!("wrote {}", a.out.display());
    Ok(())
}

/// `attn capture`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Runs the model with exact attention over the first --tokens tokens of --text and writes the Q, K \
and V every chosen (layer, head) saw (after RoPE and norms) to one .safetensors file: tensors \
L{layer}.H{head}.B0.{q,k,v} of shape [S, D], each record's scale, softcap, mask and offset in the \
metadata. `attn bench --qkv FILE` times methods on them; `attn run --q FILE:L3.H0.B0.q …` runs one.
Example:
  attn capture --model smollm2 --text emma --tokens 8192 --layers 3,15,27 --heads 0,4 --out qkv.safetensors")]
pub struct CaptureArgs {
    /// Causal LM: smollm2, gemma3, qwen2 (fetched on first use) or a .gguf file
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Text: a file or a corpus name (emma, austen:BOOK, shakespeare, bible, essays)
    #[arg(long, default_value = "emma")]
    pub text: String,
    /// Tokens
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    /// Layers to record, comma-separated [default: all]
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// Query heads to record, comma-separated [default: all]
    #[arg(long, value_delimiter = ',')]
    pub heads: Vec<usize>,
    /// Output .safetensors file
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Refuse to hold more than this many MiB of records
    #[arg(long, default_value_t = 4096)]
    pub max_mib: usize,
}

pub fn capture(a: &CaptureArgs, rt: &Runtime) -> Result<()> {
    use attn_models::decoder::{ForwardOpts, KvCache};
    let text = if std::path::Path::new(&a.text).exists() {
        std::fs::read_to_string(&a.text).with_context(|| format!("reading {}", a.text))?
    } else {
        attn_models::corpus::text(&a.text)
            .with_context(|| format!("`{}` is neither a file nor a corpus name", a.text))?
    };
    let model = attn_models::model::load(&a.model)?.into_decoder()?;
    let (layers, heads) = (model.config.layers.len(), model.config.heads);
    if let Some(l) = a.layers.iter().find(|&&l| l >= layers) {
        bail!("--layers: layer {l} out of range (the model has {layers})");
    }
    if let Some(h) = a.heads.iter().find(|&&h| h >= heads) {
        bail!("--heads: head {h} out of range (the model has {heads})");
    }
    if a.tokens < 2 || a.tokens > model.config.context {
        bail!("--tokens must be in 2..={} (the model's context)", model.config.context);
    }
    let input = attn_eval::lm::LmInput::new(&model, &text, a.tokens, 0)?;
    let set = |v: &[usize]| (!v.is_empty()).then(|| v.iter().copied().collect());
    let mut cap = attn_models::Capture::new(set(&a.layers), set(&a.heads));
    cap.max_bytes = a.max_mib << 20;
    let mut ctx = attn_models::RunCtx::exact();
    ctx.threads = rt.threads_used();
    ctx.capture = Some(cap);
    let mut cache = KvCache::default();
    model.forward(&input.windows[0], &mut cache, &mut ctx, ForwardOpts::default())?;
    let cap = ctx.capture.take().context("capture lost")?;
    cap.save_safetensors(&a.out, 0)?;
    eprintln!("wrote {} records of {} tokens to {}", cap.items.len(), a.tokens, a.out.display());
    Ok(())
}
