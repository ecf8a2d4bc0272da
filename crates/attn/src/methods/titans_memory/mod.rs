//! `titans-memory`: the Titans neural long-term memory (Behrouz, Zhong, Mirrokni 2024; spec
//! `linear.md` A4) — an MLP whose weights are the state, written at test time by a gradient step
//! on `‖M(k_t) − v_t‖²` with momentum and forgetting, read with `y = M(q)`. Three registered forms
//! of one function: `titans-memory` (chunked: per-chunk GEMMs and the closed-form scans),
//! `titans-memory-recurrent` (one token at a time, the decode form) and `titans-memory-reference`
//! (the token loop in f64). The chunk length `b` is part of the function (gradients inside a
//! chunk are taken at its start weights, as in the paper's parallel form), and every form takes
//! it. See README.md.

pub mod chunked;
pub mod memory;
pub mod recurrent;
pub mod reference;

use crate::dispatch::{bad_param, parse_param, Inputs, OutputMut, ParamInfo, Stats};
use crate::error::{Error, Result};
use crate::mask::MaskKind;
use crate::methods::linear::{positive, run_heads, Form, LinearConfig};
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::simd::Level;
use crate::problem::Problem;
pub use memory::{Act, Config, Gates, Head, Shape, State};

/// Most memory layers accepted.
pub const MAX_LAYERS: usize = 8;

/// The Titans memory with constant gates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TitansMemory {
    /// `L_M`: weight matrices in the memory MLP (`1` = linear memory).
    pub layers: usize,
    /// Hidden width; `0` = `2·D` (the expansion factor 2 of lucidrains' `MemoryMLP`).
    pub hidden: usize,
    /// Non-linearity between layers.
    pub act: Act,
    /// Learning rate `θ ≥ 0` of the inner gradient step.
    pub lr: f32,
    /// Momentum `η ∈ [0, 1)` (decay of the past surprise).
    pub momentum: f32,
    /// Forgetting `α ∈ [0, 1]` (weight decay of the memory).
    pub decay: f32,
    /// Mini-batch (chunk) length `b`.
    pub chunk: usize,
    /// L2-normalise q and k.
    pub l2norm: bool,
    /// Bound on each token's gradient norm (`0` = none).
    pub clip: f32,
    /// Seed of the initial hidden-layer weights.
    pub seed: u64,
    /// Which form runs.
    pub form: Form,
}

impl TitansMemory {
    /// Two layers, hidden `2·D`, GELU, `lr = 0.03`, `momentum = 0.5`, `decay = 0`, chunks of 64,
    /// L2-normalised q/k, gradient norms bounded by 1, seed 0.
    pub const fn new(form: Form) -> Self {
        Self {
            layers: 2,
            hidden: 0,
            act: Act::Gelu,
            lr: 0.03,
            momentum: 0.5,
            decay: 0.0,
            chunk: 64,
            l2norm: true,
            clip: 1.0,
            seed: 0,
            form,
        }
    }

    /// The memory network for head dims `d`, `d_v`.
    pub fn shape(&self, d: usize, d_v: usize) -> Shape {
        let hidden = if self.hidden == 0 { 2 * d } else { self.hidden };
        Shape { dk: d, dv: d_v, hidden, layers: self.layers }
    }
}

