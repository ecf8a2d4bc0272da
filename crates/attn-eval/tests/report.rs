//! `report.md`, the terminal table and the PNG plots, from synthetic rows whose numbers are known:
//! four tasks, exact + three methods in each (one failing), plus odd inputs (empty, NaN, no exact
//! row, a single method).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use attn_eval::plot::{self, PlotError, PlotKind};
use attn_eval::report::{self, ReportMeta};
use attn_eval::schema::{Cost, Quality, Row, NOT_APPLICABLE, SCHEMA_VERSION};

fn row(task: &str, model: &str, dataset: &str, method: &str, setting: &[(&str, u64)]) -> Row {
    let mut env = BTreeMap::new();
    env.insert("simd".to_string(), serde_json::Value::from("Avx2"));
    Row {
        schema: SCHEMA_VERSION,
        task: task.into(),
        model: model.into(),
        dataset: dataset.into(),
        method: method.into(),
        setting: setting.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect(),
        status: "ok".into(),
        error: None,
        quality: Quality::default(),
        cost: Cost::default(),
        env,
    }
}

fn failed(mut r: Row, error: &str) -> Row {
    r.status = "failed".into();
    r.error = Some(error.into());
    r
}

fn cost(prefill: f64, attn: f64, scored: u64, exact: u64, rss_mib: u64) -> Cost {
    Cost {
        prefill_s: Some(prefill),
        attention_s: Some(attn),
        scored_pairs: Some(scored),
        exact_pairs: Some(exact),
        tokens_per_s: Some(2047.0 / prefill),
        peak_rss_bytes: Some(rss_mib << 20),
        ..Cost::default()
    }
}

/// A language-modelling comparison: exact, flash (same quality, a little faster), streaming
/// (worse, much faster), and a failing method.
fn lm_rows(tokens: u64) -> Vec<Row> {
    let s = [("tokens", tokens), ("window", tokens)];
    let buckets = |base: f64, rise: f64| -> Vec<(usize, usize, f64)> {
        (0..8)
            .map(|b| {
                let (a, e) = (b * tokens as usize / 8, (b + 1) * tokens as usize / 8);
                (a, e, base - 0.3 * (b as f64 / 8.0) + rise * b as f64)
            })
            .collect()
    };
    let mut exact = row("lm", "smollm2", "emma", "exact", &s);
    exact.quality = Quality {
        perplexity: Some(12.0),
        kl_to_exact: Some(0.0),
        top1_agreement: Some(1.0),
        loss_by_position: buckets(2.8, 0.0),
        ..Quality::default()
    };
    exact.cost = cost(6.2, 2.4, 2_096_128, 2_096_128, 812);
    let mut flash = row("lm", "smollm2", "emma", "sdpa-flash", &s);
    flash.quality = Quality {
        perplexity: Some(12.000_6),
        kl_to_exact: Some(2.1e-7),
        top1_agreement: Some(0.9995),
        loss_by_position: buckets(2.8, 0.000_01),
        ..Quality::default()
    };
    flash.cost = cost(5.9, 2.0, 2_096_128, 2_096_128, 815);
    let mut stream = row("lm", "smollm2", "emma", "streaming:sink=4,window=256", &s);
    stream.quality = Quality {
        perplexity: Some(12.9),
        kl_to_exact: Some(0.0412),
        top1_agreement: Some(0.913),
        loss_by_position: buckets(2.8, 0.012),
        ..Quality::default()
    };
    stream.cost = cost(4.4, 0.7, 524_032, 2_096_128, 790);
    let bad = failed(
        row("lm", "smollm2", "emma", "hash-sparse", &s),
        "attention: method `hash-sparse` does not support head_dim 64",
    );
    vec![exact, flash, stream, bad]
}

