//! Long-context retrieval tasks: passkey retrieval and RULER-style needle tasks, generated
//! deterministically from a seed and fitted to a token budget.
//!
//! The task logic follows RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of
//! Your Long-Context Language Models?"), as packaged in NVIDIA's `nvidia-long-context-eval`; the
//! passkey task follows Mohtashami and Jaggi (2023, "Landmark Attention"). The logic is
//! re-implemented here; **the instruction, question and answer-prefix sentences are our own
//! wording** with the same structure as the originals (an instruction, the context, a question
//! and an answer prefix the model continues), so scores are comparable in kind but not
//! bit-identical to published RULER numbers. The noise filler ("The grass is green. The sky is
//! blue. …") is the standard filler of the passkey test and is used as is.
//!
//! | name | haystack | needle(s) | answer |
//! |---|---|---|---|
//! | `passkey` | noise filler | one 5-digit pass key | the key |
//! | `niah_single_1` | noise filler | 1 key (`adjective-noun`) → 7-digit number | the number |
//! | `niah_single_2` | essays | 1 word key → number | the number |
//! | `niah_single_3` | essays | 1 word key → UUID | the UUID |
//! | `niah_multikey_1` | essays | 4 word keys → numbers, 1 asked | its number |
//! | `niah_multikey_2` | the haystack *is* needles (word keys → numbers) | 1 | its number |
//! | `niah_multikey_3` | the haystack *is* needles (UUID keys → UUIDs) | 1 | its UUID |
//! | `niah_multivalue` | essays | 1 key → 4 numbers | all 4 |
//! | `niah_multiquery` | essays | 4 keys → numbers, all 4 asked | all 4 |
//! | `vt` | noise lines | `VAR X = 12345` chains (1 chain, 4 hops) | every variable holding the value |
//! | `cwe` | a numbered word list | 10 words repeated often, the rest rarely | the 10 frequent words |
//!
//! **Budget.** The prompt (instruction, context, question, answer prefix) has at most
//! `target_tokens` tokens as measured by the caller's `count_tokens`, and is filled to within
//! 1/256 of that (or as far as a haystack unit allows): the haystack size is found by secant
//! steps, a gallop and an interpolation search (5–10 tokenizer calls at 32k tokens), where RULER
//! steps the size up in fixed increments. Room for the answer is *not* reserved: a caller with a
//! context window of `C` tokens asks for `C - max_new_tokens(kind)`. (RULER counts the generated
//! tokens into its budget; here that is the caller's choice.)
//!
//! **Haystacks.** The essay variants use the caller's text from its start, in whole sentences (a
//! sentence ends in `.`, `!` or `?`, possibly followed by a closing quote or bracket, before a
//! word that starts with a capital letter or a digit; common abbreviations and initials do not
//! end sentences; text without sentence ends is cut every 64 words), with whitespace collapsed
//! to single spaces. Needles go in between sentences there, and between noise blocks or lines
//! elsewhere. Depths are drawn without replacement from 40 evenly spaced points of `[0, 1]`, as
//! RULER does; [`Sample::depth`] reports where the answer-carrying needles actually landed.
//!
//! **Randomness** comes from a SplitMix64 generator keyed by `(seed, task name, index, stream)`,
//! so the same `(kind, haystack, target_tokens, count_tokens, seed, index)` always gives the same
//! sample, and samples can be generated in any order or in parallel.
//!
//! **Deviations from RULER.**
//! - Keys made of words use a word list written for this crate (see `words.rs`) rather than the
//!   `wonderwords` lists; common-words answers are never part of another word of the list.
//! - The essays are cut at sentence ends rather than mid-sentence, and the noise haystack of
//!   `niah_single_1` places its needle on the same 40-point depth grid as the essay tasks
//!   (RULER picks any line there).
//! - The common-words task needs more distinct words at long contexts than any list holds (RULER
//!   then stops growing the list, so its prompt falls short of the budget); here, once the rare
//!   words run out, every frequency is multiplied by the same factor `m` (the frequent words
//!   appear `m·30` times, rare ones at most `m·3` times), so the list still fills the budget and
//!   the 10 frequent words stay the 10 most frequent. The worked example's words are never the
//!   task's answers.
//! - Variable tracking puts each noise block and each assignment on a line of its own; its
//!   worked example has 5 noise lines (RULER fills about 500 tokens).
//! - Answer prefixes end without a trailing space, so the model's first token carries its own.

