//! Comparing outputs with the f64 oracle: [`Report`] (how far) and [`Oracle::check`] (the
//! acceptance rule for exact methods, STYLE rule 3).
//!
//! The rule is flash-attention's: the fast output may be at most `factor` (2) times as far from
//! the f64 oracle as a same-precision naive run ([`crate::naive`]) is, plus a floor for cases where
//! the naive run happens to be nearly exact. Accumulation in the library is f32 whatever the input
//! dtype, so the same-precision run is f32 on the widened inputs for f16 and bf16 as well. Fully
//! masked rows must agree exactly: `lse = −∞` and `o = 0`.

use attn::methods::sdpa::reference;
use attn::{Inputs, Problem, Resolved};

/// How far a result is from the oracle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Largest absolute difference (infinite where exactly one side is non-finite or `got` is NaN).
    pub max_abs: f64,
    /// `‖got − want‖₂ / ‖want‖₂` over the elements where the oracle is finite.
    pub rel_rms: f64,
    /// `[b, h, s, d]` of the largest difference (`d = 0` for log-sum-exp rows).
    pub worst: [usize; 4],
    /// Value at the worst index.
    pub got: f64,
    /// Oracle value at the worst index.
    pub want: f64,
    /// Elements compared.
    pub count: usize,
}

impl Report {
    /// Compares `got` with `want`, both row-major of `shape` (`[B, H, S, D]`; `[B, H, S, 1]` for
    /// log-sum-exp). Equal values (including equal infinities) count as no error.
    pub fn compare(got: &[f32], want: &[f64], shape: [usize; 4]) -> Report {
        assert_eq!(got.len(), want.len(), "Report::compare: lengths differ");
        assert_eq!(got.len(), shape.iter().product::<usize>(), "Report::compare: shape");
        let mut r = Report {
            max_abs: 0.0,
            rel_rms: 0.0,
            worst: [0; 4],
            got: f64::NAN,
            want: f64::NAN,
            count: got.len(),
        };
        let (mut num, mut den) = (0.0f64, 0.0f64);
        let mut worst_flat = None;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let g = g as f64;
            let e = if g == w {
                0.0
            } else if g.is_finite() && w.is_finite() {
                (g - w).abs()
            } else {
                f64::INFINITY
            };
            if worst_flat.is_none() || e > r.max_abs {
                r.max_abs = e;
                r.got = g;
                r.want = w;
                worst_flat = Some(i);
            }
            if w.is_finite() {
                num += e * e;
                den += w * w;
            }
        }
        r.rel_rms = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
        r.worst = unravel(worst_flat.unwrap_or(0), shape);
        r
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max_abs {:.3e}, rel_rms {:.3e} over {} elements; worst at [b,h,s,d] = {:?}: got {:e}, want {:e}",
            self.max_abs, self.rel_rms, self.count, self.worst, self.got, self.want
        )
    }
}

/// `[b, h, s, d]` of a flat row-major index.
pub fn unravel(mut i: usize, shape: [usize; 4]) -> [usize; 4] {
    let mut idx = [0; 4];
    for k in (0..4).rev() {
        let n = shape[k].max(1);
        idx[k] = i % n;
        i /= n;
    }
    idx
}

/// The acceptance rule for exact methods: `err(fast) ≤ factor · err(naive) + floor` in max-abs,
/// separately for the output and the log-sum-exp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Multiplier of the naive run's error (2 in the flash-attention rule).
    pub factor: f64,
    /// Absolute floor for the output (`|v| ≤ 1` in the grid: ~8 f32 ulps at 1).
    pub o_floor: f64,
    /// Floor for the log-sum-exp, relative to `max(1, max |lse|)` (4 f32 ulps of the largest
    /// value: lse is a sum of the row maximum and a logarithm, each rounded once or twice).
    pub lse_floor_rel: f64,
}

impl Tolerance {
    /// Fast path of an approximate method against its own reference (same support, f32 tiles vs
    /// f64 loops rounded to f32): absolute 2e-5 on `o` (`|v| ≤ 1`), 1e-5 relative on `lse`.
    pub const VS_REFERENCE: Tolerance =
        Tolerance { factor: 0.0, o_floor: 2e-5, lse_floor_rel: 1e-5 };
}

impl Default for Tolerance {
    fn default() -> Self {
        Self { factor: 2.0, o_floor: 1e-6, lse_floor_rel: 4.0 * f32::EPSILON as f64 }
    }
}

/// What a result is checked against: the f64 oracle and the naive f32 run's distance from it.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// `[B, H, S_q, D_v]` in f64.
    pub o: Vec<f64>,
    /// `[B, H, S_q]` in f64 (`−∞` for fully masked rows).
    pub lse: Vec<f64>,
    /// The naive f32 run's output against `o`.
    pub naive_o: Report,
    /// The naive f32 run's log-sum-exp against `lse`.
    pub naive_lse: Report,
    /// The problem.
    pub problem: Problem,
}

impl Oracle {
    /// Computes the oracle ([`reference::forward_f64`]) and the naive f32 run.
    pub fn new(p: &Problem, inputs: &Inputs, params: &Resolved) -> Self {
        let (o, lse) = reference::forward_f64(p, inputs, params);
        let (no, nl) = crate::naive::forward_f32(p, inputs, params);
        let naive_o = Report::compare(&no, &o, o_shape(p));
        let naive_lse = Report::compare(&nl, &lse, lse_shape(p));
        Self { o, lse, naive_o, naive_lse, problem: *p }
    }

