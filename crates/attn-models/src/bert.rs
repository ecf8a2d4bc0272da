//! BERT encoders (`BertModel` checkpoints such as all-MiniLM-L6-v2) and sentence-transformers
//! pooling: token embeddings + positions + segment → post-LN encoder layers → mean over the real
//! tokens → L2 normalisation.
//!
//! Names follow the HF checkpoint: `embeddings.*`, `encoder.layer.N.attention.self.{query,key,
//! value}`, `…attention.output.{dense,LayerNorm}`, `…intermediate.dense`, `…output.{dense,LayerNorm}`
//! (an optional `bert.` prefix is accepted).

use std::path::{Path, PathBuf};

use attn::{Mask, Params};
use rayon::prelude::*;
use serde::Deserialize;

use crate::attention::{attention, AttnInput, RunCtx};
use crate::error::{ModelError, Result};
use crate::ops::{gelu_erf_slice, l2_normalize, layer_norm, Linear};
use crate::tokenizer::Tokenizer;
use crate::weights::SafetensorsFile;

/// `config.json` of a BERT checkpoint (the fields the forward pass needs).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Model width.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Positions.
    pub max_position_embeddings: usize,
    /// Segment types.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f32,
    /// Activation (only `gelu` is supported).
    #[serde(default = "gelu")]
    pub hidden_act: String,
}

fn two() -> usize {
    2
}
fn eps() -> f32 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln1: (Vec<f32>, Vec<f32>),
    up: Linear,
    down: Linear,
    ln2: (Vec<f32>, Vec<f32>),
}

/// A loaded BERT encoder with its tokenizer.
pub struct Bert {
    /// Configuration.
    pub config: BertConfig,
    /// The tokenizer (`tokenizer.json`).
    pub tokenizer: Tokenizer,
    /// Longest input in tokens (sentence-transformers' `max_seq_length`, else the positions).
    pub max_tokens: usize,
    /// Where it was loaded from.
    pub dir: PathBuf,
    word: Vec<f32>,
    pos: Vec<f32>,
    seg: Vec<f32>,
    ln0: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert").field("dir", &self.dir).field("config", &self.config).finish()
    }
}

impl Bert {
    /// Loads `dir/{config.json, model.safetensors, tokenizer.json}` (and
    /// `sentence_bert_config.json` for the input limit, when present).
    ///
    /// # Errors
    /// Typed errors naming the file and tensor for anything missing or malformed.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let config: BertConfig = serde_json::from_str(&text)
            .map_err(|e| ModelError::malformed(&cfg_path, "BERT config.json", e.to_string()))?;
        if config.hidden_act != "gelu" {
            return Err(ModelError::Config {
                path: cfg_path,
                key: "hidden_act".into(),
                detail: format!("`{}` is not supported (gelu only)", config.hidden_act),
            });
        }
        if config.num_attention_heads == 0
            || !config.hidden_size.is_multiple_of(config.num_attention_heads)
        {
            return Err(ModelError::Config {
                path: cfg_path,
                key: "num_attention_heads".into(),
                detail: format!(
                    "{} heads do not divide width {}",
                    config.num_attention_heads, config.hidden_size
                ),
            });
        }
        let mut max_tokens = config.max_position_embeddings;
        let sb = dir.join("sentence_bert_config.json");
        if let Ok(t) = std::fs::read_to_string(&sb) {
            let v: serde_json::Value = serde_json::from_str(&t)
                .map_err(|e| ModelError::malformed(&sb, "JSON", e.to_string()))?;
            if let Some(m) = v.get("max_seq_length").and_then(serde_json::Value::as_u64) {
                max_tokens = max_tokens.min(m as usize);
            }
        }
        let tokenizer = Tokenizer::from_tokenizer_json(dir.join("tokenizer.json"))?;
        let st = SafetensorsFile::open(dir.join("model.safetensors"))?;
        let prefix =
            if st.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let (h, f) = (config.hidden_size, config.intermediate_size);
        let t = |n: &str, shape: &[usize]| st.f32(&format!("{prefix}{n}"), shape);
        let lin = |n: &str, out: usize, inp: usize| -> Result<Linear> {
            Linear::new(
                t(&format!("{n}.weight"), &[out, inp])?,
                Some(t(&format!("{n}.bias"), &[out])?),
                out,
                inp,
            )
        };
        let ln = |n: &str| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((t(&format!("{n}.weight"), &[h])?, t(&format!("{n}.bias"), &[h])?))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                q: lin(&format!("{p}.attention.self.query"), h, h)?,
                k: lin(&format!("{p}.attention.self.key"), h, h)?,
                v: lin(&format!("{p}.attention.self.value"), h, h)?,
                o: lin(&format!("{p}.attention.output.dense"), h, h)?,
                ln1: ln(&format!("{p}.attention.output.LayerNorm"))?,
                up: lin(&format!("{p}.intermediate.dense"), f, h)?,
                down: lin(&format!("{p}.output.dense"), h, f)?,
                ln2: ln(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            word: t("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            pos: t("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            seg: t("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?,
            ln0: ln("embeddings.LayerNorm")?,
            layers,
            config,
            tokenizer,
            max_tokens,
            dir,
        })
    }

