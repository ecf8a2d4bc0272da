//! The decoder-only transformer shared by the causal-LM families (Llama/SmolLM2, Qwen2,
//! Gemma-3): what differs between them is data in [`DecoderConfig`] (norm placement, QK-norm,
//! biases, activation, RoPE style and θ per layer, sliding windows), set by each family's loader
//! in `llama.rs`, `qwen2.rs` and `gemma3.rs` from the checkpoint's own metadata.
//!
//! Memory is O(S): a forward returns final hidden states, and logits are computed only for the
//! rows asked for, in blocks ([`Decoder::log_probs`], [`Decoder::logits_block`]).

use attn::{Mask, Params};

use crate::attention::{attention, AttnInput, RunCtx};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::ops::{gated_act, rms_norm, rms_norm_inplace, Linear, Rope, RopeStyle, Threads};
use crate::tokenizer::Tokenizer;

/// The gated FFN's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen2).
    Silu,
    /// GeGLU with tanh-approximate GELU (Gemma).
    GeluTanh,
}

/// Attention geometry of one layer.
#[derive(Debug, Clone)]
pub struct LayerAttn {
    /// Keys further back than this many positions are invisible (`None` = global causal).
    pub window: Option<usize>,
    /// Rotary embedding of this layer.
    pub rope: Rope,
}

/// Everything that distinguishes one decoder family or checkpoint from another.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Architecture name as the checkpoint states it (`llama`, `qwen2`, `gemma3`).
    pub arch: String,
    /// Model width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query/key head size.
    pub head_dim: usize,
    /// Value head size.
    pub v_dim: usize,
    /// FFN width.
    pub ffn: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Trained context length.
    pub context: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Activation of the gated FFN.
    pub act: Activation,
    /// Embeddings are multiplied by this (Gemma: √hidden).
    pub embed_scale: f32,
    /// Attention score scale.
    pub attn_scale: f32,
    /// RMSNorm on each query and key head before RoPE (Gemma-3).
    pub qk_norm: bool,
    /// Norms after attention and FFN too (Gemma's sandwich norms).
    pub post_norms: bool,
    /// Per layer: window and RoPE.
    pub layers: Vec<LayerAttn>,
    /// Soft-capping of the final logits, if any.
    pub final_softcap: Option<f32>,
}

struct Block {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked into one `[qd + kd + vd, hidden]` layer: one GEMM, one pass over x.
    qkv: Linear,
    o: Linear,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked into one `[2·ffn, hidden]` layer.
    gate_up: Linear,
    down: Linear,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded decoder-only model with its tokenizer.
pub struct Decoder {
    /// Configuration.
    pub config: DecoderConfig,
    /// Tokenizer from the same file.
    pub tokenizer: Tokenizer,
    /// Where it came from.
    pub path: std::path::PathBuf,
    embed: Vec<f32>,
    lm_head: Option<Linear>,
    out_norm: Vec<f32>,
    blocks: Vec<Block>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("path", &self.path).field("config", &self.config).finish()
    }
}

/// Keys and values of every layer for the positions processed so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.k.iter().chain(&self.v).map(Vec::len).sum::<usize>()
    }
}

/// How a forward pass splits its tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOpts {
    /// Tokens per prefill chunk; 0 = all at once (what an approximate prefill method should see).
    pub chunk: usize,
}

impl Decoder {
    /// Loads a GGUF causal LM of a supported architecture (`llama`, `qwen2`, `gemma3`).
    ///
    /// # Errors
    /// Typed errors naming the file, key or tensor; [`ModelError::Config`] for another
    /// architecture.
    pub fn load_gguf(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let g = GgufFile::open(path.as_ref())?;
        let arch = g.str("general.architecture")?.to_string();
        let config = match arch.as_str() {
            "llama" => crate::llama::config(&g)?,
            "qwen2" => crate::qwen2::config(&g)?,
            "gemma3" => crate::gemma3::config(&g)?,
            other => {
                return Err(ModelError::Config {
                    path: g.path().to_path_buf(),
                    key: "general.architecture".into(),
                    detail: format!("`{other}` is not supported (llama, qwen2, gemma3)"),
                })
            }
        };
        let tokenizer = Tokenizer::from_gguf(&g)?;
        Self::from_gguf(&g, config, tokenizer)
    }

