//! Llama-architecture checkpoints in GGUF (SmolLM2): pre-norm RMSNorm blocks, GQA, SwiGLU,
//! RoPE on interleaved pairs (the GGUF converter permutes Q/K rows for ggml's "normal" RoPE),
//! optional tied output embedding.

use crate::decoder::DecoderConfig;
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::ops::RopeStyle;

/// The decoder configuration of a `llama` GGUF file, read from its metadata.
///
/// # Errors
/// [`crate::ModelError::Config`] naming the file and key for missing or inconsistent metadata.
pub fn config(g: &GgufFile) -> Result<DecoderConfig> {
    crate::qwen2::common(g, "llama", RopeStyle::Interleaved)
}
