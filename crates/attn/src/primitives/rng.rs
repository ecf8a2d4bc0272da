//! The one random-number source of the randomised methods (spec §0.4.5): a stateless,
//! counter-based generator keyed by `(seed, layer, head, purpose)`.
//!
//! Every draw is a pure function of its key and its index (the counter), so a fast path and its
//! reference, any thread count and any call order obtain the same numbers, and a method can draw
//! element `i` of a stream without drawing the ones before it.
//!
//! # Construction
//! - **Stream**: the four key fields are folded into one 64-bit stream value, each field absorbed
//!   by adding it (plus a distinct odd constant) to the running value and passing the sum through
//!   the SplitMix64 finaliser (`mix64`: xor-shift 30, multiply, xor-shift 27, multiply,
//!   xor-shift 31 with the SplitMix64 constants). Distinct keys give unrelated streams.
//! - **Words**: word `i` of a stream is `mix64(stream + (i + 1)·γ)` with `γ = 0x9E3779B97F4A7C15`
//!   (the golden-ratio increment): exactly the SplitMix64 sequence started at `stream`, but
//!   addressed by counter. SplitMix64 passes BigCrush; its period is 2⁶⁴ per stream.
//! - **Uniform**: the top 53 bits, `((w >> 11) + ½)·2⁻⁵³ ∈ (0, 1)` — never 0, so `ln u` is finite.
//! - **Gaussian** (Box–Muller): normal `2t` and `2t + 1` are `r·cos θ` and `r·sin θ` with
//!   `r = √(−2 ln u₁)`, `θ = 2π u₂` from uniforms `2t` and `2t + 1` of the stream: two independent
//!   standard normals per pair of words.
//!
//! Not cryptographic; meant for random features, hash projections and samples.

/// What a stream is for; part of the key so that two uses inside one method never share numbers.
pub mod purpose {
    /// Performer / FAVOR+ projection rows (the Gaussian blocks before orthogonalisation).
    pub const PERFORMER_PROJECTION: u64 = 1;
    /// Performer: the chi-distributed row norms of orthogonal features.
    pub const PERFORMER_NORMS: u64 = 2;
    /// Angular LSH projections (Reformer).
    pub const LSH_PROJECTION: u64 = 3;
    /// Asymmetric / E2LSH hash projections (Scatterbrain, HyperAttention).
    pub const HASH_PROJECTION: u64 = 4;
    /// Column samples (HyperAttention).
    pub const SAMPLES: u64 = 5;
    /// Cluster initialisation (Routing).
    pub const CLUSTERS: u64 = 6;
    /// Initial weights of a neural memory's hidden layers (Titans).
    pub const MEMORY_INIT: u64 = 7;
    /// SEA's training-free estimator: the random projection of queries and keys.
    pub const SEA_PROJECTION: u64 = 8;
}

/// The key of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Key {
    /// The user's seed (a method's `seed` parameter).
    pub seed: u64,
    /// Layer index (0 where the caller has no layers).
    pub layer: u64,
    /// Head index (query head unless a method documents otherwise).
    pub head: u64,
    /// One of the [`purpose`] constants.
    pub purpose: u64,
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a bijection of `u64` with full avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One stream of random numbers, addressed by counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    state: u64,
}

impl Stream {
    /// The stream of `key`.
    pub fn new(key: Key) -> Self {
        // Distinct odd constants per field, so (a, b) and (b, a) fold differently.
        let mut s = mix64(key.seed.wrapping_add(0x243F_6A88_85A3_08D3));
        s = mix64(s.wrapping_add(key.layer).wrapping_add(0x1319_8A2E_0370_7345));
        s = mix64(s.wrapping_add(key.head).wrapping_add(0xA409_3822_299F_31D1));
        s = mix64(s.wrapping_add(key.purpose).wrapping_add(0x082E_FA98_EC4E_6C89));
        Self { state: s }
    }

