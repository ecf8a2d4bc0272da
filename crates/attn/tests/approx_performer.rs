//! Performer FAVOR+ (spec §1.4 (f)): the feature map is an unbiased estimator of `exp(s·q·k)`
//! (Monte Carlo over seeds, 5-standard-error bounds); the error to exact attention falls as the
//! feature count grows (no finite budget makes FAVOR+ exact, so this is its "full budget"
//! oracle); implied rows sum to 1; causality is bitwise; the seed decides the output; the fast
//! prefix-sum path equals the pairwise f64 reference; typed parameter errors and rejections.

use attn::methods::performer::{default_features, FeatureMap};
use attn::primitives::rng::Key;
use attn::{Error, Mask, Params};
use attn_testing::rand::Rng;
use attn_testing::Qkv;

fn qkv(seed: u64, heads: [usize; 3], lens: [usize; 2], d: usize, sigma: f64) -> Qkv {
    Qkv::gaussian(seed, heads, lens, d, sigma)
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| b.powi(2)).sum();
    (num / den).sqrt()
}

/// `E[φ(q)·φ(k)] = exp(s·q·k)` for i.i.d. and orthogonal features: the mean over `n` seeds is
/// within 5 standard errors (sample standard deviation / √n) of the truth for several pairs.
#[test]
fn features_are_unbiased_for_the_softmax_kernel() {
    let (d, m, n) = (8usize, 16usize, 20_000u64);
    let scale = 1.0 / (d as f64).sqrt();
    let mut rng = Rng::new(11);
    // Small norms (spec: the estimator is heavy-tailed).
    let pairs: Vec<(Vec<f64>, Vec<f64>)> = (0..4)
        .map(|_| {
            let mut g = || (0..d).map(|_| 0.5 * rng.normal()).collect::<Vec<_>>();
            (g(), g())
        })
        .collect();
    for orthogonal in [false, true] {
        let (mut a, mut e) = (vec![0.0; m], vec![0.0; m]);
        let mut sums = vec![(0.0f64, 0.0f64); pairs.len()];
        for seed in 0..n {
            let fm =
                FeatureMap::draw(Key { seed, layer: 0, head: 0, purpose: 0 }, m, d, orthogonal);
            for ((q, k), s) in pairs.iter().zip(&mut sums) {
                fm.log_features_f64(q, scale, &mut a);
                fm.log_features_f64(k, scale, &mut e);
                let est: f64 = a.iter().zip(&e).map(|(x, y)| (x + y).exp()).sum::<f64>() / m as f64;
                s.0 += est;
                s.1 += est * est;
            }
        }
        for ((q, k), (s1, s2)) in pairs.iter().zip(&sums) {
            let truth = (scale * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>()).exp();
            let mean = s1 / n as f64;
            let sd = (s2 / n as f64 - mean * mean).max(0.0).sqrt();
            let se = sd / (n as f64).sqrt();
            assert!(
                (mean - truth).abs() < 5.0 * se,
                "orthogonal={orthogonal}: mean {mean} vs exp(s q·k) {truth} (se {se})"
            );
        }
    }
}

#[test]
fn orthogonal_rows_are_orthogonal_within_a_block() {
    let d = 16;
    let fm = FeatureMap::draw(Key::default(), 40, d, true);
    let w = fm.omega();
    for block in 0..2 {
        for r in 0..d {
            for c in 0..r {
                let (a, b) = (&w[(block * d + r) * d..][..d], &w[(block * d + c) * d..][..d]);
                let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
                assert!(dot.abs() < 1e-10 * na * nb, "rows {r},{c} of block {block}: {dot}");
            }
        }
    }
    assert_eq!(default_features(64), 266);
}

/// Error to exact attention shrinks as `m` grows (≈ 1/√m): from 64 to 16384 features it must
/// fall by at least 4× (the √256 = 16× expectation leaves a wide margin), and the estimate of
/// `lse` converges too.
#[test]
fn error_to_exact_falls_with_the_feature_count() {
    let x = qkv(5, [1, 2, 2], [48, 48], 16, 0.5);
    for params in [Params::default(), Params::causal()] {
        let (eo, el) = x.exact(&params);
        let err = |m: usize| {
            let out = x.run(&format!("performer:features={m}"), &params).unwrap();
            (rel_err(&out.o, &eo), rel_err(&out.lse, &el))
        };
        let (lo, ll) = err(64);
        let (ho, hl) = err(16384);
        assert!(ho * 4.0 < lo, "{:?}: o error {lo} at m=64, {ho} at m=16384", params.mask);
        assert!(hl * 4.0 < ll, "{:?}: lse error {ll} at m=64, {hl} at m=16384", params.mask);
        assert!(ho < 0.05, "{:?}: o error {ho} at m=16384", params.mask);
    }
}

