//! The eval loop: for every (task, model, data) comparison, run the exact baseline, then each
//! method on the same tokens, append one row per run to `results.jsonl`, and finally write
//! `report.md` and the plots.
//!
//! Resumable: rows already in `results.jsonl` with status `ok` or `n/a` are not run again (the
//! exact baseline is recomputed when a method of its comparison still has to run, but its row is
//! not duplicated). A failing method becomes a `failed` row with its error, a method that cannot
//! run the model's attention an `n/a` row with its reasons; the others still run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use attn_models::plan::{AttentionPlan, Choice};

use crate::schema::{Cost, Quality, Row, NOT_APPLICABLE, SCHEMA_VERSION};
use crate::{embed, lm, needle, EvalError};

/// A task of the eval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Perplexity, KL to exact, top-1 agreement, loss by position on `tokens` tokens of `text`.
    Lm {
        /// Causal LM name or path.
        model: String,
        /// Corpus text name (`emma`, `austen:<book>`, `shakespeare`, `bible`, `essays`).
        text: String,
        /// Tokens evaluated.
        tokens: usize,
        /// Window (0 = all tokens in one window).
        window: usize,
        /// Stride between window starts (0 = the window: no overlap); with a smaller stride
        /// each window scores only its last tokens, which all have long context.
        stride: usize,
    },
    /// Embedding fidelity and Lee correlation.
    Embed {
        /// Encoder name or path.
        model: String,
    },
    /// Attention fidelity per (layer, head) on the Q/K/V recorded in one exact forward.
    Fidelity {
        /// Causal LM name or path.
        model: String,
        /// Corpus text name.
        text: String,
        /// Tokens of the recorded forward.
        tokens: usize,
    },
    /// Long-context retrieval (passkey, RULER needles): method prefill, exact greedy decode,
    /// exact-match accuracy (see [`crate::needle`]).
    Retrieval {
        /// Causal LM name or path.
        model: String,
        /// The retrieval tasks.
        kinds: Vec<crate::retrieval::TaskKind>,
        /// Prompt length in tokens (answer room included).
        tokens: usize,
        /// Samples per task kind.
        samples: usize,
    },
}

impl Task {
    fn model(&self) -> &str {
        match self {
            Task::Lm { model, .. }
            | Task::Embed { model }
            | Task::Retrieval { model, .. }
            | Task::Fidelity { model, .. } => model,
        }
    }
}

/// One method (or plan) to compare with exact.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSpec {
    /// Label in the results.
    pub label: String,
    /// The plan it runs.
    pub plan: AttentionPlan,
}

impl MethodSpec {
    /// A method by spec string (`name` or `name:k=v,…`), everywhere.
    ///
    /// # Errors
    /// Bad specs: malformed, an unknown method or parameter, a bad value — found here, before
    /// any model is loaded.
    pub fn parse(spec: &str) -> Result<Self, EvalError> {
        let c = Choice::parse(spec)?;
        if !c.is_exact() {
            attn::registry().build(&c.label()).map_err(attn_models::ModelError::from)?;
        }
        Ok(Self { label: c.label(), plan: AttentionPlan::uniform(c) })
    }

    /// A plan file.
    ///
    /// # Errors
    /// Unreadable or invalid plans.
    pub fn plan_file(path: &Path) -> Result<Self, EvalError> {
        Ok(Self { label: format!("plan:{}", path.display()), plan: AttentionPlan::load(path)? })
    }
}

/// Everything `attn eval` runs.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Tasks.
    pub tasks: Vec<Task>,
    /// Methods compared with exact.
    pub methods: Vec<MethodSpec>,
    /// Threads.
    pub threads: usize,
    /// Seed (recorded; the methods that draw randomness take it from here).
    pub seed: u64,
    /// Output folder.
    pub out: PathBuf,
    /// Progress bars on stderr.
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Every registered method that can run a prefill, by name, in registry order: not the references
/// (f64 oracles that cost minutes on a real model and equal exact by definition), not the decode
/// kernels.
pub fn registered_methods() -> Vec<MethodSpec> {
    attn::registry()
        .methods()
        .iter()
        // References are the specification, not candidates; decode kernels (a cap on query rows
        // per KV head) cannot run a prefill and are exercised by generation, not listed here.
        .filter(|m| !m.is_reference() && m.capabilities().max_query_rows.is_none())
        .map(|m| MethodSpec {
            label: m.name().to_string(),
            plan: AttentionPlan::uniform(Choice::method(m.name())),
        })
        .collect()
}

