//! The conformance suite: one implementation on the shared grid, at every SIMD level the machine
//! has and at several thread counts, into NaN-poisoned outputs, against the f64 oracle.
//!
//! For every case of the grid:
//! 1. if the method declares it cannot run the case ([`Method::unsupported`]), forcing it by name
//!    must fail with [`Error::Unsupported`] carrying the same reasons — then the case is skipped;
//! 2. otherwise, for every level of [`Level::available`] (entered with [`with_level`]) and every
//!    [`Par`] of the configuration, the method is forced by name (`Prefs::method`), run through
//!    [`crate::poison::run_poisoned`] and checked with [`Oracle::check`]: exact methods against
//!    the f64 oracle with [`SuiteConfig::tolerance`], approximate methods against the reference of
//!    their family (same support, [`Tolerance::VS_REFERENCE`]);
//! 3. exact methods must report [`Stats::exact`] (the pairs their mask allows), approximate ones
//!    the same count as their reference, [`Exactness::NotSoftmax`] ones (linear / recurrent
//!    attention, also held to their family's reference) at most the pairs the mask allows;
//! 4. results at one level must be bitwise identical across thread counts, unless the method is
//!    listed in [`THREAD_DEPENDENT`] (its work split depends on the thread count by design): then
//!    each thread count is checked against the oracle alone, and repeating a call with the same
//!    thread count must be bitwise identical.
//!
//! Every failure is collected; the suite panics at the end with all of them (the first
//! [`MAX_SHOWN`] in full).

use crate::cases::{grid, Case};
use crate::close::{first_bit_difference, Oracle, Tolerance};
use crate::poison::run_poisoned_in;
use attn::primitives::simd::{with_level, Level};
use attn::{prepare_in, registry, Error, Exactness, Method, Par, Prefs, Problem, Registry, Stats};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Implementations whose result legitimately depends on the thread count, with the reason.
pub const THREAD_DEPENDENT: &[(&str, &str)] = &[(
    "sdpa-decode",
    "the keys are split into chunks whose count depends on Par::threads(), and the partials are \
     merged in that order",
)];

/// Implementations with no SIMD-level dispatch (no call into `attn::primitives::simd`): at every
/// [`Level`] they run the same instructions, so [`SuiteConfig::for_method`] runs them at
/// [`Level::current`] only. The linear-family engines (`attn::linear`) are plain loops the compiler
/// vectorises for the build target; an implementation that starts dispatching must leave this list.
pub const LEVEL_INDEPENDENT: &[(&str, &str)] = &[
    ("linear", "attn::linear::vanilla: plain loops"),
    ("linear-recurrent", "attn::linear::vanilla: plain loops"),
    ("gated-deltanet", "attn::linear::delta: plain loops"),
    ("gated-deltanet-recurrent", "attn::linear::delta: plain loops"),
    ("kda", "attn::linear::delta: plain loops"),
    ("kda-recurrent", "attn::linear::delta: plain loops"),
    ("transnormer", "attn::linear::vanilla and transnormer::diag: plain loops"),
    ("transnormer-recurrent", "attn::linear::vanilla and transnormer::diag: plain loops"),
    ("titans-memory-recurrent", "methods::titans_memory: plain loops"),
];

/// Implementations whose work per token grows with `D²` (a memory MLP read and written at every
/// token), with the reason. [`SuiteConfig::for_method`] runs them on the grid cases whose
/// `B·H·S_kv·D·D_v` is at most [`HEAVY_WORK_CAP`]: that drops only the case that fills
/// `sdpa-flash`'s K/V packing groups (2 × 20 heads × 1000 keys at D = 256), which alone took two
/// thirds of their time (f64 reference plus three thread counts), and exercises nothing of theirs.
/// Their forms are also checked against each other up to S = 4096 in `tests/titans.rs`.
pub const HEAVY: &[(&str, &str)] = &[
    ("titans-memory", "2-layer memory MLP, hidden 2·D, a gradient step per chunk"),
    ("titans-memory-recurrent", "2-layer memory MLP, hidden 2·D, a gradient step per token"),
    ("titans-memory-reference", "2-layer memory MLP in f64 plain loops, per token"),
];

