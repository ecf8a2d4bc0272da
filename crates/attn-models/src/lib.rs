//! # attn-models — real pre-trained transformers with attention as a value
//!
//! Loads published checkpoints (safetensors with `config.json` and `tokenizer.json`, or GGUF with
//! the tokenizer inside), runs their forward passes in f32, and calls the `attn` crate for every
//! attention so that any registered method can stand in for exact attention per layer and head.
//!
//! - [`gguf`]: GGUF v3 reader and dequantisation of the block formats to f32;
//! - [`tokenizer`]: `tokenizer.json`, GGUF byte-level BPE and GGUF SentencePiece;
//! - [`fetch`] and [`corpus`]: pinned downloads into `$ATTN_HOME` and the text data sets;
//! - [`ops`]: linear layers (faer GEMM), norms, activations, RoPE;
//! - [`plan`] and [`attention`]: which method runs where, and the one place models call `attn`;
//! - [`capture`]: Q/K/V (and probabilities) of chosen heads for analysis and planning.

#![deny(missing_docs)]

pub mod attention;
pub mod bert;
pub mod capture;
pub mod corpus;
pub mod decoder;
pub mod error;
pub mod fetch;
pub mod gemma3;
pub mod gguf;
pub mod llama;
pub mod model;
pub mod ops;
pub mod plan;
pub mod qwen2;
pub mod tokenizer;
pub mod weights;

pub use attention::{AttnStats, RunCtx};
pub use capture::{Capture, Captured};
pub use error::{ModelError, Result};
pub use plan::{AttentionPlan, Choice};
