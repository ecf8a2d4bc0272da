//! `attn plan`: search a per-(layer, head) attention plan on a model's real Q/K/V; `attn capture`:
//! record those Q/K/V to a file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use attn_eval::search::{
    read_scores, search_with_retrieval, select, weights, write_scores, SearchConfig, SearchOutcome,
    RETRIEVAL_ROWS,
};
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
--target-recall and error ≤ --max-error, else exact. With --retrieval TASK a second exact forward \
over one retrieval prompt (e.g. passkey) records every head again, and a choice must also keep \
--target-recall on that prompt's last 32 rows, where the question reaches back to the needle: \
mean recall over a text does not protect the few keys retrieval needs. With --speedup X instead: the choices whose \
summed cost is at most exact's over X with the smallest summed output error (the quality bounds \
do not apply). --from-scores FILE chooses again from a file --scores wrote, without running the \
model. The plan file (JSON, versioned) holds the scores beside each choice; `attn eval --plan \
FILE` and `attn perplexity --method @FILE` run it.
Calibrate on a different text than the one you evaluate on (default: Persuasion; eval: Emma).
Examples:
  attn plan --model smollm2 --tokens 8192 --out plan.json --scores scores.jsonl
  attn plan --model smollm2 --tokens 8192 --target-recall 0.9 --retrieval passkey --out plan.json
  attn plan --from-scores scores.jsonl --speedup 4 --out plan-4x.json
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
    /// Also calibrate on one retrieval prompt of --tokens tokens (a task of `attn eval --task
    /// retrieval`: passkey, niah_single_2, …; generated under seed 1, which eval's default seed 0
    /// does not use): a head's choice must also keep --target-recall of the exact attention mass
    /// on the prompt's last 32 rows, the question that reaches back to the needle
    #[arg(long, value_name = "TASK")]
    pub retrieval: Option<String>,
    /// Smallest mean attention-mass recall a chosen method keeps on a head
    #[arg(long, default_value_t = 0.95)]
    pub target_recall: f64,
    /// Largest relative output error (Frobenius) a chosen method may have on a head
    #[arg(long, default_value_t = 0.1)]
    pub max_error: f64,
    /// Speed budget instead of the quality bounds: the searched heads' summed cost (pairs ×
    /// each candidate's cost weight) at most exact's over this factor, smallest summed error
    #[arg(long, value_name = "X")]
    pub speedup: Option<f64>,
    /// Choose from the scores file an earlier `attn plan --scores` wrote instead of measuring
    /// (no model run; --model, --text and --tokens are not used; --candidate keeps only those
    /// candidates of the file)
    #[arg(long, value_name = "FILE", conflicts_with = "layers")]
    pub from_scores: Option<PathBuf>,
    /// Candidate method spec, repeatable [default: budget ladders of streaming, a-shape,
    /// vertical-slash and block-sparse, plus every other registered approximate method]
    #[arg(long)]
    pub candidate: Vec<String>,
    /// Layers to search, comma-separated (the others stay exact) [default: all]
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
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
    let cfg = SearchConfig {
        target_recall: a.target_recall,
        max_error: a.max_error,
        candidates: a.candidate.clone(),
        threads: rt.threads_used(),
        layers: (!a.layers.is_empty()).then(|| a.layers.iter().copied().collect()),
        speedup: a.speedup,
    };
    let (outcome, source) = match &a.from_scores {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut heads =
                read_scores(&text).with_context(|| format!("scores file {}", path.display()))?;
            if !a.candidate.is_empty() {
                keep_candidates(&mut heads, &a.candidate)?;
            }
            let weights = weights(&heads);
            let plan = select(&mut heads, &cfg, &weights)?;
            let outcome = SearchOutcome { plan, heads, skipped: Vec::new(), tokens: 0, weights };
            (outcome, format!("the scores in {}", path.display()))
        }
        None => {
            let outcome = measure(a, &cfg)?;
            let source = format!("{} tokens of {}", outcome.tokens, a.text);
            (outcome, source)
        }
    };
    outcome.plan.save(&a.out)?;
    if let Some(path) = &a.scores {
        let s = write_scores(&outcome.heads);
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))?;
    }
    for (spec, why, n) in &outcome.skipped {
        eprintln!("candidate {spec} could not run on {n} heads: {why}");
    }
    let rule = match a.speedup {
        Some(x) => format!("speed budget {x}× (smallest summed error)"),
        None => format!("target recall {}, max error {}", a.target_recall, a.max_error),
    };
    println!("{} heads on {source}: {rule}", outcome.heads.len());
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
        "weighted cost vs exact (what --speedup budgets): {:.1} %; mean head error {:.4}",
        100.0 * outcome.weighted_ratio(),
        outcome.mean_error()
    );
    println!(
        "attention time of the chosen calls vs exact (single timings, indicative): {:.1} %",
        100.0 * outcome.time_ratio()
    );
    println!("wrote {}", a.out.display());
    Ok(())
}

