//! Needle-in-a-haystack tasks (RULER's `niah_*`) and the passkey task.
//!
//! All draws are made before the haystack is sized, so the fitting search only changes how much
//! filler surrounds the same needles, at the same relative depths.

use super::fit::Built;
use super::rng::{stream, Rng};
use super::{
    fit_prompt, grid_depth, unbounded_units, words, Draft, RetrievalError, TaskKind, DEPTH_POINTS,
    NOISE,
};

/// What the haystack is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hay {
    /// The passkey filler, blocks joined by spaces.
    Passkey,
    /// The noise filler, one block per line.
    Noise,
    /// The caller's running text, cut at words; needles go in at sentence boundaries.
    Essay,
    /// Distractor needles with random keys and values, one per line.
    Needles,
}

/// What a key or value looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    /// `adjective-noun`.
    Words,
    /// A 7-digit number.
    Numbers,
    /// A random (version 4) UUID.
    Uuids,
    /// A 5-digit number (passkey).
    PassKey,
}

impl Ty {
    /// Singular and plural name used in the sentences.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Ty::Words => ("word", "words"),
            Ty::Numbers | Ty::PassKey => ("number", "numbers"),
            Ty::Uuids => ("UUID", "UUIDs"),
        }
    }

    fn draw(self, rng: &mut Rng) -> String {
        match self {
            Ty::Words => {
                let (adjectives, nouns) = (words::adjectives(), words::nouns());
                let adjective = adjectives[rng.index(adjectives.len())];
                format!("{adjective}-{}", nouns[rng.index(nouns.len())])
            }
            Ty::Numbers => rng.between(1_000_000, 9_999_999).to_string(),
            Ty::PassKey => rng.between(10_000, 99_999).to_string(),
            Ty::Uuids => {
                // 122 random bits; version nibble 4, variant bits 10.
                let hi = (rng.next_u64() & !0xf000) | 0x4000;
                let lo = (rng.next_u64() & !(0b11 << 62)) | (0b10 << 62);
                format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    hi >> 32,
                    (hi >> 16) & 0xffff,
                    hi & 0xffff,
                    lo >> 48,
                    lo & 0xffff_ffff_ffff
                )
            }
        }
    }
}

/// The shape of one needle task.
#[derive(Debug, Clone, Copy)]
struct Spec {
    hay: Hay,
    key: Ty,
    value: Ty,
    keys: usize,
    values: usize,
    queries: usize,
}

fn spec(kind: &TaskKind) -> Spec {
    let s =
        |hay, key, value, keys, values, queries| Spec { hay, key, value, keys, values, queries };
    match *kind {
        TaskKind::Passkey => s(Hay::Passkey, Ty::Words, Ty::PassKey, 1, 1, 1),
        TaskKind::NiahSingle { variant: 1 } => s(Hay::Noise, Ty::Words, Ty::Numbers, 1, 1, 1),
        TaskKind::NiahSingle { variant: 2 } => s(Hay::Essay, Ty::Words, Ty::Numbers, 1, 1, 1),
        TaskKind::NiahSingle { .. } => s(Hay::Essay, Ty::Words, Ty::Uuids, 1, 1, 1),
        TaskKind::NiahMultiKey { variant: 1 } => s(Hay::Essay, Ty::Words, Ty::Numbers, 4, 1, 1),
        TaskKind::NiahMultiKey { variant: 2 } => s(Hay::Needles, Ty::Words, Ty::Numbers, 1, 1, 1),
        TaskKind::NiahMultiKey { .. } => s(Hay::Needles, Ty::Uuids, Ty::Uuids, 1, 1, 1),
        TaskKind::NiahMultiValue => s(Hay::Essay, Ty::Words, Ty::Numbers, 1, 4, 1),
        // Only the needle tasks reach this module; the rest is multi-query.
        _ => s(Hay::Essay, Ty::Words, Ty::Numbers, 4, 1, 4),
    }
}

