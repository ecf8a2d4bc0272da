//! `attn bench`: registry-driven timing of methods over a grid of shapes.
//!
//! Per case: inputs are generated first (seeded, uniform in [-1, 1); or real recorded heads tiled
//! to the case's length with `--qkv`), then the RSS baseline is
//! taken, then the first call allocates the output buffers and runs once while peak RSS and peak
//! heap are recorded; the timed calls reuse those buffers through [`attn::Prepared::run`], so
//! a repetition measures the kernel, not the allocator. The library's scratch pool is emptied
//! before the first call, so each case's memory is measured cold; per-thread buffers that live
//! as long as the thread (faer's GEMM packing space) are set up before the first case.
//!
//! With `--interleave` the methods of one shape and mask share one set of inputs: each makes its
//! first call (memory) and warm-ups in turn, then the timed calls go in rounds, one call of each
//! method per round, so that a slow drift of the machine falls on every method alike.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use attn::primitives::simd::Level;
use attn::{memory, Inputs, OutputMut, Params, Prefs};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::alloc;
use crate::config::{BenchCase, BenchConfig, Runtime, Timing, MIN_REPS};
use crate::data::HostTensor;

/// One measured case, as written to `--json`.
#[derive(Debug, Serialize)]
struct Record {
    /// The method spec with every parameter (`streaming:sink=4,window=512`).
    method: String,
    shape: String,
    b: usize,
    h: usize,
    h_kv: usize,
    s_q: usize,
    s_kv: usize,
    d: usize,
    d_v: usize,
    causal: bool,
    dtype: &'static str,
    threads: usize,
    simd: &'static str,
    reps: usize,
    median_s: f64,
    best_s: f64,
    /// Every timed call's seconds in the order the calls ran (with `--interleave`, one per
    /// round), so the spread between calls can be read, not only the median and the best.
    times_s: Vec<f64>,
    /// FLOPs counted per call (halved for causal).
    flops: f64,
    gflops_median: f64,
    gflops_best: f64,
    /// Peak RSS during the first call minus RSS before it; `null` where the OS cannot say.
    peak_extra_bytes: Option<usize>,
    /// Peak live heap bytes during the first call minus those before it.
    peak_alloc_bytes: usize,
    /// Scratch the method declared for the call.
    scratch_bytes: usize,
    /// (query, key) pairs the method scored in one call (`Stats::computed_pairs`).
    computed_pairs: u64,
    /// With `--recall`, for approximate methods: mean over rows of exp(lse − lse_exact), the
    /// exact attention mass on the keys the method attends to.
    mass_recall_mean: Option<f64>,
    /// With `--recall`: the smallest row's mass.
    mass_recall_min: Option<f64>,
    /// With `--recall`, for approximate methods: relative Frobenius error of the output to the
    /// exact one, `‖o − o_exact‖ / ‖o_exact‖`.
    rel_error: Option<f64>,
    /// With `--recall`, for approximate methods on real inputs tiled past their recorded length
    /// `S_rec` under the causal mask: the mean, over the rows past `S_rec`, of the exact
    /// attention mass at distances `≥ S_rec`. The recording holds no such distance: this much of
    /// the tiled attention is what tiling made, not what the model did when it was recorded.
    mass_beyond_recorded: Option<f64>,
    /// `computed_pairs` over the pairs the mask allows (1 for exact methods; below 1 for sparse
    /// methods, possibly above where block expansion and estimation outweigh the sparsity).
    density: f64,
    /// `random (seed N)` or the real records tiled into the case (`--qkv`).
    inputs: String,
}

