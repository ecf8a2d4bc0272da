//! Loading a model by name (fetched on demand) or by path, whatever its family.

use std::path::{Path, PathBuf};

use crate::bert::Bert;
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};

/// The models attn knows by name, with what they are.
pub const KNOWN: &[(&str, &str)] = &[
    ("minilm", "all-MiniLM-L6-v2: BERT encoder, 6 layers, 12 heads, sentence embeddings"),
    ("smollm2", "SmolLM2-135M-Instruct: Llama, 30 layers, GQA 9/3, 8k context"),
    ("gemma3", "Gemma-3-270M base: 18 layers, MQA, head 256, sliding window 512 + global, 32k"),
    ("qwen2", "Qwen2.5-Coder-0.5B-Instruct: Qwen2, 24 layers, GQA 14/2, 32k"),
];

/// A loaded model of either kind.
#[derive(Debug)]
pub enum Model {
    /// An encoder (sentence embeddings).
    Encoder(Bert),
    /// A causal language model.
    Decoder(Decoder),
}

/// Where a model name or path resolves to: a known name is fetched (if needed) into the cache;
/// anything else must be a folder with `config.json` + `model.safetensors` or a `.gguf` file.
///
/// # Errors
/// Fetch errors; [`ModelError::Invalid`] for a path that does not exist.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    if KNOWN.iter().any(|(n, _)| *n == name_or_path) {
        return crate::fetch::ensure(name_or_path);
    }
    let p = PathBuf::from(name_or_path);
    if p.exists() {
        Ok(p)
    } else {
        let names: Vec<&str> = KNOWN.iter().map(|(n, _)| *n).collect();
        Err(ModelError::Invalid(format!(
            "model `{name_or_path}` is neither a known name ({}) nor an existing path",
            names.join(", ")
        )))
    }
}

/// Loads a model by name or path.
///
/// # Errors
/// As [`resolve`], and the loaders' typed errors.
pub fn load(name_or_path: &str) -> Result<Model> {
    load_path(&resolve(name_or_path)?)
}

/// Loads from a folder (BERT safetensors) or a `.gguf` file.
///
/// # Errors
/// The loaders' typed errors; [`ModelError::Invalid`] for a path of neither kind.
pub fn load_path(p: &Path) -> Result<Model> {
    if p.is_dir() {
        if p.join("config.json").exists() {
            return Ok(Model::Encoder(Bert::load(p)?));
        }
        return Err(ModelError::Invalid(format!("{}: folder without config.json", p.display())));
    }
    Ok(Model::Decoder(Decoder::load_gguf(p)?))
}

impl Model {
    /// The causal LM, or an error naming what this model is.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for an encoder.
    pub fn into_decoder(self) -> Result<Decoder> {
        match self {
            Model::Decoder(d) => Ok(d),
            Model::Encoder(b) => Err(ModelError::Invalid(format!(
                "{} is an encoder; this needs a causal language model",
                b.dir.display()
            ))),
        }
    }

    /// The encoder, or an error naming what this model is.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for a causal LM.
    pub fn into_encoder(self) -> Result<Bert> {
        match self {
            Model::Encoder(b) => Ok(b),
            Model::Decoder(d) => Err(ModelError::Invalid(format!(
                "{} is a causal language model; this needs an encoder",
                d.path.display()
            ))),
        }
    }
}
