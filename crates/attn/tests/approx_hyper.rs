//! HyperAttention (spec §5.6): below `min_seq_len` and with one block it is exact; the causal
//! recursion is exact when its fully visible parts are; the sampled residual makes the row mass
//! `Σ_j exp(s_ij)` unbiased over seeds; the error falls with more samples and bigger blocks;
//! causality is bitwise; the seed decides the output; fast = reference; typed errors.

use attn::methods::hyper::plan::sort_key;
use attn::{Error, Params};
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

fn close_to_exact(x: &Qkv, spec: &str, params: &Params) {
    let (o, lse) = x.exact(params);
    for s in [spec.to_string(), spec.replacen("hyper", "hyper-reference", 1)] {
        let out = x.run(&s, params).unwrap();
        let e = rel_err(&out.o, &o);
        assert!(e < 2e-6, "{s} {:?}: relative error to exact {e}", params.mask);
        for (a, b) in out.lse.iter().zip(&lse) {
            assert!((*a as f64 - b).abs() < 1e-5 * b.abs().max(1.0), "{s}: lse {a} vs {b}");
        }
    }
}

/// The budgets at which HyperAttention is exact attention: `min_seq_len` above the length
/// (both modes); one heavy block covering every key (non-causal, and — as the only approximate
/// part of the recursion — causal at any `min_seq_len`).
#[test]
fn exact_at_full_budget() {
    let x = qkv(1, [1, 4, 2], [300, 300], 32, 1.0);
    for params in [Params::default(), Params::causal()] {
        close_to_exact(&x, "hyper:min_seq_len=400", &params);
        close_to_exact(&x, "hyper:min_seq_len=16,block=300,samples=64", &params);
    }
    // Non-square, non-causal, one block.
    let y = qkv(2, [2, 2, 1], [70, 130], 16, 1.0);
    close_to_exact(&y, "hyper:min_seq_len=8,block=130", &Params::default());
}

/// With several blocks it is an estimate: the row mass `exp(lse_i)` is unbiased over seeds
/// (the sampled columns are weighted by `N_k/m`), checked within 5 standard errors per row.
#[test]
fn the_row_mass_is_unbiased_over_seeds() {
    let (n, d) = (128, 8);
    let x = qkv(3, [1, 1, 1], [n, n], d, 0.7);
    let (_, lse) = x.exact(&Params::default());
    let seeds = 600;
    let mut sum = vec![0.0f64; n];
    let mut sq = vec![0.0f64; n];
    for seed in 0..seeds {
        let spec = format!("hyper:min_seq_len=8,block=16,samples=12,projections=3,seed={seed}");
        let out = x.run(&spec, &Params::default()).unwrap();
        for i in 0..n {
            let r = (out.lse[i] as f64 - lse[i]).exp();
            sum[i] += r;
            sq[i] += r * r;
        }
    }
    let mut worst = 0.0f64;
    for i in 0..n {
        let mean = sum[i] / seeds as f64;
        let var = (sq[i] / seeds as f64 - mean * mean).max(0.0);
        let se = (var / seeds as f64).sqrt();
        assert!(se > 0.0, "row {i}: no variance, the estimate is not random");
        worst = worst.max((mean - 1.0).abs() / se);
    }
    assert!(worst < 5.0, "worst row mean is {worst:.2} standard errors from the exact mass");
}

/// More samples and bigger blocks: lower error to exact (averaged over seeds).
#[test]
fn error_falls_with_samples_and_block() {
    let x = qkv(4, [1, 2, 2], [512, 512], 16, 1.0);
    let (o, _) = x.exact(&Params::default());
    let err = |spec: &str| -> f64 {
        (0..6)
            .map(|s| {
                rel_err(&x.run(&format!("{spec},seed={s}"), &Params::default()).unwrap().o, &o)
            })
            .sum::<f64>()
            / 6.0
    };
    let base = err("hyper:min_seq_len=8,block=32,samples=16");
    let more_samples = err("hyper:min_seq_len=8,block=32,samples=256");
    let bigger_block = err("hyper:min_seq_len=8,block=128,samples=16");
    assert!(more_samples < base, "samples 16 → 256: {base} → {more_samples}");
    assert!(bigger_block < base, "block 32 → 128: {base} → {bigger_block}");
}

/// Causal rows ignore later keys bitwise, through the recursion and the hashed parts.
#[test]
fn causal_rows_ignore_the_future_bitwise() {
    let (n, d) = (200, 16);
    let spec = "hyper:min_seq_len=24,block=16,samples=8";
    let base = qkv(5, [1, 2, 1], [n, n], d, 1.0);
    let a = base.run(spec, &Params::causal()).unwrap();
    let cut = 131;
    let mut y = qkv(5, [1, 2, 1], [n, n], d, 1.0);
    for j in cut..n {
        for t in 0..d {
            y.k[j * d + t] = -2.0 * y.k[j * d + t] + 0.5;
            y.v[j * d + t] += 1.0;
        }
    }
    let b = y.run(spec, &Params::causal()).unwrap();
    for h in 0..2 {
        for i in 0..n {
            let r = h * n + i;
            let same = a.o[r * d..(r + 1) * d] == b.o[r * d..(r + 1) * d] && a.lse[r] == b.lse[r];
            assert_eq!(same, i < cut, "head {h} row {i}");
        }
    }
}