/// Implied probabilities are positive and rows sum to 1: with `V = 1` every row's output is 1.
#[test]
fn rows_sum_to_one() {
    let mut x = qkv(6, [2, 4, 2], [40, 56], 32, 1.0);
    x.v.iter_mut().for_each(|v| *v = 1.0);
    for params in [Params::default(), Params::causal()] {
        for spec in ["performer", "performer-reference"] {
            let out = x.run(spec, &params).unwrap();
            for (i, o) in out.o.iter().enumerate() {
                assert!((o - 1.0).abs() < 1e-5, "{spec} {:?}: o[{i}] = {o}", params.mask);
            }
        }
    }
}

/// Causality: changing keys/values after a row's position leaves that row bitwise unchanged,
/// and rows before position 0 are empty (`o = 0`, `lse = −∞`).
#[test]
fn causal_rows_ignore_the_future_bitwise() {
    let x = qkv(7, [1, 2, 1], [30, 30], 16, 1.0);
    let params = Params::causal();
    let base = x.run("performer", &params).unwrap();
    let cut = 17;
    let mut y = qkv(7, [1, 2, 1], [30, 30], 16, 1.0);
    for j in cut..30 {
        for d in 0..16 {
            y.k[j * 16 + d] *= 3.0;
            y.v[j * 16 + d] -= 1.0;
        }
    }
    let moved = y.run("performer", &params).unwrap();
    for h in 0..2 {
        for i in 0..30 {
            let r = h * 30 + i;
            let same = base.o[r * 16..(r + 1) * 16] == moved.o[r * 16..(r + 1) * 16];
            assert_eq!(same, i < cut, "head {h} row {i}");
        }
    }
    // S_q > S_kv with the default offset: the first rows see nothing.
    let z = qkv(8, [1, 1, 1], [12, 5], 8, 1.0);
    for spec in ["performer", "performer-reference"] {
        let out = z.run(spec, &Params { q_offset: Some(-3), ..Params::causal() }).unwrap();
        for i in 0..3 {
            assert_eq!(out.lse[i], f32::NEG_INFINITY, "{spec} row {i}");
            assert!(out.o[i * 8..(i + 1) * 8].iter().all(|&v| v == 0.0));
        }
        assert!(out.lse[3..].iter().all(|l| l.is_finite()));
        assert!(out.o.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn the_seed_decides_the_output_and_fast_equals_reference() {
    let x = qkv(9, [2, 4, 2], [33, 65], 32, 1.0);
    for params in [Params::default(), Params::causal()] {
        let a = x.run("performer:seed=3", &params).unwrap();
        let b = x.run("performer:seed=3", &params).unwrap();
        let c = x.run("performer:seed=4", &params).unwrap();
        assert_eq!(a.o, b.o);
        assert_eq!(a.lse, b.lse);
        assert_ne!(a.o, c.o);
        let r = x.run("performer-reference:seed=3", &params).unwrap();
        let worst = a.o.iter().zip(&r.o).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 2e-5, "{:?}: fast vs reference max |Δo| {worst}", params.mask);
        let worst = a
            .lse
            .iter()
            .zip(&r.lse)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "{:?}: fast vs reference lse {worst}", params.mask);
        assert_eq!(a.stats, r.stats);
        // (S_q + S_kv) · m per (batch, query head); D = 32 → m = ⌊32 ln 32⌋ = 110.
        assert_eq!(a.stats.computed_pairs, (33 + 65) * 110 * 2 * 4);
    }
}

#[test]
fn parameters_and_rejections_are_typed() {
    let x = qkv(10, [1, 1, 1], [8, 8], 8, 1.0);
    let p = Params::default();
    assert!(matches!(x.run("performer:features=x", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("performer:orthogonal=maybe", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("performer:buckets=2", &p), Err(Error::UnknownParam { .. })));
    let window = Params::default().with_mask(Mask::sliding_window(4));
    assert!(matches!(x.run("performer", &window), Err(Error::Unsupported { .. })));
    assert!(x.run("performer:features=7,orthogonal=false", &p).is_ok());
}