fn embed_rows() -> Vec<Row> {
    let s = [("docs", 50)];
    let mut exact = row("embed", "minilm", "lee", "exact", &s);
    exact.quality = Quality {
        cosine_mean: Some(1.0),
        cosine_min: Some(1.0),
        pearson: Some(0.6612),
        spearman: Some(0.5873),
        ..Quality::default()
    };
    exact.cost = cost(1.9, 0.31, 1_000_000, 1_000_000, 220);
    let mut flash = row("embed", "minilm", "lee", "sdpa-flash", &s);
    flash.quality = Quality {
        cosine_mean: Some(0.999_999_8),
        cosine_min: Some(0.999_999_1),
        pearson: Some(0.6612),
        spearman: Some(0.5873),
        ..Quality::default()
    };
    flash.cost = cost(1.8, 0.25, 1_000_000, 1_000_000, 221);
    let mut stream = row("embed", "minilm", "lee", "streaming:sink=4,window=256", &s);
    stream.quality = Quality {
        cosine_mean: Some(0.9871),
        cosine_min: Some(0.9412),
        pearson: Some(0.6431),
        spearman: Some(0.5702),
        ..Quality::default()
    };
    stream.cost = cost(1.5, 0.12, 400_000, 1_000_000, 219);
    let bad = failed(row("embed", "minilm", "lee", "hash-sparse", &s), "out of memory");
    vec![exact, flash, stream, bad]
}

fn retrieval_rows() -> Vec<Row> {
    let s = [("context", 4096)];
    let mk = |m: &str, acc: f64, attn: f64, pairs: u64| {
        let mut r = row("retrieval", "smollm2", "passkey", m, &s);
        r.quality.accuracy = Some(acc);
        r.cost = cost(30.0 * attn, attn, pairs, 8_390_656, 900);
        r
    };
    vec![
        mk("exact", 1.0, 9.0, 8_390_656),
        mk("sdpa-flash", 1.0, 7.5, 8_390_656),
        mk("streaming:sink=4,window=256", 0.05, 1.1, 1_060_000),
        failed(row("retrieval", "smollm2", "passkey", "hash-sparse", &s), "not supported"),
    ]
}

fn fidelity_rows() -> Vec<Row> {
    let s = [("tokens", 1024)];
    let grid = |f: &dyn Fn(usize, usize) -> f64| -> Vec<Vec<f64>> {
        (0..12).map(|l| (0..9).map(|h| f(l, h)).collect()).collect()
    };
    let mut exact = row("fidelity", "smollm2", "emma", "exact", &s);
    exact.quality.head_error = grid(&|_, _| 0.0);
    exact.cost.attention_s = Some(1.2);
    let mut flash = row("fidelity", "smollm2", "emma", "sdpa-flash", &s);
    flash.quality.head_error = grid(&|l, h| 1e-7 * (1.0 + ((l * 9 + h) % 7) as f64));
    flash.cost.attention_s = Some(1.0);
    let mut stream = row("fidelity", "smollm2", "emma", "streaming:sink=4,window=256", &s);
    stream.quality.head_error = grid(&|l, h| {
        if l == 3 && h == 4 {
            f64::NAN
        } else {
            0.002 + 0.04 * ((l * 9 + h) % 11) as f64
        }
    });
    stream.quality.head_recall = grid(&|l, h| 0.9 + 0.01 * ((l + h) % 10) as f64);
    stream.cost.attention_s = Some(0.3);
    let bad = failed(row("fidelity", "smollm2", "emma", "hash-sparse", &s), "not supported");
    vec![exact, flash, stream, bad]
}

fn all_rows() -> Vec<Row> {
    let mut v = lm_rows(2048);
    v.extend(embed_rows());
    v.extend(retrieval_rows());
    v.extend(fidelity_rows());
    v
}

fn meta() -> ReportMeta {
    ReportMeta {
        title: "attn eval report".into(),
        command: "attn eval --task lm --method streaming:sink=4,window=256".into(),
        unix_time: 1_700_000_000,
        cpu: "Test CPU 3000".into(),
        cores: 2,
        threads: 2,
        seed: 7,
        version: "0.1.0".into(),
        git_commit: Some("abc1234".into()),
    }
}

/// The markdown table that follows the heading line `heading` (a `### …` line), as one map
/// header → cell per body line, keyed by method (backticks removed).
fn table_after(md: &str, heading: &str) -> HashMap<String, HashMap<String, String>> {
    let lines: Vec<&str> = md.lines().collect();
    let start = lines.iter().position(|l| *l == heading).unwrap_or_else(|| {
        panic!("no heading {heading:?} in the report:\n{md}");
    });
    let mut rows = lines[start + 1..].iter().skip_while(|l| !l.starts_with('|'));
    let cells = |l: &str| -> Vec<String> {
        l.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect()
    };
    let head = cells(rows.next().expect("a header line"));
    let _align = rows.next();
    let mut out = HashMap::new();
    for l in rows.take_while(|l| l.starts_with('|')) {
        let c = cells(l);
        let m: HashMap<String, String> = head.iter().cloned().zip(c.iter().cloned()).collect();
        out.insert(c[0].trim_matches('`').to_string(), m);
    }
    out
}