/// The largest `B·H·S_kv·D·D_v` of a case run for a [`HEAVY`] implementation.
pub const HEAVY_WORK_CAP: usize = 1 << 30;

/// Failures printed in full by the final panic.
pub const MAX_SHOWN: usize = 12;

/// What [`run_suite_with`] runs.
#[derive(Clone)]
pub struct SuiteConfig {
    /// The registry the method is forced from by name (default [`attn::registry`]).
    pub registry: Registry,
    /// The cases.
    pub cases: Vec<Case>,
    /// SIMD levels to run at.
    pub levels: Vec<Level>,
    /// Thread counts to run with.
    pub pars: Vec<Par>,
    /// Results must be bitwise equal across `pars`.
    pub thread_invariant: bool,
    /// The acceptance rule.
    pub tolerance: Tolerance,
    /// Fail when the method accepts no case (off when `ATTN_CASE_FILTER` narrows the grid).
    pub require_accepted: bool,
}

impl SuiteConfig {
    /// The configuration for `m`: the grid in force (restricted to case names containing
    /// `ATTN_CASE_FILTER` when set), every available level (the current one only for
    /// [`LEVEL_INDEPENDENT`] implementations) and `Seq`, `Rayon(2)`, `Rayon(3)`; [`HEAVY`]
    /// implementations get the cases within [`HEAVY_WORK_CAP`].
    /// References (plain loops, no SIMD, no threads by contract) run once, sequentially.
    pub fn for_method(m: &dyn Method) -> Self {
        let filter = std::env::var("ATTN_CASE_FILTER").ok();
        let heavy = HEAVY.iter().any(|(n, _)| *n == m.name());
        let cases = grid()
            .into_iter()
            .filter(|c| filter.as_ref().is_none_or(|f| c.name().contains(f.as_str())))
            .filter(|c| !heavy || c.b * c.h * c.s_kv * c.d * c.d_v <= HEAVY_WORK_CAP)
            .collect();
        let (levels, pars) = if m.is_reference() {
            (vec![Level::current()], vec![Par::Seq])
        } else if LEVEL_INDEPENDENT.iter().any(|(n, _)| *n == m.name()) {
            (vec![Level::current()], vec![Par::Seq, Par::Rayon(2), Par::Rayon(3)])
        } else {
            (Level::available(), vec![Par::Seq, Par::Rayon(2), Par::Rayon(3)])
        };
        Self {
            registry: registry(),
            cases,
            levels,
            pars,
            thread_invariant: !THREAD_DEPENDENT.iter().any(|(n, _)| *n == m.name()),
            tolerance: Tolerance::default(),
            require_accepted: filter.is_none(),
        }
    }
}

/// What a suite run covered.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    /// Cases run.
    pub cases: usize,
    /// Cases the method declared it cannot run.
    pub rejected: usize,
    /// Calls made (cases × levels × thread counts, plus repeats).
    pub calls: usize,
    /// (case, level) pairs whose results differed bitwise between thread counts (only for
    /// [`THREAD_DEPENDENT`] methods; for others that is a failure).
    pub thread_dependent: usize,
}

/// Runs `method` with [`SuiteConfig::for_method`]; see the module doc.
///
/// # Panics
/// With every failure when any case fails, or when the method accepts no case.
pub fn run_suite(method: &dyn Method) -> Coverage {
    run_suite_with(method, &SuiteConfig::for_method(method))
}

