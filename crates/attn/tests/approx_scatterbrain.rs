//! Scatterbrain (spec §4.6): a window covering every key gives exact attention; an empty window
//! gives Performer with the same features; the unnormalised estimate is unbiased over seeds
//! (`E[e^{lse}] = Σ_j e^{z_ij}`, `E[e^{lse} o] = Σ_j e^{z_ij} v_j`, Monte Carlo, 5 standard
//! errors); rows sum to 1; causality is bitwise; the seed decides the output; the fast path
//! equals the f64 reference at small windows; pair counts; typed errors. The same for the LSH
//! support (`sparse=lsh`): one cluster is exact, `low_rank=false` is softmax over the support
//! (SMYRF alone), unbiased over seeds, fast = reference (also where the support holds most of a
//! large low-rank estimate, the cancellation case), pair counts, seeds.

use attn::methods::pattern::{Fast, Reference};
use attn::methods::scatterbrain::{Scatterbrain, Sparse};
use attn::{Error, Mask, Method, Params, Problem, Registry, TensorRef};
use attn_testing::cases::{case, MaskSpec};
use attn_testing::Qkv;
use attn_testing::{run_suite_with, SuiteConfig};

fn qkv(seed: u64, heads: [usize; 3], lens: [usize; 2], d: usize, sigma: f64) -> Qkv {
    Qkv::gaussian(seed, heads, lens, d, sigma)
}

/// Spec §0.5: rtol 1e-4 / atol 1e-5 against the f64 exact result (`−∞` must match exactly).
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if *w == f64::NEG_INFINITY {
            assert_eq!(*g, f32::NEG_INFINITY, "{what}[{i}]");
            continue;
        }
        let err = (*g as f64 - w).abs();
        assert!(err <= 1e-5 + 1e-4 * w.abs(), "{what}[{i}]: {g} vs exact {w}");
    }
}

/// Full support: a window of `2·(S_q + S_kv)` holds every allowed key of every row, so the
/// implied matrix is `exp(s·QKᵀ)` everywhere: exact attention (GQA, S_q ≠ S_kv, causal offsets).
#[test]
fn a_window_covering_every_key_is_exact() {
    let x = qkv(1, [2, 4, 2], [29, 41], 16, 1.0);
    for params in
        [Params::default(), Params::causal(), Params { q_offset: Some(-3), ..Params::causal() }]
    {
        let (eo, el) = x.exact(&params);
        for spec in ["scatterbrain:window=140", "scatterbrain-reference:window=140,features=8"] {
            let out = x.run(spec, &params).unwrap();
            let what = format!("{spec} {:?} offset {:?}", params.mask, params.q_offset);
            assert_close(&format!("{what} o"), &out.o, &eo);
            assert_close(&format!("{what} lse"), &out.lse, &el);
            // Only the exact scores are counted: no featurisation is needed.
            let allowed = attn::Stats::exact(&{
                let q = TensorRef::new(&x.q[..], x.shape_q).unwrap();
                let k = TensorRef::new(&x.k[..], x.shape_kv).unwrap();
                let v = TensorRef::new(&x.v[..], x.shape_kv).unwrap();
                params.resolve(&Problem::from_tensors(&q, &k, &v).unwrap()).unwrap()
            });
            assert_eq!(out.stats.computed_pairs, allowed.computed_pairs, "{what}");
        }
    }
}

/// Empty support (`window=0`): the low-rank part alone, which is Performer with the same seed
/// and features (its f64 reference).
#[test]
fn an_empty_window_is_performer() {
    let x = qkv(2, [1, 4, 2], [33, 47], 16, 1.0);
    for params in [Params::default(), Params::causal()] {
        let want = x.run("performer-reference:features=40,seed=5", &params).unwrap();
        for spec in [
            "scatterbrain:window=0,features=40,seed=5",
            "scatterbrain-reference:window=0,features=40,seed=5",
        ] {
            let got = x.run(spec, &params).unwrap();
            let worst = got.o.iter().zip(&want.o).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 2e-5, "{spec} {:?}: max |Δo| {worst}", params.mask);
            for (a, b) in got.lse.iter().zip(&want.lse) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{spec}: lse {a} vs {b}");
            }
            assert_eq!(got.stats, want.stats, "{spec}: both count (S_q + S_kv)·m per head");
        }
    }
}

