//! SentencePiece BPE driven by piece scores (GGUF `tokenizer.ggml.model = llama`), written here
//! because a GGUF carries the pieces and their scores but no merge list.
//!
//! The algorithm is SentencePiece's BPE encoder:
//! 1. normalise: every space becomes `▁` (U+2581); with `add_space_prefix`, a `▁` goes first;
//! 2. cut the text at the pieces that are always kept whole, taking the longest one that starts
//!    at each position: the user-defined pieces (Gemma's runs of spaces, newlines and tabs, HTML
//!    tags) and, as Hugging Face `transformers` does, the control and unknown pieces;
//! 3. in each stretch between them, start from one symbol per character and repeatedly merge the
//!    adjacent pair whose concatenation is a vocabulary piece with the highest score (ties: the
//!    leftmost pair), until no adjacent pair forms a piece;
//! 4. a symbol that is not a piece (a character outside the vocabulary) becomes its UTF-8 bytes
//!    as `<0xNN>` pieces, or the unknown piece when there is no byte fallback; a piece of type
//!    unused is split back into the two symbols it was merged from.
//!
//! Pieces that the GGUF stores with real spaces (Gemma's whitespace runs) are spelled with `▁`
//! for matching, as the original model spells them.

use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use super::{token_type, GgufTokenizerSpec};
use crate::error::{ModelError, Result};

/// Texts longer than twice this many bytes are encoded in parallel groups of about this size.
const PARALLEL_BYTES: usize = 16 * 1024;

/// The SentencePiece word-boundary mark.
const SPACE_MARK: char = '\u{2581}';

/// A small multiplicative hash for the piece map (keys are short strings; no adversary).
#[derive(Default, Clone, Copy)]
struct PieceHasher(u64);

impl Hasher for PieceHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59))
                .wrapping_mul(K);
        }
        self.0 = h;
    }

    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown takes its bucket index from the low bits.
        self.0 ^ (self.0 >> 29)
    }
}

type PieceMap = HashMap<Box<str>, u32, BuildHasherDefault<PieceHasher>>;

/// A byte trie of the pieces kept whole, for longest-prefix matching.
#[derive(Debug, Default)]
struct Trie {
    /// Node 0 is the root. Children sorted by byte.
    children: Vec<Vec<(u8, u32)>>,
    /// The piece id ending at each node.
    id: Vec<Option<u32>>,
    /// Root children by first byte (fast rejection of ordinary characters).
    root: Vec<u32>,
}

impl Trie {
    fn new() -> Self {
        Self { children: vec![Vec::new()], id: vec![None], root: vec![0; 256] }
    }

    fn insert(&mut self, key: &str, id: u32) {
        let mut node = 0usize;
        for &b in key.as_bytes() {
            node = match self.children[node].binary_search_by_key(&b, |&(c, _)| c) {
                Ok(i) => self.children[node][i].1 as usize,
                Err(i) => {
                    let new = self.children.len();
                    self.children.push(Vec::new());
                    self.id.push(None);
                    self.children[node].insert(i, (b, new as u32));
                    if node == 0 {
                        self.root[b as usize] = new as u32;
                    }
                    new
                }
            };
        }
        // The first id wins when two pieces share a spelling.
        if self.id[node].is_none() {
            self.id[node] = Some(id);
        }
    }

    /// The longest piece that `s` starts with: (its length in bytes, its id).
    fn longest(&self, s: &[u8]) -> Option<(usize, u32)> {
        let first = *s.first()?;
        let mut node = self.root[first as usize] as usize;
        if node == 0 {
            return None;
        }
        let mut best = self.id[node].map(|id| (1, id));
        for (k, &b) in s.iter().enumerate().skip(1) {
            match self.children[node].iter().find(|&&(c, _)| c == b) {
                Some(&(_, next)) => node = next as usize,
                None => break,
            }
            if let Some(id) = self.id[node] {
                best = Some((k + 1, id));
            }
        }
        best
    }
}

/// One symbol of the merge loop: a byte range of the stretch, linked to its neighbours.
#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    end: u32,
    prev: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;

