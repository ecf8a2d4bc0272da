//! Parameters of an attention call, with documented defaults.

use crate::error::{Error, Result};
use crate::mask::{Mask, MaskGeometry};
use crate::problem::Problem;

/// What is computed, beyond the tensors. `Params::default()` is plain softmax attention with scale
/// `1/√D`, no mask, no softcap, no bias.
///
/// Scores are formed in this order, for query row `i` at position `p_i` and key `j`:
/// 1. `z = scale · q_i·k_j`
/// 2. with `softcap = c`: `z = c · tanh(z / c)` (Gemma-2 style logit capping)
/// 3. with ALiBi slopes `m`: `z = z − m_h · |p_i − j|` (for causal masks this is the usual
///    `−m_h·(i − j)`)
/// 4. keys the mask forbids get `z = −∞`
///
/// then `o_i = Σ_j softmax_j(z) v_j` and `lse_i = ln Σ_j exp(z_ij)` (natural log).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    /// Score scale; default `1/√D`.
    pub scale: Option<f32>,
    /// Logit soft-capping value `c > 0`; default none.
    pub softcap: Option<f32>,
    /// ALiBi slopes, one per query head (`H` values); default none.
    pub alibi_slopes: Option<Vec<f32>>,
    /// Which keys each query may see; default [`Mask::None`].
    pub mask: Mask,
    /// Absolute position of query row 0; default `S_kv − S_q` (prefill: 0, decode: `S_kv − 1`).
    pub q_offset: Option<i64>,
}

impl Params {
    /// Parameters with a causal mask and every other default.
    pub fn causal() -> Self {
        Self { mask: Mask::Causal, ..Self::default() }
    }

    /// Sets the mask (builder style).
    pub fn with_mask(mut self, mask: Mask) -> Self {
        self.mask = mask;
        self
    }

    /// Validates against the problem and fills in the defaults.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for a non-finite or non-positive scale, a softcap ≤ 0, slopes of
    /// the wrong count or non-finite; [`Error::Mask`] when the mask does not fit.
    pub fn resolve(&self, p: &Problem) -> Result<Resolved> {
        const OP: &str = "Params::resolve";
        let scale = self.scale.unwrap_or(1.0 / (p.d as f32).sqrt());
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::InvalidParam {
                op: OP,
                name: "scale",
                detail: format!("{scale} must be finite and > 0"),
            });
        }
        if let Some(c) = self.softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidParam {
                    op: OP,
                    name: "softcap",
                    detail: format!("{c} must be finite and > 0"),
                });
            }
        }
        if let Some(s) = &self.alibi_slopes {
            if s.len() != p.h {
                return Err(Error::InvalidParam {
                    op: OP,
                    name: "alibi_slopes",
                    detail: format!("{} slopes for H = {} query heads", s.len(), p.h),
                });
            }
            if let Some(x) = s.iter().find(|x| !x.is_finite()) {
                return Err(Error::InvalidParam {
                    op: OP,
                    name: "alibi_slopes",
                    detail: format!("slope {x} is not finite"),
                });
            }
        }
        let q_offset = self.q_offset.unwrap_or(p.s_kv as i64 - p.s_q as i64);
        if q_offset.unsigned_abs() > crate::mask::MAX_Q_OFFSET as u64 {
            return Err(Error::InvalidParam {
                op: OP,
                name: "q_offset",
                detail: format!("{q_offset} is beyond ±2^53"),
            });
        }
        let geometry = MaskGeometry { b: p.b, h: p.h, s_q: p.s_q, s_kv: p.s_kv, q_offset };
        self.mask.validate(&geometry)?;
        Ok(Resolved {
            scale,
            softcap: self.softcap,
            alibi_slopes: self.alibi_slopes.clone(),
            mask: self.mask.clone(),
            geometry,
        })
    }
}

/// [`Params`] with defaults filled in and validated against a [`Problem`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Score scale.
    pub scale: f32,
    /// Softcap, if any.
    pub softcap: Option<f32>,
    /// ALiBi slopes (`H` of them), if any.
    pub alibi_slopes: Option<Vec<f32>>,
    /// The mask.
    pub mask: Mask,
    /// Geometry for mask evaluation (includes the resolved `q_offset`).
    pub geometry: MaskGeometry,
}

impl Resolved {
    /// ALiBi slope of query head `h` (0 without ALiBi).
    #[inline]
    pub fn slope(&self, h: usize) -> f32 {
        self.alibi_slopes.as_ref().map_or(0.0, |s| s[h])
    }

    /// Absolute position of query row `i`.
    #[inline]
    pub fn position(&self, i: usize) -> i64 {
        self.geometry.q_offset + i as i64
    }
}