    fn from_gguf(g: &GgufFile, config: DecoderConfig, tokenizer: Tokenizer) -> Result<Self> {
        let c = &config;
        let (h, qd, kd, vd) =
            (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.v_dim);
        let t = |n: &str, shape: &[usize]| g.dequantize_shaped(n, shape);
        let has = |n: &str| g.tensor(n).is_ok();
        let lin = |n: &str, out: usize, inp: usize| -> Result<Linear> {
            let b = if has(&format!("{n}.bias")) {
                Some(t(&format!("{n}.bias"), &[out])?)
            } else {
                None
            };
            Linear::new(t(&format!("{n}.weight"), &[out, inp])?, b, out, inp)
        };
        let opt = |n: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if has(n) {
                Ok(Some(t(n, &[len])?))
            } else {
                Ok(None)
            }
        };
        let mut blocks = Vec::with_capacity(c.layers.len());
        for l in 0..c.layers.len() {
            let p = format!("blk.{l}");
            let q_norm = opt(&format!("{p}.attn_q_norm.weight"), c.head_dim)?;
            let k_norm = opt(&format!("{p}.attn_k_norm.weight"), c.head_dim)?;
            let post_attn_norm = opt(&format!("{p}.post_attention_norm.weight"), h)?;
            let post_ffn_norm = opt(&format!("{p}.post_ffw_norm.weight"), h)?;
            let need =
                |o: Option<Vec<f32>>, name: &str, wanted: bool| -> Result<Option<Vec<f32>>> {
                    if wanted && o.is_none() {
                        return Err(ModelError::MissingTensor {
                            path: g.path().to_path_buf(),
                            tensor: format!("{p}.{name}"),
                        });
                    }
                    Ok(if wanted { o } else { None })
                };
            blocks.push(Block {
                attn_norm: t(&format!("{p}.attn_norm.weight"), &[h])?,
                qkv: stack(&[
                    lin(&format!("{p}.attn_q"), qd, h)?,
                    lin(&format!("{p}.attn_k"), kd, h)?,
                    lin(&format!("{p}.attn_v"), vd, h)?,
                ])?,
                o: lin(&format!("{p}.attn_output"), h, c.heads * c.v_dim)?,
                q_norm: need(q_norm, "attn_q_norm.weight", c.qk_norm)?,
                k_norm: need(k_norm, "attn_k_norm.weight", c.qk_norm)?,
                post_attn_norm: need(post_attn_norm, "post_attention_norm.weight", c.post_norms)?,
                ffn_norm: t(&format!("{p}.ffn_norm.weight"), &[h])?,
                gate_up: stack(&[
                    lin(&format!("{p}.ffn_gate"), c.ffn, h)?,
                    lin(&format!("{p}.ffn_up"), c.ffn, h)?,
                ])?,
                down: lin(&format!("{p}.ffn_down"), h, c.ffn)?,
                post_ffn_norm: need(post_ffn_norm, "post_ffw_norm.weight", c.post_norms)?,
            });
        }
        let embed = t("token_embd.weight", &[c.vocab, h])?;
        let lm_head = if has("output.weight") { Some(lin("output", c.vocab, h)?) } else { None };
        Ok(Self {
            out_norm: t("output_norm.weight", &[h])?,
            embed,
            lm_head,
            blocks,
            path: g.path().to_path_buf(),
            config,
            tokenizer,
        })
    }

    /// Runs `tokens` after the positions already in `cache`, appending their keys and values,
    /// and returns the final (normed) hidden states `[tokens, hidden]` of the new positions.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for no tokens, an id outside the vocabulary, or a cache of another
    /// model; attention errors.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        ctx: &mut RunCtx,
        opts: ForwardOpts,
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(ModelError::Invalid("forward: no tokens".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(ModelError::Invalid(format!(
                "token id {bad} ≥ vocabulary {}",
                self.config.vocab
            )));
        }
        if cache.k.is_empty() && cache.len == 0 {
            cache.k = vec![Vec::new(); self.blocks.len()];
            cache.v = vec![Vec::new(); self.blocks.len()];
        }
        if cache.k.len() != self.blocks.len() {
            return Err(ModelError::Invalid("forward: KV cache of another model".into()));
        }
        let h = self.config.hidden;
        let chunk = if opts.chunk == 0 { tokens.len() } else { opts.chunk };
        let mut out = Vec::with_capacity(tokens.len() * h);
        for part in tokens.chunks(chunk) {
            out.extend(self.forward_chunk(part, cache, ctx)?);
        }
        Ok(out)
    }

    fn forward_chunk(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        ctx: &mut RunCtx,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, n, pos0) = (c.hidden, tokens.len(), cache.len);
        let th = ctx.dense();
        let mut x = vec![0f32; n * h];
        for (t, &id) in tokens.iter().enumerate() {
            let src = &self.embed[id as usize * h..(id as usize + 1) * h];
            for (d, s) in x[t * h..(t + 1) * h].iter_mut().zip(src) {
                *d = s * c.embed_scale;
            }
        }
        let (qd, kd, vd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.v_dim);
        let mut xn = vec![0f32; n * h];
        let mut q = vec![0f32; n * qd];
        let mut kn = vec![0f32; n * kd];
        let mut vn = vec![0f32; n * vd];
        let mut a = vec![0f32; n * c.heads * c.v_dim];
        let mut tmp = vec![0f32; n * h];
        let mut qkv = vec![0f32; n * (qd + kd + vd)];
        let mut gu = vec![0f32; n * 2 * c.ffn];
        let mut g = vec![0f32; n * c.ffn];
        // One cos/sin table per distinct RoPE (Gemma has two), shared by the layers.
        let mut tables: Vec<(&crate::ops::Rope, crate::ops::RopeTable)> = Vec::new();
        let mut table_of = Vec::with_capacity(c.layers.len());
        for la in &c.layers {
            match tables.iter().position(|(r, _)| r.same_as(&la.rope)) {
                Some(i) => table_of.push(i),
                None => {
                    tables.push((&la.rope, la.rope.table(pos0, n)));
                    table_of.push(tables.len() - 1);
                }
            }
        }
        for (li, (b, la)) in self.blocks.iter().zip(&c.layers).enumerate() {
            rms_norm(&x, h, &b.attn_norm, c.eps, &mut xn);
            b.qkv.forward(&xn, n, &mut qkv, th);
            split3(&qkv, [&mut q, &mut kn, &mut vn], [qd, kd, vd]);
            if let (Some(qn), Some(knw)) = (&b.q_norm, &b.k_norm) {
                rms_norm_inplace(&mut q, c.head_dim, qn, c.eps);
                rms_norm_inplace(&mut kn, c.head_dim, knw, c.eps);
            }
            let table = &tables[table_of[li]].1;
            table.apply(&mut q, c.heads, c.head_dim);
            table.apply(&mut kn, c.kv_heads, c.head_dim);
            cache.k[li].extend_from_slice(&kn);
            cache.v[li].extend_from_slice(&vn);
            let s_kv = pos0 + n;
            let mask = match la.window {
                Some(w) => Mask::Window { left: Some(w.saturating_sub(1)), right: Some(0) },
                None => Mask::Causal,
            };
            let params = Params { scale: Some(c.attn_scale), ..Params::default() }.with_mask(mask);
            let input = AttnInput {
                layer: li,
                batch: 1,
                q: &q,
                k: &cache.k[li],
                v: &cache.v[li],
                s_q: n,
                s_kv,
                heads: c.heads,
                kv_heads: c.kv_heads,
                head_dim: c.head_dim,
                v_dim: c.v_dim,
            };
            attention(ctx, &input, &params, &mut a)?;
            b.o.forward(&a, n, &mut tmp, th);
            if let Some(w) = &b.post_attn_norm {
                rms_norm_inplace(&mut tmp, h, w, c.eps);
            }
            add(&mut x, &tmp);
            rms_norm(&x, h, &b.ffn_norm, c.eps, &mut xn);
            b.gate_up.forward(&xn, n, &mut gu, th);
            gated(&gu, &mut g, c.ffn, c.act);
            b.down.forward(&g, n, &mut tmp, th);
            if let Some(w) = &b.post_ffn_norm {
                rms_norm_inplace(&mut tmp, h, w, c.eps);
            }
            add(&mut x, &tmp);
        }
        cache.len += n;
        rms_norm_inplace(&mut x, h, &self.out_norm, c.eps);
        Ok(x)
    }

    /// Greedy generation: prefills `prompt` with `ctx`'s plan, then decodes up to `max_new`
    /// tokens one at a time with `decode_ctx` (exact attention for the decode steps is what
    /// sparse-prefill methods such as MInference assume), stopping early at EOS or at any of
    /// `stop` tokens. Returns the generated ids (without the prompt).
    ///
    /// # Errors
    /// As [`Decoder::forward`]; [`ModelError::Invalid`] when prompt + `max_new` exceeds the
    /// model's context.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        ctx: &mut RunCtx,
        decode_ctx: &mut RunCtx,
    ) -> Result<Vec<u32>> {
        if prompt.len() + max_new > self.config.context {
            return Err(ModelError::Invalid(format!(
                "{} prompt tokens + {max_new} new exceed the context of {}",
                prompt.len(),
                self.config.context
            )));
        }
        let mut cache = KvCache::default();
        let h = self.forward(prompt, &mut cache, ctx, ForwardOpts::default())?;
        let hd = self.config.hidden;
        let mut last = h[h.len() - hd..].to_vec();
        let mut out = Vec::with_capacity(max_new);
        let eos = self.tokenizer.eos_id();
        for _ in 0..max_new {
            let logits = self.logits_block(&last, decode_ctx.dense());
            let next = logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0 as u32;
            if Some(next) == eos || stop.contains(&next) {
                break;
            }
            out.push(next);
            last = self.forward(&[next], &mut cache, decode_ctx, ForwardOpts::default())?;
        }
        Ok(out)
    }

    /// Logits `[rows, vocab]` of final hidden states `[rows, hidden]`.
    pub fn logits_block(&self, hidden: &[f32], th: Threads) -> Vec<f32> {
        let c = &self.config;
        let rows = hidden.len() / c.hidden;
        let mut y = vec![0f32; rows * c.vocab];
        match &self.lm_head {
            Some(l) => l.forward(hidden, rows, &mut y, th),
            // Tied: the embedding matrix [vocab, hidden] is the output layer's weight.
            None => crate::ops::matmul_bt(hidden, rows, c.hidden, &self.embed, c.vocab, &mut y, th),
        }
        if let Some(cap) = c.final_softcap {
            for v in &mut y {
                *v = cap * (*v / cap).tanh();
            }
        }
        y
    }

    /// `log p(targets[i] | …)` for each final hidden state row `i`, computed in blocks of rows
    /// so that memory stays O(rows·hidden + block·vocab).
    ///
    /// # Errors
    /// [`ModelError::Invalid`] when the counts differ or a target is outside the vocabulary.
    pub fn log_probs(&self, hidden: &[f32], targets: &[u32], th: Threads) -> Result<Vec<f64>> {
        let (h, vocab) = (self.config.hidden, self.config.vocab);
        if hidden.len() != targets.len() * h {
            return Err(ModelError::Invalid(format!(
                "log_probs: {} hidden rows for {} targets",
                hidden.len() / h,
                targets.len()
            )));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Invalid(format!("target id {bad} ≥ vocabulary {vocab}")));
        }
        let mut out = Vec::with_capacity(targets.len());
        for (rows, tg) in hidden.chunks(256 * h).zip(targets.chunks(256)) {
            let logits = self.logits_block(rows, th);
            for (r, &t) in logits.chunks(vocab).zip(tg) {
                out.push(crate::ops::log_softmax_at(r, t as usize));
            }
        }
        Ok(out)
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `out[t] = act(gu[t, ..ffn]) · gu[t, ffn..]` per row of the stacked gate/up output.
fn gated(gu: &[f32], out: &mut [f32], ffn: usize, act: Activation) {
    use rayon::prelude::*;
    out.par_chunks_mut(ffn).zip(gu.par_chunks(2 * ffn)).for_each(|(o, row)| {
        let (g, u) = row.split_at(ffn);
        gated_act(g, u, o, act == Activation::GeluTanh);
    });
}