/// The default run: MiniLM on the Lee corpus, and SmolLM2 perplexity on 2048 tokens of *Emma*.
pub fn default_tasks() -> Vec<Task> {
    vec![
        Task::Embed { model: "minilm".into() },
        Task::Lm {
            model: "smollm2".into(),
            text: "emma".into(),
            tokens: 2048,
            window: 0,
            stride: 0,
        },
    ]
}

/// What a finished eval leaves.
#[derive(Debug)]
pub struct EvalOutcome {
    /// All rows of `results.jsonl` (old and new).
    pub rows: Vec<Row>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

fn env_map(cfg: &EvalConfig) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    m.insert("threads".into(), cfg.threads.into());
    m.insert("seed".into(), cfg.seed.into());
    m.insert("attn_version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("cpu".into(), cpu_model().into());
    m.insert("simd".into(), format!("{:?}", attn::primitives::simd::Level::detected()).into());
    m
}

/// The CPU model name from /proc/cpuinfo (or "unknown").
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn read_rows(path: &Path) -> Result<Vec<Row>, EvalError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // A line cut by an interrupted write is dropped (it is re-run), anything else is an error.
        match serde_json::from_str::<Row>(line) {
            Ok(r) => rows.push(r),
            Err(e) if i + 1 == text.lines().count() => {
                eprintln!("note: ignoring the unfinished last line of {} ({e})", path.display());
            }
            Err(e) => {
                return Err(EvalError::Data(format!("{} line {}: {e}", path.display(), i + 1)))
            }
        }
    }
    Ok(rows)
}

fn append(path: &Path, row: &Row) -> Result<(), EvalError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| EvalError::Io { path: path.to_path_buf(), source: e })?;
    let line = serde_json::to_string(row).map_err(|e| EvalError::Data(e.to_string()))?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_data())
        .map_err(|e| EvalError::Io { path: path.to_path_buf(), source: e })
}

fn peak_rss_after<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    attn::memory::reset_peak_rss();
    let r = f();
    (r, attn::memory::peak_rss_bytes().map(|b| b as u64))
}

