//! `gated-deltanet`: the gated delta rule over [`crate::linear::delta`], in three registered
//! forms (`gated-deltanet` chunked/UT, `gated-deltanet-recurrent`, `gated-deltanet-reference`).
//! The registry interface carries only q, k, v: the decay and β are constant per token and come
//! from the method parameters. The typed API with per-token gates is
//! [`crate::linear::gated_delta_rule`]. See README.md.

use crate::dispatch::{
    parse_param, unknown_param, Capabilities, Exactness, Inputs, Method, OutputMut, ParamInfo,
    Reason, Stats,
};
use crate::error::{Error, Result};
use crate::linear::delta::{self, Config, Head};
use crate::mask::{Mask, MaskKind};
use crate::methods::linear::{capabilities, positive, run_heads, Form};
use crate::par::Par;
use crate::params::{Params, Resolved};
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

fn bad(m: &str, k: &str, v: &str, detail: &str) -> Error {
    Error::BadParam { method: m.into(), key: k.into(), value: v.into(), detail: detail.into() }
}

impl Method for GatedDeltaNet {
    fn name(&self) -> &'static str {
        match self.form {
            Form::Chunked => "gated-deltanet",
            Form::Recurrent => "gated-deltanet-recurrent",
            Form::Reference => "gated-deltanet-reference",
        }
    }
    fn family(&self) -> &'static str {
        "gated_deltanet"
    }
    fn description(&self) -> &'static str {
        match self.form {
            Form::Chunked => {
                "Gated DeltaNet delta rule, chunkwise UT form (constant gates; not softmax)"
            }
            Form::Recurrent => "Gated DeltaNet delta rule, one token at a time (decode form)",
            Form::Reference => "Gated DeltaNet delta rule, naive recurrence in f64",
        }
    }
    fn exactness(&self) -> Exactness {
        Exactness::NotSoftmax
    }
    fn is_reference(&self) -> bool {
        self.form == Form::Reference
    }
    fn capabilities(&self) -> Capabilities {
        capabilities(&[MaskKind::Causal])
    }
    fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
        let mut r = crate::dispatch::check_capabilities(&self.capabilities(), p, params);
        if matches!(params.mask, Mask::None) {
            r.push(Reason::Other(
                "the delta rule is a causal recurrence: it needs the causal mask".into(),
            ));
        }
        r
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
    fn with_params(&self, kv: &[(&str, &str)]) -> Result<Box<dyn Method>> {
        let mut m = *self;
        let name = self.name();
        for &(k, v) in kv {
            match k {
                "decay" => {
                    let x: f32 = parse_param(name, k, v)?;
                    if !(x > 0.0 && x <= 1.0) {
                        return Err(bad(name, k, v, "must be in (0, 1]"));
                    }
                    m.decay = x;
                }
                "beta" => {
                    let x: f32 = parse_param(name, k, v)?;
                    if !(0.0..=1.0).contains(&x) {
                        return Err(bad(name, k, v, "must be in [0, 1]"));
                    }
                    m.beta = x;
                }
                "chunk" => m.chunk = positive(name, k, v)?,
                _ => return Err(unknown_param(name, k, &self.params())),
            }
        }
        Ok(Box::new(m))
    }
    fn scratch_bytes(&self, p: &Problem, _: &Resolved, par: Par) -> usize {
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