/// Splits rows of `[n, a + b + c]` into `[n, a]`, `[n, b]`, `[n, c]`.
fn split3(x: &[f32], out: [&mut [f32]; 3], widths: [usize; 3]) {
    let w: usize = widths.iter().sum();
    let [o0, o1, o2] = out;
    for (t, row) in x.chunks(w).enumerate() {
        let (a, rest) = row.split_at(widths[0]);
        let (b, c) = rest.split_at(widths[1]);
        o0[t * widths[0]..(t + 1) * widths[0]].copy_from_slice(a);
        o1[t * widths[1]..(t + 1) * widths[1]].copy_from_slice(b);
        o2[t * widths[2]..(t + 1) * widths[2]].copy_from_slice(c);
    }
}

/// Stacks layers with the same input into one (outputs concatenated in order).
fn stack(parts: &[Linear]) -> Result<Linear> {
    let inp = parts[0].inp;
    let out = parts.iter().map(|l| l.out).sum();
    let mut w = Vec::with_capacity(out * inp);
    for l in parts {
        w.extend_from_slice(&l.w);
    }
    let b = if parts.iter().any(|l| l.b.is_some()) {
        let mut b = Vec::with_capacity(out);
        for l in parts {
            match &l.b {
                Some(x) => b.extend_from_slice(x),
                None => b.extend(std::iter::repeat_n(0.0, l.out)),
            }
        }
        Some(b)
    } else {
        None
    };
    Linear::new(w, b, out, inp)
}

/// Reads `{arch}.{key}` as u32.
pub(crate) fn arch_u32(g: &GgufFile, arch: &str, key: &str) -> Result<u32> {
    g.u32(&format!("{arch}.{key}"))
}

/// Builds one RoPE per layer.
pub(crate) fn rope_layers(
    n: usize,
    style: RopeStyle,
    rot_dim: usize,
    theta: impl Fn(usize) -> f64,
    window: impl Fn(usize) -> Option<usize>,
) -> Vec<LayerAttn> {
    (0..n)
        .map(|l| LayerAttn { window: window(l), rope: Rope::new(style, rot_dim, theta(l), 1.0) })
        .collect()
}
