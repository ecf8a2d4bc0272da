use attn::primitives::simd::{with_level, Level};
use attn::*;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn smoke() {
    for &(b, h, hkv, sq, skv, d) in &[
        (1, 1, 1, 1, 1, 32),
        (2, 4, 2, 63, 65, 64),
        (1, 8, 2, 1, 1000, 128),
        (1, 2, 1, 100, 300, 80),
        (1, 2, 2, 200, 200, 64),
    ] {
        let q = data(b * h * sq * d, 1);
        let k = data(b * hkv * skv * d, 2);
        let v = data(b * hkv * skv * d, 3);
        let (qt, kt, vt) = (
            TensorRef::new(&q[..], [b, h, sq, d]).unwrap(),
            TensorRef::new(&k[..], [b, hkv, skv, d]).unwrap(),
            TensorRef::new(&v[..], [b, hkv, skv, d]).unwrap(),
        );
        for mask in [Mask::None, Mask::Causal, Mask::sliding_window(17)] {
            let params = Params::default().with_mask(mask.clone());
            let want = attend(
                qt,
                kt,
                vt,
                &params,
                &Prefs { method: Some("sdpa-reference".into()), ..Default::default() },
            )
            .unwrap();
            for m in ["sdpa-flash", "sdpa-decode"] {
                for level in Level::available() {
                    let got = with_level(level, || {
                        attend(
                            qt,
                            kt,
                            vt,
                            &params,
                            &Prefs { method: Some(m.into()), ..Default::default() },
                        )
                    });
                    let Ok(got) = got else { continue };
                    let err = got
                        .o
                        .iter()
                        .zip(&want.o)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    let lerr = got
                        .lse
                        .iter()
                        .zip(&want.lse)
                        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
                        .fold(0.0f32, f32::max);
                    assert!(
                        err < 1e-5 && lerr < 1e-4,
                        "{m} {level:?} {:?} {mask:?}: err {err} lse {lerr}",
                        (b, h, hkv, sq, skv, d)
                    );
                }
            }
        }
    }
}
