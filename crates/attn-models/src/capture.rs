//! Capture hooks: record the Q, K, V (after RoPE and norms, exactly what the attention call saw)
//! of chosen (layer, head) pairs, and on request the exact attention probabilities, to memory or
//! to a `.safetensors` file that the analysis and planning tools read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use attn::{Inputs, Params, Problem, TensorRef};

use crate::error::{ModelError, Result};
use crate::ops::RopeStyle;

/// What to record.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Layers to record; `None` = all.
    pub layers: Option<BTreeSet<usize>>,
    /// Query heads to record; `None` = all.
    pub heads: Option<BTreeSet<usize>>,
    /// Refuse to hold more than this many bytes (0 = no limit).
    pub max_bytes: usize,
    /// What was recorded, in call order.
    pub items: Vec<Captured>,
    /// The RoPE each recorded layer applied before the call (set by the caller that knows the
    /// model; written to the file's metadata so that readers can move records to other
    /// positions).
    pub rope: BTreeMap<usize, RopeMeta>,
    bytes: usize,
}

impl Capture {
    /// Records the given layers and heads (`None` = all).
    pub fn new(layers: Option<BTreeSet<usize>>, heads: Option<BTreeSet<usize>>) -> Self {
        Self { layers, heads, ..Self::default() }
    }

    /// Whether any head of `layer` is recorded.
    pub fn wants_layer(&self, layer: usize) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer))
    }

    /// Whether (layer, head) is recorded.
    pub fn wants(&self, layer: usize, head: usize) -> bool {
        self.wants_layer(layer) && self.heads.as_ref().is_none_or(|h| h.contains(&head))
    }

    /// Adds one record.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] when the records would exceed `max_bytes`.
    pub fn push(&mut self, c: Captured) -> Result<()> {
        let add = 4 * (c.q.len() + c.k.len() + c.v.len());
        if self.max_bytes > 0 && self.bytes + add > self.max_bytes {
            return Err(ModelError::Invalid(format!(
                "capture would hold {} bytes, above its limit of {}",
                self.bytes + add,
                self.max_bytes
            )));
        }
        self.bytes += add;
        self.items.push(c);
        Ok(())
    }

    /// Writes every record to one `.safetensors` file: tensors `L{layer}.H{head}.B{b}.{q,k,v}`
    /// (`[S, D]` f32) and, where `probs_up_to ≥ S_kv`, `….probs` (`[S_q, S_kv]`); the metadata
    /// holds each record's scale, mask and q-offset as JSON.
    ///
    /// # Errors
    /// [`ModelError::Io`] for the write; attention errors while computing probabilities.
    pub fn save_safetensors(&self, path: impl AsRef<Path>, probs_up_to: usize) -> Result<()> {
        let path = path.as_ref();
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        let mut meta = BTreeMap::new();
        for c in &self.items {
            let key = format!("L{}.H{}.B{}", c.layer, c.head, c.batch_index);
            let bytes = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
            tensors.push((format!("{key}.q"), bytes(&c.q), vec![c.s_q, c.head_dim]));
            tensors.push((format!("{key}.k"), bytes(&c.k), vec![c.s_kv, c.head_dim]));
            tensors.push((format!("{key}.v"), bytes(&c.v), vec![c.s_kv, c.v_dim]));
            if c.s_kv <= probs_up_to {
                tensors.push((
                    format!("{key}.probs"),
                    bytes(&c.probabilities()?),
                    vec![c.s_q, c.s_kv],
                ));
            }
            // JSON (readers such as `attn bench --qkv` take the scale from it); `null` where the
            // model left a parameter at its default, the mask as its debug text.
            let mut record = serde_json::json!({
                "scale": c.params.scale,
                "softcap": c.params.softcap,
                "mask": format!("{:?}", c.params.mask),
                "q_offset": c.params.q_offset,
            });
            if let Some(r) = self.rope.get(&c.layer) {
                record["rope"] = r.to_json();
            }
            meta.insert(key, record.to_string());
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| ModelError::Invalid(format!("capture tensor {n}: {e}")))
            })
            .collect::<Result<_>>()?;
        let meta: std::collections::HashMap<String, String> = meta.into_iter().collect();
        safetensors::serialize_to_file(views, &Some(meta), path)
            .map_err(|e| ModelError::io(path, std::io::Error::other(e.to_string())))
    }
}

