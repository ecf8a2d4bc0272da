//! Every bad input gives its typed error, never a panic; strided views are accepted as they are.

use attn::dispatch::Registry;
use attn::methods::sdpa::decode::Decode;
use attn::{
    attend, merge_lse, prepare, prepare_in, DenseMask, Error, Inputs, Mask, Method, OutputMut, Par,
    Params, Prefs, Reason, TensorRef,
};
use attn_testing::poison::run_poisoned;
use attn_testing::rand::{Layout, Rng, Tensor};

fn buf(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.1).sin()).collect()
}

/// `attend` on contiguous f32 inputs of the given shapes.
fn run(
    qs: [usize; 4],
    ks: [usize; 4],
    vs: [usize; 4],
    params: &Params,
    prefs: &Prefs,
) -> Result<attn::Output, Error> {
    let (q, k, v) = (buf(qs.iter().product()), buf(ks.iter().product()), buf(vs.iter().product()));
    attend(
        TensorRef::new(&q[..], qs)?,
        TensorRef::new(&k[..], ks)?,
        TensorRef::new(&v[..], vs)?,
        params,
        prefs,
    )
}

const S: [usize; 4] = [1, 2, 4, 8];

fn shape_err(r: Result<impl std::fmt::Debug, Error>) {
    match r {
        Err(Error::Shape { op, detail }) => assert!(!op.is_empty() && !detail.is_empty()),
        other => panic!("want a Shape error, got {other:?}"),
    }
}

#[test]
fn shape_mismatches() {
    let p = Params::default();
    let d = Prefs::default();
    shape_err(run([2, 2, 4, 8], S, S, &p, &d)); // batch of q
    shape_err(run(S, S, [2, 2, 4, 8], &p, &d)); // batch of v
    shape_err(run(S, [1, 2, 4, 16], S, &p, &d)); // D of k
    shape_err(run(S, S, [1, 2, 5, 8], &p, &d)); // lengths of k and v
    shape_err(run(S, S, [1, 1, 4, 8], &p, &d)); // heads of k and v
    let e = run(S, S, [1, 2, 5, 8], &p, &d).unwrap_err();
    assert!(e.to_string().contains("attend"), "{e}");
    // dtypes must agree
    let x = buf(64);
    let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    let (t32, t16) = (TensorRef::new(&x[..], S).unwrap(), TensorRef::new(&h[..], S).unwrap());
    shape_err(attend(t32, t16, t32, &p, &d));
}

#[test]
fn tensor_views_with_too_short_or_overflowing_buffers() {
    let short = [0.0f32; 10];
    shape_err(TensorRef::new(&short[..], [1, 1, 3, 4]));
    shape_err(TensorRef::new(&[0.0f32; 13][..], [1, 1, 3, 4])); // too long for contiguous
    shape_err(TensorRef::from_bshd(&short[..], [1, 3, 1, 4]));
    shape_err(TensorRef::with_strides(&short[..], [1, 1, 3, 4], [12, 12, 1, 3]));
    shape_err(TensorRef::with_strides(&short[..], [1, 1, 2, 2], [0, 0, usize::MAX / 2, 1]));
    shape_err(TensorRef::new(&short[..], [usize::MAX / 2, 4, 1, 1]));
    shape_err(TensorRef::from_bshd(&short[..], [usize::MAX / 2, 2, 2, 2]));
    // A strided view that fits is accepted without copying.
    assert!(TensorRef::with_strides(&short[..], [1, 1, 3, 3], [0, 0, 3, 1]).is_ok());
}

#[test]
fn heads_must_group() {
    let e = run([1, 6, 4, 8], [1, 4, 4, 8], [1, 4, 4, 8], &Params::default(), &Prefs::default())
        .unwrap_err();
    assert_eq!(e, Error::HeadGroups { op: "attend", h: 6, h_kv: 4 });
    assert!(e.to_string().contains("not a multiple"));
}

