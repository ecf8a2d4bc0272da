//! Performer FAVOR+ (spec §1.4 (f)): the feature map is an unbiased estimator of `exp(s·q·k)`
//! (Monte Carlo over seeds, 5-standard-error bounds); the error to exact attention falls as the
//! feature count grows (no finite budget makes FAVOR+ exact, so this is its "full budget"
//! oracle); implied rows sum to 1; causality is bitwise; the seed decides the output; the fast
//! prefix-sum path equals the pairwise f64 reference; typed parameter errors and rejections.
//! With `eps > 0` (performer-pytorch's features): fast = reference, the peer's formula written
//! out independently, rows sum to 1, causality bitwise, and the large-`eps` limit (mean of V).

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
    for eps in ["-1e-4", "NaN", "inf", "1e13", "x"] {
        let got = x.run(&format!("performer:eps={eps}"), &p);
        assert!(matches!(got, Err(Error::BadParam { .. })), "eps={eps}: {got:?}");
    }
    assert!(x.run("performer:eps=1e-4", &p).is_ok());
    assert!(x.run("performer:eps=1e12", &p).is_ok());
    assert!(matches!(x.run("performer:eps=1e-4", &window), Err(Error::Unsupported { .. })));
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `eps = 0` is the registered default, bitwise.
#[test]
fn eps_zero_is_the_default_bitwise() {
    let x = qkv(11, [1, 2, 2], [70, 70], 16, 1.5);
    for params in [Params::default(), Params::causal()] {
        for name in ["performer", "performer-reference"] {
            let a = x.run(name, &params).unwrap();
            let b = x.run(&format!("{name}:eps=0"), &params).unwrap();
            assert_eq!(a.o, b.o, "{name} {:?}", params.mask);
            assert_eq!(a.lse, b.lse, "{name} {:?}", params.mask);
        }
    }
}

/// `eps > 0`: the chunked fast path equals the f64 reference, unmasked and causal (square,
/// `S_q < S_kv` with the default bottom-right alignment, and a negative offset), with GQA and
/// more than two key chunks, at the peer's `eps` and at a large one.
#[test]
fn eps_fast_equals_reference() {
    let square = qkv(12, [1, 4, 2], [150, 150], 32, 1.5);
    let wide = qkv(13, [2, 2, 1], [33, 150], 16, 1.5);
    let cases = [
        (&square, Params::default()),
        (&square, Params::causal()),
        (&wide, Params::default()),
        (&wide, Params::causal()),
        (&wide, Params { q_offset: Some(-5), ..Params::causal() }),
    ];
    for eps in ["1e-4", "0.05"] {
        for (x, params) in &cases {
            let a = x.run(&format!("performer:eps={eps},seed=2"), params).unwrap();
            let r = x.run(&format!("performer-reference:eps={eps},seed=2"), params).unwrap();
            let worst = max_abs(&a.o, &r.o);
            assert!(
                worst < 2e-5,
                "eps={eps} {:?}: fast vs reference max |Δo| {worst}",
                params.mask
            );
            for (i, (x, y)) in a.lse.iter().zip(&r.lse).enumerate() {
                let ok =
                    if y.is_finite() { (x - y).abs() <= 1e-5 * y.abs().max(1.0) } else { x == y };
                assert!(ok, "eps={eps} {:?}: lse[{i}] {x} vs {y}", params.mask);
            }
            assert_eq!(a.stats, r.stats);
        }
    }
}

