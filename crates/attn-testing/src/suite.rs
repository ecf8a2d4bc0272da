//! The conformance suite: one implementation against the f64 oracle on the shared grid, at every
//! SIMD level the machine has and with one and several threads, into NaN-poisoned outputs.

use crate::cases::{grid, Case};
use crate::close::{Report, Tolerance};
use crate::poison::nan_buffer;
use attn::methods::sdpa::reference;
use attn::primitives::simd::{with_level, Level};
use attn::{prepare, Method, OutputMut, Par, Prefs, Problem};

/// What one suite run covered.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    /// Cases run.
    pub cases: usize,
    /// Cases the method declared it cannot run.
    pub rejected: usize,
    /// Individual calls (cases × levels × thread counts).
    pub calls: usize,
}

/// Runs `method` on every case of [`grid`] it accepts and panics with a full report on the first
/// case outside tolerance. Returns what was covered (asserting at least one case ran).
pub fn run_suite(method: &dyn Method) -> Coverage {
    run_cases(method, &grid())
}

/// [`run_suite`] over a given list of cases.
pub fn run_cases(method: &dyn Method, cases: &[Case]) -> Coverage {
    let mut cov = Coverage::default();
    let levels = if method.is_reference() { vec![Level::detected()] } else { Level::available() };
    for case in cases {
        let data = case.data();
        let inputs = data.inputs();
        let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).expect("case problem");
        if !method.unsupported(&p, &case.params).is_empty() {
            cov.rejected += 1;
            continue;
        }
        cov.cases += 1;
        let resolved = case.params.resolve(&p).expect("case params");
        let (want_o, want_lse) = reference::forward_f64(&p, &inputs, &resolved);
        let (naive_o, naive_lse) = crate::naive::forward_f32(&p, &inputs, &resolved);
        let naive_o = Report::new(&naive_o, &want_o);
        let naive_lse = Report::new(&naive_lse, &want_lse);
        for &level in &levels {
            for par in [Par::Seq, Par::Rayon(2), Par::Rayon(3)] {
                cov.calls += 1;
                let prefs =
                    Prefs { method: Some(method.name().to_string()), par, ..Prefs::default() };
                let prepared = prepare(&inputs, &case.params, &prefs)
                    .unwrap_or_else(|e| panic!("{}: prepare failed: {e}", case.name()));
                let mut o = nan_buffer(p.out_len());
                let mut lse = nan_buffer(p.lse_len());
                with_level(level, || {
                    prepared.run(&inputs, par, OutputMut { o: &mut o, lse: &mut lse })
                })
                .unwrap_or_else(|e| panic!("{}: run failed: {e}", case.name()));
                let ctx = || {
                    format!("{} {} at {} with {:?}", method.name(), case.name(), level.name(), par)
                };
                // Fully masked rows: exactly o = 0 and lse = −∞.
                for (r, &l) in want_lse.iter().enumerate() {
                    if l == f64::NEG_INFINITY {
                        assert_eq!(
                            lse[r],
                            f32::NEG_INFINITY,
                            "{}: fully masked row {r} has lse {}",
                            ctx(),
                            lse[r]
                        );
                        let row = &o[r * p.d_v..(r + 1) * p.d_v];
                        assert!(
                            row.iter().all(|&x| x == 0.0),
                            "{}: fully masked row {r} is not 0: {row:?}",
                            ctx()
                        );
                    }
                }
                let ro = Report::new(&o, &want_o);
                let bound = Tolerance::EXACT_F32.bound(&naive_o);
                assert!(
                    ro.max_abs <= bound,
                    "{}: output error above 2 × naive f32 + 1e-6 = {bound:.3e}\n  fast:  {}\n  naive: {}",
                    ctx(),
                    ro.describe(&[p.b, p.h, p.s_q, p.d_v]),
                    naive_o.describe(&[p.b, p.h, p.s_q, p.d_v])
                );
                let rl = Report::new(&lse, &want_lse);
                let bound = Tolerance::LSE_F32.bound(&naive_lse);
                assert!(
                    rl.max_abs <= bound,
                    "{}: lse error above {bound:.3e}\n  fast:  {}\n  naive: {}",
                    ctx(),
                    rl.describe(&[p.b, p.h, p.s_q]),
                    naive_lse.describe(&[p.b, p.h, p.s_q])
                );
            }
        }
    }
    assert!(cov.cases > 0, "{} accepted no case of the grid", method.name());
    cov
}
