//! The reference against an independent f64 oracle, and the structural oracles of spec §1.1 (f)
//! and §0.5 on the fast paths (permutations, constant score shifts, GQA = MHA, LSE merge,
//! causality, fully masked rows, extreme magnitudes, masked garbage, dtype widening).
//!
//! Tolerances are derived, never guessed: a fast result is held to the f64 oracle of its own
//! problem by the acceptance rule (`attn_testing::close`), and two fast results that must agree
//! may differ by at most the sum of their two acceptance bounds.

use attn::methods::sdpa::reference;
use attn::primitives::simd::{with_level, Level};
use attn::{
    attend, merge_lse, DType, DenseMask, Inputs, Mask, MaskGeometry, Params, Prefs, Problem,
};
use attn_testing::cases::{alibi_slopes, all_masks};
use attn_testing::close::{first_bit_difference, Oracle, Report, Tolerance};
use attn_testing::poison::run_poisoned;
use attn_testing::rand::{random_dense_mask, Layout, Rng, Tensor};

const FAST: [&str; 2] = ["sdpa-flash", "sdpa-decode"];

/// Which `(batch, key)` pairs a mask hides from every row.
type Hidden<'a> = &'a dyn Fn(usize, usize) -> bool;

/// Inputs of one problem, `[B, H, H_kv, S_q, S_kv, D, D_v]`.
#[derive(Clone)]
struct Qkv {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl Qkv {
    fn random(dims: [usize; 7], seed: u64, sigma: f32) -> Self {
        Self::random_as(dims, seed, sigma, DType::F32, Layout::Bhsd)
    }

    fn random_as(dims: [usize; 7], seed: u64, sigma: f32, dt: DType, layout: Layout) -> Self {
        let [b, h, hk, sq, sk, d, dv] = dims;
        let mut r = Rng::new(seed);
        Qkv {
            q: Tensor::random(&mut r, dt, [b, h, sq, d], layout, sigma),
            k: Tensor::random(&mut r, dt, [b, hk, sk, d], layout, sigma),
            v: Tensor::random(&mut r, dt, [b, hk, sk, dv], layout, -1.0),
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs { q: self.q.view(), k: self.k.view(), v: self.v.view() }
    }

    fn problem(&self) -> Problem {
        let i = self.inputs();
        Problem::from_tensors(&i.q, &i.k, &i.v).unwrap()
    }

    /// `(o, lse)` of `method` at the current SIMD level, into NaN-poisoned buffers.
    fn run(&self, params: &Params, method: &str) -> (Vec<f32>, Vec<f32>) {
        let prefs = Prefs { method: Some(method.to_string()), ..Prefs::default() };
        let r = run_poisoned(&self.inputs(), params, &prefs)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        (r.o, r.lse)
    }

    fn run_at(&self, params: &Params, method: &str, level: Level) -> (Vec<f32>, Vec<f32>) {
        with_level(level, || self.run(params, method))
    }

    fn oracle(&self, params: &Params) -> Oracle {
        let p = self.problem();
        Oracle::new(&p, &self.inputs(), &params.resolve(&p).unwrap())
    }
}

/// The bound of the acceptance rule for the output of a problem (see `Oracle::check`).
fn o_bound(o: &Oracle) -> f64 {
    let t = Tolerance::default();
    t.factor * o.naive_o.max_abs + t.o_floor
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() as f64 })
        .fold(0.0, f64::max)
}

