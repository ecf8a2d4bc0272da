//! A small counter-based random number generator (SplitMix64).
//!
//! Every random choice of a sample is drawn from a generator keyed by `(seed, index, stream)`, so
//! a sample depends on nothing but its own inputs: sample 7 is the same whether or not samples
//! 0–6 were generated, and the numbers do not change between platforms or Rust versions.
//! SplitMix64 (Steele, Lea and Flood, 2014) is a Weyl sequence (a counter stepped by the odd
//! constant `0x9e37_79b9_7f4a_7c15`) passed through a 64-bit finalizer; it is not
//! cryptographic, which a benchmark generator does not need.

/// The Weyl step of SplitMix64 (2^64 divided by the golden ratio, made odd).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Independent streams of one sample; each names one kind of draw.
pub(crate) mod stream {
    /// Keys, values, needle order, depths, variable names, word choice.
    pub const CONTENT: u64 = 1;
    /// Distractor needles of the `needle` haystack (one sub-key per line).
    pub const DISTRACTOR: u64 = 2;
    /// The one-shot worked example (variable tracking, common words).
    pub const EXAMPLE: u64 = 3;
    /// The order of the common-words list.
    pub const SHUFFLE: u64 = 4;
}

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    /// The generator for draw kind `stream` of sample `index` under `seed`.
    pub fn keyed(seed: u64, index: usize, stream: u64) -> Self {
        Self::keyed_sub(seed, index, stream, 0)
    }

    /// Like [`Rng::keyed`] with one more key (`sub`, e.g. the line number of a distractor).
    pub fn keyed_sub(seed: u64, index: usize, stream: u64, sub: u64) -> Self {
        let mut s = mix(seed ^ 0x5851_f42d_4c95_7f2d);
        s = mix(s ^ (index as u64).wrapping_mul(GOLDEN));
        s = mix(s ^ stream.wrapping_mul(0xd134_2543_de82_ef95));
        s = mix(s ^ sub.wrapping_mul(0xaf25_1af3_b0f0_25b5));
        Self { state: s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias (Lemire's multiply-shift
    /// with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform integer in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// A uniform index in `0..n` (`n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// A uniform `f64` in `[0, 1)` (53 random bits).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }

    /// `k` distinct indices of `0..n` in random order (`k <= n`).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        debug_assert!(k <= n);
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.index(n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::keyed(1, 2, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "same key, same first draw");
        let mut seen = std::collections::HashSet::new();
        for (seed, index, s) in [(1, 2, 3), (2, 2, 3), (1, 3, 3), (1, 2, 4), (0, 0, 0)] {
            assert!(seen.insert(Rng::keyed(seed, index, s).next_u64()), "{seed} {index} {s}");
        }
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = Rng::keyed(7, 0, 0);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[rng.index(6)] += 1;
        }
        // Each bucket expects 10 000; 5 standard deviations is about 460.
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
        assert!((0..1000).all(|_| rng.between(10, 12) <= 12));
    }

    #[test]
    fn sample_is_distinct() {
        let mut rng = Rng::keyed(3, 1, 1);
        let s = rng.sample(40, 40);
        let mut sorted = s.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..40).collect::<Vec<_>>());
        assert_ne!(s, sorted, "a full sample of 40 is almost never in order");
    }
}