/// Runs the eval.
///
/// # Errors
/// Output folder problems and failures of the exact baseline (method failures become rows).
pub fn run(cfg: &EvalConfig) -> Result<EvalOutcome, EvalError> {
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| EvalError::Io { path: cfg.out.clone(), source: e })?;
    let results = cfg.out.join("results.jsonl");
    let mut rows = read_rows(&results)?;
    // Rows that need no new run: measured, or of a method that does not apply to the model.
    let done: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.status == "ok" || r.status == NOT_APPLICABLE)
        .map(Row::id)
        .collect();
    let env = env_map(cfg);
    for task in &cfg.tasks {
        let (dataset, setting) = describe(task);
        let mk =
            |method: &str, status: &str, error: Option<String>, quality: Quality, cost: Cost| Row {
                schema: SCHEMA_VERSION,
                task: match task {
                    Task::Lm { .. } => "lm".into(),
                    Task::Embed { .. } => "embed".into(),
                    Task::Retrieval { .. } => "retrieval".into(),
                    Task::Fidelity { .. } => "fidelity".into(),
                },
                model: task.model().to_string(),
                dataset: dataset.clone(),
                method: method.to_string(),
                setting: setting.clone(),
                status: status.into(),
                error,
                quality,
                cost,
                env: env.clone(),
            };
        let todo: Vec<&MethodSpec> = cfg
            .methods
            .iter()
            .filter(|m| {
                !done.contains(&mk(&m.label, "ok", None, Quality::default(), Cost::default()).id())
            })
            .collect();
        let exact_id = mk("exact", "ok", None, Quality::default(), Cost::default()).id();
        if todo.is_empty() && done.contains(&exact_id) {
            eprintln!(
                "{} {}: every row already in {} (resumed)",
                task.model(),
                dataset,
                results.display()
            );
            continue;
        }
        eprintln!("{} on {}: loading", task.model(), dataset);
        let bar =
            progress(cfg.progress, todo.len() as u64 + 1, &format!("{} {}", task.model(), dataset));
        let first_row = rows.len();
        // Set when the model and inputs are ready: the harness's own cost is measured from here.
        let ready;
        // Each task: load, an untimed warm-up (page faults, scratch pools, so that exact — run
        // first — is not charged for what every later run gets for free), the exact baseline,
        // then `measure` for each method; rows are written by `record`.
        let mut out = Recorder {
            results: &results,
            rows: &mut rows,
            write_exact: !done.contains(&exact_id),
            bar: &bar,
        };
        match task {
            Task::Lm { model, text, tokens, window, stride } => {
                let m = attn_models::model::load(model)?.into_decoder()?;
                let text = attn_models::corpus::text(text)?;
                let input = lm::LmInput::strided(&m, &text, *tokens, *window, *stride)?;
                ready = std::time::Instant::now();
                let warm = lm::LmInput {
                    windows: vec![input.windows[0][..input.windows[0].len().min(256)].to_vec()],
                    buckets: 1,
                    scored_from: Vec::new(),
                };
                lm::run(&m, &warm, &AttentionPlan::exact(), cfg.threads)?;
                bar.set_message("exact");
                let (exact, rss) =
                    peak_rss_after(|| lm::run(&m, &input, &AttentionPlan::exact(), cfg.threads));
                let exact = exact?;
                let exact_cost = Cost { peak_rss_bytes: rss, ..lm::cost(&input, &exact) };
                // The methods' runs are kept (their final hidden states) and compared with exact
                // in batches, exact's logits computed once per batch.
                let layers = (m.config.layers.len(), m.config.heads);
                out.record_batched(
                    &mk,
                    exact_cost,
                    &todo,
                    |plan, held| {
                        let (r, rss) = peak_rss_after(|| lm::run(&m, &input, plan, cfg.threads));
                        Ok(Kept {
                            run: r?,
                            // The process's peak less the earlier runs of the batch it holds.
                            rss: rss.map(|b| b.saturating_sub(held as u64)),
                            plan_layers: plan_layers(plan, layers.0, layers.1),
                        })
                    },
                    |k| k.run.hidden.iter().map(|h| 4 * h.len()).sum(),
                    |kept| {
                        let runs: Vec<&lm::LmRun> = kept.iter().map(|k| &k.run).collect();
                        let (eq, rows) = lm::compare_all(&m, &input, &exact, &runs, cfg.threads);
                        let rows = rows
                            .into_iter()
                            .zip(kept)
                            .map(|((q, c), k)| {
                                let c = Cost {
                                    peak_rss_bytes: k.rss,
                                    plan_layers: k.plan_layers.clone(),
                                    ..c
                                };
                                (q, c)
                            })
                            .collect();
                        (eq, rows)
                    },
                )?;
            }
            Task::Embed { model } => {
                let m = attn_models::model::load(model)?.into_encoder()?;
                let lee = attn_models::corpus::lee()?;
                let input = embed::EmbedInput {
                    docs: lee.docs,
                    similarity: Some(lee.similarity),
                    batch: 16,
                };
                ready = std::time::Instant::now();
                let warm = embed::EmbedInput {
                    docs: input.docs[..input.docs.len().min(2)].to_vec(),
                    similarity: None,
                    batch: 16,
                };
                embed::run(&m, &warm, &AttentionPlan::exact(), cfg.threads)?;
                bar.set_message("exact");
                let (exact, rss) =
                    peak_rss_after(|| embed::run(&m, &input, &AttentionPlan::exact(), cfg.threads));
                let exact = exact?;
                let (q, mut c) = embed::compare(&m, &input, &exact, &exact);
                c.peak_rss_bytes = rss;
                out.record(&mk, (q, c), &todo, |plan| {
                    let (r, rss) = peak_rss_after(|| embed::run(&m, &input, plan, cfg.threads));
                    let (q, mut c) = embed::compare(&m, &input, &exact, &r?);
                    c.peak_rss_bytes = rss;
                    c.plan_layers =
                        plan_layers(plan, m.config.num_hidden_layers, m.config.num_attention_heads);
                    Ok((q, c))
                })?;
            }
            Task::Fidelity { model, text, tokens } => {
                let m = attn_models::model::load(model)?.into_decoder()?;
                let text = attn_models::corpus::text(text)?;
                let input = lm::LmInput::new(&m, &text, *tokens, 0)?;
                ready = std::time::Instant::now();
                let heads = crate::fidelity::capture(&m, &input.windows[0], cfg.threads)?;
                let (layers, n_heads) = (m.config.layers.len(), m.config.heads);
                bar.set_message("exact");
                let exact = crate::fidelity::exact_outputs(&heads, cfg.threads)?;
                let compare = |plan: &AttentionPlan| {
                    crate::fidelity::compare(&heads, &exact, plan, layers, n_heads, cfg.threads)
                };
                out.record(&mk, compare(&AttentionPlan::exact())?, &todo, compare)?;
            }
            Task::Retrieval { model, kinds, tokens, samples } => {
                let m = attn_models::model::load(model)?.into_decoder()?;
                let input = needle::NeedleInput::new(&m, kinds, *tokens, *samples, cfg.seed)?;
                ready = std::time::Instant::now();
                let first = input.samples.first().map(|s| s.1.clone()).unwrap_or_default();
                if first.len() >= 2 {
                    let warm = lm::LmInput {
                        windows: vec![first[..first.len().min(256)].to_vec()],
                        buckets: 1,
                        scored_from: Vec::new(),
                    };
                    lm::run(&m, &warm, &AttentionPlan::exact(), cfg.threads)?;
                }
                bar.set_message("exact");
                let (exact, rss) = peak_rss_after(|| {
                    needle::run(&m, &input, &AttentionPlan::exact(), cfg.threads)
                });
                let exact = exact?;
                let (q, mut c) = needle::compare(&exact, &exact);
                c.peak_rss_bytes = rss;
                out.record(&mk, (q, c), &todo, |plan| {
                    let (r, rss) = peak_rss_after(|| needle::run(&m, &input, plan, cfg.threads));
                    let (q, mut c) = needle::compare(&exact, &r?);
                    c.peak_rss_bytes = rss;
                    c.plan_layers = plan_layers(plan, m.config.layers.len(), m.config.heads);
                    Ok((q, c))
                })?;
            }
        }
        bar.finish_and_clear();
        // The harness's cost: wall time from ready inputs to the last row, against the time of
        // the forward passes it timed (warm-up, comparisons, logits and bookkeeping are the rest).
        let forwards: f64 = rows[first_row..].iter().filter_map(|r| r.cost.prefill_s).sum();
        if forwards > 0.0 {
            let wall = ready.elapsed().as_secs_f64();
            eprintln!(
                "{} on {}: {wall:.2} s for {forwards:.2} s of timed forward passes (harness +{:.1} %)",
                task.model(),
                dataset,
                100.0 * (wall / forwards - 1.0)
            );
        }
    }
    // A failed row is superseded by a later run of the same comparison and method: only the
    // newest row of each id is kept (ok and n/a rows are never re-run).
    let mut seen = BTreeSet::new();
    let mut newest: Vec<Row> = rows.into_iter().rev().filter(|r| seen.insert(r.id())).collect();
    newest.reverse();
    let rows = newest;
    let files = crate::output::write_outputs(cfg, &rows)?;
    Ok(EvalOutcome { rows, files })
}