/// Whether mask `m` allows key `j` to row `i`, written from the documentation of [`Mask`] alone
/// (wide integers, so that no side length or offset can overflow).
fn doc_allowed(m: &Mask, g: &MaskGeometry, b: usize, h: usize, i: usize, j: usize) -> bool {
    let p = g.q_offset as i128 + i as i128;
    let jj = j as i128;
    match m {
        Mask::None => true,
        Mask::Causal => jj <= p,
        Mask::Window { left, right } => {
            left.is_none_or(|l| p - l as i128 <= jj) && right.is_none_or(|r| jj <= p + r as i128)
        }
        Mask::KeyPadding { lengths } => j < lengths[b],
        Mask::PrefixLm { prefix } => j < *prefix || jj <= p,
        Mask::BlockDiagonal { q_lens, kv_lens, causal } => {
            let (mut q0, mut k0) = (0, 0);
            for (&ql, &kl) in q_lens.iter().zip(kv_lens) {
                if i < q0 + ql {
                    let inside = j >= k0 && j < k0 + kl;
                    let (il, jl) = ((i - q0) as i128, jj - k0 as i128);
                    return inside && (!causal || jl <= il + kl as i128 - ql as i128);
                }
                q0 += ql;
                k0 += kl;
            }
            unreachable!("row {i} outside the segments")
        }
        Mask::Dense(d) => d.get(b, h, i, j),
        Mask::And(list) => list.iter().all(|x| doc_allowed(x, g, b, h, i, j)),
    }
}

/// Dense formulation of the whole problem in f64: materialise every score, apply softcap, ALiBi
/// and the mask (from [`doc_allowed`]), softmax each row, multiply by V.
fn dense_oracle(x: &Qkv, params: &Params) -> (Vec<f64>, Vec<f64>) {
    let p = x.problem();
    let (q, k, v) = (x.q.to_f64(), x.k.to_f64(), x.v.to_f64());
    // The default scale is 1/√D rounded to f32 (`Params::scale` is an f32).
    let scale = params.scale.unwrap_or(1.0 / (p.d as f32).sqrt()) as f64;
    let g = MaskGeometry {
        b: p.b,
        h: p.h,
        s_q: p.s_q,
        s_kv: p.s_kv,
        q_offset: params.q_offset.unwrap_or(p.s_kv as i64 - p.s_q as i64),
    };
    let (sq, sk, d, dv) = (p.s_q, p.s_kv, p.d, p.d_v);
    let mut o = vec![0.0; p.out_len()];
    let mut lse = vec![0.0; p.lse_len()];
    for b in 0..p.b {
        for h in 0..p.h {
            let kh = h * p.h_kv / p.h;
            // Z = scale · Q Kᵀ, [S_q, S_kv]
            let mut z = vec![0.0f64; sq * sk];
            for i in 0..sq {
                for j in 0..sk {
                    let qi = &q[((b * p.h + h) * sq + i) * d..][..d];
                    let kj = &k[((b * p.h_kv + kh) * sk + j) * d..][..d];
                    let mut s = scale * qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f64>();
                    if let Some(c) = params.softcap {
                        s = c as f64 * (s / c as f64).tanh();
                    }
                    if let Some(sl) = &params.alibi_slopes {
                        s -= sl[h] as f64 * (g.q_offset as f64 + i as f64 - j as f64).abs();
                    }
                    z[i * sk + j] = if doc_allowed(&params.mask, &g, b, h, i, j) {
                        s
                    } else {
                        f64::NEG_INFINITY
                    };
                }
            }
            for i in 0..sq {
                let r = (b * p.h + h) * sq + i;
                let row = &z[i * sk..(i + 1) * sk];
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    lse[r] = f64::NEG_INFINITY;
                    continue;
                }
                let w: Vec<f64> = row.iter().map(|&s| (s - m).exp()).collect();
                let l: f64 = w.iter().sum();
                lse[r] = m + l.ln();
                for c in 0..dv {
                    let acc: f64 =
                        (0..sk).map(|j| w[j] * v[((b * p.h_kv + kh) * sk + j) * dv + c]).sum();
                    o[r * dv + c] = acc / l;
                }
            }
        }
    }
    (o, lse)
}

fn masks_for(rng: &mut Rng, b: usize, h: usize, sq: usize, sk: usize) -> Vec<(Mask, Option<i64>)> {
    let mut out: Vec<(Mask, Option<i64>)> =
        all_masks(sk).into_iter().map(|(spec, off)| (spec.build(rng, b, h, sq, sk), off)).collect();
    out.push((
        Mask::BlockDiagonal { q_lens: vec![0, sq, 0], kv_lens: vec![1, sk - 2, 1], causal: true },
        None,
    ));
    out.push((Mask::PrefixLm { prefix: sk + 3 }, Some(-4)));
    out
}