pub fn run(cfg: &BenchConfig, rt: &Runtime) -> Result<()> {
    for s in &cfg.skipped {
        eprintln!("skip {s}");
    }
    // Per-thread lazy buffers (faer's GEMM packing space) are set up now, once, so the first
    // case's heap counts only what its own call allocates.
    attn::primitives::gemm::prime_threads();
    let table = !rt.json_to_stdout();
    let pb = if table && std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(cfg.cases.len() as u64);
        pb.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} [{elapsed}] {msg}")
                .expect("static template"),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let timing = match cfg.timing {
        Timing::Reps(n) => format!("{n} timed call{}", if n == 1 { "" } else { "s" }),
        Timing::MinTime(t) => format!("≥ {:.2} s and ≥ {MIN_REPS} calls", t.as_secs_f64()),
    };
    if table {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "# simd {} · {} threads · {} · {} warm-up · {timing} per case",
            Level::current().name(),
            rt.threads_used(),
            cfg.dtype,
            cfg.warmup
        )?;
        if let Some(real) = &cfg.real {
            writeln!(out, "# {}", real.describe())?;
        }
        writeln!(
            out,
            "{:<14} {:<30} {:<6} {:>4} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8}",
            "method",
            "shape",
            "mask",
            "reps",
            "median ms",
            "best ms",
            "GF/s med",
            "GF/s best",
            "RSS+ MiB",
            "heap MiB",
            "density",
            "recall",
            "error"
        )?;
    }

    let mut records = Vec::new();
    let mut noted: Vec<String> = Vec::new();
    let mut failures = 0;
    // With --interleave, the cases of one shape and mask are timed together, in rounds.
    let mut groups: Vec<Vec<&BenchCase>> = Vec::new();
    for case in &cfg.cases {
        match groups
            .iter_mut()
            .find(|g| cfg.interleave && g[0].shape == case.shape && g[0].causal == case.causal)
        {
            Some(g) => g.push(case),
            None => groups.push(vec![case]),
        }
    }
    for group in groups {
        let head = group[0];
        let mask = if head.causal { "causal" } else { "none" };
        let names: Vec<String> = group.iter().map(|c| c.method.spec()).collect();
        pb.set_message(format!("{} {} {mask}", names.join(", "), head.shape.label()));
        let results = if group.len() == 1 {
            vec![measure(head, cfg, rt)]
        } else {
            measure_interleaved(&group, cfg, rt)
        };
        for (case, result) in group.iter().zip(results) {
            match result {
                Ok(r) => {
                    if table {
                        pb.suspend(|| print_row(&r))?;
                        // Once per shape: how much of the tiled attention has no counterpart in
                        // the recording.
                        if let (Some(x), Some(real)) = (r.mass_beyond_recorded, &cfg.real) {
                            if !noted.contains(&r.shape) {
                                let s = real.recorded_rows();
                                pb.suspend(|| {
                                    println!(
                                        "# {}: rows past the recorded {s} put {:.1} % of their exact \
                                         attention mass at distances ≥ {s} (none in the recording)",
                                        r.shape,
                                        100.0 * x
                                    )
                                });
                                noted.push(r.shape.clone());
                            }
                        }
                    }
                    records.push(r);
                }
                Err(e) => {
                    pb.suspend(|| {
                        eprintln!(
                            "error: {} on {} {mask}: {e:#}",
                            case.method.spec(),
                            case.shape.label()
                        )
                    });
                    failures += 1;
                }
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    rt.write_json(&records)?;
    if failures > 0 {
        bail!("{failures} of {} cases failed", cfg.cases.len());
    }
    Ok(())
}

fn print_row(r: &Record) -> Result<()> {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let rss = r.peak_extra_bytes.map_or("n/a".to_string(), |b| format!("{:.1}", mib(b)));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<14} {:<30} {:<6} {:>4} {:>11.3} {:>11.3} {:>9.1} {:>9.1} {:>9} {:>9.1} {:>8.4} {:>7} {:>8}",
        r.method,
        r.shape,
        if r.causal { "causal" } else { "none" },
        r.reps,
        r.median_s * 1e3,
        r.best_s * 1e3,
        r.gflops_median,
        r.gflops_best,
        rss,
        mib(r.peak_alloc_bytes),
        r.density,
        r.mass_recall_mean.map_or("-".to_string(), |x| format!("{x:.4}")),
        r.rel_error.map_or("-".to_string(), |x| format!("{x:.4}"))
    )?;
    Ok(())
}