/// The layers a plan changes (runs something other than exact on), when it leaves some layers
/// exact; empty when it changes every layer or none.
fn plan_layers(plan: &AttentionPlan, layers: usize, heads: usize) -> Vec<usize> {
    let changed = plan.changed_layers(layers, heads);
    if changed.len() == layers {
        Vec::new()
    } else {
        changed
    }
}

/// Bytes of kept runs (their hidden states) after which [`Recorder::record_batched`] compares
/// the batch with exact: exact's logits are computed once per batch.
const BATCH_BYTES: usize = 1 << 30;

/// Time after which a batch is compared and written however small it is: rows reach
/// `results.jsonl` at least this often, so an interrupted eval loses at most this much work.
const BATCH_TIME: std::time::Duration = std::time::Duration::from_secs(300);

/// A method's LM run kept for the batched comparison, with what its row needs besides.
struct Kept {
    run: lm::LmRun,
    rss: Option<u64>,
    plan_layers: Vec<usize>,
}

/// Builds a row: method label, status, error, quality, cost.
type MakeRow<'a> = dyn Fn(&str, &str, Option<String>, Quality, Cost) -> Row + 'a;

/// Writes the rows of one comparison as they are measured.
struct Recorder<'a> {
    results: &'a Path,
    rows: &'a mut Vec<Row>,
    /// False when a resumed run already has the exact row.
    write_exact: bool,
    bar: &'a indicatif::ProgressBar,
}