#[test]
fn report_has_every_table_method_and_error() {
    let rows = all_rows();
    let md = report::render(&rows, &meta());
    // Header.
    for s in [
        "# attn eval report",
        "`attn eval --task lm --method streaming:sink=4,window=256`",
        "2023-11-14 22:13:20 UTC",
        "Test CPU 3000 (2 logical cores), SIMD Avx2",
        "| threads | 2 |",
        "| seed | 7 |",
        "attn 0.1.0 (commit abc1234)",
        "16 (12 ok, 4 failed) in 4 comparisons",
        "**How to read.**",
    ] {
        assert!(md.contains(s), "missing {s:?} in\n{md}");
    }
    // Sections in task order, then the summary last.
    let pos = |s: &str| md.find(s).unwrap_or_else(|| panic!("missing {s:?}"));
    let order = [
        "## Language modelling",
        "## Embedding fidelity",
        "## Long-context retrieval",
        "## Attention fidelity",
        "## Summary",
    ];
    for w in order.windows(2) {
        assert!(pos(w[0]) < pos(w[1]), "{} should come before {}", w[0], w[1]);
    }
    // Table headers.
    for h in [
        "| method | ppl | Δppl % | KL nats | top-1 % | prefill s | attn s | attn × | pairs % | tok/s | RSS MiB |",
        "| method | cos mean | cos min | Pearson | Spearman | prefill s |",
        "| method | acc % | prefill s |",
        "| method | err mean | err max | recall % | prefill s |",
    ] {
        assert!(md.contains(h), "missing header {h:?} in\n{md}");
    }
    // Every method in every table, exact first, and the failures with their errors.
    for m in ["exact", "sdpa-flash", "streaming:sink=4,window=256", "hash-sparse"] {
        assert!(md.matches(&format!("| `{m}` |")).count() >= 4, "{m} not in every table");
    }
    for e in [
        "- `hash-sparse`: attention: method `hash-sparse` does not support head_dim 64",
        "- `hash-sparse`: out of memory",
    ] {
        assert!(md.contains(e), "missing failure {e:?}");
    }
    let lm_heading = "### smollm2 · emma · tokens 2048, window 2048";
    let first_body = md[pos(lm_heading)..].lines().find(|l| l.starts_with("| `")).unwrap_or("");
    assert!(first_body.starts_with("| `exact` |"), "exact is not first: {first_body}");
}

