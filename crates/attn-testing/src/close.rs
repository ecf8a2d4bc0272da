//! Comparing outputs with an f64 oracle, and derived tolerances.

/// How far a result is from the oracle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Largest absolute difference.
    pub max_abs: f64,
    /// `‖got − want‖ / ‖want‖` (RMS ratio).
    pub rel_rms: f64,
    /// Flat index of the largest difference.
    pub worst: usize,
    /// Value at the worst index.
    pub got: f64,
    /// Oracle value at the worst index.
    pub want: f64,
}

impl Report {
    /// Compares `got` with `want`; non-finite values where the oracle is finite count as an
    /// infinite error (so NaN poison left unwritten fails).
    pub fn new(got: &[f32], want: &[f64]) -> Report {
        assert_eq!(got.len(), want.len(), "Report::new: lengths differ");
        let mut r = Report { max_abs: 0.0, rel_rms: 0.0, worst: 0, got: 0.0, want: 0.0 };
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let g = g as f64;
            let e = if g == w {
                0.0
            } else if g.is_finite() && w.is_finite() {
                (g - w).abs()
            } else {
                f64::INFINITY
            };
            if e > r.max_abs || (e.is_nan()) {
                r = Report { max_abs: e, worst: i, got: g, want: w, ..r };
            }
            if e.is_finite() {
                num += e * e;
            } else {
                num = f64::INFINITY;
            }
            if w.is_finite() {
                den += w * w;
            }
        }
        r.rel_rms = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
        r
    }

    /// The worst index unravelled for a row-major shape.
    pub fn worst_index(&self, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        let mut rest = self.worst;
        for (k, &n) in shape.iter().enumerate().rev() {
            idx[k] = rest % n.max(1);
            rest /= n.max(1);
        }
        idx
    }

    /// One line for failure messages.
    pub fn describe(&self, shape: &[usize]) -> String {
        format!(
            "max_abs {:.3e}, rel_rms {:.3e}, worst at {:?}: got {} want {}",
            self.max_abs,
            self.rel_rms,
            self.worst_index(shape),
            self.got,
            self.want
        )
    }
}

/// The acceptance rule for exact methods: `err(fast) ≤ factor · err(naive same precision) + floor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Multiplier of the naive run's error (2 in the flash-attention rule).
    pub factor: f64,
    /// Absolute floor, for cases where the naive run happens to be nearly exact.
    pub floor: f64,
}

impl Tolerance {
    /// The rule for f32 outputs: factor 2, floor 1e-6.
    pub const EXACT_F32: Tolerance = Tolerance { factor: 2.0, floor: 1e-6 };
    /// The rule for log-sum-exp values (magnitudes up to ~10): factor 2, floor 1e-5.
    pub const LSE_F32: Tolerance = Tolerance { factor: 2.0, floor: 1e-5 };

    /// The largest max-abs error accepted, given the naive run's report.
    pub fn bound(&self, naive: &Report) -> f64 {
        self.factor * naive.max_abs + self.floor
    }
}