mod cwe;
mod fit;
mod niah;
mod rng;
mod vt;
mod words;

use std::fmt;
use std::str::FromStr;

use fit::{Built, Fitted};

/// A retrieval task: which haystack, which needles, which question.
///
/// Parsed from and printed as the task names of RULER's `synthetic.yaml` (plus `passkey` and
/// spelled-out variants of `vt` and `cwe`): see [`TaskKind::from_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// A 5-digit pass key hidden in repeated noise sentences (Mohtashami and Jaggi, 2023).
    Passkey,
    /// One needle, one question. `variant` 1: noise haystack, number value; 2: essay haystack,
    /// number value; 3: essay haystack, UUID value (the keys are `adjective-noun` words).
    NiahSingle {
        /// 1, 2 or 3.
        variant: u8,
    },
    /// Several keys, one asked. `variant` 1: 4 needles with word keys in the essays; 2: the whole
    /// haystack is needles with word keys and number values; 3: the same with UUID keys and values.
    NiahMultiKey {
        /// 1, 2 or 3.
        variant: u8,
    },
    /// One key with 4 number values spread over the essays; all 4 are asked for.
    NiahMultiValue,
    /// 4 keys with one number each in the essays; all 4 are asked for at once.
    NiahMultiQuery,
    /// Chains of assignments `VAR B = VAR A` starting from `VAR A = 12345`, hidden among noise
    /// lines; the answer is every variable of the first chain (the others are distractors).
    VariableTracking {
        /// Number of chains (1 in RULER's `vt`).
        chains: usize,
        /// Assignments after the first in each chain (4 in RULER's `vt`).
        hops: usize,
    },
    /// A numbered list of words in which `common` words repeat often and the rest rarely; the
    /// answer is the `common` frequent words.
    CommonWords {
        /// How many frequent words (10 in RULER's `cwe`).
        common: usize,
        /// `(frequent, rare)` repetitions; `None` is RULER's schedule: `(30, 3)` for targets of
        /// 4096 tokens or more, `(6, 1)` below.
        frequencies: Option<(usize, usize)>,
    },
}

/// Defaults of RULER's `vt` task.
const VT_DEFAULT: (usize, usize) = (1, 4);
/// Default number of frequent words of RULER's `cwe` task.
const CWE_DEFAULT: usize = 10;

impl TaskKind {
    /// The passkey task and RULER's 11 synthetic retrieval tasks with their default settings,
    /// in the order of RULER's `synthetic.yaml`.
    pub fn standard() -> Vec<TaskKind> {
        let mut all = vec![TaskKind::Passkey];
        all.extend((1..=3).map(|variant| TaskKind::NiahSingle { variant }));
        all.extend((1..=3).map(|variant| TaskKind::NiahMultiKey { variant }));
        all.extend([
            TaskKind::NiahMultiValue,
            TaskKind::NiahMultiQuery,
            TaskKind::VariableTracking { chains: VT_DEFAULT.0, hops: VT_DEFAULT.1 },
            TaskKind::CommonWords { common: CWE_DEFAULT, frequencies: None },
        ]);
        all
    }

    /// Whether [`generate`] reads its `haystack` argument (the essay variants); the other tasks
    /// build their own filler and ignore it.
    pub fn uses_haystack(&self) -> bool {
        matches!(
            self,
            TaskKind::NiahSingle { variant: 2 | 3 }
                | TaskKind::NiahMultiKey { variant: 1 }
                | TaskKind::NiahMultiValue
                | TaskKind::NiahMultiQuery
        )
    }

