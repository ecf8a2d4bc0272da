//! `attn run`: attention over arrays read from files, output written to a file.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use attn::{Inputs, OutputMut, Prefs};
use serde::Serialize;

use crate::config::{LseDest, RunConfig, Runtime};
use crate::data::HostTensor;
use crate::tensor_file::{self, Array, Format, Source};

/// What `--json` reports about a run.
#[derive(Debug, Serialize)]
struct Summary {
    method: &'static str,
    forced: bool,
    /// Every method tried before the one that ran, with its reasons.
    rejected: Vec<Rejection>,
    shape: String,
    dtype: &'static str,
    threads: usize,
    seconds: f64,
    out: String,
}

#[derive(Debug, Serialize)]
struct Rejection {
    method: &'static str,
    reasons: Vec<String>,
}

pub fn run(cfg: &RunConfig, rt: &Runtime) -> Result<()> {
    if cfg.state.any() {
        if cfg.warmup > 0 {
            bail!("--warmup is not supported with per-token gate or state files");
        }
        return super::run_state::run(cfg, rt);
    }
    let q = tensor_file::read(&cfg.q)?;
    let k = tensor_file::read(&cfg.k)?;
    let v = tensor_file::read(&cfg.v)?;
    let layout = if cfg.bshd { "[B, S, H, D]" } else { "[B, H, S, D]" };
    let view = |t, role, src| view_input(t, role, src, cfg.bshd);
    let inputs =
        Inputs { q: view(&q, "q", &cfg.q)?, k: view(&k, "k", &cfg.k)?, v: view(&v, "v", &cfg.v)? };
    if q.data.dtype() != k.data.dtype() || q.data.dtype() != v.data.dtype() {
        bail!(
            "q, k and v must share one element type; q ({}) is {}, k ({}) is {}, v ({}) is {}",
            cfg.q,
            q.data.dtype(),
            cfg.k,
            k.data.dtype(),
            cfg.v,
            v.data.dtype()
        );
    }
    let prefs = Prefs {
        method: cfg.method.clone(),
        par: rt.par(),
        check_finite: cfg.check_finite,
        ..Prefs::default()
    };
    let prepared = attn::prepare(&inputs, &cfg.params, &prefs).with_context(|| {
        format!(
            "attention over q {} {:?}, k {} {:?}, v {} {:?} (layout {layout})",
            cfg.q, q.shape, cfg.k, k.shape, cfg.v, v.shape
        )
    })?;
    let p = prepared.problem;
    let sel = &prepared.selection;
    let how = if cfg.method.is_some() { "forced" } else { "auto" };
    eprintln!("attn run: {} ({how}) on {} {}", sel.chosen.name(), p.label(), p.dtype);
    for (name, reasons) in &sel.rejected {
        let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        eprintln!("  {name} rejected: {}", why.join("; "));
    }

    let mut o = vec![0f32; p.out_len()];
    let mut lse = vec![0f32; p.lse_len()];
    for _ in 0..cfg.warmup {
        prepared.run(&inputs, rt.par(), OutputMut { o: &mut o, lse: &mut lse })?;
    }
    let t = Instant::now();
    prepared.run(&inputs, rt.par(), OutputMut { o: &mut o, lse: &mut lse })?;
    let seconds = t.elapsed().as_secs_f64();
    eprintln!("  {:.3} ms on {} threads", seconds * 1e3, rt.threads_used());

    // o: [B, H, S_q, D_v], lse: [B, H, S_q]; written back in the input layout.
    let (o, lse, o_shape, lse_shape) = if cfg.bshd {
        (
            swap_axes_1_2(&o, [p.b, p.h, p.s_q, p.d_v]),
            swap_axes_1_2(&lse, [p.b, p.h, p.s_q, 1]),
            vec![p.b, p.s_q, p.h, p.d_v],
            vec![p.b, p.s_q, p.h],
        )
    } else {
        (o, lse, vec![p.b, p.h, p.s_q, p.d_v], vec![p.b, p.h, p.s_q])
    };
    write_outputs(cfg, Array { name: "o", shape: o_shape, data: &o }, || Array {
        name: "lse",
        shape: lse_shape.clone(),
        data: &lse,
    })?;

    rt.write_json(&Summary {
        method: sel.chosen.name(),
        forced: cfg.method.is_some(),
        rejected: sel
            .rejected
            .iter()
            .map(|(n, r)| Rejection {
                method: n,
                reasons: r.iter().map(|x| x.to_string()).collect(),
            })
            .collect(),
        shape: p.label(),
        dtype: p.dtype.name(),
        threads: rt.threads_used(),
        seconds,
        out: cfg.out.display().to_string(),
    })
}

/// Writes `o` to `--out` and the LSE where `--lse` says.
pub(crate) fn write_outputs<'a>(
    cfg: &RunConfig,
    o: Array<'a>,
    lse: impl Fn() -> Array<'a>,
) -> Result<()> {
    match (cfg.out_format, &cfg.lse) {
        (Format::Safetensors, LseDest::WithOutput) => {
            tensor_file::write_safetensors(&cfg.out, &[o, lse()])?
        }
        (Format::Safetensors, _) => tensor_file::write_safetensors(&cfg.out, &[o])?,
        (Format::Npy, _) => tensor_file::write_npy(&cfg.out, &o)?,
    }
    if let LseDest::File(path, format) = &cfg.lse {
        match format {
            Format::Npy => tensor_file::write_npy(path, &lse())?,
            Format::Safetensors => tensor_file::write_safetensors(path, &[lse()])?,
        }
    }
    Ok(())
}

/// A `[B, H, S, D]` view of an input read from `src`.
fn view_input<'a>(
    t: &'a HostTensor,
    role: &str,
    src: &Source,
    bshd: bool,
) -> Result<attn::TensorRef<'a>> {
    let layout = if bshd { "[B, S, H, D]" } else { "[B, H, S, D]" };
    t.view_as(bshd).with_context(|| format!("{role} ({src}) must be {layout}"))
}

/// `[A, X, Y, Z]` row-major → `[A, Y, X, Z]` row-major.
pub(crate) fn swap_axes_1_2(x: &[f32], [a, n1, n2, z]: [usize; 4]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for i in 0..a {
        for j in 0..n2 {
            for k in 0..n1 {
                let o = ((i * n1 + k) * n2 + j) * z;
                out.extend_from_slice(&x[o..o + z]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn swap_axes() {
        // [1, 2, 3, 1]: rows (x, y) → (y, x).
        let x = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0];
        assert_eq!(super::swap_axes_1_2(&x, [1, 2, 3, 1]), vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
    }
}
