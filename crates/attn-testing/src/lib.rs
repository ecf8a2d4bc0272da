//! Test support for attn: seeded inputs, the shared case grid, derived tolerances, NaN
//! poisoning, and the conformance suite every registered implementation runs.
//!
//! Acceptance for exact methods (STYLE rule 3, the flash-attention rule): the error of the fast
//! output against the f64 oracle must not exceed twice the error of a same-precision naive run
//! (materialised f32 scores, `f32::exp`, f32 sums) plus a small floor. Every failure prints the
//! max-abs error, the relative RMS error and the worst index.

#![deny(missing_docs)]

pub mod cases;
pub mod close;
pub mod naive;
pub mod poison;
pub mod rand;
pub mod suite;

pub use cases::{grid, Case, CaseData, Layout};
pub use close::{Report, Tolerance};
pub use suite::run_suite;
