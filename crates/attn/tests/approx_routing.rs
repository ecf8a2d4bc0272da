//! Routing Transformer attention (spec §6 (f)): one cluster gives exact attention; the fast path
//! equals the f64 reference over the same routing at small windows; rows sum to 1; every key in
//! a query's support is routed there or local; causality (bitwise); the seed decides the
//! output; loaded centroids; the k-means finds well-separated directions; typed errors;
//! `combine=average` (spec §6.2 step 5): the union where each token has one cluster, 0 for a
//! stranded query, the hand-computed mean of two clusters.

use attn::methods::pattern::{Fast, Reference};
use attn::methods::routing::{Balance, Centroids, Combine, Routing, AVERAGE_EPS};
use attn::{Error, Inputs, Mask, Method, OutputMut, Par, Params, Problem, Registry, TensorRef};
use attn_testing::cases::{case, MaskSpec};
use attn_testing::Qkv;
use attn_testing::{run_suite_with, SuiteConfig};

fn qkv(seed: u64, heads: [usize; 3], n: usize, d: usize) -> Qkv {
    Qkv::gaussian(seed, heads, [n, n], d, 1.0)
}

/// Spec §0.5: rtol 1e-4 / atol 1e-5 against the f64 exact result.
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(err <= 1e-5 + 1e-4 * w.abs(), "{what}[{i}]: {g} vs exact {w}");
    }
}

/// Runs a method object (not from the registry) on `x`.
fn run_method(m: &dyn Method, x: &Qkv, params: &Params) -> (Vec<f32>, Vec<f32>, u64) {
    let inputs = x.tensors();
    let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
    let r = params.resolve(&p).unwrap();
    assert!(m.unsupported(&p, params).is_empty(), "{:?}", m.unsupported(&p, params));
    let mut o = vec![f32::NAN; p.out_len()];
    let mut lse = vec![f32::NAN; p.lse_len()];
    let stats =
        m.forward(&p, &inputs, &r, Par::Seq, OutputMut { o: &mut o, lse: &mut lse }).unwrap();
    (o, lse, stats.computed_pairs)
}

/// Budget = everything: one cluster holds every key, so each query sees every allowed key
/// (whatever the local window) — exact attention, also with GQA, S_q ≠ S_kv, a query offset and
/// both masks; `memberships = C` does the same with several clusters.
#[test]
fn one_cluster_is_exact_attention() {
    let mut cases = vec![qkv(1, [2, 4, 2], 37, 16), qkv(2, [1, 1, 1], 70, 8)];
    let mut short = Qkv::gaussian(3, [1, 2, 1], [9, 30], 16, 1.0);
    short.v.iter_mut().for_each(|v| *v *= 2.0);
    cases.push(short);
    for x in &cases {
        for params in
            [Params::default(), Params::causal(), Params { q_offset: Some(5), ..Params::causal() }]
        {
            let (eo, el) = x.exact(&params);
            for spec in [
                "routing:clusters=1",
                "routing:clusters=1,local=0",
                "routing:clusters=1,local=7",
                "routing-reference:clusters=1,local=3",
                // Nearest: r + r_k > C; top-w (no mask): r = r_k = C, every token in every cluster.
                "routing:clusters=4,memberships=4,key_memberships=4,iters=3",
                "routing-reference:clusters=3,memberships=3,key_memberships=3,local=0",
                "routing:clusters=5,memberships=2,key_memberships=4,sink=4,local=2,balance=nearest",
                "routing:clusters=2,key_memberships=2,sink=100",
                // A window as long as the keys: ⌈S_kv / window⌉ = 1.
                "routing:window=100",
            ] {
                let out = x.run(spec, &params).unwrap();
                let what = format!("{spec} {:?} {:?}", x.shape_q, params.q_offset);
                assert_close(&format!("{what} o"), &out.o, &eo);
                assert_close(&format!("{what} lse"), &out.lse, &el);
            }
        }
    }
}

