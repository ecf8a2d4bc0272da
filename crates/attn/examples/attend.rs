//! Minimal use of the library: build inputs, call `attend`, read the output and the method chosen.
//!
//! `cargo run --release -p attn --example attend`

use attn::{attend, Mask, Params, Prefs, TensorRef};

fn main() -> Result<(), attn::Error> {
    // Two query heads sharing one key/value head (GQA), 6 queries over 10 keys, D = 8.
    let (b, h, h_kv, s_q, s_kv, d) = (1, 2, 1, 6, 10, 8);
    let q: Vec<f32> = (0..b * h * s_q * d).map(|i| (i as f32 * 0.31).sin()).collect();
    let k: Vec<f32> = (0..b * h_kv * s_kv * d).map(|i| (i as f32 * 0.17).cos()).collect();
    let v: Vec<f32> = (0..b * h_kv * s_kv * d).map(|i| (i as f32 * 0.05).sin()).collect();
    let q = TensorRef::new(&q[..], [b, h, s_q, d])?;
    let k = TensorRef::new(&k[..], [b, h_kv, s_kv, d])?;
    let v = TensorRef::new(&v[..], [b, h_kv, s_kv, d])?;

    // Causal, aligned bottom-right: query row i sits at position i + (S_kv − S_q).
    let params = Params::default().with_mask(Mask::Causal);
    let out = attend(q, k, v, &params, &Prefs::default())?;
    println!("method {} → o {:?}, first row {:?}", out.method, [b, h, s_q, d], &out.o[..d]);
    println!("lse of head 0: {:?}", &out.lse[..s_q]);
    Ok(())
}
