//! One error type for everything that reads models, tokenizers and data sets from disk.
//!
//! Every variant names the file (and the tensor or key, where there is one) so that a user can
//! tell which download is broken without a debugger.

use std::path::PathBuf;

/// What went wrong while fetching, loading, tokenizing or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The operating system refused a read, write or mapping.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what its format says: truncated, a lying header, a bad magic number.
    #[error("{}: malformed {format}: {detail}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format being read ("GGUF", "safetensors", "tokenizer.json", …).
        format: &'static str,
        /// What exactly is wrong, with the offending offset or field.
        detail: String,
    },
    /// A tensor stored in a type this crate cannot decode.
    #[error("{}: tensor `{tensor}` has unsupported type {dtype}", path.display())]
    UnknownDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type as the file names it.
        dtype: String,
    },
    /// A tensor the architecture needs is not in the file.
    #[error("{}: missing tensor `{tensor}`", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A tensor has a shape other than the configuration implies.
    #[error("{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}", path.display())]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What the configuration implies.
        expected: Vec<usize>,
        /// What the file holds.
        found: Vec<usize>,
    },
    /// A configuration or metadata key is missing or has the wrong type or an invalid value.
    #[error("{}: config `{key}`: {detail}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A download or extraction failed (checksum mismatch, client missing, package not found).
    #[error("fetch `{name}`: {detail}")]
    Fetch {
        /// The asset.
        name: String,
        /// What failed.
        detail: String,
    },
    /// A request the model cannot serve (too many tokens, empty input, unknown model name).
    #[error("{0}")]
    Invalid(String),
    /// The attention call failed.
    #[error(transparent)]
    Attention(#[from] attn::Error),
}

impl ModelError {
    /// [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// [`ModelError::Malformed`] for `path`.
    pub fn malformed(
        path: impl Into<PathBuf>,
        format: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self::Malformed { path: path.into(), format, detail: detail.into() }
    }
}

/// Result with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