/// The peer's formula written out (performer-pytorch `softmax_kernel` + `linear_attention`):
/// `φ(q)_r = m^{-1/2}(exp(a_r − |q'|²/2 − max_r a_r) + ε)`, `φ(k_j)_r = m^{-1/2}(exp(a_jr −
/// |k'_j|²/2 − max_{j,r} a_jr) + ε)`, `o = φ(q)·Σ φ(k_j) v_jᵀ / φ(q)·Σ φ(k_j)`, with our
/// projection of each head. Unmasked rows, and the last causal row (it sees every key, so its
/// key max is the peer's global one), equal it.
#[test]
fn eps_follows_the_peers_formula() {
    let (h, s, d) = (2usize, 100usize, 16usize);
    let x = qkv(14, [1, h, h], [s, s], d, 1.5);
    let eps = 1e-3;
    let m = default_features(d);
    let rs = (1.0 / (d as f64).sqrt()).sqrt();
    let spec = format!("performer:eps={eps}");
    let plain = x.run(&spec, &Params::default()).unwrap();
    let causal = x.run(&spec, &Params::causal()).unwrap();
    for hh in 0..h {
        let fm =
            FeatureMap::draw(Key { seed: 0, layer: 0, head: hh as u64, purpose: 0 }, m, d, true);
        let rows = |t: &[f32]| -> Vec<Vec<f64>> {
            (0..s).map(|i| (0..d).map(|c| rs * t[(hh * s + i) * d + c] as f64).collect()).collect()
        };
        let (q, k) = (rows(&x.q), rows(&x.k));
        let proj = |x: &[f64]| -> Vec<f64> {
            fm.omega().chunks_exact(d).map(|w| w.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
        };
        let half = |x: &[f64]| 0.5 * x.iter().map(|v| v * v).sum::<f64>();
        let kp: Vec<Vec<f64>> = k.iter().map(|x| proj(x)).collect();
        let big_m = kp.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
        let norm = (m as f64).powf(-0.5);
        let kf: Vec<Vec<f64>> = kp
            .iter()
            .zip(&k)
            .map(|(a, x)| a.iter().map(|a| norm * ((a - half(x) - big_m).exp() + eps)).collect())
            .collect();
        let mut ksum = vec![0.0f64; m];
        let mut ctx = vec![0.0f64; m * d];
        for (j, f) in kf.iter().enumerate() {
            for r in 0..m {
                ksum[r] += f[r];
                for c in 0..d {
                    ctx[r * d + c] += f[r] * x.v[(hh * s + j) * d + c] as f64;
                }
            }
        }
        for (i, qi) in q.iter().enumerate() {
            let a = proj(qi);
            let amax = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let qf: Vec<f64> =
                a.iter().map(|a| norm * ((a - half(qi) - amax).exp() + eps)).collect();
            let den: f64 = qf.iter().zip(&ksum).map(|(a, b)| a * b).sum();
            let want: Vec<f32> = (0..d)
                .map(|c| ((0..m).map(|r| qf[r] * ctx[r * d + c]).sum::<f64>() / den) as f32)
                .collect();
            let row = (hh * s + i) * d;
            let got = &plain.o[row..row + d];
            assert!(max_abs(got, &want) < 2e-5, "head {hh} row {i}: {got:?} vs {want:?}");
            if i == s - 1 {
                let got = &causal.o[row..row + d];
                assert!(max_abs(got, &want) < 2e-5, "causal head {hh} last row");
            }
        }
    }
}

/// With `eps > 0` implied rows still sum to 1, a causal row ignores later keys bitwise (its key
/// max included), and a huge `eps` turns every row into the mean of the values it sees.
#[test]
fn eps_rows_are_causal_convex_and_tend_to_the_mean_of_v() {
    let mut ones = qkv(15, [1, 2, 1], [90, 90], 16, 1.5);
    ones.v.iter_mut().for_each(|v| *v = 1.0);
    for params in [Params::default(), Params::causal()] {
        for spec in ["performer:eps=1e-4", "performer-reference:eps=1e-4"] {
            let out = ones.run(spec, &params).unwrap();
            assert!(out.o.iter().all(|o| (o - 1.0).abs() < 1e-5), "{spec} {:?}", params.mask);
        }
    }
    let (s, d, cut) = (90usize, 16usize, 70usize);
    let x = qkv(16, [1, 2, 1], [s, s], d, 1.5);
    let mut y = qkv(16, [1, 2, 1], [s, s], d, 1.5);
    for j in cut..s {
        for c in 0..d {
            y.k[j * d + c] *= 3.0; // larger projections: the key max would move
            y.v[j * d + c] -= 1.0;
        }
    }
    let params = Params::causal();
    let (a, b) = (
        x.run("performer:eps=1e-4", &params).unwrap(),
        y.run("performer:eps=1e-4", &params).unwrap(),
    );
    for h in 0..2 {
        for i in 0..s {
            let r = (h * s + i) * d;
            assert_eq!(a.o[r..r + d] == b.o[r..r + d], i < cut, "head {h} row {i}");
        }
    }
    for (causal, params) in [(false, Params::default()), (true, Params::causal())] {
        let out = x.run("performer:eps=1e6", &params).unwrap();
        for h in 0..2 {
            for i in 0..s {
                let n = if causal { i + 1 } else { s };
                for c in 0..d {
                    let mean = (0..n).map(|j| x.v[j * d + c] as f64).sum::<f64>() / n as f64;
                    let got = out.o[(h * s + i) * d + c] as f64;
                    assert!(
                        (got - mean).abs() < 1e-4,
                        "{:?} head {h} row {i}: {got} vs {mean}",
                        params.mask
                    );
                }
            }
        }
    }
}
