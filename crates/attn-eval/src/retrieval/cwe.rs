//! Common-words extraction (RULER's `cwe`): a numbered list of words in which a few words
//! repeat often; the answer is those words.
//!
//! As in RULER a worked example (a short list and its answer) comes first. The list grows one
//! rare word at a time (each rare word adds `rare` entries). Once every rare word of the
//! vocabulary is in use, both frequencies are multiplied by `m = ceil(used / available)` and the
//! rare words are reused, so the frequent words stay strictly the most frequent (see the module
//! documentation of `retrieval`).

use std::sync::OnceLock;

use super::fit::Built;
use super::rng::{stream, Rng};
use super::{fit_prompt, unbounded_units, words, Draft, RetrievalError, TaskKind};

/// Most frequent words a task may ask for.
pub(crate) const MAX_COMMON: usize = 100;
/// Most repetitions a frequent word may have.
pub(crate) const MAX_FREQUENCY: usize = 1000;
/// Targets below this use RULER's short-context frequencies.
const LONG_TARGET: usize = 4096;

/// The sentences around a list (question text also filters the vocabulary).
fn question(list: &str, common: usize) -> (String, String) {
    (
        format!(
            "Here is a numbered list of words. Some words occur more often than others; \
             remember the ones that occur most often.\n{list}\nQuestion: Which {common} words \
             occur most often in the list above?"
        ),
        format!(" Answer: The {common} words that occur most often in the list above are:"),
    )
}

/// The vocabulary without words that occur inside the task's own sentences.
fn vocabulary() -> &'static [&'static str] {
    static CELL: OnceLock<Vec<&'static str>> = OnceLock::new();
    CELL.get_or_init(|| {
        let (body, prefix) = question("", 0);
        let text = format!("{body}{prefix}").to_lowercase();
        words::vocabulary().iter().copied().filter(|w| !text.contains(w)).collect()
    })
}

/// `1. a 2. b 3. c`.
fn numbered(words: &[&str]) -> String {
    let mut out = String::with_capacity(words.len() * 12);
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&(i + 1).to_string());
        out.push_str(". ");
        out.push_str(w);
    }
    out
}

/// The list entries: `common` words `frequent` times each and `rare` words `rare_times` times
/// each, shuffled.
fn entries<'a>(
    common: &[&'a str],
    frequent: usize,
    rare: impl Iterator<Item = &'a str>,
    rare_times: usize,
    rng: &mut Rng,
) -> Vec<&'a str> {
    let mut list: Vec<&str> = Vec::new();
    for w in common {
        list.extend(std::iter::repeat_n(*w, frequent));
    }
    for w in rare {
        list.extend(std::iter::repeat_n(w, rare_times));
    }
    rng.shuffle(&mut list);
    list
}

pub(crate) fn generate(
    kind: &TaskKind,
    common: usize,
    frequencies: Option<(usize, usize)>,
    target_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
    seed: u64,
    index: usize,
) -> Result<Draft, RetrievalError> {
    let long = target_tokens >= LONG_TARGET;
    // RULER: the example has 20 words (3× / 1×) below 4096 tokens, 40 words (10× / 3×) above.
    let (frequent, rare) = frequencies.unwrap_or(if long { (30, 3) } else { (6, 1) });
    let (example_words, example_frequent, example_rare) =
        if long { ((4 * common).max(40), 10, 3) } else { ((2 * common).max(20), 3, 1) };

    let mut pool: Vec<&'static str> = vocabulary().to_vec();
    if pool.len() < common + example_words {
        return Err(RetrievalError::InvalidTask {
            task: kind.to_string(),
            detail: format!("the word list has only {} words", pool.len()),
        });
    }
    Rng::keyed(seed, index, stream::CONTENT).shuffle(&mut pool);
    let (answers, rare_pool) = pool.split_at(common);

    // The worked example draws from the rare pool, so its answers are not the task's.
    let mut example_rng = Rng::keyed(seed, index, stream::EXAMPLE);
    let picked: Vec<&str> = example_rng
        .sample(rare_pool.len(), example_words)
        .into_iter()
        .map(|i| rare_pool[i])
        .collect();
    let (example_common, example_rest) = picked.split_at(common);
    let example_list = entries(
        example_common,
        example_frequent,
        example_rest.iter().copied(),
        example_rare,
        &mut example_rng,
    );
    let (example_body, example_prefix) = question(&numbered(&example_list), common);
    let shot = format!("{example_body}{example_prefix} {}\n", numbered(example_common));

    let available = rare_pool.len();
    let build = |used: usize| {
        let rounds = used.div_ceil(available).max(1);
        let list = entries(
            answers,
            frequent * rounds,
            (0..used).map(|j| rare_pool[j % available]),
            rare,
            &mut Rng::keyed(seed, index, stream::SHUFFLE),
        );
        let (body, prefix) = question(&numbered(&list), common);
        let mut prompt = String::with_capacity(shot.len() + body.len() + prefix.len());
        prompt.push_str(&shot);
        prompt.push_str(&body);
        let prefix_at = prompt.len();
        prompt.push_str(&prefix);
        Built { prompt, prefix_at, depth: None }
    };
    let (built, tokens) =
        fit_prompt(kind, target_tokens, unbounded_units(target_tokens), count_tokens, &build)?;
    Ok(Draft {
        built,
        tokens,
        answers: answers.iter().map(|w| w.to_string()).collect(),
        needles: Vec::new(),
    })
}
