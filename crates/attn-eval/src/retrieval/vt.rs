//! Variable tracking (RULER's `vt`): chains of assignments hidden among noise lines.
//!
//! Chain `c` is `VAR A = 12345`, `VAR B = VAR A`, …, `hops` assignments after the first, in
//! order but at random depths; the question gives the value of chain 0 and asks for every
//! variable that holds it. The other chains (with other values) are distractors. As in RULER a
//! short worked example (3-letter names, a few noise lines, its answer) comes first.

use super::fit::Built;
use super::rng::{stream, Rng};
use super::{fit_prompt, unbounded_units, Draft, RetrievalError, TaskKind, NOISE};

/// Most chains a task may have.
pub(crate) const MAX_CHAINS: usize = 20;
/// Most hops a chain may have.
pub(crate) const MAX_HOPS: usize = 50;
/// Length of variable names in the task (RULER: 5) and in the worked example (RULER: 3).
const NAME_LEN: usize = 5;
const EXAMPLE_NAME_LEN: usize = 3;
/// Hops of the worked example are capped here (as RULER caps them at 10).
const EXAMPLE_MAX_HOPS: usize = 10;
/// Noise lines of the worked example.
const EXAMPLE_NOISE: usize = 5;

/// Chains of one instance: variable names, values, statements and their depths.
struct Chains {
    /// `names[c]` are the `hops + 1` variables of chain `c`, in assignment order.
    names: Vec<Vec<String>>,
    /// The value chain 0 starts from.
    value: String,
    /// Every assignment: (depth in `[0, 1)`, chain, text), sorted by depth; each chain's
    /// assignments keep their order.
    statements: Vec<(f64, usize, String)>,
}

fn name(rng: &mut Rng, len: usize) -> String {
    (0..len).map(|_| char::from(b'A' + rng.below(26) as u8)).collect()
}

fn draw_chains(rng: &mut Rng, chains: usize, hops: usize, name_len: usize) -> Chains {
    let mut all: Vec<String> = Vec::with_capacity(chains * (hops + 1));
    while all.len() < chains * (hops + 1) {
        let n = name(rng, name_len);
        if !all.contains(&n) {
            all.push(n);
        }
    }
    let names: Vec<Vec<String>> = all.chunks(hops + 1).map(<[String]>::to_vec).collect();
    let mut values: Vec<u64> = Vec::with_capacity(chains);
    while values.len() < chains {
        let v = rng.between(10_000, 99_999);
        if !values.contains(&v) {
            values.push(v);
        }
    }
    let mut statements = Vec::with_capacity(chains * (hops + 1));
    for (c, chain) in names.iter().enumerate() {
        let mut depths: Vec<f64> = (0..=hops).map(|_| rng.unit()).collect();
        depths.sort_by(f64::total_cmp);
        for (h, depth) in depths.into_iter().enumerate() {
            let text = if h == 0 {
                format!("VAR {} = {}", chain[0], values[c])
            } else {
                format!("VAR {} = VAR {}", chain[h], chain[h - 1])
            };
            statements.push((depth, c, text));
        }
    }
    // Stable: equal depths keep chain and hop order.
    statements.sort_by(|a, b| a.0.total_cmp(&b.0));
    Chains { names, value: values[0].to_string(), statements }
}

/// The context: `n` noise lines with the assignments before line `floor(n·depth)`; also the
/// mean relative line position of chain 0's assignments.
fn context(chains: &Chains, n: usize) -> (String, f64) {
    let mut lines: Vec<&str> = Vec::with_capacity(n + chains.statements.len());
    let mut from = 0;
    let (mut sum, mut count) = (0.0, 0usize);
    for (depth, c, text) in &chains.statements {
        let at = ((n as f64 * depth).floor() as usize).min(n);
        lines.extend(std::iter::repeat_n(NOISE, at - from));
        lines.push(text);
        from = at;
        if *c == 0 {
            sum += if n == 0 { *depth } else { at as f64 / n as f64 };
            count += 1;
        }
    }
    lines.extend(std::iter::repeat_n(NOISE, n - from));
    (lines.join("\n"), sum / count as f64)
}

fn question(context: &str, value: &str, variables: usize) -> (String, String) {
    (
        format!(
            "Keep track of the chains of variable assignments hidden in the text below.\n\n\
             {context}\nQuestion: Which variables are assigned the value {value} in the text \
             above? Name all of them."
        ),
        format!(
            " Answer: Following the assignments in the text above, {variables} variables are \
             assigned the value {value}. They are:"
        ),
    )
}

pub(crate) fn generate(
    kind: &TaskKind,
    chains: usize,
    hops: usize,
    target_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
    seed: u64,
    index: usize,
) -> Result<Draft, RetrievalError> {
    let mut rng = Rng::keyed(seed, index, stream::CONTENT);
    let task = draw_chains(&mut rng, chains, hops, NAME_LEN);

    let mut example_rng = Rng::keyed(seed, index, stream::EXAMPLE);
    let example_hops = hops.min(EXAMPLE_MAX_HOPS);
    let example = draw_chains(&mut example_rng, chains, example_hops, EXAMPLE_NAME_LEN);
    let (example_context, _) = context(&example, EXAMPLE_NOISE);
    let (example_body, example_prefix) =
        question(&example_context, &example.value, example_hops + 1);
    let shot = format!("{example_body}{example_prefix} {}\n\n", example.names[0].join(" "));

    let build = |n: usize| {
        let (context, depth) = context(&task, n);
        let (body, prefix) = question(&context, &task.value, hops + 1);
        let mut prompt = String::with_capacity(shot.len() + body.len() + prefix.len());
        prompt.push_str(&shot);
        prompt.push_str(&body);
        let prefix_at = prompt.len();
        prompt.push_str(&prefix);
        Built { prompt, prefix_at, depth: Some(depth) }
    };
    let (built, tokens) =
        fit_prompt(kind, target_tokens, unbounded_units(target_tokens), count_tokens, &build)?;
    Ok(Draft {
        built,
        tokens,
        answers: task.names[0].clone(),
        needles: task.statements.into_iter().map(|(_, _, text)| text).collect(),
    })
}
