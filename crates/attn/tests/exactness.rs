//! The reference against an independent f64 oracle, and the structural oracles of spec §1.1 (f)
//! on the fast paths.

use attn::methods::sdpa::reference;
use attn::{attend, merge_lse, Inputs, Mask, MaskGeometry, Params, Prefs, Problem, TensorRef};
use attn_testing::cases::masks;
use attn_testing::rand::Rng;

fn prefs(m: &str) -> Prefs {
    Prefs { method: Some(m.to_string()), ..Prefs::default() }
}

/// Dense formulation: materialise the mask and every score, then softmax and matmul.
fn dense_oracle(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: [usize; 7],
    params: &Params,
) -> (Vec<f64>, Vec<f64>) {
    let [b, h, hk, sq, sk, d, dv] = dims;
    let scale = params.scale.unwrap_or(1.0 / (d as f32).sqrt()) as f64;
    let geo = MaskGeometry {
        b,
        h,
        s_q: sq,
        s_kv: sk,
        q_offset: params.q_offset.unwrap_or(sk as i64 - sq as i64),
    };
    let allowed = params.mask.materialize(&geo); // [B, H, S_q, S_kv]
    let mut o = vec![0.0; b * h * sq * dv];
    let mut lse = vec![0.0; b * h * sq];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi * hk / h;
            let mut z = vec![f64::NEG_INFINITY; sq * sk];
            for i in 0..sq {
                for j in 0..sk {
                    if allowed[((bi * h + hi) * sq + i) * sk + j] {
                        let qi = &q[((bi * h + hi) * sq + i) * d..][..d];
                        let kj = &k[((bi * hk + kh) * sk + j) * d..][..d];
                        z[i * sk + j] = scale
                            * qi.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>();
                    }
                }
            }
            for i in 0..sq {
                let row = &z[i * sk..(i + 1) * sk];
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let r = (bi * h + hi) * sq + i;
                if m == f64::NEG_INFINITY {
                    lse[r] = f64::NEG_INFINITY;
                    continue;
                }
                let w: Vec<f64> = row.iter().map(|&x| (x - m).exp()).collect();
                let l: f64 = w.iter().sum();
                lse[r] = m + l.ln();
                for c in 0..dv {
                    o[r * dv + c] = (0..sk)
                        .map(|j| w[j] * v[((bi * hk + kh) * sk + j) * dv + c] as f64)
                        .sum::<f64>()
                        / l;
                }
            }
        }
    }
    (o, lse)
}

#[test]
fn reference_equals_dense_oracle_for_every_mask() {
    for (seed, dims) in [[2, 4, 2, 7, 11, 8, 5], [1, 2, 1, 9, 9, 16, 16], [2, 2, 2, 1, 13, 4, 4]]
        .into_iter()
        .enumerate()
    {
        let [b, h, hk, sq, sk, d, dv] = dims;
        let mut rng = Rng::new(seed as u64);
        let (q, k, v) = (
            rng.vec(b * h * sq * d, 1.0),
            rng.vec(b * hk * sk * d, 1.0),
            rng.vec(b * hk * sk * dv, 1.0),
        );
        for mask in masks(b, h, sq, sk, seed as u64) {
            for q_offset in [None, Some(-2), Some(4)] {
                let params = Params { q_offset, ..Params::default().with_mask(mask.clone()) };
                let inp = Inputs {
                    q: TensorRef::new(&q[..], [b, h, sq, d]).unwrap(),
                    k: TensorRef::new(&k[..], [b, hk, sk, d]).unwrap(),
                    v: TensorRef::new(&v[..], [b, hk, sk, dv]).unwrap(),
                };
                let p = Problem::from_tensors(&inp.q, &inp.k, &inp.v).unwrap();
                let (o, lse) = reference::forward_f64(&p, &inp, &params.resolve(&p).unwrap());
                let (wo, wl) = dense_oracle(&q, &k, &v, dims, &params);
                for (a, b) in o.iter().zip(&wo) {
                    assert!((a - b).abs() < 1e-12, "{mask:?}: {a} vs {b}");
                }
                for (a, b) in lse.iter().zip(&wl) {
                    assert!(a == b || (a - b).abs() < 1e-12, "{mask:?}: lse {a} vs {b}");
                }
            }
        }
    }
}

struct Qkv {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dims: [usize; 7],
}

impl Qkv {
    fn new(dims: [usize; 7], seed: u64, scale: f32) -> Self {
        let [b, h, hk, sq, sk, d, dv] = dims;
        let mut rng = Rng::new(seed);
        Qkv {
            q: rng.vec(b * h * sq * d, scale),
            k: rng.vec(b * hk * sk * d, scale),
            v: rng.vec(b * hk * sk * dv, 1.0),
            dims,
        }
    }
    fn run(&self, params: &Params, method: &str) -> attn::Output {
        let [b, h, hk, sq, sk, d, dv] = self.dims;
        attend(
            TensorRef::new(&self.q[..], [b, h, sq, d]).unwrap(),
            TensorRef::new(&self.k[..], [b, hk, sk, d]).unwrap(),
            TensorRef::new(&self.v[..], [b, hk, sk, dv]).unwrap(),
            params,
            &prefs(method),
        )
        .unwrap()
    }
}

