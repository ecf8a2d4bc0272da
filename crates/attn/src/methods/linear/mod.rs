//! `linear`: kernelised linear attention over [`crate::linear::vanilla`], in three registered
//! forms (`linear` chunked, `linear-recurrent`, `linear-reference`), plus the per-head driver
//! every linear-family method shares ([`run_heads`]). See README.md.

use crate::dispatch::{
    bad_param, parse_param, unknown_param, Capabilities, Exactness, Inputs, Method, OutputMut,
    ParamInfo, Reason, Stats,
};
use crate::error::Result;
use crate::linear::vanilla::{self, Config, Head, State};
use crate::linear::FeatureMap;
use crate::mask::{Mask, MaskKind};
use crate::methods::pattern::for_each_head;
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::problem::Problem;
use crate::tensor::DType;

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
/// [`crate::Error::BadParam`].
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
    let (d, dv, sq, skv, g) = (p.d, p.d_v, p.s_q, p.s_kv, p.group());
    let buffers = || (vec![0.0f32; sq * d], vec![0.0f32; skv * d], vec![0.0f32; skv * dv]);
    for_each_head(p, par, out, buffers, |(qb, kb, vb), b, h, o, lse| {
        for s in 0..sq {
            inputs.q.read_row(b, h, s, 1.0, &mut qb[s * d..(s + 1) * d]);
        }
        for s in 0..skv {
            inputs.k.read_row(b, h / g, s, 1.0, &mut kb[s * d..(s + 1) * d]);
            inputs.v.read_row(b, h / g, s, 1.0, &mut vb[s * dv..(s + 1) * dv]);
        }
        f(qb, kb, vb, o, lse)
    })
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

/// The configuration of one linear-family method: names, parameters, and how each of its three
/// forms runs. Every `LinearConfig` is a registered [`Method`] (the blanket implementation below
/// supplies names, capabilities, parameter parsing and exactness from it), so a method folder
/// holds only what is its own.
pub trait LinearConfig: Copy + std::fmt::Debug + Send + Sync + 'static {
    /// Registry names of the chunked, recurrent and reference forms, in that order.
    const NAMES: [&'static str; 3];
    /// Family folder.
    const FAMILY: &'static str;
    /// One line per form for `attn list`, in the order of [`LinearConfig::NAMES`].
    const DESCRIPTIONS: [&'static str; 3];
    /// Mask kinds the method is defined for.
    const MASKS: &'static [MaskKind];
    /// Why the method needs the causal mask, for a method that cannot run without it (default
    /// `None`): given as a reason when the mask is none.
    const CAUSAL_ONLY: Option<&'static str> = None;

    /// Which form this value runs.
    fn form(&self) -> Form;

    /// Current parameter values.
    fn params(&self) -> Vec<ParamInfo>;

    /// Sets one parameter from its text; `Ok(false)` when `key` is not one of this method's.
    ///
    /// # Errors
    /// [`crate::Error::BadParam`].
    fn set(&mut self, key: &str, value: &str) -> Result<bool>;

    /// Checks constraints between parameters after they are all set (default none).
    ///
    /// # Errors
    /// [`crate::Error::BadParam`].
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Reasons beyond the capability table (default: [`LinearConfig::CAUSAL_ONLY`]'s when the
    /// mask is none).
    fn unsupported(&self, _p: &Problem, params: &Params) -> Vec<Reason> {
        match Self::CAUSAL_ONLY {
            Some(why) if matches!(params.mask, Mask::None) => vec![Reason::Other(why.into())],
            _ => Vec::new(),
        }
    }

    /// Scratch bytes of a call.
    fn scratch_bytes(&self, p: &Problem, par: Par) -> usize;

    /// Computes the method into `out` in the form [`LinearConfig::form`] names.
    ///
    /// # Errors
    /// None expected after the capability check; typed errors otherwise.
    fn forward(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats>;
}

const fn form_index(f: Form) -> usize {
    match f {
        Form::Chunked => 0,
        Form::Recurrent => 1,
        Form::Reference => 2,
    }
}

impl<C: LinearConfig> Method for C {
    fn name(&self) -> &'static str {
        C::NAMES[form_index(self.form())]
    }
    fn family(&self) -> &'static str {
        C::FAMILY
    }
    fn description(&self) -> &'static str {
        C::DESCRIPTIONS[form_index(self.form())]
    }
    fn exactness(&self) -> Exactness {
        Exactness::NotSoftmax
    }
    fn is_reference(&self) -> bool {
        self.form() == Form::Reference
    }
    fn capabilities(&self) -> Capabilities {
        capabilities(C::MASKS)
    }
    fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
        let mut r = crate::dispatch::check_capabilities(&self.capabilities(), p, params);
        r.extend(LinearConfig::unsupported(self, p, params));
        r
    }
    fn params(&self) -> Vec<ParamInfo> {
        LinearConfig::params(self)
    }
    fn with_params(&self, kv: &[(&str, &str)]) -> Result<Box<dyn Method>> {
        let mut m = *self;
        for &(k, v) in kv {
            if !m.set(k, v)? {
                return Err(unknown_param(self.name(), k, &LinearConfig::params(self)));
            }
        }
        m.validate()?;
        Ok(Box::new(m))
    }
    fn scratch_bytes(&self, p: &Problem, _: &Resolved, par: Par) -> usize {
        LinearConfig::scratch_bytes(self, p, par)
    }
    fn forward(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        LinearConfig::forward(self, p, inputs, params, par, out)
    }
}

impl LinearConfig for Linear {
    const NAMES: [&'static str; 3] = ["linear", "linear-recurrent", "linear-reference"];
    const FAMILY: &'static str = "linear";
    const DESCRIPTIONS: [&'static str; 3] = [
        "kernelised linear attention φ(q)·φ(k), chunkwise-parallel (not softmax)",
        "kernelised linear attention, one token at a time (decode form)",
        "kernelised linear attention, naive quadratic form in f64",
    ];
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn form(&self) -> Form {
        self.form
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
    fn set(&mut self, k: &str, v: &str) -> Result<bool> {
        let name = Method::name(self);
        match k {
            "map" => {
                self.map = FeatureMap::parse(v)
                    .ok_or_else(|| bad_param(name, k, v, "expected identity, elu1, elu or relu"))?
            }
            "norm" => self.norm = parse_param(name, k, v)?,
            "chunk" => self.chunk = positive(name, k, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn scratch_bytes(&self, p: &Problem, par: Par) -> usize {
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
