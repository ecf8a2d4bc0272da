//! `report.md` and the terminal table from the rows of `results.jsonl`.
//!
//! Rows are grouped into *comparisons* — same task, model, data set and setting
//! ([`Row::key`]) — and each comparison becomes one table: the exact baseline first, then every
//! method in the order it ran, its quality numbers beside its cost and its attention speed-up over
//! the exact run of the same comparison. Failed methods are listed with their error. The report
//! ends with a summary: one line per method, its key quality number per task and its attention
//! speed-up over all comparisons.
//!
//! Nothing here panics on odd rows: missing numbers print as `–`, non-finite ones as `NaN`/`inf`,
//! and a comparison without an exact row says so instead of inventing ratios.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::schema::{Cost, Row, NOT_APPLICABLE};

/// The widest line [`table_text`] prints.
pub const TEXT_WIDTH: usize = 100;

/// Where and how the eval ran, for the report's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMeta {
    /// The report's title (first heading).
    pub title: String,
    /// The command line that produced the rows.
    pub command: String,
    /// When the report was written, seconds since the Unix epoch (printed as a UTC date).
    pub unix_time: u64,
    /// CPU model.
    pub cpu: String,
    /// Logical cores of the machine.
    pub cores: usize,
    /// Threads the eval used.
    pub threads: usize,
    /// Seed of every random choice (data sampling, retrieval generators).
    pub seed: u64,
    /// attn version.
    pub version: String,
    /// Git commit of the attn sources, when known.
    pub git_commit: Option<String>,
}

impl ReportMeta {
    /// Describes this process and machine: CPU model from `/proc/cpuinfo`, logical cores, the
    /// current time, the crate version, and the git commit when the build set
    /// `ATTN_GIT_COMMIT` in its environment.
    pub fn collect(command: &str, threads: usize, seed: u64) -> Self {
        Self {
            title: "attn eval report".into(),
            command: command.to_string(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cpu: crate::run::cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads,
            seed,
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: option_env!("ATTN_GIT_COMMIT").map(str::to_string),
        }
    }

    /// [`ReportMeta::unix_time`] as `YYYY-MM-DD HH:MM:SS UTC`.
    pub fn date_utc(&self) -> String {
        let days = (self.unix_time / 86_400) as i64;
        let secs = self.unix_time % 86_400;
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (the standard days-to-civil formula).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ------------------------------------------------------------------------------------------
// Numbers
// ------------------------------------------------------------------------------------------

/// `x` with `sig` significant digits (scientific notation below 1e-4 and from 1e6 on), `–` when
/// absent, `NaN`/`inf`/`-inf` when not finite. Digits left of the decimal point are never
/// rounded away (12345.6 with 3 digits prints `12346`).
pub fn num(x: Option<f64>, sig: usize) -> String {
    let sig = sig.max(1);
    match x {
        None => "–".into(),
        Some(v) if v.is_nan() => "NaN".into(),
        Some(v) if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.into(),
        Some(0.0) => "0".into(),
        Some(v) => {
            let mag = magnitude_after_rounding(v, sig);
            if !(-4..6).contains(&mag) {
                format!("{v:.prec$e}", prec = sig - 1)
            } else {
                let dec = (sig as i32 - 1 - mag).max(0) as usize;
                format!("{v:.dec$}")
            }
        }
    }
}

/// Decimal exponent of `v` once rounded to `sig` digits (9.9996 at 4 digits is 10.00: 1).
fn magnitude_after_rounding(v: f64, sig: usize) -> i32 {
    let mag = v.abs().log10().floor() as i32;
    let scale = 10f64.powi(sig as i32 - 1 - mag);
    let rounded = (v.abs() * scale).round() / scale;
    if rounded > 0.0 && rounded.is_finite() {
        rounded.log10().floor() as i32
    } else {
        mag
    }
}

/// Like [`num`] with a leading `+` on positive values (for differences).
pub fn signed(x: Option<f64>, sig: usize) -> String {
    let s = num(x, sig);
    match x {
        Some(v) if v > 0.0 && v.is_finite() => format!("+{s}"),
        _ => s,
    }
}

/// A number close to 1 (a cosine) with enough decimals that its distance from 1 shows two
/// significant digits (4 to 8 decimals); exactly 1 prints `1`.
pub fn near_one(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() && v != 1.0 => {
            let d = (1.0 - v).abs();
            let dec = ((-d.log10()).ceil() as i32 + 1).clamp(4, 8) as usize;
            format!("{v:.dec$}")
        }
        Some(1.0) => "1".into(),
        other => num(other, 4),
    }
}

/// `x` with `dec` decimals (`–` when absent).
fn fixed(x: Option<f64>, dec: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.dec$}"),
        other => num(other, 3),
    }
}