/// Small windows, several clusters and memberships, local windows that overlap the clusters,
/// partial tiles, rows before every key: the fast path equals the reference at every SIMD level
/// and thread count (bitwise across thread counts), through the conformance suite.
#[test]
fn fast_equals_reference_at_small_windows() {
    const SMALL: Routing = Routing {
        clusters: 0,
        window: 8,
        iters: 3,
        memberships: 1,
        key_memberships: 1,
        local: 4,
        sink: 0,
        seed: 7,
        balance: Balance::Auto,
        combine: Combine::Union,
        centroids: None,
    };
    const MULTI: Routing = Routing {
        clusters: 5,
        window: 512,
        iters: 2,
        memberships: 2,
        key_memberships: 1,
        local: 0,
        sink: 0,
        seed: 1,
        balance: Balance::Auto,
        combine: Combine::Union,
        centroids: None,
    };
    // Pairs sharing several clusters (the −ln c_ij correction), sinks overlapping the windows.
    const DUP: Routing = Routing {
        clusters: 6,
        window: 512,
        iters: 2,
        memberships: 3,
        key_memberships: 2,
        local: 5,
        sink: 3,
        seed: 2,
        balance: Balance::Auto,
        combine: Combine::Union,
        centroids: None,
    };
    // Balanced top-w with several clusters per token (stranded queries, pairs sharing
    // clusters), S_q ≠ S_kv: non-causal cases only (causal rejects it).
    const TOPW: Routing = Routing {
        clusters: 7,
        window: 512,
        iters: 2,
        memberships: 2,
        key_memberships: 3,
        local: 3,
        sink: 2,
        seed: 5,
        balance: Balance::TopW,
        combine: Combine::Union,
        centroids: None,
    };
    static REG: &[&dyn Method] = &[&Fast(SMALL), &Reference(SMALL)];
    static REG2: &[&dyn Method] = &[&Fast(MULTI), &Reference(MULTI)];
    static REG3: &[&dyn Method] = &[&Fast(DUP), &Reference(DUP)];
    let cases = vec![
        case(1, [2, 1], [23, 23], 16),
        case(2, [4, 2], [141, 141], 32).mask(MaskSpec::Causal),
        case(1, [1, 1], [100, 100], 8).mask(MaskSpec::Causal).offset(3),
        case(1, [1, 1], [30, 30], 8).mask(MaskSpec::Causal).offset(-4),
        case(1, [2, 2], [17, 300], 16).mask(MaskSpec::Causal),
        case(1, [1, 1], [1, 65], 8),
    ];
    // Under causal (nearest routing): clusters whose keys all come later, sinks and windows
    // inside every cluster's softmax.
    const AVG_DUP: Routing = Routing { combine: Combine::Average, ..DUP };
    const AVG_MULTI: Routing = Routing { combine: Combine::Average, ..MULTI };
    static REG8: &[&dyn Method] = &[&Fast(AVG_DUP), &Reference(AVG_DUP)];
    static REG9: &[&dyn Method] = &[&Fast(AVG_MULTI), &Reference(AVG_MULTI)];
    for reg in [REG, REG2, REG3, REG8, REG9] {
        let reg = Registry::new(reg);
        let m = reg.get("routing").unwrap();
        let cfg = SuiteConfig { registry: reg, cases: cases.clone(), ..SuiteConfig::for_method(m) };
        let cov = run_suite_with(m, &cfg);
        assert_eq!(cov.cases, cases.len());
    }
    // The same with more clusters than one 64-bit set holds (the fast path's c_ij by marks).
    const TOPW_WIDE: Routing = Routing { clusters: 70, iters: 1, ..TOPW };
    static REG4: &[&dyn Method] = &[&Fast(TOPW), &Reference(TOPW)];
    static REG5: &[&dyn Method] = &[&Fast(TOPW_WIDE), &Reference(TOPW_WIDE)];
    let cases = vec![
        case(1, [2, 1], [23, 23], 16),
        case(2, [4, 2], [141, 141], 32),
        case(1, [2, 2], [17, 300], 16),
        case(1, [1, 1], [130, 40], 8),
        case(1, [1, 1], [1, 65], 8),
    ];
    // combine=average: per-cluster softmaxes with the sinks and windows inside each, stranded
    // queries (top-w) left at 0, keys in several clusters without a correction.
    const AVG_TOPW: Routing = Routing { combine: Combine::Average, ..TOPW };
    const AVG_WIDE: Routing = Routing { combine: Combine::Average, ..TOPW_WIDE };
    static REG6: &[&dyn Method] = &[&Fast(AVG_TOPW), &Reference(AVG_TOPW)];
    static REG7: &[&dyn Method] = &[&Fast(AVG_WIDE), &Reference(AVG_WIDE)];
    for reg in [REG4, REG5, REG6, REG7] {
        let reg = Registry::new(reg);
        let m = reg.get("routing").unwrap();
        let cfg = SuiteConfig { registry: reg, cases: cases.clone(), ..SuiteConfig::for_method(m) };
        assert_eq!(run_suite_with(m, &cfg).cases, cases.len());
    }
}