/// Unbiasedness (spec §4.6 oracle 3): over feature seeds, the unnormalised row sums
/// `e^{lse_i} = Σ_j Ã_ij` and `e^{lse_i}·o_i = Σ_j Ã_ij v_j` have the exact values as their mean,
/// within 5 standard errors (sample sd / √n), for every row, with and without the causal mask,
/// at a window that leaves most pairs to the estimate. Small norms (heavy tails).
#[test]
fn the_estimate_is_unbiased_over_seeds() {
    let (n, d, seeds) = (10usize, 8usize, 20_000u64);
    let x = qkv(3, [1, 1, 1], [n, n], d, 0.5);
    assert_unbiased(&x, n, d, seeds, |seed| {
        format!("scatterbrain:window=3,features=16,seed={seed}")
    });
}

/// The unbiasedness oracle for the spec `spec(seed)`: per row, the means over `seeds` of
/// `X = e^{lse}` and `Y = e^{lse}·o[0]` lie within 5 standard errors of their exact values
/// (rows whose support holds every key are exact: f32 rounding only), with and without the
/// causal mask.
fn assert_unbiased(x: &Qkv, n: usize, d: usize, seeds: u64, spec: impl Fn(u64) -> String) {
    for params in [Params::default(), Params::causal()] {
        let (eo, el) = x.exact(&params);
        // Per row: Σ X, Σ X², Σ Y, Σ Y².
        let mut acc = vec![[0.0f64; 4]; n];
        for seed in 0..seeds {
            let out = x.run(&spec(seed), &params).unwrap();
            for (i, a) in acc.iter_mut().enumerate() {
                let den = (out.lse[i] as f64).exp();
                let num = den * out.o[i * d] as f64;
                a[0] += den;
                a[1] += den * den;
                a[2] += num;
                a[3] += num * num;
            }
        }
        let nf = seeds as f64;
        for (i, a) in acc.iter().enumerate() {
            let den_true = el[i].exp();
            let num_true = den_true * eo[i * d];
            for (s1, s2, truth, what) in
                [(a[0], a[1], den_true, "den"), (a[2], a[3], num_true, "num")]
            {
                let mean = s1 / nf;
                let se = ((s2 / nf - mean * mean).max(0.0) / nf).sqrt();
                assert!(
                    (mean - truth).abs() < 5.0 * se + 1e-6 * truth.abs(),
                    "{:?} row {i} {what}: mean {mean} vs exact {truth} (se {se})",
                    params.mask
                );
            }
        }
    }
}

/// Rows of the implied matrix are positive and sum to 1 (`V = 1` ⇒ `o = 1`).
#[test]
fn rows_sum_to_one() {
    let mut x = qkv(4, [2, 4, 2], [40, 56], 32, 1.0);
    x.v.iter_mut().for_each(|v| *v = 1.0);
    for params in [Params::default(), Params::causal()] {
        for spec in [
            "scatterbrain:window=6",
            "scatterbrain-reference:window=6",
            "scatterbrain:sparse=lsh,cluster=8,n_hashes=2",
            "scatterbrain-reference:sparse=lsh,cluster=8,n_hashes=2",
        ] {
            let out = x.run(spec, &params).unwrap();
            for (i, o) in out.o.iter().enumerate() {
                assert!((o - 1.0).abs() < 1e-5, "{spec} {:?}: o[{i}] = {o}", params.mask);
            }
        }
    }
}