fn measure(case: &BenchCase, cfg: &BenchConfig, rt: &Runtime) -> Result<Record> {
    let (q, k, v) = case_inputs(case, cfg, rt)?;
    let inputs = Inputs { q: q.view()?, k: k.view()?, v: v.view()? };
    let mut live = start(case, &inputs, cfg, rt)?;
    match cfg.timing {
        Timing::Reps(n) => {
            while live.times.len() < n {
                live.call(&inputs, rt)?;
            }
        }
        Timing::MinTime(min) => {
            while live.times.len() < MIN_REPS || live.times.iter().sum::<Duration>() < min {
                live.call(&inputs, rt)?;
            }
        }
    }
    finish(case, live, &inputs, cfg, rt)
}

/// The cases of one shape and mask (`--interleave`): one set of inputs; each method's first call
/// (memory) and warm-ups in turn; then rounds of one timed call per method. A method that
/// fails drops out of the rounds with its error.
fn measure_interleaved(
    cases: &[&BenchCase],
    cfg: &BenchConfig,
    rt: &Runtime,
) -> Vec<Result<Record>> {
    interleaved(cases, cfg, rt).unwrap_or_else(|e| {
        let msg = format!("{e:#}");
        cases.iter().map(|_| Err(anyhow::anyhow!("{msg}"))).collect()
    })
}

fn interleaved(
    cases: &[&BenchCase],
    cfg: &BenchConfig,
    rt: &Runtime,
) -> Result<Vec<Result<Record>>> {
    let (q, k, v) = case_inputs(cases[0], cfg, rt)?;
    let inputs = Inputs { q: q.view()?, k: k.view()?, v: v.view()? };
    let mut lives: Vec<Result<Live>> =
        cases.iter().map(|case| start(case, &inputs, cfg, rt)).collect();
    let rounds = match cfg.timing {
        Timing::Reps(n) => n,
        Timing::MinTime(_) => MIN_REPS,
    };
    for _ in 0..rounds {
        for live in lives.iter_mut() {
            let failed = match live {
                Ok(l) if l.times.len() < rounds => l.call(&inputs, rt).err(),
                _ => None,
            };
            if let Some(e) = failed {
                *live = Err(e);
            }
        }
    }
    Ok(cases.iter().zip(lives).map(|(case, live)| finish(case, live?, &inputs, cfg, rt)).collect())
}

/// Seeded random inputs of the case's shape, or the real records tiled to it (`--qkv`). Every
/// method of a shape gets the same values (streams 1, 2, 3).
fn case_inputs(
    case: &BenchCase,
    cfg: &BenchConfig,
    rt: &Runtime,
) -> Result<(HostTensor, HostTensor, HostTensor)> {
    let shape = case.shape;
    shape.ensure_inputs_fit(cfg.dtype)?;
    let [qs, ks, vs] = shape.qkv_shapes();
    Ok(match &cfg.real {
        None => (
            HostTensor::random(qs, cfg.dtype, rt.seed, 1),
            HostTensor::random(ks, cfg.dtype, rt.seed, 2),
            HostTensor::random(vs, cfg.dtype, rt.seed, 3),
        ),
        Some(real) => {
            anyhow::ensure!(
                shape.b == 1 && shape.h == shape.h_kv && shape.s_q == shape.s_kv,
                "--qkv needs shapes with b1, H = H_kv and S_q = S_kv (got {})",
                shape.label()
            );
            let [q, k, v] = real.tiled(shape.h, shape.s_q, shape.d, shape.d_v)?;
            (
                HostTensor::from_f32(q, qs, cfg.dtype),
                HostTensor::from_f32(k, ks, cfg.dtype),
                HostTensor::from_f32(v, vs, cfg.dtype),
            )
        }
    })
}

