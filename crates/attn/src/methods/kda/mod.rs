//! `kda`: Kimi Delta Attention — the gated delta rule with a channel-wise decay gate — over
//! [`crate::linear::delta`], in three registered forms (`kda` chunked/UT, `kda-recurrent`,
//! `kda-reference`). As for `gated-deltanet`, the registry interface carries only q, k, v: the
//! gates and β come from the method parameters (constant over tokens, one decay per key channel,
//! log-spaced between `decay_min` and `decay_max`). The typed API with per-token, per-channel
//! gates is [`crate::linear::gated_delta_rule`] with `g: [B, T, H, K]`. See README.md.

use crate::dispatch::{bad_param, parse_param, Inputs, Method, OutputMut, ParamInfo, Stats};
use crate::error::Result;
use crate::linear::delta::{self, Config, Head};
use crate::mask::MaskKind;
use crate::methods::linear::{positive, run_heads, Form, LinearConfig};
use crate::par::Par;
use crate::params::Resolved;
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

impl LinearConfig for Kda {
    const NAMES: [&'static str; 3] = ["kda", "kda-recurrent", "kda-reference"];
    const FAMILY: &'static str = "kda";
    const DESCRIPTIONS: [&'static str; 3] = [
        "Kimi Delta Attention (channel-wise gates), chunkwise UT form (constant gates; not softmax)",
        "Kimi Delta Attention, one token at a time (decode form)",
        "Kimi Delta Attention, naive recurrence in f64",
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
    fn set(&mut self, k: &str, v: &str) -> Result<bool> {
        let name = Method::name(self);
        match k {
            "decay_min" | "decay_max" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(x > 0.0 && x <= 1.0) {
                    return Err(bad_param(name, k, v, "must be in (0, 1]"));
                }
                if k == "decay_min" {
                    self.decay_min = x;
                } else {
                    self.decay_max = x;
                }
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
    fn validate(&self) -> Result<()> {
        if self.decay_min > self.decay_max {
            return Err(bad_param(
                Method::name(self),
                "decay_min",
                &self.decay_min.to_string(),
                &format!("must not exceed decay_max = {}", self.decay_max),
            ));
        }
        Ok(())
    }
    fn scratch_bytes(&self, p: &Problem, par: Par) -> usize {
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
