//! Every bad input gives its typed error, never a panic.

use attn::{attend, DenseMask, Error, Mask, Params, Prefs, TensorRef};

fn buf(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.1).sin()).collect()
}

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

fn t(x: &[f32]) -> TensorRef<'_> {
    TensorRef::new(x, [1, 2, 4, 8]).unwrap()
}

fn ok() -> Prefs {
    Prefs::default()
}

#[test]
fn shape_mismatches() {
    let p = Params::default();
    assert!(matches!(
        run([2, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8], &p, &ok()),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        run([1, 2, 4, 8], [1, 2, 4, 16], [1, 2, 4, 8], &p, &ok()),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        run([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 5, 8], &p, &ok()),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        run([1, 2, 4, 8], [1, 2, 4, 8], [1, 1, 4, 8], &p, &ok()),
        Err(Error::Shape { .. })
    ));
    let short = [0.0f32; 10];
    assert!(matches!(TensorRef::new(&short[..], [1, 1, 3, 4]), Err(Error::Shape { .. })));
    assert!(matches!(
        TensorRef::with_strides(&short[..], [1, 1, 3, 4], [12, 12, 1, 3]),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn heads_must_group() {
    let e = run([1, 6, 4, 8], [1, 4, 4, 8], [1, 4, 4, 8], &Params::default(), &ok()).unwrap_err();
    assert_eq!(e, Error::HeadGroups { op: "attend", h: 6, h_kv: 4 });
    assert!(e.to_string().contains("not a multiple"));
}

#[test]
fn empty_dimensions() {
    for (qs, ks, dim) in [
        ([1, 2, 0, 8], [1, 2, 4, 8], "S_q"),
        ([1, 2, 4, 8], [1, 2, 0, 8], "S_kv"),
        ([0, 2, 4, 8], [0, 2, 4, 8], "B"),
        ([1, 2, 4, 0], [1, 2, 4, 0], "D"),
    ] {
        let e = run(qs, ks, [ks[0], ks[1], ks[2], 8], &Params::default(), &ok()).unwrap_err();
        assert_eq!(e, Error::Empty { op: "attend", dim }, "{qs:?} {ks:?}");
    }
}

#[test]
fn non_finite_inputs_when_checking() {
    let mut q = buf(2 * 4 * 8);
    q[9] = f32::NAN;
    let k = buf(2 * 4 * 8);
    let mut v = buf(2 * 4 * 8);
    v[17] = f32::INFINITY;
    let check = Prefs { check_finite: true, ..Prefs::default() };
    let e = attend(t(&q), t(&k), t(&v), &Params::default(), &check).unwrap_err();
    assert!(matches!(e, Error::NonFinite { tensor: "q", index: [0, 0, 1, 1], .. }), "{e:?}");
    let q = buf(2 * 4 * 8);
    let e = attend(t(&q), t(&k), t(&v), &Params::default(), &check).unwrap_err();
    assert!(matches!(e, Error::NonFinite { tensor: "v", index: [0, 0, 2, 1], .. }), "{e:?}");
}

#[test]
fn memory_budget() {
    let tiny = Prefs { memory_budget: Some(1024), ..Prefs::default() };
    let e =
        run([1, 2, 64, 8], [1, 2, 64, 8], [1, 2, 64, 8], &Params::default(), &tiny).unwrap_err();
    match e {
        Error::MemoryBudget { needed, budget, .. } => assert!(needed > budget && budget == 1024),
        other => panic!("{other:?}"),
    }
}

#[test]
fn method_selection_errors() {
    let unknown = Prefs { method: Some("sdpa-fast".into()), ..Prefs::default() };
    let e =
        run([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8], &Params::default(), &unknown).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownMethod { known, .. } if known.iter().any(|k| k == "sdpa-flash")),
        "{e:?}"
    );
    let decode = Prefs { method: Some("sdpa-decode".into()), ..Prefs::default() };
    let e =
        run([1, 2, 64, 8], [1, 2, 64, 8], [1, 2, 64, 8], &Params::default(), &decode).unwrap_err();
    match &e {
        Error::Unsupported { method, reasons } => {
            assert_eq!(method, "sdpa-decode");
            assert_eq!(reasons.len(), 2, "{reasons:?}"); // too many query rows, too few keys
            assert!(e.to_string().contains("not a decode shape"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_parameters() {
    let s = [1, 2, 4, 8];
    for (params, name) in [
        (Params { softcap: Some(0.0), ..Params::default() }, "softcap"),
        (Params { softcap: Some(f32::NAN), ..Params::default() }, "softcap"),
        (Params { scale: Some(f32::INFINITY), ..Params::default() }, "scale"),
        (Params { alibi_slopes: Some(vec![0.5]), ..Params::default() }, "alibi_slopes"),
        (Params { alibi_slopes: Some(vec![0.5, f32::NAN]), ..Params::default() }, "alibi_slopes"),
    ] {
        let e = run(s, s, s, &params, &ok()).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { name: n, .. } if n == name), "{name}: {e:?}");
    }
}

#[test]
fn bad_masks() {
    let s = [2, 2, 4, 8];
    let bad = [
        Mask::KeyPadding { lengths: vec![4] },
        Mask::KeyPadding { lengths: vec![4, 5] },
        Mask::BlockDiagonal { q_lens: vec![2, 1], kv_lens: vec![2, 2], causal: false },
        Mask::BlockDiagonal { q_lens: vec![4], kv_lens: vec![2, 2], causal: true },
        Mask::Dense(DenseMask::new(vec![true; 12], [1, 1, 3, 4]).unwrap()),
        Mask::And(vec![Mask::Causal, Mask::KeyPadding { lengths: vec![9, 9] }]),
    ];
    for m in bad {
        let e = run(s, s, s, &Params::default().with_mask(m.clone()), &ok()).unwrap_err();
        assert!(matches!(e, Error::Mask { .. }), "{m:?}: {e:?}");
    }
    assert!(DenseMask::new(vec![true; 5], [1, 1, 2, 2]).is_err());
}

#[test]
fn merge_with_mismatched_lengths_is_an_error() {
    assert!(matches!(
        attn::merge_lse(&[1.0, 2.0], &[0.0], &[1.0], &[0.0]),
        Err(Error::Shape { .. })
    ));
}
