//! `attn run` with per-token gates, β and states (`--g`, `--beta`, `--initial-state`,
//! `--final-state`): the linear family through the library's fla-layout APIs
//! ([`attn::linear::gated_delta_rule`] for `gated-deltanet` and `kda`,
//! [`attn::linear::linear_attention`] for `linear`), in fla's layout and meaning: `q, k: [B, T,
//! H, K]`, `v: [B, T, H, V]`, `g` the natural-log decay (`[B, T, H]` for gated-deltanet, `[B, T,
//! H, K]` for kda), `beta: [B, T, H]`, states `[B, H, K, V]`. With `--layout bhsd` the token and
//! head axes of q, k, v, o, g and β are swapped; states are `[B, H, K, V]` either way. What a
//! gate or β file does not give comes from the method's constant parameters, as on the registry
//! path.

use std::fmt;
use std::time::Instant;

use anyhow::{bail, Result};
use attn::dispatch::parse_spec;
use attn::linear::{gated_delta_rule, linear_attention, DeltaInputs, Form, LinearInputs};
use attn::methods::gated_deltanet::GatedDeltaNet;
use attn::methods::kda::Kda;
use attn::methods::linear::{Form as MethodForm, Linear, LinearConfig};
use attn::Mask;
use serde::Serialize;

use super::run::{swap_axes_1_2, write_outputs};
use crate::config::{RunConfig, Runtime};
use crate::data::{HostData, HostTensor};
use crate::tensor_file::{self, Array, Format, Source};

/// A file whose shape is not the one the chosen method needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The option that named the file (`g`, `beta`, `initial-state`, `k`, `v`).
    pub option: &'static str,
    /// The file (and tensor name).
    pub file: String,
    /// The shape read.
    pub got: Vec<usize>,
    /// The shape expected.
    pub want: Vec<usize>,
    /// Axis names of the expected shape, e.g. `[B, T, H]`.
    pub axes: &'static str,
    /// The method.
    pub method: String,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--{} {}: shape {:?}, expected {} = {:?} for {}",
            self.option, self.file, self.got, self.axes, self.want, self.method
        )
    }
}

impl std::error::Error for ShapeMismatch {}

/// An option (or a combination of options) the chosen method cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The option, e.g. `--g`.
    pub option: String,
    /// The method.
    pub method: String,
    /// Why.
    pub why: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cannot be used with {}: {}", self.option, self.method, self.why)
    }
}

impl std::error::Error for Unsupported {}

/// The chosen method, with its parameters set.
#[derive(Debug, Clone, Copy)]
enum Mech {
    Gdn(GatedDeltaNet),
    Kda(Kda),
    Linear(Linear),
}

/// The registry's order of forms in `LinearConfig::NAMES`.
const FORMS: [MethodForm; 3] = [MethodForm::Chunked, MethodForm::Recurrent, MethodForm::Reference];

fn configured<C: LinearConfig>(mut c: C, kv: &[(&str, &str)]) -> Result<C> {
    for &(k, v) in kv {
        c.set(k, v)?;
    }
    Ok(c)
}

/// The method `spec` names, if it is one of the linear family's (any form).
fn resolve(spec: &str) -> Result<Mech> {
    // The registry's own parse gives its errors (unknown method, unknown or bad parameter).
    attn::methods::build(spec)?;
    let (name, kv) = parse_spec(spec)?;
    let form = |names: [&str; 3]| names.iter().position(|n| *n == name).map(|i| FORMS[i]);
    if let Some(f) = form(GatedDeltaNet::NAMES) {
        return Ok(Mech::Gdn(configured(GatedDeltaNet::new(f), &kv)?));
    }
    if let Some(f) = form(Kda::NAMES) {
        return Ok(Mech::Kda(configured(Kda::new(f), &kv)?));
    }
    if let Some(f) = form(Linear::NAMES) {
        return Ok(Mech::Linear(configured(Linear::new(f), &kv)?));
    }
    bail!(Unsupported {
        option: "--g/--beta/--initial-state/--final-state".into(),
        method: name.into(),
        why: "only gated-deltanet, kda and linear (each in any form) take per-token gates or \
              states"
            .into(),
    })
}

fn library_form(f: MethodForm, chunk: usize) -> Form {
    match f {
        MethodForm::Chunked => Form::Chunked(chunk),
        MethodForm::Recurrent => Form::Recurrent,
        MethodForm::Reference => Form::Reference,
    }
}

fn to_f32(d: &HostData) -> Vec<f32> {
    match d {
        HostData::F32(x) => x.clone(),
        HostData::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
        HostData::BF16(x) => x.iter().map(|v| v.to_f32()).collect(),
    }
}