    /// Checks the parameters (variants 1–3, at least one chain and one hop, frequent words
    /// more frequent than rare ones, …).
    pub fn validate(&self) -> Result<(), RetrievalError> {
        let invalid =
            |detail: String| Err(RetrievalError::InvalidTask { task: self.to_string(), detail });
        match *self {
            TaskKind::NiahSingle { variant } | TaskKind::NiahMultiKey { variant }
                if !(1..=3).contains(&variant) =>
            {
                invalid(format!("variant {variant} is not 1, 2 or 3"))
            }
            TaskKind::VariableTracking { chains, hops } => {
                if chains == 0 || hops == 0 {
                    invalid("needs at least one chain and one hop".into())
                } else if chains > vt::MAX_CHAINS || hops > vt::MAX_HOPS {
                    invalid(format!("at most {} chains and {} hops", vt::MAX_CHAINS, vt::MAX_HOPS))
                } else {
                    Ok(())
                }
            }
            TaskKind::CommonWords { common, frequencies } => {
                if common == 0 || common > cwe::MAX_COMMON {
                    return invalid(format!("needs 1 to {} frequent words", cwe::MAX_COMMON));
                }
                match frequencies {
                    Some((frequent, rare)) if rare == 0 || frequent <= rare => invalid(format!(
                        "frequent words ({frequent}×) must repeat more often than rare ones \
                         ({rare}×), and rare ones at least once"
                    )),
                    Some((frequent, _)) if frequent > cwe::MAX_FREQUENCY => {
                        invalid(format!("at most {} repetitions", cwe::MAX_FREQUENCY))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for TaskKind {
    /// The task's name, as [`TaskKind::from_str`] reads it (width and alignment are honoured).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            TaskKind::Passkey => "passkey".to_string(),
            TaskKind::NiahSingle { variant } => format!("niah_single_{variant}"),
            TaskKind::NiahMultiKey { variant } => format!("niah_multikey_{variant}"),
            TaskKind::NiahMultiValue => "niah_multivalue".to_string(),
            TaskKind::NiahMultiQuery => "niah_multiquery".to_string(),
            TaskKind::VariableTracking { chains, hops } if (chains, hops) == VT_DEFAULT => {
                "vt".to_string()
            }
            TaskKind::VariableTracking { chains, hops } => format!("vt_c{chains}_h{hops}"),
            TaskKind::CommonWords { common: CWE_DEFAULT, frequencies: None } => "cwe".to_string(),
            TaskKind::CommonWords { common, frequencies: None } => format!("cwe_{common}"),
            TaskKind::CommonWords { common, frequencies: Some((frequent, rare)) } => {
                format!("cwe_{common}_{frequent}_{rare}")
            }
        };
        f.pad(&name)
    }
}

impl FromStr for TaskKind {
    type Err = RetrievalError;

    /// Parses `passkey`, `niah_single_1`…`3`, `niah_multikey_1`…`3`, `niah_multivalue`,
    /// `niah_multiquery`, `vt` (1 chain, 4 hops), `vt_c<chains>_h<hops>`, `cwe` (10 words,
    /// RULER's frequencies), `cwe_<words>` and `cwe_<words>_<frequent>_<rare>`; ASCII case is
    /// ignored. Unknown names give [`RetrievalError::UnknownTask`], known names with unusable
    /// parameters [`RetrievalError::InvalidTask`].
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.trim().to_ascii_lowercase();
        let unknown = || RetrievalError::UnknownTask(name.to_string());
        let number = |s: &str| -> Result<usize, RetrievalError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unknown());
            }
            s.parse().map_err(|_| unknown())
        };
        let kind = match lower.as_str() {
            "passkey" => TaskKind::Passkey,
            "niah_single_1" | "niah_single_2" | "niah_single_3" => {
                TaskKind::NiahSingle { variant: lower.as_bytes()[12] - b'0' }
            }
            "niah_multikey_1" | "niah_multikey_2" | "niah_multikey_3" => {
                TaskKind::NiahMultiKey { variant: lower.as_bytes()[14] - b'0' }
            }
            "niah_multivalue" => TaskKind::NiahMultiValue,
            "niah_multiquery" => TaskKind::NiahMultiQuery,
            "vt" => TaskKind::VariableTracking { chains: VT_DEFAULT.0, hops: VT_DEFAULT.1 },
            "cwe" => TaskKind::CommonWords { common: CWE_DEFAULT, frequencies: None },
            other => {
                if let Some(rest) = other.strip_prefix("vt_c") {
                    let (chains, hops) = rest.split_once("_h").ok_or_else(unknown)?;
                    TaskKind::VariableTracking { chains: number(chains)?, hops: number(hops)? }
                } else if let Some(rest) = other.strip_prefix("cwe_") {
                    let parts: Vec<&str> = rest.split('_').collect();
                    match parts[..] {
                        [common] => {
                            TaskKind::CommonWords { common: number(common)?, frequencies: None }
                        }
                        [common, frequent, rare] => TaskKind::CommonWords {
                            common: number(common)?,
                            frequencies: Some((number(frequent)?, number(rare)?)),
                        },
                        _ => return Err(unknown()),
                    }
                } else {
                    return Err(unknown());
                }
            }
        };
        kind.validate()?;
        Ok(kind)
    }
}

