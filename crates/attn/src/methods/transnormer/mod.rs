//! `transnormer`: the two token mixers of transNormer (Qin et al., "The Devil in Linear
//! Transformer", EMNLP 2022) as one method with a `mode` parameter, in three registered forms
//! (`transnormer` chunked, `transnormer-recurrent`, `transnormer-reference`):
//! - `mode=norm` (default) — NormAttention: kernelised linear attention with no score scaling and
//!   no normaliser, `o_i = Σ_{j} (φ(q_i)·φ(k_j)) v_j`, then one normalisation of each output row
//!   over all heads jointly ([`PostNorm`]);
//! - `mode=diag` — DiagAttention: block-diagonal local attention ([`diag`]), causal softmax inside
//!   blocks of `block` positions, or the relu kernel followed by the same post-normalisation.
//!
//! See README.md.

pub mod diag;

use crate::dispatch::{
    bad_param, parse_param, Inputs, Method, OutputMut, ParamInfo, Reason, Stats,
};
use crate::error::Result;
use crate::linear::vanilla::{self, State};
use crate::linear::FeatureMap;
use crate::mask::{Mask, MaskKind};
use crate::methods::linear::{positive, run_heads, Form, LinearConfig};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::problem::Problem;

/// Which mixer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// NormAttention (global, linear cost).
    Norm,
    /// DiagAttention (block-local).
    Diag,
}

/// The normalisation applied to each output row after the attention, over the `H·D_v` values of
/// all heads of that row jointly (spec A1: one norm over the full model width, not per head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostNorm {
    /// SimpleRMSNorm: `x / (‖x‖₂ · n^{-1/2} + ε)`, no gain (transNormer's default).
    Srms,
    /// LayerNorm without affine parameters: `(x − mean) / sqrt(var + ε)`.
    LayerNorm,
}

impl PostNorm {
    /// The name used in method specs.
    pub fn name(self) -> &'static str {
        match self {
            PostNorm::Srms => "srms",
            PostNorm::LayerNorm => "layernorm",
        }
    }

    /// Normalises `o: [B, H, S_q, D_v]` in place, each `(b, s)` row over its `H·D_v` values
    /// jointly; sums in f64. With `ε = 0`, a zero row (SRMS) or a constant row (LayerNorm) becomes 0.
    pub fn apply(self, eps: f64, o: &mut [f32], [b, h, s_q, dv]: [usize; 4]) {
        let n = (h * dv) as f64;
        let idx = |bi: usize, hi: usize, s: usize| ((bi * h + hi) * s_q + s) * dv;
        for bi in 0..b {
            for s in 0..s_q {
                let row = |f: &mut dyn FnMut(f64)| {
                    for hi in 0..h {
                        o[idx(bi, hi, s)..idx(bi, hi, s) + dv].iter().for_each(|&x| f(x as f64));
                    }
                };
                let mut sum = 0.0f64;
                row(&mut |x| sum += x);
                let shift = match self {
                    PostNorm::Srms => 0.0,
                    PostNorm::LayerNorm => sum / n,
                };
                let mut sq = 0.0f64;
                row(&mut |x| sq += (x - shift) * (x - shift));
                let inv = match self {
                    PostNorm::Srms => 1.0 / (sq.sqrt() / n.sqrt() + eps),
                    PostNorm::LayerNorm => 1.0 / (sq / n + eps).sqrt(),
                };
                // ε = 0 and a zero (SRMS) or constant (LayerNorm) row: the row becomes 0.
                let inv = if inv.is_finite() { inv } else { 0.0 };
                for hi in 0..h {
                    for x in &mut o[idx(bi, hi, s)..idx(bi, hi, s) + dv] {
                        *x = ((*x as f64 - shift) * inv) as f32;
                    }
                }
            }
        }
    }
}

/// transNormer's token mixers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transnormer {
    /// NormAttention or DiagAttention.
    pub mode: Mode,
    /// Feature map `φ` of NormAttention.
    pub map: FeatureMap,
    /// Kernel of DiagAttention.
    pub diag: diag::Kernel,
    /// Block length of DiagAttention.
    pub block: usize,
    /// Post-normalisation (NormAttention, and DiagAttention with the relu kernel).
    pub norm: PostNorm,
    /// ε of the post-normalisation.
    pub eps: f32,
    /// Chunk length of NormAttention's chunked form.
    pub chunk: usize,
    /// Which form runs.
    pub form: Form,
}

impl Transnormer {
    /// NormAttention with `elu1` (T2), SRMSNorm with `ε = 1e-8`; DiagAttention softmax (T2) in
    /// blocks of 64; chunks of 64.
    pub const fn new(form: Form) -> Self {
        Self {
            mode: Mode::Norm,
            map: FeatureMap::Elu1,
            diag: diag::Kernel::Softmax,
            block: 64,
            norm: PostNorm::Srms,
            eps: 1e-8,
            chunk: 64,
            form,
        }
    }

    /// Whether the output is normalised after the attention.
    pub fn post_norm(&self) -> bool {
        self.mode == Mode::Norm || self.diag == diag::Kernel::Relu
    }
}