/// `x` as a count-like number: no decimals from 100 on, 3 significant digits below.
fn count_like(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() && v.abs() >= 100.0 && v.abs() < 1e9 => format!("{v:.0}"),
        other => num(other, 3),
    }
}

// ------------------------------------------------------------------------------------------
// Derived quantities
// ------------------------------------------------------------------------------------------

fn positive(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v > 0.0)
}

/// Attention speed-up of `r` over the exact row: exact attention seconds / method attention
/// seconds (`None` when either is missing, not finite or not positive).
pub fn speedup(r: &Row, exact: Option<&Row>) -> Option<f64> {
    let e = positive(exact?.cost.attention_s)?;
    let m = positive(r.cost.attention_s)?;
    Some(e / m)
}

/// Attention speed-up on the layers the row's plan changes ([`Cost::plan_layers`]): exact's
/// attention seconds on those layers over the method's (`None` without a per-layer plan, or when
/// either row lacks per-layer times).
pub fn speedup_plan_layers(r: &Row, exact: Option<&Row>) -> Option<f64> {
    let layers = &r.cost.plan_layers;
    if layers.is_empty() {
        return None;
    }
    let on = |c: &Cost| -> Option<f64> {
        let mut s = 0.0;
        for &l in layers {
            s += *c.attention_by_layer_s.get(l)?;
        }
        Some(s)
    };
    let e = positive(on(&exact?.cost))?;
    let m = positive(on(&r.cost))?;
    Some(e / m)
}

/// Perplexity change against exact, in percent: `100 · (ppl / ppl_exact − 1)`.
pub fn delta_ppl_pct(r: &Row, exact: Option<&Row>) -> Option<f64> {
    let e = positive(exact?.quality.perplexity)?;
    let p = r.quality.perplexity.filter(|v| !v.is_nan())?;
    Some(100.0 * (p / e - 1.0))
}

/// Scored (query, key) pairs as a percentage of the pairs exact attention scores: from the row's
/// own `exact_pairs`, else from the exact row's `scored_pairs`.
pub fn pairs_pct(r: &Row, exact: Option<&Row>) -> Option<f64> {
    let s = r.cost.scored_pairs? as f64;
    let e = r
        .cost
        .exact_pairs
        .or_else(|| exact.and_then(|x| x.cost.exact_pairs.or(x.cost.scored_pairs)))?
        as f64;
    (e > 0.0).then(|| 100.0 * s / e)
}

/// Mean of the finite entries of a `[layer][head]` grid.
pub fn grid_mean(grid: &[Vec<f64>]) -> Option<f64> {
    let (s, n) = grid
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Largest finite entry of a `[layer][head]` grid.
pub fn grid_max(grid: &[Vec<f64>]) -> Option<f64> {
    grid.iter().flatten().copied().filter(|v| v.is_finite()).reduce(f64::max)
}

// ------------------------------------------------------------------------------------------
// Grouping
// ------------------------------------------------------------------------------------------

/// The rows of one comparison (same [`Row::key`]): the exact row first, then the methods in the
/// order they were first written. When a method has several rows (a resumed run), the last one
/// counts.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    /// [`Row::key`] of every row.
    pub key: String,
    /// The rows, exact first.
    pub rows: Vec<&'a Row>,
}

impl<'a> Group<'a> {
    /// The successful exact row, if any.
    pub fn exact(&self) -> Option<&'a Row> {
        self.rows.iter().copied().find(|r| r.method == "exact" && r.status == "ok")
    }

    /// The task of the comparison.
    pub fn task(&self) -> &'a str {
        self.rows.first().map_or("", |r| r.task.as_str())
    }

    /// `model · dataset · setting` (without the task).
    pub fn subtitle(&self) -> String {
        self.rows.first().map_or_else(String::new, |r| subtitle(r))
    }
}