/// Why a sample cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetrievalError {
    /// The task name is not one of [`TaskKind::from_str`]'s.
    #[error(
        "unknown retrieval task `{0}` (known: passkey, niah_single_1..3, niah_multikey_1..3, \
         niah_multivalue, niah_multiquery, vt, vt_c<chains>_h<hops>, cwe, cwe_<words>, \
         cwe_<words>_<frequent>_<rare>)"
    )]
    UnknownTask(String),
    /// A known task with parameters it cannot use.
    #[error("retrieval task {task}: {detail}")]
    InvalidTask {
        /// The task's name.
        task: String,
        /// What is wrong.
        detail: String,
    },
    /// The whole haystack yields a prompt shorter than the target.
    #[error(
        "retrieval task {task}: the whole haystack gives a prompt of {available_tokens} tokens, \
         short of the {target_tokens}-token target"
    )]
    HaystackTooShort {
        /// The task's name.
        task: String,
        /// The requested prompt length.
        target_tokens: usize,
        /// The prompt length with the whole haystack.
        available_tokens: usize,
    },
    /// The instruction, needles and question alone exceed the target.
    #[error(
        "retrieval task {task}: a {target_tokens}-token target is too small; the prompt without \
         any haystack already has {needed_tokens} tokens"
    )]
    TargetTooSmall {
        /// The task's name.
        task: String,
        /// The requested prompt length.
        target_tokens: usize,
        /// The prompt length with an empty haystack.
        needed_tokens: usize,
    },
}

/// One generated test case.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The full model input: instruction, context, question and the answer prefix that the
    /// model continues (no chat template, no special tokens).
    pub prompt: String,
    /// Byte offset in `prompt` where the answer prefix starts (`prompt[..answer_prefix_at]` is
    /// the instruction, context and question), for callers that wrap the question in a chat
    /// template and put the prefix in the assistant's turn.
    pub answer_prefix_at: usize,
    /// The expected answers; [`score`] counts how many of them the output contains.
    pub answers: Vec<String>,
    /// The inserted needle sentences: for `niah_multikey_1` also its three distractor needles
    /// (the distractor lines that make up the haystack of `niah_multikey_2`/`3` are not listed);
    /// every chain assignment of variable tracking; empty for common words.
    pub needles: Vec<String>,
    /// The task.
    pub kind: TaskKind,
    /// The sample index the draws were keyed by.
    pub index: usize,
    /// The seed the draws were keyed by.
    pub seed: u64,
    /// The requested prompt length.
    pub target_tokens: usize,
    /// The prompt length, `count_tokens(&prompt)`; at most `target_tokens`.
    pub prompt_tokens: usize,
    /// Mean position of the answer-carrying needles in the haystack, as a fraction of the
    /// haystack (0 = start, 1 = end); `None` for common words.
    pub depth: Option<f64>,
}

/// What a task module hands back.
struct Draft {
    built: Built,
    tokens: usize,
    answers: Vec<String>,
    needles: Vec<String>,
}

/// The standard noise filler of the passkey test and of RULER's noise haystacks.
const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/// Number of evenly spaced needle depths (RULER's 40 points of `[0, 100]` percent).
const DEPTH_POINTS: usize = 40;

/// Depth `i` of [`DEPTH_POINTS`] evenly spaced points of `[0, 1]`.
fn grid_depth(i: usize) -> f64 {
    i as f64 / (DEPTH_POINTS - 1) as f64
}

/// Upper bound on haystack units for the tasks whose filler never runs out: a unit has at
/// least one token with any sensible counter, so `4·target + 64` units always overshoot.
fn unbounded_units(target_tokens: usize) -> usize {
    target_tokens.saturating_mul(4).saturating_add(64)
}

/// Runs [`fit::fit`] and turns its failures into typed errors.
fn fit_prompt(
    kind: &TaskKind,
    target_tokens: usize,
    max_units: usize,
    count_tokens: &dyn Fn(&str) -> usize,
    build: &dyn Fn(usize) -> Built,
) -> Result<(Built, usize), RetrievalError> {
    match fit::fit(target_tokens, max_units, count_tokens, build) {
        Fitted::Fits(built, tokens) => Ok((built, tokens)),
        Fitted::TooSmall(needed_tokens) => Err(RetrievalError::TargetTooSmall {
            task: kind.to_string(),
            target_tokens,
            needed_tokens,
        }),
        Fitted::Exhausted(available_tokens) => Err(RetrievalError::HaystackTooShort {
            task: kind.to_string(),
            target_tokens,
            available_tokens,
        }),
    }
}