/// Balanced routing (spec §6.2 step 3), without a mask by default: every cluster holds exactly
/// `w_k = min(r_k·⌈S_kv/C⌉, S_kv)` keys, the ones most similar to its centroid; its queries are
/// its `w_q = min(r·⌈S_q/C⌉, S_q)` most similar ones plus the queries no cluster took whose
/// nearest centroid it is (each of those in that cluster only). Also with `S_q ≠ S_kv` and GQA.
#[test]
fn topw_clusters_take_their_most_similar_tokens() {
    let unit = |x: &[f32]| {
        let n = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        x.iter().map(|v| *v as f64 / n).collect::<Vec<f64>>()
    };
    for (x, cfg) in [
        (qkv(11, [1, 1, 1], 200, 16), Routing { window: 16, ..Routing::DEFAULT }),
        (
            Qkv::gaussian(12, [1, 4, 2], [90, 130], 8, 1.0),
            Routing { clusters: 6, memberships: 2, key_memberships: 3, ..Routing::DEFAULT },
        ),
        (qkv(13, [1, 1, 1], 40, 8), Routing { clusters: 64, ..Routing::DEFAULT }),
    ] {
        let inputs = x.tensors();
        let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
        let r = Params::default().resolve(&p).unwrap();
        let d = p.d;
        for h in 0..p.h {
            let routes = cfg.routes(&p, &inputs, &r, 0, h);
            let c = routes.clusters;
            let (wq, wk) = Routing::balanced_sizes(
                cfg.memberships.min(c),
                cfg.key_memberships.min(c),
                c,
                p.s_q,
                p.s_kv,
            );
            assert_eq!(wq, (cfg.memberships.min(c) * p.s_q.div_ceil(c)).min(p.s_q));
            let hk = h / p.group();
            let qs: Vec<Vec<f64>> =
                (0..p.s_q).map(|i| unit(&x.q[(h * p.s_q + i) * d..][..d])).collect();
            let ks: Vec<Vec<f64>> =
                (0..p.s_kv).map(|j| unit(&x.k[(hk * p.s_kv + j) * d..][..d])).collect();
            let sim = |u: &[f64], k: usize| {
                let mu = &routes.centroids[k * d..(k + 1) * d];
                u.iter().zip(mu).map(|(a, b)| a * *b as f64).sum::<f64>()
            };
            for k in 0..c {
                // Keys: exactly w_k, none outside more similar (f32 GEMM: 1e-5 slack).
                let keys = routes.cluster_keys(k);
                assert_eq!(keys.len(), wk, "cluster {k} keys");
                let inside = keys.iter().map(|&j| sim(&ks[j as usize], k)).fold(f64::MAX, f64::min);
                for j in (0..p.s_kv).filter(|j| !keys.contains(&(*j as u32))) {
                    assert!(sim(&ks[j], k) <= inside + 1e-5, "key {j} should be in cluster {k}");
                }
                // Queries: the w_q most similar, plus stranded ones whose nearest it is.
                let rows = routes.cluster_queries(k);
                assert!(rows.len() >= wq, "cluster {k}: {} queries < {wq}", rows.len());
                let mut by_sim: Vec<f64> = rows.iter().map(|&i| sim(&qs[i as usize], k)).collect();
                by_sim.sort_by(|a, b| b.total_cmp(a));
                let cut = by_sim[wq - 1];
                for i in (0..p.s_q).filter(|i| !rows.contains(&(*i as u32))) {
                    assert!(sim(&qs[i], k) <= cut + 1e-5, "query {i} should be in cluster {k}");
                }
            }
            // Every query has a cluster; one in a single cluster that is not among its w_q most
            // similar was stranded and sits in its nearest.
            for i in 0..p.s_q {
                let cs = routes.clusters_of(i);
                assert!(!cs.is_empty(), "query {i} has no cluster");
                let k = cs[0] as usize;
                let s = sim(&qs[i], k);
                let better = (0..p.s_q).filter(|&u| sim(&qs[u], k) > s + 1e-5).count();
                if better >= wq {
                    assert_eq!(cs.len(), 1);
                    assert!((0..c).all(|u| sim(&qs[i], u) <= s + 1e-5), "query {i}: not nearest");
                }
            }
        }
    }
}

