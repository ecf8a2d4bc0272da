//! The method interface, capability declarations, the registry and selection.
//!
//! Selection walks the registry in priority order and takes the first implementation that
//! declares support for the problem; every rejection is kept with its reasons so that a caller (or
//! `attn list`/`attn run --explain`) can see why a faster path was not taken. A caller can force an
//! implementation by name; it then runs or fails with [`Error::Unsupported`] — never a silent
//! fallback.

use crate::error::{Error, Result};
use crate::mask::MaskKind;
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::problem::Problem;
use crate::tensor::{DType, TensorRef};

/// Whether a method computes softmax attention exactly (up to rounding) or approximates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exactness {
    /// Equal to softmax attention up to floating-point rounding.
    Exact,
    /// An approximation with a budget; equal to exact attention at its full budget.
    Approximate,
}

/// What an implementation can run. The default [`Method::unsupported`] checks a problem against
/// this declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Capabilities {
    /// Input element types accepted.
    pub dtypes: &'static [DType],
    /// Mask kinds accepted (a [`crate::Mask::And`] is accepted when all its parts are).
    pub masks: &'static [MaskKind],
    /// Largest head dimension (`D` and `D_v`).
    pub max_head_dim: usize,
    /// `H_kv < H` accepted.
    pub gqa: bool,
    /// Logit soft-capping accepted.
    pub softcap: bool,
    /// ALiBi slopes accepted.
    pub alibi: bool,
    /// Largest number of query rows per key/value head (`S_q · H / H_kv`), if limited.
    pub max_query_rows: Option<usize>,
    /// Smallest `S_kv` the implementation is meant for (below it, another path is better).
    pub min_kv: usize,
}

/// Why an implementation rejects a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Input dtype not supported.
    DType(DType),
    /// Mask kind not supported.
    Mask(MaskKind),
    /// Head dimension above the maximum.
    HeadDim {
        /// `max(D, D_v)` of the problem.
        d: usize,
        /// The implementation's maximum.
        max: usize,
    },
    /// Grouped-query attention not supported.
    Gqa,
    /// Softcap not supported.
    Softcap,
    /// ALiBi not supported.
    Alibi,
    /// Too many query rows for this path.
    QueryRows {
        /// `S_q · H / H_kv` of the problem.
        rows: usize,
        /// The implementation's maximum.
        max: usize,
    },
    /// Too few keys for this path to pay off.
    FewKeys {
        /// `S_kv` of the problem.
        s_kv: usize,
        /// The implementation's minimum.
        min: usize,
    },
    /// Anything else, in words.
    Other(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::DType(d) => write!(f, "dtype {d} unsupported"),
            Reason::Mask(m) => write!(f, "mask {} unsupported", m.name()),
            Reason::HeadDim { d, max } => write!(f, "head dim {d} > {max}"),
            Reason::Gqa => write!(f, "grouped-query attention unsupported"),
            Reason::Softcap => write!(f, "softcap unsupported"),
            Reason::Alibi => write!(f, "ALiBi unsupported"),
            Reason::QueryRows { rows, max } => {
                write!(f, "{rows} query rows per kv head > {max} (not a decode shape)")
            }
            Reason::FewKeys { s_kv, min } => write!(f, "S_kv = {s_kv} < {min}"),
            Reason::Other(s) => f.write_str(s),
        }
    }
}

/// The three inputs of a call.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// `[B, H, S_q, D]`
    pub q: TensorRef<'a>,
    /// `[B, H_kv, S_kv, D]`
    pub k: TensorRef<'a>,
    /// `[B, H_kv, S_kv, D_v]`
    pub v: TensorRef<'a>,
}

/// Destination of a call: contiguous f32 buffers every implementation writes completely.
#[derive(Debug)]
pub struct OutputMut<'a> {
    /// `[B, H, S_q, D_v]`, row-major.
    pub o: &'a mut [f32],
    /// `[B, H, S_q]`, natural-log log-sum-exp of each row's scores (`−∞` for fully masked rows).
    pub lse: &'a mut [f32],
}

/// One attention implementation. Object-safe: the registry holds `&'static dyn Method`.
pub trait Method: Send + Sync {
    /// kebab-case name used on the command line (`sdpa-flash`).
    fn name(&self) -> &'static str;
    /// The family folder it lives in (`sdpa`).
    fn family(&self) -> &'static str;
    /// One line for `attn list`.
    fn description(&self) -> &'static str;
    /// Exact or approximate.
    fn exactness(&self) -> Exactness;
    /// What it can run.
    fn capabilities(&self) -> Capabilities;
    /// True for references (plain loops, f64): never chosen automatically when a fast path exists.
    fn is_reference(&self) -> bool {
        false
    }

    /// Every reason this implementation cannot run the problem (empty = supported).
    fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
        check_capabilities(&self.capabilities(), p, params)
    }

    /// Bytes of scratch the call allocates beyond the output buffers.
    fn scratch_bytes(&self, p: &Problem, params: &Resolved, par: Par) -> usize;

    /// Computes attention into `out`, which the caller sized for the problem.
    ///
    /// Preconditions (established by [`crate::attend`]): the problem was derived from `inputs`,
    /// `params` resolved against it, and [`Method::unsupported`] returned nothing.
    ///
    /// # Errors
    /// Implementations return errors only for conditions the capability check cannot see.
    fn forward(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<()>;
}