/// Reads `src` (option `--option`), checks its shape is `want` and returns its values in the fla
/// layout (`bhsd`: axes 1 and 2 swapped back).
fn read_checked(
    option: &'static str,
    src: &Source,
    want: Vec<usize>,
    axes: &'static str,
    swap: bool,
    method: &str,
) -> Result<Vec<f32>> {
    let t = tensor_file::read(src)?;
    if t.shape != want {
        bail!(ShapeMismatch {
            option,
            file: src.to_string(),
            got: t.shape,
            want,
            axes,
            method: method.into()
        });
    }
    let x = to_f32(&t.data);
    Ok(if swap {
        let w = want.get(3).copied().unwrap_or(1);
        swap_axes_1_2(&x, [want[0], want[1], want[2], w])
    } else {
        x
    })
}

/// What `--json` reports.
#[derive(Debug, Serialize)]
struct Summary {
    method: String,
    form: &'static str,
    /// `[B, T, H, K, V]`.
    shape: [usize; 5],
    g: &'static str,
    beta: &'static str,
    initial_state: bool,
    threads: usize,
    seconds: f64,
    out: String,
    final_state: Option<String>,
}

pub fn run(cfg: &RunConfig, rt: &Runtime) -> Result<()> {
    let Some(spec) = cfg.method.as_deref() else {
        bail!(
            "--g, --beta, --initial-state and --final-state need a forced --method: \
             gated-deltanet, kda or linear (or one of their -recurrent, -reference forms)"
        );
    };
    let mech = resolve(spec)?;
    let name = attn::methods::build(spec)?.name().to_string();
    let unsupported = |option: &str, why: &str| Unsupported {
        option: option.into(),
        method: name.clone(),
        why: why.into(),
    };
    if cfg.params.mask != Mask::Causal {
        bail!(unsupported(
            "a state path without --causal (or with --window)",
            "the recurrence is causal: pass --causal alone"
        ));
    }
    if cfg.params.softcap.is_some() {
        bail!(unsupported("--softcap", "the linear family has no softmax scores to cap"));
    }
    if cfg.params.q_offset.is_some_and(|o| o != 0) {
        bail!(unsupported("--q-offset", "token t reads the state after token t (offset 0)"));
    }
    if let Mech::Linear(l) = mech {
        for (given, opt) in [(cfg.state.g.is_some(), "--g"), (cfg.state.beta.is_some(), "--beta")] {
            if given {
                bail!(unsupported(
                    opt,
                    "linear attention has no gate or β (use gated-deltanet or kda)"
                ));
            }
        }
        if l.norm {
            bail!(unsupported(
                "--initial-state/--final-state",
                "with norm=true the state also carries the normaliser Σφ(k); pass \
                 linear:norm=false (fla's normalize=False)"
            ));
        }
    }

    // q, k, v: [B, T, H, D] (bshd) or [B, H, T, D] (bhsd), read back into the fla layout.
    let swap = !cfg.bshd;
    let layout = if cfg.bshd { "[B, T, H, K]" } else { "[B, H, T, K]" };
    let q = tensor_file::read(&cfg.q)?;
    let k = tensor_file::read(&cfg.k)?;
    let v = tensor_file::read(&cfg.v)?;
    let [b, n1, n2, dk]: [usize; 4] =
        q.shape.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!("q ({}) must be {layout}; got shape {:?}", cfg.q, q.shape)
        })?;
    let (t, h) = if cfg.bshd { (n1, n2) } else { (n2, n1) };
    let check = |option: &'static str, src: &Source, x: &HostTensor, axes, want: Vec<usize>| {
        if x.shape != want {
            bail!(ShapeMismatch {
                option,
                file: src.to_string(),
                got: x.shape.clone(),
                want,
                axes,
                method: name.clone()
            });
        }
        Ok(())
    };
    let (kaxes, vaxes) = if cfg.bshd {
        ("[B, T, H, K] (q's shape: H_kv = H, S_kv = S_q)", "[B, T, H, V]")
    } else {
        ("[B, H, T, K] (q's shape: H_kv = H, S_kv = S_q)", "[B, H, T, V]")
    };
    check("k", &cfg.k, &k, kaxes, q.shape.clone())?;
    let dv = v.shape.get(3).copied().unwrap_or(0);
    check("v", &cfg.v, &v, vaxes, vec![b, n1, n2, dv])?;
    let fla = |x: &HostTensor, w: usize| {
        let x = to_f32(&x.data);
        if swap {
            swap_axes_1_2(&x, [b, n1, n2, w])
        } else {
            x
        }
    };
    let (qf, kf, vf) = (fla(&q, dk), fla(&k, dk), fla(&v, dv));
    let scale = cfg.params.scale.unwrap_or(1.0 / (dk as f32).sqrt());
    let tok = |w: usize| if w == 1 { vec![b, n1, n2] } else { vec![b, n1, n2, w] };
    let (ax3, ax4) =
        if cfg.bshd { ("[B, T, H]", "[B, T, H, K]") } else { ("[B, H, T]", "[B, H, T, K]") };
    let s0 = match &cfg.state.initial_state {
        Some(src) => Some(read_checked(
            "initial-state",
            src,
            vec![b, h, dk, dv],
            "[B, H, K, V]",
            false,
            &name,
        )?),
        None => None,
    };

    let mut o = vec![0f32; b * t * h * dv];
    let mut fin = vec![0f32; b * h * dk * dv];
    let par = rt.par();
    let start = Instant::now();
    let (form, g_from, beta_from) = match mech {
        Mech::Gdn(_) | Mech::Kda(_) => {
            let (gw, axes, chunk, form, beta_c) = match mech {
                Mech::Gdn(m) => (1, ax3, m.chunk, m.form, m.beta),
                Mech::Kda(m) => (dk, ax4, m.chunk, m.form, m.beta),
                Mech::Linear(_) => unreachable!("matched above"),
            };
            let g = match &cfg.state.g {
                Some(src) => read_checked("g", src, tok(gw), axes, swap, &name)?,
                None => match mech {
                    Mech::Kda(m) => m.channel_gates(dk).repeat(b * t * h),
                    Mech::Gdn(m) => vec![m.decay.ln(); b * t * h],
                    Mech::Linear(_) => unreachable!("matched above"),
                },
            };
            let beta = match &cfg.state.beta {
                Some(src) => read_checked("beta", src, tok(1), ax3, swap, &name)?,
                None => vec![beta_c; b * t * h],
            };
            let x = DeltaInputs {
                q: &qf,
                k: &kf,
                v: &vf,
                g: &g,
                beta: &beta,
                shape: [b, t, h, dk, dv],
                scale,
                l2norm: true,
            };
            gated_delta_rule(&x, s0.as_deref(), library_form(form, chunk), par, &mut o, &mut fin)?;
            let from = |given: bool| if given { "file" } else { "constant" };
            (form, from(cfg.state.g.is_some()), from(cfg.state.beta.is_some()))
        }
        Mech::Linear(l) => {
            let x = LinearInputs {
                q: &qf,
                k: &kf,
                v: &vf,
                shape: [b, t, h, dk, dv],
                scale,
                map: l.map,
            };
            linear_attention(
                &x,
                s0.as_deref(),
                library_form(l.form, l.chunk),
                par,
                &mut o,
                &mut fin,
            )?;
            (l.form, "none", "none")
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "attn run: {name} (forced; per-token path: g {g_from}, beta {beta_from}, initial state {}) \
         on B={b} T={t} H={h} K={dk} V={dv}",
        if s0.is_some() { "from file" } else { "zeros" }
    );
    eprintln!("  {:.3} ms on {} threads", seconds * 1e3, rt.threads_used());

    // o back in the input layout; every row reads its own token, so the LSE is 0 (the registry
    // path's convention for the linear family).
    let (o, o_shape) = if swap {
        (swap_axes_1_2(&o, [b, t, h, dv]), vec![b, h, t, dv])
    } else {
        (o, vec![b, t, h, dv])
    };
    let lse = vec![0f32; b * t * h];
    let lse_shape = if swap { vec![b, h, t] } else { vec![b, t, h] };
    write_outputs(cfg, Array { name: "o", shape: o_shape, data: &o }, || Array {
        name: "lse",
        shape: lse_shape.clone(),
        data: &lse,
    })?;
    if let Some((path, format)) = &cfg.state.final_state {
        let a = Array { name: "final_state", shape: vec![b, h, dk, dv], data: &fin };
        match format {
            Format::Npy => tensor_file::write_npy(path, &a)?,
            Format::Safetensors => tensor_file::write_safetensors(path, &[a])?,
        }
    }
    rt.write_json(&Summary {
        method: name.clone(),
        form: match form {
            MethodForm::Chunked => "chunked",
            MethodForm::Recurrent => "recurrent",
            MethodForm::Reference => "reference",
        },
        shape: [b, t, h, dk, dv],
        g: g_from,
        beta: beta_from,
        initial_state: s0.is_some(),
        threads: rt.threads_used(),
        seconds,
        out: cfg.out.display().to_string(),
        final_state: cfg.state.final_state.as_ref().map(|(p, _)| p.display().to_string()),
    })
}
