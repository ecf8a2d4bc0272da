//! Tokenizers of the supported models, behind one type.
//!
//! - [`Tokenizer::from_tokenizer_json`]: a Hugging Face `tokenizer.json` (all-MiniLM-L6-v2's
//!   uncased WordPiece), run by the `tokenizers` crate. The file's truncation and padding settings
//!   are switched off: a caller gets every token and decides itself how to cut or pad.
//! - [`Tokenizer::from_gguf`] with `tokenizer.ggml.model = gpt2`: byte-level BPE from the GGUF
//!   vocabulary and merges, built from the `tokenizers` crate's parts, with the pre-tokenizer the
//!   GGUF names in `tokenizer.ggml.pre` (`smollm`: each digit alone, then the GPT-2 regex; `qwen2`:
//!   the Qwen2 regex; `default`/`gpt2`/absent: the GPT-2 regex).
//! - [`Tokenizer::from_gguf`] with `tokenizer.ggml.model = llama`: SentencePiece BPE driven by the
//!   piece scores (module `spm`), with `▁` for spaces and `<0xNN>` byte fallback.
//!
//! In both GGUF kinds, pieces the file marks as control (token type 3) are matched whole in the
//! text, as Hugging Face `transformers` does when it loads the GGUF (so `"<|im_start|>"` in a chat
//! prompt becomes its id), and pieces marked user-defined (type 4) are matched whole as
//! SentencePiece and llama.cpp do. [`Tokenizer::decode`] with `skip_special` drops control and
//! unknown pieces.
//!
//! Every malformed input (lengths that disagree, merges naming unknown tokens, missing keys, an
//! unknown model or pre-tokenizer, ids out of range) gives a typed [`ModelError`]; nothing panics.

mod bpe;
mod spm;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

use spm::SentencePiece;

/// Which algorithm a [`Tokenizer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenizerKind {
    /// A Hugging Face `tokenizer.json` run by the `tokenizers` crate (MiniLM's WordPiece).
    HfJson,
    /// Byte-level BPE from a GGUF vocabulary and merges (SmolLM2, Qwen2).
    ByteLevelBpe,
    /// SentencePiece BPE by piece score from a GGUF vocabulary (Gemma-3).
    SentencePiece,
}

/// GGUF token types (`tokenizer.ggml.token_type`), as llama.cpp writes them.
pub mod token_type {
    /// Not set; treated like [`NORMAL`].
    pub const UNDEFINED: i32 = 0;
    /// An ordinary piece.
    pub const NORMAL: i32 = 1;
    /// The unknown piece.
    pub const UNKNOWN: i32 = 2;
    /// A control piece (`<bos>`, `<|im_start|>`): special, skipped by `decode(.., true)`.
    pub const CONTROL: i32 = 3;
    /// A user-defined piece: always matched whole in the text.
    pub const USER_DEFINED: i32 = 4;
    /// An unused piece (SentencePiece re-splits it into the pieces it was merged from).
    pub const UNUSED: i32 = 5;
    /// A byte piece `<0xNN>` of the byte fallback.
    pub const BYTE: i32 = 6;
}

/// The tokenizer metadata of a GGUF file as plain values, so that a tokenizer can be built (and
/// tested) without a file. [`Tokenizer::from_gguf`] reads exactly these keys.
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizerSpec {
    /// The file the values came from (only used in error messages).
    pub source: PathBuf,
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of a `gpt2` model.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: one score per token (required for `llama`).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: one [`token_type`] per token.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"` pairs, best first (required for `gpt2`).
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (absent: true for `llama`, false for `gpt2`).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token` (absent: false).
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` for `llama` (absent: true, as in llama.cpp).
    pub add_space_prefix: Option<bool>,
}