/// `model · dataset · k v, k v` of a row.
pub fn subtitle(r: &Row) -> String {
    let mut s = format!("{} · {}", r.model, r.dataset);
    let set = setting_text(r);
    if !set.is_empty() {
        s += " · ";
        s += &set;
    }
    s
}

/// The setting as `k v, k v` (strings without quotes).
pub fn setting_text(r: &Row) -> String {
    r.setting
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k} {s}"),
            other => format!("{k} {other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Report order of tasks: lm, embed, retrieval, fidelity, then any other alphabetically.
fn task_rank(task: &str) -> usize {
    match task {
        "lm" => 0,
        "embed" => 1,
        "retrieval" => 2,
        "fidelity" => 3,
        _ => 4,
    }
}

fn cmp_json(a: &serde_json::Value, b: &serde_json::Value) -> Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Orders comparisons: task, model, data set, then the settings with numbers compared as numbers
/// (512 before 2048).
fn cmp_rows(a: &Row, b: &Row) -> Ordering {
    task_rank(&a.task)
        .cmp(&task_rank(&b.task))
        .then_with(|| a.task.cmp(&b.task))
        .then_with(|| a.model.cmp(&b.model))
        .then_with(|| a.dataset.cmp(&b.dataset))
        .then_with(|| {
            let mut ia = a.setting.iter();
            let mut ib = b.setting.iter();
            loop {
                match (ia.next(), ib.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some((ka, va)), Some((kb, vb))) => {
                        let o = ka.cmp(kb).then_with(|| cmp_json(va, vb));
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                }
            }
        })
}

/// The rows grouped by comparison, in report order (see [`Group`]).
pub fn groups(rows: &[Row]) -> Vec<Group<'_>> {
    // The last row of each id wins; methods keep the position of their first row.
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        last.insert(r.id(), i);
    }
    let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        first_seen.entry(r.id()).or_insert(i);
    }
    let mut by_key: BTreeMap<String, Vec<(usize, &Row)>> = BTreeMap::new();
    for (id, &i) in &last {
        let r = &rows[i];
        by_key.entry(r.key()).or_default().push((first_seen[id], r));
    }
    let mut out: Vec<Group<'_>> = by_key
        .into_iter()
        .map(|(key, mut v)| {
            v.sort_by_key(|&(pos, r)| (r.method != "exact", pos));
            Group { key, rows: v.into_iter().map(|(_, r)| r).collect() }
        })
        .collect();
    out.sort_by(|a, b| match (a.rows.first(), b.rows.first()) {
        (Some(x), Some(y)) => cmp_rows(x, y).then_with(|| a.key.cmp(&b.key)),
        _ => a.key.cmp(&b.key),
    });
    out
}

// ------------------------------------------------------------------------------------------
// Columns
// ------------------------------------------------------------------------------------------

/// One table column: its header and how a row (with the comparison's exact row) fills it.
struct Col {
    head: &'static str,
    cell: fn(&Row, Option<&Row>) -> String,
}

const fn col(head: &'static str, cell: fn(&Row, Option<&Row>) -> String) -> Col {
    Col { head, cell }
}

const PPL: Col = col("ppl", |r, _| num(r.quality.perplexity, 4));
const DPPL: Col = col("Δppl %", |r, e| signed(delta_ppl_pct(r, e), 3));
const KL: Col = col("KL nats", |r, _| num(r.quality.kl_to_exact, 3));
const TOP1: Col = col("top-1 %", |r, _| fixed(r.quality.top1_agreement.map(|v| 100.0 * v), 2));
const COS_MEAN: Col = col("cos mean", |r, _| near_one(r.quality.cosine_mean));
const COS_MIN: Col = col("cos min", |r, _| near_one(r.quality.cosine_min));
const PEARSON: Col = col("Pearson", |r, _| fixed(r.quality.pearson, 4));
const SPEARMAN: Col = col("Spearman", |r, _| fixed(r.quality.spearman, 4));
const ACC: Col = col("acc %", |r, _| fixed(r.quality.accuracy.map(|v| 100.0 * v), 1));
const ERR_MEAN: Col = col("err mean", |r, _| num(grid_mean(&r.quality.head_error), 3));
const ERR_MAX: Col = col("err max", |r, _| num(grid_max(&r.quality.head_error), 3));
const RECALL: Col =
    col("recall %", |r, _| fixed(grid_mean(&r.quality.head_recall).map(|v| 100.0 * v), 2));
