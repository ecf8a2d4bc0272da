//! The sparse executors (`primitives::sparse`): the tiled kernel against its f64 reference on
//! random block/column lists, both against exact attention when the list covers every key, the
//! causal guarantee (a listed future key is never used), fully masked rows, the pair count, and
//! every SIMD level and thread count.

use attn::methods::sdpa::reference as sdpa_ref;
use attn::primitives::simd::{with_level, Level};
use attn::primitives::sparse::{kernel, reference, BlockList, HeadList};
use attn::{Inputs, OutputMut, Par, Problem, Resolved};
use attn_testing::cases::{case, MaskSpec};
use attn_testing::close::{first_bit_difference, Report};
use attn_testing::rand::Rng;
use attn_testing::{Case, Layout};

fn setup(c: &Case) -> (attn_testing::cases::CaseData, Problem, Resolved) {
    let data = c.data();
    let inputs = data.inputs();
    let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v).unwrap();
    let params = data.params.resolve(&p).unwrap();
    (data, p, params)
}

/// Runs the kernel into NaN-poisoned buffers.
fn run_kernel(
    level: Level,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    pat: &BlockList,
    par: Par,
) -> (Vec<f32>, Vec<f32>, u64) {
    let mut o = vec![f32::NAN; p.out_len()];
    let mut lse = vec![f32::NAN; p.lse_len()];
    let pairs = with_level(level, || {
        kernel::forward(p, inputs, params, pat, par, OutputMut { o: &mut o, lse: &mut lse })
    });
    (o, lse, pairs)
}

/// A random pattern: per query block a few key blocks at arbitrary starts and columns between
/// them, some listed keys in the future of the block.
fn random_pattern(rng: &mut Rng, p: &Problem, bm: usize, bn: usize) -> BlockList {
    let heads = (0..p.b * p.h)
        .map(|_| {
            let mut hl = HeadList::new();
            for _ in 0..p.s_q.div_ceil(bm) {
                let (mut blocks, mut cols) = (Vec::new(), Vec::new());
                let mut j = rng.below(bn + 1);
                while j < p.s_kv {
                    if rng.bernoulli(0.3) {
                        blocks.push(j as u32);
                        j += bn + rng.below(8);
                    } else {
                        if rng.bernoulli(0.5) {
                            cols.push(j as u32);
                        }
                        j += 1 + rng.below(5);
                    }
                }
                hl.push(&blocks, &cols);
            }
            hl
        })
        .collect();
    BlockList::new(bm, bn, p.s_q, p.s_kv, heads).unwrap()
}

/// Every key, as blocks (`as_blocks`) or as columns.
fn full_pattern(p: &Problem, bm: usize, bn: usize, as_blocks: bool) -> BlockList {
    let heads = (0..p.b * p.h)
        .map(|_| {
            let mut hl = HeadList::new();
            for _ in 0..p.s_q.div_ceil(bm) {
                if as_blocks {
                    hl.push_iter((0..p.s_kv).step_by(bn).map(|j| j as u32), []);
                } else {
                    hl.push_iter([], (0..p.s_kv as u32).collect::<Vec<_>>());
                }
            }
            hl
        })
        .collect();
    BlockList::new(bm, bn, p.s_q, p.s_kv, heads).unwrap()
}

fn cases() -> Vec<Case> {
    vec![
        case(1, [2, 2], [100, 100], 64).mask(MaskSpec::Causal).seed(1),
        case(2, [4, 2], [65, 130], 80).mask(MaskSpec::Causal).seed(2),
        case(1, [2, 1], [70, 70], 32).dv(16).mask(MaskSpec::None).seed(3),
        // Rows before key 0 see nothing (fully masked), q_offset < 0.
        case(1, [1, 1], [90, 60], 16).mask(MaskSpec::Causal).offset(-20).seed(4),
        case(1, [3, 1], [64, 200], 128).mask(MaskSpec::SlidingWindow(50)).seed(5),
        case(1, [2, 2], [50, 50], 64).mask(MaskSpec::Causal).layout(Layout::StridedD).seed(6),
    ]
}