impl LinearConfig for Transnormer {
    const NAMES: [&'static str; 3] =
        ["transnormer", "transnormer-recurrent", "transnormer-reference"];
    const FAMILY: &'static str = "transnormer";
    const DESCRIPTIONS: [&'static str; 3] = [
        "transNormer NormAttention (no scale, no denominator, post-norm) or DiagAttention (mode=diag), chunked (not softmax)",
        "transNormer Norm/DiagAttention, one token at a time (decode form)",
        "transNormer Norm/DiagAttention, naive quadratic form in f64",
    ];
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn form(&self) -> Form {
        self.form
    }
    fn unsupported(&self, _p: &Problem, params: &Params) -> Vec<Reason> {
        let mut r = Vec::new();
        if self.mode == Mode::Diag && matches!(params.mask, Mask::None) {
            r.push(Reason::Other(
                "DiagAttention is causal inside its blocks: it needs the causal mask".into(),
            ));
        }
        r
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "mode",
                value: match self.mode {
                    Mode::Norm => "norm".into(),
                    Mode::Diag => "diag".into(),
                },
                doc: "norm = NormAttention (global, default), diag = DiagAttention (block-local, transNormer's lower layers)",
            },
            ParamInfo {
                name: "map",
                value: self.map.name().into(),
                doc: "NormAttention feature map: elu1 (T2, default), elu (T1), relu, identity",
            },
            ParamInfo {
                name: "diag",
                value: match self.diag {
                    diag::Kernel::Softmax => "softmax".into(),
                    diag::Kernel::Relu => "relu".into(),
                },
                doc: "DiagAttention kernel: softmax (T2, no post-norm, default) or relu (T1, post-norm)",
            },
            ParamInfo {
                name: "block",
                value: self.block.to_string(),
                doc: "DiagAttention block length (default 64, transNormer's LM configs)",
            },
            ParamInfo {
                name: "norm",
                value: self.norm.name().into(),
                doc: "post-normalisation over all heads of a row: srms (SimpleRMSNorm, default) or layernorm",
            },
            ParamInfo {
                name: "eps",
                value: self.eps.to_string(),
                doc: "ε of the post-normalisation, ≥ 0 (default 1e-8, transNormer's SRMSNorm)",
            },
            ParamInfo {
                name: "chunk",
                value: self.chunk.to_string(),
                doc: "chunk length of NormAttention's chunked form (default 64)",
            },
        ]
    }
    fn set(&mut self, k: &str, v: &str) -> Result<bool> {
        let name = Method::name(self);
        match k {
            "mode" => {
                self.mode = match v {
                    "norm" => Mode::Norm,
                    "diag" => Mode::Diag,
                    _ => return Err(bad_param(name, k, v, "expected norm or diag")),
                }
            }
            "map" => {
                self.map = FeatureMap::parse(v)
                    .ok_or_else(|| bad_param(name, k, v, "expected elu1, elu, relu or identity"))?
            }
            "diag" => {
                self.diag = match v {
                    "softmax" => diag::Kernel::Softmax,
                    "relu" => diag::Kernel::Relu,
                    _ => return Err(bad_param(name, k, v, "expected softmax or relu")),
                }
            }
            "block" => self.block = positive(name, k, v)?,
            "norm" => {
                self.norm = match v {
                    "srms" => PostNorm::Srms,
                    "layernorm" => PostNorm::LayerNorm,
                    _ => return Err(bad_param(name, k, v, "expected srms or layernorm")),
                }
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
        let per = (p.s_q + 2 * p.s_kv) * p.d + p.s_kv * p.d_v + p.d * (p.d_v + 1) + self.block;
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
        let (d, dv) = (p.d, p.d_v);
        let q_offset = params.geometry.q_offset;
        let heads_out = OutputMut { o: &mut *out.o, lse: &mut *out.lse };
        let pairs = match self.mode {
            Mode::Norm => {
                // No score scale and no normaliser (spec A1); the post-norm follows.
                let cfg = vanilla::Config {
                    map: self.map,
                    causal: matches!(params.mask, Mask::Causal),
                    norm: false,
                    scale: 1.0,
                    q_offset,
                    eps: 0.0,
                };
                run_heads(p, inputs, par, heads_out, |q, k, v, o, lse| {
                    let head = vanilla::Head { q, k, v, dk: d, dv };
                    let mut st = State::new(d, dv);
                    match self.form {
                        Form::Reference => vanilla::reference(&cfg, &head, o, lse),
                        Form::Recurrent => vanilla::recurrent(&cfg, &head, &mut st, o, lse),
                        Form::Chunked => vanilla::chunked(&cfg, &head, self.chunk, &mut st, o, lse),
                    }
                })
            }
            Mode::Diag => {
                let cfg = diag::Config {
                    kernel: self.diag,
                    block: self.block,
                    scale: params.scale,
                    q_offset,
                };
                run_heads(p, inputs, par, heads_out, |q, k, v, o, lse| {
                    let head = diag::Head { q, k, v, dk: d, dv };
                    match self.form {
                        Form::Reference => diag::reference(&cfg, &head, o, lse),
                        Form::Recurrent => diag::recurrent(&cfg, &head, o, lse),
                        Form::Chunked => diag::chunked(&cfg, &head, o, lse),
                    }
                })
            }
        };
        if self.post_norm() {
            self.norm.apply(self.eps as f64, out.o, [p.b, p.h, p.s_q, dv]);
        }
        Ok(Stats::pairs(pairs))
    }
}
