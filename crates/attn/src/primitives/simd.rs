//! One SIMD abstraction, dispatched at run time.
//!
//! Kernels are written once, generic over [`Simd`], marked `#[inline(always)]`, and instantiated
//! inside a `#[target_feature]` entry point per [`Level`] (the pattern of pulp/faer, written out so
//! that AVX-512 needs no cargo feature). The scalar level is an ordinary one-lane implementation: it
//! is what runs on CPUs without AVX2 and it is tested on every machine.
//!
//! The level a kernel runs at is [`Level::current`]: the best the CPU has, lowered by the
//! `ATTN_SIMD` environment variable (`scalar`, `avx2`, `avx512`) or, for the calling thread, by
//! [`with_level`] (used by tests to exercise every level).

use std::cell::Cell;
use std::sync::OnceLock;

/// A SIMD instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// One f32 lane, no intrinsics.
    Scalar,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F, 16 lanes.
    Avx512,
}

impl Level {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// The best level this CPU supports.
    pub fn detected() -> Level {
        static DETECTED: OnceLock<Level> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                {
                    return Level::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Level::Avx2;
                }
            }
            Level::Scalar
        })
    }

    /// Every level this CPU can run, lowest first.
    pub fn available() -> Vec<Level> {
        [Level::Scalar, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= Level::detected())
            .collect()
    }

    /// The level kernels use on this thread now (see the module doc).
    pub fn current() -> Level {
        static ENV: OnceLock<Option<Level>> = OnceLock::new();
        let env =
            *ENV.get_or_init(|| std::env::var("ATTN_SIMD").ok().and_then(|s| Level::parse(&s)));
        let mut l = Level::detected();
        if let Some(e) = env {
            l = l.min(e);
        }
        if let Some(t) = FORCED.with(Cell::get) {
            l = l.min(t);
        }
        l
    }

    /// Parses `scalar`, `avx2` or `avx512`.
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Level::Scalar),
            "avx2" => Some(Level::Avx2),
            "avx512" => Some(Level::Avx512),
            _ => None,
        }
    }
}

thread_local! {
    static FORCED: Cell<Option<Level>> = const { Cell::new(None) };
}