    /// Tokenizes (with `[CLS] … [SEP]`), truncating to [`Bert::max_tokens`] as
    /// sentence-transformers does (the last token stays `[SEP]`).
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text, true)?;
        if ids.len() > self.max_tokens {
            let last = *ids.last().unwrap_or(&0);
            ids.truncate(self.max_tokens);
            if let Some(l) = ids.last_mut() {
                *l = last;
            }
        }
        Ok(ids)
    }

    /// Last hidden states `[B·S, hidden]` of a padded batch (`S` = the longest sequence).
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for an empty batch, an empty sequence, an id out of the vocabulary
    /// or a sequence longer than the positions; attention errors.
    pub fn hidden_states(&self, batch: &[Vec<u32>], ctx: &mut RunCtx) -> Result<(Vec<f32>, usize)> {
        let c = &self.config;
        let (h, nh) = (c.hidden_size, c.num_attention_heads);
        let d = h / nh;
        if batch.is_empty() || batch.iter().any(Vec::is_empty) {
            return Err(ModelError::Invalid("BERT input: empty batch or empty sequence".into()));
        }
        let s = batch.iter().map(Vec::len).max().unwrap_or(0);
        if s > c.max_position_embeddings {
            return Err(ModelError::Invalid(format!(
                "BERT input of {s} tokens; the model has {} positions",
                c.max_position_embeddings
            )));
        }
        let b = batch.len();
        let n = b * s;
        let mut x = vec![0f32; n * h];
        for (bi, ids) in batch.iter().enumerate() {
            for t in 0..s {
                let id = ids.get(t).copied().unwrap_or(0) as usize;
                if id >= c.vocab_size {
                    return Err(ModelError::Invalid(format!(
                        "token id {id} ≥ vocabulary {}",
                        c.vocab_size
                    )));
                }
                let row = &mut x[(bi * s + t) * h..(bi * s + t + 1) * h];
                for (j, r) in row.iter_mut().enumerate() {
                    *r = self.word[id * h + j] + self.pos[t * h + j] + self.seg[j];
                }
            }
        }
        layer_norm(&mut x, h, &self.ln0.0, &self.ln0.1, c.layer_norm_eps);
        let lengths: Vec<usize> = batch.iter().map(Vec::len).collect();
        let params = Params::default().with_mask(Mask::KeyPadding { lengths });
        let th = ctx.dense();
        let (mut q, mut k, mut v, mut a, mut tmp) = (
            vec![0f32; n * h],
            vec![0f32; n * h],
            vec![0f32; n * h],
            vec![0f32; n * h],
            vec![0f32; n * h],
        );
        let mut ff = vec![0f32; n * c.intermediate_size];
        for (li, l) in self.layers.iter().enumerate() {
            l.q.forward(&x, n, &mut q, th);
            l.k.forward(&x, n, &mut k, th);
            l.v.forward(&x, n, &mut v, th);
            let input = AttnInput {
                layer: li,
                batch: b,
                q: &q,
                k: &k,
                v: &v,
                s_q: s,
                s_kv: s,
                heads: nh,
                kv_heads: nh,
                head_dim: d,
                v_dim: d,
            };
            attention(ctx, &input, &params, &mut a)?;
            l.o.forward(&a, n, &mut tmp, th);
            for (xi, ti) in x.iter_mut().zip(&tmp) {
                *xi += ti;
            }
            layer_norm(&mut x, h, &l.ln1.0, &l.ln1.1, c.layer_norm_eps);
            l.up.forward(&x, n, &mut ff, th);
            ff.par_chunks_mut(4096).for_each(gelu_erf_slice);
            l.down.forward(&ff, n, &mut tmp, th);
            for (xi, ti) in x.iter_mut().zip(&tmp) {
                *xi += ti;
            }
            layer_norm(&mut x, h, &l.ln2.0, &l.ln2.1, c.layer_norm_eps);
        }
        Ok((x, s))
    }

    /// Sentence embeddings of token-id sequences: mean over each sequence's tokens, then unit
    /// L2 norm; `[B, hidden]` row-major.
    ///
    /// # Errors
    /// As [`Bert::hidden_states`].
    pub fn embed_ids(&self, batch: &[Vec<u32>], ctx: &mut RunCtx) -> Result<Vec<f32>> {
        let h = self.config.hidden_size;
        let (x, s) = self.hidden_states(batch, ctx)?;
        let mut e = vec![0f32; batch.len() * h];
        for (bi, ids) in batch.iter().enumerate() {
            let mut acc = vec![0f64; h];
            for t in 0..ids.len() {
                for (a, &v) in acc.iter_mut().zip(&x[(bi * s + t) * h..(bi * s + t + 1) * h]) {
                    *a += f64::from(v);
                }
            }
            for (o, a) in e[bi * h..(bi + 1) * h].iter_mut().zip(acc) {
                *o = (a / ids.len() as f64) as f32;
            }
        }
        l2_normalize(&mut e, h);
        Ok(e)
    }

    /// Sentence embeddings of texts, in batches of `batch_size` sorted by length (as
    /// sentence-transformers does, so padding stays small); rows in input order.
    ///
    /// # Errors
    /// As [`Bert::hidden_states`], and tokenizer errors.
    pub fn embed(&self, texts: &[&str], batch_size: usize, ctx: &mut RunCtx) -> Result<Vec<f32>> {
        let h = self.config.hidden_size;
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenize(t)).collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![0f32; texts.len() * h];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let e = self.embed_ids(&batch, ctx)?;
            for (j, &i) in chunk.iter().enumerate() {
                out[i * h..(i + 1) * h].copy_from_slice(&e[j * h..(j + 1) * h]);
            }
        }
        Ok(out)
    }
}
