//! `attn eval`: every attention method on real models and real text, quality beside cost.

use std::path::PathBuf;

use anyhow::{bail, Result};
use attn_eval::run::{default_tasks, registered_methods, EvalConfig, MethodSpec, Task};
use clap::Args;

use crate::config::Runtime;

/// `attn eval`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
With no options: MiniLM on the Lee corpus (embedding cosine to exact, Pearson/Spearman against \
human judgements) and SmolLM2 perplexity on 2048 tokens of Emma (perplexity, KL to exact, top-1 \
agreement, loss by position), each with exact attention and every registered method; models \
and data are fetched first if missing.
Outputs in --out: results.jsonl (one row per task × method × setting; schema in \
crates/attn-eval/src/schema.rs), report.md, and PNG plots. An interrupted run continues where \
it stopped when started again with the same --out.
Examples:
  attn eval
  attn eval --task lm --model smollm2 --tokens 4096 --method sdpa-flash --threads 2
  attn eval --task lm --model gemma3 --text bible --tokens 2048 --plan plan.json
  attn eval --task lm,retrieval --model smollm2 --tokens 8192 --plan plan.json --method sdpa-flash")]
pub struct EvalArgs {
    /// Task(s): lm, embed, retrieval, fidelity (per-head output error and attention recall on
    /// recorded Q/K/V) [default: embed on minilm and lm on smollm2]
    #[arg(long, value_delimiter = ',')]
    pub task: Vec<String>,
    /// Model for the lm task (smollm2, gemma3, qwen2, or a .gguf) [default: smollm2]; for embed
    /// the encoder is minilm unless a folder is given here
    #[arg(long)]
    pub model: Option<String>,
    /// Text for the lm task: emma, austen:BOOK, shakespeare, bible, essays
    #[arg(long, default_value = "emma")]
    pub text: String,
    /// Method(s) compared with exact, repeatable or comma-separated: a registered name or
    /// name:key=value,… (`streaming:sink=4,window=256,sea`) [default: every registered method]
    #[arg(long)]
    pub method: Vec<String>,
    /// A per-(layer, head) plan file, compared with exact like a method
    #[arg(long, value_name = "FILE")]
    pub plan: Vec<PathBuf>,
    /// Tokens for the lm task
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    /// Window for the lm task (0 = all tokens in one window)
    #[arg(long, default_value_t = 0)]
    pub window: usize,
    /// Stride between lm windows (0 = the window, no overlap); smaller strides score only each
    /// window's last STRIDE tokens, so every scored token has window − stride tokens of context
    #[arg(long, default_value_t = 0)]
    pub stride: usize,
    /// Retrieval tasks for `--task retrieval`: passkey, niah_single_1..3, niah_multikey_1..3,
    /// niah_multivalue, niah_multiquery, vt, cwe; prompts of --tokens tokens
    #[arg(long, value_delimiter = ',', default_value = "passkey,niah_single_2")]
    pub needles: Vec<String>,
    /// Samples per retrieval task (needle depths and keys drawn from --seed)
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
    /// Output folder
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    /// No progress bars
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: &EvalArgs, rt: &Runtime) -> Result<()> {
    let tasks = if a.task.is_empty() && a.model.is_none() {
        default_tasks()
    } else {
        let names: Vec<&str> = if a.task.is_empty() {
            vec!["lm"]
        } else {
            a.task.iter().map(String::as_str).collect()
        };
        let mut t = Vec::new();
        for n in names {
            match n {
                "lm" => t.push(Task::Lm {
                    model: a.model.clone().unwrap_or_else(|| "smollm2".into()),
                    text: a.text.clone(),
                    tokens: a.tokens,
                    window: a.window,
                    stride: a.stride,
                }),
                "embed" => t.push(Task::Embed {
                    model: a
                        .model
                        .clone()
                        .filter(|m| std::path::Path::new(m).is_dir())
                        .unwrap_or_else(|| "minilm".into()),
                }),
                "fidelity" => t.push(Task::Fidelity {
                    model: a.model.clone().unwrap_or_else(|| "smollm2".into()),
                    text: a.text.clone(),
                    tokens: a.tokens,
                }),
                "retrieval" => {
                    // One comparison per retrieval task, so each has its own accuracy.
                    for n in &a.needles {
                        let kind = n.parse().map_err(|e| anyhow::anyhow!("--needles: {e}"))?;
                        t.push(Task::Retrieval {
                            model: a.model.clone().unwrap_or_else(|| "smollm2".into()),
                            kinds: vec![kind],
                            tokens: a.tokens,
                            samples: a.samples,
                        });
                    }
                }
                other => bail!("unknown task `{other}` (lm, embed, retrieval, fidelity)"),
            }
        }
        t
    };
    let mut methods: Vec<MethodSpec> = crate::config::split_method_specs(&a.method)
        .iter()
        .map(|m| MethodSpec::parse(m))
        .collect::<Result<_, _>>()?;
    for p in &a.plan {
        methods.push(MethodSpec::plan_file(p)?);
    }
    if methods.is_empty() {
        methods = registered_methods();
    }
    let cfg = EvalConfig {
        tasks,
        methods,
        threads: rt.threads_used(),
        seed: rt.seed,
        out: a.out.clone(),
        progress: !a.quiet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let outcome = attn_eval::run::run(&cfg)?;
    println!("{}", attn_eval::report::table_text(&outcome.rows));
    for f in &outcome.files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
