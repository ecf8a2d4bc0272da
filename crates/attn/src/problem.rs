//! The shape of an attention call, derived from its tensors and validated once.

use crate::error::{Error, Result};
use crate::tensor::{DType, TensorRef};

/// Dimensions of one attention call (the library's dimension vocabulary).
///
/// `q: [B, H, S_q, D]`, `k: [B, H_kv, S_kv, D]`, `v: [B, H_kv, S_kv, D_v]`,
/// output `o: [B, H, S_q, D_v]`, `lse: [B, H, S_q]`. Query head `h` reads key/value head
/// `h / (H / H_kv)` (MHA when `H_kv = H`, GQA in between, MQA when `H_kv = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Problem {
    /// Batch size.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// Key/value heads; divides `h`.
    pub h_kv: usize,
    /// Query rows.
    pub s_q: usize,
    /// Keys.
    pub s_kv: usize,
    /// Query/key head dimension.
    pub d: usize,
    /// Value head dimension.
    pub d_v: usize,
    /// Element type shared by q, k and v.
    pub dtype: DType,
}

impl Problem {
    /// Derives and validates the problem from the three inputs.
    ///
    /// # Errors
    /// [`Error::Empty`] for a zero dimension, [`Error::HeadGroups`] when `H_kv ∤ H`,
    /// [`Error::Shape`] for any other disagreement (batch, lengths, head dims, dtypes).
    pub fn from_tensors(q: &TensorRef, k: &TensorRef, v: &TensorRef) -> Result<Self> {
        const OP: &str = "attend";
        let [b, h, s_q, d] = q.shape();
        let [bk, h_kv, s_kv, dk] = k.shape();
        let [bv, hv, sv, d_v] = v.shape();
        for (dim, n) in [
            ("B", b),
            ("H", h),
            ("S_q", s_q),
            ("D", d),
            ("H_kv", h_kv),
            ("S_kv", s_kv),
            ("D_v", d_v),
        ] {
            if n == 0 {
                return Err(Error::Empty { op: OP, dim });
            }
        }
        let shape_err = |detail: String| Err(Error::Shape { op: OP, detail });
        if bk != b || bv != b {
            return shape_err(format!("batch sizes differ: q {b}, k {bk}, v {bv}"));
        }
        if hv != h_kv || sv != s_kv {
            return shape_err(format!(
                "k is [B, {h_kv}, {s_kv}, D] but v is [B, {hv}, {sv}, D_v]; heads and lengths must agree"
            ));
        }
        if dk != d {
            return shape_err(format!("q has head dim D = {d} but k has {dk}"));
        }
        if h % h_kv != 0 {
            return Err(Error::HeadGroups { op: OP, h, h_kv });
        }
        if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
            return shape_err(format!(
                "dtypes differ: q {}, k {}, v {}",
                q.dtype(),
                k.dtype(),
                v.dtype()
            ));
        }
        Ok(Self { b, h, h_kv, s_q, s_kv, d, d_v, dtype: q.dtype() })
    }

    /// Query heads per key/value head, `g = H / H_kv`.
    pub fn group(&self) -> usize {
        self.h / self.h_kv
    }

    /// Elements of the output `[B, H, S_q, D_v]`.
    pub fn out_len(&self) -> usize {
        self.b * self.h * self.s_q * self.d_v
    }

    /// Elements of the log-sum-exp `[B, H, S_q]`.
    pub fn lse_len(&self) -> usize {
        self.b * self.h * self.s_q
    }

    /// Nominal FLOPs: `2·B·H·S_q·S_kv·(D + D_v)` (QKᵀ and PV), which is `4·B·H·S_q·S_kv·D` when
    /// `D_v = D`. Callers halve it for causal masks, by convention.
    pub fn flops(&self) -> f64 {
        2.0 * (self.b * self.h) as f64
            * self.s_q as f64
            * self.s_kv as f64
            * (self.d + self.d_v) as f64
    }

    /// Shape label used by benches and test ids, e.g. `b1_h8x2_sq512_skv512_d64`.
    pub fn label(&self) -> String {
        let heads = if self.h_kv == self.h {
            format!("h{}", self.h)
        } else {
            format!("h{}x{}", self.h, self.h_kv)
        };
        let dv = if self.d_v == self.d { String::new() } else { format!("_dv{}", self.d_v) };
        format!("b{}_{heads}_sq{}_skv{}_d{}{dv}", self.b, self.s_q, self.s_kv, self.d)
    }
}
