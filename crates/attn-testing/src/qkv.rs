//! Seeded Gaussian Q/K/V for method tests: owned `[B, H, S, D]` arrays, a call through
//! [`attn::attend`] with a forced method spec, and the f64 exact attention of the same inputs.

use crate::rand::Rng;
use attn::methods::sdpa::reference as sdpa_ref;
use attn::{attend, Params, Prefs, Problem, TensorRef};

/// Owned queries `[B, H, S_q, D]`, keys and values `[B, H_kv, S_kv, D]` (row-major f32).
#[derive(Debug, Clone)]
pub struct Qkv {
    /// Shape of `q`.
    pub shape_q: [usize; 4],
    /// Shape of `k` and `v`.
    pub shape_kv: [usize; 4],
    /// Queries.
    pub q: Vec<f32>,
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
}

impl Qkv {
    /// Entries `σ·N(0, 1)` from [`Rng`] seeded with `seed`, drawn q, then k, then v.
    pub fn gaussian(
        seed: u64,
        [b, h, hkv]: [usize; 3],
        [sq, skv]: [usize; 2],
        d: usize,
        sigma: f64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let mut gen = |n: usize| (0..n).map(|_| (sigma * rng.normal()) as f32).collect::<Vec<_>>();
        Qkv {
            shape_q: [b, h, sq, d],
            shape_kv: [b, hkv, skv, d],
            q: gen(b * h * sq * d),
            k: gen(b * hkv * skv * d),
            v: gen(b * hkv * skv * d),
        }
    }

    /// Views of the three arrays.
    ///
    /// # Panics
    /// If the stored shapes do not match the arrays (a broken test fixture).
    pub fn tensors(&self) -> attn::Inputs<'_> {
        attn::Inputs {
            q: TensorRef::new(&self.q[..], self.shape_q).expect("q shape"),
            k: TensorRef::new(&self.k[..], self.shape_kv).expect("k shape"),
            v: TensorRef::new(&self.v[..], self.shape_kv).expect("v shape"),
        }
    }

    /// Attention forced to the method `spec` (`name` or `name:key=value,...`).
    ///
    /// # Errors
    /// Whatever [`attn::attend`] reports.
    pub fn run(&self, spec: &str, params: &Params) -> attn::Result<attn::Output> {
        let x = self.tensors();
        let prefs = Prefs { method: Some(spec.into()), ..Prefs::default() };
        attend(x.q, x.k, x.v, params, &prefs)
    }

    /// Exact attention in f64 (`sdpa-reference`'s oracle): `(o, lse)`.
    ///
    /// # Panics
    /// If the problem or the parameters are invalid (a broken test fixture).
    pub fn exact(&self, params: &Params) -> (Vec<f64>, Vec<f64>) {
        let x = self.tensors();
        let p = Problem::from_tensors(&x.q, &x.k, &x.v).expect("valid problem");
        let r = params.resolve(&p).expect("valid parameters");
        sdpa_ref::forward_f64(&p, &x, &r)
    }
}
