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
use std::sync::Arc;

/// Whether a method computes softmax attention exactly (up to rounding) or approximates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exactness {
    /// Equal to softmax attention up to floating-point rounding.
    Exact,
    /// An approximation with a budget; equal to exact attention at its full budget.
    Approximate,
    /// A different mechanism that is not softmax attention (linear and recurrent attention): it
    /// is held to its own family's reference, never selected automatically, and its `lse` output
    /// follows the method's documented convention.
    NotSoftmax,
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

/// What a call did, beyond its output: the cost measures that compare across methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// (query row, key) score evaluations performed, summed over batch and query heads (spec
    /// §0.3). Exact methods report the pairs their mask allows (what a mask-aware kernel scores;
    /// tile-granular kernels may evaluate, then discard, a few more at tile edges). Sparse
    /// methods report every pair they score, including whole-block expansion, pairs later masked
    /// inside a scored block, and their estimation pass (e.g. the last queries against all keys).
    pub computed_pairs: u64,
}

impl Stats {
    /// Stats of a call that scored `computed_pairs` pairs.
    pub fn pairs(computed_pairs: u64) -> Self {
        Self { computed_pairs }
    }

    /// The stats of an exact method: the pairs the mask of `params` allows.
    pub fn exact(params: &Resolved) -> Self {
        Self::pairs(params.mask.allowed_pairs(&params.geometry))
    }
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

    /// The method's tunable parameters with their current values (the registered instance shows
    /// the defaults). Empty for methods without parameters.
    fn params(&self) -> Vec<ParamInfo> {
        Vec::new()
    }

    /// A copy of this method with some parameters changed, each given as `(key, value)` the way
    /// it is written on a command line (`("window", "1024")`). Later pairs override earlier ones.
    /// [`Registry::build`] calls it only with at least one pair.
    ///
    /// # Errors
    /// [`Error::UnknownParam`] for a key the method does not have (the default for methods
    /// without parameters), [`Error::BadParam`] for a value it cannot take.
    fn with_params(&self, overrides: &[(&str, &str)]) -> Result<Box<dyn Method>> {
        let key = overrides.first().map_or("", |kv| kv.0);
        Err(Error::UnknownParam { method: self.name().into(), key: key.into(), known: Vec::new() })
    }

    /// Every reason this implementation cannot run the problem (empty = supported).
    fn unsupported(&self, p: &Problem, params: &Params) -> Vec<Reason> {
        check_capabilities(&self.capabilities(), p, params)
    }

    /// Bytes of scratch the call allocates beyond the output buffers.
    fn scratch_bytes(&self, p: &Problem, params: &Resolved, par: Par) -> usize;

    /// Computes attention into `out`, which the caller sized for the problem, and says what it
    /// cost ([`Stats`]).
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
    ) -> Result<Stats>;
}

/// One tunable parameter of a method (for `attn list` and error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// The key, as written in a method spec (`window`).
    pub name: &'static str,
    /// The current value, formatted as it would be written.
    pub value: String,
    /// One line: meaning, unit, and the default's origin.
    pub doc: &'static str,
}

/// An implementation chosen from a registry: either a registered instance (default parameters)
/// or one built with other parameters. Dereferences to the [`Method`].
#[derive(Clone)]
pub enum MethodRef {
    /// A registered instance.
    Static(&'static dyn Method),
    /// An instance built by [`Method::with_params`].
    Owned(Arc<dyn Method>),
}

impl std::ops::Deref for MethodRef {
    type Target = dyn Method;
    fn deref(&self) -> &(dyn Method + 'static) {
        match self {
            MethodRef::Static(m) => *m,
            MethodRef::Owned(m) => m.as_ref(),
        }
    }
}

impl std::fmt::Debug for MethodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec())
    }
}

impl MethodRef {
    /// The spec that rebuilds this instance: `name` or `name:key=value,...` listing every
    /// parameter (so a report row says exactly what ran).
    pub fn spec(&self) -> String {
        let params = self.params();
        if params.is_empty() {
            return self.name().to_string();
        }
        let kv: Vec<String> = params.iter().map(|p| format!("{}={}", p.name, p.value)).collect();
        format!("{}:{}", self.name(), kv.join(","))
    }
}