#[test]
fn report_numbers_are_computed_from_the_rows() {
    let rows = all_rows();
    let md = report::render(&rows, &meta());
    let lm = table_after(&md, "### smollm2 · emma · tokens 2048, window 2048");
    let s = &lm["streaming:sink=4,window=256"];
    // Speed-up = exact attention s / method attention s = 2.4 / 0.7 = 3.428…
    let expected = 2.4_f64 / 0.7;
    assert!((expected - 3.4286).abs() < 1e-4);
    assert_eq!(s["attn ×"], "3.43");
    // Δppl % = 100 (12.9 / 12 − 1) = +7.5.
    assert_eq!(s["Δppl %"], "+7.50");
    // Pairs: 524032 / 2096128 = 25 %.
    assert_eq!(s["pairs %"], "25.0");
    assert_eq!(s["ppl"], "12.90");
    assert_eq!(s["KL nats"], "0.0412");
    assert_eq!(s["top-1 %"], "91.30");
    assert_eq!(s["RSS MiB"], "790");
    // tokens/s = 2047 / 4.4 = 465.2…
    assert_eq!(s["tok/s"], "465");
    let f = &lm["sdpa-flash"];
    assert_eq!(f["attn ×"], "1.20"); // 2.4 / 2.0
    assert_eq!(f["Δppl %"], "+0.00500"); // 100 · 0.0006 / 12
    assert_eq!(f["KL nats"], "2.10e-7");
    let e = &lm["exact"];
    assert_eq!(e["attn ×"], "1.00");
    assert_eq!(e["Δppl %"], "0");
    assert_eq!(lm["hash-sparse"]["ppl"], "**failed**");

    let embed = table_after(&md, "### minilm · lee · docs 50");
    assert_eq!(embed["streaming:sink=4,window=256"]["attn ×"], "2.58"); // 0.31 / 0.12
    assert_eq!(embed["streaming:sink=4,window=256"]["cos mean"], "0.9871");
    assert_eq!(embed["sdpa-flash"]["cos mean"], "0.99999980");
    assert_eq!(embed["exact"]["Pearson"], "0.6612");

    let ret = table_after(&md, "### smollm2 · passkey · context 4096");
    assert_eq!(ret["streaming:sink=4,window=256"]["acc %"], "5.0");
    assert_eq!(ret["streaming:sink=4,window=256"]["attn ×"], "8.18"); // 9 / 1.1

    let fid = table_after(&md, "### smollm2 · emma · tokens 1024");
    // Mean of the stream grid without the NaN head; max = 0.002 + 0.04·10.
    let grid = &fidelity_rows()[2].quality.head_error;
    let finite: Vec<f64> = grid.iter().flatten().copied().filter(|v| v.is_finite()).collect();
    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
    assert_eq!(fid["streaming:sink=4,window=256"]["err mean"], report::num(Some(mean), 3));
    assert_eq!(fid["streaming:sink=4,window=256"]["err max"], "0.402");
    assert_eq!(fid["streaming:sink=4,window=256"]["attn ×"], "4.00");

    // Summary: one row per method; streaming's speed-up is the geometric mean of its four.
    let summary = table_after(&md, "## Summary");
    assert_eq!(summary.len(), 4, "{summary:?}");
    let geo = ((2.4 / 0.7) * (0.31 / 0.12) * (9.0 / 1.1) * (1.2 / 0.3_f64)).powf(0.25);
    let st = &summary["streaming:sink=4,window=256"];
    assert_eq!(st["attn ×"], report::num(Some(geo), 3));
    assert_eq!(st["lm Δppl %"], "+7.50");
    assert_eq!(st["retrieval acc %"], "5.0");
    assert_eq!(st["failed"], "0 of 4");
    assert_eq!(summary["hash-sparse"]["failed"], "4 of 4");
    assert_eq!(summary["hash-sparse"]["attn ×"], "–");
    assert_eq!(summary["exact"]["attn ×"], "1.00");
}

/// A plan that changes only some layers (a model's global layers) gets a second speed-up over
/// those layers alone, from the per-layer attention times of its row and of exact's; the column
/// appears only where such a row exists.
#[test]
fn plan_layers_speedup_is_over_the_changed_layers_only() {
    let s = [("tokens", 4096)];
    let mut exact = row("lm", "gemma3", "emma", "exact", &s);
    exact.quality.perplexity = Some(20.0);
    exact.cost = cost(10.0, 7.0, 1000, 1000, 900);
    // Layers 0 and 2 are sliding-window layers the plan leaves exact; layer 1 is global.
    exact.cost.attention_by_layer_s = vec![0.5, 6.0, 0.5];
    let mut plan = row("lm", "gemma3", "emma", "plan:p.json", &s);
    plan.quality.perplexity = Some(20.1);
    plan.cost = cost(6.0, 2.5, 400, 1000, 900);
    plan.cost.attention_by_layer_s = vec![0.5, 1.5, 0.5];
    plan.cost.plan_layers = vec![1];
    // A uniform method: no plan layers, so no second speed-up for it.
    let mut flash = row("lm", "gemma3", "emma", "sdpa-flash", &s);
    flash.quality.perplexity = Some(20.0);
    flash.cost = cost(9.0, 5.0, 1000, 1000, 900);
    flash.cost.attention_by_layer_s = vec![0.4, 4.2, 0.4];
    let rows = vec![exact, plan, flash];
    let md = report::render(&rows, &meta());
    let t = table_after(&md, "### gemma3 · emma · tokens 4096");
    assert_eq!(t["plan:p.json"]["attn ×"], "2.80"); // 7 / 2.5, every layer
    assert_eq!(t["plan:p.json"]["attn × plan layers"], "4.00"); // 6 / 1.5, layer 1 only
    assert_eq!(t["sdpa-flash"]["attn × plan layers"], "–");
    assert_eq!(t["exact"]["attn × plan layers"], "–");
    let text = report::table_text(&rows);
    assert!(text.contains("attn × plan layers"), "{text}");
    let line = text.lines().find(|l| l.starts_with("plan:p.json")).expect("the plan's line");
    assert!(line.contains("2.80") && line.contains("4.00"), "{line}");
    // A per-layer time missing for a changed layer: no number rather than a wrong one.
    let mut short = rows.clone();
    short[0].cost.attention_by_layer_s.truncate(1);
    let t = table_after(&report::render(&short, &meta()), "### gemma3 · emma · tokens 4096");
    assert!(!t["plan:p.json"].contains_key("attn × plan layers"), "{:?}", t["plan:p.json"]);
    // Without plan rows the column is absent.
    let md = report::render(&all_rows(), &meta());
    assert!(!md.contains("| attn × plan layers"));
    assert!(!report::table_text(&all_rows()).contains("plan layers"));
}