impl GgufTokenizerSpec {
    /// Reads the tokenizer keys of `file`.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the file and key when a required key is missing or a key has
    /// the wrong type.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
        let present = |k: &str| file.get(k).is_some();
        Ok(Self {
            source: file.path().to_path_buf(),
            model: file.str("tokenizer.ggml.model")?.to_owned(),
            pre: file.opt_str("tokenizer.ggml.pre")?.map(str::to_owned),
            tokens: owned(file.str_array("tokenizer.ggml.tokens")?),
            scores: if present("tokenizer.ggml.scores") {
                Some(file.f32_array("tokenizer.ggml.scores")?)
            } else {
                None
            },
            token_types: if present("tokenizer.ggml.token_type") {
                Some(file.i32_array("tokenizer.ggml.token_type")?)
            } else {
                None
            },
            merges: if present("tokenizer.ggml.merges") {
                Some(owned(file.str_array("tokenizer.ggml.merges")?))
            } else {
                None
            },
            bos_id: file.opt_u32("tokenizer.ggml.bos_token_id")?,
            eos_id: file.opt_u32("tokenizer.ggml.eos_token_id")?,
            unk_id: file.opt_u32("tokenizer.ggml.unknown_token_id")?,
            pad_id: file.opt_u32("tokenizer.ggml.padding_token_id")?,
            add_bos: file.opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: file.opt_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: file.opt_bool("tokenizer.ggml.add_space_prefix")?,
        })
    }

    pub(crate) fn err(&self, key: &str, detail: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.source.clone(),
            key: format!("tokenizer.ggml.{key}"),
            detail: detail.into(),
        }
    }

    /// The token type of `id` ([`token_type::NORMAL`] when the file has no types).
    pub(crate) fn type_of(&self, id: usize) -> i32 {
        self.token_types.as_ref().map_or(token_type::NORMAL, |t| t[id])
    }

    /// Checks what both kinds need: array lengths, known token types, special ids in range.
    fn validate(&self) -> Result<()> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(self.err("tokens", "empty vocabulary"));
        }
        if u32::try_from(n).is_err() {
            return Err(self.err("tokens", format!("{n} tokens do not fit u32 ids")));
        }
        if let Some(s) = &self.scores {
            if s.len() != n {
                return Err(self.err("scores", format!("{} scores for {n} tokens", s.len())));
            }
            if let Some(i) = s.iter().position(|x| x.is_nan()) {
                return Err(self.err("scores", format!("score of token {i} is NaN")));
            }
        }
        if let Some(t) = &self.token_types {
            if t.len() != n {
                return Err(self.err("token_type", format!("{} types for {n} tokens", t.len())));
            }
            if let Some(i) = t.iter().position(|&x| !(0..=6).contains(&x)) {
                return Err(self.err("token_type", format!("token {i} has unknown type {}", t[i])));
            }
        }
        for (key, id) in [
            ("bos_token_id", self.bos_id),
            ("eos_token_id", self.eos_id),
            ("unknown_token_id", self.unk_id),
            ("padding_token_id", self.pad_id),
        ] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(self.err(key, format!("id {id} out of range for {n} tokens")));
                }
            }
        }
        Ok(())
    }
}

enum Inner {
    /// `tokenizers` does the work (tokenizer.json, byte-level BPE).
    Hf(Box<tokenizers::Tokenizer>),
    /// Our SentencePiece encoder.
    Spm(Box<SentencePiece>),
}