/// The rotary embedding a layer applied to its queries and keys (row `t` of a record at
/// position `q_offset + t`): pairs of features rotated by `position · inv_freq[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeMeta {
    /// Which features pair up.
    pub style: RopeStyle,
    /// Rotated features per head (the first `rot_dim`).
    pub rot_dim: usize,
    /// Radians per position of each pair.
    pub inv_freq: Vec<f64>,
}

impl RopeMeta {
    /// The metadata of `rope`.
    pub fn of(rope: &crate::ops::Rope) -> Self {
        Self { style: rope.style, rot_dim: rope.rot_dim, inv_freq: rope.inv_freq().to_vec() }
    }

    /// The RoPE it describes.
    pub fn rope(&self) -> crate::ops::Rope {
        crate::ops::Rope::from_inv_freq(self.style, self.inv_freq.clone())
    }

    /// The record's `rope` metadata: `{"pairs": "half" | "interleaved", "rot_dim", "inv_freq"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "pairs": match self.style {
                RopeStyle::Interleaved => "interleaved",
                RopeStyle::HalfSplit => "half",
            },
            "rot_dim": self.rot_dim,
            "inv_freq": self.inv_freq,
        })
    }

    /// Reads [`RopeMeta::to_json`]'s form; `None` when a field is missing or inconsistent.
    pub fn from_json(j: &serde_json::Value) -> Option<Self> {
        let style = match j.get("pairs")?.as_str()? {
            "interleaved" => RopeStyle::Interleaved,
            "half" => RopeStyle::HalfSplit,
            _ => return None,
        };
        let inv_freq = j
            .get("inv_freq")?
            .as_array()?
            .iter()
            .map(|x| x.as_f64())
            .collect::<Option<Vec<_>>>()?;
        let rot_dim = usize::try_from(j.get("rot_dim")?.as_u64()?).ok()?;
        (rot_dim == 2 * inv_freq.len()).then_some(Self { style, rot_dim, inv_freq })
    }
}

/// The inputs of one attention head as the call saw them.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Layer.
    pub layer: usize,
    /// Query head.
    pub head: usize,
    /// The key/value head it reads.
    pub kv_head: usize,
    /// Sequence within the batch.
    pub batch_index: usize,
    /// Query rows.
    pub s_q: usize,
    /// Key rows.
    pub s_kv: usize,
    /// Query/key head size.
    pub head_dim: usize,
    /// Value head size.
    pub v_dim: usize,
    /// `[S_q, D]`.
    pub q: Vec<f32>,
    /// `[S_kv, D]`.
    pub k: Vec<f32>,
    /// `[S_kv, D_v]`.
    pub v: Vec<f32>,
    /// Scale, softcap, mask and offset of the call (ALiBi slopes narrowed to this head's run).
    pub params: Params,
}

impl Captured {
    /// The inputs as `[1, 1, S, D]` views.
    ///
    /// # Errors
    /// Never for a record made by a model; shape errors otherwise.
    pub fn inputs(&self) -> Result<Inputs<'_>> {
        Ok(Inputs {
            q: TensorRef::new(&self.q[..], [1, 1, self.s_q, self.head_dim])?,
            k: TensorRef::new(&self.k[..], [1, 1, self.s_kv, self.head_dim])?,
            v: TensorRef::new(&self.v[..], [1, 1, self.s_kv, self.v_dim])?,
        })
    }

    /// Parameters for the single-head problem of [`Captured::inputs`] (ALiBi already narrowed to
    /// this head, key padding to this sequence).
    pub fn head_params(&self) -> Params {
        self.params.clone()
    }

    /// Exact attention probabilities `[S_q, S_kv]` (f64 reference, stored as f32); masked
    /// entries are 0.
    ///
    /// # Errors
    /// Attention errors for inconsistent records.
    pub fn probabilities(&self) -> Result<Vec<f32>> {
        let inputs = self.inputs()?;
        let p = Problem::from_tensors(&inputs.q, &inputs.k, &inputs.v)?;
        let r = self.head_params().resolve(&p)?;
        let mut scores = vec![0f64; self.s_kv];
        let mut o = vec![0f64; self.v_dim];
        let mut out = vec![0f32; self.s_q * self.s_kv];
        for i in 0..self.s_q {
            let lse = attn::methods::sdpa::reference::attend_row(
                &p,
                &inputs,
                &r,
                [0, 0, i],
                &mut scores,
                &mut o,
            );
            if lse.is_finite() {
                for (dst, &s) in out[i * self.s_kv..(i + 1) * self.s_kv].iter_mut().zip(&scores) {
                    *dst = (s - lse).exp() as f32;
                }
            }
        }
        Ok(out)
    }
}
