//! Every registered implementation against the f64 oracle on the shared grid of `attn-testing`
//! (every SIMD level of this machine, 1/2/3 threads, NaN-poisoned outputs). One test per
//! implementation; `every_registered_implementation_has_a_test` keeps the list complete.

use attn::registry;
use attn_testing::run_suite;

macro_rules! conformance {
    ($($test:ident => $name:literal),* $(,)?) => {
        const TESTED: &[&str] = &[$($name),*];
        $(
            #[test]
            fn $test() {
                let m = registry().get($name).expect("registered");
                let cov = run_suite(m);
                assert!(cov.cases > 0 && cov.calls >= cov.cases);
            }
        )*
    };
}

conformance! {
    sdpa_decode => "sdpa-decode",
    sdpa_flash => "sdpa-flash",
    sdpa_reference => "sdpa-reference",
}

#[test]
fn every_registered_implementation_has_a_test() {
    for m in registry().methods() {
        assert!(
            TESTED.contains(&m.name()),
            "{} is registered but has no conformance test",
            m.name()
        );
    }
    for name in TESTED {
        assert!(registry().get(name).is_ok(), "{name} is tested but no longer registered");
    }
}
