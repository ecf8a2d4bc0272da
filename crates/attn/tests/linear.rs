//! Linear-family mechanisms: the three forms (naive f64, recurrent, chunked) agree on outputs
//! and final states for S ∈ {1, 63, 64, 65, 1000, 4096} and several chunk sizes; prefill state
//! handed to decode equals one pass; registered methods run GQA and causal offsets and reject
//! what they cannot honour with typed reasons; the fla-layout API rejects bad inputs with typed
//! errors.

use attn::linear::delta::{self, Form};
use attn::linear::vanilla::{self, Config, Head, State};
use attn::linear::{gated_delta_rule, linear_attention, DeltaInputs, FeatureMap, LinearInputs};
use attn::{attend, Error, Mask, Par, Params, Prefs, TensorRef};

use attn_testing::close::max_rel as rel;
use attn_testing::rand::xorshift_uniform as rand;

const SIZES: &[(usize, usize)] = &[(1, 32), (63, 32), (64, 32), (65, 32), (1000, 32), (4096, 16)];
const CHUNKS: &[usize] = &[1, 16, 64, 100];

#[test]
fn vanilla_forms_agree() {
    for &(s, d) in SIZES {
        let (q, k, v) = (rand(s * d, 1), rand(s * d, 2), rand(s * d, 3));
        let head = Head { q: &q, k: &k, v: &v, dk: d, dv: d };
        for (map, norm) in
            [(FeatureMap::Elu1, true), (FeatureMap::Relu, false), (FeatureMap::Identity, false)]
        {
            for causal in [true, false] {
                let cfg = Config {
                    map,
                    causal,
                    norm,
                    scale: 1.0 / (d as f32).sqrt(),
                    q_offset: 0,
                    eps: 0.0,
                };
                let (mut o0, mut l0) = (vec![0.0; s * d], vec![0.0; s]);
                vanilla::reference(&cfg, &head, &mut o0, &mut l0);
                let (mut o1, mut l1) = (vec![f32::NAN; s * d], vec![f32::NAN; s]);
                let mut st_r = State::new(d, d);
                vanilla::recurrent(&cfg, &head, &mut st_r, &mut o1, &mut l1);
                assert!(
                    rel(&o1, &o0) < 1e-5,
                    "recurrent S={s} {map:?} causal={causal}: {}",
                    rel(&o1, &o0)
                );
                assert!(rel(&l1, &l0) < 1e-5, "recurrent lse S={s} {map:?}");
                for &c in CHUNKS {
                    let (mut o2, mut l2) = (vec![f32::NAN; s * d], vec![f32::NAN; s]);
                    let mut st_c = State::new(d, d);
                    vanilla::chunked(&cfg, &head, c, &mut st_c, &mut o2, &mut l2);
                    let e = rel(&o2, &o0);
                    assert!(e < 1e-5, "chunked C={c} S={s} {map:?} causal={causal}: {e}");
                    assert!(rel(&l2, &l0) < 1e-5, "chunked lse C={c} S={s} {map:?}");
                    assert!(
                        rel(&st_c.s, &st_r.s) < 1e-5 && rel(&st_c.z, &st_r.z) < 1e-5,
                        "state C={c} S={s}"
                    );
                }
            }
        }
    }
}

/// The two chunked kernels of vanilla linear attention (matrix-product tiles for causal prefill
/// and non-causal calls, row by row otherwise) agree with each other and the reference, with an
/// initial state, ε, and chunk lengths that do and do not divide S; so do their pair counts.
#[test]
fn vanilla_chunked_tiles_equal_chunked_rows() {
    let (s, d, dv) = (203, 16, 12);
    let (q, k, v) = (rand(s * d, 11), rand(s * d, 12), rand(s * dv, 13));
    let head = Head { q: &q, k: &k, v: &v, dk: d, dv };
    for (map, norm, eps) in [
        (FeatureMap::Elu1, true, 0.0),
        (FeatureMap::Elu1, true, 1e-3),
        (FeatureMap::Relu, false, 0.0),
    ] {
        for causal in [true, false] {
            let cfg = Config { map, causal, norm, scale: 0.25, q_offset: 0, eps };
            let init = || {
                let mut st = State::new(d, dv);
                for j in 0..5 {
                    st.update(map, &rand(d, 20 + j), &rand(dv, 30 + j));
                }
                st
            };
            for c in [1, 7, 64, 300] {
                let run = |tiles: bool| {
                    let mut st = init();
                    let (mut o, mut lse) = (vec![f32::NAN; s * dv], vec![f32::NAN; s]);
                    let f = if tiles { vanilla::chunked_tiles } else { vanilla::chunked_rows };
                    let pairs = f(&cfg, &head, c, &mut st, &mut o, &mut lse);
                    (o, lse, st, pairs)
                };
                let (ot, lt, st, pt) = run(true);
                let (or, lr, sr, pr) = run(false);
                let tag = format!("{map:?} norm={norm} eps={eps} causal={causal} C={c}");
                assert!(rel(&ot, &or) < 1e-5 && rel(&lt, &lr) < 1e-5, "{tag}: {}", rel(&ot, &or));
                assert!(rel(&st.s, &sr.s) < 1e-5 && rel(&st.z, &sr.z) < 1e-5, "{tag}: state");
                assert_eq!((st.n, pt), (sr.n, pr), "{tag}: count, pairs");
            }
        }
    }
}

struct Gdn {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    s0: Vec<f32>,
    shape: [usize; 5],
}

/// fla-layout inputs with per-token gates g = ln α, α ∈ [0.9, 1), β ∈ [0, 1).
fn gdn_inputs(b: usize, t: usize, h: usize, dk: usize, dv: usize, seed: u64) -> Gdn {
    let g = rand(b * t * h, seed + 3).iter().map(|x| (0.95 + 0.05 * x).ln()).collect();
    let beta = rand(b * t * h, seed + 4).iter().map(|x| 0.5 + 0.5 * x).collect();
    Gdn {
        q: rand(b * t * h * dk, seed),
        k: rand(b * t * h * dk, seed + 1),
        v: rand(b * t * h * dv, seed + 2),
        g,
        beta,
        s0: rand(b * h * dk * dv, seed + 5),
        shape: [b, t, h, dk, dv],
    }
}

fn gdn_run(x: &Gdn, init: bool, form: Form, par: Par) -> (Vec<f32>, Vec<f32>) {
    let [b, t, h, dk, dv] = x.shape;
    let inp = DeltaInputs {
        q: &x.q,
        k: &x.k,
        v: &x.v,
        g: &x.g,
        beta: &x.beta,
        shape: x.shape,
        scale: 1.0 / (dk as f32).sqrt(),
        l2norm: true,
    };
    let mut o = vec![f32::NAN; b * t * h * dv];
    let mut st = vec![f32::NAN; b * h * dk * dv];
    gated_delta_rule(&inp, init.then_some(&x.s0[..]), form, par, &mut o, &mut st).unwrap();
    (o, st)
}