/// The balanced budget = everything: one cluster (`clusters=1`, or `window ≥ S_kv`), or every
/// token in every cluster (`memberships = key_memberships = C`), gives exact attention; with
/// GQA, `S_q ≠ S_kv`, sinks and any local window.
#[test]
fn topw_full_budget_is_exact() {
    let mut short = Qkv::gaussian(14, [1, 4, 2], [21, 50], 16, 1.0);
    short.v.iter_mut().for_each(|v| *v *= 2.0);
    for x in [qkv(15, [2, 2, 1], 45, 8), short] {
        let params = Params::default();
        let (eo, el) = x.exact(&params);
        for spec in [
            "routing:balance=topw,clusters=1",
            "routing:balance=topw,clusters=1,local=0",
            "routing-reference:balance=topw,clusters=1,local=3,sink=2",
            "routing:balance=topw,window=64,local=0",
            "routing:balance=topw,clusters=5,memberships=5,key_memberships=5,local=1",
            "routing-reference:clusters=3,memberships=3,key_memberships=3,local=0",
        ] {
            let out = x.run(spec, &params).unwrap();
            assert_close(&format!("{spec} o"), &out.o, &eo);
            assert_close(&format!("{spec} lse"), &out.lse, &el);
        }
    }
}

/// Top-w is not causal: asked for under a causal mask it is a typed rejection naming the reason;
/// the default (`auto`) routes causal calls by the nearest centroid and non-causal ones by top-w.
#[test]
fn topw_under_causal_is_rejected() {
    let x = qkv(16, [1, 1, 1], 32, 8);
    for spec in ["routing:balance=topw", "routing-reference:balance=topw"] {
        match x.run(spec, &Params::causal()) {
            Err(Error::Unsupported { reasons, .. }) => {
                let why = format!("{reasons:?}");
                assert!(why.contains("not causal"), "{why}");
            }
            other => panic!("{spec}: expected a rejection, got {:?}", other.map(|o| o.stats)),
        }
    }
    assert!(x.run("routing:balance=nearest", &Params::causal()).is_ok());
    assert!(matches!(
        x.run("routing:balance=top", &Params::default()),
        Err(Error::BadParam { .. })
    ));
    let auto = Routing::DEFAULT;
    assert_eq!(auto.balance_for(&Mask::Causal), Balance::Nearest);
    assert_eq!(auto.balance_for(&Mask::None), Balance::TopW);
    // auto = nearest under causal: the same bits as asking for it.
    let a = x.run("routing:window=8", &Params::causal()).unwrap();
    let b = x.run("routing:window=8,balance=nearest", &Params::causal()).unwrap();
    assert_eq!(a.o, b.o);
    let c = x.run("routing:window=8", &Params::default()).unwrap();
    let t = x.run("routing:window=8,balance=topw", &Params::default()).unwrap();
    let n = x.run("routing:window=8,balance=nearest", &Params::default()).unwrap();
    assert_eq!(c.o, t.o);
    assert_ne!(c.o, n.o);
}

/// Implied probabilities are positive and rows sum to 1 (`V = 1` ⇒ `o = 1`); every row has a
/// key with the default local window of 1 (its own position) under causal; with no local
/// window a causal row whose clusters hold no earlier key is empty (`o = 0`, `lse = −∞`).
#[test]
fn rows_sum_to_one_and_empty_rows_are_zero() {
    let mut x = qkv(3, [1, 2, 2], 90, 16);
    x.v.iter_mut().for_each(|v| *v = 1.0);
    for params in [Params::default(), Params::causal()] {
        for spec in
            ["routing:window=10,local=1", "routing-reference:window=10,memberships=2,local=3"]
        {
            let out = x.run(spec, &params).unwrap();
            assert!(out.o.iter().all(|o| (o - 1.0).abs() < 1e-5), "{spec} {:?}", params.mask);
            assert!(out.lse.iter().all(|l| l.is_finite()));
        }
    }
    // Row 0 under causal without a local window sees key 0 only if both share a cluster.
    let out = x.run("routing:window=10,local=0", &Params::causal()).unwrap();
    let empty = out.lse.iter().filter(|l| **l == f32::NEG_INFINITY).count();
    for (r, l) in out.lse.iter().enumerate() {
        let o = &out.o[r * 16..(r + 1) * 16];
        if *l == f32::NEG_INFINITY {
            assert!(o.iter().all(|&v| v == 0.0));
        } else {
            assert!(o.iter().all(|&v| (v - 1.0).abs() < 1e-5));
        }
    }
    assert!(empty > 0, "some early causal row should find no key of its cluster");
}