    /// Word `i` of the stream.
    #[inline]
    pub fn u64_at(&self, i: u64) -> u64 {
        mix64(self.state.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)))
    }

    /// Uniform in the open interval `(0, 1)` from word `i`.
    #[inline]
    pub fn uniform_at(&self, i: u64) -> f64 {
        ((self.u64_at(i) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal number `i` (Box–Muller over uniforms `2⌊i/2⌋` and `2⌊i/2⌋ + 1`).
    #[inline]
    pub fn gaussian_at(&self, i: u64) -> f64 {
        let t = i & !1;
        let r = (-2.0 * self.uniform_at(t).ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform_at(t + 1);
        if i & 1 == 0 {
            r * theta.cos()
        } else {
            r * theta.sin()
        }
    }

    /// Fills `out` with normals `start, start + 1, …`.
    pub fn fill_gaussian(&self, start: u64, out: &mut [f64]) {
        for (i, x) in out.iter_mut().enumerate() {
            *x = self.gaussian_at(start + i as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u64, layer: u64, head: u64, purpose: u64) -> Stream {
        Stream::new(Key { seed, layer, head, purpose })
    }

    #[test]
    fn same_key_same_numbers_and_every_field_changes_the_stream() {
        let a = key(7, 1, 2, purpose::LSH_PROJECTION);
        assert_eq!(a.u64_at(5), key(7, 1, 2, purpose::LSH_PROJECTION).u64_at(5));
        let others =
            [key(8, 1, 2, 3), key(7, 2, 2, 3), key(7, 1, 3, 3), key(7, 1, 2, 4), key(7, 2, 1, 3)];
        for o in others {
            let same = (0..64).filter(|&i| o.u64_at(i) == a.u64_at(i)).count();
            assert_eq!(same, 0, "{o:?} repeats words of {a:?}");
        }
        // Counter addressing: word i does not depend on having drawn the others.
        assert_ne!(a.u64_at(0), a.u64_at(1));
    }

    #[test]
    fn uniforms_are_in_the_open_interval_with_the_right_moments() {
        let s = key(0, 0, 0, purpose::SAMPLES);
        let n = 200_000u64;
        let (mut sum, mut sum2) = (0.0, 0.0);
        for i in 0..n {
            let u = s.uniform_at(i);
            assert!(u > 0.0 && u < 1.0);
            sum += u;
            sum2 += u * u;
        }
        let mean = sum / n as f64;
        let var = sum2 / n as f64 - mean * mean;
        // Standard errors: sd(u) = 0.2887 → se(mean) ≈ 6.5e-4; se(var) ≈ 1.9e-4. Bounds at 5 se.
        assert!((mean - 0.5).abs() < 5.0 * 0.2887 / (n as f64).sqrt(), "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 5.0 * 0.0745 / (n as f64).sqrt(), "var {var}");
    }

    #[test]
    fn gaussians_have_unit_moments_and_uncorrelated_pairs() {
        let s = key(3, 0, 1, purpose::PERFORMER_PROJECTION);
        let n = 200_000usize;
        let mut x = vec![0.0; n];
        s.fill_gaussian(0, &mut x);
        let nf = n as f64;
        let mean = x.iter().sum::<f64>() / nf;
        let var = x.iter().map(|v| v * v).sum::<f64>() / nf - mean * mean;
        let kurt = x.iter().map(|v| v.powi(4)).sum::<f64>() / nf;
        // se(mean) = 1/√n, se(var) = √(2/n), se(E x⁴) = √(96/n); 5 se bounds.
        assert!(mean.abs() < 5.0 / nf.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / nf).sqrt(), "var {var}");
        assert!((kurt - 3.0).abs() < 5.0 * (96.0 / nf).sqrt(), "E x^4 {kurt}");
        // The cos and sin halves of a Box–Muller pair are independent: correlation ≈ 0.
        let pairs = n / 2;
        let c = (0..pairs).map(|t| x[2 * t] * x[2 * t + 1]).sum::<f64>() / pairs as f64;
        assert!(c.abs() < 5.0 / (pairs as f64).sqrt(), "pair correlation {c}");
        // Addressing an element directly equals filling from it.
        let mut y = [0.0; 3];
        s.fill_gaussian(11, &mut y);
        assert_eq!(y[0].to_bits(), x[11].to_bits());
        assert_eq!(y[2].to_bits(), x[13].to_bits());
    }
}