const PREFILL: Col = col("prefill s", |r, _| num(r.cost.prefill_s, 3));
const ATTN_S: Col = col("attn s", |r, _| num(r.cost.attention_s, 3));
const SPEEDUP: Col = col("attn ×", |r, e| num(speedup(r, e), 3));
const SPEEDUP_PLAN: Col = col("attn × plan layers", |r, e| num(speedup_plan_layers(r, e), 3));
const PAIRS: Col = col("pairs %", |r, e| num(pairs_pct(r, e), 3));
const TOKS: Col = col("tok/s", |r, _| count_like(r.cost.tokens_per_s));
const RSS: Col =
    col("RSS MiB", |r, _| count_like(r.cost.peak_rss_bytes.map(|b| b as f64 / 1_048_576.0)));

/// The quality columns of `report.md` for a task.
fn quality_cols(task: &str, rows: &[&Row]) -> Vec<Col> {
    match task {
        "lm" => vec![PPL, DPPL, KL, TOP1],
        "embed" => vec![COS_MEAN, COS_MIN, PEARSON, SPEARMAN],
        "retrieval" => vec![ACC],
        "fidelity" => vec![ERR_MEAN, ERR_MAX, RECALL],
        // An unknown task: every quality number some row has.
        _ => {
            let has = |f: fn(&Row) -> bool| rows.iter().any(|r| f(r));
            let mut v = Vec::new();
            for (present, c) in [
                (has(|r| r.quality.perplexity.is_some()), PPL),
                (has(|r| r.quality.kl_to_exact.is_some()), KL),
                (has(|r| r.quality.top1_agreement.is_some()), TOP1),
                (has(|r| r.quality.cosine_mean.is_some()), COS_MEAN),
                (has(|r| r.quality.pearson.is_some()), PEARSON),
                (has(|r| r.quality.accuracy.is_some()), ACC),
                (has(|r| !r.quality.head_error.is_empty()), ERR_MEAN),
                (has(|r| !r.quality.head_recall.is_empty()), RECALL),
            ] {
                if present {
                    v.push(c);
                }
            }
            v
        }
    }
}

/// The (fewer) quality columns of the terminal table for a task.
fn quality_cols_text(task: &str, rows: &[&Row]) -> Vec<Col> {
    match task {
        "lm" => vec![DPPL, KL, TOP1],
        "embed" => vec![COS_MEAN, PEARSON],
        "retrieval" => vec![ACC],
        "fidelity" => vec![ERR_MEAN, RECALL],
        other => {
            let mut v = quality_cols(other, rows);
            v.truncate(3);
            v
        }
    }
}

fn task_heading(task: &str) -> String {
    match task {
        "lm" => "Language modelling".into(),
        "embed" => "Embedding fidelity".into(),
        "retrieval" => "Long-context retrieval".into(),
        "fidelity" => "Attention fidelity".into(),
        other => format!("Task `{other}`"),
    }
}

fn task_explainer(task: &str) -> &'static str {
    match task {
        "lm" => {
            "Perplexity of the text under each method; Δppl % = 100·(ppl / ppl of exact − 1); \
             KL = mean KL(exact ‖ method) of the next-token distributions, in nats; top-1 % = \
             positions whose most likely next token is the exact run's."
        }
        "embed" => {
            "cos mean / cos min = mean and smallest cosine between each document's embedding and \
             the exact run's; Pearson / Spearman = correlation of the embeddings' similarities \
             with the human judgements."
        }
        "retrieval" => "acc % = answers recovered exactly by greedy decoding.",
        "fidelity" => {
            "err = relative Frobenius error ‖O − O_exact‖ / ‖O_exact‖ of each (layer, head)'s \
             attention output, mean and max over heads; recall % = attention mass of the exact \
             probabilities on the keys the method scored, mean over heads."
        }
        _ => "",
    }
}

