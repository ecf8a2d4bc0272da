//! # attn-testing — the shared conformance suite of `attn`
//!
//! Dev-dependency only. Every implementation in [`attn::registry`] is held to the same checks:
//!
//! - [`rand`]: seeded inputs (a counter-based generator, no external crate) in f32/f16/bf16, in
//!   contiguous and strided layouts whose unused elements are NaN, and random dense masks with
//!   fully masked rows;
//! - [`cases`]: the shared case grid (a covering set for CI, the full cross product behind
//!   `ATTN_FULL_GRID=1`);
//! - [`naive`]: a same-precision naive run (materialised scores, `std` exp, f32 accumulation), the
//!   yardstick of the acceptance rule;
//! - [`close`]: [`close::Report`] (max-abs, relative RMS, worst index and values) and the
//!   acceptance rule for exact methods (STYLE rule 3): error of the fast output against the f64
//!   oracle ≤ 2 × error of the naive f32 run + a small floor, with exact agreement on fully masked
//!   rows (`o = 0`, `lse = −∞`);
//! - [`poison`]: calls through [`attn::prepare`] + [`attn::Prepared::run`] into NaN-filled output
//!   buffers, so an element a kernel forgets to write fails (STYLE rule 4);
//! - [`suite`]: [`suite::run_suite`], which runs a method on every case it accepts, at every SIMD
//!   level the machine has and at several thread counts (STYLE rule 8), and checks it.

#![deny(missing_docs)]

pub mod cases;
pub mod close;
pub mod naive;
pub mod poison;
pub mod qkv;
pub mod rand;
pub mod suite;

pub use cases::{Case, MaskSpec};
pub use close::{Report, Tolerance};
pub use qkv::Qkv;
pub use rand::{Layout, Rng, Tensor};
pub use suite::{run_suite, run_suite_with, SuiteConfig};