#[test]
fn empty_dimensions() {
    for (qs, ks, vs, dim) in [
        ([0, 2, 4, 8], [0, 2, 4, 8], [0, 2, 4, 8], "B"),
        ([1, 0, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8], "H"),
        ([1, 2, 0, 8], [1, 2, 4, 8], [1, 2, 4, 8], "S_q"),
        ([1, 2, 4, 0], [1, 2, 4, 0], [1, 2, 4, 8], "D"),
        ([1, 2, 4, 8], [1, 0, 4, 8], [1, 0, 4, 8], "H_kv"),
        ([1, 2, 4, 8], [1, 2, 0, 8], [1, 2, 0, 8], "S_kv"),
        ([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4, 0], "D_v"),
    ] {
        let e = run(qs, ks, vs, &Params::default(), &Prefs::default()).unwrap_err();
        assert_eq!(e, Error::Empty { op: "attend", dim }, "{qs:?} {ks:?} {vs:?}");
    }
}

#[test]
fn non_finite_inputs_are_found_when_checking() {
    let check = Prefs { check_finite: true, ..Prefs::default() };
    fn t(x: &[f32]) -> TensorRef<'_> {
        TensorRef::new(x, S).unwrap()
    }
    let (mut q, k, mut v) = (buf(64), buf(64), buf(64));
    q[9] = f32::NAN;
    v[17] = f32::INFINITY;
    let e = attend(t(&q), t(&k), t(&v), &Params::default(), &check).unwrap_err();
    assert!(matches!(e, Error::NonFinite { tensor: "q", index: [0, 0, 1, 1], .. }), "{e:?}");
    let q = buf(64);
    let e = attend(t(&q), t(&k), t(&v), &Params::default(), &check).unwrap_err();
    match e {
        Error::NonFinite { tensor: "v", index: [0, 0, 2, 1], value, .. } => {
            assert_eq!(value, f32::INFINITY)
        }
        other => panic!("{other:?}"),
    }
    // Without the check the call runs.
    assert!(attend(t(&q), t(&k), t(&v), &Params::default(), &Prefs::default()).is_ok());
    // The index is in view coordinates [b, h, s, d], whatever the layout: element
    // [b=1, h=2, s=3, d=4] of a [B, S, H, D] buffer of shape [2, 5, 3, 6].
    let mut bshd = buf(2 * 5 * 3 * 6);
    bshd[((5 + 3) * 3 + 2) * 6 + 4] = f32::NEG_INFINITY;
    let kv = buf(2 * 5 * 3 * 6);
    fn view(x: &[f32]) -> TensorRef<'_> {
        TensorRef::from_bshd(x, [2, 5, 3, 6]).unwrap()
    }
    let e = attend(view(&kv), view(&bshd), view(&kv), &Params::default(), &check).unwrap_err();
    assert!(matches!(e, Error::NonFinite { tensor: "k", index: [1, 2, 3, 4], .. }), "{e:?}");
}

#[test]
fn memory_budget() {
    let tiny = Prefs { memory_budget: Some(1024), ..Prefs::default() };
    for m in ["sdpa-flash", "sdpa-reference"] {
        let prefs = Prefs { method: Some(m.into()), ..tiny.clone() };
        let s = [1, 2, 64, 8];
        match run(s, s, s, &Params::default(), &prefs).unwrap_err() {
            Error::MemoryBudget { op, needed, budget } => {
                assert!(needed > budget && budget == 1024 && op == m, "{op} {needed} {budget}")
            }
            other => panic!("{m}: {other:?}"),
        }
    }
    // A budget that fits runs.
    let roomy = Prefs { memory_budget: Some(64 << 20), ..Prefs::default() };
    assert!(run(S, S, S, &Params::default(), &roomy).is_ok());
}