/// The needle sentence: a key and one of its values.
fn needle_sentence(value: Ty, key: &str, val: &str) -> String {
    format!("A special magic {} for {key} is: {val}.", value.names().0)
}

/// The passkey sentence.
fn passkey_sentence(key: &str) -> String {
    format!("Remember this: the pass key is {key}. Once more, the pass key is {key}.")
}

/// `a`, `a and b`, `a, b, and c`.
fn english_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    }
}

/// The essay cut into words, with the word indices where sentences start.
struct Essay<'a> {
    words: Vec<&'a str>,
    /// Word indices where sentences start, ascending; 0 first when there are words.
    starts: Vec<usize>,
}

/// Abbreviations whose final period does not end a sentence.
const ABBREVIATIONS: [&str; 8] = ["e.g.", "i.e.", "mr.", "mrs.", "ms.", "dr.", "st.", "vs."];

fn ends_sentence(word: &str, next: &str) -> bool {
    let core = word.trim_end_matches(['"', '\'', ')', ']', '\u{201d}', '\u{2019}']);
    if !core.ends_with(['.', '!', '?']) {
        return false;
    }
    let bare = core.trim_start_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
    if ABBREVIATIONS.contains(&bare.as_str()) {
        return false;
    }
    // A lone initial such as "J." is not a sentence end either.
    let mut chars = core.chars();
    if let (Some(c), Some('.'), None) = (chars.next(), chars.next(), chars.next()) {
        if c.is_uppercase() {
            return false;
        }
    }
    next.chars().find(|c| c.is_alphanumeric()).is_some_and(|c| c.is_uppercase() || c.is_numeric())
}

/// Longest run of words treated as one sentence: text without sentence ends is cut into
/// pieces of this many words, so that it can still be sized and hold needles.
const MAX_SENTENCE_WORDS: usize = 64;

impl<'a> Essay<'a> {
    /// The first `limit` words of `text` (all of them if `limit` is `None`).
    fn new(text: &'a str, limit: Option<usize>) -> Self {
        let words: Vec<&str> = text.split_whitespace().take(limit.unwrap_or(usize::MAX)).collect();
        let mut starts = Vec::with_capacity(words.len() / 16 + 1);
        if !words.is_empty() {
            starts.push(0);
        }
        let mut last = 0;
        for i in 0..words.len().saturating_sub(1) {
            if ends_sentence(words[i], words[i + 1]) || i + 1 - last >= MAX_SENTENCE_WORDS {
                starts.push(i + 1);
                last = i + 1;
            }
        }
        Self { words, starts }
    }

    /// Number of sentences (the haystack units).
    fn sentences(&self) -> usize {
        self.starts.len()
    }

    /// The word index where sentence `k` starts (the end of the text for `k` past the last).
    fn start(&self, k: usize) -> usize {
        self.starts.get(k).copied().unwrap_or(self.words.len())
    }
}

/// One needle, placed at a grid depth.
struct Placed {
    text: String,
    depth: f64,
    carries_answer: bool,
}

/// Fits `n` whole sentences of `essay` around the needles; a needle at depth `d` goes before
/// sentence `floor(n·d)`.
fn fit_essay(
    kind: &TaskKind,
    essay: &Essay,
    placed: &[Placed],
    target_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
    assemble: &dyn Fn(&str, Option<f64>) -> Built,
) -> Result<(Built, usize), RetrievalError> {
    let build = |n: usize| {
        let end = essay.start(n);
        let positions: Vec<usize> = placed
            .iter()
            .map(|p| essay.start(((n as f64 * p.depth).floor() as usize).min(n)))
            .collect();
        let mut context = String::with_capacity(end * 6);
        let mut from = 0;
        let push = |piece: &str, context: &mut String| {
            if !context.is_empty() {
                context.push(' ');
            }
            context.push_str(piece);
        };
        for (p, &at) in placed.iter().zip(&positions) {
            for word in &essay.words[from..at] {
                push(word, &mut context);
            }
            push(&p.text, &mut context);
            from = at;
        }
        for word in &essay.words[from..end] {
            push(word, &mut context);
        }
        assemble(&context, mean_depth(placed, &positions, end))
    };
    fit_prompt(kind, target_tokens, essay.sentences(), count_tokens, &build)
}