/// A method that cannot run a model's attention (a causal-only method on the bidirectional
/// encoder) is `n/a` with its reason — in the tables, the lists under them and the summary —
/// and is not counted as a failure.
#[test]
fn inapplicable_methods_are_not_failures() {
    let mut rows = embed_rows();
    let lm = lm_rows(2048);
    let mut na = row("embed", "minilm", "lee", "gated-deltanet", &[("docs", 50)]);
    na.status = NOT_APPLICABLE.into();
    na.error = Some("mask none unsupported".into());
    let mut gd_lm = lm[1].clone();
    gd_lm.method = "gated-deltanet".into();
    let mut causal_only = na.clone();
    causal_only.method = "streaming-only".into();
    rows.extend([na, gd_lm, causal_only]);
    rows.extend(lm.into_iter().filter(|r| r.method == "exact"));

    let md = report::render(&rows, &meta());
    assert!(md.contains("| rows | 8 (5 ok, 1 failed, 2 n/a) in 2 comparisons |"), "{md}");
    let embed = table_after(&md, "### minilm · lee · docs 50");
    assert_eq!(embed["gated-deltanet"]["cos mean"], "n/a");
    assert_eq!(embed["hash-sparse"]["cos mean"], "**failed**");
    assert!(md.contains("Not applicable:\n\n- `gated-deltanet`: mask none unsupported"), "{md}");
    let summary = table_after(&md, "## Summary");
    // Ran on the lm comparison, n/a on the embed one: 0 failures in 1 comparison.
    assert_eq!(summary["gated-deltanet"]["failed"], "0 of 1 (1 n/a)");
    assert_eq!(summary["streaming-only"]["failed"], "n/a");
    assert_eq!(summary["hash-sparse"]["failed"], "1 of 1");

    let t = report::table_text(&rows);
    let line = t.lines().find(|l| l.starts_with("gated-deltanet") && l.contains("n/a"));
    assert!(line.is_some_and(|l| l.contains("n/a: mask none unsupported")), "{t}");
    assert!(!t.contains("FAILED: mask none"), "{t}");
}

#[test]
fn numbers_are_formatted_with_significant_digits() {
    assert_eq!(report::num(Some(3.428_571_428_571_4), 3), "3.43");
    assert_eq!(report::num(Some(9.9996), 4), "10.00");
    assert_eq!(report::num(Some(12_345.6), 3), "12346");
    assert_eq!(report::num(Some(0.000_012_34), 3), "1.23e-5");
    assert_eq!(report::num(Some(2.5e7), 3), "2.50e7");
    assert_eq!(report::num(Some(f64::NAN), 3), "NaN");
    assert_eq!(report::num(None, 3), "–");
    assert_eq!(report::signed(Some(7.500_000_000_000_007), 3), "+7.50");
    assert_eq!(report::signed(Some(-0.25), 3), "-0.250");
    assert_eq!(report::near_one(Some(0.999_997_7)), "0.9999977");
    assert_eq!(report::near_one(Some(1.0)), "1");
    assert_eq!(report::near_one(Some(0.93)), "0.9300");
}

#[test]
fn terminal_table_fits_100_columns() {
    let mut rows = all_rows();
    let mut long = lm_rows(2048).remove(2);
    long.method =
        "a-very-long-method-label-with-many-parameters:alpha=1,beta=2,gamma=3,delta=4".into();
    rows.push(long);
    let t = report::table_text(&rows);
    for l in t.lines() {
        assert!(l.chars().count() <= report::TEXT_WIDTH, "too wide ({}): {l}", l.chars().count());
    }
    for m in ["exact", "sdpa-flash", "streaming:sink=4,window=256", "a-very-long-method-label"] {
        assert!(t.contains(m), "{m} missing from\n{t}");
    }
    assert!(t.contains("hash-sparse") && t.contains("FAILED: out of memory"), "{t}");
    assert!(t.contains("lm · smollm2 · emma · tokens 2048, window 2048"), "{t}");
    // The streaming line carries its speed-up and Δppl.
    let line = t
        .lines()
        .find(|l| l.starts_with("streaming:sink=4,window=256") && l.contains("+7.50"))
        .unwrap_or_else(|| panic!("no lm streaming line in\n{t}"));
    assert!(line.split_whitespace().any(|c| c == "3.43"), "{line}");
}