/// The support is the routing: with `V = one-hot(position)` each output row is the row's
/// attention weights, which must vanish outside the keys sharing a cluster with it, the sinks and
/// the local window; the pair count covers the support and stays below dense.
#[test]
fn weights_stay_inside_the_clusters_and_the_window() {
    let (n, d) = (96, 16);
    let mut x = Qkv::gaussian(4, [1, 1, 1], [n, n], d, 1.0);
    // D_v = N: v_j = e_j.
    x.shape_kv = [1, 1, n, d];
    let mut v = vec![0.0f32; n * n];
    (0..n).for_each(|j| v[j * n + j] = 1.0);
    let inputs = Inputs {
        q: TensorRef::new(&x.q[..], x.shape_q).unwrap(),
        k: TensorRef::new(&x.k[..], x.shape_kv).unwrap(),
        v: TensorRef::new(&v[..], [1, 1, n, n]).unwrap(),
    };
    let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
    for params in [Params::default(), Params::causal()] {
        let r = params.resolve(&p).unwrap();
        let cfg = Routing {
            window: 12,
            local: 5,
            sink: 2,
            memberships: 2,
            key_memberships: 2,
            ..Routing::DEFAULT
        };
        let routes = cfg.routes(&p, &inputs, &r, 0, 0);
        assert_eq!(routes.clusters, 8);
        let mut o = vec![f32::NAN; n * n];
        let mut lse = vec![f32::NAN; n];
        let stats = Fast(cfg.clone())
            .forward(&p, &inputs, &r, Par::Seq, OutputMut { o: &mut o, lse: &mut lse })
            .unwrap();
        let mut support = 0u64;
        for i in 0..n {
            let row = &o[i * n..(i + 1) * n];
            assert!((row.iter().map(|&w| w as f64).sum::<f64>() - 1.0).abs() < 1e-5);
            for (j, &w) in row.iter().enumerate() {
                let causal_ok = !matches!(params.mask, Mask::Causal) || j <= i;
                let inside = ((routes.routed(i, j) || j < 2) && causal_ok) || (j <= i && j + 5 > i);
                support += inside as u64;
                if inside {
                    assert!(w > 0.0, "row {i} key {j}: in the support but weight 0");
                } else {
                    assert_eq!(w, 0.0, "row {i} key {j}: outside the support");
                }
            }
        }
        // The fast path scores whole tiles: at least the support (a pair sharing two clusters
        // is scored twice). With one cluster per token, fewer than dense.
        assert!(stats.computed_pairs >= support, "{} < {support}", stats.computed_pairs);
        let one = Routing { window: 12, local: 1, ..Routing::DEFAULT };
        let stats = Fast(one)
            .forward(&p, &inputs, &r, Par::Seq, OutputMut { o: &mut o, lse: &mut lse })
            .unwrap();
        assert!(stats.computed_pairs < (n * n / 2) as u64, "{}", stats.computed_pairs);
    }
}