#[test]
fn mask_definitions_follow_the_documented_formulas() {
    let mut rng = Rng::new(11);
    for (b, h, sq, sk) in [(2, 3, 7, 9), (1, 2, 9, 4), (2, 1, 1, 12), (1, 1, 12, 12)] {
        for (mask, off) in masks_for(&mut rng, b, h, sq, sk) {
            for q_offset in [off.unwrap_or(sk as i64 - sq as i64), -3, 0, 2, sk as i64 + 2] {
                let g = MaskGeometry { b, h, s_q: sq, s_kv: sk, q_offset };
                mask.validate(&g).unwrap();
                let dense = mask.materialize(&g);
                for (t, &allowed) in dense.iter().enumerate() {
                    let (j, i, hh, bb) =
                        (t % sk, t / sk % sq, t / (sk * sq) % h, t / (sk * sq * h));
                    assert_eq!(
                        allowed,
                        doc_allowed(&mask, &g, bb, hh, i, j),
                        "{mask:?} q_offset {q_offset}: [b={bb}, h={hh}, i={i}, j={j}]"
                    );
                }
            }
        }
    }
}

/// `Window` sides are `usize`: a side longer than any sequence (`usize::MAX` included) must behave
/// like an unbounded side (`None`), and `Some(0)` on the right must keep the diagonal.
#[test]
fn window_sides_of_any_length() {
    let g = MaskGeometry { b: 1, h: 1, s_q: 6, s_kv: 8, q_offset: 2 };
    for huge in [1usize << 40, (i64::MAX as usize) + 1, usize::MAX] {
        for (big, unbounded) in [
            (
                Mask::Window { left: Some(huge), right: Some(0) },
                Mask::Window { left: None, right: Some(0) },
            ),
            (
                Mask::Window { left: Some(1), right: Some(huge) },
                Mask::Window { left: Some(1), right: None },
            ),
        ] {
            assert_eq!(
                big.materialize(&g),
                unbounded.materialize(&g),
                "{big:?} must equal {unbounded:?}"
            );
        }
    }
}