#[test]
fn odd_inputs_give_readable_output() {
    // Empty.
    let md = report::render(&[], &meta());
    assert!(md.contains("No results"), "{md}");
    assert_eq!(report::table_text(&[]), "no results\n");
    let dir = out_dir("odd");
    assert_eq!(plot::all(&[], &dir).expect("no plots, no error"), Vec::<PathBuf>::new());

    // No exact row: no speed-ups, said so; no Pareto plot planned.
    let mut rows = lm_rows(512);
    rows.remove(0);
    let md = report::render(&rows, &meta());
    assert!(md.contains("No successful `exact` row"), "{md}");
    let t = table_after(&md, "### smollm2 · emma · tokens 512, window 512");
    assert_eq!(t["streaming:sink=4,window=256"]["attn ×"], "–");
    assert_eq!(t["streaming:sink=4,window=256"]["Δppl %"], "–");
    assert!(plot::planned(&rows).iter().all(|p| p.kind != PlotKind::Pareto));
    let key = rows[0].key();
    match plot::pareto(&rows, &key, &dir.join("x.png")) {
        Err(PlotError::NothingToPlot(_)) => {}
        other => panic!("expected NothingToPlot, got {other:?}"),
    }

    // NaN everywhere in one method; a method that is alone in its comparison.
    let mut rows = lm_rows(1024);
    rows[2].quality.perplexity = Some(f64::NAN);
    rows[2].quality.kl_to_exact = Some(f64::INFINITY);
    rows[2].cost.attention_s = Some(f64::NAN);
    for b in &mut rows[2].quality.loss_by_position {
        b.2 = f64::NAN;
    }
    let mut single = embed_rows().remove(2);
    single.dataset = "other".into();
    rows.push(single);
    let md = report::render(&rows, &meta());
    let t = table_after(&md, "### smollm2 · emma · tokens 1024, window 1024");
    assert_eq!(t["streaming:sink=4,window=256"]["ppl"], "NaN");
    assert_eq!(t["streaming:sink=4,window=256"]["KL nats"], "inf");
    assert_eq!(t["streaming:sink=4,window=256"]["attn ×"], "–");
    assert!(md.contains("### minilm · other · docs 50"));
    let _ = report::table_text(&rows);
    let files = plot::all(&rows, &dir).expect("plots of odd rows");
    for f in &files {
        check_png(f);
    }
    // exact and flash still make a Pareto plot and loss lines; the lonely method makes none.
    assert_eq!(files.len(), 2, "{files:?}");
}

#[test]
fn missing_font_is_a_typed_error() {
    let e = plot::find_font(&[PathBuf::from("/nonexistent/font.ttf")]).expect_err("no font");
    let msg = e.to_string();
    assert!(matches!(e, PlotError::NoFont { .. }));
    assert!(msg.contains("/nonexistent/font.ttf") && msg.contains("fonts-dejavu-core"), "{msg}");
}

fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("attn-eval-report").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A real PNG: signature, a decodable image of the expected size, more than a few colours.
fn check_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert!(bytes.len() > 10_000, "{}: only {} bytes", path.display(), bytes.len());
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert!(
        img.width() >= 900 && img.height() >= 650,
        "{}: {:?}",
        path.display(),
        img.dimensions()
    );
    let mut colours = std::collections::HashSet::new();
    for p in img.pixels() {
        colours.insert(p.0);
        if colours.len() > 20 {
            break;
        }
    }
    assert!(colours.len() > 20, "{}: {} colours only", path.display(), colours.len());
    // Mostly white background, but a good share of drawn pixels.
    let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
    let total = (img.width() * img.height()) as usize;
    assert!(
        white > total / 4 && white < total * 99 / 100,
        "{}: {white}/{total} white",
        path.display()
    );
}