/// Causality: changing keys and values after a row's position leaves the row bitwise
/// unchanged (the key log-scale is a running maximum); rows after the change do change.
#[test]
fn causal_rows_ignore_the_future_bitwise() {
    let (n, d) = (40, 16);
    let x = qkv(5, [1, 2, 1], [n, n], d, 1.0);
    let spec = "scatterbrain:window=6,features=24";
    let base = x.run(spec, &Params::causal()).unwrap();
    let cut = 23;
    let mut y = qkv(5, [1, 2, 1], [n, n], d, 1.0);
    for j in cut..n {
        for e in 0..d {
            y.k[j * d + e] = 3.0 * y.k[j * d + e] + 0.5;
            y.v[j * d + e] -= 1.0;
        }
    }
    let moved = y.run(spec, &Params::causal()).unwrap();
    for h in 0..2 {
        for i in 0..n {
            let r = h * n + i;
            let same = base.o[r * d..(r + 1) * d] == moved.o[r * d..(r + 1) * d];
            assert_eq!(same, i < cut, "head {h} row {i}");
        }
    }
}

#[test]
fn the_seed_decides_the_output() {
    let x = qkv(6, [2, 2, 1], [50, 50], 16, 1.0);
    for params in [Params::default(), Params::causal()] {
        let a = x.run("scatterbrain:window=4,seed=3", &params).unwrap();
        let b = x.run("scatterbrain:window=4,seed=3", &params).unwrap();
        let c = x.run("scatterbrain:window=4,seed=4", &params).unwrap();
        assert_eq!(a.o, b.o);
        assert_eq!(a.lse, b.lse);
        assert_ne!(a.o, c.o);
    }
}

/// Small windows with every kind of row (window clipped at both ends, S_q ≠ S_kv, rows before
/// every key, empty windows, i.i.d. features): the fast path equals the f64 reference at every
/// SIMD level and thread count, bitwise across thread counts, through the conformance suite.
#[test]
fn fast_equals_reference_at_small_windows() {
    const D: Scatterbrain = Scatterbrain::DEFAULT;
    const W5: Scatterbrain =
        Scatterbrain { window: 5, features: 8, orthogonal: true, seed: 1, ..D };
    const W0: Scatterbrain =
        Scatterbrain { window: 0, features: 16, orthogonal: true, seed: 2, ..D };
    const IID: Scatterbrain =
        Scatterbrain { window: 3, features: 24, orthogonal: false, seed: 3, ..D };
    static A: &[&dyn Method] = &[&Fast(W5), &Reference(W5)];
    static B: &[&dyn Method] = &[&Fast(W0), &Reference(W0)];
    static C: &[&dyn Method] = &[&Fast(IID), &Reference(IID)];
    let cases = vec![
        case(1, [2, 1], [23, 31], 16),
        case(2, [4, 2], [41, 41], 32).mask(MaskSpec::Causal),
        case(1, [1, 1], [40, 30], 8).mask(MaskSpec::Causal).offset(3),
        case(1, [1, 1], [30, 30], 8).mask(MaskSpec::Causal).offset(-4),
        case(1, [2, 2], [37, 12], 8),
        case(1, [1, 1], [1, 50], 16).mask(MaskSpec::Causal),
    ];
    for reg in [A, B, C] {
        let reg = Registry::new(reg);
        let m = reg.get("scatterbrain").unwrap();
        let cfg = SuiteConfig { registry: reg, cases: cases.clone(), ..SuiteConfig::for_method(m) };
        let cov = run_suite_with(m, &cfg);
        assert_eq!(cov.cases, cases.len());
    }
}

/// `computed_pairs`: the window's exact scores plus `(S_q + S_kv)·m` featurisation per head.
#[test]
fn pair_count() {
    let x = qkv(7, [1, 2, 2], [20, 20], 8, 1.0);
    let out = x.run("scatterbrain:window=4,features=8", &Params::default()).unwrap();
    // Windows [i−2, i+2) clipped to [0, 20): 2 + 3 + 16·4 + 4 + 3 = 76 scores per head.
    assert_eq!(out.stats.computed_pairs, 2 * (76 + 40 * 8));
    let out = x.run("scatterbrain:window=4,features=8", &Params::causal()).unwrap();
    // Causal: [i−2, i] → 1 + 2 + 18·3 = 57.
    assert_eq!(out.stats.computed_pairs, 2 * (57 + 40 * 8));
}