/// Runs `method` with an explicit configuration; see the module doc.
///
/// # Panics
/// As [`run_suite`].
pub fn run_suite_with(method: &dyn Method, cfg: &SuiteConfig) -> Coverage {
    let name = method.name();
    let exact = method.exactness() == Exactness::Exact;
    // An approximate method is held to the reference of its family (STYLE 1.3).
    let own_reference = (!exact).then(|| {
        cfg.registry
            .methods()
            .iter()
            .copied()
            .find(|m| m.family() == method.family() && m.is_reference())
            .unwrap_or_else(|| panic!("{name}: approximate, but its family has no reference"))
    });
    let mut cov = Coverage::default();
    let mut failures = Vec::new();
    for case in &cfg.cases {
        let data = case.data();
        let inputs = data.inputs();
        let params = &data.params;
        let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).expect("valid case");
        let forced = |par| Prefs { method: Some(name.to_string()), par, ..Prefs::default() };
        let reasons = method.unsupported(&p, params);
        if !reasons.is_empty() {
            cov.rejected += 1;
            match prepare_in(cfg.registry, &inputs, params, &forced(Par::Seq)) {
                Err(Error::Unsupported { method: m, reasons: r }) if m == name && r == reasons => {}
                other => failures.push(format!(
                    "{name} {}: declares {reasons:?} but forcing it gave {other:?}",
                    case.name()
                )),
            }
            continue;
        }
        cov.cases += 1;
        let resolved = params.resolve(&p).expect("valid case");
        let (oracle, tolerance, want_stats) = match own_reference {
            None => (
                cached_oracle(case, || Oracle::new(&p, &inputs, &resolved)),
                cfg.tolerance,
                Stats::exact(&resolved),
            ),
            Some(r) => {
                let run = cached_reference(case, r, || {
                    let prefs =
                        Prefs { method: Some(r.name().into()), par: Par::Seq, ..Prefs::default() };
                    run_poisoned_in(cfg.registry, &inputs, params, &prefs)
                        .map(|run| {
                            (Arc::new(Oracle::from_reference(&p, &run.o, &run.lse)), run.stats)
                        })
                        .map_err(|e| e.to_string())
                });
                match run {
                    Ok((oracle, stats)) => (oracle, Tolerance::VS_REFERENCE, stats),
                    Err(e) => {
                        failures.push(format!(
                            "{name} {}: reference {} failed: {e}",
                            case.name(),
                            r.name()
                        ));
                        continue;
                    }
                }
            }
        };
        for &level in &cfg.levels {
            let mut first: Option<(Par, Vec<f32>, Vec<f32>)> = None;
            for &par in &cfg.pars {
                let ctx = format!("{name} {} at {} with {par:?}", case.name(), level.name());
                let call = || {
                    with_level(level, || {
                        run_poisoned_in(cfg.registry, &inputs, params, &forced(par))
                    })
                };
                cov.calls += 1;
                let run = match call() {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("{ctx}: call failed: {e}"));
                        continue;
                    }
                };
                if run.method() != name {
                    failures.push(format!("{ctx}: forced {name} but {} ran", run.method()));
                }
                if let Err(e) = oracle.check(&run.o, &run.lse, &tolerance) {
                    failures.push(format!("{ctx}:\n  {e}"));
                    continue;
                }
                // A mechanism other than softmax reports a form-specific cost (scores computed
                // inside chunks, none for a recurrence): at most the pairs the mask allows.
                let not_softmax = method.exactness() == Exactness::NotSoftmax;
                let stats_ok = if not_softmax {
                    run.stats.computed_pairs <= Stats::exact(&resolved).computed_pairs
                } else {
                    run.stats == want_stats
                };
                if !stats_ok {
                    failures.push(format!(
                        "{ctx}: stats {:?}, want {want_stats:?} ({})",
                        run.stats,
                        if exact { "the pairs the mask allows" } else { "the reference's count" }
                    ));
                }
                if !cfg.thread_invariant && par != Par::Seq {
                    cov.calls += 1;
                    match call() {
                        Ok(again) => {
                            if let Some(i) = first_bit_difference(&again.o, &run.o)
                                .or(first_bit_difference(&again.lse, &run.lse))
                            {
                                failures.push(format!(
                                    "{ctx}: not deterministic: a repeated call differs at flat index {i}"
                                ));
                            }
                        }
                        Err(e) => failures.push(format!("{ctx}: repeated call failed: {e}")),
                    }
                }
                match &first {
                    None => first = Some((par, run.o, run.lse)),
                    Some((p0, o0, l0)) => {
                        let diff = first_bit_difference(&run.o, o0)
                            .map(|i| ("o", i))
                            .or(first_bit_difference(&run.lse, l0).map(|i| ("lse", i)));
                        if let Some((what, i)) = diff {
                            if cfg.thread_invariant {
                                failures.push(format!(
                                    "{ctx}: {what} differs bitwise from {p0:?} at flat index {i} \
                                     (thread count must not change the result)"
                                ));
                            } else {
                                cov.thread_dependent += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{name}: {} cases run, {} rejected, {} calls, levels {:?}, {} (case, level) pairs \
         differ across thread counts{}",
        cov.cases,
        cov.rejected,
        cov.calls,
        cfg.levels,
        cov.thread_dependent,
        if cfg.thread_invariant { "" } else { " (allowed: THREAD_DEPENDENT)" }
    );
    if !failures.is_empty() {
        let shown: Vec<&str> = failures.iter().take(MAX_SHOWN).map(String::as_str).collect();
        panic!(
            "{name}: {} failure(s) over {} cases; first {}:\n{}",
            failures.len(),
            cov.cases,
            shown.len(),
            shown.join("\n")
        );
    }
    assert!(
        cov.cases > 0 || !cfg.require_accepted,
        "{name} accepted no case of the grid ({} rejected)",
        cov.rejected
    );
    cov
}

/// Oracles are shared by every method checked in one process (they cost more than most runs).
fn cached_oracle(case: &Case, make: impl FnOnce() -> Oracle) -> Arc<Oracle> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Oracle>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = case.name();
    if let Some(o) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return o.clone();
    }
    let o = Arc::new(make());
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, o.clone());
    o
}