impl LinearConfig for TitansMemory {
    const NAMES: [&'static str; 3] =
        ["titans-memory", "titans-memory-recurrent", "titans-memory-reference"];
    const FAMILY: &'static str = "titans_memory";
    const DESCRIPTIONS: [&'static str; 3] = [
        "Titans neural memory (MLP written by gradient steps with momentum), chunked (not softmax)",
        "Titans neural memory, one token at a time (decode form)",
        "Titans neural memory, token loop in f64",
    ];
    const MASKS: &'static [MaskKind] = &[MaskKind::Causal];
    const CAUSAL_ONLY: Option<&'static str> =
        Some("the Titans memory is written token by token: it needs the causal mask");

    fn form(&self) -> Form {
        self.form
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "layers",
                value: self.layers.to_string(),
                doc: "L_M, weight matrices of the memory MLP, 1..=8 (default 2: lucidrains' depth 2; 1 = linear memory)",
            },
            ParamInfo {
                name: "hidden",
                value: self.hidden.to_string(),
                doc: "hidden width of the memory MLP (default 0 = 2·D: lucidrains' MemoryMLP expansion 2)",
            },
            ParamInfo {
                name: "act",
                value: self.act.name().into(),
                doc: "non-linearity between memory layers: gelu (tanh form; default, lucidrains) or silu",
            },
            ParamInfo {
                name: "lr",
                value: self.lr.to_string(),
                doc: "inner learning rate θ ≥ 0 on the sum-of-squares loss (default 0.03, our choice: the 2-layer memory diverges at 0.1 within ~400 tokens; learned per token in the paper)",
            },
            ParamInfo {
                name: "momentum",
                value: self.momentum.to_string(),
                doc: "momentum η in [0,1) of the surprise (default 0.5, our choice: learned in the paper)",
            },
            ParamInfo {
                name: "decay",
                value: self.decay.to_string(),
                doc: "forgetting α in [0,1] (weight decay; default 0, our choice: a constant α > 0 shrinks an MLP memory to its dead all-zero state; learned in the paper)",
            },
            ParamInfo {
                name: "chunk",
                value: self.chunk.to_string(),
                doc: "mini-batch length b: gradients at the chunk-start weights, queries read the memory before their chunk; changes the function (default 64, our choice: the family's chunk, GEMM-sized; lucidrains' default 1 = online SGD)",
            },
            ParamInfo {
                name: "l2norm",
                value: self.l2norm.to_string(),
                doc: "L2-normalise q and k (default true, the paper's q/k normalisation)",
            },
            ParamInfo {
                name: "clip",
                value: self.clip.to_string(),
                doc: "bound on each token's gradient norm ‖∇ℓ_t‖ (Frobenius, all layers): a longer gradient is scaled down to it; 0 = no bound (default 1, our choice: real activations' values are large and unbounded steps diverged on SmolLM2 within 320 tokens)",
            },
            ParamInfo {
                name: "seed",
                value: self.seed.to_string(),
                doc: "seed of the Xavier-uniform initial hidden layers (the last layer starts at 0)",
            },
        ]
    }
    fn set(&mut self, k: &str, v: &str) -> Result<bool> {
        let name = crate::Method::name(self);
        match k {
            "layers" => {
                let x = positive(name, k, v)?;
                if x > MAX_LAYERS {
                    return Err(bad_param(name, k, v, "must be in 1..=8"));
                }
                self.layers = x;
            }
            "hidden" => self.hidden = parse_param(name, k, v)?,
            "act" => {
                self.act =
                    Act::parse(v).ok_or_else(|| bad_param(name, k, v, "expected gelu or silu"))?
            }
            "lr" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(x.is_finite() && x >= 0.0) {
                    return Err(bad_param(name, k, v, "must be finite and ≥ 0"));
                }
                self.lr = x;
            }
            "momentum" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(0.0..1.0).contains(&x) {
                    return Err(bad_param(name, k, v, "must be in [0, 1)"));
                }
                self.momentum = x;
            }
            "decay" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(0.0..=1.0).contains(&x) {
                    return Err(bad_param(name, k, v, "must be in [0, 1]"));
                }
                self.decay = x;
            }
            "chunk" => self.chunk = positive(name, k, v)?,
            "l2norm" => self.l2norm = parse_param(name, k, v)?,
            "clip" => {
                let x: f32 = parse_param(name, k, v)?;
                if !(x.is_finite() && x >= 0.0) {
                    return Err(bad_param(name, k, v, "must be finite and ≥ 0 (0 = no bound)"));
                }
                self.clip = x;
            }
            "seed" => self.seed = parse_param(name, k, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn scratch_bytes(&self, p: &Problem, par: Par) -> usize {
        let sh = self.shape(p.d, p.d_v);
        let per = (p.s_q + p.s_kv) * p.d
            + p.s_kv * p.d_v
            + 7 * sh.params() // the state (3 · P_M) and its f64 accumulators (2 · P_M f64)
            + chunked::scratch_floats(&sh, self.chunk, p.s_kv);
        4 * (per * par.threads().min(p.b * p.h).max(1) + sh.params() + 3 * p.s_kv)
    }
    fn forward(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        let shape = self.shape(p.d, p.d_v);
        let cfg = Config {
            shape,
            act: self.act,
            chunk: self.chunk,
            l2norm: self.l2norm,
            clip: if self.clip > 0.0 { self.clip } else { f32::INFINITY },
            q_offset: params.geometry.q_offset,
        };
        let init = memory::init(&shape, self.seed);
        let (lr, mom, dec) =
            (vec![self.lr; p.s_kv], vec![self.momentum; p.s_kv], vec![self.decay; p.s_kv]);
        let gates = Gates { lr: &lr, momentum: &mom, decay: &dec };
        let OutputMut { o, lse } = out;
        let level = Level::current();
        run_heads(p, inputs, par, OutputMut { o: &mut *o, lse: &mut *lse }, |q, k, v, o, lse| {
            let head = Head { q, k, v, gates };
            let mut st = State::new(&init);
            match self.form {
                Form::Reference => reference::reference(&cfg, &head, &mut st, o, lse),
                Form::Recurrent => recurrent::recurrent(&cfg, &head, &mut st, o, lse),
                Form::Chunked => chunked::chunked_at(level, &cfg, &head, &mut st, o, lse),
            }
        });
        // A memory written with too large a learning rate diverges: say so instead of returning
        // non-finite rows.
        if let Some(at) = o.iter().position(|x| !x.is_finite()) {
            let row = at / p.d_v;
            return Err(Error::NonFinite {
                op: crate::Method::name(self),
                tensor: "o",
                index: [row / (p.h * p.s_q), row / p.s_q % p.h, row % p.s_q, at % p.d_v],
                value: o[at],
            });
        }
        Ok(Stats::pairs(0))
    }
}