/// A prepared method with its output buffers, its first call's measurements and its timed calls
/// so far.
struct Live {
    prepared: attn::Prepared,
    /// The call's parameters (the mask of the case), for the exact call of `--recall`.
    params: Params,
    o: Vec<f32>,
    lse: Vec<f32>,
    stats: attn::Stats,
    peak_extra_bytes: Option<usize>,
    peak_alloc_bytes: usize,
    times: Vec<Duration>,
}

impl Live {
    /// One timed call into the live buffers.
    fn call(&mut self, inputs: &Inputs, rt: &Runtime) -> Result<()> {
        let t = Instant::now();
        self.prepared.run(inputs, rt.par(), OutputMut { o: &mut self.o, lse: &mut self.lse })?;
        self.times.push(t.elapsed());
        Ok(())
    }
}

/// Prepares the case's method, makes the first call (which measures memory; it is the first
/// timed call when `--warmup 0`) and the remaining warm-up calls.
fn start(case: &BenchCase, inputs: &Inputs, cfg: &BenchConfig, rt: &Runtime) -> Result<Live> {
    let params = if case.causal { Params::causal() } else { Params::default() };
    let par = rt.par();
    let prefs = Prefs { method: Some(case.method.spec()), par, ..Prefs::default() };
    let prepared = attn::prepare(inputs, &params, &prefs)?;
    let p = prepared.problem;

    // Memory of the first call: everything it allocates (output, LSE, scratch) counts. The
    // library keeps scratch between calls; emptying its pool first makes every case start cold
    // instead of inheriting buffers from the one before.
    memory::release_scratch();
    let rss_ok = memory::reset_peak_rss();
    let rss_before = memory::rss_bytes();
    let heap_before = alloc::reset_peak();
    let mut o = vec![0f32; p.out_len()];
    let mut lse = vec![0f32; p.lse_len()];
    let t = Instant::now();
    let stats = prepared.run(inputs, par, OutputMut { o: &mut o, lse: &mut lse })?;
    let first = t.elapsed();
    let peak_alloc_bytes = alloc::peak_bytes().saturating_sub(heap_before);
    let peak_extra_bytes = match (rss_ok, rss_before, memory::peak_rss_bytes()) {
        (true, Some(before), Some(peak)) => Some(peak.saturating_sub(before)),
        _ => None,
    };
    ensure_finite(&o).context("the first call wrote non-finite outputs")?;
    let mut live = Live {
        prepared,
        params,
        o,
        lse,
        stats,
        peak_extra_bytes,
        peak_alloc_bytes,
        times: Vec::new(),
    };
    if cfg.warmup == 0 {
        live.times.push(first);
    }
    for _ in 1..cfg.warmup {
        live.call(inputs, rt)?;
        live.times.pop();
    }
    Ok(live)
}