/// What a family reference gave on one case: its output as an oracle and its stats.
type ReferenceRun = Result<(Arc<Oracle>, Stats), String>;

/// The run of the family reference `r` on `case`, computed once per process: the method's own
/// test and its reference's test (which holds the reference to a first run of itself) share it,
/// and a second caller waits for the first. Keyed by the case, the reference's name and the
/// reference object itself (registries built for one test may configure a method differently
/// under the same name).
fn cached_reference(
    case: &Case,
    r: &'static dyn Method,
    make: impl FnOnce() -> ReferenceRun,
) -> ReferenceRun {
    type Slot = Arc<OnceLock<ReferenceRun>>;
    type Key = (String, String, usize);
    static CACHE: OnceLock<Mutex<HashMap<Key, Slot>>> = OnceLock::new();
    let key = (case.name(), r.name().to_string(), r as *const dyn Method as *const () as usize);
    let slot = {
        let mut c = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        c.entry(key).or_default().clone()
    };
    slot.get_or_init(make).clone()
}

#[cfg(test)]
mod tests {
    //! The suite must catch broken kernels: each tampered wrapper around `sdpa-flash` below is
    //! run through it and must fail with the expected complaint, while the honest wrapper passes.

    use super::*;
    use crate::cases::{case, MaskSpec};
    use attn::methods::sdpa::flash::Flash;
    use attn::{Capabilities, Inputs, OutputMut, Resolved};

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fault {
        None,
        SkipLastRow,
        Bias,
        LseOff,
        ThreadDependent,
        MaskedRowNotEmpty,
        LiesAboutSupport,
    }