/// Causality: changing the keys and values after a row leaves the row bitwise unchanged (the
/// k-means sees the queries and only the keys every row may see; a key's cluster is its own
/// nearest centroid). A row before every key (negative offset) is empty.
#[test]
fn causal_rows_ignore_future_keys_bitwise() {
    let (n, d) = (200, 16);
    let x = qkv(5, [1, 2, 1], n, d);
    for spec in [
        "routing:window=16,local=4",
        "routing:clusters=3,memberships=2",
        "routing-reference:window=20",
        "routing:clusters=3,memberships=2,local=4,combine=average",
        "routing-reference:window=20,sink=2,combine=average",
    ] {
        let base = x.run(spec, &Params::causal()).unwrap();
        let cut = 123;
        let mut y = x.clone();
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
                let same = base.o[r * d..(r + 1) * d] == moved.o[r * d..(r + 1) * d]
                    && base.lse[r] == moved.lse[r];
                if i < cut {
                    assert!(same, "{spec}: head {h} row {i} changed");
                } else if !same {
                    later_changed += 1;
                }
            }
        }
        assert!(later_changed >= n - cut, "{spec}: only {later_changed} later rows changed");
    }
    let out =
        x.run("routing:window=16", &Params { q_offset: Some(-2), ..Params::causal() }).unwrap();
    for h in 0..2 {
        for i in 0..2 {
            assert_eq!(out.lse[h * n + i], f32::NEG_INFINITY);
            assert!(out.o[(h * n + i) * d..][..d].iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn the_seed_decides_the_output() {
    let x = qkv(6, [2, 2, 2], 128, 16);
    for params in [Params::default(), Params::causal()] {
        // Without a mask this is balanced top-w routing, under causal nearest.
        let a = x.run("routing:window=16,local=1,seed=3", &params).unwrap();
        let b = x.run("routing:window=16,local=1,seed=3", &params).unwrap();
        let c = x.run("routing:window=16,local=1,seed=4", &params).unwrap();
        assert_eq!(a.o, b.o);
        assert_eq!(a.lse, b.lse);
        assert_eq!(a.stats, b.stats);
        assert_ne!(a.o, c.o);
        let t = "routing:window=16,memberships=2,key_memberships=2,balance=topw,seed=3";
        if matches!(params.mask, Mask::None) {
            let a = x.run(t, &params).unwrap();
            let b = x.run(t, &params).unwrap();
            assert_eq!((a.o, a.lse, a.stats), (b.o, b.lse, b.stats));
        }
    }
}

/// Tokens drawn around `C` well-separated directions: the k-means recovers the directions
/// (cosine > 0.99, spec §6.6.3) and routes each token to its own group, so each query attends
/// exactly to the keys of its group; loaded centroids (the true directions, any scale) give the
/// same routing and output.
#[test]
fn kmeans_finds_separated_directions_and_loaded_centroids_agree() {
    let (c, per, d) = (4usize, 40usize, 16usize);
    let n = c * per;
    // Direction g: e_{4g} + small noise; token t belongs to group t % c.
    let noise = qkv(7, [1, 1, 1], n, d);
    let mut x = noise.clone();
    for t in 0..n {
        let g = t % c;
        for e in 0..d {
            let base = if e == 4 * g { 3.0 } else { 0.0 };
            x.q[t * d + e] = base + 0.05 * noise.q[t * d + e];
            x.k[t * d + e] = base + 0.05 * noise.k[t * d + e];
        }
    }
    let inputs = x.tensors();
    let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
    let r = Params::default().resolve(&p).unwrap();
    let cfg = Routing { clusters: c, local: 0, ..Routing::DEFAULT };
    let routes = cfg.routes(&p, &inputs, &r, 0, 0);
    for g in 0..c {
        let best =
            routes.centroids.chunks(d).map(|m| m[4 * g] as f64).fold(f64::NEG_INFINITY, f64::max);
        assert!(best > 0.99, "direction {g}: best cosine {best}");
    }
    for t in 0..n {
        for u in 0..n {
            assert_eq!(routes.routed(t, u), t % c == u % c, "query {t} key {u}");
        }
    }
    let mut true_dirs = vec![0.0f32; c * d];
    (0..c).for_each(|g| true_dirs[g * d + 4 * g] = 0.5 + g as f32);
    let loaded = Routing {
        local: 0,
        ..Routing::with_centroids(Centroids::new(true_dirs, [1, c, d]).unwrap())
    };
    let a = run_method(&Fast(cfg.clone()), &x, &Params::default());
    // Mass recall: each row keeps its own group, ≈ 40·e^2.25 / (40·e^2.25 + 120) ≈ 0.76 of the
    // exact mass, and never more than all of it.
    let (_, exact_lse) = x.exact(&Params::default());
    let mass: Vec<f64> = a.1.iter().zip(&exact_lse).map(|(l, e)| (*l as f64 - e).exp()).collect();
    assert!(mass.iter().all(|&m| m <= 1.0 + 1e-5), "mass above 1");
    let mean = mass.iter().sum::<f64>() / n as f64;
    assert!(mean > 0.7, "mean kept mass {mean}");
    let b = run_method(&Fast(loaded.clone()), &x, &Params::default());
    let e = run_method(&Reference(loaded), &x, &Params::default());
    assert_eq!(a.2, b.2);
    assert_close("loaded o", &b.0, &e.0.iter().map(|&v| v as f64).collect::<Vec<_>>());
    for (u, v) in a.0.iter().zip(&b.0) {
        assert!((u - v).abs() < 1e-5);
    }
}

#[test]
fn parameters_and_rejections_are_typed() {
    let x = qkv(8, [1, 1, 1], 8, 8);
    let p = Params::default();
    assert!(matches!(x.run("routing:window=0", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("routing:memberships=0", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("routing:iters=-1", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("routing:clusters=100000", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("routing:buckets=2", &p), Err(Error::UnknownParam { .. })));
    assert!(matches!(x.run("routing:combine=mean", &p), Err(Error::BadParam { .. })));
    assert!(matches!(x.run("routing:combine=", &p), Err(Error::BadParam { .. })));
    assert!(matches!(
        x.run("routing:combine=average,balance=topw", &Params::causal()),
        Err(Error::Unsupported { .. })
    ));
    assert!(x.run("routing:combine=average,local=0,sink=0", &p).is_ok());
    let window = Params::default().with_mask(Mask::sliding_window(4));
    assert!(matches!(x.run("routing", &window), Err(Error::Unsupported { .. })));
    assert!(x.run("routing:clusters=3,window=2,iters=0,memberships=2,local=0,seed=5", &p).is_ok());
    // Loaded centroids: typed shape errors, and a head/dimension mismatch is a stated reason.
    assert!(matches!(Centroids::new(vec![1.0; 5], [1, 2, 3]), Err(Error::Shape { .. })));
    assert!(matches!(Centroids::new(vec![0.0; 6], [1, 2, 3]), Err(Error::Shape { .. })));
    assert!(matches!(
        Centroids::new(vec![1.0, f32::NAN, 1.0], [1, 1, 3]),
        Err(Error::NonFinite { .. })
    ));
    let m = Fast(Routing::with_centroids(Centroids::new(vec![1.0; 12], [2, 2, 3]).unwrap()));
    let inputs = x.tensors();
    let prob = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
    assert_eq!(m.unsupported(&prob, &p).len(), 1);
}

/// Spec §6.6.4: with loaded centroids (no seeded k-means) and no mask, permuting the tokens
/// (queries with their keys and values) permutes the output rows.
#[test]
fn loaded_centroids_are_permutation_equivariant() {
    let (n, d, c) = (60, 8, 5);
    let x = qkv(9, [1, 1, 1], n, d);
    let cents = qkv(10, [1, 1, 1], c, d).q;
    let m = Fast(Routing {
        local: 0,
        ..Routing::with_centroids(Centroids::new(cents, [1, c, d]).unwrap())
    });
    let perm: Vec<usize> = (0..n).map(|t| (t * 7 + 3) % n).collect();
    let mut y = x.clone();
    for (t, &u) in perm.iter().enumerate() {
        y.q[t * d..(t + 1) * d].copy_from_slice(&x.q[u * d..(u + 1) * d]);
        y.k[t * d..(t + 1) * d].copy_from_slice(&x.k[u * d..(u + 1) * d]);
        y.v[t * d..(t + 1) * d].copy_from_slice(&x.v[u * d..(u + 1) * d]);
    }
    let (a, la, pa) = run_method(&m, &x, &Params::default());
    let (b, lb, _) = run_method(&m, &y, &Params::default());
    assert!(pa > 0);
    for (t, &u) in perm.iter().enumerate() {
        assert!((lb[t] - la[u]).abs() < 1e-5, "lse row {t}");
        for e in 0..d {
            assert!((b[t * d + e] - a[u * d + e]).abs() < 1e-5, "row {t} col {e}");
        }
    }
}

/// `combine=average` where every token is in exactly one cluster (nearest routing with `r = 1`,
/// or one top-`w` cluster holding everything) is the union softmax divided by `1 + 1e-5` (the
/// port's constant), with the same log-sum-exp; sinks and windows inside, both masks, GQA.
#[test]
fn average_with_one_cluster_per_token_is_the_union() {
    let x = qkv(21, [1, 4, 2], 90, 16);
    for params in [Params::default(), Params { q_offset: Some(3), ..Params::causal() }] {
        for base in [
            "routing:window=16,balance=nearest,local=3,sink=2",
            "routing:clusters=5,balance=nearest,local=0",
            "routing-reference:window=16,balance=nearest,local=5",
            "routing:clusters=1,local=2",
        ] {
            let u = x.run(base, &params).unwrap();
            let a = x.run(&format!("{base},combine=average"), &params).unwrap();
            assert_eq!(u.stats, a.stats, "{base}");
            let k = 1.0 / (1.0 + AVERAGE_EPS as f64);
            for (i, (g, w)) in a.o.iter().zip(&u.o).enumerate() {
                let want = *w as f64 * k;
                let err = (*g as f64 - want).abs();
                // Tight enough to tell `/ (1 + 1e-5)` from `/ 1`.
                assert!(err <= 5e-7 + 2e-6 * want.abs(), "{base} o[{i}]: {g} vs {want}");
            }
            for (i, (g, w)) in a.lse.iter().zip(&u.lse).enumerate() {
                let ok = if *w == f32::NEG_INFINITY {
                    *g == f32::NEG_INFINITY
                } else {
                    (g - w).abs() <= 1e-5 + 1e-5 * w.abs()
                };
                assert!(ok, "{base} lse[{i}]: {g} vs {w}");
            }
        }
    }
}

/// Spec §6.2 step 5: under balanced top-`w` routing, a query no cluster selected gets `o = 0`
/// and `lse = −∞` with `combine=average` — also with a local window and sinks, which live inside
/// the clusters' softmaxes — and is not moved to its nearest cluster, so fewer pairs are scored
/// than under `union` (which gives it that cluster's `w_k` keys).
#[test]
fn average_gives_a_stranded_query_zero() {
    let (n, d) = (64, 8);
    let x = qkv(22, [1, 1, 1], n, d);
    let inputs = x.tensors();
    let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
    let r = Params::default().resolve(&p).unwrap();
    let cfg = Routing { clusters: 8, local: 0, combine: Combine::Average, ..Routing::DEFAULT };
    let routes = cfg.routes(&p, &inputs, &r, 0, 0);
    let stranded: Vec<usize> = (0..n).filter(|&i| routes.clusters_of(i).is_empty()).collect();
    assert!(!stranded.is_empty(), "no stranded query in this case");
    assert!(stranded.len() < n);
    for local in [0, 3] {
        let cfg = Routing { local, sink: local, ..cfg.clone() };
        let union = Routing { combine: Combine::Union, ..cfg.clone() };
        for m in [&Fast(cfg.clone()) as &dyn Method, &Reference(cfg.clone())] {
            let (o, lse, pairs) = run_method(m, &x, &Params::default());
            for i in 0..n {
                let empty = stranded.contains(&i);
                assert_eq!(lse[i] == f32::NEG_INFINITY, empty, "local {local} row {i}");
                if empty {
                    assert!(o[i * d..(i + 1) * d].iter().all(|&v| v == 0.0), "row {i}");
                }
            }
            let (_, _, union_pairs) = run_method(&Fast(union.clone()), &x, &Params::default());
            assert!(pairs < union_pairs, "{pairs} vs union {union_pairs}");
        }
    }
}

/// A query in two clusters gets the mean of its two softmax outputs, `(o₀ + o₁) / (2 + 1e-5)`,
/// computed by hand: loaded centroids `e₀`, `e₁`; keys 0, 1 lie near `e₀`, keys 2, 3 near `e₁`;
/// every query joins both clusters (nearest with `r = 2`, or top-`w` with `w_q = S_q`, `w_k =
/// 2`). `lse` = the log of the mean of the two clusters' masses.
#[test]
fn average_of_two_clusters_is_the_mean_of_their_softmaxes() {
    let (n, d) = (4, 2);
    let mut x = qkv(23, [1, 1, 1], n, d);
    x.k = vec![2.0, 0.1, 1.0, -0.2, 0.1, 1.5, -0.3, 2.0];
    x.q = vec![0.5, -1.0, 1.5, 0.25, -0.75, 0.5, 0.0, 1.0];
    x.v = vec![1.0, -2.0, 0.5, 3.0, -1.0, 0.25, 2.0, 1.5];
    let scale = 1.0 / (d as f64).sqrt();
    let centroids = Centroids::new(vec![1.0, 0.0, 0.0, 1.0], [1, 2, d]).unwrap();
    for balance in [Balance::Nearest, Balance::TopW] {
        let cfg = Routing {
            memberships: 2,
            local: 0,
            balance,
            combine: Combine::Average,
            ..Routing::with_centroids(centroids.clone())
        };
        for m in [&Fast(cfg.clone()) as &dyn Method, &Reference(cfg.clone())] {
            let (o, lse, _) = run_method(m, &x, &Params::default());
            for i in 0..n {
                let z = |j: usize| {
                    scale
                        * (x.q[i * d] as f64 * x.k[j * d] as f64
                            + x.q[i * d + 1] as f64 * x.k[j * d + 1] as f64)
                };
                // Softmax over keys {j0, j1}: (output, lse).
                let soft = |j0: usize, j1: usize| {
                    let (e0, e1) = (z(j0).exp(), z(j1).exp());
                    let o: Vec<f64> = (0..d)
                        .map(|e| {
                            (e0 * x.v[j0 * d + e] as f64 + e1 * x.v[j1 * d + e] as f64) / (e0 + e1)
                        })
                        .collect();
                    (o, (e0 + e1).ln())
                };
                let ((o0, l0), (o1, l1)) = (soft(0, 1), soft(2, 3));
                let want: Vec<f64> =
                    (0..d).map(|e| (o0[e] + o1[e]) / (2.0 + AVERAGE_EPS as f64)).collect();
                assert_close(&format!("{balance:?} o row {i}"), &o[i * d..(i + 1) * d], &want);
                let want_lse = ((l0.exp() + l1.exp()) / 2.0).ln();
                assert_close(&format!("{balance:?} lse row {i}"), &lse[i..i + 1], &[want_lse]);
            }
        }
    }
}
