//! `report.md` and the terminal table from the rows of `results.jsonl`: one table per
//! comparison (task, model, data, setting), exact first, each method's quality beside its cost
//! and its attention speed-up over the exact run of the same comparison.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::schema::Row;

/// Where and how the eval ran, for the report's header.
#[derive(Debug, Clone)]
pub struct ReportMeta {
    /// The command line.
    pub command: String,
    /// Threads.
    pub threads: usize,
    /// Seed.
    pub seed: u64,
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// attn version.
    pub version: String,
    /// Seconds since the Unix epoch when the report was written.
    pub unix_time: u64,
}

impl ReportMeta {
    /// Reads the machine description of this process.
    pub fn collect(command: &str, threads: usize, seed: u64) -> Self {
        Self {
            command: command.to_string(),
            threads,
            seed,
            cpu: crate::run::cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// `x` with `sig` significant digits, or "–".
pub fn num(x: Option<f64>, sig: usize) -> String {
    match x {
        None => "–".into(),
        Some(v) if !v.is_finite() => format!("{v}"),
        Some(0.0) => "0".into(),
        Some(v) => {
            let mag = v.abs().log10().floor() as i32;
            if !(-4..6).contains(&mag) {
                format!("{v:.prec$e}", prec = sig.saturating_sub(1))
            } else {
                let dec = (sig as i32 - 1 - mag).max(0) as usize;
                format!("{v:.dec$}")
            }
        }
    }
}

/// Rows grouped by comparison, each group with its exact row first.
pub fn groups(rows: &[Row]) -> Vec<(String, Vec<&Row>)> {
    let mut g: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        g.entry(r.key()).or_default().push(r);
    }
    g.into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|r| r.method != "exact");
            (k, v)
        })
        .collect()
}

fn exact_of<'a>(group: &[&'a Row]) -> Option<&'a Row> {
    group.iter().copied().find(|r| r.method == "exact" && r.status == "ok")
}

/// Attention speed-up of `r` over the exact row: exact attention seconds / method attention seconds.
pub fn speedup(r: &Row, exact: Option<&Row>) -> Option<f64> {
    let e = exact?.cost.attention_s?;
    let m = r.cost.attention_s?;
    (m > 0.0).then(|| e / m)
}

struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

fn table(group: &[&Row]) -> Table {
    let task = group[0].task.as_str();
    let exact = exact_of(group);
    let mut head = vec!["method"];
    match task {
        "lm" => head.extend(["ppl", "Δppl %", "KL", "top-1"]),
        "embed" => head.extend(["cos mean", "cos min", "Pearson", "Spearman"]),
        "retrieval" => head.extend(["accuracy"]),
        _ => head.extend(["err mean", "err max"]),
    }
    head.extend(["prefill s", "attn s", "attn ×", "tok/s", "RSS MiB"]);
    let mut rows = Vec::new();
    for r in group {
        let mut v = vec![r.method.clone()];
        if r.status != "ok" {
            v.push(format!("FAILED: {}", r.error.as_deref().unwrap_or("?")));
            rows.push(v);
            continue;
        }
        let q = &r.quality;
        match task {
            "lm" => {
                let d = match (q.perplexity, exact.and_then(|e| e.quality.perplexity)) {
                    (Some(p), Some(e)) => Some(100.0 * (p / e - 1.0)),
                    _ => None,
                };
                v.extend([
                    num(q.perplexity, 5),
                    num(d, 3),
                    num(q.kl_to_exact, 3),
                    num(q.top1_agreement, 4),
                ]);
            }
            "embed" => v.extend([
                num(q.cosine_mean, 7),
                num(q.cosine_min, 7),
                num(q.pearson, 4),
                num(q.spearman, 4),
            ]),
            "retrieval" => v.push(num(q.accuracy, 3)),
            _ => {
                let all: Vec<f64> =
                    q.head_error.iter().flatten().copied().filter(|x| x.is_finite()).collect();
                let mean = (!all.is_empty()).then(|| all.iter().sum::<f64>() / all.len() as f64);
                v.extend([num(mean, 3), num(all.iter().copied().reduce(f64::max), 3)]);
            }
        }
        let c = &r.cost;
        v.extend([
            num(c.prefill_s, 3),
            num(c.attention_s, 3),
            num(speedup(r, exact), 3),
            num(c.tokens_per_s, 4),
            num(c.peak_rss_bytes.map(|b| b as f64 / 1048576.0), 4),
        ]);
        rows.push(v);
    }
    Table { head, rows }
}

fn markdown(t: &Table) -> String {
    let mut s = format!(
        "| {} |\n|{}|\n",
        t.head.join(" | "),
        t.head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in &t.rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

fn plain(t: &Table) -> String {
    let n = t.head.len();
    let mut w = vec![0usize; n];
    for (i, h) in t.head.iter().enumerate() {
        w[i] = h.chars().count();
    }
    // Failed rows (method + error) do not widen the columns: the error runs on past them.
    for r in t.rows.iter().filter(|r| r.len() == n) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count().min(60));
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c: String =
                    c.chars().take(if i + 1 == cells.len() { 200 } else { 60 }).collect();
                format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0))
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut s = line(t.head.iter().map(|h| h.to_string()).collect()) + "\n";
    for r in &t.rows {
        s += &(line(r.clone()) + "\n");
    }
    s
}

fn title(r: &Row) -> String {
    let set: Vec<String> = r.setting.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{} · {} · {} · {}", r.task, r.model, r.dataset, set.join(", "))
}

/// The terminal table: one block per comparison.
pub fn table_text(rows: &[Row]) -> String {
    let mut s = String::new();
    for (_, g) in groups(rows) {
        let _ = writeln!(s, "\n{}", title(g[0]));
        s += &plain(&table(&g));
    }
    s
}

/// `report.md`.
pub fn render(rows: &[Row], meta: &ReportMeta) -> String {
    let mut s = String::from("# attn eval report\n\n");
    let _ = writeln!(
        s,
        "- command: `{}`\n- machine: {} ({} logical cores), {} threads\n- attn {} · seed {} · written at unix time {}\n",
        meta.command, meta.cpu, meta.cores, meta.threads, meta.version, meta.seed, meta.unix_time
    );
    s += "How to read: every table compares methods on the same tokens. `exact` is the baseline \
          (the fastest exact implementation for each call). Δppl % and KL are against exact; \
          `attn ×` is exact's attention seconds divided by the method's (above 1 = faster); \
          `attn s` counts only time inside attention calls, `prefill s` the whole forward passes. \
          RSS is the process peak during the run (model weights included).\n";
    for (_, g) in groups(rows) {
        let _ = writeln!(s, "\n## {}\n", title(g[0]));
        s += &markdown(&table(&g));
    }
    s
}