/// The default capability check.
pub fn check_capabilities(c: &Capabilities, p: &Problem, params: &Params) -> Vec<Reason> {
    let mut r = Vec::new();
    if !c.dtypes.contains(&p.dtype) {
        r.push(Reason::DType(p.dtype));
    }
    for k in params.mask.kinds() {
        if !c.masks.contains(&k) {
            r.push(Reason::Mask(k));
        }
    }
    let d = p.d.max(p.d_v);
    if d > c.max_head_dim {
        r.push(Reason::HeadDim { d, max: c.max_head_dim });
    }
    if p.h_kv != p.h && !c.gqa {
        r.push(Reason::Gqa);
    }
    if params.softcap.is_some() && !c.softcap {
        r.push(Reason::Softcap);
    }
    if params.alibi_slopes.is_some() && !c.alibi {
        r.push(Reason::Alibi);
    }
    if let Some(max) = c.max_query_rows {
        let rows = p.s_q * p.group();
        if rows > max {
            r.push(Reason::QueryRows { rows, max });
        }
    }
    if p.s_kv < c.min_kv {
        r.push(Reason::FewKeys { s_kv: p.s_kv, min: c.min_kv });
    }
    r
}

/// How a call is run (as opposed to what it computes, which is [`Params`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Prefs {
    /// Force this implementation (by name); `None` selects automatically.
    pub method: Option<String>,
    /// Parallelism; default every worker of the current rayon pool.
    pub par: Par,
    /// Scan q, k, v for NaN/Inf first and fail with [`Error::NonFinite`]; default off (costs one
    /// pass over the inputs).
    pub check_finite: bool,
    /// Largest number of bytes the call may allocate (scratch plus outputs); `None` (default) uses
    /// the memory the operating system reports as available, where it can be read.
    pub memory_budget: Option<usize>,
}

impl Default for Prefs {
    fn default() -> Self {
        Self { method: None, par: Par::All, check_finite: false, memory_budget: None }
    }
}

/// What selection decided and why.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The implementation chosen.
    pub chosen: &'static dyn Method,
    /// Implementations tried before it, with their reasons.
    pub rejected: Vec<(&'static str, Vec<Reason>)>,
}

impl std::fmt::Debug for dyn Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The registered implementations, in priority order.
#[derive(Clone, Copy)]
pub struct Registry {
    methods: &'static [&'static dyn Method],
}

impl Registry {
    /// A registry over a static list (priority = order).
    pub const fn new(methods: &'static [&'static dyn Method]) -> Self {
        Self { methods }
    }

    /// All implementations in priority order.
    pub fn methods(&self) -> &'static [&'static dyn Method] {
        self.methods
    }

    /// The implementation with this name.
    ///
    /// # Errors
    /// [`Error::UnknownMethod`] listing the known names.
    pub fn get(&self, name: &str) -> Result<&'static dyn Method> {
        self.methods.iter().copied().find(|m| m.name() == name).ok_or_else(|| {
            Error::UnknownMethod {
                name: name.to_string(),
                known: self.methods.iter().map(|m| m.name().to_string()).collect(),
            }
        })
    }

    /// Chooses an implementation: the forced one if `prefs.method` is set, else the first
    /// non-reference implementation in priority order that supports the problem, else the first
    /// reference that does.
    ///
    /// # Errors
    /// [`Error::UnknownMethod`], [`Error::Unsupported`] (forced method rejects the problem) or
    /// [`Error::NoMethod`] with every rejection.
    pub fn select(&self, p: &Problem, params: &Params, prefs: &Prefs) -> Result<Selection> {
        if let Some(name) = &prefs.method {
            let m = self.get(name)?;
            let reasons = m.unsupported(p, params);
            if !reasons.is_empty() {
                return Err(Error::Unsupported { method: name.clone(), reasons });
            }
            return Ok(Selection { chosen: m, rejected: Vec::new() });
        }
        let mut rejected = Vec::new();
        let order = self
            .methods
            .iter()
            .filter(|m| !m.is_reference())
            .chain(self.methods.iter().filter(|m| m.is_reference()));
        for m in order {
            if m.exactness() != Exactness::Exact {
                continue; // approximations are only run when asked for by name
            }
            let reasons = m.unsupported(p, params);
            if reasons.is_empty() {
                return Ok(Selection { chosen: *m, rejected });
            }
            rejected.push((m.name(), reasons));
        }
        Err(Error::NoMethod {
            rejected: rejected.into_iter().map(|(n, r)| (n.to_string(), r)).collect(),
        })
    }
}

/// The result of [`crate::attend`].
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `[B, H, S_q, D_v]`, row-major.
    pub o: Vec<f32>,
    /// `[B, H, S_q]`, natural-log log-sum-exp per row (`−∞` for fully masked rows).
    pub lse: Vec<f32>,
    /// The problem that was solved.
    pub problem: Problem,
    /// Name of the implementation that ran.
    pub method: &'static str,
}