    struct Tampered(&'static str, Fault);

    impl Method for Tampered {
        fn name(&self) -> &'static str {
            self.0
        }
        fn family(&self) -> &'static str {
            "sdpa"
        }
        fn description(&self) -> &'static str {
            "sdpa-flash with an injected fault (suite self-test)"
        }
        fn exactness(&self) -> Exactness {
            Exactness::Exact
        }
        fn capabilities(&self) -> Capabilities {
            Flash.capabilities()
        }
        fn unsupported(&self, p: &Problem, params: &attn::Params) -> Vec<attn::Reason> {
            if self.1 == Fault::LiesAboutSupport && p.s_q > 1 {
                return vec![attn::Reason::Other("pretends".into())];
            }
            Flash.unsupported(p, params)
        }
        fn scratch_bytes(&self, p: &Problem, params: &Resolved, par: Par) -> usize {
            Flash.scratch_bytes(p, params, par) + 4 * p.out_len()
        }
        fn forward(
            &self,
            p: &Problem,
            inputs: &Inputs,
            params: &Resolved,
            par: Par,
            out: OutputMut,
        ) -> attn::Result<attn::Stats> {
            let (mut o, mut lse) = (vec![0.0; p.out_len()], vec![0.0; p.lse_len()]);
            let stats =
                Flash.forward(p, inputs, params, par, OutputMut { o: &mut o, lse: &mut lse })?;
            let keep = if self.1 == Fault::SkipLastRow { p.out_len() - p.d_v } else { o.len() };
            out.o[..keep].copy_from_slice(&o[..keep]);
            out.lse.copy_from_slice(&lse);
            match self.1 {
                Fault::Bias => out.o[p.out_len() / 2] += 1e-4,
                Fault::LseOff => out.lse[0] += 1e-3,
                Fault::ThreadDependent if par != Par::Seq => {
                    out.o[0] = f32::from_bits(out.o[0].to_bits() ^ 1)
                }
                Fault::MaskedRowNotEmpty => {
                    if let Some(r) = out.lse.iter().position(|l| *l == f32::NEG_INFINITY) {
                        out.o[r * p.d_v] = 0.0;
                        out.lse[r] = -1e30;
                    }
                }
                _ => {}
            }
            Ok(stats)
        }
    }

    static TAMPERED: [&dyn Method; 7] = [
        &Tampered("honest", Fault::None),
        &Tampered("skip-last-row", Fault::SkipLastRow),
        &Tampered("bias", Fault::Bias),
        &Tampered("lse-off", Fault::LseOff),
        &Tampered("thread-dependent", Fault::ThreadDependent),
        &Tampered("masked-row-not-empty", Fault::MaskedRowNotEmpty),
        &Tampered("lies-about-support", Fault::LiesAboutSupport),
    ];

    fn config() -> SuiteConfig {
        SuiteConfig {
            registry: Registry::new(&TAMPERED),
            cases: vec![
                case(2, [4, 2], [33, 40], 16).mask(MaskSpec::KeyPadding).seed(1),
                case(1, [2, 2], [1, 300], 32).mask(MaskSpec::Causal).seed(2),
            ],
            levels: vec![Level::current()],
            pars: vec![Par::Seq, Par::Rayon(2)],
            thread_invariant: true,
            tolerance: Tolerance::default(),
            require_accepted: true,
        }
    }

    fn failure_of(name: &str) -> String {
        let m = Registry::new(&TAMPERED).get(name).unwrap();
        let cfg = config();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_suite_with(m, &cfg))) {
            Ok(cov) => panic!("{name}: the suite passed a broken kernel ({cov:?})"),
            Err(e) => e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn honest_wrapper_passes() {
        let cov = run_suite_with(TAMPERED[0], &config());
        assert_eq!((cov.cases, cov.calls), (2, 4));
    }

    #[test]
    fn unwritten_elements_are_caught_by_poison() {
        let msg = failure_of("skip-last-row");
        assert!(msg.contains("o is NaN at [1, 3, 32, 0]"), "{msg}");
    }

    #[test]
    fn small_errors_are_caught_with_a_full_report() {
        let msg = failure_of("bias");
        for part in ["o: error above", "max_abs", "rel_rms", "worst at [b,h,s,d]", "naive:"] {
            assert!(msg.contains(part), "missing {part:?} in {msg}");
        }
        assert!(failure_of("lse-off").contains("lse: error above"));
    }

    #[test]
    fn thread_count_dependence_is_caught() {
        let msg = failure_of("thread-dependent");
        assert!(msg.contains("differs bitwise from Seq"), "{msg}");
    }

    #[test]
    fn fully_masked_rows_must_be_exact() {
        let msg = failure_of("masked-row-not-empty");
        assert!(msg.contains("fully masked row"), "{msg}");
    }

    #[test]
    fn declared_rejections_are_skipped_and_counted() {
        // Rejecting every prefill case is allowed (forcing it then gives Error::Unsupported).
        let m = Registry::new(&TAMPERED).get("lies-about-support").unwrap();
        let cov = run_suite_with(m, &config());
        assert_eq!((cov.cases, cov.rejected), (1, 1));
    }
}
