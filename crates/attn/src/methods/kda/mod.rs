//! `kda`: Kimi Delta Attention — the gated delta rule with a channel-wise decay gate — over
//! [`crate::linear::delta`], in three registered forms (`kda` chunked/UT, `kda-recurrent`,
//! `kda-reference`). As for `gated-deltanet`, the registry interface carries only q, k, v: the
//! gates and β come from the method parameters (constant over tokens, one decay per key channel,
//! log-spaced between `decay_min` and `decay_max`). The typed API with per-token, per-channel
//! gates is [`crate::linear::gated_delta_rule`] with `g: [B, T, H, K]`. See README.md.

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

/// Kimi Delta Attention with constant, channel-wise gates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kda {
    /// Decay `α ∈ (0, 1]` of key channel 0 (the fastest-forgetting channel).
    pub decay_min: f32,
    /// Decay `α ∈ (0, 1]` of the last key channel (the slowest-forgetting channel).
    pub decay_max: f32,
    /// Per-token write strength `β ∈ [0, 1]`.
    pub beta: f32,
    /// Chunk length of the chunked form.
    pub chunk: usize,
    /// Which form runs.
    pub form: Form,
}

impl Kda {
    /// `decay_min = 0.9`, `decay_max = 0.999`, `beta = 0.5`, chunks of 64.
    pub const fn new(form: Form) -> Self {
        Self { decay_min: 0.9, decay_max: 0.999, beta: 0.5, chunk: 64, form }
    }

    /// The log-decay of each of `d` key channels: `g_c = ln α_min + (c / (d−1)) (ln α_max −
    /// ln α_min)` (geometric spacing of `α`; `d = 1` takes `α_max`).
    pub fn channel_gates(&self, d: usize) -> Vec<f32> {
        let (lo, hi) = ((self.decay_min as f64).ln(), (self.decay_max as f64).ln());
        if d == 1 {
            return vec![hi as f32];
        }
        (0..d).map(|c| (lo + (hi - lo) * c as f64 / (d - 1) as f64) as f32).collect()
    }
}

fn bad(m: &str, k: &str, v: &str, detail: &str) -> Error {
    Error::BadParam { method: m.into(), key: k.into(), value: v.into(), detail: detail.into() }
}

impl Method for Kda {
    fn name(&self) -> &'static str {
        match self.form {
            Form::Chunked => "kda",
            Form::Recurrent => "kda-recurrent",
            Form::Reference => "kda-reference",
        }
    }
    fn family(&self) -> &'static str {
        "kda"
    }
    fn description(&self) -> &'static str {
        match self.form {
            Form::Chunked => {
                "Kimi Delta Attention (channel-wise gates), chunkwise UT form (constant gates; not softmax)"
            }
            Form::Recurrent => "Kimi Delta Attention, one token at a time (decode form)",
            Form::Reference => "Kimi Delta Attention, naive recurrence in f64",
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
                name: "decay_min",
                value: self.decay_min.to_string(),
                doc: "decay α of key channel 0, in (0,1] (default 0.9, our choice: the paper's gate is learned)",
            },
            ParamInfo {
                name: "decay_max",
                value: self.decay_max.to_string(),
                doc: "decay α of the last key channel, in [decay_min,1]; channels between are log-spaced (default 0.999, our choice)",
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
                "decay_min" | "decay_max" => {
                    let x: f32 = parse_param(name, k, v)?;
                    if !(x > 0.0 && x <= 1.0) {
                        return Err(bad(name, k, v, "must be in (0, 1]"));
                    }
                    if k == "decay_min" {
                        m.decay_min = x;
                    } else {
                        m.decay_max = x;
                    }
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
        if m.decay_min > m.decay_max {
            return Err(bad(
                name,
                "decay_min",
                &m.decay_min.to_string(),
                &format!("must not exceed decay_max = {}", m.decay_max),
            ));
        }
        Ok(Box::new(m))
    }
    fn scratch_bytes(&self, p: &Problem, _: &Resolved, par: Par) -> usize {
        let c = self.chunk;
        let per =
            (p.s_q + p.s_kv) * p.d + p.s_kv * (p.d_v + 1) + p.d * p.d_v + c * (3 * p.d + p.d_v + 1);
        4 * (per * par.threads().min(p.b * p.h).max(1) + p.s_kv * p.d)
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
        // g: [S_kv, D], the same channel gates for every token.
        let gates = self.channel_gates(d);
        let g: Vec<f32> = (0..p.s_kv).flat_map(|_| gates.iter().copied()).collect();
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