/// A candidate merge of two adjacent symbols.
#[derive(Clone, Copy)]
struct Cand {
    score: f32,
    left: u32,
    right: u32,
    len: u32,
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    /// Higher score first; among equal scores the leftmost pair first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Scores are never NaN (checked at load); -0.0 and 0.0 are equal, as in SentencePiece.
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// A SentencePiece BPE tokenizer built from GGUF pieces and scores.
pub(crate) struct SentencePiece {
    /// Pieces that merges may produce (normal, user-defined, unused), spelled with `▁`.
    pieces: PieceMap,
    scores: Vec<f32>,
    types: Vec<i8>,
    /// The text each id decodes to (`▁` already turned into a space); empty for byte pieces.
    surface: Vec<Box<str>>,
    /// For byte pieces, the byte; else -1.
    byte_value: Vec<i16>,
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
    frozen: Trie,
    add_space_prefix: bool,
    has_unused: bool,
}

impl std::fmt::Debug for SentencePiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentencePiece")
            .field("pieces", &self.pieces.len())
            .field("unk", &self.unk)
            .field("add_space_prefix", &self.add_space_prefix)
            .finish_non_exhaustive()
    }
}

fn parse_byte_piece(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl SentencePiece {
    pub(super) fn new(spec: &GgufTokenizerSpec) -> Result<Self> {
        let n = spec.tokens.len();
        let scores = spec.scores.clone().ok_or_else(|| {
            spec.err("scores", "missing (required for a llama/SentencePiece tokenizer)")
        })?;
        let mut pieces = PieceMap::with_capacity_and_hasher(n, Default::default());
        let mut types = Vec::with_capacity(n);
        let mut surface = Vec::with_capacity(n);
        let mut byte_value = vec![-1i16; n];
        let mut byte_ids = [None; 256];
        let mut frozen = Trie::new();
        let mut unk = spec.unk_id;
        let mut has_unused = false;
        for (id, tok) in spec.tokens.iter().enumerate() {
            let ty = spec.type_of(id);
            types.push(ty as i8);
            let spelled: String =
                tok.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }).collect();
            match ty {
                token_type::BYTE => {
                    let b = parse_byte_piece(tok).ok_or_else(|| {
                        spec.err(
                            "tokens",
                            format!("token {id} {tok:?} has the byte type but is not <0xNN>"),
                        )
                    })?;
                    byte_value[id] = i16::from(b);
                    byte_ids[b as usize].get_or_insert(id as u32);
                    surface.push(Box::from(""));
                    continue;
                }
                token_type::CONTROL | token_type::UNKNOWN => {
                    if ty == token_type::UNKNOWN {
                        unk.get_or_insert(id as u32);
                    }
                    if !spelled.is_empty() {
                        frozen.insert(&spelled, id as u32);
                    }
                }
                _ => {
                    if ty == token_type::USER_DEFINED && !spelled.is_empty() {
                        frozen.insert(&spelled, id as u32);
                    }
                    has_unused |= ty == token_type::UNUSED;
                    if spelled.is_empty() {
                        return Err(spec.err("tokens", format!("token {id} is empty")));
                    }
                    if let Some(prev) = pieces.insert(spelled.clone().into_boxed_str(), id as u32) {
                        return Err(spec.err(
                            "tokens",
                            format!("tokens {prev} and {id} are the same piece {spelled:?}"),
                        ));
                    }
                }
            }
            surface.push(tok.replace(SPACE_MARK, " ").into_boxed_str());
        }
        // Files without token types: byte pieces recognised by their spelling.
        if spec.token_types.is_none() {
            for (id, tok) in spec.tokens.iter().enumerate() {
                if let Some(b) = parse_byte_piece(tok) {
                    byte_value[id] = i16::from(b);
                    byte_ids[b as usize].get_or_insert(id as u32);
                    surface[id] = Box::from("");
                }
            }
        }
        Ok(Self {
            pieces,
            scores,
            types,
            surface,
            byte_value,
            byte_ids,
            unk,
            frozen,
            add_space_prefix: spec.add_space_prefix.unwrap_or(true),
            has_unused,
        })
    }

    /// Token ids of `text` (no BOS/EOS).
    pub(super) fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        if text.is_empty() {
            return Ok(out);
        }
        let mut norm = String::with_capacity(text.len() + text.len() / 4 + 3);
        if self.add_space_prefix {
            norm.push(SPACE_MARK);
        }
        for c in text.chars() {
            norm.push(if c == ' ' { SPACE_MARK } else { c });
        }
        // Cut at the pieces kept whole: stretches to merge, each followed by a kept piece.
        let bytes = norm.as_bytes();
        let mut parts: Vec<(usize, usize, Option<u32>)> = Vec::new();
        let mut seg_start = 0;
        let mut pos = 0;
        while pos < bytes.len() {
            if let Some((len, id)) = self.frozen.longest(&bytes[pos..]) {
                parts.push((seg_start, pos, Some(id)));
                pos += len;
                seg_start = pos;
            } else {
                pos += utf8_len(bytes[pos]);
            }
        }
        parts.push((seg_start, bytes.len(), None));
        let run = |parts: &[(usize, usize, Option<u32>)], out: &mut Vec<u32>| -> Result<()> {
            let mut work = Work::default();
            for &(a, b, kept) in parts {
                self.encode_stretch(&norm[a..b], &mut work, out)?;
                out.extend(kept);
            }
            Ok(())
        };
        if norm.len() <= 2 * PARALLEL_BYTES {
            run(&parts, &mut out)?;
            return Ok(out);
        }
        // A long text: groups of stretches of about PARALLEL_BYTES are independent (no merge
        // crosses a kept piece), so they are encoded in parallel.
        let mut groups = Vec::new();
        let mut first = 0;
        for (i, p) in parts.iter().enumerate() {
            if p.1 - parts[first].0 >= PARALLEL_BYTES {
                groups.push(&parts[first..=i]);
                first = i + 1;
            }
        }
        if first < parts.len() {
            groups.push(&parts[first..]);
        }
        let encoded: Vec<Vec<u32>> = groups
            .par_iter()
            .map(|g| {
                let mut v = Vec::with_capacity((g[g.len() - 1].1 - g[0].0) / 3 + 4);
                run(g, &mut v).map(|()| v)
            })
            .collect::<Result<_>>()?;
        for v in encoded {
            out.extend(v);
        }
        Ok(out)
    }

    /// Merges one stretch of normalised text (no frozen pieces inside) and appends its ids.
    fn encode_stretch(&self, s: &str, w: &mut Work, out: &mut Vec<u32>) -> Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        w.syms.clear();
        w.heap.clear();
        w.split.clear();
        for (i, (start, c)) in s.char_indices().enumerate() {
            let i = i as u32;
            w.syms.push(Sym {
                start: start as u32,
                end: (start + c.len_utf8()) as u32,
                prev: if i == 0 { NONE } else { i - 1 },
                next: i + 1,
            });
        }
        if let Some(last) = w.syms.last_mut() {
            last.next = NONE;
        }
        for l in 0..w.syms.len().saturating_sub(1) {
            self.push_pair(s, &w.syms, l as u32, l as u32 + 1, &mut w.heap);
        }
        while let Some(c) = w.heap.pop() {
            let (l, r) = (c.left as usize, c.right as usize);
            let (sl, sr) = (w.syms[l], w.syms[r]);
            // Stale: one side was merged away or grew since the pair was queued.
            if sl.start == sl.end
                || sr.start == sr.end
                || sl.next != c.right
                || sr.end - sl.start != c.len
            {
                continue;
            }
            if self.has_unused {
                w.split.insert((sl.start, sr.end), sl.end);
            }
            w.syms[l].end = sr.end;
            w.syms[l].next = sr.next;
            if sr.next != NONE {
                w.syms[sr.next as usize].prev = c.left;
            }
            w.syms[r].start = w.syms[r].end; // empty = merged away
            if sl.prev != NONE {
                self.push_pair(s, &w.syms, sl.prev, c.left, &mut w.heap);
            }
            if sr.next != NONE {
                self.push_pair(s, &w.syms, c.left, sr.next, &mut w.heap);
            }
        }
        let mut i = 0u32;
        while i != NONE {
            let sym = w.syms[i as usize];
            self.emit(s, sym.start, sym.end, &w.split, out)?;
            i = sym.next;
        }
        Ok(())
    }

    fn push_pair(&self, s: &str, syms: &[Sym], l: u32, r: u32, heap: &mut BinaryHeap<Cand>) {
        let (a, b) = (syms[l as usize].start, syms[r as usize].end);
        if let Some(&id) = self.pieces.get(&s[a as usize..b as usize]) {
            heap.push(Cand { score: self.scores[id as usize], left: l, right: r, len: b - a });
        }
    }

    /// Appends the id(s) of the final symbol `s[a..b]`.
    fn emit(
        &self,
        s: &str,
        a: u32,
        b: u32,
        split: &HashMap<(u32, u32), u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let piece = &s[a as usize..b as usize];
        if let Some(&id) = self.pieces.get(piece) {
            if self.types[id as usize] == token_type::UNUSED as i8 {
                if let Some(&mid) = split.get(&(a, b)) {
                    self.emit(s, a, mid, split, out)?;
                    return self.emit(s, mid, b, split, out);
                }
            }
            out.push(id);
            return Ok(());
        }
        if piece.bytes().all(|b| self.byte_ids[b as usize].is_some()) {
            out.extend(piece.bytes().filter_map(|b| self.byte_ids[b as usize]));
            return Ok(());
        }
        // No byte fallback for these bytes: one unknown piece for the whole symbol.
        let unk = self.unk.ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "{piece:?} is not in the vocabulary, which has neither its byte pieces nor an unknown piece"
            ))
        })?;
        out.push(unk);
        Ok(())
    }

    /// The text of `ids` (all in range). Consecutive byte pieces are joined and read as UTF-8;
    /// an invalid run gives one U+FFFD per byte.
    pub(super) fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut out = String::new();
        let mut pending: Vec<u8> = Vec::new();
        let flush = |out: &mut String, pending: &mut Vec<u8>| {
            if pending.is_empty() {
                return;
            }
            match std::str::from_utf8(pending) {
                Ok(t) => out.push_str(t),
                Err(_) => out.extend(std::iter::repeat_n('\u{FFFD}', pending.len())),
            }
            pending.clear();
        };
        for &id in ids {
            let id = id as usize;
            let ty = i32::from(self.types[id]);
            if skip_special && (ty == token_type::CONTROL || ty == token_type::UNKNOWN) {
                continue;
            }
            if self.byte_value[id] >= 0 {
                pending.push(self.byte_value[id] as u8);
                continue;
            }
            flush(&mut out, &mut pending);
            out.push_str(&self.surface[id]);
        }
        flush(&mut out, &mut pending);
        if self.add_space_prefix && out.starts_with(' ') {
            out.remove(0);
        }
        out
    }
}

