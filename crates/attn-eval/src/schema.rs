//! One row of `results.jsonl`: a (task, model, dataset, method, setting) with its quality and
//! cost numbers. The exact baseline is a row of its own (method `exact`) with the same task,
//! model, dataset and setting, so every comparison in the report pairs rows by [`Row::key`].
//!
//! Schema version 1. Fields absent for a task are `null`/omitted; readers must ignore unknown
//! fields (newer writers may add some).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema version written in every row.
pub const SCHEMA_VERSION: u32 = 1;

/// The status of a row whose method cannot run the model's attention problem at all (its
/// mask, head size or layout is outside what the method is defined for): not a failure, and not
/// counted as one.
pub const NOT_APPLICABLE: &str = "n/a";

/// One result row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// `lm` (language modelling), `embed` (embedding fidelity), `retrieval`, `fidelity`.
    pub task: String,
    /// Model name (`minilm`, `smollm2`, `gemma3`, `qwen2`) or path.
    pub model: String,
    /// Data set (`lee`, `emma`, `essays`, … ; for retrieval the sub-task, e.g. `passkey`, `niah_single_1`).
    pub dataset: String,
    /// Method label (`exact`, `sdpa-flash`, `streaming:sink=4,window=256`, `plan:FILE`).
    pub method: String,
    /// Settings that define the comparison (tokens, window, stride, context length, seed, …).
    pub setting: BTreeMap<String, serde_json::Value>,
    /// `ok`, `failed`, or [`NOT_APPLICABLE`] (`n/a`: the method cannot run this model's
    /// attention at all, e.g. a causal-only method on a bidirectional encoder).
    pub status: String,
    /// The error when failed; why the method does not apply when `n/a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Quality numbers.
    #[serde(default)]
    pub quality: Quality,
    /// Cost numbers.
    #[serde(default)]
    pub cost: Cost,
    /// Where and how it ran.
    #[serde(default)]
    pub env: BTreeMap<String, serde_json::Value>,
}

impl Row {
    /// What identifies the comparison this row belongs to (everything but the method).
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.task,
            self.model,
            self.dataset,
            serde_json::to_string(&self.setting).unwrap_or_default()
        )
    }

    /// What identifies this row (for resuming).
    pub fn id(&self) -> String {
        format!("{}|{}", self.key(), self.method)
    }
}

/// Quality numbers; each task fills its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Perplexity (lm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Mean KL(exact ‖ method) of next-token distributions, nats (lm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_to_exact: Option<f64>,
    /// Fraction of positions whose arg-max token equals the exact run's (lm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// Mean loss (nats) per position bucket: `[start, end, loss]` (lm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_by_position: Vec<(usize, usize, f64)>,
    /// Mean cosine of embeddings to the exact run's (embed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_mean: Option<f64>,
    /// Smallest cosine to the exact run (embed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_min: Option<f64>,
    /// Pearson correlation with human judgements (embed, Lee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pearson: Option<f64>,
    /// Spearman correlation with human judgements (embed, Lee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    /// Exact-match accuracy (retrieval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Score of each sample in `[0, 1]`, in sample order (retrieval): which samples a method
    /// answered, to compare with exact's sample by sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_scores: Vec<f64>,
    /// Per sample: whether the decoded answer is the same string as exact's (retrieval).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub same_as_exact: Vec<bool>,
    /// Per (layer, head): relative Frobenius error of the attention output to exact (fidelity);
    /// `[layer][head]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub head_error: Vec<Vec<f64>>,
    /// Per (layer, head): attention mass of the exact probabilities on the method's support.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub head_recall: Vec<Vec<f64>>,
}

/// Cost numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Wall seconds of the model forward passes (prefill), summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_s: Option<f64>,
    /// Wall seconds inside attention calls, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_s: Option<f64>,
    /// Wall seconds inside attention calls per layer, indexed by layer (summed over the run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_by_layer_s: Vec<f64>,
    /// The layers where the method's plan runs something other than exact, when that is not
    /// every layer (a per-layer plan); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_layers: Vec<usize>,
    /// (query, key) pairs scored by the method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_pairs: Option<u64>,
    /// (query, key) pairs exact attention scores under the same masks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_pairs: Option<u64>,
    /// Tokens per second of the forward passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Peak resident memory of the process after the run, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}