const HOW_TO_READ: &str = "\
**How to read.** Each table compares the methods on the same tokens: the `exact` baseline first \
(exact attention, with the implementation attn's dispatcher picks for each call), then every \
method in the order it ran, failed ones last. Quality columns come first; differences and ratios \
are against the `exact` row of the same table. Cost columns follow: `prefill s` is the wall time \
of the whole forward passes and `attn s` the time inside attention calls only; `attn ×` is the \
attention speed-up, exact's `attn s` divided by the method's (above 1 = faster than exact), and \
`attn × plan layers` the same ratio over only the layers a per-layer plan changes (shown when a \
plan leaves some layers exact, such as a plan for a model's global layers); \
`pairs %` is the (query, key) pairs the method scored as a share of what exact attention scores \
under the same masks; `tok/s` is tokens per second of the forward passes; `RSS MiB` is the \
process's peak resident memory during the run, model weights included. `–` means the number \
does not apply or was not recorded. Times come from one run on the machine above and vary \
between runs by a few percent or more on a busy machine.";

/// The cells of one table: headers, the rows of successful methods, the failed ones, and those
/// that do not apply to the model.
struct Table<'a> {
    head: Vec<&'static str>,
    body: Vec<Vec<String>>,
    failed: Vec<&'a Row>,
    not_applicable: Vec<&'a Row>,
}

