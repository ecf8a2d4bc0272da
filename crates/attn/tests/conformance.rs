//! Every registered implementation against the f64 oracle on the shared grid (attn-testing).

use attn::registry;
use attn_testing::run_suite;

fn suite_for(name: &str) {
    let m = registry().get(name).expect("registered");
    let cov = run_suite(m);
    eprintln!("{name}: {} cases ({} rejected), {} calls", cov.cases, cov.rejected, cov.calls);
}

#[test]
fn every_registered_implementation_has_a_suite_test() {
    let tested = ["sdpa-decode", "sdpa-flash", "sdpa-reference"];
    for m in registry().methods() {
        assert!(
            tested.contains(&m.name()),
            "{} is registered but has no conformance test here",
            m.name()
        );
    }
}

#[test]
fn sdpa_flash() {
    suite_for("sdpa-flash");
}

#[test]
fn sdpa_decode() {
    suite_for("sdpa-decode");
}

#[test]
fn sdpa_reference() {
    suite_for("sdpa-reference");
}