#[test]
fn kernel_equals_reference_on_random_lists_at_every_level_and_thread_count() {
    for (ci, c) in cases().iter().enumerate() {
        let (data, p, params) = setup(c);
        let inputs = data.inputs();
        for (bm, bn) in [(64, 64), (16, 20), (7, 100), (1, 24)] {
            let mut rng = Rng::new(ci as u64 * 31 + bm as u64);
            let pat = random_pattern(&mut rng, &p, bm, bn);
            let (want_o, want_lse) = reference::forward_f64(&p, &inputs, &params, &pat);
            let want_pairs = pat.scored_pairs(&params);
            for level in Level::available() {
                let mut first: Option<Vec<f32>> = None;
                for par in [Par::Seq, Par::Rayon(2), Par::Rayon(3)] {
                    let ctx = format!("{} bm {bm} bn {bn} {level:?} {par:?}", c.name());
                    let (o, lse, pairs) = run_kernel(level, &p, &inputs, &params, &pat, par);
                    assert_eq!(pairs, want_pairs, "{ctx}: pairs");
                    let ro = Report::compare(&o, &want_o, [p.b, p.h, p.s_q, p.d_v]);
                    let rl = Report::compare(&lse, &want_lse, [p.b, p.h, p.s_q, 1]);
                    assert!(ro.max_abs < 2e-5, "{ctx}: o {ro}");
                    assert!(rl.max_abs < 2e-5, "{ctx}: lse {rl}");
                    match &first {
                        None => first = Some(o),
                        Some(o0) => {
                            assert_eq!(first_bit_difference(&o, o0), None, "{ctx}: thread count")
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn full_lists_equal_exact_attention() {
    for c in cases() {
        let (data, p, params) = setup(&c);
        let inputs = data.inputs();
        let (want_o, want_lse) = sdpa_ref::forward_f64(&p, &inputs, &params);
        for (bm, bn, as_blocks) in [(64, 64, true), (10, 37, true), (32, 1, false), (1, 16, true)] {
            let pat = full_pattern(&p, bm, bn, as_blocks);
            let (ro64, rl64) = reference::forward_f64(&p, &inputs, &params, &pat);
            let (o, lse, _) = run_kernel(Level::current(), &p, &inputs, &params, &pat, Par::Seq);
            let ctx = format!("{} bm {bm} bn {bn}", c.name());
            for (name, got_o, got_lse) in [
                (
                    "reference",
                    ro64.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                    rl64.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                ),
                ("kernel", o, lse),
            ] {
                let ro = Report::compare(&got_o, &want_o, [p.b, p.h, p.s_q, p.d_v]);
                let rl = Report::compare(&got_lse, &want_lse, [p.b, p.h, p.s_q, 1]);
                assert!(ro.max_abs < 1e-5, "{ctx} {name}: o {ro}");
                assert!(
                    rl.max_abs
                        < 1e-5
                            * want_lse
                                .iter()
                                .filter(|x| x.is_finite())
                                .fold(1.0f64, |a, x| a.max(x.abs())),
                    "{ctx} {name}: lse {rl}"
                );
            }
        }
    }
}

#[test]
fn listed_future_keys_are_never_used_and_masked_rows_are_empty() {
    // Every key listed; causal with q_offset = −20: rows 0..20 see no key at all.
    let c = case(1, [1, 1], [90, 60], 16).mask(MaskSpec::Causal).offset(-20).seed(9);
    let (mut data, p, params) = setup(&c);
    let pat = full_pattern(&p, 16, 16, true);
    let (o, lse, _) = run_kernel(Level::current(), &p, &data.inputs(), &params, &pat, Par::Seq);
    for i in 0..p.s_q {
        if i < 20 {
            assert_eq!(lse[i], f32::NEG_INFINITY, "row {i}");
            assert!(o[i * p.d_v..(i + 1) * p.d_v].iter().all(|&x| x == 0.0), "row {i}");
        } else {
            assert!(lse[i].is_finite(), "row {i}");
        }
    }
    // Poison the future of row 50 (position 30): keys 31.. get NaN values and keys.
    for j in 31..p.s_kv {
        for d in 0..p.d {
            data.k.set(0, 0, j, d, f32::NAN);
            data.v.set(0, 0, j, d, f32::NAN);
        }
    }
    let (o2, lse2, _) = run_kernel(Level::current(), &p, &data.inputs(), &params, &pat, Par::Seq);
    for i in 0..=50 {
        let r = i * p.d_v..(i + 1) * p.d_v;
        assert_eq!(first_bit_difference(&o2[r.clone()], &o[r]), None, "row {i}");
        assert_eq!(lse2[i].to_bits(), lse[i].to_bits(), "row {i}");
    }
}

#[test]
fn unlisted_keys_never_leak() {
    // Keys outside the lists hold NaN: the result must stay finite and equal the reference.
    let c = case(1, [2, 2], [64, 64], 32).mask(MaskSpec::None).seed(11);
    let (mut data, p, params) = setup(&c);
    let mut hl = HeadList::new();
    hl.push(&[10], &[3, 40, 41]); // keys 10..26 and three columns, bn = 16
    let pat = BlockList::new(64, 16, p.s_q, p.s_kv, vec![hl.clone(), hl]).unwrap();
    let listed = |j: usize| (10..26).contains(&j) || [3, 40, 41].contains(&j);
    for h in 0..2 {
        for j in (0..p.s_kv).filter(|&j| !listed(j)) {
            for d in 0..p.d {
                data.k.set(0, h, j, d, f32::NAN);
                data.v.set(0, h, j, d, f32::NAN);
            }
        }
    }
    let inputs = data.inputs();
    let (want, _) = reference::forward_f64(&p, &inputs, &params, &pat);
    for level in Level::available() {
        let (o, _, pairs) = run_kernel(level, &p, &inputs, &params, &pat, Par::Seq);
        assert_eq!(pairs, 2 * 64 * (16 + 3));
        let r = Report::compare(&o, &want, [p.b, p.h, p.s_q, p.d_v]);
        assert!(r.max_abs < 2e-5, "{level:?}: {r}");
    }
}

#[test]
fn columns_shared_by_query_blocks_equal_the_reference() {
    // MInference-like columns: every query block lists a slice of one head-wide column set
    // (read in place from the packed set), some with holes (gathered), more than a chunk long.
    // Keys outside the set hold NaN, so a chunk that reads a neighbour would show.
    let c = case(1, [2, 1], [256, 600], 32).mask(MaskSpec::Causal).offset(344).seed(12);
    let (mut data, p, params) = setup(&c);
    let set: Vec<u32> = (0..p.s_kv as u32).filter(|j| j % 3 != 1).collect();
    for j in (0..p.s_kv).filter(|j| j % 3 == 1) {
        for d in 0..p.d {
            data.k.set(0, 0, j, d, f32::NAN);
            data.v.set(0, 0, j, d, f32::NAN);
        }
    }
    for bm in [16, 64] {
        let mut rng = Rng::new(bm as u64);
        let heads = (0..p.h)
            .map(|_| {
                let mut hl = HeadList::new();
                for _ in 0..p.s_q.div_ceil(bm) {
                    let a = rng.below(set.len() / 2);
                    let z = a + 1 + rng.below(set.len() - a);
                    let mut cols = set[a..z].to_vec();
                    if rng.bernoulli(0.5) && cols.len() > 2 {
                        cols.remove(1 + rng.below(cols.len() - 2));
                    }
                    hl.push(&[], &cols);
                }
                hl
            })
            .collect();
        let pat = BlockList::new(bm, 16, p.s_q, p.s_kv, heads).unwrap();
        let inputs = data.inputs();
        let (want_o, want_lse) = reference::forward_f64(&p, &inputs, &params, &pat);
        for level in Level::available() {
            for par in [Par::Seq, Par::Rayon(2)] {
                let ctx = format!("bm {bm} {level:?} {par:?}");
                let (o, lse, pairs) = run_kernel(level, &p, &inputs, &params, &pat, par);
                assert_eq!(pairs, pat.scored_pairs(&params), "{ctx}: pairs");
                let ro = Report::compare(&o, &want_o, [p.b, p.h, p.s_q, p.d_v]);
                let rl = Report::compare(&lse, &want_lse, [p.b, p.h, p.s_q, 1]);
                assert!(ro.max_abs < 2e-5, "{ctx}: o {ro}");
                assert!(rl.max_abs < 2e-5, "{ctx}: lse {rl}");
            }
        }
    }
}