const FAST: [&str; 2] = ["sdpa-flash", "sdpa-decode"];

#[test]
fn permuting_query_rows_permutes_outputs() {
    let mut x = Qkv::new([1, 2, 2, 9, 300, 16, 16], 1, 1.0);
    let base = x.run(&Params::default(), "sdpa-flash");
    // Reverse the query rows of every head.
    let d = 16;
    let mut q2 = x.q.clone();
    for hh in 0..2 {
        for i in 0..9 {
            q2[(hh * 9 + i) * d..][..d].copy_from_slice(&x.q[(hh * 9 + 8 - i) * d..][..d]);
        }
    }
    x.q = q2;
    let perm = x.run(&Params::default(), "sdpa-flash");
    for hh in 0..2 {
        for i in 0..9 {
            assert_eq!(&perm.o[(hh * 9 + i) * d..][..d], &base.o[(hh * 9 + 8 - i) * d..][..d]);
        }
    }
}

#[test]
fn permuting_keys_and_values_jointly_changes_nothing_without_mask() {
    for m in FAST {
        let mut x = Qkv::new([1, 4, 2, 3, 300, 32, 32], 2, 1.0);
        let base = x.run(&Params::default(), m);
        let (sk, d) = (300, 32);
        let perm: Vec<usize> = (0..sk).map(|j| (j * 7 + 3) % sk).collect();
        let (mut k2, mut v2) = (x.k.clone(), x.v.clone());
        for hh in 0..2 {
            for (j, &pj) in perm.iter().enumerate() {
                k2[(hh * sk + j) * d..][..d].copy_from_slice(&x.k[(hh * sk + pj) * d..][..d]);
                v2[(hh * sk + j) * d..][..d].copy_from_slice(&x.v[(hh * sk + pj) * d..][..d]);
            }
        }
        x.k = k2;
        x.v = v2;
        let permuted = x.run(&Params::default(), m);
        for (a, b) in permuted.o.iter().zip(&base.o) {
            assert!((a - b).abs() < 1e-6, "{m}: {a} vs {b}");
        }
    }
}

#[test]
fn gqa_equals_mha_with_repeated_kv() {
    for m in FAST {
        let x = Qkv::new([2, 8, 2, 4, 400, 64, 64], 3, 1.0);
        let gqa = x.run(&Params::causal(), m);
        let (b, h, hk, sk, d) = (2, 8, 2, 400, 64);
        let rep = |t: &[f32]| {
            let mut out = Vec::with_capacity(b * h * sk * d);
            for bi in 0..b {
                for hi in 0..h {
                    let kh = hi / (h / hk);
                    out.extend_from_slice(
                        &t[((bi * hk + kh) * sk) * d..((bi * hk + kh + 1) * sk) * d],
                    );
                }
            }
            out
        };
        let mha = Qkv { q: x.q.clone(), k: rep(&x.k), v: rep(&x.v), dims: [b, h, h, 4, sk, d, d] }
            .run(&Params::causal(), m);
        for (a, c) in gqa.o.iter().zip(&mha.o) {
            assert!((a - c).abs() < 1e-6, "{m}: {a} vs {c}");
        }
    }
}

#[test]
fn merging_two_key_halves_by_lse_gives_the_whole() {
    let (b, h, sq, sk, d) = (1, 2, 7, 600, 32);
    let x = Qkv::new([b, h, h, sq, sk, d, d], 4, 1.0);
    let whole = x.run(&Params::default(), "sdpa-flash");
    let half = |lo: usize, hi: usize| {
        let n = hi - lo;
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for hh in 0..h {
            k.extend_from_slice(&x.k[(hh * sk + lo) * d..(hh * sk + hi) * d]);
            v.extend_from_slice(&x.v[(hh * sk + lo) * d..(hh * sk + hi) * d]);
        }
        Qkv { q: x.q.clone(), k, v, dims: [b, h, h, sq, n, d, d] }
            .run(&Params::default(), "sdpa-flash")
    };
    let (a, c) = (half(0, 250), half(250, sk));
    let (o, lse) = merge_lse(&a.o, &a.lse, &c.o, &c.lse).unwrap();
    for (x1, x2) in o.iter().zip(&whole.o) {
        assert!((x1 - x2).abs() < 1e-6);
    }
    for (x1, x2) in lse.iter().zip(&whole.lse) {
        assert!((x1 - x2).abs() < 1e-5);
    }
}

