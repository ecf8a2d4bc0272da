//! Reformer LSH attention (spec §1.5 (f)): one bucket and one chunk covering the sequence give
//! exact shared-QK attention with self-masking (also with several rounds: the duplicate
//! correction); the fast path equals the f64 reference at small chunks with many buckets and
//! rounds; the pair count; causality; the seed decides the output; typed errors.

use attn::methods::pattern::{Fast, Reference};
use attn::methods::reformer::Reformer;
use attn::methods::sdpa::reference as sdpa_ref;
use attn::{DenseMask, Error, Mask, Method, Params, Problem, Registry, TensorRef};
use attn_testing::cases::{case, MaskSpec};
use attn_testing::Qkv;
use attn_testing::{run_suite_with, SuiteConfig};

fn qkv(seed: u64, heads: [usize; 3], n: usize, d: usize) -> Qkv {
    Qkv::gaussian(seed, heads, [n, n], d, 1.0)
}

/// The reference of the shared-QK Reformer with everything in one chunk.
trait SharedQk {
    fn exact_shared_qk(&self, causal: bool) -> (Vec<f64>, Vec<f64>);
}

impl SharedQk for Qkv {
    /// Exact attention over unit keys `k_j/|k_j|` where a token sees itself only when the mask
    /// (`causal` or none) leaves it nothing else: the shared-QK Reformer with everything in one
    /// chunk.
    fn exact_shared_qk(&self, causal: bool) -> (Vec<f64>, Vec<f64>) {
        let [_, _, n, d] = self.shape_q;
        let kn: Vec<f32> = self
            .k
            .chunks(d)
            .flat_map(|row| {
                let norm = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                row.iter().map(move |x| (*x as f64 / norm) as f32)
            })
            .collect();
        let flags: Vec<bool> = (0..n * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                let base = |j: usize| !causal || j <= i;
                base(j) && (j != i || (0..n).all(|t| t == i || !base(t)))
            })
            .collect();
        let params =
            Params::default().with_mask(Mask::Dense(DenseMask::new(flags, [1, 1, n, n]).unwrap()));
        let q = TensorRef::new(&self.q[..], self.shape_q).unwrap();
        let k = TensorRef::new(&kn[..], self.shape_kv).unwrap();
        let v = TensorRef::new(&self.v[..], self.shape_kv).unwrap();
        let p = Problem::from_tensors(&q, &k, &v).unwrap();
        let r = params.resolve(&p).unwrap();
        sdpa_ref::forward_f64(&p, &attn::Inputs { q, k, v }, &r)
    }
}

/// Spec §0.5: rtol 1e-4 / atol 1e-5 against the f64 exact result.
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(err <= 1e-5 + 1e-4 * w.abs(), "{what}[{i}]: {g} vs exact {w}");
    }
}

/// One bucket, one chunk of all `N` tokens: exact attention with self-masking, for one round
/// and for several (every pair then co-occurs in every round; the `−ln c_ij` correction must
/// undo the repetition), with GQA and both masks, fast and reference.
#[test]
fn one_bucket_one_chunk_is_exact_shared_qk_attention() {
    let x = qkv(1, [2, 4, 2], 37, 16);
    for causal in [false, true] {
        let params = if causal { Params::causal() } else { Params::default() };
        let (eo, el) = x.exact_shared_qk(causal);
        for spec in [
            "reformer:buckets=1,chunk=37,n_hashes=1",
            "reformer:buckets=1,chunk=64,n_hashes=3",
            "reformer-reference:buckets=1,chunk=37,n_hashes=4",
            // Hashing into many buckets is harmless when one chunk holds every token.
            "reformer:buckets=8,chunk=37,n_hashes=2",
        ] {
            let out = x.run(spec, &params).unwrap();
            let what = format!("{spec} causal={causal}");
            assert_close(&format!("{what} o"), &out.o, &eo);
            assert_close(&format!("{what} lse"), &out.lse, &el);
        }
    }
}

