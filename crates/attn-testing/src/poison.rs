//! Outputs filled with NaN before a call, so that an element a kernel forgets to write fails.

/// A buffer of `n` NaNs.
pub fn nan_buffer(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// Refills a buffer with NaN.
pub fn poison(buf: &mut [f32]) {
    buf.fill(f32::NAN);
}