#[test]
fn the_seed_decides_the_output_and_fast_equals_reference() {
    let x = qkv(6, [2, 4, 2], [150, 150], 32, 1.0);
    for params in [Params::default(), Params::causal()] {
        let spec = "hyper:min_seq_len=32,block=16,samples=8,seed=3";
        let a = x.run(spec, &params).unwrap();
        let b = x.run(spec, &params).unwrap();
        let c = x.run("hyper:min_seq_len=32,block=16,samples=8,seed=4", &params).unwrap();
        assert_eq!(a.o, b.o);
        assert_eq!(a.lse, b.lse);
        assert_ne!(a.o, c.o);
        let r = x.run(&spec.replacen("hyper", "hyper-reference", 1), &params).unwrap();
        let worst = a.o.iter().zip(&r.o).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 2e-5, "{:?}: fast vs reference max |Δo| {worst}", params.mask);
        assert_eq!(a.stats, r.stats);
        // Fewer scores than exact attention.
        let full = if params.mask == attn::Mask::None { 150 * 150 } else { 150 * 151 / 2 };
        assert!(a.stats.computed_pairs < (full * 2 * 4) as u64, "{:?}", a.stats);
    }
}

/// `min_seq_len = 0`: the causal recursion goes down to single rows (it used to recurse forever
/// on a one-row half and overflow the stack) and stays causal, deterministic and fast = reference.
#[test]
fn min_seq_len_zero_recurses_to_single_rows() {
    let x = qkv(8, [1, 2, 1], [67, 67], 16, 1.0);
    let spec = "hyper:min_seq_len=0,block=8,samples=4";
    let a = x.run(spec, &Params::causal()).unwrap();
    let r = x.run(&spec.replacen("hyper", "hyper-reference", 1), &Params::causal()).unwrap();
    let worst = a.o.iter().zip(&r.o).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(worst < 2e-5, "fast vs reference max |Δo| {worst}");
    assert!(a.o.iter().chain(&a.lse).all(|v| v.is_finite()));
    // Row 0 sees only key 0: its output is v_0 exactly.
    let d_v = 16;
    for h in 0..2 {
        let got = &a.o[h * 67 * d_v..h * 67 * d_v + d_v];
        let want = &x.v[..d_v];
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6), "head {h}");
    }
}

/// Hash keys: identical rows share a key; `x` and `−x` have complementary codes, so their
/// positions on the Gray path are as far apart as complementary codes are (never equal).
#[test]
fn hash_keys_are_deterministic_and_antipodes_differ() {
    let w = attn::methods::hyper::plan::projection(0, 7, 16);
    let mut rng = Rng::new(11);
    for _ in 0..50 {
        let x: Vec<f32> = (0..16).map(|_| rng.normal() as f32).collect();
        let neg: Vec<f32> = x.iter().map(|v| -v).collect();
        assert_eq!(sort_key(&w, &x), sort_key(&w, &x.clone()));
        assert!(sort_key(&w, &x) < 128);
        assert_ne!(sort_key(&w, &x), sort_key(&w, &neg));
    }
}

#[test]
fn parameters_and_rejections_are_typed() {
    let x = qkv(7, [1, 1, 1], [8, 12], 8, 1.0);
    let p = Params::default();
    assert!(matches!(x.run("hyper:block=0", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("hyper:projections=40", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("hyper:samples=-1", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("hyper:buckets=2", &p), Err(Error::UnknownParam { .. })));
    // Causal needs square self-attention.
    assert!(matches!(x.run("hyper", &Params::causal()), Err(Error::Unsupported { .. })));
    assert!(x.run("hyper:samples=0", &p).is_ok());
}

/// The causal recursion at the defaults: a prompt of 8191 or 8192 tokens splits into two exact
/// diagonal halves and one hashed lower-left call of 4096 rows (the lower half takes the extra
/// row of an odd length); 4096 tokens stay exact, and so do 8190 (a 4095-row lower-left call).
#[test]
fn the_recursion_splits_odd_lengths_with_the_longer_lower_half() {
    use attn::methods::hyper::plan::{Head, Piece};
    use attn::methods::hyper::Hyper;
    for (n, hashed) in [(8191, true), (8192, true), (4096, false), (8190, false)] {
        let keys: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
        let cfg = Hyper::DEFAULT;
        let plan = Head { cfg: &cfg, q_keys: &keys, k_keys: &keys, b: 0, h: 0 }.plan(true);
        let gathers = plan.iter().filter(|p| matches!(p, Piece::Gather { .. })).count();
        assert_eq!(gathers > 0, hashed, "n = {n}: {} pieces", plan.len());
        // Every row is covered by exactly one diagonal piece.
        let diag: usize = plan
            .iter()
            .map(|p| match p {
                Piece::Causal { lo, hi } => hi - lo,
                _ => 0,
            })
            .sum();
        assert_eq!(diag, n);
    }
}