#[test]
fn plots_are_written_as_pngs() {
    let rows = all_rows();
    let dir = out_dir("all");
    let files = plot::all(&rows, &dir).expect("plots");
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into()).collect();
    // A Pareto plot per comparison, loss by position for lm, a heat-map per non-exact
    // fidelity row with errors (flash and streaming).
    let count = |p: &str| names.iter().filter(|n| n.starts_with(p)).count();
    assert_eq!(count("pareto-"), 4, "{names:?}");
    assert_eq!(count("loss-"), 1, "{names:?}");
    assert_eq!(count("heads-"), 2, "{names:?}");
    for f in &files {
        assert!(f.starts_with(dir.join("plots")), "{}", f.display());
        check_png(f);
    }
    // The report links exactly these files.
    let md = report::render(&rows, &meta());
    std::fs::write(dir.join("report.md"), &md).expect("report.md");
    std::fs::write(dir.join("table.txt"), report::table_text(&rows)).expect("table.txt");
    for n in &names {
        assert!(md.contains(&format!("(plots/{n})")), "report does not link {n}");
    }
    // The heat-map shows a single row on its own too.
    let single = dir.join("single-heads.png");
    plot::head_heatmap(&fidelity_rows()[2], &single).expect("heat-map");
    check_png(&single);
    // A row without per-head errors has no heat-map.
    let e = plot::head_heatmap(&row("fidelity", "m", "d", "x", &[]), &dir.join("none.png"));
    assert!(matches!(e, Err(PlotError::NothingToPlot(_))), "{e:?}");
}

/// Many methods, most of them bunched near exact, speed-ups over two decades (a log axis),
/// negative Δppl, long labels; a 30 × 9 head grid. Drawn without error as valid PNGs.
#[test]
fn crowded_plots_are_drawn() {
    let s = [("tokens", 4096), ("window", 4096)];
    let mut rows = Vec::new();
    let mut exact = row("lm", "smollm2", "austen", "exact", &s);
    exact.quality.perplexity = Some(20.0);
    exact.quality.loss_by_position =
        (0..16).map(|b| (b * 256, (b + 1) * 256, 3.3 - 0.02 * b as f64)).collect();
    exact.cost = cost(20.0, 10.0, 8_390_656, 8_390_656, 1500);
    rows.push(exact);
    let names = [
        "sdpa-flash",
        "sdpa-tile",
        "sdpa-decode",
        "streaming:sink=4,window=256",
        "streaming:sink=4,window=512",
        "streaming:sink=4,window=1024",
        "topk:k=64",
        "topk:k=128",
        "topk:k=256",
        "lsh:buckets=64,rounds=2",
        "lsh:buckets=128,rounds=4",
        "block-sparse:block=64,keep=0.25,local=2,global=1",
        "quantized-kv:bits=4",
        "plan:plans/per-head-mixed-budget.json",
    ];
    for (i, n) in names.iter().enumerate() {
        let mut r = row("lm", "smollm2", "austen", n, &s);
        let speed = [1.02, 1.05, 0.97, 8.0, 5.5, 3.1, 12.0, 9.0, 6.0, 40.0, 25.0, 4.0, 1.1, 3.0][i];
        let dppl =
            [0.0001, -0.0002, 0.0, 9.0, 4.0, 1.5, 2.5, 1.2, 0.6, 35.0, 18.0, 1.4, 0.3, 0.8][i];
        r.quality.perplexity = Some(20.0 * (1.0 + dppl / 100.0));
        r.quality.loss_by_position = (0..16)
            .map(|b| (b * 256, (b + 1) * 256, 3.3 - 0.02 * b as f64 + dppl / 400.0 * b as f64))
            .collect();
        r.cost = cost(20.0 - 10.0 + 10.0 / speed, 10.0 / speed, 1_000_000, 8_390_656, 1500);
        rows.push(r);
    }
    let dir = out_dir("crowded");
    let files = plot::all(&rows, &dir).expect("plots");
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        check_png(f);
    }
    let mut big = fidelity_rows().remove(2);
    big.quality.head_error =
        (0..30).map(|l| (0..9).map(|h| 1e-4 * (1.0 + (l * h) as f64)).collect()).collect();
    let p = dir.join("heads-30x9.png");
    plot::head_heatmap(&big, &p).expect("heat-map");
    check_png(&p);
    big.quality.head_error =
        (0..64).map(|l| (0..40).map(|h| ((l + h) % 13) as f64 / 13.0).collect()).collect();
    let p = dir.join("heads-64x40.png");
    plot::head_heatmap(&big, &p).expect("heat-map");
    check_png(&p);
}
