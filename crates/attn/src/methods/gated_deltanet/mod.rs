//! `gated-deltanet`: the gated delta rule over [`crate::linear::delta`], in three registered
//! forms (`gated-deltanet` chunked/UT, `gated-deltanet-recurrent`, `gated-deltanet-reference`).
//! The registry interface carries only q, k, v: the decay and β are constant per token and come
//! from the method parameters. The typed API with per-token gates is
//! [`crate::linear::gated_delta_rule`] (from the command line: `attn run --g --beta
//! --initial-state --final-state`). See README.md.

use crate::dispatch::{bad_param, parse_param, Inputs, Method, OutputMut, ParamInfo, Stats};
use crate::error::Result;
use crate::linear::delta::{self, Config, Head};
use crate::mask::MaskKind;
use crate::methods::linear::{positive, run_heads, Form, LinearConfig};
use crate::par::Par;
use crate::params::Resolved;
use crate::problem::Problem;

/// Gated DeltaNet with constant gates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatedDeltaNet {
    /// Per-token decay `α ∈ (0, 1]` (`g = ln α`).
    pub decay: f32,
    /// Per-token write strength `β ∈ [0, 1]`.
    pub beta: f32,
    /// Chunk length of the chunked form.
    pub chunk: usize,
    /// Which form runs.
    pub form: Form,
}

impl GatedDeltaNet {
    /// `decay = 0.99`, `beta = 0.5`, chunks of 64.
    pub const fn new(form: Form) -> Self {
        Self { decay: 0.99, beta: 0.5, chunk: 64, form }
    }
}

impl LinearConfig for GatedDeltaNet {
    const NAMES: [&'static str; 3] =
        ["gated-deltanet", "gated-deltanet-recurrent", "gated-deltanet-reference"];
    const FAMILY: &'static str = "gated_deltanet";
    const DESCRIPTIONS: [&'static str; 3] = [
        "Gated DeltaNet delta rule, chunkwise UT form (constant gates; not softmax)",
        "Gated DeltaNet delta rule, one token at a time (decode form)",
        "Gated DeltaNet delta rule, naive recurrence in f64",
    ];
    const MASKS: &'static [MaskKind] = &[MaskKind::Causal];
    const CAUSAL_ONLY: Option<&'static str> =
        Some("the delta rule is a causal recurrence: it needs the causal mask");

    fn form(&self) -> Form {
        self.form
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "decay",
                value: self.decay.to_string(),
                doc: "constant per-token decay α in (0,1] (g = ln α; default 0.99, our choice: the paper's gate is learned)",
            },
            ParamInfo {
                name: "beta",
                value: self.beta.to_string(),
                doc: "constant write strength β in [0,1] (default 0.5, our choice: the paper's β is learned)",
            },
            ParamInfo {
                name: "chunk",
                value: self.chunk.to_string(),
                doc: "chunk length of the chunked form (default 64, fla's chunk size)",
            },
        ]
    }
    fn set(&mut self, k: &str, v: &str) -> Result<bool> {
        let name = Method::name(self);
        match k {
            "decay" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(x > 0.0 && x <= 1.0) {
                    return Err(bad_param(name, k, v, "must be in (0, 1]"));
                }
                self.decay = x;
            }
            "beta" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(0.0..=1.0).contains(&x) {
                    return Err(bad_param(name, k, v, "must be in [0, 1]"));
                }
                self.beta = x;
            }
            "chunk" => self.chunk = positive(name, k, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn scratch_bytes(&self, p: &Problem, par: Par) -> usize {
        let c = self.chunk;
        let per = (p.s_q + p.s_kv) * p.d
            + p.s_kv * (p.d_v + 2)
            + p.d * p.d_v
            + c * (2 * p.d + p.d_v + c + 1);
        4 * per * par.threads().min(p.b * p.h).max(1)
    }
    fn forward(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        let cfg = Config { scale: params.scale, l2norm: true, q_offset: params.geometry.q_offset };
        let (d, dv) = (p.d, p.d_v);
        let g = vec![self.decay.ln(); p.s_kv];
        let beta = vec![self.beta; p.s_kv];
        let pairs = run_heads(p, inputs, par, out, |q, k, v, o, lse| {
            let head = Head { q, k, v, g: &g, beta: &beta, dk: d, dv };
            let mut st = vec![0.0f32; d * dv];
            match self.form {
                Form::Reference => delta::reference(&cfg, &head, &mut st, o, lse),
                Form::Recurrent => delta::recurrent(&cfg, &head, &mut st, o, lse),
                Form::Chunked => delta::chunked(&cfg, &head, self.chunk, &mut st, o, lse),
            }
        });
        Ok(Stats::pairs(pairs))
    }
}
