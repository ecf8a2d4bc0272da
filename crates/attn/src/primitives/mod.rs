//! Numerics shared by many methods; each file carries its own tests.

pub mod gemm;
pub mod merge;
pub mod online_softmax;
pub mod rng;
pub mod simd;
pub mod sparse;