/// Mean realized depth of the answer-carrying needles, from their unit positions among `n`.
fn mean_depth(placed: &[Placed], positions: &[usize], n: usize) -> Option<f64> {
    let mut sum = 0.0;
    let mut count = 0usize;
    for (p, pos) in placed.iter().zip(positions) {
        if p.carries_answer {
            sum += if n == 0 { p.depth } else { *pos as f64 / n as f64 };
            count += 1;
        }
    }
    (count > 0).then(|| sum / count as f64)
}

pub(crate) fn generate(
    kind: &TaskKind,
    haystack: &str,
    target_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
    seed: u64,
    index: usize,
) -> Result<Draft, RetrievalError> {
    let spec = spec(kind);
    let mut rng = Rng::keyed(seed, index, stream::CONTENT);

    // Keys (distinct), values (distinct), and the needle sentences.
    let mut keys: Vec<String> = Vec::with_capacity(spec.keys);
    while keys.len() < spec.keys {
        let key = spec.key.draw(&mut rng);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut values: Vec<Vec<String>> = Vec::with_capacity(spec.keys);
    let mut needles: Vec<(usize, String)> = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let mut these: Vec<String> = Vec::with_capacity(spec.values);
        while these.len() < spec.values {
            let value = spec.value.draw(&mut rng);
            if !these.contains(&value) && !values.iter().flatten().any(|v| *v == value) {
                these.push(value);
            }
        }
        for value in &these {
            let text = match spec.hay {
                Hay::Passkey => passkey_sentence(value),
                _ => needle_sentence(spec.value, key, value),
            };
            needles.push((k, text));
        }
        values.push(these);
    }
    rng.shuffle(&mut needles);
    let mut depth_points = rng.sample(DEPTH_POINTS, needles.len());
    depth_points.sort_unstable();
    let queried = rng.sample(spec.keys, spec.queries);
    let placed: Vec<Placed> = needles
        .iter()
        .zip(&depth_points)
        .map(|((k, text), &point)| Placed {
            text: text.clone(),
            depth: grid_depth(point),
            carries_answer: queried.contains(k),
        })
        .collect();
    let answers: Vec<String> = queried.iter().flat_map(|&k| values[k].iter().cloned()).collect();
    let query = english_list(&queried.iter().map(|&k| keys[k].clone()).collect::<Vec<_>>());

    // The sentences around the context.
    let (head, question, prefix) = if spec.hay == Hay::Passkey {
        (
            "A pass key is hidden somewhere in the long text below, among many sentences that \
             do not matter. Find it and remember it; you will be asked for it at the end."
                .to_string(),
            "What is the pass key?".to_string(),
            " The pass key is".to_string(),
        )
    } else {
        let (one, many) = spec.value.names();
        if spec.queries * spec.values > 1 {
            (
                format!(
                    "Some special magic {many} are hidden within the text below. Memorize \
                     them, because you will be asked about these {many} afterwards."
                ),
                format!(
                    "Which special magic {many} for {query} appear in the text above? List all \
                     of them."
                ),
                format!(" The special magic {many} for {query} in the text above are"),
            )
        } else {
            (
                format!(
                    "A special magic {one} is hidden within the text below. Memorize it, \
                     because you will be asked about this {one} afterwards."
                ),
                format!("Which special magic {one} for {query} appears in the text above?"),
                format!(" The special magic {one} for {query} in the text above is"),
            )
        }
    };
    let assemble = |context: &str, depth: Option<f64>| {
        let mut prompt =
            String::with_capacity(head.len() + context.len() + question.len() + prefix.len() + 2);
        prompt.push_str(&head);
        prompt.push('\n');
        prompt.push_str(context);
        prompt.push('\n');
        prompt.push_str(&question);
        let prefix_at = prompt.len();
        prompt.push_str(&prefix);
        Built { prompt, prefix_at, depth }
    };
    let (built, tokens) = match spec.hay {
        Hay::Essay => {
            // Splitting a long haystack costs more than the search: read only a generous
            // prefix first (a word is rarely under a quarter of a token), the rest if needed.
            let limit = target_tokens.saturating_mul(4).saturating_add(1024);
            let prefix = Essay::new(haystack, Some(limit));
            let fitted = fit_essay(kind, &prefix, &placed, target_tokens, count_tokens, &assemble);
            match fitted {
                Err(RetrievalError::HaystackTooShort { .. }) if prefix.words.len() == limit => {
                    let whole = Essay::new(haystack, None);
                    fit_essay(kind, &whole, &placed, target_tokens, count_tokens, &assemble)?
                }
                other => other?,
            }
        }
        Hay::Passkey | Hay::Noise | Hay::Needles => {
            let separator = if spec.hay == Hay::Passkey { " " } else { "\n" };
            let real_keys = &keys;
            let filler = |i: usize| -> String {
                match spec.hay {
                    Hay::Needles => {
                        let mut rng = Rng::keyed_sub(seed, index, stream::DISTRACTOR, i as u64);
                        let key = loop {
                            let key = spec.key.draw(&mut rng);
                            if !real_keys.contains(&key) {
                                break key;
                            }
                        };
                        needle_sentence(spec.value, &key, &spec.value.draw(&mut rng))
                    }
                    _ => NOISE.to_string(),
                }
            };
            let build = |n: usize| {
                let positions: Vec<usize> =
                    placed.iter().map(|p| ((n as f64 * p.depth).floor() as usize).min(n)).collect();
                let mut lines: Vec<String> = Vec::with_capacity(n + placed.len());
                let mut from = 0;
                for (p, &at) in placed.iter().zip(&positions) {
                    lines.extend((from..at).map(filler));
                    lines.push(p.text.clone());
                    from = at;
                }
                lines.extend((from..n).map(filler));
                assemble(&lines.join(separator), mean_depth(&placed, &positions, n))
            };
            fit_prompt(kind, target_tokens, unbounded_units(target_tokens), count_tokens, &build)?
        }
    };
    Ok(Draft { built, tokens, answers, needles: placed.into_iter().map(|p| p.text).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_starts() {
        let essay = Essay::new(
            "It was late. Then e.g. Mr. Smith came in! \"Why?\" he asked. J. Doe left. 3 went.",
            None,
        );
        let starts: Vec<&str> = essay.starts.iter().map(|&i| essay.words[i]).collect();
        assert_eq!(starts, ["It", "Then", "\"Why?\"", "J.", "3"]);
    }

    #[test]
    fn long_runs_without_a_sentence_end_are_cut() {
        let text = "word ".repeat(150);
        assert_eq!(Essay::new(&text, None).starts, [0, 64, 128]);
        assert_eq!(Essay::new("", None).sentences(), 0);
    }

    #[test]
    fn uuids_are_version_4() {
        let mut rng = Rng::keyed(1, 1, 1);
        for _ in 0..100 {
            let u = Ty::Uuids.draw(&mut rng);
            let groups: Vec<&str> = u.split('-').collect();
            assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
            assert!(groups[2].starts_with('4'), "{u}");
            assert!("89ab".contains(&groups[3][..1]), "{u}");
        }
    }

    #[test]
    fn lists_in_english() {
        let items: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(english_list(&items[..1]), "a");
        assert_eq!(english_list(&items[..2]), "a and b");
        assert_eq!(english_list(&items), "a, b, and c");
    }
}