#[test]
fn future_keys_do_not_change_causal_outputs_bitwise() {
    for m in ["sdpa-flash", "sdpa-decode"] {
        let (sq, sk) = if m == "sdpa-decode" { (4, 700) } else { (300, 300) };
        let mut x = Qkv::new([1, 2, 1, sq, sk, 64, 64], 5, 1.0);
        let base = x.run(&Params::causal(), m);
        // Perturb the last 100 keys and values: rows at positions < S_kv − 100 must not change.
        for j in sk - 100..sk {
            for t in 0..64 {
                x.k[j * 64 + t] += 3.0;
                x.v[j * 64 + t] -= 5.0;
            }
        }
        let pert = x.run(&Params::causal(), m);
        let first_affected = (sk - 100) as i64 - (sk - sq) as i64; // row whose position is sk − 100
        for hh in 0..2 {
            for i in 0..(first_affected.max(0) as usize) {
                let r = hh * sq + i;
                assert_eq!(
                    &pert.o[r * 64..(r + 1) * 64],
                    &base.o[r * 64..(r + 1) * 64],
                    "{m}: row {i} changed"
                );
            }
        }
    }
}

#[test]
fn fully_masked_rows_are_zero_with_minus_infinite_lse() {
    for m in FAST {
        let x = Qkv::new([2, 4, 2, 3, 500, 16, 16], 6, 1.0);
        // Batch 1 has no valid key at all; batch 0 sees a causal prefix.
        let params = Params::default()
            .with_mask(Mask::And(vec![Mask::Causal, Mask::KeyPadding { lengths: vec![500, 0] }]));
        let out = x.run(&params, m);
        for r in 0..4 * 3 {
            assert!(out.lse[r].is_finite(), "{m}: batch 0 row {r}");
        }
        for r in 4 * 3..2 * 4 * 3 {
            assert_eq!(out.lse[r], f32::NEG_INFINITY, "{m}: batch 1 row {r}");
            assert!(out.o[r * 16..(r + 1) * 16].iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn large_scores_give_no_nan() {
    for m in FAST {
        let x = Qkv::new([1, 2, 2, 4, 700, 64, 64], 7, 40.0); // scores up to ~1e4
        for params in [
            Params::default(),
            Params::causal(),
            Params { softcap: Some(30.0), ..Params::causal() },
        ] {
            let out = x.run(&params, m);
            assert!(out.o.iter().all(|v| v.is_finite()), "{m}: non-finite output");
            let want = x.run(&params, "sdpa-reference");
            for (a, b) in out.o.iter().zip(&want.o) {
                assert!((a - b).abs() < 1e-3, "{m}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn non_contiguous_layout_matches_contiguous() {
    let (b, h, s, d) = (2, 3, 70, 32);
    let x = Qkv::new([b, h, h, s, s, d, d], 8, 1.0);
    let base = x.run(&Params::causal(), "sdpa-flash");
    let to_bshd = |t: &[f32]| {
        let mut out = vec![0.0; t.len()];
        for bi in 0..b {
            for hi in 0..h {
                for si in 0..s {
                    out[((bi * s + si) * h + hi) * d..][..d]
                        .copy_from_slice(&t[((bi * h + hi) * s + si) * d..][..d]);
                }
            }
        }
        out
    };
    let (q, k, v) = (to_bshd(&x.q), to_bshd(&x.k), to_bshd(&x.v));
    let out = attend(
        TensorRef::from_bshd(&q[..], [b, s, h, d]).unwrap(),
        TensorRef::from_bshd(&k[..], [b, s, h, d]).unwrap(),
        TensorRef::from_bshd(&v[..], [b, s, h, d]).unwrap(),
        &Params::causal(),
        &prefs("sdpa-flash"),
    )
    .unwrap();
    assert_eq!(out.o, base.o);
}

#[test]
fn automatic_selection_prefers_decode_for_decode_shapes() {
    let x = Qkv::new([1, 8, 2, 1, 4096, 64, 64], 9, 1.0);
    let [b, h, hk, sq, sk, d, dv] = x.dims;
    let out = attend(
        TensorRef::new(&x.q[..], [b, h, sq, d]).unwrap(),
        TensorRef::new(&x.k[..], [b, hk, sk, d]).unwrap(),
        TensorRef::new(&x.v[..], [b, hk, sk, dv]).unwrap(),
        &Params::default(),
        &Prefs::default(),
    )
    .unwrap();
    assert_eq!(out.method, "sdpa-decode");
    let y = Qkv::new([1, 2, 2, 64, 64, 16, 16], 9, 1.0);
    let [b, h, hk, sq, sk, d, dv] = y.dims;
    let out = attend(
        TensorRef::new(&y.q[..], [b, h, sq, d]).unwrap(),
        TensorRef::new(&y.k[..], [b, hk, sk, d]).unwrap(),
        TensorRef::new(&y.v[..], [b, hk, sk, dv]).unwrap(),
        &Params::default(),
        &Prefs::default(),
    )
    .unwrap();
    assert_eq!(out.method, "sdpa-flash");
}