/// A tokenizer of one of the supported models: encode text to ids and decode ids to text.
///
/// It is `Send + Sync`; [`Tokenizer::encode_batch`] encodes texts in parallel.
pub struct Tokenizer {
    inner: Inner,
    kind: TokenizerKind,
    /// Token strings by id, as the vocabulary spells them.
    vocab: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Ids wrapped around the text by `encode(.., true)`.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// Whether a long text may be cut after a newline that a non-space follows and its pieces
    /// encoded separately (in parallel) with the same result: true for byte-level BPE, whose
    /// pre-tokenizers always end a piece there, when no added token contains a line break.
    cut_at_lines: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("prefix", &self.prefix)
            .field("suffix", &self.suffix)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json` (truncation and padding switched off).
    ///
    /// `encode(.., true)` adds what the file's post-processor adds (`[CLS] … [SEP]` for BERT);
    /// [`Tokenizer::bos_id`] and [`Tokenizer::eos_id`] report the first id it puts before and after
    /// the text.
    ///
    /// # Errors
    /// [`ModelError::Io`] when the file cannot be read, [`ModelError::Malformed`] naming the file
    /// when `tokenizers` cannot parse it.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let mut tok: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| ModelError::malformed(path, "tokenizer.json", format!("{e}")))?;
        tok.with_truncation(None)
            .map_err(|e| ModelError::malformed(path, "tokenizer.json", format!("{e}")))?;
        tok.with_padding(None);
        let n = tok.get_vocab_size(true);
        let mut vocab = Vec::with_capacity(n);
        for id in 0..n {
            let t = tok.id_to_token(id as u32).ok_or_else(|| {
                ModelError::malformed(
                    path,
                    "tokenizer.json",
                    format!("no token has id {id} (ids must be dense)"),
                )
            })?;
            vocab.push(t);
        }
        // What the post-processor wraps around a text: encode one word both ways.
        let bare = tok.encode_fast("a", false).map_err(tok_err)?.get_ids().to_vec();
        let full = tok.encode_fast("a", true).map_err(tok_err)?.get_ids().to_vec();
        let (prefix, suffix) = split_wrapper(&bare, &full).ok_or_else(|| {
            ModelError::malformed(
                path,
                "tokenizer.json",
                "the post-processor does not keep the text's ids",
            )
        })?;
        Ok(Self {
            inner: Inner::Hf(Box::new(tok)),
            kind: TokenizerKind::HfJson,
            vocab,
            bos: prefix.first().copied(),
            eos: suffix.first().copied(),
            prefix,
            suffix,
            cut_at_lines: false,
        })
    }

    /// Builds the tokenizer a GGUF file carries (see the module documentation).
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the file and key for missing or malformed metadata, an
    /// unknown `tokenizer.ggml.model` or `tokenizer.ggml.pre`, lengths that disagree, merges
    /// that name unknown tokens.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::from_parts(GgufTokenizerSpec::from_gguf(file)?)
    }

    /// Builds a tokenizer from GGUF tokenizer metadata given as values.
    ///
    /// # Errors
    /// As [`Tokenizer::from_gguf`].
    pub fn from_parts(spec: GgufTokenizerSpec) -> Result<Self> {
        spec.validate()?;
        let (inner, kind, default_bos) = match spec.model.as_str() {
            "gpt2" => (Inner::Hf(Box::new(bpe::build(&spec)?)), TokenizerKind::ByteLevelBpe, false),
            "llama" => (
                Inner::Spm(Box::new(SentencePiece::new(&spec)?)),
                TokenizerKind::SentencePiece,
                true,
            ),
            other => {
                return Err(spec.err(
                    "model",
                    format!("unsupported tokenizer model `{other}` (supported: gpt2, llama)"),
                ))
            }
        };
        let add_bos = spec.add_bos.unwrap_or(default_bos);
        let add_eos = spec.add_eos.unwrap_or(false);
        let mut prefix = Vec::new();
        let mut suffix = Vec::new();
        if add_bos {
            prefix.push(
                spec.bos_id.ok_or_else(|| {
                    spec.err("bos_token_id", "add_bos_token is set but no BOS id")
                })?,
            );
        }
        if add_eos {
            suffix.push(
                spec.eos_id.ok_or_else(|| {
                    spec.err("eos_token_id", "add_eos_token is set but no EOS id")
                })?,
            );
        }
        let cut_at_lines = kind == TokenizerKind::ByteLevelBpe
            && spec.tokens.iter().enumerate().all(|(id, t)| {
                let added =
                    matches!(spec.type_of(id), token_type::CONTROL | token_type::USER_DEFINED);
                !added || !t.contains(['\n', '\r'])
            });
        Ok(Self {
            inner,
            kind,
            cut_at_lines,
            bos: spec.bos_id,
            eos: spec.eos_id,
            prefix,
            suffix,
            vocab: spec.tokens,
        })
    }

    /// Token ids of `text`; with `add_special`, the model's BOS/EOS (as its metadata says) or, for
    /// a `tokenizer.json`, what its post-processor adds (`[CLS] … [SEP]`).
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the underlying tokenizer fails (it does not on valid UTF-8
    /// with the supported vocabularies).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let body = match &self.inner {
            Inner::Hf(t) if self.cut_at_lines && text.len() > 2 * CUT_BYTES => {
                let parts: Vec<Vec<u32>> = cut_after_lines(text, CUT_BYTES)
                    .par_iter()
                    .map(|p| t.encode_fast(*p, false).map(|e| e.get_ids().to_vec()))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(tok_err)?;
                parts.concat()
            }
            Inner::Hf(t) => t.encode_fast(text, false).map_err(tok_err)?.get_ids().to_vec(),
            Inner::Spm(s) => s.encode(text)?,
        };
        if !add_special {
            return Ok(body);
        }
        let mut out = Vec::with_capacity(body.len() + self.prefix.len() + self.suffix.len());
        out.extend_from_slice(&self.prefix);
        out.extend(body);
        out.extend_from_slice(&self.suffix);
        Ok(out)
    }

    /// [`Tokenizer::encode`] of each text, in parallel.
    ///
    /// # Errors
    /// The first error of any text.
    pub fn encode_batch(&self, texts: &[&str], add_special: bool) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t, add_special)).collect()
    }

    /// The text of `ids`; with `skip_special`, control and unknown pieces are left out.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] naming the first id that is out of range.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab.len()) {
            return Err(ModelError::Tokenizer(format!(
                "cannot decode id {bad}: the vocabulary has {} tokens",
                self.vocab.len()
            )));
        }
        match &self.inner {
            Inner::Hf(t) => t.decode(ids, skip_special).map_err(tok_err),
            Inner::Spm(s) => Ok(s.decode(ids, skip_special)),
        }
    }

    /// The token of `id` as the vocabulary spells it (byte-level BPE: in the byte alphabet,
    /// `Ġ` for a space; SentencePiece: `▁` for a space), or `None` when out of range.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(String::as_str)
    }

    /// Number of ids (including added and special tokens).
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The BOS id the model declares (for a `tokenizer.json`: the first id its post-processor puts
    /// before the text, `[CLS]` for BERT).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS id the model declares (for a `tokenizer.json`: the first id its post-processor puts
    /// after the text, `[SEP]` for BERT).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(.., true)` puts an id before the text.
    pub fn adds_bos(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// Whether `encode(.., true)` puts an id after the text.
    pub fn adds_eos(&self) -> bool {
        !self.suffix.is_empty()
    }

    /// Which algorithm this tokenizer runs.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }
}

/// Target size of the pieces a long byte-level BPE text is cut into.
const CUT_BYTES: usize = 16 * 1024;

/// `text` cut into pieces of at least `target` bytes (the last may be shorter), each cut right
/// after a lone `\n` between two non-whitespace characters. The GPT-2, SmolLM2 and Qwen2
/// pre-tokenizers always end a piece there, whether or not the text goes on: no alternative of
/// their regexes matches a line break followed by a non-space (line breaks are only matched at
/// the end of a run of whitespace or of punctuation), a lone `\n` after a non-space is one piece
/// (or ends a punctuation piece) both before a non-space and at the end of the text, and the
/// digit split is per character.
fn cut_after_lines(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(text.len() / target + 1);
    let mut start = 0;
    let mut i = target.max(2);
    while i < bytes.len() {
        if bytes[i - 1] == b'\n' && text.is_char_boundary(i) {
            let before = text[..i - 1].chars().next_back().unwrap_or(' ');
            let after = text[i..].chars().next().unwrap_or(' ');
            if !before.is_whitespace() && !after.is_whitespace() {
                out.push(&text[start..i]);
                start = i;
                i += target.max(2);
                continue;
            }
        }
        i += 1;
    }
    out.push(&text[start..]);
    out
}

/// `(prefix, suffix)` such that `full == prefix + bare + suffix`.
fn split_wrapper(bare: &[u32], full: &[u32]) -> Option<(Vec<u32>, Vec<u32>)> {
    if full.len() < bare.len() {
        return None;
    }
    (0..=full.len() - bare.len())
        .find(|&k| &full[k..k + bare.len()] == bare)
        .map(|k| (full[..k].to_vec(), full[k + bare.len()..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn tokenizer_is_send_and_sync() {
        assert_send_sync::<Tokenizer>();
    }

    #[test]
    fn cuts_only_after_a_line_break_before_a_non_space() {
        let text = "aaaa\n bbbb\n\ncc \ncccc\ndddd\n";
        let parts = cut_after_lines(text, 3);
        assert_eq!(parts.concat(), text);
        assert_eq!(parts, ["aaaa\n bbbb\n\ncc \ncccc\n", "dddd\n"]);
        assert_eq!(cut_after_lines("abc", 1), ["abc"]);
        assert_eq!(cut_after_lines("", 4), [""]);
    }

    #[test]
    fn split_wrapper_finds_prefix_and_suffix() {
        assert_eq!(split_wrapper(&[7, 8], &[1, 7, 8, 2]), Some((vec![1], vec![2])));
        assert_eq!(split_wrapper(&[7], &[7]), Some((vec![], vec![])));
        assert_eq!(split_wrapper(&[7, 8], &[7]), None);
        assert_eq!(split_wrapper(&[9], &[1, 2]), None);
    }
}