/// Splits a method spec `name` or `name:key=value,key=value` into the name and its pairs
/// (whitespace around items is ignored).
///
/// # Errors
/// [`Error::BadParam`] for an item without `=` or with an empty key.
pub fn parse_spec(spec: &str) -> Result<(&str, Vec<(&str, &str)>)> {
    let Some((name, rest)) = spec.split_once(':') else {
        return Ok((spec.trim(), Vec::new()));
    };
    let name = name.trim();
    let mut kv = Vec::new();
    for item in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => kv.push((k.trim(), v.trim())),
            _ => {
                return Err(Error::BadParam {
                    method: name.into(),
                    key: item.into(),
                    value: String::new(),
                    detail: "expected key=value".into(),
                })
            }
        }
    }
    Ok((name, kv))
}

/// Parses the value of parameter `key` of `method` (helper for [`Method::with_params`]).
///
/// # Errors
/// [`Error::BadParam`] naming the type expected.
pub fn parse_param<T: std::str::FromStr>(method: &str, key: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| Error::BadParam {
        method: method.into(),
        key: key.into(),
        value: value.into(),
        detail: format!("expected {}", expected_word(std::any::type_name::<T>())),
    })
}

/// What a parameter of Rust type `name` looks like on the command line.
fn expected_word(name: &str) -> &str {
    match name {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number ≥ 0",
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" => "true or false",
        other => other,
    }
}

/// The error for a value of `key` that parses but is out of range (helper for
/// [`Method::with_params`]); `detail` says what is allowed.
pub fn bad_param(method: &str, key: &str, value: &str, detail: &str) -> Error {
    Error::BadParam {
        method: method.into(),
        key: key.into(),
        value: value.into(),
        detail: detail.into(),
    }
}

/// The error for a key `method` does not have (helper for [`Method::with_params`]).
pub fn unknown_param(method: &str, key: &str, known: &[ParamInfo]) -> Error {
    Error::UnknownParam {
        method: method.into(),
        key: key.into(),
        known: known.iter().map(|p| p.name.to_string()).collect(),
    }
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
    /// Force this implementation, by name or by spec with parameters
    /// (`streaming:sink=4,window=1024`, see [`Registry::build`]); `None` selects automatically.
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
    pub chosen: MethodRef,
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

    /// The implementation named by `spec`: `name` gives the registered instance, and
    /// `name:key=value,...` a copy with those parameters changed ([`Method::with_params`]).
    ///
    /// # Errors
    /// [`Error::UnknownMethod`], [`Error::UnknownParam`] or [`Error::BadParam`].
    pub fn build(&self, spec: &str) -> Result<MethodRef> {
        let (name, kv) = parse_spec(spec)?;
        self.build_with(name, &kv)
    }

    /// The implementation `name` with parameters `overrides` (`(key, value)` pairs).
    ///
    /// # Errors
    /// As [`Registry::build`].
    pub fn build_with(&self, name: &str, overrides: &[(&str, &str)]) -> Result<MethodRef> {
        let m = self.get(name)?;
        if overrides.is_empty() {
            return Ok(MethodRef::Static(m));
        }
        Ok(MethodRef::Owned(Arc::from(m.with_params(overrides)?)))
    }

    /// Chooses an implementation: the forced one if `prefs.method` is set, else the first
    /// non-reference implementation in priority order that supports the problem, else the first
    /// reference that does.
    ///
    /// # Errors
    /// [`Error::UnknownMethod`], [`Error::Unsupported`] (forced method rejects the problem) or
    /// [`Error::NoMethod`] with every rejection.
    pub fn select(&self, p: &Problem, params: &Params, prefs: &Prefs) -> Result<Selection> {
        if let Some(spec) = &prefs.method {
            let m = self.build(spec)?;
            let reasons = m.unsupported(p, params);
            if !reasons.is_empty() {
                return Err(Error::Unsupported { method: m.name().to_string(), reasons });
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
                return Ok(Selection { chosen: MethodRef::Static(*m), rejected });
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
    /// What the call cost.
    pub stats: Stats,
}