impl Recorder<'_> {
    /// The exact row (unless already written), then one row per method: `measure` runs the
    /// method's plan; its error becomes a `failed` row and the next method still runs.
    fn record(
        &mut self,
        mk: &MakeRow<'_>,
        exact: (Quality, Cost),
        todo: &[&MethodSpec],
        mut measure: impl FnMut(&AttentionPlan) -> Result<(Quality, Cost), EvalError>,
    ) -> Result<(), EvalError> {
        if self.write_exact {
            self.push(mk("exact", "ok", None, exact.0, exact.1))?;
        }
        self.bar.inc(1);
        for spec in todo {
            self.bar.set_message(spec.label.clone());
            let row = match measure(&spec.plan) {
                Ok((q, c)) => mk(&spec.label, "ok", None, q, c),
                Err(e) => {
                    let (status, why) = match not_applicable(&e) {
                        Some(why) => (NOT_APPLICABLE, why),
                        None => ("failed", e.to_string()),
                    };
                    mk(&spec.label, status, Some(why), Quality::default(), Cost::default())
                }
            };
            self.push(row)?;
            self.bar.inc(1);
        }
        Ok(())
    }

    /// As [`Recorder::record`] for methods whose runs are compared with exact together: each
    /// method's run (`run_one`, told how many bytes the batch already holds) is kept until the
    /// kept runs hold [`BATCH_BYTES`] (`held`) or the batch has run for [`BATCH_TIME`], then
    /// `compare` gives exact's quality and one
    /// `(quality, cost)` per kept run, in order. The exact row (`exact_cost`, and its quality
    /// from the first comparison) comes first; a failed run becomes its row at its place.
    #[allow(clippy::too_many_arguments)] // the pieces of one batched comparison
    fn record_batched<K>(
        &mut self,
        mk: &MakeRow<'_>,
        exact_cost: Cost,
        todo: &[&MethodSpec],
        mut run_one: impl FnMut(&AttentionPlan, usize) -> Result<K, EvalError>,
        held: impl Fn(&K) -> usize,
        mut compare: impl FnMut(&[K]) -> (Quality, Vec<(Quality, Cost)>),
    ) -> Result<(), EvalError> {
        self.bar.inc(1);
        let mut exact_done = !self.write_exact;
        let mut next = 0;
        while next < todo.len() || !exact_done {
            // One batch: runs (or the rows of failed ones) in todo order.
            let mut kept: Vec<K> = Vec::new();
            let mut slots: Vec<Result<&MethodSpec, Row>> = Vec::new();
            let (mut bytes, started) = (0, std::time::Instant::now());
            while next < todo.len() && bytes < BATCH_BYTES && started.elapsed() < BATCH_TIME {
                let spec = todo[next];
                next += 1;
                self.bar.set_message(spec.label.clone());
                match run_one(&spec.plan, bytes) {
                    Ok(k) => {
                        bytes += held(&k);
                        kept.push(k);
                        slots.push(Ok(spec));
                    }
                    Err(e) => {
                        let (status, why) = match not_applicable(&e) {
                            Some(why) => (NOT_APPLICABLE, why),
                            None => ("failed", e.to_string()),
                        };
                        let row =
                            mk(&spec.label, status, Some(why), Quality::default(), Cost::default());
                        slots.push(Err(row));
                    }
                }
                self.bar.inc(1);
            }
            let mut compared = Vec::new().into_iter();
            if !kept.is_empty() || !exact_done {
                self.bar.set_message("comparing with exact");
                let (exact_q, rows) = compare(&kept);
                if !exact_done {
                    self.push(mk("exact", "ok", None, exact_q, exact_cost.clone()))?;
                    exact_done = true;
                }
                compared = rows.into_iter();
            }
            for slot in slots {
                let row = match slot {
                    Ok(spec) => match compared.next() {
                        Some((q, c)) => mk(&spec.label, "ok", None, q, c),
                        None => mk(
                            &spec.label,
                            "failed",
                            Some("the comparison returned no result for this run".into()),
                            Quality::default(),
                            Cost::default(),
                        ),
                    },
                    Err(row) => row,
                };
                self.push(row)?;
            }
        }
        Ok(())
    }

    fn push(&mut self, row: Row) -> Result<(), EvalError> {
        append(self.results, &row)?;
        self.rows.push(row);
        Ok(())
    }
}