fn build_table<'a>(g: &Group<'a>, quality: Vec<Col>, cost: &[Col], text: bool) -> Table<'a> {
    let exact = g.exact();
    let cols: Vec<Col> =
        quality.into_iter().chain(cost.iter().map(|c| col(c.head, c.cell))).collect();
    let head: Vec<&'static str> =
        std::iter::once("method").chain(cols.iter().map(|c| c.head)).collect();
    let name =
        |r: &Row| if text { r.method.clone() } else { format!("`{}`", md_escape(&r.method)) };
    let mut body = Vec::new();
    let mut failed = Vec::new();
    let mut not_applicable = Vec::new();
    for r in &g.rows {
        if r.status == NOT_APPLICABLE {
            not_applicable.push(*r);
            continue;
        }
        if r.status != "ok" {
            failed.push(*r);
            continue;
        }
        let mut v = vec![name(r)];
        v.extend(cols.iter().map(|c| (c.cell)(r, exact)));
        body.push(v);
    }
    // Failed and inapplicable methods close the markdown table (their reasons follow it); the
    // terminal table prints them with their reasons instead.
    if !text {
        for (rows, tag) in [(&failed, "**failed**"), (&not_applicable, "n/a")] {
            for r in rows {
                let mut v = vec![name(r), tag.into()];
                v.extend((1..cols.len()).map(|_| String::new()));
                body.push(v);
            }
        }
    }
    Table { head, body, failed, not_applicable }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn markdown(t: &Table<'_>) -> String {
    let mut s = format!("| {} |\n", t.head.join(" | "));
    s += "|:---|";
    s += &t.head[1..].iter().map(|_| "---:|").collect::<String>();
    s += "\n";
    for r in &t.body {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

// ------------------------------------------------------------------------------------------
// Summary
// ------------------------------------------------------------------------------------------

/// How a row (with its comparison's exact row) gives a number.
type RowNumber = fn(&Row, Option<&Row>) -> Option<f64>;

/// The key quality number of a row for the summary (per task), with its header.
fn key_metric(task: &str) -> Option<(&'static str, RowNumber)> {
    match task {
        "lm" => Some(("lm Δppl %", delta_ppl_pct)),
        "embed" => Some(("embed cos mean", |r, _| r.quality.cosine_mean)),
        "retrieval" => Some(("retrieval acc %", |r, _| r.quality.accuracy.map(|v| 100.0 * v))),
        "fidelity" => Some(("fidelity err", |r, _| grid_mean(&r.quality.head_error))),
        _ => None,
    }
}

fn format_key_metric(task: &str, v: Option<f64>) -> String {
    match task {
        "lm" => signed(v, 3),
        "embed" => near_one(v),
        "retrieval" => fixed(v, 1),
        _ => num(v, 3),
    }
}

#[derive(Default)]
struct MethodSummary {
    /// Per task: (sum, count) of the key metric.
    metric: BTreeMap<String, (f64, usize)>,
    /// Sum of ln(speed-up) and count.
    log_speed: (f64, usize),
    failed: usize,
    /// Comparisons whose model the method does not apply to (not counted in `comparisons`).
    not_applicable: usize,
    comparisons: usize,
}

fn summary(gs: &[Group<'_>]) -> String {
    let mut tasks: Vec<&str> = Vec::new();
    let mut n_groups: BTreeMap<&str, usize> = BTreeMap::new();
    for g in gs {
        let t = g.task();
        if key_metric(t).is_some() && !tasks.contains(&t) {
            tasks.push(t);
        }
        *n_groups.entry(t).or_default() += 1;
    }
    let mut order: Vec<String> = Vec::new();
    let mut per: BTreeMap<String, MethodSummary> = BTreeMap::new();
    for g in gs {
        let exact = g.exact();
        for r in &g.rows {
            if !order.contains(&r.method) {
                order.push(r.method.clone());
            }
            let m = per.entry(r.method.clone()).or_default();
            if r.status == NOT_APPLICABLE {
                m.not_applicable += 1;
                continue;
            }
            m.comparisons += 1;
            if r.status != "ok" {
                m.failed += 1;
                continue;
            }
            if let Some((_, f)) = key_metric(&r.task) {
                if let Some(v) = f(r, exact).filter(|v| v.is_finite()) {
                    let e = m.metric.entry(r.task.clone()).or_default();
                    e.0 += v;
                    e.1 += 1;
                }
            }
            if let Some(s) = speedup(r, exact) {
                m.log_speed.0 += s.ln();
                m.log_speed.1 += 1;
            }
        }
    }
    // Exact first, methods that failed (or do not apply) everywhere last, the others in the order
    // they ran.
    order.sort_by_key(|m| {
        let all_failed = per.get(m).is_some_and(|x| x.failed == x.comparisons);
        (m != "exact", all_failed)
    });
    let mut head: Vec<String> = vec!["method".into()];
    for t in &tasks {
        if let Some((h, _)) = key_metric(t) {
            head.push(h.into());
        }
    }
    head.extend(["attn ×".into(), "failed".into()]);
    let mut s = format!("| {} |\n|:---|", head.join(" | "));
    s += &head[1..].iter().map(|_| "---:|").collect::<String>();
    s += "\n";
    for name in &order {
        let Some(m) = per.get(name) else { continue };
        let mut v = vec![format!("`{}`", md_escape(name))];
        for t in &tasks {
            let val = m.metric.get(*t).map(|&(sum, n)| sum / n as f64);
            v.push(format_key_metric(t, val));
        }
        let (ls, n) = m.log_speed;
        v.push(num((n > 0).then(|| (ls / n as f64).exp()), 3));
        v.push(match (m.comparisons, m.not_applicable) {
            (_, 0) => format!("{} of {}", m.failed, m.comparisons),
            (0, _) => "n/a".into(),
            (c, na) => format!("{} of {c} ({na} n/a)", m.failed),
        });
        let _ = writeln!(s, "| {} |", v.join(" | "));
    }
    let multi: Vec<String> = tasks
        .iter()
        .filter(|t| n_groups.get(**t).copied().unwrap_or(0) > 1)
        .map(|t| format!("{t} ({})", n_groups.get(*t).copied().unwrap_or(0)))
        .collect();
    let what: Vec<&str> = tasks
        .iter()
        .filter_map(|t| match *t {
            "lm" => Some("lm = Δppl %"),
            "embed" => Some("embed = mean cosine to exact"),
            "retrieval" => Some("retrieval = exact-match accuracy %"),
            "fidelity" => Some("fidelity = mean relative error of the heads' attention outputs"),
            _ => None,
        })
        .collect();
    s += "\nOne line per method.";
    if !what.is_empty() {
        let _ = write!(s, " Quality: {}.", what.join(", "));
    }
    s += " `attn ×` = geometric mean of the method's attention speed-ups over every comparison \
          it completed; `failed` = comparisons in which it failed, with `n/a` the comparisons whose model \
          it does not apply to (a causal-only method on a bidirectional encoder).";
    if !multi.is_empty() {
        let _ = write!(
            s,
            " Tasks with several comparisons show the mean over those the method completed: {}.",
            multi.join(", ")
        );
    }
    s += "\n";
    s
}

// ------------------------------------------------------------------------------------------
// report.md and the terminal table
// ------------------------------------------------------------------------------------------

const COST_COLS: [Col; 6] = [PREFILL, ATTN_S, SPEEDUP, PAIRS, TOKS, RSS];
const COST_COLS_TEXT: [Col; 3] = [ATTN_S, SPEEDUP, PAIRS];

/// `cols` with the speed-up on a plan's own layers after `attn ×`, when some row of the group
/// runs a plan that leaves layers exact.
fn with_plan_layers(g: &Group<'_>, cols: &[Col]) -> Vec<Col> {
    let exact = g.exact();
    let any = g.rows.iter().any(|r| speedup_plan_layers(r, exact).is_some());
    let mut v = Vec::new();
    for c in cols {
        v.push(col(c.head, c.cell));
        if any && c.head == SPEEDUP.head {
            v.push(SPEEDUP_PLAN);
        }
    }
    v
}

/// The machine description, with the SIMD level the rows recorded when they agree on one.
fn machine_line(rows: &[Row], meta: &ReportMeta) -> String {
    let mut s = format!("{} ({} logical cores)", meta.cpu, meta.cores);
    let simd: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.env.get("simd").and_then(|v| v.as_str()))
        .fold(Vec::new(), |mut v, x| {
            if !v.contains(&x) {
                v.push(x);
            }
            v
        });
    if simd.len() == 1 {
        let _ = write!(s, ", SIMD {}", simd[0]);
    }
    let cpus: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.env.get("cpu").and_then(|v| v.as_str()))
        .filter(|c| *c != meta.cpu)
        .collect();
    if !cpus.is_empty() {
        s += " — some rows were measured on another machine (see `env` in results.jsonl)";
    }
    s
}

/// `report.md`: header (command, date, machine, threads, seed, versions), how to read, one
/// section per task with a table per comparison, the plots the rows support, and the summary.
pub fn render(rows: &[Row], meta: &ReportMeta) -> String {
    let gs = groups(rows);
    let mut s = format!("# {}\n\n", one_line(&meta.title));
    let ok = rows.iter().filter(|r| r.status == "ok").count();
    let na = rows.iter().filter(|r| r.status == NOT_APPLICABLE).count();
    let version = match &meta.git_commit {
        Some(c) => format!("attn {} (commit {})", meta.version, c),
        None => format!("attn {}", meta.version),
    };
    let _ = write!(
        s,
        "| | |\n|:---|:---|\n| command | `{}` |\n| date | {} |\n| machine | {} |\n\
         | threads | {} |\n| seed | {} |\n| version | {} |\n| rows | {} ({} ok, {} failed{}) in {} \
         comparisons |\n\n",
        md_escape(&one_line(&meta.command)).replace('`', "'"),
        meta.date_utc(),
        md_escape(&machine_line(rows, meta)),
        meta.threads,
        meta.seed,
        md_escape(&version),
        rows.len(),
        ok,
        rows.len() - ok - na,
        if na > 0 { format!(", {na} n/a") } else { String::new() },
        gs.len()
    );
    s += HOW_TO_READ;
    s += "\n";
    if gs.is_empty() {
        s += "\nNo results: the eval wrote no rows.\n";
        return s;
    }
    // The plots `plot::all` draws for these rows, linked under their comparison's table.
    let plans = crate::plot::planned(rows);
    let mut current_task: Option<&str> = None;
    for g in &gs {
        let task = g.task();
        if current_task != Some(task) {
            current_task = Some(task);
            let _ = writeln!(s, "\n## {}\n", task_heading(task));
            let ex = task_explainer(task);
            if !ex.is_empty() {
                let _ = writeln!(s, "{ex}");
            }
        }
        let _ = writeln!(s, "\n### {}\n", md_escape(&g.subtitle()));
        if g.exact().is_none() {
            s += "*No successful `exact` row in this comparison: differences to exact and \
                  speed-ups cannot be computed.*\n\n";
        }
        let t =
            build_table(g, quality_cols(task, &g.rows), &with_plan_layers(g, &COST_COLS), false);
        s += &markdown(&t);
        for (rows, title) in [(&t.failed, "Failed"), (&t.not_applicable, "Not applicable")] {
            if rows.is_empty() {
                continue;
            }
            let _ = write!(s, "\n{title}:\n\n");
            for r in rows {
                let _ = writeln!(
                    s,
                    "- `{}`: {}",
                    r.method.replace('`', "'"),
                    one_line(r.error.as_deref().unwrap_or("(no error recorded)"))
                );
            }
        }
        let mut plots = plans.iter().filter(|p| p.key == g.key).peekable();
        if plots.peek().is_some() {
            s += "\n";
            for p in plots {
                let _ = writeln!(s, "![{}]({})", p.kind.describe(), p.relative_path());
            }
        }
    }
    s += "\n## Summary\n\n";
    s += &summary(&gs);
    s
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Lays a table out in at most [`TEXT_WIDTH`] columns: numbers right-aligned, the method column
/// shortened (with `…`) when the line would be too wide, failed methods as `FAILED: error` and
/// inapplicable ones as `n/a: reason`.
fn plain(t: &Table<'_>) -> String {
    let n = t.head.len();
    let mut w: Vec<usize> = t.head.iter().map(|h| h.chars().count()).collect();
    for r in &t.body {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in t.failed.iter().chain(&t.not_applicable) {
        w[0] = w[0].max(r.method.chars().count());
    }
    let rest: usize = w[1..].iter().map(|x| x + 2).sum();
    w[0] = w[0].min(TEXT_WIDTH.saturating_sub(rest).max(12));
    let line = |cells: &[String]| -> String {
        let mut l = format!("{:<width$}", truncate(&cells[0], w[0]), width = w[0]);
        for (i, c) in cells.iter().enumerate().skip(1).take(n - 1) {
            let _ = write!(l, "  {:>width$}", truncate(c, w[i]), width = w[i]);
        }
        truncate(l.trim_end(), TEXT_WIDTH)
    };
    let head: Vec<String> = t.head.iter().map(|h| h.to_string()).collect();
    let mut s = line(&head) + "\n";
    for r in &t.body {
        s += &line(r);
        s += "\n";
    }
    for (rows, tag) in [(&t.failed, "FAILED"), (&t.not_applicable, "n/a")] {
        for r in rows {
            let l = format!(
                "{:<width$}  {tag}: {}",
                truncate(&r.method, w[0]),
                one_line(r.error.as_deref().unwrap_or("(no error recorded)")),
                width = w[0]
            );
            s += &truncate(&l, TEXT_WIDTH);
            s += "\n";
        }
    }
    s
}

/// The terminal table `attn eval` prints at the end: one block per comparison (title line, then
/// a line per method with the task's key quality numbers, attention seconds, speed-up and share
/// of scored pairs), no line wider than [`TEXT_WIDTH`].
pub fn table_text(rows: &[Row]) -> String {
    let gs = groups(rows);
    if gs.is_empty() {
        return "no results\n".into();
    }
    let mut s = String::new();
    for g in &gs {
        let title = format!("{} · {}", g.task(), g.subtitle());
        let _ = writeln!(s, "{}", truncate(&title, TEXT_WIDTH));
        if g.exact().is_none() {
            s += "(no successful exact row: no speed-ups)\n";
        }
        let cost = with_plan_layers(g, &COST_COLS_TEXT);
        s += &plain(&build_table(g, quality_cols_text(g.task(), &g.rows), &cost, true));
        s += "\n";
    }
    s +=
        "attn × = exact attention s / method attention s; pairs % = scored (q, k) pairs vs exact\n";
    if gs.iter().any(|g| g.rows.iter().any(|r| speedup_plan_layers(r, g.exact()).is_some())) {
        s += "attn × plan layers = the same ratio over only the layers the plan changes\n";
    }
    s
}
