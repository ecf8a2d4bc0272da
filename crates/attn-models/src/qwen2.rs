//! Qwen2-architecture checkpoints in GGUF (Qwen2.5): the Llama block with biases on Q, K and V,
//! RoPE on half-split (NEOX) pairs, a separate output matrix.

use crate::decoder::{arch_u32, rope_layers, Activation, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::ops::RopeStyle;

/// The decoder configuration of a `qwen2` GGUF file, read from its metadata.
///
/// # Errors
/// [`ModelError::Config`] naming the file and key for missing or inconsistent metadata.
pub fn config(g: &GgufFile) -> Result<DecoderConfig> {
    common(g, "qwen2", RopeStyle::HalfSplit)
}

/// What Llama and Qwen2 share: every number from `{arch}.*` metadata.
pub(crate) fn common(g: &GgufFile, arch: &str, style: RopeStyle) -> Result<DecoderConfig> {
    let layers = arch_u32(g, arch, "block_count")? as usize;
    let hidden = arch_u32(g, arch, "embedding_length")? as usize;
    let heads = arch_u32(g, arch, "attention.head_count")? as usize;
    let kv_heads =
        g.opt_u32(&format!("{arch}.attention.head_count_kv"))?.map_or(heads, |v| v as usize);
    let bad = |key: &str, detail: String| ModelError::Config {
        path: g.path().to_path_buf(),
        key: format!("{arch}.{key}"),
        detail,
    };
    if heads == 0
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || !hidden.is_multiple_of(heads)
    {
        return Err(bad(
            "attention.head_count",
            format!("{heads} heads / {kv_heads} KV heads for width {hidden}"),
        ));
    }
    let head_dim = hidden / heads;
    let rot = g.opt_u32(&format!("{arch}.rope.dimension_count"))?.map_or(head_dim, |v| v as usize);
    if rot % 2 != 0 || rot > head_dim {
        return Err(bad("rope.dimension_count", format!("{rot} for head size {head_dim}")));
    }
    let theta = f64::from(g.opt_f32(&format!("{arch}.rope.freq_base"))?.unwrap_or(10_000.0));
    let vocab = match g.opt_u32(&format!("{arch}.vocab_size"))? {
        Some(v) => v as usize,
        None => g.str_array("tokenizer.ggml.tokens")?.len(),
    };
    Ok(DecoderConfig {
        arch: arch.to_string(),
        hidden,
        heads,
        kv_heads,
        head_dim,
        v_dim: head_dim,
        ffn: arch_u32(g, arch, "feed_forward_length")? as usize,
        vocab,
        context: arch_u32(g, arch, "context_length")? as usize,
        eps: g.f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))?,
        act: Activation::Silu,
        embed_scale: 1.0,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        qk_norm: false,
        post_norms: false,
        layers: rope_layers(layers, style, rot, |_| theta, |_| None),
        final_softcap: None,
    })
}