/// `computed_pairs` = pairs scored per round: with one chunk, `R·N·(N−1)` per head without a mask;
/// causal, `R·N(N−1)/2` plus row 0, which falls back on itself.
#[test]
fn pair_count_is_the_pairs_scored_per_round() {
    let x = qkv(2, [1, 2, 1], 20, 8);
    let out = x.run("reformer:buckets=1,chunk=20,n_hashes=3", &Params::default()).unwrap();
    assert_eq!(out.stats.computed_pairs, 2 * 3 * 20 * 19);
    let out = x.run("reformer:buckets=1,chunk=20,n_hashes=3", &Params::causal()).unwrap();
    assert_eq!(out.stats.computed_pairs, 2 * (3 * 20 * 19 / 2 + 1));
    // Smaller chunks score fewer pairs: ≤ 2 chunks of keys per query and round.
    let out = x.run("reformer:buckets=4,chunk=4,n_hashes=2", &Params::default()).unwrap();
    assert!(out.stats.computed_pairs <= 2 * 2 * 20 * 7, "{:?}", out.stats);
}

/// Small chunks, many buckets and rounds (duplicates across rounds, a partial last chunk, the
/// cyclic look-back from chunk 0, self fallbacks): the fast path equals the reference at every
/// SIMD level and thread count, bitwise across thread counts, through the conformance suite.
#[test]
fn fast_equals_reference_at_small_chunks() {
    const SMALL: Reformer = Reformer { n_hashes: 3, chunk: 5, buckets: 6, seed: 7 };
    const TWO: Reformer = Reformer { n_hashes: 4, chunk: 8, buckets: 2, seed: 1 };
    static REG: &[&dyn Method] = &[&Fast(SMALL), &Reference(SMALL)];
    static REG2: &[&dyn Method] = &[&Fast(TWO), &Reference(TWO)];
    let cases = vec![
        case(1, [2, 1], [23, 23], 16),
        case(2, [4, 2], [41, 41], 32).mask(MaskSpec::Causal),
        case(1, [1, 1], [40, 40], 8).mask(MaskSpec::Causal).offset(3),
        case(1, [1, 1], [30, 30], 8).mask(MaskSpec::Causal).offset(-4),
        case(1, [1, 1], [2, 2], 8),
    ];
    for reg in [REG, REG2] {
        let reg = Registry::new(reg);
        let m = reg.get("reformer").unwrap();
        let cfg = SuiteConfig { registry: reg, cases: cases.clone(), ..SuiteConfig::for_method(m) };
        let cov = run_suite_with(m, &cfg);
        assert_eq!(cov.cases, cases.len());
    }
}

/// Implied probabilities are positive and rows sum to 1 (`V = 1` ⇒ `o = 1`); a single token
/// attends to itself.
#[test]
fn rows_sum_to_one_and_a_lone_token_sees_itself() {
    let mut x = qkv(3, [1, 2, 2], 50, 16);
    x.v.iter_mut().for_each(|v| *v = 1.0);
    for params in [Params::default(), Params::causal()] {
        for spec in ["reformer:chunk=6,buckets=4", "reformer-reference:chunk=6,buckets=4"] {
            let out = x.run(spec, &params).unwrap();
            assert!(out.o.iter().all(|o| (o - 1.0).abs() < 1e-5), "{spec} {:?}", params.mask);
        }
    }
    let y = qkv(4, [1, 1, 1], 1, 8);
    let out = y.run("reformer", &Params::default()).unwrap();
    assert_eq!(out.o, y.v);
    assert_eq!(out.stats.computed_pairs, 1);
}