#[test]
fn reference_equals_an_independent_dense_oracle() {
    let shapes = [
        [2, 4, 2, 7, 11, 8, 5],
        [1, 2, 1, 9, 9, 16, 16],
        [2, 2, 2, 1, 13, 4, 4],
        [1, 3, 3, 12, 5, 6, 6],
    ];
    let mut rng = Rng::new(21);
    for (si, dims) in shapes.into_iter().enumerate() {
        let [b, h, _, sq, sk, _, _] = dims;
        for (mi, (mask, off)) in masks_for(&mut rng, b, h, sq, sk).into_iter().enumerate() {
            let (dt, layout) = match (si + mi) % 4 {
                0 => (DType::F32, Layout::Bhsd),
                1 => (DType::F16, Layout::Bshd),
                2 => (DType::BF16, Layout::StridedD),
                _ => (DType::F32, Layout::Padded),
            };
            let x = Qkv::random_as(dims, (si * 100 + mi) as u64, 1.5, dt, layout);
            let variants = [
                Params::default(),
                Params { softcap: Some(2.0), ..Params::default() },
                Params { alibi_slopes: Some(alibi_slopes(h)), ..Params::default() },
                Params { scale: Some(0.3), q_offset: Some(-2), ..Params::default() },
                Params { q_offset: Some(sk as i64 + 1), ..Params::default() },
            ];
            for base in variants {
                let params = Params { mask: mask.clone(), q_offset: base.q_offset.or(off), ..base };
                let p = x.problem();
                let resolved = params.resolve(&p).unwrap();
                let (ro, rl) = reference::forward_f64(&p, &x.inputs(), &resolved);
                let (wo, wl) = dense_oracle(&x, &params);
                let ctx = format!("{} {mask:?} {params:?}", p.label());
                for (t, (a, w)) in ro.iter().zip(&wo).enumerate() {
                    assert!((a - w).abs() <= 1e-12 * (1.0 + w.abs()), "{ctx}: o[{t}] {a} vs {w}");
                }
                for (t, (a, w)) in rl.iter().zip(&wl).enumerate() {
                    assert!(
                        a == w || (a - w).abs() <= 1e-12 * (1.0 + w.abs()),
                        "{ctx}: lse[{t}] {a} vs {w}"
                    );
                }
                // The registered reference rounds the f64 result once to f32.
                let (o32, l32) = x.run(&params, "sdpa-reference");
                for (a, w) in o32.iter().zip(&wo).chain(l32.iter().zip(&wl)) {
                    let ulp = f32::EPSILON as f64 * w.abs();
                    assert!(
                        *a as f64 == *w || ((*a as f64) - w).abs() <= ulp + 1e-300,
                        "{ctx}: f32 {a} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn permuting_query_rows_permutes_outputs() {
    let dims = [2, 8, 2, 4, 300, 32, 32];
    let (b, h, sq, d) = (2, 8, 4, 32);
    let x = Qkv::random(dims, 1, 1.2);
    let perm = [2usize, 0, 3, 1];
    let mut y = x.clone();
    for bb in 0..b {
        for hh in 0..h {
            for (i, &pi) in perm.iter().enumerate() {
                for t in 0..d {
                    y.q.set(bb, hh, i, t, x.q.get(bb, hh, pi, t));
                }
            }
        }
    }
    for mask in [Mask::None, Mask::KeyPadding { lengths: vec![170, 300] }] {
        let params = Params::default().with_mask(mask.clone());
        for m in FAST {
            let (o, lse) = x.run(&params, m);
            let (po, plse) = y.run(&params, m);
            let bound = o_bound(&x.oracle(&params));
            for bb in 0..b {
                for hh in 0..h {
                    for (i, &pi) in perm.iter().enumerate() {
                        let (r, pr) = ((bb * h + hh) * sq + i, (bb * h + hh) * sq + pi);
                        let e = max_abs(&po[r * d..(r + 1) * d], &o[pr * d..(pr + 1) * d]);
                        assert!(e <= bound, "{m} {mask:?}: row {i} ← {pi} differs by {e:e}");
                        assert!((plse[r] - lse[pr]).abs() <= 1e-6 * lse[pr].abs().max(1.0));
                    }
                }
            }
        }
    }
}

#[test]
fn permuting_keys_and_values_jointly_changes_nothing_without_mask() {
    let dims = [1, 4, 2, 3, 600, 32, 48];
    let x = Qkv::random(dims, 2, 1.5);
    let (hk, sk) = (2, 600);
    let perm = Rng::new(9).permutation(sk);
    let mut y = x.clone();
    for hh in 0..hk {
        for (j, &pj) in perm.iter().enumerate() {
            for t in 0..32 {
                y.k.set(0, hh, j, t, x.k.get(0, hh, pj, t));
            }
            for t in 0..48 {
                y.v.set(0, hh, j, t, x.v.get(0, hh, pj, t));
            }
        }
    }
    let params = Params::default();
    let (ox, oy) = (x.oracle(&params), y.oracle(&params));
    // The truth does not move (up to f64 rounding).
    assert!(ox.o.iter().zip(&oy.o).all(|(a, b)| (a - b).abs() < 1e-12));
    for m in FAST {
        let (a, la) = x.run(&params, m);
        let (b, lb) = y.run(&params, m);
        ox.check(&a, &la, &Tolerance::default()).unwrap();
        oy.check(&b, &lb, &Tolerance::default()).unwrap();
        let e = max_abs(&a, &b);
        assert!(e <= o_bound(&ox) + o_bound(&oy), "{m}: permuted keys change o by {e:e}");
    }
}

/// Adding `c_i` to every score of row `i` leaves `o_i` alone and adds `c_i` to `lse_i`. Built
/// without a bias input: one extra dimension holding `c_i / scale` in q and 1 in every key.
#[test]
fn a_constant_added_to_a_row_of_scores_only_shifts_its_lse() {
    let (b, h, hk, sq, sk, d) = (1, 4, 2, 3, 500, 31);
    let scale = 0.2f32;
    let base = Qkv::random([b, h, hk, sq, sk, d, d], 3, 1.5);
    let shifts: Vec<f32> = (0..h * sq).map(|r| [-300.0, 0.0, 45.5, 1000.0][r % 4]).collect();
    let widen = |t: &Tensor, extra: &dyn Fn(usize, usize, usize) -> f32| {
        let [tb, th, ts, td] = t.shape;
        Tensor::from_fn(DType::F32, [tb, th, ts, td + 1], Layout::Bhsd, |bb, hh, s, dd| {
            if dd < td {
                t.get(bb, hh, s, dd)
            } else {
                extra(bb, hh, s)
            }
        })
    };
    let plain = Qkv {
        q: widen(&base.q, &|_, _, _| 0.0),
        k: widen(&base.k, &|_, _, _| 1.0),
        v: base.v.clone(),
    };
    let shifted = Qkv {
        q: widen(&base.q, &|_, hh, s| shifts[hh * sq + s] / scale),
        k: plain.k.clone(),
        v: base.v.clone(),
    };
    for mask in [Mask::None, Mask::Causal, Mask::sliding_window(130)] {
        let params = Params { scale: Some(scale), ..Params::default().with_mask(mask.clone()) };
        let (op, os) = (plain.oracle(&params), shifted.oracle(&params));
        // The exact shift is scale · fl(c / scale).
        let exact: Vec<f64> =
            (0..h * sq).map(|r| scale as f64 * (shifts[r] / scale) as f64).collect();
        for (r, (a, c)) in op.lse.iter().zip(&os.lse).enumerate() {
            assert!((c - a - exact[r]).abs() < 1e-9 * c.abs().max(1.0), "oracle row {r}");
        }
        for m in FAST {
            let (o1, l1) = plain.run(&params, m);
            let (o2, l2) = shifted.run(&params, m);
            op.check(&o1, &l1, &Tolerance::default()).unwrap_or_else(|e| panic!("{m}: {e}"));
            os.check(&o2, &l2, &Tolerance::default()).unwrap_or_else(|e| panic!("{m}: {e}"));
            let e = max_abs(&o1, &o2);
            assert!(e <= o_bound(&op) + o_bound(&os), "{m} {mask:?}: shift moved o by {e:e}");
        }
    }
}

#[test]
fn gqa_equals_mha_with_repeated_keys_and_values() {
    let (b, h, hk, sq, sk, d) = (2, 8, 2, 2, 400, 64);
    let x = Qkv::random([b, h, hk, sq, sk, d, d], 4, 1.2);
    let rep = |t: &Tensor| {
        Tensor::from_fn(DType::F32, [b, h, sk, d], Layout::Bhsd, |bb, hh, s, dd| {
            t.get(bb, hh / (h / hk), s, dd)
        })
    };
    let mha = Qkv { q: x.q.clone(), k: rep(&x.k), v: rep(&x.v) };
    for mask in [Mask::Causal, Mask::sliding_window(100), Mask::KeyPadding { lengths: vec![9, 0] }]
    {
        let params = Params::default().with_mask(mask.clone());
        let bound = 2.0 * o_bound(&x.oracle(&params));
        for m in FAST {
            let (a, la) = x.run(&params, m);
            let (c, lc) = mha.run(&params, m);
            let e = max_abs(&a, &c);
            assert!(e <= bound, "{m} {mask:?}: GQA and MHA differ by {e:e}");
            for (p, q) in la.iter().zip(&lc) {
                assert!(p == q || (p - q).abs() <= 1e-6 * p.abs().max(1.0), "{m}: lse {p} {q}");
            }
        }
    }
}

/// Attention over keys `[0, n/2)` and `[n/2, n)` separately, merged with `merge_lse`, equals
/// attention over all keys; the second half sees the keys shifted, so its `q_offset` is the whole
/// problem's minus `n/2`. Rows that see nothing of one half merge a `−∞` side.
#[test]
fn merging_two_key_halves_by_lse_gives_the_whole() {
    let (b, h, hk, sk, d) = (1, 4, 2, 1024, 32);
    let half = sk / 2;
    for sq in [4, 1024] {
        let x = Qkv::random([b, h, hk, sq, sk, d, d], 5, 1.5);
        let split = |lo: usize, hi: usize| {
            let cut = |t: &Tensor| {
                let [tb, th, _, td] = t.shape;
                Tensor::from_fn(DType::F32, [tb, th, hi - lo, td], Layout::Bhsd, |bb, hh, s, dd| {
                    t.get(bb, hh, lo + s, dd)
                })
            };
            Qkv { q: x.q.clone(), k: cut(&x.k), v: cut(&x.v) }
        };
        let (left, right) = (split(0, half), split(half, sk));
        let off = sk as i64 - sq as i64;
        let dense = random_dense_mask(&mut Rng::new(6), [1, h, sq, sk], 0.5);
        let dense_part = |lo: usize, hi: usize| {
            let mut flags = Vec::new();
            for hh in 0..h {
                for i in 0..sq {
                    flags.extend((lo..hi).map(|j| dense.get(0, hh, i, j)));
                }
            }
            Mask::Dense(DenseMask::new(flags, [1, h, sq, hi - lo]).unwrap())
        };
        let cases = [
            (Mask::None, Mask::None, Mask::None),
            (Mask::Causal, Mask::Causal, Mask::Causal),
            (Mask::Dense(dense.clone()), dense_part(0, half), dense_part(half, sk)),
        ];
        for (whole_mask, lm, rm) in cases {
            let params = Params { q_offset: Some(off), ..Params::default().with_mask(whole_mask) };
            let pl = Params { q_offset: Some(off), ..Params::default().with_mask(lm) };
            let pr =
                Params { q_offset: Some(off - half as i64), ..Params::default().with_mask(rm) };
            let oracle = x.oracle(&params);
            for m in FAST {
                if m == "sdpa-decode" && sq > 4 {
                    continue; // not a decode shape
                }
                let (ol, ll) = left.run(&pl, m);
                let (or, lr) = right.run(&pr, m);
                let (o, lse) = merge_lse(&ol, &ll, &or, &lr).unwrap();
                oracle.check(&o, &lse, &Tolerance::default()).unwrap_or_else(|e| {
                    panic!("{m} S_q {sq} {:?}: merged halves: {e}", params.mask)
                });
            }
        }
    }
}

/// Perturbing keys and values after a row's position leaves that row bitwise unchanged.
#[test]
fn future_keys_do_not_change_causal_outputs_bitwise() {
    for m in FAST {
        let (sq, sk) = if m == "sdpa-decode" { (4, 700) } else { (300, 300) };
        let x = Qkv::random([1, 2, 1, sq, sk, 64, 64], 7, 1.2);
        let cut = if m == "sdpa-decode" { sk - 2 } else { sk - 100 }; // keys ≥ cut perturbed
        let mut y = x.clone();
        let mut r = Rng::new(8);
        for j in cut..sk {
            for t in 0..64 {
                y.k.set(0, 0, j, t, 5.0 * r.normal() as f32);
                y.v.set(0, 0, j, t, 5.0 * r.normal() as f32);
            }
        }
        // Rows whose position p_i = S_kv − S_q + i is below `cut`.
        let unaffected = (cut + sq).saturating_sub(sk);
        assert!(unaffected > 0);
        for level in Level::available() {
            let (a, la) = x.run_at(&Params::causal(), m, level);
            let (c, lc) = y.run_at(&Params::causal(), m, level);
            for hh in 0..2 {
                let rows = hh * sq..hh * sq + unaffected;
                let span = rows.start * 64..rows.end * 64;
                assert_eq!(
                    first_bit_difference(&a[span.clone()], &c[span]),
                    None,
                    "{m} {level:?}: head {hh} output changed"
                );
                assert_eq!(first_bit_difference(&la[rows.clone()], &lc[rows]), None, "{m} lse");
            }
            assert_ne!(a, c, "{m}: the perturbation must reach the later rows");
        }
    }
}

/// Keys the mask forbids to a row do not influence it, whatever they hold: the row is bitwise the
/// same when those keys hold other finite values, and never NaN when they hold NaN or ±∞ (e.g.
/// stale slots of a paged KV cache hidden by a dense or padding mask).
#[test]
fn forbidden_keys_never_influence_the_output_even_if_non_finite() {
    let (b, h, hk, sk, d) = (2, 4, 2, 600, 32);
    let mut failures = Vec::new();
    for (name, sq) in [("sdpa-flash", 70), ("sdpa-decode", 4), ("sdpa-reference", 70)] {
        let x = Qkv::random([b, h, hk, sq, sk, d, d], 9, 1.2);
        // Key j is garbage when j % 7 == 3 or j ≥ 450: hidden from every row by the mask.
        let garbage = |j: usize| j % 7 == 3 || j >= 450;
        let mut dense_flags = Vec::new();
        for _ in 0..sq {
            dense_flags.extend((0..sk).map(|j| !garbage(j)));
        }
        let dense = Mask::Dense(DenseMask::new(dense_flags, [1, 1, sq, sk]).unwrap());
        let padded = |bb: usize, j: usize| j >= [450, 3][bb];
        let masks: [(&str, Mask, Hidden); 3] = [
            ("key-padding", Mask::KeyPadding { lengths: vec![450, 3] }, &padded),
            ("dense", dense.clone(), &|_, j| garbage(j)),
            ("causal+dense", Mask::And(vec![Mask::Causal, dense]), &|_, j| garbage(j)),
        ];
        for (label, mask, hidden) in masks {
            let params = Params::default().with_mask(mask);
            let fill = |val: f32| {
                let mut y = x.clone();
                for bb in 0..b {
                    for hh in 0..hk {
                        for j in (0..sk).filter(|&j| hidden(bb, j)) {
                            for t in 0..d {
                                y.k.set(bb, hh, j, t, val);
                                y.v.set(bb, hh, j, t, val);
                            }
                        }
                    }
                }
                y
            };
            let (finite, other, nan, inf) =
                (fill(7.0), fill(-3.0), fill(f32::NAN), fill(f32::INFINITY));
            for level in Level::available() {
                let (a, la) = finite.run_at(&params, name, level);
                let (c, lc) = other.run_at(&params, name, level);
                if first_bit_difference(&a, &c).or(first_bit_difference(&la, &lc)).is_some() {
                    failures.push(format!("{name} {label} {level:?}: hidden finite values leak"));
                }
                for (what, y) in [("NaN", &nan), ("+inf", &inf)] {
                    let (n, ln) = y.run_at(&params, name, level);
                    let bad = n.iter().filter(|v| !v.is_finite()).count()
                        + ln.iter().filter(|v| v.is_nan()).count();
                    if bad > 0 || first_bit_difference(&n, &a).is_some() {
                        failures.push(format!(
                            "{name} {label} {level:?}: {what} in hidden keys gives {bad} non-finite \
                             outputs of {}",
                            n.len() + ln.len()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn fully_masked_rows_are_zero_with_minus_infinite_lse() {
    let (b, h, hk, sq, sk, d) = (2, 4, 2, 4, 500, 16);
    let x = Qkv::random([b, h, hk, sq, sk, d, d], 11, 1.2);
    let mut dense = vec![true; sq * sk];
    dense[sk..2 * sk].fill(false); // row 1 of every head and batch element
    let masks = [
        Mask::And(vec![Mask::Causal, Mask::KeyPadding { lengths: vec![500, 0] }]),
        Mask::Dense(DenseMask::new(dense, [1, 1, sq, sk]).unwrap()),
        Mask::BlockDiagonal { q_lens: vec![2, 2], kv_lens: vec![0, 500], causal: false },
        Mask::Window { left: Some(0), right: Some(0) },
    ];
    for (mi, mask) in masks.into_iter().enumerate() {
        // The window case puts the first rows before key 0.
        let q_offset = (mi == 3).then_some(-2);
        let params = Params { q_offset, ..Params::default().with_mask(mask.clone()) };
        let oracle = x.oracle(&params);
        let empty = oracle.lse.iter().filter(|l| **l == f64::NEG_INFINITY).count();
        assert!(empty > 0 && empty < oracle.lse.len(), "{mask:?}: {empty} empty rows");
        for m in FAST {
            for level in Level::available() {
                let (o, lse) = x.run_at(&params, m, level);
                oracle
                    .check(&o, &lse, &Tolerance::default())
                    .unwrap_or_else(|e| panic!("{m} {level:?} {mask:?}: {e}"));
            }
        }
    }
}

#[test]
fn large_magnitude_scores_stay_finite_and_accurate() {
    // σ = 100: scores scale·q·k have standard deviation ~1e4.
    let x = Qkv::random([1, 4, 2, 4, 700, 64, 64], 12, 100.0);
    let o = x.oracle(&Params::default());
    let spread = o.lse.iter().fold(0.0f64, |a, l| a.max(l.abs()));
    assert!(spread > 1e3, "scores must be large: max |lse| {spread}");
    for params in [
        Params::default(),
        Params::causal(),
        Params { softcap: Some(30.0), ..Params::causal() },
        Params { alibi_slopes: Some(alibi_slopes(4)), ..Params::default() },
    ] {
        let oracle = x.oracle(&params);
        for m in FAST {
            for level in Level::available() {
                let (out, lse) = x.run_at(&params, m, level);
                assert!(out.iter().chain(&lse).all(|v| v.is_finite()), "{m} {level:?}: non-finite");
                oracle
                    .check(&out, &lse, &Tolerance::default())
                    .unwrap_or_else(|e| panic!("{m} {level:?} {params:?}: {e}"));
            }
        }
    }
}

/// f16 and bf16 inputs are widened exactly and accumulated in f32 (sdpa README, "Precision"), so
/// they give bitwise the same result as f32 inputs holding the widened values.
#[test]
fn half_precision_inputs_equal_their_widened_f32() {
    for dt in [DType::F16, DType::BF16] {
        for (dims, mask) in [
            ([1, 4, 2, 70, 130, 64, 80], Mask::Causal),
            ([2, 8, 2, 1, 700, 128, 128], Mask::KeyPadding { lengths: vec![300, 700] }),
        ] {
            let x = Qkv::random_as(dims, 13, 1.2, dt, Layout::Bshd);
            let widened = |t: &Tensor| {
                Tensor::from_fn(DType::F32, t.shape, Layout::Bhsd, |a, b, c, d| t.get(a, b, c, d))
            };
            let y = Qkv { q: widened(&x.q), k: widened(&x.k), v: widened(&x.v) };
            let params = Params::default().with_mask(mask);
            for m in ["sdpa-flash", "sdpa-decode", "sdpa-reference"] {
                if m == "sdpa-decode" && dims[3] > 1 {
                    continue;
                }
                for level in Level::available() {
                    let (a, la) = x.run_at(&params, m, level);
                    let (c, lc) = y.run_at(&params, m, level);
                    assert_eq!(first_bit_difference(&a, &c), None, "{m} {dt} {level:?}: o");
                    assert_eq!(first_bit_difference(&la, &lc), None, "{m} {dt} {level:?}: lse");
                }
            }
        }
    }
}

#[test]
fn automatic_selection_prefers_decode_for_decode_shapes() {
    let chosen = |dims: [usize; 7]| {
        let x = Qkv::random(dims, 14, 1.0);
        let i = x.inputs();
        attend(i.q, i.k, i.v, &Params::default(), &Prefs::default()).unwrap().method
    };
    assert_eq!(chosen([1, 8, 2, 1, 4096, 64, 64]), "sdpa-decode");
    assert_eq!(chosen([1, 2, 2, 64, 64, 16, 16]), "sdpa-flash");
    assert_eq!(chosen([1, 1, 1, 1, 1, 8, 8]), "sdpa-flash");
}

#[test]
fn report_of_the_naive_run_is_small_but_nonzero() {
    // The acceptance rule is only as strong as the naive run's error is meaningful: it must be
    // well below the values and above zero on a generic problem.
    let x = Qkv::random([1, 2, 2, 100, 300, 64, 64], 15, 1.5);
    let o = x.oracle(&Params::causal());
    assert!(o.naive_o.max_abs > 0.0 && o.naive_o.max_abs < 1e-5, "{}", o.naive_o);
    let r = Report::compare(&vec![0.0; o.o.len()], &o.o, [1, 2, 100, 64]);
    assert!(r.rel_rms > 0.5, "outputs must not be trivially small: {r}");
}
