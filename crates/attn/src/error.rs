//! The one error type of the library: every public entry returns [`Result`].

use crate::dispatch::Reason;

/// Result alias used by every public function of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong before or during an attention call.
///
/// Variants are structured so that callers can react to them (a memory budget can be raised, a
/// rejected method can be replaced) and so that the message names the operation and the values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A tensor's shape, strides or buffer length disagree with each other or with the problem.
    #[error("{op}: shape error: {detail}")]
    Shape {
        /// The operation that checked the shape.
        op: &'static str,
        /// What disagreed, with the values.
        detail: String,
    },
    /// The number of query heads is not a multiple of the number of key/value heads.
    #[error("{op}: H = {h} query heads is not a multiple of H_kv = {h_kv} key/value heads")]
    HeadGroups {
        /// The operation.
        op: &'static str,
        /// Query heads.
        h: usize,
        /// Key/value heads.
        h_kv: usize,
    },
    /// A dimension that must be positive is zero (empty batch, no heads, empty sequence, D = 0).
    #[error("{op}: empty input: {dim} = 0")]
    Empty {
        /// The operation.
        op: &'static str,
        /// The dimension that is zero (`B`, `H`, `S_q`, `S_kv`, `D`, `D_v`).
        dim: &'static str,
    },
    /// An input holds NaN or ±Inf (only checked when `Prefs::check_finite` is set).
    #[error("{op}: tensor {tensor} holds a non-finite value {value} at [b={}, h={}, s={}, d={}]",
        index[0], index[1], index[2], index[3])]
    NonFinite {
        /// The operation.
        op: &'static str,
        /// `q`, `k` or `v`.
        tensor: &'static str,
        /// `[b, h, s, d]` of the first offending element.
        index: [usize; 4],
        /// The value found.
        value: f32,
    },
    /// The request would need more memory than the configured budget.
    #[error("{op}: needs {needed} bytes ({:.1} MiB) but the memory budget is {budget} bytes ({:.1} MiB)",
        *needed as f64 / 1048576.0, *budget as f64 / 1048576.0)]
    MemoryBudget {
        /// The operation (method name).
        op: String,
        /// Bytes the call would allocate (scratch plus outputs).
        needed: usize,
        /// The budget in force.
        budget: usize,
    },
    /// A parameter is out of its domain (negative scale, softcap ≤ 0, wrong number of slopes...).
    #[error("{op}: invalid parameter {name}: {detail}")]
    InvalidParam {
        /// The operation.
        op: &'static str,
        /// The parameter name as in [`crate::Params`].
        name: &'static str,
        /// Why it is invalid.
        detail: String,
    },
    /// The mask does not fit the problem (lengths that do not add up, wrong dense shape...).
    #[error("{op}: invalid mask: {detail}")]
    Mask {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A method was forced but cannot run this problem.
    #[error("method {method} cannot run this problem: {}", join_reasons(reasons))]
    Unsupported {
        /// The forced method.
        method: String,
        /// Every reason it gave.
        reasons: Vec<Reason>,
    },
    /// No registered method accepts the problem; each rejection is listed.
    #[error("no method accepts this problem:{}", rejected.iter().map(|(m, r)| format!("\n  {m}: {}", join_reasons(r))).collect::<String>())]
    NoMethod {
        /// `(method, reasons)` for every method tried, in priority order.
        rejected: Vec<(String, Vec<Reason>)>,
    },
    /// A method parameter key the method does not have.
    #[error("method {method} has no parameter {key:?}; its parameters: {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownParam {
        /// The method.
        method: String,
        /// The key given.
        key: String,
        /// The method's parameter keys.
        known: Vec<String>,
    },
    /// A method parameter value the method cannot take (or a spec item that is not `key=value`).
    #[error("method {method}: parameter {key} = {value:?}: {detail}")]
    BadParam {
        /// The method.
        method: String,
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What was expected.
        detail: String,
    },
    /// A method name that is not in the registry.
    #[error("unknown method {name:?}; known methods: {}", known.join(", "))]
    UnknownMethod {
        /// The name asked for.
        name: String,
        /// The registered names.
        known: Vec<String>,
    },
}

fn join_reasons(r: &[Reason]) -> String {
    r.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; ")
}