#[test]
fn gated_delta_forms_agree() {
    for &(s, d) in SIZES {
        let x = gdn_inputs(1, s, 2, d, d + 8, s as u64);
        for init in [false, true] {
            let (o0, s0) = gdn_run(&x, init, Form::Reference, Par::Seq);
            let (o1, s1) = gdn_run(&x, init, Form::Recurrent, Par::Seq);
            assert!(rel(&o1, &o0) < 1e-5, "recurrent S={s}: {}", rel(&o1, &o0));
            assert!(rel(&s1, &s0) < 1e-5, "recurrent state S={s}: {}", rel(&s1, &s0));
            for &c in CHUNKS {
                let (o2, s2) = gdn_run(&x, init, Form::Chunked(c), Par::Rayon(2));
                assert!(rel(&o2, &o0) < 1e-5, "chunked C={c} S={s} init={init}: {}", rel(&o2, &o0));
                assert!(rel(&s2, &s0) < 1e-5, "chunked state C={c} S={s}: {}", rel(&s2, &s0));
            }
        }
    }
}

#[test]
fn gated_delta_strong_decay_is_stable() {
    // α down to e^-5 per token: e^{Σg} over a chunk of 64 underflows to 0; the token-by-token
    // form only uses e^{γ_i − γ_j} ≤ 1, the tiled form cuts its tiles where |γ| passes 60.
    let mut x = gdn_inputs(1, 300, 1, 16, 16, 9);
    x.g.iter_mut().enumerate().for_each(|(i, g)| *g = -5.0 * ((i % 7) as f32) / 6.0);
    let (o0, s0) = gdn_run(&x, true, Form::Reference, Par::Seq);
    let (o2, s2) = gdn_run(&x, true, Form::Chunked(64), Par::Seq);
    assert!(o2.iter().chain(&s2).all(|a| a.is_finite()));
    assert!(rel(&o2, &o0) < 1e-5 && rel(&s2, &s0) < 1e-5, "{} {}", rel(&o2, &o0), rel(&s2, &s0));
}

/// The two chunked kernels (tiles of matrix products for self-attention prefill, token by token
/// for other row layouts) compute the same thing, with scalar and channel-wise gates, mild and
/// strong (tiles cut short), and chunk lengths that do and do not divide T.
#[test]
fn chunked_tiles_equal_chunked_rows() {
    let (t, d, dv) = (300, 16, 12);
    let x = gdn_inputs(1, t, 1, d, dv, 31);
    let mild: Vec<f32> = rand(t * d, 32).iter().map(|r| (0.95 + 0.05 * r).ln()).collect();
    let strong: Vec<f32> = (0..t * d).map(|i| -4.0 * ((i % 11) as f32) / 10.0).collect();
    let strong1: Vec<f32> = (0..t).map(|i| -9.0 * ((i % 5) as f32) / 4.0).collect();
    let gates: [(&str, &[f32]); 4] = [
        ("scalar", &x.g),
        ("scalar strong", &strong1),
        ("channel", &mild),
        ("channel strong", &strong),
    ];
    let cfg = delta::Config { scale: 0.3, l2norm: true, q_offset: 0 };
    for (name, g) in gates {
        let head = delta::Head { q: &x.q, k: &x.k, v: &x.v, g, beta: &x.beta, dk: d, dv };
        let mut s64 = x.s0[..d * dv].to_vec();
        let (mut o64, mut l64) = (vec![0.0f32; t * dv], vec![0.0f32; t]);
        delta::reference(&cfg, &head, &mut s64, &mut o64, &mut l64);
        for c in [1, 7, 64, 128] {
            let run = |tiles: bool| {
                let mut st = x.s0[..d * dv].to_vec();
                let (mut o, mut lse) = (vec![f32::NAN; t * dv], vec![f32::NAN; t]);
                let f = if tiles { delta::chunked_tiles } else { delta::chunked_rows };
                let pairs = f(&cfg, &head, c, &mut st, &mut o, &mut lse);
                (o, st, lse, pairs)
            };
            let (ot, st, lt, pt) = run(true);
            let (or, sr, lr, pr) = run(false);
            assert!(ot.iter().chain(&st).all(|a| a.is_finite()), "{name} C={c}");
            assert!(
                rel(&ot, &or) < 1e-5 && rel(&st, &sr) < 1e-5,
                "{name} C={c}: {}",
                rel(&ot, &or)
            );
            assert!(rel(&ot, &o64) < 1e-5 && rel(&st, &s64) < 1e-5, "{name} C={c} vs reference");
            assert_eq!(lt, lr, "{name} C={c}");
            if !name.ends_with("strong") {
                assert_eq!(pt, pr, "{name} C={c}: computed pairs");
            }
        }
    }
}

#[test]
fn prefill_state_hands_over_to_decode() {
    let (t, d, split) = (200, 16, 130);
    let x = gdn_inputs(1, t, 1, d, d, 21);
    let (o_all, s_all) = gdn_run(&x, false, Form::Reference, Par::Seq);
    let cfg = delta::Config { scale: 1.0 / (d as f32).sqrt(), l2norm: true, q_offset: 0 };
    let head = |a: usize, b: usize| delta::Head {
        q: &x.q[a * d..b * d],
        k: &x.k[a * d..b * d],
        v: &x.v[a * d..b * d],
        g: &x.g[a..b],
        beta: &x.beta[a..b],
        dk: d,
        dv: d,
    };
    let mut st = vec![0.0f32; d * d];
    let (mut o, mut lse) = (vec![0.0f32; t * d], vec![0.0f32; t]);
    delta::chunked(&cfg, &head(0, split), 64, &mut st, &mut o[..split * d], &mut lse[..split]);
    let mut scratch = vec![0.0f32; 2 * d];
    for i in split..t {
        delta::step(
            true,
            &mut st,
            &x.k[i * d..(i + 1) * d],
            &x.v[i * d..(i + 1) * d],
            &x.g[i..i + 1],
            x.beta[i],
            &mut scratch,
        );
        delta::read(&cfg, &st, &x.q[i * d..(i + 1) * d], &mut o[i * d..(i + 1) * d], &mut scratch);
    }
    assert!(rel(&o, &o_all) < 1e-5, "{}", rel(&o, &o_all));
    assert!(rel(&st, &s_all) < 1e-5, "{}", rel(&st, &s_all));
}