#[test]
fn method_selection_errors() {
    let unknown = Prefs { method: Some("sdpa-fast".into()), ..Prefs::default() };
    let e = run(S, S, S, &Params::default(), &unknown).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownMethod { name, known }
            if name == "sdpa-fast" && known.iter().any(|k| k == "sdpa-flash")),
        "{e:?}"
    );
    // Forcing sdpa-decode on a long S_q over few keys: rejected with both reasons, no fallback.
    let decode = Prefs { method: Some("sdpa-decode".into()), ..Prefs::default() };
    let s = [1, 2, 64, 8];
    let e = run(s, s, s, &Params::default(), &decode).unwrap_err();
    match &e {
        Error::Unsupported { method, reasons } => {
            assert_eq!(method, "sdpa-decode");
            assert!(reasons.contains(&Reason::QueryRows { rows: 64, max: 16 }), "{reasons:?}");
            assert!(reasons.contains(&Reason::FewKeys { s_kv: 64, min: 256 }), "{reasons:?}");
            assert!(e.to_string().contains("not a decode shape"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A registry where nothing accepts the problem lists every rejection.
    static ONLY_DECODE: [&dyn Method; 1] = [&Decode];
    let x = buf(2 * 64 * 8);
    let t = TensorRef::new(&x[..], s).unwrap();
    let e = prepare_in(
        Registry::new(&ONLY_DECODE),
        &Inputs { q: t, k: t, v: t },
        &Params::default(),
        &Prefs::default(),
    )
    .unwrap_err();
    match &e {
        Error::NoMethod { rejected } => {
            assert_eq!(rejected.len(), 1);
            assert_eq!(rejected[0].0, "sdpa-decode");
            assert_eq!(rejected[0].1.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("sdpa-decode"), "{e}");
}

#[test]
fn bad_parameters() {
    for (params, name) in [
        (Params { softcap: Some(0.0), ..Params::default() }, "softcap"),
        (Params { softcap: Some(-1.0), ..Params::default() }, "softcap"),
        (Params { softcap: Some(f32::NAN), ..Params::default() }, "softcap"),
        (Params { softcap: Some(f32::INFINITY), ..Params::default() }, "softcap"),
        (Params { scale: Some(f32::NAN), ..Params::default() }, "scale"),
        (Params { scale: Some(f32::INFINITY), ..Params::default() }, "scale"),
        (Params { alibi_slopes: Some(vec![0.5]), ..Params::default() }, "alibi_slopes"),
        (Params { alibi_slopes: Some(vec![0.5; 3]), ..Params::default() }, "alibi_slopes"),
        (Params { alibi_slopes: Some(vec![0.5, f32::NAN]), ..Params::default() }, "alibi_slopes"),
    ] {
        let e = run(S, S, S, &params, &Prefs::default()).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { name: n, .. } if n == name), "{name}: {e:?}");
        assert!(e.to_string().contains(name), "{e}");
    }
}

/// `Params::resolve` documents "[`Error::InvalidParam`] for a non-finite or non-positive scale"
/// (and `Error::InvalidParam` lists "negative scale"), so 0 and negative scales are errors.
#[test]
fn non_positive_scales_are_rejected_as_documented() {
    for scale in [0.0f32, -0.0, -0.125] {
        let params = Params { scale: Some(scale), ..Params::default() };
        let r = run(S, S, S, &params, &Prefs::default());
        assert!(
            matches!(r, Err(Error::InvalidParam { name: "scale", .. })),
            "scale {scale}: {:?}",
            r.map(|o| o.lse[0])
        );
    }
}

/// Any `q_offset` is a valid `i64`: extreme ones must give a result (every row fully masked or
/// fully visible, as the formulas say) or a typed error — never an arithmetic-overflow panic.
#[test]
fn extreme_query_offsets_do_not_panic() {
    let masks = [
        Mask::Causal,
        Mask::sliding_window(3),
        Mask::Window { left: Some(2), right: Some(2) },
        Mask::PrefixLm { prefix: 2 },
    ];
    let mut failures = Vec::new();
    for off in [i64::MAX, i64::MAX - 2, i64::MIN, i64::MIN + 1] {
        for mask in &masks {
            for m in ["sdpa-flash", "sdpa-reference"] {
                let params =
                    Params { q_offset: Some(off), ..Params::default().with_mask(mask.clone()) };
                let prefs = Prefs { method: Some(m.into()), ..Prefs::default() };
                let r = std::panic::catch_unwind(|| run(S, S, S, &params, &prefs));
                match r {
                    Ok(Ok(out)) if out.o.iter().all(|x| x.is_finite()) => {}
                    Ok(Err(Error::InvalidParam { name: "q_offset", .. })) => {}
                    Ok(other) => failures.push(format!("{m} {mask:?} q_offset {off}: {other:?}")),
                    Err(_) => failures.push(format!("{m} {mask:?} q_offset {off}: panicked")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn bad_masks() {
    let s = [2, 2, 4, 8];
    let bad = [
        Mask::KeyPadding { lengths: vec![4] },
        Mask::KeyPadding { lengths: vec![4, 4, 4] },
        Mask::KeyPadding { lengths: vec![4, 5] },
        Mask::BlockDiagonal { q_lens: vec![2, 1], kv_lens: vec![2, 2], causal: false },
        Mask::BlockDiagonal { q_lens: vec![4], kv_lens: vec![2, 2], causal: true },
        Mask::BlockDiagonal { q_lens: vec![], kv_lens: vec![], causal: false },
        Mask::BlockDiagonal { q_lens: vec![2, 2], kv_lens: vec![4, 1], causal: false },
        Mask::Dense(DenseMask::new(vec![true; 12], [1, 1, 3, 4]).unwrap()),
        Mask::Dense(DenseMask::new(vec![true; 3 * 16], [3, 1, 4, 4]).unwrap()),
        Mask::Dense(DenseMask::new(vec![true; 3 * 16], [1, 3, 4, 4]).unwrap()),
        Mask::And(vec![Mask::Causal, Mask::KeyPadding { lengths: vec![9, 9] }]),
    ];
    for m in bad {
        let e =
            run(s, s, s, &Params::default().with_mask(m.clone()), &Prefs::default()).unwrap_err();
        assert!(matches!(e, Error::Mask { .. }), "{m:?}: {e:?}");
        assert!(e.to_string().contains("invalid mask"), "{e}");
    }
    assert!(matches!(DenseMask::new(vec![true; 5], [1, 1, 2, 2]), Err(Error::Mask { .. })));
}

#[test]
fn prepared_run_checks_its_output_buffers() {
    let x = buf(64);
    let t = TensorRef::new(&x[..], S).unwrap();
    let inputs = Inputs { q: t, k: t, v: t };
    let p = prepare(&inputs, &Params::default(), &Prefs::default()).unwrap();
    let (mut o, mut lse) = (vec![0.0; 63], vec![0.0; 8]);
    shape_err(p.run(&inputs, Par::Seq, OutputMut { o: &mut o, lse: &mut lse }));
    let (mut o, mut lse) = (vec![0.0; 64], vec![0.0; 9]);
    shape_err(p.run(&inputs, Par::Seq, OutputMut { o: &mut o, lse: &mut lse }));
}

/// `Prepared::run` takes the inputs again; inputs that are not the ones the call was prepared for
/// must be refused with a typed error instead of being read with the prepared shape (which
/// panics on an out-of-range index or silently computes on part of the data).
#[test]
fn prepared_run_refuses_inputs_of_another_shape() {
    let (x, y, z) = (buf(64), buf(32), buf(128));
    let t = TensorRef::new(&x[..], S).unwrap();
    let fewer_keys = TensorRef::new(&y[..], [1, 2, 2, 8]).unwrap();
    let wider = TensorRef::new(&z[..], [1, 2, 4, 16]).unwrap();
    let mut failures = Vec::new();
    for m in ["sdpa-flash", "sdpa-reference"] {
        let prefs = Prefs { method: Some(m.into()), ..Prefs::default() };
        let p = prepare(&Inputs { q: t, k: t, v: t }, &Params::default(), &prefs).unwrap();
        for (label, other) in [
            ("fewer keys", Inputs { q: t, k: fewer_keys, v: fewer_keys }),
            ("wider heads", Inputs { q: wider, k: wider, v: wider }),
        ] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (mut o, mut lse) = (vec![0.0; 64], vec![0.0; 8]);
                p.run(&other, Par::Seq, OutputMut { o: &mut o, lse: &mut lse })
            }));
            match r {
                Ok(Err(Error::Shape { .. })) => {}
                Ok(other) => failures.push(format!("{m} {label}: {other:?}")),
                Err(_) => failures.push(format!("{m} {label}: panicked")),
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn merge_with_mismatched_lengths_is_an_error() {
    shape_err(merge_lse(&[1.0, 2.0], &[0.0], &[1.0], &[0.0]));
    shape_err(merge_lse(&[1.0, 2.0], &[0.0, 1.0], &[1.0, 2.0], &[0.0]));
    shape_err(merge_lse(&[], &[], &[], &[]));
}

/// Strided views (a `[B, S, H, D]` buffer, padded rows, a stride along D) give bitwise the same
/// result as the contiguous tensor: kernels read through the view, and the arithmetic does not
/// depend on where the elements sit.
#[test]
fn non_contiguous_inputs_equal_contiguous_ones() {
    let mut rng = Rng::new(3);
    for (dims, params) in [
        ([2, 6, 3, 70, 70, 32, 48], Params::causal()),
        ([1, 8, 2, 1, 600, 64, 64], Params::default()),
    ] {
        let [b, h, hk, sq, sk, d, dv] = dims;
        let q = Tensor::random(&mut rng, attn::DType::F32, [b, h, sq, d], Layout::Bhsd, 1.2);
        let k = Tensor::random(&mut rng, attn::DType::F32, [b, hk, sk, d], Layout::Bhsd, 1.2);
        let v = Tensor::random(&mut rng, attn::DType::F32, [b, hk, sk, dv], Layout::Bhsd, -1.0);
        for m in ["sdpa-flash", "sdpa-decode", "sdpa-reference"] {
            let prefs = Prefs { method: Some(m.into()), ..Prefs::default() };
            let inputs = Inputs { q: q.view(), k: k.view(), v: v.view() };
            let Ok(base) = run_poisoned(&inputs, &params, &prefs) else {
                assert_eq!(m, "sdpa-decode", "only decode rejects the prefill shape");
                continue;
            };
            for layout in [Layout::Bshd, Layout::Padded, Layout::StridedD] {
                let (q2, k2, v2) = (q.relayout(layout), k.relayout(layout), v.relayout(layout));
                let inputs = Inputs { q: q2.view(), k: k2.view(), v: v2.view() };
                let got = run_poisoned(&inputs, &params, &prefs).unwrap();
                assert!(
                    got.o.iter().zip(&base.o).all(|(a, c)| a.to_bits() == c.to_bits())
                        && got.lse.iter().zip(&base.lse).all(|(a, c)| a.to_bits() == c.to_bits()),
                    "{m} {layout:?}: differs from the contiguous result"
                );
            }
        }
    }
}

#[test]
fn every_error_names_its_operation() {
    let errors = [
        run([2, 2, 4, 8], S, S, &Params::default(), &Prefs::default()).unwrap_err(),
        run(S, S, S, &Params { softcap: Some(0.0), ..Params::default() }, &Prefs::default())
            .unwrap_err(),
        run(
            S,
            S,
            S,
            &Params::default().with_mask(Mask::KeyPadding { lengths: vec![] }),
            &Prefs::default(),
        )
        .unwrap_err(),
        run(S, S, S, &Params::default(), &Prefs { memory_budget: Some(1), ..Prefs::default() })
            .unwrap_err(),
    ];
    for (e, op) in errors.iter().zip(["attend", "Params::resolve", "Mask::validate", "sdpa-"]) {
        let s = e.to_string();
        assert!(s.starts_with(op), "{s:?} should start with {op:?}");
    }
}

#[test]
fn method_specs_give_typed_errors() {
    let reg = attn::registry();
    assert_eq!(reg.build("sdpa-flash").unwrap().name(), "sdpa-flash");
    assert_eq!(reg.build(" sdpa-flash: ").unwrap().spec(), "sdpa-flash");
    match reg.build("sdpa-flash:window=3") {
        Err(Error::UnknownParam { method, key, known }) => {
            assert_eq!((method.as_str(), key.as_str()), ("sdpa-flash", "window"));
            assert!(known.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(reg.build("sdpa-flash:window"), Err(Error::BadParam { .. })));
    assert!(matches!(reg.build("no-such:x=1"), Err(Error::UnknownMethod { .. })));
    // Through attend, a spec in Prefs::method is built the same way.
    let x = [0.5f32; 2 * 8];
    let t = TensorRef::new(&x[..], [1, 1, 2, 8]).unwrap();
    let prefs = Prefs { method: Some("sdpa-flash:x=1".into()), ..Prefs::default() };
    let e = attn::attend(t, t, t, &Params::default(), &prefs).unwrap_err();
    assert!(matches!(e, Error::UnknownParam { .. }), "{e}");
}

#[test]
fn exact_methods_report_the_allowed_pairs() {
    let x = [0.5f32; 2 * 5 * 8];
    let q = TensorRef::new(&x[..2 * 3 * 8], [1, 2, 3, 8]).unwrap();
    let k = TensorRef::new(&x[..2 * 5 * 8], [1, 2, 5, 8]).unwrap();
    // Causal, S_q = 3 over S_kv = 5 (bottom-right): rows see 3, 4, 5 keys; two heads.
    for m in ["sdpa-flash", "sdpa-reference"] {
        let prefs = Prefs { method: Some(m.into()), ..Prefs::default() };
        let out = attn::attend(q, k, k, &Params::causal(), &prefs).unwrap();
        assert_eq!(out.stats.computed_pairs, 2 * (3 + 4 + 5), "{m}");
    }
}
