//! Gemma-3 checkpoints in GGUF: sandwich RMSNorms (the "+1" already folded into the GGUF
//! weights), QK-norm, MQA with head size 256, GeGLU (tanh GELU), embeddings scaled by √width,
//! tied output, and interleaved local/global layers: five sliding-window layers (window 512,
//! RoPE θ = 10 000) then one global layer (RoPE θ from the metadata, 1e6).
//!
//! The GGUF stores the window and the global θ but not the 5:1 pattern or the local θ; those are
//! constants of the architecture (Gemma 3 technical report; HF `sliding_window_pattern = 6`,
//! `rope_local_base_freq = 10000`).

use crate::decoder::{arch_u32, rope_layers, Activation, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::ops::RopeStyle;

/// Every `PATTERN`-th layer is global (layers 5, 11, 17 of 18).
pub const PATTERN: usize = 6;
/// RoPE θ of the sliding-window layers.
pub const LOCAL_THETA: f64 = 10_000.0;

/// The decoder configuration of a `gemma3` GGUF file.
///
/// # Errors
/// [`ModelError::Config`] naming the file and key for missing or inconsistent metadata.
pub fn config(g: &GgufFile) -> Result<DecoderConfig> {
    let a = "gemma3";
    let layers = arch_u32(g, a, "block_count")? as usize;
    let hidden = arch_u32(g, a, "embedding_length")? as usize;
    let heads = arch_u32(g, a, "attention.head_count")? as usize;
    let kv_heads = g.opt_u32("gemma3.attention.head_count_kv")?.map_or(heads, |v| v as usize);
    let head_dim =
        g.opt_u32("gemma3.attention.key_length")?.map_or(hidden / heads.max(1), |v| v as usize);
    let v_dim = g.opt_u32("gemma3.attention.value_length")?.map_or(head_dim, |v| v as usize);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !head_dim.is_multiple_of(2)
    {
        return Err(ModelError::Config {
            path: g.path().to_path_buf(),
            key: "gemma3.attention.head_count".into(),
            detail: format!("{heads} heads / {kv_heads} KV heads of size {head_dim}"),
        });
    }
    let theta = f64::from(g.opt_f32("gemma3.rope.freq_base")?.unwrap_or(1_000_000.0));
    let window = g.opt_u32("gemma3.attention.sliding_window")?.map(|w| w as usize);
    let is_global = |l: usize| (l + 1).is_multiple_of(PATTERN);
    let vocab = g.str_array("tokenizer.ggml.tokens")?.len();
    Ok(DecoderConfig {
        arch: a.to_string(),
        hidden,
        heads,
        kv_heads,
        head_dim,
        v_dim,
        ffn: arch_u32(g, a, "feed_forward_length")? as usize,
        vocab,
        context: arch_u32(g, a, "context_length")? as usize,
        eps: g.f32("gemma3.attention.layer_norm_rms_epsilon")?,
        act: Activation::GeluTanh,
        embed_scale: (hidden as f32).sqrt(),
        // query_pre_attn_scalar = head size for Gemma-3 270M.
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        qk_norm: true,
        post_norms: true,
        layers: rope_layers(
            layers,
            RopeStyle::HalfSplit,
            head_dim,
            |l| if is_global(l) { theta } else { LOCAL_THETA },
            |l| if is_global(l) { None } else { window },
        ),
        final_softcap: None,
    })
}
