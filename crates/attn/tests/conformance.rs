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
    streaming => "streaming",
    streaming_reference => "streaming-reference",
    a_shape => "a-shape",
    a_shape_reference => "a-shape-reference",
    vertical_slash => "vertical-slash",
    vertical_slash_reference => "vertical-slash-reference",
    block_sparse => "block-sparse",
    block_sparse_reference => "block-sparse-reference",
    performer => "performer",
    performer_reference => "performer-reference",
    hyper => "hyper",
    hyper_reference => "hyper-reference",
    reformer => "reformer",
    reformer_reference => "reformer-reference",
    routing => "routing",
    routing_reference => "routing-reference",
    scatterbrain => "scatterbrain",
    scatterbrain_reference => "scatterbrain-reference",
    sea => "sea",
    sea_reference => "sea-reference",
    linear => "linear",
    linear_recurrent => "linear-recurrent",
    linear_reference => "linear-reference",
    gated_deltanet => "gated-deltanet",
    gated_deltanet_recurrent => "gated-deltanet-recurrent",
    gated_deltanet_reference => "gated-deltanet-reference",
    kda => "kda",
    kda_recurrent => "kda-recurrent",
    kda_reference => "kda-reference",
    transnormer => "transnormer",
    transnormer_recurrent => "transnormer-recurrent",
    transnormer_reference => "transnormer-reference",
    nalaformer => "nalaformer",
    nalaformer_recurrent => "nalaformer-recurrent",
    nalaformer_reference => "nalaformer-reference",
    titans_memory => "titans-memory",
    titans_memory_recurrent => "titans-memory-recurrent",
    titans_memory_reference => "titans-memory-reference",
}

/// The sparse methods at budgets far below the grid's lengths, so that the fast paths meet real
/// sparsity (at the registered defaults the grid's short sequences are covered whole).
mod small_budgets {
    use attn::methods::a_shape::AShape;
    use attn::methods::block_sparse::BlockSparse;
    use attn::methods::hyper::Hyper;
    use attn::methods::pattern::{Fast, Reference};
    use attn::methods::sea::{Budget, Estimate, Sea};
    use attn::methods::streaming::Streaming;
    use attn::methods::vertical_slash::{Layout, VerticalSlash};
    use attn::{Method, Registry};
    use attn_testing::{run_suite_with, SuiteConfig};

    const STREAMING: Streaming = Streaming { sink: 3, window: 17 };
    const A_SHAPE: AShape = AShape { sink: 20, local: 24, block: 16 };
    const VS: VerticalSlash = VerticalSlash {
        last_q: 24,
        vertical: 7,
        slash: 9,
        sink: 2,
        local: 3,
        block: 16,
        layout: Layout::Blocks,
    };
    const BS: BlockSparse = BlockSparse { top_k: 3, block: 16 };
    const HYPER: Hyper = Hyper { projections: 3, block: 16, samples: 8, min_seq_len: 24, seed: 5 };
    const SEA: Sea = Sea {
        budget: Budget::Count(9),
        cells: 16,
        rank: 0,
        estimate: Estimate::Bound,
        dims: 0,
        sink: 1,
        local: 1,
        seed: 0,
        trained: None,
    };

    static SMALL: &[&dyn Method] = &[
        &Fast(STREAMING),
        &Reference(STREAMING),
        &Fast(A_SHAPE),
        &Reference(A_SHAPE),
        &Fast(VS),
        &Reference(VS),
        &Fast(BS),
        &Reference(BS),
        &Fast(HYPER),
        &Reference(HYPER),
        &Fast(SEA),
        &Reference(SEA),
    ];

    /// SEA with a fractional budget and the random projection (its own registry: one reference
    /// per family).
    const SEA_PROJECTED: Sea = Sea {
        budget: Budget::Fraction(0.3),
        cells: 24,
        rank: 8,
        estimate: Estimate::Gauss,
        dims: 4,
        sink: 0,
        local: 0,
        seed: 3,
        trained: None,
    };
    static SEA_PROJECTED_REG: &[&dyn Method] = &[&Fast(SEA_PROJECTED), &Reference(SEA_PROJECTED)];

    #[test]
    fn sea_projected_equals_its_reference() {
        let reg = Registry::new(SEA_PROJECTED_REG);
        let m = reg.methods()[0];
        let cfg = SuiteConfig { registry: reg, ..SuiteConfig::for_method(m) };
        assert!(run_suite_with(m, &cfg).cases > 0);
    }