    /// An oracle made of another implementation's f32 result (an approximate method's own
    /// reference): the naive error is taken as 0, so the tolerance floors are the whole bound
    /// (use [`Tolerance::VS_REFERENCE`]).
    pub fn from_reference(p: &Problem, o: &[f32], lse: &[f32]) -> Self {
        let zero =
            |n| Report { max_abs: 0.0, rel_rms: 0.0, worst: [0; 4], got: 0.0, want: 0.0, count: n };
        Self {
            o: o.iter().map(|&x| x as f64).collect(),
            lse: lse.iter().map(|&x| x as f64).collect(),
            naive_o: zero(o.len()),
            naive_lse: zero(lse.len()),
            problem: *p,
        }
    }

    /// Checks a result: no NaN, fully masked rows exact, output and log-sum-exp within the rule.
    ///
    /// # Errors
    /// A message naming every violated condition with its [`Report`]s.
    pub fn check(&self, o: &[f32], lse: &[f32], tol: &Tolerance) -> Result<(), String> {
        let p = &self.problem;
        if o.len() != p.out_len() || lse.len() != p.lse_len() {
            return Err(format!("output lengths {} / {} for {}", o.len(), lse.len(), p.label()));
        }
        let mut errs = Vec::new();
        if let Some(i) = o.iter().position(|x| x.is_nan()) {
            errs.push(format!(
                "o is NaN at {:?} (unwritten poison or computed NaN)",
                unravel(i, o_shape(p))
            ));
        }
        if let Some(i) = lse.iter().position(|x| x.is_nan()) {
            errs.push(format!(
                "lse is NaN at {:?} (unwritten poison or computed NaN)",
                unravel(i, lse_shape(p))
            ));
        }
        for (r, (&want, &got)) in self.lse.iter().zip(lse).enumerate() {
            let row = &o[r * p.d_v..(r + 1) * p.d_v];
            if want == f64::NEG_INFINITY {
                if got != f32::NEG_INFINITY || row.iter().any(|&x| x != 0.0) {
                    errs.push(format!(
                        "fully masked row {:?}: lse {got} (want −∞), o[..4] {:?} (want 0)",
                        unravel(r, lse_shape(p)),
                        &row[..row.len().min(4)]
                    ));
                    break;
                }
            } else if got == f32::NEG_INFINITY {
                errs.push(format!(
                    "row {:?} has allowed keys (lse {want}) but got lse −∞",
                    unravel(r, lse_shape(p))
                ));
                break;
            }
        }
        let ro = Report::compare(o, &self.o, o_shape(p));
        let bound = tol.factor * self.naive_o.max_abs + tol.o_floor;
        if ro.max_abs > bound {
            errs.push(format!(
                "o: error above {} × naive + {:.1e} = {bound:.3e}\n    fast:  {ro}\n    naive: {}",
                tol.factor, tol.o_floor, self.naive_o
            ));
        }
        let rl = Report::compare(lse, &self.lse, lse_shape(p));
        let big = self.lse.iter().filter(|x| x.is_finite()).fold(1.0f64, |a, x| a.max(x.abs()));
        let bound = tol.factor * self.naive_lse.max_abs + tol.lse_floor_rel * big;
        if rl.max_abs > bound {
            errs.push(format!(
                "lse: error above {} × naive + {:.1e} = {bound:.3e}\n    fast:  {rl}\n    naive: {}",
                tol.factor,
                tol.lse_floor_rel * big,
                self.naive_lse
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("\n  "))
        }
    }
}

/// `[B, H, S_q, D_v]`.
pub fn o_shape(p: &Problem) -> [usize; 4] {
    [p.b, p.h, p.s_q, p.d_v]
}

/// `[B, H, S_q, 1]`.
pub fn lse_shape(p: &Problem) -> [usize; 4] {
    [p.b, p.h, p.s_q, 1]
}

/// First index where two f32 buffers differ bitwise, if any.
pub fn first_bit_difference(a: &[f32], b: &[f32]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits())
}

/// `max |a − b| / max(max |b|, 1e-30)`: the largest error relative to the largest reference value
/// (the "1e-5 relative" of the linear-family issue).
///
/// # Panics
/// When the lengths differ.
pub fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs())).max(1e-30);
    let err = a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    err / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_finds_the_worst_index() {
        let want = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let got = [1.0, 2.0, 3.5, 4.0, 5.0, 6.1];
        let r = Report::compare(&got, &want, [1, 2, 3, 1]);
        assert_eq!(r.worst, [0, 0, 2, 0]);
        assert_eq!((r.got, r.want), (3.5, 3.0));
        assert!((r.max_abs - 0.5).abs() < 1e-12);
        let rms = ((0.25 + (6.1f32 as f64 - 6.0).powi(2)) / 91.0).sqrt();
        assert!((r.rel_rms - rms).abs() < 1e-9);
        let s = r.to_string();
        assert!(
            s.contains("max_abs") && s.contains("rel_rms") && s.contains("[0, 0, 2, 0]"),
            "{s}"
        );
    }

    #[test]
    fn report_treats_nan_and_infinity_mismatch_as_infinite() {
        let r = Report::compare(&[1.0, f32::NAN], &[1.0, 2.0], [1, 1, 1, 2]);
        assert_eq!(r.max_abs, f64::INFINITY);
        assert_eq!(r.worst, [0, 0, 0, 1]);
        let r = Report::compare(&[f32::NEG_INFINITY], &[f64::NEG_INFINITY], [1, 1, 1, 1]);
        assert_eq!(r.max_abs, 0.0);
        let r = Report::compare(&[0.0], &[f64::NEG_INFINITY], [1, 1, 1, 1]);
        assert_eq!(r.max_abs, f64::INFINITY);
    }

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel(0, [2, 3, 4, 5]), [0, 0, 0, 0]);
        assert_eq!(unravel(119, [2, 3, 4, 5]), [1, 2, 3, 4]);
        assert_eq!(unravel(5 * 4 + 7, [2, 3, 4, 5]), [0, 1, 1, 2]);
    }
}
