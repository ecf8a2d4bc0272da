//! `nalaformer`: NaLaFormer's norm-aware linear attention over [`crate::linear::nala`], in three
//! registered forms (`nalaformer` chunked, `nalaformer-recurrent`, `nalaformer-reference`).
//! See README.md.

use crate::dispatch::{bad_param, parse_param, Inputs, Method, OutputMut, ParamInfo, Stats};
use crate::error::Result;
use crate::linear::nala::{self, key_features, query_features_at};
use crate::linear::vanilla::{self, State};
use crate::linear::FeatureMap;
use crate::mask::{Mask, MaskKind};
use crate::methods::linear::{positive, run_heads, Form, LinearConfig};
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::simd::Level;
use crate::problem::Problem;

/// Norm-aware linear attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nalaformer {
    /// `λ` of the query exponent `p = λ (1/2 + tanh ‖q‖)`.
    pub lambda: f32,
    /// `ε` of the normaliser.
    pub eps: f32,
    /// Chunk length of the chunked form.
    pub chunk: usize,
    /// Which form runs.
    pub form: Form,
}

impl Nalaformer {
    /// `λ = 3`, `ε = 1e-6` (the official code), chunks of 64.
    pub const fn new(form: Form) -> Self {
        Self { lambda: 3.0, eps: 1e-6, chunk: 64, form }
    }
}

impl LinearConfig for Nalaformer {
    const NAMES: [&'static str; 3] = ["nalaformer", "nalaformer-recurrent", "nalaformer-reference"];
    const FAMILY: &'static str = "nalaformer";
    const DESCRIPTIONS: [&'static str; 3] = [
        "NaLaFormer norm-aware linear attention (query-norm exponent, sign-split maps), chunked (not softmax)",
        "NaLaFormer norm-aware linear attention, one token at a time (decode form)",
        "NaLaFormer norm-aware linear attention, naive quadratic form in f64",
    ];
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn form(&self) -> Form {
        self.form
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "lambda",
                value: self.lambda.to_string(),
                doc: "λ of the query exponent p = λ(1/2 + tanh‖q‖), > 0 (default 3, the official code)",
            },
            ParamInfo {
                name: "eps",
                value: self.eps.to_string(),
                doc: "ε added to the mean-normalised denominator, ≥ 0 (default 1e-6, the official code)",
            },
            ParamInfo {
                name: "chunk",
                value: self.chunk.to_string(),
                doc: "chunk length of the chunked form (default 64)",
            },
        ]
    }
    fn set(&mut self, k: &str, v: &str) -> Result<bool> {
        let name = Method::name(self);
        match k {
            "lambda" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(x.is_finite() && x > 0.0) {
                    return Err(bad_param(name, k, v, "must be finite and > 0"));
                }
                self.lambda = x;
            }
            "eps" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(x.is_finite() && x >= 0.0) {
                    return Err(bad_param(name, k, v, "must be finite and ≥ 0"));
                }
                self.eps = x;
            }
            "chunk" => self.chunk = positive(name, k, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn scratch_bytes(&self, p: &Problem, par: Par) -> usize {
        let f = 2 * p.d;
        let per =
            (p.s_q + p.s_kv) * p.d + p.s_kv * p.d_v + (p.s_q + 2 * p.s_kv) * f + f * (p.d_v + 1);
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
        let causal = matches!(params.mask, Mask::Causal);
        let q_offset = params.geometry.q_offset;
        let (d, dv) = (p.d, p.d_v);
        let f = 2 * d;
        let ncfg = nala::Config { lambda: self.lambda, eps: self.eps, causal, q_offset };
        // The fast forms: features first, then kernelised linear attention with the identity map,
        // no scale, the normaliser and ε per key.
        let vcfg = vanilla::Config {
            map: FeatureMap::Identity,
            causal,
            norm: true,
            scale: 1.0,
            q_offset,
            eps: self.eps,
        };
        let level = Level::current();
        let pairs = run_heads(p, inputs, par, out, |q, k, v, o, lse| {
            if self.form == Form::Reference {
                return nala::reference(&ncfg, &vanilla::Head { q, k, v, dk: d, dv }, o, lse);
            }
            let mut fq = vec![0.0f32; q.len() / d * f];
            let mut fk = vec![0.0f32; k.len() / d * f];
            query_features_at(level, q, d, self.lambda, &mut fq);
            for (src, dst) in k.chunks_exact(d).zip(fk.chunks_exact_mut(f)) {
                key_features(src, dst);
            }
            let head = vanilla::Head { q: &fq, k: &fk, v, dk: f, dv };
            let mut st = State::new(f, dv);
            match self.form {
                Form::Recurrent => vanilla::recurrent(&vcfg, &head, &mut st, o, lse),
                _ => vanilla::chunked(&vcfg, &head, self.chunk, &mut st, o, lse),
            }
        });
        Ok(Stats::pairs(pairs))
    }
}