    /// Vertical-Slash's element-wise layout (the diagonal kernel; its own registry: one reference
    /// per family). `local` 12 makes a band, the other distances are scattered.
    const VS_ELEMENTS: VerticalSlash =
        VerticalSlash { local: 12, slash: 20, layout: Layout::Elements, ..VS };
    static VS_ELEMENTS_REG: &[&dyn Method] = &[&Fast(VS_ELEMENTS), &Reference(VS_ELEMENTS)];

    #[test]
    fn vertical_slash_elements_equals_its_reference() {
        let reg = Registry::new(VS_ELEMENTS_REG);
        let m = reg.methods()[0];
        let cfg = SuiteConfig { registry: reg, ..SuiteConfig::for_method(m) };
        assert!(run_suite_with(m, &cfg).cases > 0);
    }

    #[test]
    fn fast_paths_equal_their_references_at_small_budgets() {
        let reg = Registry::new(SMALL);
        for m in reg.methods().iter().filter(|m| !m.is_reference()) {
            let cfg = SuiteConfig { registry: reg, ..SuiteConfig::for_method(*m) };
            let cov = run_suite_with(*m, &cfg);
            assert!(cov.cases > 0, "{}", m.name());
        }
    }
}

/// Performer with performer-pytorch's additive feature (`eps > 0`: another key stabiliser and the
/// `eps` sums of the fast path) against its reference on the grid.
mod performer_eps {
    use attn::methods::pattern::{Fast, Reference};
    use attn::methods::performer::{Favor, Performer};
    use attn::{Method, Registry};
    use attn_testing::{run_suite_with, SuiteConfig};

    // 32 features keep the f64 reference cheap on the grid (the registered m = ⌊D ln D⌋ is
    // covered by `performer`).
    const PEER: Favor = Favor { map: Performer { features: 32, ..Performer::DEFAULT }, eps: 0.01 };
    static REG: &[&dyn Method] = &[&Fast(PEER), &Reference(PEER)];

    #[test]
    fn performer_eps_equals_its_reference() {
        let reg = Registry::new(REG);
        let m = reg.methods()[0];
        let cfg = SuiteConfig { registry: reg, ..SuiteConfig::for_method(m) };
        assert!(run_suite_with(m, &cfg).cases > 0);
    }
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
    for (name, _) in attn_testing::suite::LEVEL_INDEPENDENT {
        assert!(registry().get(name).is_ok(), "{name} is LEVEL_INDEPENDENT but not registered");
    }
    for (name, _) in attn_testing::suite::HEAVY {
        assert!(registry().get(name).is_ok(), "{name} is HEAVY but not registered");
    }
}

/// transNormer's DiagAttention mode (the registered instances run NormAttention) on the grid, with
/// blocks of 16 so that the grid's lengths cross block edges: softmax and relu kernels.
mod transnormer_diag {
    use attn::methods::linear::Form;
    use attn::methods::transnormer::{diag::Kernel, Mode, Transnormer};
    use attn::{Method, Registry};
    use attn_testing::{run_suite_with, SuiteConfig};

    const fn diag(kernel: Kernel, form: Form) -> Transnormer {
        Transnormer { mode: Mode::Diag, diag: kernel, block: 16, ..Transnormer::new(form) }
    }
    const SOFTMAX: [Transnormer; 3] = [
        diag(Kernel::Softmax, Form::Chunked),
        diag(Kernel::Softmax, Form::Recurrent),
        diag(Kernel::Softmax, Form::Reference),
    ];
    const RELU: [Transnormer; 3] = [
        diag(Kernel::Relu, Form::Chunked),
        diag(Kernel::Relu, Form::Recurrent),
        diag(Kernel::Relu, Form::Reference),
    ];
    static SOFTMAX_REG: &[&dyn Method] = &[&SOFTMAX[0], &SOFTMAX[1], &SOFTMAX[2]];
    static RELU_REG: &[&dyn Method] = &[&RELU[0], &RELU[1], &RELU[2]];

    #[test]
    fn transnormer_diag_forms_equal_their_reference_on_the_grid() {
        for methods in [SOFTMAX_REG, RELU_REG] {
            let reg = Registry::new(methods);
            for m in reg.methods().iter().filter(|m| !m.is_reference()) {
                let cfg = SuiteConfig { registry: reg, ..SuiteConfig::for_method(*m) };
                let cov = run_suite_with(*m, &cfg);
                assert!(cov.cases > 0, "{}", m.name());
            }
        }
    }
}
