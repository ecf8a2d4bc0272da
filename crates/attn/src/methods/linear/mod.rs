//! `linear`: kernelised linear attention over [`crate::linear::vanilla`], in three registered
//! forms (`linear` chunked, `linear-recurrent`, `linear-reference`), plus the per-head driver
//! every linear-family method shares ([`run_heads`]). See README.md.

use crate::dispatch::{
    parse_param, unknown_param, Capabilities, Exactness, Inputs, Method, OutputMut, ParamInfo,
    Reason, Stats,
};
use crate::error::{Error, Result};
use crate::linear::vanilla::{self, Config, Head, State};
use crate::linear::FeatureMap;
use crate::mask::{Mask, MaskKind};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::problem::Problem;
use crate::tensor::DType;
use std::sync::Mutex;

/// Which of the three forms an implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The naive quadratic form (or naive recurrence), f64.
    Reference,
    /// One token at a time, f32.
    Recurrent,
    /// Chunkwise-parallel, f32.
    Chunked,
}

/// The capabilities every linear-family implementation declares.
pub fn capabilities(masks: &'static [MaskKind]) -> Capabilities {
    Capabilities {
        dtypes: &[DType::F32, DType::F16, DType::BF16],
        masks,
        max_head_dim: 1024,
        gqa: true,
        softcap: false,
        alibi: false,
        max_query_rows: None,
        min_kv: 0,
    }
}

/// Parses a positive integer parameter.
///
/// # Errors
/// [`Error::BadParam`].
pub fn positive(method: &str, key: &str, value: &str) -> Result<usize> {
    crate::methods::pattern::positive(method, key, value)
}

/// Runs `f` once per (batch, query head) on contiguous f32 copies of that head's
/// `q: [S_q, D]`, `k: [S_kv, D]`, `v: [S_kv, D_v]` (query head `h` reads key/value head
/// `h / (H / H_kv)`), writing its rows of `o` and `lse`; heads are spread over `par` (each head
/// is computed by one worker in a fixed order, so results do not depend on the thread count).
/// Returns the sum of what `f` returns.
pub fn run_heads(
    p: &Problem,
    inputs: &Inputs,
    par: Par,
    out: OutputMut,
    f: impl Fn(&[f32], &[f32], &[f32], &mut [f32], &mut [f32]) -> u64 + Sync,
) -> u64 {
    let heads = p.b * p.h;
    let (d, dv, sq, skv, g) = (p.d, p.d_v, p.s_q, p.s_kv, p.group());
    let jobs = par.threads().min(heads).max(1);
    let slots: Vec<Mutex<(&mut [f32], &mut [f32])>> =
        out.o.chunks_mut(sq * dv).zip(out.lse.chunks_mut(sq)).map(Mutex::new).collect();
    let total = Mutex::new(0u64);
    par.run(jobs, |w| {
        let mut qb = vec![0.0f32; sq * d];
        let mut kb = vec![0.0f32; skv * d];
        let mut vb = vec![0.0f32; skv * dv];
        let mut sum = 0;
        for hd in (w..heads).step_by(jobs) {
            let (b, h) = (hd / p.h, hd % p.h);
            for s in 0..sq {
                inputs.q.read_row(b, h, s, 1.0, &mut qb[s * d..(s + 1) * d]);
            }
            for s in 0..skv {
                inputs.k.read_row(b, h / g, s, 1.0, &mut kb[s * d..(s + 1) * d]);
                inputs.v.read_row(b, h / g, s, 1.0, &mut vb[s * dv..(s + 1) * dv]);
            }
            let mut slot = slots[hd].lock().unwrap_or_else(|e| e.into_inner());
            let (o, lse) = &mut *slot;
            sum += f(&qb, &kb, &vb, o, lse);
        }
        *total.lock().unwrap_or_else(|e| e.into_inner()) += sum;
    });
    total.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Kernelised linear attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Linear {
    /// Feature map φ.
    pub map: FeatureMap,
    /// Divide by the normaliser.
    pub norm: bool,
    /// Chunk length of the chunked form.
    pub chunk: usize,
    /// Which form runs.
    pub form: Form,
}

impl Linear {
    /// `elu1`, normalised, chunks of 64.
    pub const fn new(form: Form) -> Self {
        Self { map: FeatureMap::Elu1, norm: true, chunk: 64, form }
    }
}

impl Method for Linear {
    fn name(&self) -> &'static str {
        match self.form {
            Form::Chunked => "linear",
            Form::Recurrent => "linear-recurrent",
            Form::Reference => "linear-reference",
        }
    }
    fn family(&self) -> &'static str {
        "linear"
    }
    fn description(&self) -> &'static str {
        match self.form {
            Form::Chunked => {
                "kernelised linear attention φ(q)·φ(k), chunkwise-parallel (not softmax)"
            }
            Form::Recurrent => "kernelised linear attention, one token at a time (decode form)",
            Form::Reference => "kernelised linear attention, naive quadratic form in f64",
        }
    }
    fn exactness(&self) -> Exactness {
        Exactness::NotSoftmax
    }
    fn is_reference(&self) -> bool {
        self.form == Form::Reference
    }
    fn capabilities(&self) -> Capabilities {
        capabilities(&[MaskKind::None, MaskKind::Causal])
    }
    fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
        crate::dispatch::check_capabilities(&self.capabilities(), p, params)
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "map",
                value: self.map.name().into(),
                doc: "feature map: elu1 (Katharopoulos et al. 2020, default), elu, relu, identity",
            },
            ParamInfo {
                name: "norm",
                value: self.norm.to_string(),
                doc: "divide by the normaliser φ(q)·Σφ(k) (default true, Katharopoulos et al.)",
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
        for &(k, v) in kv {
            match k {
                "map" => {
                    m.map = FeatureMap::parse(v).ok_or_else(|| Error::BadParam {
                        method: self.name().into(),
                        key: k.into(),
                        value: v.into(),
                        detail: "expected identity, elu1, elu or relu".into(),
                    })?
                }
                "norm" => m.norm = parse_param(self.name(), k, v)?,
                "chunk" => m.chunk = positive(self.name(), k, v)?,
                _ => return Err(unknown_param(self.name(), k, &self.params())),
            }
        }
        Ok(Box::new(m))
    }
    fn scratch_bytes(&self, p: &Problem, _: &Resolved, par: Par) -> usize {
        let per = (p.s_q + p.s_kv) * p.d + p.s_kv * p.d_v + p.s_kv * p.d + p.d * (p.d_v + 1);
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
        let cfg = Config {
            map: self.map,
            causal: matches!(params.mask, Mask::Causal),
            norm: self.norm,
            scale: params.scale,
            q_offset: params.geometry.q_offset,
            eps: 0.0,
        };
        let (d, dv) = (p.d, p.d_v);
        let pairs = run_heads(p, inputs, par, out, |q, k, v, o, lse| {
            let head = Head { q, k, v, dk: d, dv };
            let mut st = State::new(d, dv);
            match self.form {
                Form::Reference => vanilla::reference(&cfg, &head, o, lse),
                Form::Recurrent => vanilla::recurrent(&cfg, &head, &mut st, o, lse),
                Form::Chunked => vanilla::chunked(&cfg, &head, self.chunk, &mut st, o, lse),
            }
        });
        Ok(Stats::pairs(pairs))
    }
}
