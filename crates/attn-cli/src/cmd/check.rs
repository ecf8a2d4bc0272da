//! `attn check`: each method against `sdpa-reference` on seeded random inputs.
//!
//! This is a quick conformance probe from the command line; the full suite (every registered
//! implementation over the shared case grid, NaN-poisoned outputs) is `cargo test`.

use std::io::Write;

use anyhow::{bail, Result};
use attn::{attend, Exactness, Mask, Output, Params, Prefs};
use serde::Serialize;

use crate::args::MaskArg;
use crate::config::{CheckConfig, Runtime};
use crate::data::HostTensor;
use crate::shape::Shape;

const REFERENCE: &str = "sdpa-reference";

/// One method on one shape and mask.
#[derive(Debug, Serialize)]
struct Report {
    method: String,
    shape: String,
    mask: &'static str,
    dtype: &'static str,
    exact: bool,
    /// Largest |o − o_ref|.
    max_abs: f64,
    /// ‖o − o_ref‖₂ / ‖o_ref‖₂.
    rel_rms: f64,
    /// `[b, h, s, d]` of the largest error.
    worst: [usize; 4],
    got: f32,
    want: f32,
    /// Largest |lse − lse_ref| (equal infinities count as 0).
    lse_max_abs: f64,
    /// `null` for approximate methods (reported, not judged).
    pass: Option<bool>,
}

fn mask_name(m: MaskArg) -> &'static str {
    match m {
        MaskArg::None => "none",
        MaskArg::Causal => "causal",
        MaskArg::Window => "window",
        MaskArg::Padding => "padding",
        MaskArg::Prefix => "prefix",
        MaskArg::Block => "block",
        MaskArg::All => "all",
    }
}

/// The mask `m` stands for on shape `s` (see the `--mask` help).
fn mask_for(m: MaskArg, s: &Shape) -> Mask {
    match m {
        MaskArg::None | MaskArg::All => Mask::None,
        MaskArg::Causal => Mask::Causal,
        MaskArg::Window => Mask::sliding_window(17),
        MaskArg::Padding => Mask::KeyPadding {
            lengths: (0..s.b).map(|i| s.s_kv * (s.b + 1 - i) / (s.b + 2)).collect(),
        },
        MaskArg::Prefix => Mask::PrefixLm { prefix: s.s_kv / 3 },
        MaskArg::Block => Mask::BlockDiagonal {
            q_lens: vec![s.s_q / 2, s.s_q - s.s_q / 2],
            kv_lens: vec![s.s_kv / 2, s.s_kv - s.s_kv / 2],
            causal: true,
        },
    }
}