#[test]
fn parameters_and_rejections_are_typed() {
    let x = qkv(8, [1, 1, 1], [8, 8], 8, 1.0);
    let p = Params::default();
    assert!(matches!(x.run("scatterbrain:window=-1", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("scatterbrain:features=x", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("scatterbrain:orthogonal=2", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("scatterbrain:buckets=2", &p), Err(Error::UnknownParam { .. })));
    let window = Params::default().with_mask(Mask::sliding_window(4));
    assert!(matches!(x.run("scatterbrain", &window), Err(Error::Unsupported { .. })));
    assert!(x.run("scatterbrain:window=3,features=7,orthogonal=false,seed=9", &p).is_ok());
}

/// One LSH cluster (`cluster ≥ S_kv`) holds every key: exact attention, only the exact scores
/// counted, for any number of rounds (a pair in several rounds is one pair).
#[test]
fn lsh_one_cluster_is_exact() {
    let x = qkv(11, [2, 4, 2], [29, 41], 16, 1.0);
    for params in
        [Params::default(), Params::causal(), Params { q_offset: Some(-3), ..Params::causal() }]
    {
        let (eo, el) = x.exact(&params);
        for spec in [
            "scatterbrain:sparse=lsh,cluster=41",
            "scatterbrain:sparse=lsh,cluster=64,n_hashes=3",
            "scatterbrain-reference:sparse=lsh,cluster=41,n_hashes=2,features=8",
        ] {
            let out = x.run(spec, &params).unwrap();
            let what = format!("{spec} {:?} offset {:?}", params.mask, params.q_offset);
            assert_close(&format!("{what} o"), &out.o, &eo);
            assert_close(&format!("{what} lse"), &out.lse, &el);
            let allowed = attn::Stats::exact(&{
                let q = TensorRef::new(&x.q[..], x.shape_q).unwrap();
                let k = TensorRef::new(&x.k[..], x.shape_kv).unwrap();
                let v = TensorRef::new(&x.v[..], x.shape_kv).unwrap();
                params.resolve(&Problem::from_tensors(&q, &k, &v).unwrap()).unwrap()
            });
            assert_eq!(out.stats.computed_pairs, allowed.computed_pairs, "{what}");
        }
    }
}

/// `low_rank=false`: the sparse half alone, softmax over the support `S_i` that
/// [`Scatterbrain::clusters`] gives (computed here in f64 from the public clusters); each row's
/// support has at most `R·c` keys and at least the `c` of one cluster when `c` divides `S_kv`.
#[test]
fn lsh_without_low_rank_is_softmax_over_the_clusters() {
    let (nq, nk, d) = (37, 48, 16);
    let x = qkv(12, [2, 4, 2], [nq, nk], d, 1.5);
    let inputs = x.tensors();
    let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
    let cfg = Scatterbrain {
        sparse: Sparse::Lsh,
        n_hashes: 3,
        cluster: 8,
        low_rank: false,
        seed: 4,
        ..Scatterbrain::DEFAULT
    };
    for params in [Params::default(), Params { q_offset: Some(20), ..Params::causal() }] {
        let r = params.resolve(&p).unwrap();
        let spec = "scatterbrain:sparse=lsh,n_hashes=3,cluster=8,low_rank=false,seed=4";
        let out = x.run(spec, &params).unwrap();
        let (mut seen, mut sup) = (vec![false; nk], Vec::new());
        let mut pairs = 0u64;
        let (mut worst, mut sizes) = (0.0f64, (usize::MAX, 0));
        for b in 0..2 {
            for h in 0..4 {
                let cl = cfg.clusters(&p, &inputs, b, h);
                for i in 0..nq {
                    let allowed = cfg.allowed(&r, nk, i);
                    cl.support(i, allowed, &mut seen, &mut sup);
                    pairs += sup.len() as u64;
                    if allowed == nk {
                        sizes = (sizes.0.min(sup.len()), sizes.1.max(sup.len()));
                    }
                    let z: Vec<f64> = sup
                        .iter()
                        .map(|&j| {
                            (0..d)
                                .map(|e| {
                                    inputs.q.get(b, h, i, e) as f64
                                        * inputs.k.get(b, h / 2, j as usize, e) as f64
                                })
                                .sum::<f64>()
                                * r.scale as f64
                        })
                        .collect();
                    let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let row = (b * 4 + h) * nq + i;
                    let l: f64 = z.iter().map(|zj| (zj - mx).exp()).sum();
                    for e in 0..d {
                        let want: f64 = sup
                            .iter()
                            .zip(&z)
                            .map(|(&j, zj)| {
                                (zj - mx).exp() * inputs.v.get(b, h / 2, j as usize, e) as f64
                            })
                            .sum::<f64>()
                            / l;
                        worst = worst.max((out.o[row * d + e] as f64 - want).abs());
                    }
                    assert!((out.lse[row] as f64 - (mx + l.ln())).abs() < 1e-5 * mx.abs().max(1.0));
                }
            }
        }
        assert!(worst < 2e-5, "{:?}: max |Δo| {worst}", params.mask);
        assert_eq!(out.stats.computed_pairs, pairs);
        if sizes.1 > 0 {
            assert!(sizes.0 >= 8 && sizes.1 <= 24, "support sizes {sizes:?}");
        }
    }
}

/// Unbiasedness with the LSH support (the hash and the features use different streams, so given
/// the support the estimate is unbiased; over seeds both vary): as
/// `the_estimate_is_unbiased_over_seeds`, 3 clusters of 4 keys, 2 rounds.
#[test]
fn lsh_estimate_is_unbiased_over_seeds() {
    let (n, d, seeds) = (12usize, 8usize, 20_000u64);
    let x = qkv(13, [1, 1, 1], [n, n], d, 0.5);
    assert_unbiased(&x, n, d, seeds, |seed| {
        format!("scatterbrain:sparse=lsh,cluster=4,n_hashes=2,features=16,seed={seed}")
    });
}

/// Fast = f64 reference with the LSH support through the conformance suite: GQA, S_q ≠ S_kv,
/// causal offsets (rows with no key, rows whose allowed keys all lie in the support), partial
/// clusters, 1–3 rounds, i.i.d. features, the sparse half alone, and large logits at D = 128
/// with 621 features where the support holds most of a large low-rank estimate (the
/// subtraction case of the README).
#[test]
fn lsh_fast_equals_reference() {
    const D: Scatterbrain = Scatterbrain::DEFAULT;
    const L1: Scatterbrain =
        Scatterbrain { sparse: Sparse::Lsh, n_hashes: 1, cluster: 8, features: 8, seed: 1, ..D };
    const L3: Scatterbrain = Scatterbrain {
        sparse: Sparse::Lsh,
        n_hashes: 3,
        cluster: 5,
        features: 24,
        orthogonal: false,
        seed: 2,
        ..D
    };
    const S: Scatterbrain =
        Scatterbrain { sparse: Sparse::Lsh, n_hashes: 2, cluster: 6, low_rank: false, ..D };
    const BIG: Scatterbrain =
        Scatterbrain { sparse: Sparse::Lsh, n_hashes: 2, cluster: 16, features: 0, seed: 3, ..D };
    static A: &[&dyn Method] = &[&Fast(L1), &Reference(L1)];
    static B: &[&dyn Method] = &[&Fast(L3), &Reference(L3)];
    static C: &[&dyn Method] = &[&Fast(S), &Reference(S)];
    static E: &[&dyn Method] = &[&Fast(BIG), &Reference(BIG)];
    let cases = vec![
        case(1, [2, 1], [23, 31], 16),
        case(2, [4, 2], [41, 41], 32).mask(MaskSpec::Causal),
        case(1, [1, 1], [40, 30], 8).mask(MaskSpec::Causal).offset(3),
        case(1, [1, 1], [30, 30], 8).mask(MaskSpec::Causal).offset(-4),
        case(1, [2, 2], [37, 12], 8),
        case(1, [1, 1], [1, 50], 16).mask(MaskSpec::Causal),
    ];
    for reg in [A, B, C] {
        let reg = Registry::new(reg);
        let m = reg.get("scatterbrain").unwrap();
        let cfg = SuiteConfig { registry: reg, cases: cases.clone(), ..SuiteConfig::for_method(m) };
        assert_eq!(run_suite_with(m, &cfg).cases, cases.len());
    }
    let reg = Registry::new(E);
    let m = reg.get("scatterbrain").unwrap();
    let big =
        vec![case(1, [2, 1], [64, 64], 128), case(1, [1, 1], [48, 64], 128).mask(MaskSpec::Causal)];
    let cfg = SuiteConfig { registry: reg, cases: big.clone(), ..SuiteConfig::for_method(m) };
    assert_eq!(run_suite_with(m, &cfg).cases, big.len());
    // The same at large logits: the support's low-rank terms dwarf what is left off it.
    assert_lsh_matches_reference_at_large_logits(
        14,
        "sparse=lsh,n_hashes=2,cluster=16,features=0,seed=3",
    );
}

/// Fast against the f64 reference directly at large logits (σ = 2 at D = 128, scale 1/√D:
/// logits of std ≈ 45), non-causal and causal: outputs within 2e-5, LSE within 1e-5 relative.
fn assert_lsh_matches_reference_at_large_logits(seed: u64, spec: &str) {
    let x = qkv(seed, [1, 2, 1], [64, 64], 128, 2.0);
    for params in [Params::default(), Params::causal()] {
        let f = x.run(&format!("scatterbrain:{spec}"), &params).unwrap();
        let r = x.run(&format!("scatterbrain-reference:{spec}"), &params).unwrap();
        let worst = f.o.iter().zip(&r.o).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 2e-5, "{spec} {:?}: max |Δo| {worst}", params.mask);
        for (a, b) in f.lse.iter().zip(&r.lse) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{spec}: lse {a} vs {b}");
        }
    }
}

#[test]
fn lsh_the_seed_decides_the_output() {
    let x = qkv(15, [2, 2, 1], [50, 50], 16, 1.0);
    for params in [Params::default(), Params::causal()] {
        let spec = |s: u32| format!("scatterbrain:sparse=lsh,cluster=10,seed={s}");
        let a = x.run(&spec(3), &params).unwrap();
        let b = x.run(&spec(3), &params).unwrap();
        let c = x.run(&spec(4), &params).unwrap();
        assert_eq!(a.o, b.o);
        assert_eq!(a.lse, b.lse);
        assert_ne!(a.o, c.o);
        // The support too: the sparse half alone changes with the hash seed.
        let s = |s: u32| format!("scatterbrain:sparse=lsh,cluster=10,low_rank=false,seed={s}");
        assert_ne!(x.run(&s(3), &params).unwrap().o, x.run(&s(4), &params).unwrap().o);
    }
}

/// `computed_pairs` with LSH: `Σ_i |S_i|` plus the featurisation. Clusters of 8 out of 32 keys,
/// one round: every query sees exactly its 8 keys.
#[test]
fn lsh_pair_count() {
    let x = qkv(16, [1, 2, 2], [32, 32], 8, 1.0);
    let p = Params::default();
    let out = x.run("scatterbrain:sparse=lsh,n_hashes=1,cluster=8,features=8", &p).unwrap();
    assert_eq!(out.stats.computed_pairs, 2 * (32 * 8 + 64 * 8));
    let out = x.run("scatterbrain:sparse=lsh,n_hashes=1,cluster=8,low_rank=false", &p).unwrap();
    assert_eq!(out.stats.computed_pairs, 2 * 32 * 8);
    // Two rounds: a pair in both counts once, so between 8 and 16 per row.
    let out = x.run("scatterbrain:sparse=lsh,n_hashes=2,cluster=8,low_rank=false", &p).unwrap();
    assert!((2 * 32 * 8..=2 * 32 * 16).contains(&out.stats.computed_pairs));
}

#[test]
fn lsh_parameters_and_rejections_are_typed() {
    let x = qkv(17, [1, 1, 1], [8, 8], 8, 1.0);
    let p = Params::default();
    for bad in [
        "scatterbrain:sparse=smyrf",
        "scatterbrain:n_hashes=0",
        "scatterbrain:n_hashes=65",
        "scatterbrain:cluster=0",
        "scatterbrain:low_rank=2",
    ] {
        assert!(matches!(x.run(bad, &p), Err(Error::BadParam { .. })), "{bad}");
    }
    let empty = "scatterbrain:window=0,low_rank=false";
    assert!(matches!(x.run(empty, &p), Err(Error::Unsupported { .. })));
    assert!(x.run("scatterbrain:sparse=lsh,window=0,low_rank=false", &p).is_ok());
    assert!(x
        .run("scatterbrain:sparse=lsh,n_hashes=64,cluster=1,seed=9", &Params::causal())
        .is_ok());
}

/// `eps` (fly's `softmax_eps`: eps/√m on every stabilised feature, `sparse=lsh`): `eps=0` is
/// the default bitwise, fast and reference; `eps > 0` moves the output, and the fast path equals
/// the f64 reference with the same `eps` (GQA, S_q ≠ S_kv, causal offsets, 1–3 rounds; fly's
/// 1e-4 and a large 0.5).
#[test]
fn lsh_eps_equals_the_reference() {
    let x = qkv(18, [1, 2, 1], [60, 60], 16, 1.0);
    let base = "sparse=lsh,n_hashes=2,cluster=10,features=16,seed=5";
    for params in [Params::default(), Params::causal()] {
        for name in ["scatterbrain", "scatterbrain-reference"] {
            let a = x.run(&format!("{name}:{base}"), &params).unwrap();
            let b = x.run(&format!("{name}:{base},eps=0"), &params).unwrap();
            assert_eq!(a.o, b.o, "{name}");
            assert_eq!(a.lse, b.lse, "{name}");
            let c = x.run(&format!("{name}:{base},eps=1e-4"), &params).unwrap();
            assert_ne!(a.o, c.o, "{name}: eps changes the estimate");
        }
    }
    const D: Scatterbrain = Scatterbrain::DEFAULT;
    const E1: Scatterbrain = Scatterbrain {
        sparse: Sparse::Lsh,
        n_hashes: 2,
        cluster: 8,
        features: 16,
        seed: 4,
        eps: 1e-4,
        ..D
    };
    const E2: Scatterbrain = Scatterbrain {
        sparse: Sparse::Lsh,
        n_hashes: 3,
        cluster: 5,
        features: 24,
        orthogonal: false,
        seed: 6,
        eps: 0.5,
        ..D
    };
    static A: &[&dyn Method] = &[&Fast(E1), &Reference(E1)];
    static B: &[&dyn Method] = &[&Fast(E2), &Reference(E2)];
    let cases = vec![
        case(1, [2, 1], [23, 31], 16),
        case(2, [4, 2], [41, 41], 32).mask(MaskSpec::Causal),
        case(1, [1, 1], [40, 30], 8).mask(MaskSpec::Causal).offset(3),
        case(1, [1, 1], [30, 30], 8).mask(MaskSpec::Causal).offset(-4),
    ];
    for reg in [A, B] {
        let reg = Registry::new(reg);
        let m = reg.get("scatterbrain").unwrap();
        let cfg = SuiteConfig { registry: reg, cases: cases.clone(), ..SuiteConfig::for_method(m) };
        assert_eq!(run_suite_with(m, &cfg).cases, cases.len());
    }
    assert_lsh_matches_reference_at_large_logits(
        19,
        "sparse=lsh,n_hashes=2,cluster=16,features=0,seed=3,eps=1e-4",
    );
}

#[test]
fn eps_rejections_are_typed() {
    let x = qkv(20, [1, 1, 1], [8, 8], 8, 1.0);
    let p = Params::default();
    for bad in
        ["scatterbrain:sparse=lsh,eps=-1", "scatterbrain:sparse=lsh,eps=1e13", "scatterbrain:eps=x"]
    {
        assert!(matches!(x.run(bad, &p), Err(Error::BadParam { .. })), "{bad}");
    }
    assert!(matches!(x.run("scatterbrain:eps=1e-4", &p), Err(Error::Unsupported { .. })));
    assert!(x.run("scatterbrain:sparse=lsh,cluster=2,eps=1e-4", &p).is_ok());
}