#[test]
fn fla_api_typed_errors() {
    let x = gdn_inputs(1, 8, 2, 4, 4, 1);
    let mut inp = DeltaInputs {
        q: &x.q,
        k: &x.k,
        v: &x.v,
        g: &x.g,
        beta: &x.beta,
        shape: x.shape,
        scale: 0.5,
        l2norm: true,
    };
    let (mut o, mut st) = (vec![0.0; 64], vec![0.0; 32]);
    inp.shape = [1, 0, 2, 4, 4];
    assert!(matches!(
        gated_delta_rule(&inp, None, Form::Recurrent, Par::Seq, &mut o, &mut st),
        Err(Error::Empty { dim: "T", .. })
    ));
    inp.shape = x.shape;
    inp.g = &x.g[..3];
    assert!(matches!(
        gated_delta_rule(&inp, None, Form::Recurrent, Par::Seq, &mut o, &mut st),
        Err(Error::Shape { .. })
    ));
    inp.g = &x.g;
    let mut bad = x.k.clone();
    bad[13] = f32::NAN;
    inp.k = &bad;
    assert!(matches!(
        gated_delta_rule(&inp, None, Form::Chunked(4), Par::Seq, &mut o, &mut st),
        Err(Error::NonFinite { tensor: "k", index: [0, 1, 1, 1], .. })
    ));
    inp.k = &x.k;
    assert!(matches!(
        gated_delta_rule(&inp, Some(&x.s0[..5]), Form::Reference, Par::Seq, &mut o, &mut st),
        Err(Error::Shape { .. })
    ));
    let mut bad_s0 = x.s0.clone();
    bad_s0[17] = f32::INFINITY;
    assert!(matches!(
        gated_delta_rule(&inp, Some(&bad_s0), Form::Recurrent, Par::Seq, &mut o, &mut st),
        Err(Error::NonFinite { tensor: "initial_state", index: [0, 1, 0, 1], .. })
    ));
    assert!(gated_delta_rule(&inp, None, Form::Chunked(3), Par::Seq, &mut o, &mut st).is_ok());
}

fn linear_run(
    x: &Gdn,
    s0: Option<&[f32]>,
    map: FeatureMap,
    form: Form,
    par: Par,
) -> (Vec<f32>, Vec<f32>) {
    let [b, t, h, dk, dv] = x.shape;
    let inp = LinearInputs { q: &x.q, k: &x.k, v: &x.v, shape: x.shape, scale: 0.3, map };
    let mut o = vec![f32::NAN; b * t * h * dv];
    let mut st = vec![f32::NAN; b * h * dk * dv];
    linear_attention(&inp, s0, form, par, &mut o, &mut st).unwrap();
    (o, st)
}

/// fla-layout linear attention with a state: the three forms agree (outputs and final states),
/// a split run with the state handed over equals one pass, and with no initial state it is the
/// registered `linear:norm=false` method.
#[test]
fn linear_attention_state_forms_agree_and_hand_over() {
    let x = gdn_inputs(2, 70, 2, 16, 8, 40);
    let [b, t, h, dk, dv] = x.shape;
    for map in [FeatureMap::Identity, FeatureMap::Elu1] {
        let (o_ref, s_ref) = linear_run(&x, Some(&x.s0), map, Form::Reference, Par::Seq);
        for form in [Form::Recurrent, Form::Chunked(16), Form::Chunked(64)] {
            let (o, s) = linear_run(&x, Some(&x.s0), map, form, Par::with_threads(2));
            assert!(rel(&o, &o_ref) < 1e-5, "{map:?} {form:?}: o {}", rel(&o, &o_ref));
            assert!(rel(&s, &s_ref) < 1e-5, "{map:?} {form:?}: state {}", rel(&s, &s_ref));
        }
        // Tokens 0..30, then 30..70 from the state after token 29.
        let cut = 30;
        let part = |lo: usize, hi: usize, w: usize, src: &[f32]| -> Vec<f32> {
            (0..b)
                .flat_map(|bi| src[(bi * t + lo) * h * w..(bi * t + hi) * h * w].to_vec())
                .collect()
        };
        let piece = |lo, hi| Gdn {
            q: part(lo, hi, dk, &x.q),
            k: part(lo, hi, dk, &x.k),
            v: part(lo, hi, dv, &x.v),
            g: Vec::new(),
            beta: Vec::new(),
            s0: Vec::new(),
            shape: [b, hi - lo, h, dk, dv],
        };
        let (o1, s1) = linear_run(&piece(0, cut), Some(&x.s0), map, Form::Chunked(16), Par::Seq);
        let (o2, s2) = linear_run(&piece(cut, t), Some(&s1), map, Form::Recurrent, Par::Seq);
        assert!(rel(&s2, &s_ref) < 1e-5, "{map:?}: handed-over state {}", rel(&s2, &s_ref));
        for bi in 0..b {
            let want =
                |lo: usize, hi: usize| &o_ref[(bi * t + lo) * h * dv..(bi * t + hi) * h * dv];
            let got1 = &o1[bi * cut * h * dv..(bi + 1) * cut * h * dv];
            let got2 = &o2[bi * (t - cut) * h * dv..(bi + 1) * (t - cut) * h * dv];
            assert!(rel(got1, want(0, cut)) < 1e-5);
            assert!(rel(got2, want(cut, t)) < 1e-5);
        }
    }
    // No initial state: the registered method (q, k, v as [B, T, H, D] views).
    let (o, _) = linear_run(&x, None, FeatureMap::Identity, Form::Chunked(64), Par::Seq);
    let prefs = Prefs { method: Some("linear:map=identity,norm=false".into()), ..Prefs::default() };
    fn view(d: &[f32], shape: [usize; 4]) -> TensorRef<'_> {
        TensorRef::from_bshd(d, shape).unwrap()
    }
    let params = Params { scale: Some(0.3), ..Params::default() }.with_mask(Mask::Causal);
    let out = attend(
        view(&x.q, [b, t, h, dk]),
        view(&x.k, [b, t, h, dk]),
        view(&x.v, [b, t, h, dv]),
        &params,
        &prefs,
    )
    .unwrap();
    for (bi, hi, s) in
        (0..b).flat_map(|bi| (0..h).flat_map(move |hi| (0..t).map(move |s| (bi, hi, s))))
    {
        let got = &o[((bi * t + s) * h + hi) * dv..][..dv];
        let want = &out.o[((bi * h + hi) * t + s) * dv..][..dv];
        assert!(rel(got, want) < 1e-5, "b {bi} h {hi} s {s}");
    }
}

#[test]
fn linear_attention_typed_errors() {
    let x = gdn_inputs(1, 8, 2, 4, 4, 2);
    let mut inp = LinearInputs {
        q: &x.q,
        k: &x.k,
        v: &x.v,
        shape: x.shape,
        scale: 0.5,
        map: FeatureMap::Identity,
    };
    let (mut o, mut st) = (vec![0.0; 64], vec![0.0; 32]);
    let mut run = |inp: &LinearInputs, s0: Option<&[f32]>| {
        linear_attention(inp, s0, Form::Recurrent, Par::Seq, &mut o, &mut st)
    };
    assert!(run(&inp, None).is_ok());
    assert!(matches!(run(&inp, Some(&x.s0[..31])), Err(Error::Shape { .. })));
    let mut bad = x.s0.clone();
    bad[3] = f32::NAN;
    assert!(matches!(
        run(&inp, Some(&bad)),
        Err(Error::NonFinite { tensor: "initial_state", index: [0, 0, 0, 3], .. })
    ));
    inp.shape = [1, 8, 2, 0, 4];
    assert!(matches!(run(&inp, None), Err(Error::Empty { dim: "K", .. })));
    inp.shape = x.shape;
    let mut bad_v = x.v.clone();
    bad_v[9] = f32::NAN;
    inp.v = &bad_v;
    assert!(matches!(
        run(&inp, None),
        Err(Error::NonFinite { tensor: "v", index: [0, 1, 0, 1], .. })
    ));
}