/// The record of a case from its timed calls (and, with `--recall`, one untimed exact call).
fn finish(
    case: &BenchCase,
    live: Live,
    inputs: &Inputs,
    cfg: &BenchConfig,
    rt: &Runtime,
) -> Result<Record> {
    let Live { prepared, params, o, lse, stats, peak_extra_bytes, peak_alloc_bytes, mut times } =
        live;
    let p = prepared.problem;
    let par = rt.par();
    let times_s: Vec<f64> = times.iter().map(|t| t.as_secs_f64()).collect();
    times.sort();
    let median = median(&times);
    let best = times[0].as_secs_f64();
    let flops = if case.causal { p.flops() / 2.0 } else { p.flops() };
    let allowed = attn::Stats::exact(&prepared.params).computed_pairs;
    let recall = if cfg.recall && case.method.exactness() == attn::Exactness::Approximate {
        let exact = Prefs { method: Some("sdpa-flash".into()), par, ..Prefs::default() };
        let want = attn::prepare(inputs, &params, &exact)?;
        let mut lse_exact = vec![0f32; p.lse_len()];
        let mut o_exact = vec![0f32; o.len()];
        want.run(inputs, par, OutputMut { o: &mut o_exact, lse: &mut lse_exact })?;
        let beyond = match &cfg.real {
            Some(real) if case.causal && p.s_q > real.recorded_rows() => {
                // The same exact attention limited to distances below S_rec.
                let s_rec = real.recorded_rows();
                let near = Params::default().with_mask(attn::Mask::sliding_window(s_rec));
                let (mut o_near, mut lse_near) = (vec![0f32; o.len()], vec![0f32; p.lse_len()]);
                attn::prepare(inputs, &near, &exact)?.run(
                    inputs,
                    par,
                    OutputMut { o: &mut o_near, lse: &mut lse_near },
                )?;
                Some(mass_beyond(&lse_near, &lse_exact, p.s_q, s_rec))
            }
            _ => None,
        };
        Some((mass_recall(&lse, &lse_exact), rel_error(&o, &o_exact), beyond))
    } else {
        None
    };
    Ok(Record {
        method: case.method.spec(),
        shape: case.shape.label(),
        b: p.b,
        h: p.h,
        h_kv: p.h_kv,
        s_q: p.s_q,
        s_kv: p.s_kv,
        d: p.d,
        d_v: p.d_v,
        causal: case.causal,
        dtype: p.dtype.name(),
        threads: rt.threads_used(),
        simd: Level::current().name(),
        reps: times.len(),
        median_s: median,
        best_s: best,
        times_s,
        flops,
        gflops_median: flops / median / 1e9,
        gflops_best: flops / best / 1e9,
        peak_extra_bytes,
        peak_alloc_bytes,
        scratch_bytes: prepared.scratch_bytes,
        computed_pairs: stats.computed_pairs,
        mass_recall_mean: recall.map(|r| r.0 .0),
        mass_recall_min: recall.map(|r| r.0 .1),
        rel_error: recall.map(|r| r.1),
        mass_beyond_recorded: recall.and_then(|r| r.2),
        density: stats.computed_pairs as f64 / allowed.max(1) as f64,
        inputs: cfg
            .real
            .as_ref()
            .map_or_else(|| format!("random (seed {})", rt.seed), |r| r.describe()),
    })
}

/// `(mean, min)` over rows of `exp(lse − lse_exact)`, skipping rows the mask leaves empty.
fn mass_recall(lse: &[f32], lse_exact: &[f32]) -> (f64, f64) {
    let (mut sum, mut min, mut n) = (0.0f64, f64::INFINITY, 0usize);
    for (&a, &e) in lse.iter().zip(lse_exact) {
        if e.is_finite() {
            let r = if a.is_finite() { (a as f64 - e as f64).exp() } else { 0.0 };
            sum += r;
            min = min.min(r);
            n += 1;
        }
    }
    (sum / n.max(1) as f64, if n == 0 { f64::NAN } else { min })
}

/// Mean over rows `i ≥ s_rec` of every `[·, s_q]` block of `1 − exp(lse_near − lse)`: the
/// attention mass outside the nearest `s_rec` keys (rows the mask leaves empty are skipped).
fn mass_beyond(lse_near: &[f32], lse: &[f32], s_q: usize, s_rec: usize) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (i, (&a, &e)) in lse_near.iter().zip(lse).enumerate() {
        if i % s_q >= s_rec && e.is_finite() {
            let near = if a.is_finite() { (a as f64 - e as f64).exp().min(1.0) } else { 0.0 };
            sum += 1.0 - near;
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

/// `‖a − b‖ / ‖b‖` (Frobenius), accumulated in f64.
fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Median of sorted durations, in seconds.
fn median(sorted: &[Duration]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2].as_secs_f64()
    } else {
        (sorted[n / 2 - 1].as_secs_f64() + sorted[n / 2].as_secs_f64()) / 2.0
    }
}

/// A benchmark of a kernel that writes NaN would time a bug; fail the case instead.
fn ensure_finite(o: &[f32]) -> Result<()> {
    match o.iter().position(|x| !x.is_finite()) {
        Some(i) => bail!("o[{i}] = {}", o[i]),
        None => Ok(()),
    }
}