/// Buffers reused across the stretches of one text.
#[derive(Default)]
struct Work {
    syms: Vec<Sym>,
    heap: BinaryHeap<Cand>,
    /// Merges done, for splitting unused pieces back: (start, end) -> end of the left part.
    split: HashMap<(u32, u32), u32>,
}

/// Length of the UTF-8 sequence that starts with byte `b` (1 for a continuation byte, which a
/// `str` never starts a character with).
fn utf8_len(b: u8) -> usize {
    match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xff => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_takes_the_longest_piece() {
        let mut t = Trie::new();
        t.insert("ab", 1);
        t.insert("abcd", 2);
        t.insert("x", 3);
        assert_eq!(t.longest(b"abcz"), Some((2, 1)));
        assert_eq!(t.longest(b"abcde"), Some((4, 2)));
        assert_eq!(t.longest(b"xy"), Some((1, 3)));
        assert_eq!(t.longest(b"a"), None);
        assert_eq!(t.longest(b"zz"), None);
        assert_eq!(t.longest(b""), None);
    }

    #[test]
    fn candidates_order_by_score_then_leftmost() {
        let mut h = BinaryHeap::new();
        h.push(Cand { score: -1.0, left: 0, right: 1, len: 2 });
        h.push(Cand { score: 0.5, left: 5, right: 6, len: 2 });
        h.push(Cand { score: 0.5, left: 2, right: 3, len: 2 });
        let order: Vec<u32> = std::iter::from_fn(|| h.pop().map(|c| c.left)).collect();
        assert_eq!(order, vec![2, 5, 0]);
    }

    #[test]
    fn byte_pieces_parse() {
        assert_eq!(parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(parse_byte_piece("<0xff>"), Some(255));
        assert_eq!(parse_byte_piece("<0x100>"), None);
        assert_eq!(parse_byte_piece("0x0A"), None);
    }
}