pub fn run(cfg: &CheckConfig, rt: &Runtime) -> Result<()> {
    let table = !rt.json_to_stdout();
    let mut out = std::io::stdout().lock();
    if table {
        writeln!(
            out,
            "{:<14} {:<30} {:<8} {:>10} {:>10} {:>18} {:>10}  result",
            "method", "shape", "mask", "max-abs", "rel-rms", "worst [b,h,s,d]", "lse err"
        )?;
    }
    let mut reports = Vec::new();
    let (mut failed, mut skipped) = (0, 0);
    for shape in &cfg.shapes {
        shape.ensure_inputs_fit(cfg.dtype)?;
        let [qs, ks, vs] = shape.qkv_shapes();
        let q = HostTensor::random(qs, cfg.dtype, rt.seed, 1);
        let k = HostTensor::random(ks, cfg.dtype, rt.seed, 2);
        let v = HostTensor::random(vs, cfg.dtype, rt.seed, 3);
        let (q, k, v) = (q.view()?, k.view()?, v.view()?);
        let p = shape.problem(cfg.dtype);
        for &m in &cfg.masks {
            let params = Params::default().with_mask(mask_for(m, shape));
            let mut want: Option<Output> = None;
            for method in &cfg.methods {
                let reasons = method.unsupported(&p, &params);
                if !reasons.is_empty() {
                    skipped += 1;
                    if table {
                        let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                        writeln!(
                            out,
                            "{:<14} {:<30} {:<8} skipped: {}",
                            method.name(),
                            shape.label(),
                            mask_name(m),
                            why.join("; ")
                        )?;
                    }
                    continue;
                }
                let forced = |name: &str| Prefs {
                    method: Some(name.to_string()),
                    par: rt.par(),
                    ..Prefs::default()
                };
                if want.is_none() {
                    want = Some(attend(q, k, v, &params, &forced(REFERENCE))?);
                }
                let want = want.as_ref().expect("computed above");
                let got = attend(q, k, v, &params, &forced(&method.spec()))?;
                let exact = method.exactness() == Exactness::Exact;
                let r = compare(&got, want);
                let pass = exact.then_some(r.max_abs <= cfg.tol && r.lse_max_abs <= cfg.tol);
                if pass == Some(false) {
                    failed += 1;
                }
                let report = Report {
                    method: method.spec(),
                    shape: shape.label(),
                    mask: mask_name(m),
                    dtype: cfg.dtype.name(),
                    exact,
                    max_abs: r.max_abs,
                    rel_rms: r.rel_rms,
                    worst: r.worst,
                    got: r.got,
                    want: r.want,
                    lse_max_abs: r.lse_max_abs,
                    pass,
                };
                if table {
                    let result = match pass {
                        Some(true) => "ok".to_string(),
                        Some(false) => format!(
                            "FAIL (tol {:.0e}; got {} want {})",
                            cfg.tol, report.got, report.want
                        ),
                        None => "approximate: reported, not judged".to_string(),
                    };
                    writeln!(
                        out,
                        "{:<14} {:<30} {:<8} {:>10.2e} {:>10.2e} {:>18} {:>10.2e}  {result}",
                        report.method,
                        report.shape,
                        report.mask,
                        report.max_abs,
                        report.rel_rms,
                        format!("{:?}", report.worst),
                        report.lse_max_abs
                    )?;
                }
                reports.push(report);
            }
        }
    }
    drop(out);
    rt.write_json(&reports)?;
    if reports.is_empty() {
        bail!("no case ran: every method rejected every shape and mask ({skipped} skipped)");
    }
    if failed > 0 {
        bail!("{failed} of {} cases exceed the tolerance {:e}", reports.len(), cfg.tol);
    }
    if table {
        eprintln!(
            "{} cases within {:e} of {REFERENCE} ({skipped} skipped)",
            reports.len(),
            cfg.tol
        );
    }
    Ok(())
}

/// Error statistics of `got` against `want`.
struct Diff {
    max_abs: f64,
    rel_rms: f64,
    worst: [usize; 4],
    got: f32,
    want: f32,
    lse_max_abs: f64,
}

fn abs_err(a: f32, b: f32) -> f64 {
    if a == b {
        0.0 // equal infinities (fully masked rows' LSE) included
    } else {
        let d = (f64::from(a) - f64::from(b)).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            d
        }
    }
}

fn compare(got: &Output, want: &Output) -> Diff {
    let p = want.problem;
    let (mut max_abs, mut worst_i, mut num, mut den) = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for (i, (&a, &b)) in got.o.iter().zip(&want.o).enumerate() {
        let d = abs_err(a, b);
        if d > max_abs || (i == 0 && d.is_nan()) {
            max_abs = d;
            worst_i = i;
        }
        num += d * d;
        den += f64::from(b) * f64::from(b);
    }
    let rel_rms = if den > 0.0 {
        (num / den).sqrt()
    } else if num == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    // flat index into [B, H, S_q, D_v]
    let (dv, s, h) = (p.d_v, p.s_q, p.h);
    let worst = [worst_i / (dv * s * h), worst_i / (dv * s) % h, worst_i / dv % s, worst_i % dv];
    let lse_max_abs =
        got.lse.iter().zip(&want.lse).map(|(&a, &b)| abs_err(a, b)).fold(0.0, f64::max);
    Diff { max_abs, rel_rms, worst, got: got.o[worst_i], want: want.o[worst_i], lse_max_abs }
}