/// Causality: changing the keys and values of tokens after a row leaves the row bitwise
/// unchanged (tokens are hashed by their queries, so the sorting does not move). A row before
/// every key (negative offset) is empty.
#[test]
fn causal_rows_ignore_future_keys_bitwise() {
    let (n, d) = (40, 16);
    let x = qkv(5, [1, 2, 1], n, d);
    let spec = "reformer:chunk=6,buckets=4,n_hashes=3";
    let base = x.run(spec, &Params::causal()).unwrap();
    let cut = 23;
    let mut y = qkv(5, [1, 2, 1], n, d);
    for j in cut..n {
        for e in 0..d {
            y.k[j * d + e] = -3.0 * y.k[j * d + e] + 1.0;
            y.v[j * d + e] -= 1.0;
        }
    }
    let moved = y.run(spec, &Params::causal()).unwrap();
    let mut later_changed = 0;
    for h in 0..2 {
        for i in 0..n {
            let r = h * n + i;
            let same = base.o[r * d..(r + 1) * d] == moved.o[r * d..(r + 1) * d];
            if i < cut {
                assert!(same, "head {h} row {i} changed");
            } else if !same {
                later_changed += 1;
            }
        }
    }
    // Row `cut` itself need not change (a token does not see itself when it has other targets);
    // most later rows see a changed key.
    assert!(later_changed >= n - cut, "only {later_changed} later rows changed");
    let out = x.run(spec, &Params { q_offset: Some(-2), ..Params::causal() }).unwrap();
    for h in 0..2 {
        for i in 0..2 {
            assert_eq!(out.lse[h * n + i], f32::NEG_INFINITY);
            assert!(out.o[(h * n + i) * d..][..d].iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn the_seed_decides_the_output() {
    let x = qkv(6, [2, 2, 2], 64, 16);
    for params in [Params::default(), Params::causal()] {
        let a = x.run("reformer:chunk=8,seed=3", &params).unwrap();
        let b = x.run("reformer:chunk=8,seed=3", &params).unwrap();
        let c = x.run("reformer:chunk=8,seed=4", &params).unwrap();
        assert_eq!(a.o, b.o);
        assert_eq!(a.lse, b.lse);
        assert_ne!(a.o, c.o);
    }
}

/// The hash is angular: scaling a query by a positive factor keeps every bucket, so the
/// sorted rounds are unchanged; the default bucket count is `N/chunk` rounded up to even.
#[test]
fn hashing_is_scale_invariant_and_buckets_default_to_n_over_chunk() {
    let r = Reformer { n_hashes: 2, chunk: 4, buckets: 6, seed: 9 };
    let x = qkv(7, [1, 1, 1], 24, 8);
    let mut y = qkv(7, [1, 1, 1], 24, 8);
    y.q.iter_mut().enumerate().for_each(|(i, q)| *q *= 0.25 + (i / 8) as f32);
    let rounds = |x: &Qkv| {
        let q = TensorRef::new(&x.q[..], x.shape_q).unwrap();
        let k = TensorRef::new(&x.k[..], x.shape_kv).unwrap();
        let v = TensorRef::new(&x.v[..], x.shape_kv).unwrap();
        let p = Problem::from_tensors(&q, &k, &v).unwrap();
        r.rounds(&p, &attn::Inputs { q, k, v }, &r.rotations(8, 0, 6), 0, 0)
    };
    let (a, b) = (rounds(&x), rounds(&y));
    assert_eq!(a, b);
    // Each round's order is a permutation of the tokens.
    let mut sorted = a.order[..24].to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..24).collect::<Vec<u32>>());
    assert_eq!(Reformer::DEFAULT.buckets_for(64), 1);
    assert_eq!(Reformer::DEFAULT.buckets_for(1000), 16);
    assert_eq!(Reformer::DEFAULT.buckets_for(4096), 64);
    assert_eq!(Reformer::DEFAULT.buckets_for(200), 4);
}

#[test]
fn parameters_and_rejections_are_typed() {
    let x = qkv(8, [1, 1, 1], 8, 8);
    let p = Params::default();
    assert!(matches!(x.run("reformer:buckets=3", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("reformer:chunk=0", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("reformer:n_hashes=0", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("reformer:features=2", &p), Err(Error::UnknownParam { .. })));
    let window = Params::default().with_mask(Mask::sliding_window(4));
    assert!(matches!(x.run("reformer", &window), Err(Error::Unsupported { .. })));
    // Shared-QK self-attention: S_q ≠ S_kv is rejected with a reason.
    let mut y = qkv(9, [1, 1, 1], 8, 8);
    y.shape_q = [1, 1, 4, 8];
    y.q.truncate(32);
    assert!(matches!(y.run("reformer", &p), Err(Error::Unsupported { .. })));
    assert!(x.run("reformer:buckets=2,chunk=3,n_hashes=2,seed=5", &p).is_ok());
}