/// Generates sample `index` of task `kind` with a prompt of at most `target_tokens` tokens.
///
/// `haystack` is the running text for the essay variants (RULER uses Paul Graham's essays; see
/// [`TaskKind::uses_haystack`]); it is used from its start, in whole sentences, with whitespace
/// collapsed to single spaces. Other tasks ignore it. `count_tokens` is the model's tokenizer (tokens of a
/// string, special tokens included or not as the caller will feed them). The same inputs always
/// give the same sample.
///
/// Errors: [`RetrievalError::InvalidTask`] for bad parameters,
/// [`RetrievalError::TargetTooSmall`] when even an empty haystack does not fit,
/// [`RetrievalError::HaystackTooShort`] when the whole haystack does not reach the target.
pub fn generate(
    kind: &TaskKind,
    haystack: &str,
    target_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
    seed: u64,
    index: usize,
) -> Result<Sample, RetrievalError> {
    kind.validate()?;
    let key = task_seed(kind, seed);
    let draft = match *kind {
        TaskKind::VariableTracking { chains, hops } => {
            vt::generate(kind, chains, hops, target_tokens, count_tokens, key, index)?
        }
        TaskKind::CommonWords { common, frequencies } => {
            cwe::generate(kind, common, frequencies, target_tokens, count_tokens, key, index)?
        }
        _ => niah::generate(kind, haystack, target_tokens, count_tokens, key, index)?,
    };
    Ok(Sample {
        prompt: draft.built.prompt,
        answer_prefix_at: draft.built.prefix_at,
        answers: draft.answers,
        needles: draft.needles,
        kind: *kind,
        index,
        seed,
        target_tokens,
        prompt_tokens: draft.tokens,
        depth: draft.built.depth,
    })
}

/// The key of every draw of a sample: the caller's seed mixed with the task's name (FNV-1a), so
/// that two tasks generated under one seed do not share their keys and depths.
fn task_seed(kind: &TaskKind, seed: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in kind.to_string().bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ hash
}

/// The score of a generated answer, in `[0, 1]`: the fraction of [`Sample::answers`] that occur
/// in `generated`.
///
/// This is RULER's `string_match_all`: a case-insensitive substring test per answer (Unicode
/// lower-casing, as Python's `str.lower`). For the passkey the key must appear as a whole
/// number (not inside a longer run of digits), so `123456` does not count for `12345`.
pub fn score(sample: &Sample, generated: &str) -> f64 {
    if sample.answers.is_empty() {
        return 0.0;
    }
    if sample.kind == TaskKind::Passkey {
        return sample.answers.iter().filter(|a| contains_number(generated, a)).count() as f64
            / sample.answers.len() as f64;
    }
    let output = generated.to_lowercase();
    let found = sample.answers.iter().filter(|a| output.contains(&a.to_lowercase())).count();
    found as f64 / sample.answers.len() as f64
}

/// Whether `number` occurs in `text` with no ASCII digit right before or after it.
fn contains_number(text: &str, number: &str) -> bool {
    if number.is_empty() {
        return false;
    }
    let bytes = text.as_bytes();
    text.match_indices(number).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i].is_ascii_digit()).unwrap_or(false);
        let after = bytes.get(at + number.len()).is_some_and(u8::is_ascii_digit);
        !before && !after
    })
}

/// How many tokens to generate for an answer of task `kind` (RULER's `tokens_to_generate`:
/// 128 for the needle tasks, 30 for variable tracking, 120 for common words; 16 for the passkey).
pub fn max_new_tokens(kind: &TaskKind) -> usize {
    match kind {
        TaskKind::Passkey => 16,
        TaskKind::NiahSingle { .. }
        | TaskKind::NiahMultiKey { .. }
        | TaskKind::NiahMultiValue
        | TaskKind::NiahMultiQuery => 128,
        TaskKind::VariableTracking { .. } => 30,
        TaskKind::CommonWords { .. } => 120,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_only() {
        assert!(contains_number("The pass key is 12345.", "12345"));
        assert!(contains_number("12345", "12345"));
        assert!(!contains_number("The pass key is 123456.", "12345"));
        assert!(!contains_number("0012345", "12345"));
        assert!(contains_number("9912345 and then 12345", "12345"));
        assert!(!contains_number("anything", ""));
    }
}