fn call(
    spec: &str,
    h: usize,
    h_kv: usize,
    s_q: usize,
    s_kv: usize,
    mask: Mask,
) -> attn::Result<attn::Output> {
    let d = 16;
    let q = rand(h * s_q * d, 1);
    let k = rand(h_kv * s_kv * d, 2);
    let v = rand(h_kv * s_kv * d, 3);
    let q = TensorRef::new(&q[..], [1, h, s_q, d])?;
    let k = TensorRef::new(&k[..], [1, h_kv, s_kv, d])?;
    let v = TensorRef::new(&v[..], [1, h_kv, s_kv, d])?;
    let prefs = Prefs { method: Some(spec.into()), ..Prefs::default() };
    attend(q, k, v, &Params::default().with_mask(mask), &prefs)
}

#[test]
fn registered_forms_agree_on_gqa_and_offsets() {
    for (fam, masks) in [
        ("linear", vec![Mask::None, Mask::Causal]),
        ("gated-deltanet", vec![Mask::Causal]),
        ("kda", vec![Mask::Causal]),
    ] {
        for mask in masks {
            for (s_q, s_kv) in [(70, 70), (5, 70), (70, 40), (1, 300)] {
                let want =
                    call(&format!("{fam}-reference"), 4, 2, s_q, s_kv, mask.clone()).unwrap();
                for spec in [fam.to_string(), format!("{fam}-recurrent"), format!("{fam}:chunk=7")]
                {
                    let got = call(&spec, 4, 2, s_q, s_kv, mask.clone()).unwrap();
                    assert!(
                        rel(&got.o, &want.o) < 1e-5,
                        "{spec} {mask:?} {s_q}x{s_kv}: {}",
                        rel(&got.o, &want.o)
                    );
                    assert!(
                        got.o.iter().all(|x| x.is_finite()) && got.lse.iter().all(|x| !x.is_nan())
                    );
                    for (a, b) in got.lse.iter().zip(&want.lse) {
                        assert!(
                            (a - b).abs() <= 1e-5 * b.abs().max(1.0) || a == b,
                            "{spec} lse {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn registered_methods_reject_what_they_cannot_honour() {
    let win = Mask::sliding_window(8);
    for spec in ["linear", "gated-deltanet", "linear-reference"] {
        match call(spec, 2, 2, 32, 32, win.clone()) {
            Err(Error::Unsupported { reasons, .. }) => {
                assert!(reasons.iter().any(|r| matches!(r, attn::Reason::Mask(_))), "{reasons:?}")
            }
            other => panic!("{spec}: {other:?}"),
        }
    }
    assert!(matches!(
        call("gated-deltanet", 2, 2, 32, 32, Mask::None),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(attn::methods::build("linear:map=favor"), Err(Error::BadParam { .. })));
    assert!(matches!(
        attn::methods::build("gated-deltanet:decay=1.5"),
        Err(Error::BadParam { .. })
    ));
    assert!(matches!(attn::methods::build("gated-deltanet:chunk=0"), Err(Error::BadParam { .. })));
    // Never selected automatically.
    let out = call_auto();
    assert!(!out.method.starts_with("linear") && !out.method.starts_with("gated"));
}

fn call_auto() -> attn::Output {
    let q = rand(2 * 16 * 16, 1);
    let t = TensorRef::new(&q[..], [1, 2, 16, 16]).unwrap();
    attend(t, t, t, &Params::causal(), &Prefs::default()).unwrap()
}

#[test]
fn kda_channel_gates_forms_agree() {
    for &(s, d) in &[(1, 16), (63, 16), (64, 16), (65, 16), (1000, 16), (4096, 8)] {
        let mut x = gdn_inputs(1, s, 2, d, d + 4, 40 + s as u64);
        // g: [B, T, H, K], α ∈ [0.9, 1) per channel.
        x.g = rand(s * 2 * d, 77).iter().map(|r| (0.95 + 0.05 * r).ln()).collect();
        for init in [false, true] {
            let (o0, s0) = gdn_run(&x, init, Form::Reference, Par::Seq);
            let (o1, s1) = gdn_run(&x, init, Form::Recurrent, Par::Seq);
            assert!(
                rel(&o1, &o0) < 1e-5 && rel(&s1, &s0) < 1e-5,
                "recurrent S={s}: {}",
                rel(&o1, &o0)
            );
            for &c in &[1, 16, 64, 100] {
                let (o2, s2) = gdn_run(&x, init, Form::Chunked(c), Par::Rayon(2));
                assert!(rel(&o2, &o0) < 1e-5, "chunked C={c} S={s}: {}", rel(&o2, &o0));
                assert!(rel(&s2, &s0) < 1e-5, "chunked state C={c} S={s}: {}", rel(&s2, &s0));
            }
        }
    }
}

#[test]
fn kda_with_equal_channel_gates_is_gated_deltanet() {
    let x = gdn_inputs(2, 130, 2, 8, 8, 5);
    let mut xk = gdn_inputs(2, 130, 2, 8, 8, 5);
    xk.g = x.g.iter().flat_map(|&g| std::iter::repeat_n(g, 8)).collect();
    let (o, s) = gdn_run(&x, true, Form::Chunked(64), Par::Seq);
    let (ok, sk) = gdn_run(&xk, true, Form::Chunked(64), Par::Seq);
    assert!(rel(&ok, &o) < 1e-5 && rel(&sk, &s) < 1e-5, "{} {}", rel(&ok, &o), rel(&sk, &s));
}

/// The registered `kda` runs the engine with `Kda::channel_gates`: its three forms agree on
/// outputs and final states (engine level, with those gates and a non-zero initial state) and
/// through the registry, for S ∈ {1, 63, 64, 65, 1000} and several chunk sizes.
#[test]
fn kda_method_forms_agree() {
    use attn::methods::kda::Kda;
    use attn::methods::linear::Form as MForm;
    for &(s, d) in &[(1, 16), (63, 16), (64, 16), (65, 16), (1000, 16)] {
        let gates = Kda::new(MForm::Chunked).channel_gates(d);
        let mut x = gdn_inputs(1, s, 2, d, d, 90 + s as u64);
        x.g = (0..s * 2).flat_map(|_| gates.iter().copied()).collect();
        x.beta.fill(0.5);
        for init in [false, true] {
            let (o0, s0) = gdn_run(&x, init, Form::Reference, Par::Seq);
            let (o1, s1) = gdn_run(&x, init, Form::Recurrent, Par::Seq);
            assert!(rel(&o1, &o0) < 1e-5, "recurrent S={s}: {}", rel(&o1, &o0));
            assert!(rel(&s1, &s0) < 1e-5, "recurrent state S={s}: {}", rel(&s1, &s0));
            for &c in CHUNKS {
                let (o2, s2) = gdn_run(&x, init, Form::Chunked(c), Par::Seq);
                assert!(rel(&o2, &o0) < 1e-5, "chunked C={c} S={s}: {}", rel(&o2, &o0));
                assert!(rel(&s2, &s0) < 1e-5, "chunked state C={c} S={s}: {}", rel(&s2, &s0));
            }
        }
        let want = call("kda-reference", 2, 2, s, s, Mask::Causal).unwrap();
        let mut specs = vec!["kda-recurrent".to_string()];
        specs.extend(CHUNKS.iter().map(|c| format!("kda:chunk={c}")));
        for spec in specs {
            let got = call(&spec, 2, 2, s, s, Mask::Causal).unwrap();
            assert!(rel(&got.o, &want.o) < 1e-5, "{spec} S={s}: {}", rel(&got.o, &want.o));
        }
    }
}

#[test]
fn kda_channel_gates_are_log_spaced_and_tie_to_gated_deltanet() {
    use attn::methods::kda::Kda;
    use attn::methods::linear::Form as MForm;
    let m = Kda { decay_min: 0.5, decay_max: 1.0, ..Kda::new(MForm::Chunked) };
    let g = m.channel_gates(3);
    assert!((g[0] - 0.5f32.ln()).abs() < 1e-7 && (g[1] - 0.5f32.ln() / 2.0).abs() < 1e-7);
    assert_eq!(g[2], 0.0);
    assert_eq!(m.channel_gates(1), vec![0.0]);
    // Equal channel decays: KDA is Gated DeltaNet with that decay.
    let a = call("kda:decay_min=0.95,decay_max=0.95,beta=0.7", 4, 2, 70, 70, Mask::Causal).unwrap();
    let b = call("gated-deltanet:decay=0.95,beta=0.7", 4, 2, 70, 70, Mask::Causal).unwrap();
    assert!(rel(&a.o, &b.o) < 1e-5, "{}", rel(&a.o, &b.o));
    // Different channel decays change the result.
    let c = call("kda:decay_min=0.5,decay_max=0.95,beta=0.7", 4, 2, 70, 70, Mask::Causal).unwrap();
    assert!(rel(&c.o, &b.o) > 1e-3);
}

#[test]
fn kda_rejects_bad_params() {
    for spec in [
        "kda:decay_min=0",
        "kda:decay_max=1.5",
        "kda:decay_min=0.99,decay_max=0.9",
        "kda:decay_min=nan",
        "kda:beta=2",
        "kda:chunk=0",
        "kda-recurrent:decay_max=-1",
    ] {
        assert!(matches!(attn::methods::build(spec), Err(Error::BadParam { .. })), "{spec}");
    }
    assert!(matches!(attn::methods::build("kda:decay=0.9"), Err(Error::UnknownParam { .. })));
    assert!(matches!(call("kda", 2, 2, 32, 32, Mask::None), Err(Error::Unsupported { .. })));
}

/// `attend` on `[1, H, S, 16]` inputs from fixed seeds, `v` transformed by `fv` (index, value).
fn call_v(
    spec: &str,
    [h, h_kv, s_q, s_kv]: [usize; 4],
    mask: Mask,
    fv: impl Fn(usize, f32) -> f32,
) -> attn::Result<attn::Output> {
    let d = 16;
    let q = rand(h * s_q * d, 1);
    let k = rand(h_kv * s_kv * d, 2);
    let v: Vec<f32> = rand(h_kv * s_kv * d, 3).iter().enumerate().map(|(i, &x)| fv(i, x)).collect();
    let q = TensorRef::new(&q[..], [1, h, s_q, d])?;
    let k = TensorRef::new(&k[..], [1, h_kv, s_kv, d])?;
    let v = TensorRef::new(&v[..], [1, h_kv, s_kv, d])?;
    let prefs = Prefs { method: Some(spec.into()), ..Prefs::default() };
    attend(q, k, v, &Params::default().with_mask(mask), &prefs)
}

fn assert_forms_agree(fam: &str, extra: &str, chunk_key: &str, mask: Mask) {
    for s in [1, 63, 64, 65, 1000] {
        let with = |name: &str, more: &str| {
            let kv: Vec<&str> = [extra, more].into_iter().filter(|x| !x.is_empty()).collect();
            if kv.is_empty() {
                name.to_string()
            } else {
                format!("{name}:{}", kv.join(","))
            }
        };
        let want = call(&with(&format!("{fam}-reference"), ""), 4, 2, s, s, mask.clone()).unwrap();
        let mut specs = vec![with(&format!("{fam}-recurrent"), "")];
        specs.extend(CHUNKS.iter().map(|c| with(fam, &format!("{chunk_key}={c}"))));
        for spec in specs {
            let got = call(&spec, 4, 2, s, s, mask.clone()).unwrap();
            let e = rel(&got.o, &want.o);
            assert!(e < 1e-5, "{spec} {mask:?} S={s}: {e}");
            for (a, b) in got.lse.iter().zip(&want.lse) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0) || a == b,
                    "{spec} lse {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn transnormer_forms_agree() {
    for mask in [Mask::Causal, Mask::None] {
        assert_forms_agree("transnormer", "", "chunk", mask.clone());
        assert_forms_agree("transnormer", "map=elu", "chunk", mask.clone());
        assert_forms_agree("transnormer", "norm=layernorm,map=relu", "chunk", mask);
    }
    // DiagAttention: each block length (part of the function) in the three forms.
    for b in [1, 16, 64, 100] {
        for kernel in ["softmax", "relu"] {
            let extra = format!("mode=diag,diag={kernel},block={b}");
            assert_forms_agree("transnormer", &extra, "chunk", Mask::Causal);
        }
    }
}

#[test]
fn transnormer_norm_state_forms_agree() {
    // NormAttention's state (Σ φ(k) vᵀ, unscaled, no normaliser) from the recurrent and chunked
    // forms, with the T1 kernel (plain ELU).
    for &(s, d) in &[(1, 16), (63, 16), (64, 16), (65, 16), (1000, 16)] {
        let (q, k, v) = (rand(s * d, 4), rand(s * d, 5), rand(s * d, 6));
        let head = Head { q: &q, k: &k, v: &v, dk: d, dv: d };
        let cfg = Config {
            map: FeatureMap::Elu,
            causal: true,
            norm: false,
            scale: 1.0,
            q_offset: 0,
            eps: 0.0,
        };
        let (mut o0, mut l0) = (vec![0.0; s * d], vec![0.0; s]);
        vanilla::reference(&cfg, &head, &mut o0, &mut l0);
        let mut st_r = State::new(d, d);
        let (mut o1, mut l1) = (vec![f32::NAN; s * d], vec![f32::NAN; s]);
        vanilla::recurrent(&cfg, &head, &mut st_r, &mut o1, &mut l1);
        assert!(rel(&o1, &o0) < 1e-5, "recurrent S={s}");
        for &c in CHUNKS {
            let mut st_c = State::new(d, d);
            let (mut o2, mut l2) = (vec![f32::NAN; s * d], vec![f32::NAN; s]);
            vanilla::chunked(&cfg, &head, c, &mut st_c, &mut o2, &mut l2);
            assert!(rel(&o2, &o0) < 1e-5, "chunked C={c} S={s}");
            assert!(rel(&st_c.s, &st_r.s) < 1e-5, "state C={c} S={s}");
        }
    }
}

#[test]
fn transnormer_post_norm_formula() {
    use attn::methods::transnormer::PostNorm;
    // One row of two heads × 2 values: [3, 4 | 0, 0]; n = 4.
    let mut o = vec![3.0, 4.0, 0.0, 0.0];
    PostNorm::Srms.apply(0.0, &mut o, [1, 2, 1, 2]);
    let r = 5.0 / 2.0; // ‖x‖ / √n
    for (g, w) in o.iter().zip([3.0 / r, 4.0 / r, 0.0, 0.0]) {
        assert!((g - w).abs() < 1e-6, "{o:?}");
    }
    let mut o = vec![3.0, 4.0, 0.0, 1.0];
    PostNorm::LayerNorm.apply(0.0, &mut o, [1, 2, 1, 2]);
    // mean 2, var (1 + 4 + 4 + 1)/4 = 2.5
    for (g, w) in o.iter().zip([1.0, 2.0, -2.0, -1.0]) {
        assert!((g - w / 2.5f32.sqrt()).abs() < 1e-6, "{o:?}");
    }
    // ε = 0 and a zero row: zero, not NaN.
    let mut z = vec![0.0; 4];
    PostNorm::Srms.apply(0.0, &mut z, [1, 1, 1, 4]);
    assert_eq!(z, vec![0.0; 4]);
}

#[test]
fn transnormer_post_norm_is_joint_over_heads_and_scale_invariant() {
    let shape = [2, 2, 50, 50];
    // Head 1 (its own key/value head) gets values 10× larger.
    let big = |i: usize, x: f32| if i >= 50 * 16 { 10.0 * x } else { x };
    let got = call_v("transnormer-reference", shape, Mask::Causal, big).unwrap();
    let raw = call_v("linear-reference:norm=false", shape, Mask::Causal, big).unwrap();
    let norm = |o: &[f32], h: usize, s: usize| {
        o[(h * 50 + s) * 16..(h * 50 + s + 1) * 16].iter().map(|x| x * x).sum::<f32>().sqrt()
    };
    for s in 0..50 {
        // A joint norm keeps the ratio between heads (a per-head norm would make it ≈ 1).
        let (a, b) =
            (norm(&got.o, 1, s) / norm(&got.o, 0, s), norm(&raw.o, 1, s) / norm(&raw.o, 0, s));
        assert!((a - b).abs() <= 1e-5 * b, "row {s}: {a} vs {b}");
        assert!(a > 2.0, "row {s}: {a}");
    }
    // Scaling v by c > 0 leaves the output unchanged (ε = 0).
    for spec in ["transnormer-reference:eps=0", "transnormer-reference:eps=0,mode=diag,diag=relu"] {
        let a = call_v(spec, shape, Mask::Causal, |_, x| x).unwrap();
        let b = call_v(spec, shape, Mask::Causal, |_, x| 3.7 * x).unwrap();
        assert!(rel(&a.o, &b.o) < 1e-6, "{spec}: {}", rel(&a.o, &b.o));
    }
}

#[test]
fn transnormer_diag_softmax_with_one_block_is_causal_softmax() {
    for (s_q, s_kv) in [(70, 70), (1, 70), (30, 70)] {
        let want = call("sdpa-reference", 4, 2, s_q, s_kv, Mask::Causal).unwrap();
        for spec in [
            "transnormer-reference:mode=diag,block=128",
            "transnormer:mode=diag,block=70",
            "transnormer-recurrent:mode=diag,block=1000",
        ] {
            let got = call(spec, 4, 2, s_q, s_kv, Mask::Causal).unwrap();
            assert!(rel(&got.o, &want.o) < 1e-5, "{spec} {s_q}x{s_kv}: {}", rel(&got.o, &want.o));
            assert!(rel(&got.lse, &want.lse) < 1e-5, "{spec} lse");
        }
    }
}

#[test]
fn transnormer_diag_blocks_do_not_leak() {
    // Perturbing key/value 70 (block 1 of 32-position blocks) changes only rows 70..96.
    let shape = [2, 2, 130, 130];
    let pert = |i: usize, x: f32| if i / 16 == 70 || i / 16 == 130 + 70 { x + 5.0 } else { x };
    for spec in
        ["transnormer:mode=diag,block=32", "transnormer-recurrent:mode=diag,diag=relu,block=32"]
    {
        let a = call_v(spec, shape, Mask::Causal, |_, x| x).unwrap();
        let b = call_v(spec, shape, Mask::Causal, pert).unwrap();
        for h in 0..2 {
            for s in 0..130 {
                let row = |o: &[f32]| o[(h * 130 + s) * 16..(h * 130 + s + 1) * 16].to_vec();
                let same = row(&a.o) == row(&b.o);
                // Outside the block: unchanged. Inside, softmax rows all change (relu rows whose
                // score against key 70 is negative need not).
                if !(70..96).contains(&s) {
                    assert!(same, "{spec} head {h} row {s} changed");
                } else if !spec.contains("relu") {
                    assert!(!same, "{spec} head {h} row {s} unchanged");
                }
            }
        }
    }
}

#[test]
fn transnormer_rejects_bad_params_and_masks() {
    for spec in [
        "transnormer:mode=global",
        "transnormer:map=favor",
        "transnormer:diag=gelu",
        "transnormer:block=0",
        "transnormer:norm=batchnorm",
        "transnormer:eps=-1",
        "transnormer:eps=nan",
        "transnormer-recurrent:chunk=0",
    ] {
        assert!(matches!(attn::methods::build(spec), Err(Error::BadParam { .. })), "{spec}");
    }
    assert!(matches!(attn::methods::build("transnormer:w=3"), Err(Error::UnknownParam { .. })));
    match call("transnormer:mode=diag", 2, 2, 32, 32, Mask::None) {
        Err(Error::Unsupported { reasons, .. }) => {
            assert!(reasons.iter().any(|r| matches!(r, attn::Reason::Other(_))), "{reasons:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        call("transnormer", 2, 2, 32, 32, Mask::sliding_window(8)),
        Err(Error::Unsupported { .. })
    ));
    assert!(call("transnormer", 2, 2, 32, 32, Mask::None).is_ok());
}

#[test]
fn nalaformer_forms_agree() {
    for mask in [Mask::Causal, Mask::None] {
        assert_forms_agree("nalaformer", "", "chunk", mask.clone());
        assert_forms_agree("nalaformer", "lambda=1,eps=0.01", "chunk", mask);
    }
}

#[test]
fn nala_feature_maps() {
    use attn::linear::nala::{key_features, query_features};
    // Key map: [relu(k³) ‖ relu(−k³)] keeps the norm of k³ and is non-negative.
    let k = rand(64, 11);
    let mut fk = vec![f32::NAN; 128];
    key_features(&k, &mut fk);
    let n3 = k.iter().map(|&x| (x as f64).powi(6)).sum::<f64>().sqrt();
    let nf = fk.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    assert!((n3 - nf).abs() <= 1e-6 * n3 && fk.iter().all(|&x| x >= 0.0));
    // Query map: direction only, the norm sets the exponent p = λ(1/2 + tanh‖q‖).
    let mut fq = vec![f32::NAN; 4];
    query_features(&[3.0, -4.0], 3.0, &mut fq);
    let p = 3.0 * (0.5 + 5.0f64.tanh());
    let want = [0.6f64.powf(p), 0.0, 0.0, 0.8f64.powf(p)];
    for (g, w) in fq.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{fq:?} vs {want:?}");
    }
    // A longer query of the same direction: a larger exponent, so every feature shrinks (|q̂| ≤ 1).
    let q = rand(32, 12);
    let q3: Vec<f32> = q.iter().map(|x| 3.0 * x).collect();
    let (mut a, mut b) = (vec![0.0; 64], vec![0.0; 64]);
    query_features(&q, 3.0, &mut a);
    query_features(&q3, 3.0, &mut b);
    assert!(a.iter().zip(&b).all(|(a, b)| b <= a && (*a == 0.0) == (*b == 0.0)));
    assert!(a.iter().zip(&b).any(|(a, b)| b < a));
    // The zero query: zero features, not NaN.
    let mut z = vec![f32::NAN; 8];
    query_features(&[0.0; 4], 3.0, &mut z);
    assert_eq!(z, vec![0.0; 8]);
}

#[test]
fn nalaformer_rows_are_normalised_and_see_the_query_norm() {
    // With ε = 0 and v ≡ 1 every row that reads a key returns 1 (weights ≥ 0 summing to 1).
    for spec in ["nalaformer-reference:eps=0", "nalaformer:eps=0", "nalaformer-recurrent:eps=0"] {
        let out = call_v(spec, [4, 2, 70, 70], Mask::Causal, |_, _| 1.0).unwrap();
        assert!(out.o.iter().all(|&x| (x - 1.0).abs() < 1e-6), "{spec}");
    }
    // relu linear attention is blind to the query norm; NaLaFormer is not.
    let run = |spec: &str, c: f32| {
        let (q, k, v) = (rand(2 * 40 * 16, 1), rand(2 * 40 * 16, 2), rand(2 * 40 * 16, 3));
        let q: Vec<f32> = q.iter().map(|x| c * x).collect();
        let sh = [1, 2, 40, 16];
        let (q, k, v) = (
            TensorRef::new(&q[..], sh).unwrap(),
            TensorRef::new(&k[..], sh).unwrap(),
            TensorRef::new(&v[..], sh).unwrap(),
        );
        let prefs = Prefs { method: Some(spec.into()), ..Prefs::default() };
        attend(q, k, v, &Params::causal(), &prefs).unwrap().o
    };
    let (a, b) = (run("linear-reference:map=relu", 1.0), run("linear-reference:map=relu", 4.0));
    assert!(rel(&a, &b) < 1e-6);
    // (‖q‖ ≈ 2.3 here: tanh saturates above, so compare against a short query.)
    let (a, b) = (run("nalaformer-reference", 1.0), run("nalaformer-reference", 0.1));
    assert!(rel(&a, &b) > 1e-2, "{}", rel(&a, &b));
}

#[test]
fn normaliser_eps_state_hands_over_to_decode() {
    // eps counts the keys read; the count travels in the state from the chunked prefill to the
    // recurrent decode.
    let (t, d, split) = (200, 16, 130);
    let (q, k, v) = (rand(t * d, 7), rand(t * d, 8), rand(t * d, 9));
    let cfg = Config {
        map: FeatureMap::Elu1,
        causal: true,
        norm: true,
        scale: 0.25,
        q_offset: 0,
        eps: 0.3,
    };
    let all = Head { q: &q, k: &k, v: &v, dk: d, dv: d };
    let (mut o0, mut l0) = (vec![0.0; t * d], vec![0.0; t]);
    vanilla::reference(&cfg, &all, &mut o0, &mut l0);
    let part = |a: usize, b: usize| Head {
        q: &q[a * d..b * d],
        k: &k[a * d..b * d],
        v: &v[a * d..b * d],
        dk: d,
        dv: d,
    };
    let mut st = State::new(d, d);
    let (mut o, mut l) = (vec![0.0; t * d], vec![0.0; t]);
    vanilla::chunked(&cfg, &part(0, split), 64, &mut st, &mut o[..split * d], &mut l[..split]);
    assert_eq!(st.n, split as u64);
    vanilla::recurrent(&cfg, &part(split, t), &mut st, &mut o[split * d..], &mut l[split..]);
    assert!(rel(&o, &o0) < 1e-5 && rel(&l, &l0) < 1e-5, "{} {}", rel(&o, &o0), rel(&l, &l0));
}

#[test]
fn nalaformer_rejects_bad_params() {
    for spec in [
        "nalaformer:lambda=0",
        "nalaformer:lambda=-1",
        "nalaformer:lambda=inf",
        "nalaformer:eps=-1",
        "nalaformer:eps=nan",
        "nalaformer:chunk=0",
        "nalaformer-recurrent:lambda=x",
    ] {
        assert!(matches!(attn::methods::build(spec), Err(Error::BadParam { .. })), "{spec}");
    }
    assert!(matches!(attn::methods::build("nalaformer:power=3"), Err(Error::UnknownParam { .. })));
    assert!(matches!(
        call("nalaformer", 2, 2, 32, 32, Mask::sliding_window(8)),
        Err(Error::Unsupported { .. })
    ));
}

/// Decode-step timing (not a pass/fail check: prints a table). After a chunked prefill of `S`
/// tokens, one decode step (add a key, read one query) costs the same whatever `S`: the state is
/// `[D, D_v]` (linear, Gated DeltaNet, KDA) or one block of keys (DiagAttention). Run with
/// `cargo test --release -p attn --test linear -- --ignored --nocapture decode_step`.
#[test]
#[ignore = "timing table; run by hand in release"]
fn decode_step_time_is_independent_of_s() {
    use attn::methods::transnormer::diag;
    use std::time::Instant;
    let (d, steps) = (128, 512);
    let kda_gates =
        attn::methods::kda::Kda::new(attn::methods::linear::Form::Chunked).channel_gates(d);
    println!("| S (prefill) | linear µs/step | gated-deltanet µs/step | kda µs/step | diag-softmax µs/step |");
    println!("|---|---|---|---|---|");
    for s in [1024usize, 4096, 16384, 65536] {
        let (q, k, v) =
            (rand((s + steps) * d, 1), rand((s + steps) * d, 2), rand((s + steps) * d, 3));
        // Median of 5 runs of `steps` decode steps (positions S..S+steps), in µs per step.
        let time = |f: &mut dyn FnMut(usize)| {
            let mut runs: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    for i in s..s + steps {
                        f(i);
                    }
                    t.elapsed().as_secs_f64() * 1e6 / steps as f64
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            runs[2]
        };
        let mut o = vec![0.0f32; s * d];
        let mut lse = vec![0.0f32; s];
        let mut row = vec![0.0f32; d];
        // linear: State after the prefill, then update + read per token.
        let cfg = Config {
            map: FeatureMap::Elu1,
            causal: true,
            norm: true,
            scale: 0.1,
            q_offset: 0,
            eps: 0.0,
        };
        let pre = Head { q: &q[..s * d], k: &k[..s * d], v: &v[..s * d], dk: d, dv: d };
        let mut st = State::new(d, d);
        vanilla::chunked(&cfg, &pre, 64, &mut st, &mut o, &mut lse);
        let t_lin = time(&mut |i| {
            st.update(cfg.map, &k[i * d..(i + 1) * d], &v[i * d..(i + 1) * d]);
            st.read(&cfg, &q[i * d..(i + 1) * d], true, &mut row);
        });
        // Gated DeltaNet (scalar gate) and KDA (channel gates): delta::step + delta::read.
        let mut delta_time = |g: &[f32]| {
            let gs: Vec<f32> = (0..s).flat_map(|_| g.iter().copied()).collect();
            let beta = vec![0.5f32; s];
            let dcfg = delta::Config { scale: 0.1, l2norm: true, q_offset: 0 };
            let pre = delta::Head {
                q: &q[..s * d],
                k: &k[..s * d],
                v: &v[..s * d],
                g: &gs,
                beta: &beta,
                dk: d,
                dv: d,
            };
            let mut st = vec![0.0f32; d * d];
            delta::chunked(&dcfg, &pre, 64, &mut st, &mut o, &mut lse);
            let mut scratch = vec![0.0f32; 2 * d];
            time(&mut |i| {
                delta::step(
                    true,
                    &mut st,
                    &k[i * d..(i + 1) * d],
                    &v[i * d..(i + 1) * d],
                    g,
                    0.5,
                    &mut scratch,
                );
                delta::read(&dcfg, &st, &q[i * d..(i + 1) * d], &mut row, &mut scratch);
            })
        };
        let t_gdn = delta_time(&[0.99f32.ln()]);
        let t_kda = delta_time(&kda_gates);
        // DiagAttention: the decode state is the current block (≤ 64 keys); one step reads it.
        let dcfg =
            diag::Config { kernel: diag::Kernel::Softmax, block: 64, scale: 0.1, q_offset: 0 };
        let mut o1 = vec![0.0f32; d];
        let mut l1 = vec![0.0f32; 1];
        let t_diag = time(&mut |i| {
            let b0 = i / 64 * 64;
            let head = diag::Head {
                q: &q[i * d..(i + 1) * d],
                k: &k[b0 * d..(i + 1) * d],
                v: &v[b0 * d..(i + 1) * d],
                dk: d,
                dv: d,
            };
            let c = diag::Config { q_offset: (i - b0) as i64, ..dcfg };
            diag::recurrent(&c, &head, &mut o1, &mut l1);
        });
        println!("| {s} | {t_lin:.2} | {t_gdn:.2} | {t_kda:.2} | {t_diag:.2} |");
    }
}

#[test]
fn nala_feature_states_forms_agree() {
    // NaLaFormer's fast forms: 2D-wide features into the vanilla engine (identity map, scale 1,
    // ε per key). Outputs against the f64 reference; final states (Σ φ_k vᵀ, Σ φ_k, n) between
    // the recurrent and chunked forms.
    use attn::linear::nala::{self, key_features, query_features};
    for &(s, d) in &[(1, 16), (63, 16), (64, 16), (65, 16), (1000, 16)] {
        let (q, k, v) = (rand(s * d, 21), rand(s * d, 22), rand(s * d, 23));
        let (mut fq, mut fk) = (vec![0.0f32; s * 2 * d], vec![0.0f32; s * 2 * d]);
        for i in 0..s {
            query_features(&q[i * d..(i + 1) * d], 3.0, &mut fq[i * 2 * d..(i + 1) * 2 * d]);
            key_features(&k[i * d..(i + 1) * d], &mut fk[i * 2 * d..(i + 1) * 2 * d]);
        }
        let ncfg = nala::Config { lambda: 3.0, eps: 1e-6, causal: true, q_offset: 0 };
        let (mut o0, mut l0) = (vec![0.0; s * d], vec![0.0; s]);
        nala::reference(&ncfg, &Head { q: &q, k: &k, v: &v, dk: d, dv: d }, &mut o0, &mut l0);
        let cfg = Config {
            map: FeatureMap::Identity,
            causal: true,
            norm: true,
            scale: 1.0,
            q_offset: 0,
            eps: 1e-6,
        };
        let head = Head { q: &fq, k: &fk, v: &v, dk: 2 * d, dv: d };
        let mut st_r = State::new(2 * d, d);
        let (mut o1, mut l1) = (vec![f32::NAN; s * d], vec![f32::NAN; s]);
        vanilla::recurrent(&cfg, &head, &mut st_r, &mut o1, &mut l1);
        assert!(rel(&o1, &o0) < 1e-5 && rel(&l1, &l0) < 1e-5, "recurrent S={s}");
        for &c in CHUNKS {
            let mut st_c = State::new(2 * d, d);
            let (mut o2, mut l2) = (vec![f32::NAN; s * d], vec![f32::NAN; s]);
            vanilla::chunked(&cfg, &head, c, &mut st_c, &mut o2, &mut l2);
            assert!(rel(&o2, &o0) < 1e-5 && rel(&l2, &l0) < 1e-5, "chunked C={c} S={s}");
            assert!(rel(&st_c.s, &st_r.s) < 1e-5 && rel(&st_c.z, &st_r.z) < 1e-5, "C={c} S={s}");
            assert_eq!((st_c.n, st_r.n), (s as u64, s as u64));
        }
    }
}