/// Runs `f` with kernels called from this thread limited to `level` (never above the CPU's).
pub fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> R {
    let prev = FORCED.with(|c| c.replace(Some(level)));
    struct Restore(Option<Level>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

/// Vector operations on f32 lanes. All functions are `unsafe`: the caller guarantees that the CPU
/// supports the level (by calling through [`dispatch`]) and that pointers
/// are valid for `LANES` elements.
///
/// # Safety
/// Every method requires the CPU to support [`Simd::LEVEL`]; pointer arguments must be valid for
/// `LANES` elements. (Stated once here for all methods.)
#[allow(clippy::missing_safety_doc)]
pub trait Simd: Copy + Send + Sync + 'static {
    /// The register type.
    type V: Copy;
    /// f32 lanes per register.
    const LANES: usize;
    /// The level.
    const LEVEL: Level;

    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self::V;
    /// Unaligned load of `LANES` values.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Unaligned store of `LANES` values.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a + b`
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a − b`
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Largest lane.
    unsafe fn reduce_max(v: Self::V) -> f32;
    /// Sum of lanes.
    unsafe fn reduce_sum(v: Self::V) -> f32;
    /// `2^x` lane-wise with relative error ≤ 3e-7 for `x ∈ [−126, 127]`; exactly 0 for
    /// `x < −126` (including `−∞`).
    unsafe fn exp2(x: Self::V) -> Self::V;
    /// `log₂ x` lane-wise for `x ≥ 0` (subnormals included) with absolute error ≤ 2e-7 on
    /// `[½, 2]` and relative error ≤ 1e-7 elsewhere (see [`log2_scalar`]); exactly `−∞` for
    /// `x = 0`. Negative and non-finite inputs give unspecified values.
    unsafe fn log2(x: Self::V) -> Self::V;
}

/// The largest element of `x` (−∞ for an empty slice), `S::LANES` lanes at a time: equal to
/// `x.iter().fold(−∞, f32::max)` when no element is NaN (max is exact, so the order does not
/// matter), without that fold's chain of dependent scalar steps.
///
/// # Safety
/// The CPU must support `S` (call from a [`Kernel`]).
#[inline(always)]
pub unsafe fn max_of<S: Simd>(x: &[f32]) -> f32 {
    let split = x.len() - x.len() % S::LANES;
    let mut m = f32::NEG_INFINITY;
    if split > 0 {
        // SAFETY: every load reads `S::LANES` floats inside `x[..split]`.
        unsafe {
            let mut vm = S::load(x.as_ptr());
            for t in (S::LANES..split).step_by(S::LANES) {
                vm = S::max(vm, S::load(x.as_ptr().add(t)));
            }
            m = S::reduce_max(vm);
        }
    }
    x[split..].iter().fold(m, |a, &b| a.max(b))
}

/// Coefficients of `2^f ≈ Σ c_k f^k` on `f ∈ [−½, ½]`, highest degree first: a degree-5 fit
/// minimising the maximum relative error (Lawson-weighted least squares, computed for this crate);
/// evaluated in f32 by Horner's rule its relative error is ≤ 2.4e-7.
const EXP2_POLY: [f32; 6] =
    [1.327_647_1e-3, 9.675_541e-3, 5.550_713e-2, 2.402_212e-1, 6.931_469_4e-1, 1.000_000_1];

/// Scalar `2^x` with the same polynomial as the vector levels (the one-lane level).
#[inline(always)]
pub fn exp2_scalar(x: f32) -> f32 {
    if x < -126.0 || x.is_nan() {
        return if x.is_nan() { x } else { 0.0 };
    }
    let x = x.min(127.0);
    let n = x.round();
    let f = x - n;
    let mut p = EXP2_POLY[0];
    for c in &EXP2_POLY[1..] {
        p = p * f + *c;
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `ln((1+t)/(1−t)) / (2t) ≈ Σ c_k z^k` with `z = t²`, highest degree first: the atanh series
/// `1 + z/3 + z²/5 + z³/7 + z⁴/9`. For a mantissa `m ∈ [√½, √2)`, `t = (m−1)/(m+1)` has
/// `|t| ≤ 0.1716`, so the first dropped term `z⁵/11` is below 2e-9 relative.
const LOG_ATANH: [f32; 5] = [1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0];

/// `2/ln 2`: turns `2t·(series)` (= `ln m`) into `log₂ m`.
const TWO_LOG2E: f32 = 2.0 * std::f32::consts::LOG2_E;

/// Scalar `log₂ x` with the same steps as the vector levels (the one-lane level): `x = m·2^e`
/// with `m ∈ [√½, √2)` read off the bits (subnormals scaled by `2^24` first), then
/// `log₂ m = (2/ln 2)·t·(1 + t²/3 + t⁴/5 + t⁶/7 + t⁸/9)`, `t = (m−1)/(m+1)`, and `e + log₂ m`.
/// `log₂ 0 = −∞`; negative or non-finite `x` give unspecified values.
#[inline(always)]
pub fn log2_scalar(x: f32) -> f32 {
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    let (x, bias) = if x < f32::MIN_POSITIVE { (x * 16_777_216.0, 24 + 127) } else { (x, 127) };
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - bias;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let z = t * t;
    let mut p = LOG_ATANH[0];
    for c in &LOG_ATANH[1..] {
        p = p * z + *c;
    }
    (t * TWO_LOG2E).mul_add(p, e as f32)
}

/// The one-lane level.
#[derive(Debug, Clone, Copy)]
pub struct Scalar;

impl Simd for Scalar {
    type V = f32;
    const LANES: usize = 1;
    const LEVEL: Level = Level::Scalar;
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        // A plain multiply-add: `mul_add` without hardware FMA is a slow libm call.
        a * b + c
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    unsafe fn reduce_max(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn reduce_sum(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn exp2(x: f32) -> f32 {
        exp2_scalar(x)
    }
    #[inline(always)]
    unsafe fn log2(x: f32) -> f32 {
        log2_scalar(x)
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Level, Simd, EXP2_POLY, LOG_ATANH, TWO_LOG2E};
    use std::arch::x86_64::*;

    /// AVX2 + FMA, 8 lanes.
    #[derive(Debug, Clone, Copy)]
    pub struct Avx2;

    /// AVX-512F, 16 lanes.
    #[derive(Debug, Clone, Copy)]
    pub struct Avx512;

    impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        const LEVEL: Level = Level::Avx2;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn reduce_max(v: __m256) -> f32 {
            unsafe {
                let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
                _mm_cvtss_f32(m)
            }
        }
        #[inline(always)]
        unsafe fn reduce_sum(v: __m256) -> f32 {
            unsafe {
                let m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
                let m = _mm_add_ss(m, _mm_shuffle_ps::<0b01>(m, m));
                _mm_cvtss_f32(m)
            }
        }
        #[inline(always)]
        unsafe fn exp2(x: __m256) -> __m256 {
            unsafe {
                let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-126.0));
                let x =
                    _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-126.0)), _mm256_set1_ps(127.0));
                let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
                let f = _mm256_sub_ps(x, n);
                let mut p = _mm256_set1_ps(EXP2_POLY[0]);
                for c in &EXP2_POLY[1..] {
                    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(*c));
                }
                let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                    _mm256_cvtps_epi32(n),
                    _mm256_set1_epi32(127),
                ));
                let r = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
                _mm256_andnot_ps(underflow, r)
            }
        }
        #[inline(always)]
        unsafe fn log2(x: __m256) -> __m256 {
            unsafe {
                let zero = _mm256_cmp_ps::<_CMP_EQ_OQ>(x, _mm256_setzero_ps());
                // Subnormals: scale by 2^24 and take 24 off the exponent.
                let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(f32::MIN_POSITIVE));
                let x = _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(16_777_216.0)), tiny);
                let bits = _mm256_castps_si256(x);
                let e = _mm256_sub_epi32(
                    _mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xff)),
                    _mm256_set1_epi32(127),
                );
                let e =
                    _mm256_sub_ps(_mm256_cvtepi32_ps(e), _mm256_and_ps(tiny, _mm256_set1_ps(24.0)));
                let m = _mm256_castsi256_ps(_mm256_or_si256(
                    _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
                    _mm256_set1_epi32(0x3f80_0000),
                ));
                let big = _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_set1_ps(std::f32::consts::SQRT_2));
                let m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5)), big);
                let e = _mm256_add_ps(e, _mm256_and_ps(big, _mm256_set1_ps(1.0)));
                let one = _mm256_set1_ps(1.0);
                let t = _mm256_div_ps(_mm256_sub_ps(m, one), _mm256_add_ps(m, one));
                let z = _mm256_mul_ps(t, t);
                let mut p = _mm256_set1_ps(LOG_ATANH[0]);
                for c in &LOG_ATANH[1..] {
                    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(*c));
                }
                let r = _mm256_fmadd_ps(_mm256_mul_ps(t, _mm256_set1_ps(TWO_LOG2E)), p, e);
                _mm256_blendv_ps(r, _mm256_set1_ps(f32::NEG_INFINITY), zero)
            }
        }
    }

    impl Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        const LEVEL: Level = Level::Avx512;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn reduce_max(v: __m512) -> f32 {
            unsafe { _mm512_reduce_max_ps(v) }
        }
        #[inline(always)]
        unsafe fn reduce_sum(v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
        #[inline(always)]
        unsafe fn exp2(x: __m512) -> __m512 {
            unsafe {
                // Below −126 the result is flushed to exactly 0 (masked scores must weigh nothing).
                let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(-126.0));
                let x =
                    _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-126.0)), _mm512_set1_ps(127.0));
                let n =
                    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
                let f = _mm512_sub_ps(x, n);
                let mut p = _mm512_set1_ps(EXP2_POLY[0]);
                for c in &EXP2_POLY[1..] {
                    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(*c));
                }
                _mm512_maskz_scalef_ps(keep, p, n)
            }
        }
        #[inline(always)]
        unsafe fn log2(x: __m512) -> __m512 {
            unsafe {
                // getexp/getmant read subnormals as their true exponent and mantissa.
                let zero = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x, _mm512_setzero_ps());
                let e = _mm512_getexp_ps(x);
                let m = _mm512_getmant_ps::<_MM_MANT_NORM_1_2, _MM_MANT_SIGN_SRC>(x);
                let big =
                    _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, _mm512_set1_ps(std::f32::consts::SQRT_2));
                let m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5));
                let e = _mm512_mask_add_ps(e, big, e, _mm512_set1_ps(1.0));
                let one = _mm512_set1_ps(1.0);
                let t = _mm512_div_ps(_mm512_sub_ps(m, one), _mm512_add_ps(m, one));
                let z = _mm512_mul_ps(t, t);
                let mut p = _mm512_set1_ps(LOG_ATANH[0]);
                for c in &LOG_ATANH[1..] {
                    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(*c));
                }
                let r = _mm512_fmadd_ps(_mm512_mul_ps(t, _mm512_set1_ps(TWO_LOG2E)), p, e);
                _mm512_mask_blend_ps(zero, r, _mm512_set1_ps(f32::NEG_INFINITY))
            }
        }
    }
}

/// A kernel written once for every level: implement `run` with `#[inline(always)]` and call it
/// through [`dispatch`].
pub trait Kernel {
    /// What the kernel returns.
    type Output;
    /// The kernel body at level `S`.
    fn run<S: Simd>(self) -> Self::Output;
}

/// Runs `k` at `level` (clamped to [`Level::detected`]) inside a function compiled with that
/// level's target features, so the generic body is inlined and vectorised for it.
pub fn dispatch<K: Kernel>(level: Level, k: K) -> K::Output {
    match level.min(Level::detected()) {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn entry<K: Kernel>(k: K) -> K::Output {
                k.run::<Avx512>()
            }
            // SAFETY: the level is at most the detected one.
            unsafe { entry(k) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn entry<K: Kernel>(k: K) -> K::Output {
                k.run::<Avx2>()
            }
            // SAFETY: the level is at most the detected one.
            unsafe { entry(k) }
        }
        _ => k.run::<Scalar>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Exp2All<'a>(&'a [f32]);
    impl Kernel for Exp2All<'_> {
        type Output = Vec<f32>;
        #[inline(always)]
        fn run<S: Simd>(self) -> Vec<f32> {
            let mut out = vec![0.0; self.0.len()];
            for (x, o) in self.0.chunks_exact(S::LANES).zip(out.chunks_exact_mut(S::LANES)) {
                unsafe { S::store(o.as_mut_ptr(), S::exp2(S::load(x.as_ptr()))) }
            }
            out
        }
    }

    struct Reduce<'a>(&'a [f32]);
    impl Kernel for Reduce<'_> {
        type Output = (f32, f32);
        #[inline(always)]
        fn run<S: Simd>(self) -> (f32, f32) {
            unsafe {
                let v = S::load(self.0.as_ptr());
                (S::reduce_max(v), S::reduce_sum(v))
            }
        }
    }

    #[test]
    fn exp2_accuracy_every_level() {
        let mut xs: Vec<f32> = (0..4096).map(|i| -130.0 + i as f32 * (260.0 / 4096.0)).collect();
        xs.extend([f32::NEG_INFINITY, -126.5, -0.5, 0.5, 0.0, 1e-9, -1e-9, 126.9, 127.0]);
        while !xs.len().is_multiple_of(16) {
            xs.push(0.25);
        }
        for level in Level::available() {
            let got = dispatch(level, Exp2All(&xs));
            for (x, g) in xs.iter().zip(&got) {
                if *x < -126.0 {
                    assert_eq!(*g, 0.0, "{level:?} exp2({x})");
                } else if *x <= 127.0 {
                    let want = (*x as f64).exp2();
                    let rel = ((*g as f64) - want).abs() / want;
                    assert!(rel <= 3e-7, "{level:?} exp2({x}) = {g}, want {want}, rel {rel:e}");
                }
            }
        }
    }

    struct Log2All<'a>(&'a [f32]);
    impl Kernel for Log2All<'_> {
        type Output = Vec<f32>;
        #[inline(always)]
        fn run<S: Simd>(self) -> Vec<f32> {
            let mut out = vec![0.0; self.0.len()];
            for (x, o) in self.0.chunks_exact(S::LANES).zip(out.chunks_exact_mut(S::LANES)) {
                unsafe { S::store(o.as_mut_ptr(), S::log2(S::load(x.as_ptr()))) }
            }
            out
        }
    }

    #[test]
    fn log2_accuracy_every_level() {
        // Powers of two, their neighbours, the mantissa split at √2, a dense sweep of [½, 2],
        // the subnormal range, and the extremes.
        let mut xs: Vec<f32> = (0..2048).map(|i| 0.5 + i as f32 * (1.5 / 2048.0)).collect();
        for e in -149..=127 {
            let p = (e as f64).exp2() as f32;
            xs.extend([p, f32::from_bits(p.to_bits() + 1), p * std::f32::consts::SQRT_2, p * 1.9]);
        }
        xs.extend([0.0, f32::MIN_POSITIVE, f32::MAX, 1e-45, 3e-39, 1.0 - f32::EPSILON]);
        xs.retain(|x| x.is_finite());
        while !xs.len().is_multiple_of(16) {
            xs.push(1.0);
        }
        for level in Level::available() {
            let got = dispatch(level, Log2All(&xs));
            for (x, g) in xs.iter().zip(&got) {
                if *x == 0.0 {
                    assert_eq!(*g, f32::NEG_INFINITY, "{level:?} log2(0)");
                    continue;
                }
                let want = (*x as f64).log2();
                let err = ((*g as f64) - want).abs();
                assert!(
                    err <= 2e-7 * want.abs().max(1.0),
                    "{level:?} log2({x:e}) = {g}, want {want}, error {err:e}"
                );
            }
        }
    }

    #[test]
    fn reductions_every_level() {
        let xs: Vec<f32> = (0..16).map(|i| ((i * 7) % 16) as f32 - 3.5).collect();
        for level in Level::available() {
            let (m, s) = dispatch(level, Reduce(&xs));
            let n = match level {
                Level::Scalar => 1,
                Level::Avx2 => 8,
                Level::Avx512 => 16,
            };
            let want_m = xs[..n].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let want_s: f32 = xs[..n].iter().sum();
            assert_eq!((m, s), (want_m, want_s), "{level:?}");
        }
    }

    struct MaxOf<'a>(&'a [f32]);
    impl Kernel for MaxOf<'_> {
        type Output = f32;
        fn run<S: Simd>(self) -> f32 {
            unsafe { max_of::<S>(self.0) }
        }
    }

    #[test]
    fn max_of_every_level_and_length() {
        // Every length from 0 to 40 (empty, tails only, whole vectors plus tails), the maximum
        // at every position in turn, negative values so that a zero-filled lane would show.
        for n in 0..=40usize {
            for at in 0..n.max(1) {
                let xs: Vec<f32> =
                    (0..n).map(|i| if i == at { -0.5 } else { -1.0 - (i % 7) as f32 }).collect();
                let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for level in Level::available() {
                    assert_eq!(dispatch(level, MaxOf(&xs)), want, "{level:?} n={n} at={at}");
                }
            }
        }
    }

    #[test]
    fn with_level_restores() {
        let before = Level::current();
        with_level(Level::Scalar, || assert_eq!(Level::current(), Level::Scalar));
        assert_eq!(Level::current(), before);
    }
}