/// Keeps only the scores of `wanted` candidates (compared as parsed specs); every wanted one
/// must be in the file.
fn keep_candidates(heads: &mut [attn_eval::search::HeadResult], wanted: &[String]) -> Result<()> {
    let norm = |spec: &str| attn_models::Choice::parse(spec).map(|c| c.label());
    let wanted: Vec<String> = wanted.iter().map(|w| norm(w)).collect::<Result<_, _>>()?;
    let mut seen = vec![false; wanted.len()];
    for h in heads.iter_mut() {
        h.scores.retain(|s| {
            let i = norm(&s.spec).ok().and_then(|l| wanted.iter().position(|w| *w == l));
            if let Some(i) = i {
                seen[i] = true;
            }
            i.is_some()
        });
    }
    if let Some(i) = seen.iter().position(|&s| !s) {
        bail!("--candidate {}: not in the scores file", wanted[i]);
    }
    Ok(())
}

/// Runs the model over the calibration tokens and scores every candidate on every head.
fn measure(a: &PlanArgs, cfg: &SearchConfig) -> Result<SearchOutcome> {
    let retrieval_kind: Option<attn_eval::retrieval::TaskKind> = a
        .retrieval
        .as_deref()
        .map(|task| task.parse().map_err(|e| anyhow::anyhow!("--retrieval `{task}`: {e}")))
        .transpose()?;
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
    let retrieval = match retrieval_kind {
        Some(kind) => {
            let mut r = attn_eval::needle::NeedleInput::new(&model, &[kind], a.tokens, 1, 1)?;
            let (sample, ids) = r.samples.remove(0);
            let depth = sample.depth.map_or("–".to_string(), |d| format!("{:.0} %", 100.0 * d));
            eprintln!(
                "retrieval calibration: {kind}, {} tokens, needle at depth {depth}, recall over \
                 the last {RETRIEVAL_ROWS} rows",
                ids.len()
            );
            Some(ids)
        }
        None => None,
    };
    if let Some(l) = a.layers.iter().find(|&&l| l >= model.config.layers.len()) {
        bail!("--layers: layer {l} out of range (the model has {})", model.config.layers.len());
    }
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
    let outcome =
        search_with_retrieval(&model, tokens, retrieval.as_deref(), cfg, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
    bar.finish_and_clear();
    Ok(outcome)
}

/// `attn capture`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Runs the model with exact attention over the first --tokens tokens of --text and writes the Q, K \
and V every chosen (layer, head) saw (after RoPE and norms) to one .safetensors file: tensors \
L{layer}.H{head}.B0.{q,k,v} of shape [S, D], each record's scale, softcap, mask, offset and RoPE \
(pairs, frequencies) in the metadata. `attn bench --qkv FILE` times methods on them; `attn run --q FILE:L3.H0.B0.q …` runs one.
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
    cap.rope = (0..layers)
        .filter(|&l| cap.wants_layer(l))
        .map(|l| (l, attn_models::capture::RopeMeta::of(&model.config.layers[l].rope)))
        .collect();
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

/// `attn maps`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
For each --head LAYER.HEAD: the exact attention probabilities of that head on the first --tokens \
tokens of --text (at most 1024), beside the probabilities of the method the plan chose for it (or \
--method), with the exact mass it drops in red; one PNG.
Example:
  attn maps --model smollm2 --plan plan.json --head 3.0 --head 20.4 --tokens 1024 --out maps.png")]
pub struct MapsArgs {
    /// Causal LM: smollm2, gemma3, qwen2 or a .gguf file
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Text: a file or a corpus name
    #[arg(long, default_value = "emma")]
    pub text: String,
    /// Tokens (≤ 1024)
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Heads to draw, LAYER.HEAD, repeatable
    #[arg(long, required = true)]
    pub head: Vec<String>,
    /// Plan whose choice for each head is drawn
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Method for every head instead of a plan (name:key=value,…)
    #[arg(long, conflicts_with = "plan")]
    pub method: Option<String>,
    /// Output PNG
    #[arg(long, value_name = "FILE", default_value = "maps.png")]
    pub out: PathBuf,
}

pub fn maps(a: &MapsArgs, rt: &Runtime) -> Result<()> {
    use attn_models::decoder::{ForwardOpts, KvCache};
    let model = attn_models::model::load(&a.model)?.into_decoder()?;
    let mut want = Vec::new();
    for h in &a.head {
        let (l, hh) =
            h.split_once('.').with_context(|| format!("--head {h}: expected LAYER.HEAD"))?;
        let (l, hh): (usize, usize) = (l.parse()?, hh.parse()?);
        if l >= model.config.layers.len() || hh >= model.config.heads {
            bail!(
                "--head {h}: out of range ({} layers, {} heads)",
                model.config.layers.len(),
                model.config.heads
            );
        }
        want.push((l, hh));
    }
    if a.tokens < 2 || a.tokens > 1024 {
        bail!("--tokens must be in 2..=1024 (maps are drawn from every probability)");
    }
    let plan = match (&a.plan, &a.method) {
        (Some(p), _) => attn_models::AttentionPlan::load(p)?,
        (None, Some(m)) => attn_models::AttentionPlan::uniform(attn_models::Choice::parse(m)?),
        (None, None) => bail!("give --plan FILE or --method SPEC"),
    };
    let text = if std::path::Path::new(&a.text).exists() {
        std::fs::read_to_string(&a.text).with_context(|| format!("reading {}", a.text))?
    } else {
        attn_models::corpus::text(&a.text)?
    };
    let input = attn_eval::lm::LmInput::new(&model, &text, a.tokens, 0)?;
    let layers = want.iter().map(|w| w.0).collect();
    let heads = want.iter().map(|w| w.1).collect();
    let mut ctx = attn_models::RunCtx::exact();
    ctx.threads = rt.threads_used();
    ctx.capture = Some(attn_models::Capture::new(Some(layers), Some(heads)));
    let mut cache = KvCache::default();
    model.forward(&input.windows[0], &mut cache, &mut ctx, ForwardOpts::default())?;
    let items = ctx.capture.take().map(|c| c.items).unwrap_or_default();
    let mut panels = Vec::new();
    for (l, h) in want {
        let c = items.iter().find(|c| c.layer == l && c.head == h).context("head not recorded")?;
        let choice = plan.choice(l, h);
        let spec = if choice.is_exact() { "sdpa-flash".to_string() } else { choice.label() };
        let (exact, method) = attn_eval::search::probability_maps(c, &spec)?;
        let n = c.s_kv;
        let kept: f64 = exact
            .iter()
            .zip(&method)
            .filter(|(_, m)| **m > 0.0)
            .map(|(e, _)| f64::from(*e))
            .sum::<f64>()
            / n as f64;
        panels.push(attn_eval::plot::MapPanel {
            title: format!(
                "layer {l}, head {h} · {spec} · exact mass on its support {:.1} %",
                100.0 * kept
            ),
            n,
            exact,
            method,
        });
    }
    let title = format!("Attention maps — {} on {} tokens of {}", a.model, a.tokens, a.text);
    attn_eval::plot::attention_maps(&panels, &title, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
