//! Byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`) assembled from the `tokenizers` crate:
//! a [`BPE`] model from the GGUF vocabulary and merges, the pre-tokenizer named by
//! `tokenizer.ggml.pre`, the byte-level decoder, and the control / user-defined pieces as added
//! tokens.

use std::collections::{HashMap, HashSet};

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior};

use super::{token_type, GgufTokenizerSpec};
use crate::error::Result;

/// Qwen2's pre-tokenizer regex (llama.cpp pre `qwen2`): like GPT-4's, but one digit per piece.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's byte-to-character table: printable Latin-1 bytes map to themselves, the other 68 to
/// U+0100 onwards, in byte order.
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    out
}

/// The tokenizer of a `gpt2` GGUF spec.
pub(super) fn build(spec: &GgufTokenizerSpec) -> Result<tokenizers::Tokenizer> {
    let table = byte_chars();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    // A token spelled outside the byte alphabet (a raw-text added token) is looked up by its
    // byte-level spelling, as transformers does.
    let spell = |t: &str| -> String {
        if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_owned()
        } else {
            t.bytes().map(|b| table[b as usize]).collect()
        }
    };
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(spec.tokens.len());
    for (id, t) in spec.tokens.iter().enumerate() {
        vocab.insert(spell(t), id as u32);
    }
    // A byte with no single-byte token (SmolLM2 has none for some control bytes) is dropped
    // from the text by the BPE model, as the reference (transformers) does.
    let raw = spec
        .merges
        .as_ref()
        .ok_or_else(|| spec.err("merges", "missing (required for a gpt2 tokenizer)"))?;
    let mut merges = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let (a, b) = m
            .split_once(' ')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
            .ok_or_else(|| {
                spec.err(
                    "merges",
                    format!("merge {i} {m:?} is not two tokens separated by one space"),
                )
            })?;
        for part in [a, b] {
            if !vocab.contains_key(part) {
                return Err(
                    spec.err("merges", format!("merge {i} {m:?} names the unknown token {part:?}"))
                );
            }
        }
        let joined = format!("{a}{b}");
        if !vocab.contains_key(&joined) {
            return Err(spec.err(
                "merges",
                format!("merge {i} {m:?} makes {joined:?}, which is not in the vocabulary"),
            ));
        }
        merges.push((a.to_owned(), b.to_owned()));
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .build()
        .map_err(|e| spec.err("merges", format!("cannot build the BPE model: {e}")))?;

    let byte_level =
        |use_regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let pre: PreTokenizerWrapper = match spec.pre.as_deref() {
        None | Some("default") | Some("gpt2") | Some("gpt-2") => byte_level(true),
        Some("smollm") => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ])),
        Some("qwen2") => {
            let split = Split::new(SplitPattern::Regex(QWEN2_REGEX.to_owned()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| spec.err("pre", format!("cannot compile the qwen2 regex: {e}")))?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Split(split), byte_level(false)]))
        }
        Some(other) => {
            return Err(spec.err(
                "pre",
                format!("unsupported pre-tokenizer `{other}` for a gpt2 tokenizer (supported: smollm, qwen2, gpt2/default)"),
            ))
        }
    };
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, true, true))));

    // Control pieces become special added tokens (matched whole, skipped by decode(.., true));
    // a control piece spelled outside the byte alphabet is a mislabel and is left alone, as
    // transformers does. User-defined pieces are matched whole but are not special.
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (id, t) in spec.tokens.iter().enumerate() {
        match spec.type_of(id) {
            token_type::CONTROL if t.chars().all(|c| alphabet.contains(&c)) => {
                special.push(AddedToken::from(t.clone(), true).normalized(false));
            }
            token_type::USER_DEFINED => {
                user.push(AddedToken::from(t.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tok.add_special_tokens(special)
        .map_err(|e| spec.err("tokens", format!("cannot add control tokens: {e}")))?;
    tok.add_tokens(user)
        .map_err(|e| spec.err("tokens", format!("cannot add user-defined tokens: {e}")))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xad], 'Ń');
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }
}
