//! Axis ranges and tick marks chosen here rather than by plotters, so that linear and
//! logarithmic axes share one coordinate type (a logarithmic axis is linear in `log10 v`) and
//! the ticks land on round numbers (1, 2, 5 × 10^k).

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};

/// One axis: its range and ticks in plot space (`log10 v` when logarithmic).
#[derive(Debug, Clone)]
pub(super) struct Axis {
    /// Lower end, plot space.
    pub lo: f64,
    /// Upper end, plot space.
    pub hi: f64,
    /// Whether plot space is `log10` of the value.
    pub log: bool,
    /// Tick positions, plot space.
    pub ticks: Vec<f64>,
    /// Text after each tick label (`×`).
    suffix: &'static str,
    /// Step of linear ticks (for their labels' precision).
    step: f64,
}

/// A round step near `span / target`: 1, 2, 2.5 or 5 × 10^k.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 2.5 {
        2.5
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A tick value with at most 3 significant digits and no trailing zeros; scientific outside
/// [1e-4, 1e5).
pub(super) fn tick_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() { "0".into() } else { format!("{v}") };
    }
    let a = v.abs();
    if !(1e-4..1e5).contains(&a) {
        let e = a.log10().floor();
        let m = v / 10f64.powf(e);
        let m = (m * 100.0).round() / 100.0;
        return format!("{}e{}", trim(&format!("{m:.2}")), e as i32);
    }
    let mag = a.log10().floor() as i32;
    let dec = (2 - mag).max(0) as usize;
    trim(&format!("{v:.dec$}"))
}

fn trim(s: &str) -> String {
    if s.contains('.') {
        let t = s.trim_end_matches('0').trim_end_matches('.');
        if t == "-0" {
            "0".into()
        } else {
            t.to_string()
        }
    } else {
        s.to_string()
    }
}

impl Axis {
    /// An axis covering `values` and `include` (non-finite values and, on a log axis,
    /// non-positive ones are ignored), padded by 8 % of the span on each side.
    pub fn fit(values: &[f64], include: &[f64], log: bool, suffix: &'static str) -> Self {
        let map = |v: f64| if log { v.log10() } else { v };
        let usable: Vec<f64> = values
            .iter()
            .chain(include)
            .copied()
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .map(map)
            .collect();
        let (mut lo, mut hi) = usable
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if !lo.is_finite() || !hi.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        let span = hi - lo;
        let pad = if span > 0.0 {
            0.08 * span
        } else if log {
            0.25
        } else if lo != 0.0 {
            0.12 * lo.abs()
        } else {
            1.2
        };
        let (lo, hi) = (lo - pad, hi + pad);
        let mut a = Axis { lo, hi, log, ticks: Vec::new(), suffix, step: 0.0 };
        a.ticks = if log { a.log_ticks() } else { a.linear_ticks(6.0) };
        a
    }

    /// An axis from `lo` to `hi` (values, not plot space) without padding.
    pub fn spanning(lo: f64, hi: f64, log: bool, target: f64) -> Self {
        let map = |v: f64| if log { v.log10() } else { v };
        let mut a =
            Axis { lo: map(lo), hi: map(hi), log, ticks: Vec::new(), suffix: "", step: 0.0 };
        a.ticks = if log { a.log_ticks() } else { a.linear_ticks(target) };
        a
    }

    fn linear_ticks(&mut self, target: f64) -> Vec<f64> {
        let step = nice_step(self.hi - self.lo, target);
        self.step = step;
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step).floor() as i64;
        (first..=last).take(100).map(|k| k as f64 * step).collect()
    }

    fn log_ticks(&mut self) -> Vec<f64> {
        let span = self.hi - self.lo;
        let mantissas: &[f64] = if span <= 0.8 {
            &[1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0]
        } else if span <= 1.6 {
            &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0]
        } else if span <= 3.2 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let every = if span > 8.0 { 2 } else { 1 };
        let mut v = Vec::new();
        let (d0, d1) = (self.lo.floor() as i64, self.hi.ceil() as i64);
        for d in (d0..=d1).filter(|d| d.rem_euclid(every) == 0) {
            for m in mantissas {
                let p = d as f64 + m.log10();
                if p >= self.lo && p <= self.hi {
                    v.push(p);
                }
            }
        }
        v
    }

    /// `v` in plot space.
    pub fn map(&self, v: f64) -> f64 {
        if self.log {
            v.log10()
        } else {
            v
        }
    }

    /// The label of a tick at plot-space position `p`.
    pub fn label(&self, p: f64) -> String {
        let v = if self.log { 10f64.powf(p) } else { p };
        let s = if self.log || self.step <= 0.0 {
            tick_value(v)
        } else {
            let a = self.step.abs();
            if a < 1e-4 || v.abs() >= 1e5 {
                tick_value(v)
            } else {
                let mut dec = (-a.log10().floor()).max(0.0) as usize;
                // Steps like 0.25 need one more decimal than their magnitude says.
                if ((a / 10f64.powf(a.log10().floor())) - 2.5).abs() < 1e-9 {
                    dec += 1;
                }
                trim(&format!("{v:.dec$}"))
            }
        };
        format!("{s}{}", self.suffix)
    }

    /// The plotters coordinate of this axis.
    pub fn range(&self) -> Ticked {
        Ticked { lo: self.lo, hi: self.hi, ticks: self.ticks.clone() }
    }
}

/// A linear f64 coordinate from `lo` to `hi` whose tick marks are given (plotters' own f64
/// coordinate picks its ticks itself, and its wrapper with given ticks cannot take a label
/// formatter).
#[derive(Debug, Clone)]
pub(super) struct Ticked {
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// Tick positions.
    pub ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value - self.lo) / (self.hi - self.lo);
        let len = f64::from(limit.1 - limit.0);
        if !t.is_finite() {
            return limit.0;
        }
        // Far-off values are clamped well outside the area instead of overflowing.
        limit.0 + (len * t.clamp(-10.0, 10.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}