/// The reasons a method gave for not accepting the model's attention problem, when that is why
/// it failed (`attn::Error::Unsupported`): such a method does not apply to the model.
fn not_applicable(e: &EvalError) -> Option<String> {
    match e {
        EvalError::Model(attn_models::ModelError::Attention(attn::Error::Unsupported {
            reasons,
            ..
        })) => Some(reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
        _ => None,
    }
}

fn describe(task: &Task) -> (String, BTreeMap<String, serde_json::Value>) {
    let mut s = BTreeMap::new();
    match task {
        Task::Lm { text, tokens, window, stride, .. } => {
            s.insert("tokens".into(), (*tokens).into());
            s.insert("window".into(), (if *window == 0 { *tokens } else { *window }).into());
            if *stride != 0 {
                s.insert("stride".into(), (*stride).into());
            }
            (text.clone(), s)
        }
        Task::Embed { .. } => {
            s.insert("docs".into(), "lee.cor (50)".into());
            ("lee".into(), s)
        }
        Task::Fidelity { text, tokens, .. } => {
            s.insert("tokens".into(), (*tokens).into());
            (text.clone(), s)
        }
        Task::Retrieval { kinds, tokens, samples, .. } => {
            s.insert("tokens".into(), (*tokens).into());
            s.insert("samples".into(), (*samples).into());
            let names: Vec<String> = kinds.iter().map(ToString::to_string).collect();
            (names.join("+"), s)
        }
    }
}

fn progress(on: bool, len: u64, prefix: &str) -> indicatif::ProgressBar {
    if !on {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_prefix(prefix.to_string());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_specs_are_checked_before_any_model_loads() {
        assert_eq!(MethodSpec::parse("exact").unwrap().label, "exact");
        let s = MethodSpec::parse("streaming:sink=4,window=64").unwrap();
        assert_eq!(s.label, "streaming:sink=4,window=64");
        for (bad, says) in [
            ("nope", "unknown method"),
            ("streaming:nope=1", "no parameter"),
            ("streaming:window=x", "window"),
            ("streaming:window", "not key=value"),
        ] {
            let e = MethodSpec::parse(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn batched_rows_keep_the_method_order_and_compare_each_batch_once() {
        let path = std::env::temp_dir().join(format!("attn-batched-{}.jsonl", std::process::id()));
        let mk =
            |method: &str, status: &str, error: Option<String>, quality: Quality, cost: Cost| Row {
                schema: SCHEMA_VERSION,
                task: "lm".into(),
                model: "m".into(),
                dataset: "d".into(),
                method: method.into(),
                setting: BTreeMap::new(),
                status: status.into(),
                error,
                quality,
                cost,
                env: BTreeMap::new(),
            };
        let specs: Vec<MethodSpec> = [
            "streaming:window=8",
            "streaming:window=16",
            "streaming:window=24",
            "streaming:window=32",
        ]
        .iter()
        .map(|s| MethodSpec::parse(s).unwrap())
        .collect();
        let todo: Vec<&MethodSpec> = specs.iter().collect();
        let quality = |x: f64| Quality { perplexity: Some(x), ..Quality::default() };
        // Each kept run holds just over half the batch bytes, the second run fails: batches
        // {1st, 3rd} and {4th}.
        let half = BATCH_BYTES / 2 + 1;
        let (mut calls, mut held_seen, mut batches) = (0usize, Vec::new(), Vec::new());
        let mut rows = Vec::new();
        let bar = indicatif::ProgressBar::hidden();
        let mut rec = Recorder { results: &path, rows: &mut rows, write_exact: true, bar: &bar };
        rec.record_batched(
            &mk,
            Cost { prefill_s: Some(1.0), ..Cost::default() },
            &todo,
            |_, held| {
                calls += 1;
                held_seen.push(held);
                if calls == 2 {
                    Err(EvalError::Data("boom".into()))
                } else {
                    Ok(calls)
                }
            },
            |_| half,
            |kept: &[usize]| {
                batches.push(kept.to_vec());
                let rows = kept.iter().map(|&k| (quality(k as f64), Cost::default())).collect();
                (quality(batches.len() as f64 * 100.0), rows)
            },
        )
        .unwrap();
        assert_eq!(held_seen, vec![0, half, half, 0]);
        assert_eq!(batches, vec![vec![1, 3], vec![4]]);
        let got: Vec<(&str, &str, Option<f64>)> = rows
            .iter()
            .map(|r| (r.method.as_str(), r.status.as_str(), r.quality.perplexity))
            .collect();
        assert_eq!(
            got,
            vec![
                ("exact", "ok", Some(100.0)), // from the first comparison, with its cost
                ("streaming:window=8", "ok", Some(1.0)),
                ("streaming:window=16", "failed", None),
                ("streaming:window=24", "ok", Some(3.0)),
                ("streaming:window=32", "ok", Some(4.0)),
            ]
        );
        assert_eq!(rows[0].cost.prefill_s, Some(1.0));
        let why = rows[2].error.as_deref().unwrap_or_default();
        assert!(why.contains("boom"), "the failed run's row says why: {why}");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
        std::fs::remove_file(&path).ok();
        // Nothing left to run but the exact row: one comparison of no runs gives its quality.
        let mut rows = Vec::new();
        let mut rec = Recorder { results: &path, rows: &mut rows, write_exact: true, bar: &bar };
        let mut n = 0;
        rec.record_batched(
            &mk,
            Cost::default(),
            &[],
            |_, _| Ok(0usize),
            |_| 0,
            |kept| {
                n += 1;
                assert!(kept.is_empty());
                (quality(7.0), Vec::new())
            },
        )
        .unwrap();
        assert_eq!((n, rows.len(), rows[0].quality.perplexity), (1, 1, Some(7.0)));
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn unsupported_problems_are_not_applicable() {
        let e = EvalError::Model(attn_models::ModelError::Attention(attn::Error::Unsupported {
            method: "gated-deltanet".into(),
            reasons: vec![attn::Reason::Mask(attn::MaskKind::None)],
        }));
        assert_eq!(not_applicable(&e).as_deref(), Some("mask none unsupported"));
        let e = EvalError::Data("too few tokens".into());
        assert_eq!(not_applicable(&e), None);
    }
}
