//! The retrieval task generators: budgets, needles, answers, determinism, scoring, names, errors.
//!
//! The token counter is a whitespace word count and the essay haystack is synthetic running
//! text with varied sentences, so the tests need no model and no data download.

use attn_eval::retrieval::{generate, max_new_tokens, score, RetrievalError, Sample, TaskKind};

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// About `n` words of synthetic prose: sentences of varying length and wording, some ending
/// in `?` or `!`, with a few abbreviations that must not be taken as sentence ends.
fn essay(n: usize) -> String {
    const SUBJECTS: [&str; 8] = [
        "The founder",
        "A small team",
        "Every investor",
        "Our startup",
        "The market",
        "Users",
        "Most people",
        "The editor",
    ];
    const VERBS: [&str; 6] = ["noticed", "built", "ignored", "wanted", "measured", "described"];
    const OBJECTS: [&str; 7] = [
        "a better product",
        "the slow growth of the company",
        "what customers actually do",
        "an idea nobody else liked, e.g. a search engine",
        "the way cities grow over many decades",
        "a surprisingly simple rule",
        "the essay Mr. Graham wrote",
    ];
    let mut out = String::new();
    let mut state = 12345u64;
    let (mut i, mut count) = (0usize, 0usize);
    while count < n {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let pick = |k: u64, m: usize| ((state >> (16 + 5 * k)) as usize) % m;
        let end = [".", ".", ".", "?", "!"][pick(3, 5)];
        let sentence = format!(
            "{} {} {} in year {}{} ",
            SUBJECTS[pick(0, 8)],
            VERBS[pick(1, 6)],
            OBJECTS[pick(2, 7)],
            1900 + i % 120,
            end
        );
        count += words(&sentence);
        out.push_str(&sentence);
        i += 1;
    }
    out
}

fn all_kinds() -> Vec<TaskKind> {
    let mut kinds = TaskKind::standard();
    kinds.push(TaskKind::VariableTracking { chains: 3, hops: 2 });
    kinds.push(TaskKind::CommonWords { common: 5, frequencies: Some((12, 2)) });
    kinds
}

fn sample(kind: &TaskKind, hay: &str, target: usize, seed: u64, index: usize) -> Sample {
    generate(kind, hay, target, &words, seed, index)
        .unwrap_or_else(|e| panic!("{kind} at {target}: {e}"))
}

/// The context part of the prompt (between the last task instruction and the question).
fn answer_region(s: &Sample) -> &str {
    &s.prompt[..s.answer_prefix_at]
}

#[test]
fn every_task_fills_the_budget() {
    let hay = essay(40_000);
    for kind in all_kinds() {
        for target in [600, 2_000, 5_000, 12_000] {
            let s = sample(&kind, &hay, target, 7, 3);
            let n = words(&s.prompt);
            assert_eq!(n, s.prompt_tokens, "{kind}: reported count");
            assert!(n <= target, "{kind}: {n} tokens > target {target}");
            assert!(n as f64 >= 0.9 * target as f64, "{kind}: {n} tokens < 0.9 × {target}");
            assert_eq!((s.kind, s.index, s.seed, s.target_tokens), (kind, 3, 7, target));
        }
    }
}

#[test]
fn needles_and_answers_are_in_the_prompt() {
    let hay = essay(20_000);
    for kind in all_kinds() {
        for index in 0..5 {
            let s = sample(&kind, &hay, 3_000, 11, index);
            assert!(!s.answers.is_empty(), "{kind}");
            let body = answer_region(&s);
            for a in &s.answers {
                assert!(body.contains(a.as_str()), "{kind}: answer {a} not in the prompt");
            }
            for needle in &s.needles {
                assert_eq!(body.matches(needle.as_str()).count(), 1, "{kind}: needle {needle}");
            }
            match kind {
                TaskKind::CommonWords { .. } => assert!(s.needles.is_empty() && s.depth.is_none()),
                _ => {
                    // Every answer is stated by some needle.
                    for a in &s.answers {
                        assert!(s.needles.iter().any(|n| n.contains(a.as_str())), "{kind}: {a}");
                    }
                    let d = s.depth.expect("needle tasks report a depth");
                    assert!((0.0..=1.0).contains(&d), "{kind}: depth {d}");
                }
            }
        }
    }
}

#[test]
fn needle_counts_and_answer_counts_follow_ruler() {
    let hay = essay(10_000);
    let count = |name: &str| {
        let s = sample(&name.parse().unwrap(), &hay, 2_000, 1, 0);
        (s.needles.len(), s.answers.len())
    };
    assert_eq!(count("passkey"), (1, 1));
    assert_eq!(count("niah_single_2"), (1, 1));
    assert_eq!(count("niah_multikey_1"), (4, 1));
    assert_eq!(count("niah_multikey_2"), (1, 1));
    assert_eq!(count("niah_multivalue"), (4, 4));
    assert_eq!(count("niah_multiquery"), (4, 4));
    assert_eq!(count("vt"), (5, 5));
    assert_eq!(count("vt_c3_h2"), (9, 3));
    assert_eq!(count("cwe"), (0, 10));
    // niah_single_3 and niah_multikey_3 answer with UUIDs.
    for name in ["niah_single_3", "niah_multikey_3"] {
        let s = sample(&name.parse().unwrap(), &hay, 2_000, 1, 0);
        assert_eq!(s.answers[0].len(), 36, "{name}: {}", s.answers[0]);
        assert_eq!(s.answers[0].matches('-').count(), 4);
    }
    // In the needle haystack every line is a needle, and the real one is among them.
    let s = sample(&TaskKind::NiahMultiKey { variant: 2 }, "", 2_000, 1, 0);
    let context = &s.prompt[..s.answer_prefix_at];
    let lines: Vec<&str> = context.lines().filter(|l| l.starts_with("A special magic")).collect();
    assert!(lines.len() > 50, "{}", lines.len());
    assert!(lines.contains(&s.needles[0].as_str()));
}

#[test]
fn essay_needles_sit_at_sentence_boundaries() {
    let hay = essay(20_000);
    for kind in TaskKind::standard().into_iter().filter(TaskKind::uses_haystack) {
        for index in 0..8 {
            let s = sample(&kind, &hay, 4_000, 5, index);
            for needle in &s.needles {
                let at = s.prompt.find(needle.as_str()).unwrap();
                let before = s.prompt[..at].trim_end();
                let after = s.prompt[at + needle.len()..].trim_start();
                let prev_ok =
                    before.ends_with(['.', '!', '?', '\n']) || before.ends_with("afterwards.");
                assert!(prev_ok, "{kind}: needle after `{}`", &before[before.len() - 20..]);
                let next = after.chars().next().unwrap();
                assert!(
                    next.is_uppercase() || next.is_ascii_digit() || after.starts_with("A special"),
                    "{kind}: needle before `{}`",
                    &after[..20]
                );
            }
        }
    }
}

#[test]
fn common_words_are_the_most_frequent() {
    for (target, kind) in [
        (3_000, TaskKind::CommonWords { common: 10, frequencies: None }),
        (8_000, TaskKind::CommonWords { common: 10, frequencies: None }),
        // Long enough that the vocabulary runs out and the frequencies are scaled.
        (40_000, TaskKind::CommonWords { common: 10, frequencies: None }),
        (3_000, TaskKind::CommonWords { common: 5, frequencies: Some((12, 2)) }),
    ] {
        let s = sample(&kind, "", target, 3, 1);
        // The task's list is the last one (after the worked example).
        let list_start = s.prompt.rfind("\n1. ").unwrap();
        let list_end = s.prompt[list_start..].find("\nQuestion").unwrap() + list_start;
        let mut freq = std::collections::HashMap::<&str, usize>::new();
        for w in s.prompt[list_start..list_end].split_whitespace().filter(|w| !w.ends_with('.')) {
            *freq.entry(w).or_default() += 1;
        }
        let min_common = s.answers.iter().map(|a| freq[a.as_str()]).min().unwrap();
        let max_rare = freq
            .iter()
            .filter(|(w, _)| !s.answers.iter().any(|a| a == *w))
            .map(|(_, &c)| c)
            .max()
            .unwrap();
        assert!(min_common > max_rare, "{kind} at {target}: {min_common} vs {max_rare}");
        // The worked example's answers are different words.
        let example = &s.prompt[..list_start];
        for a in &s.answers {
            assert!(!example.contains(&format!(". {a} ")), "{kind}: {a} in the example");
        }
    }
}

#[test]
fn deterministic_by_seed_and_index() {
    let hay = essay(20_000);
    for kind in all_kinds() {
        let a = sample(&kind, &hay, 2_500, 42, 9);
        let b = sample(&kind, &hay, 2_500, 42, 9);
        assert_eq!(a, b, "{kind}: same inputs");
        let other_seed = sample(&kind, &hay, 2_500, 43, 9);
        let other_index = sample(&kind, &hay, 2_500, 42, 10);
        assert_ne!(a.prompt, other_seed.prompt, "{kind}: seed");
        assert_ne!(a.answers, other_seed.answers, "{kind}: seed");
        assert_ne!(a.prompt, other_index.prompt, "{kind}: index");
        assert_ne!(a.answers, other_index.answers, "{kind}: index");
    }
    // Depths vary across samples.
    let depths: std::collections::BTreeSet<u64> = (0..20)
        .map(|i| sample(&TaskKind::NiahSingle { variant: 2 }, &hay, 2_000, 1, i))
        .map(|s| (s.depth.unwrap() * 1000.0) as u64)
        .collect();
    assert!(depths.len() >= 10, "{depths:?}");
}

#[test]
fn scoring() {
    let hay = essay(10_000);
    for kind in all_kinds() {
        let s = sample(&kind, &hay, 1_500, 2, 0);
        let right = s.answers.join(", ");
        assert_eq!(score(&s, &right), 1.0, "{kind}");
        assert_eq!(score(&s, &format!(" {}.\nThat is all.", right.to_uppercase())), 1.0, "{kind}");
        assert_eq!(score(&s, "I do not know."), 0.0, "{kind}");
        assert_eq!(score(&s, ""), 0.0, "{kind}");
    }
    // Partial credit when some of several answers are found.
    let s = sample(&TaskKind::NiahMultiValue, &hay, 1_500, 2, 0);
    assert_eq!(score(&s, &format!("{} and {}", s.answers[0], s.answers[2])), 0.5);
    let s = sample(&TaskKind::CommonWords { common: 10, frequencies: None }, "", 1_500, 2, 0);
    assert_eq!(score(&s, &s.answers[..3].join(" ")), 0.3);
    // Variable tracking ignores case, as RULER does.
    let s = sample(&TaskKind::VariableTracking { chains: 1, hops: 4 }, "", 1_500, 2, 0);
    assert_eq!(score(&s, &s.answers[..4].join(" ").to_lowercase()), 0.8);
    // The passkey must be the whole number.
    let s = sample(&TaskKind::Passkey, "", 1_500, 2, 0);
    let key = &s.answers[0];
    assert_eq!(score(&s, &format!("The pass key is {key}.")), 1.0);
    assert_eq!(score(&s, &format!("The pass key is {key}7.")), 0.0);
    assert_eq!(score(&s, &format!("The pass key is 1{key}")), 0.0);
}

#[test]
fn names_round_trip() {
    let names = [
        "passkey",
        "niah_single_1",
        "niah_single_2",
        "niah_single_3",
        "niah_multikey_1",
        "niah_multikey_2",
        "niah_multikey_3",
        "niah_multivalue",
        "niah_multiquery",
        "vt",
        "cwe",
    ];
    let standard: Vec<String> = TaskKind::standard().iter().map(ToString::to_string).collect();
    assert_eq!(standard, names);
    for name in names.into_iter().chain(["vt_c2_h6", "cwe_5", "cwe_8_20_2"]) {
        let kind: TaskKind = name.parse().unwrap();
        assert_eq!(kind.to_string(), name);
    }
    for kind in all_kinds() {
        assert_eq!(kind.to_string().parse::<TaskKind>().unwrap(), kind);
    }
    assert_eq!("NIAH_Single_2".parse::<TaskKind>().unwrap(), TaskKind::NiahSingle { variant: 2 });
    assert_eq!(
        "vt_c1_h4".parse::<TaskKind>().unwrap(),
        TaskKind::VariableTracking { chains: 1, hops: 4 }
    );
    assert_eq!("vt_c1_h4".parse::<TaskKind>().unwrap().to_string(), "vt");
    assert_eq!(format!("[{:<8}]", TaskKind::NiahMultiValue), "[niah_multivalue]");
    assert_eq!(format!("[{:>9}]", TaskKind::Passkey), "[  passkey]");
    for bad in [
        "",
        "needle",
        "niah_single_4",
        "niah_single",
        "niah_multikey_0",
        "vt_c_h4",
        "vt_c1",
        "cwe_x",
        "cwe_1_2",
        "fwe",
        "qa_1",
    ] {
        assert!(
            matches!(bad.parse::<TaskKind>(), Err(RetrievalError::UnknownTask(_))),
            "`{bad}` parsed"
        );
    }
    for bad in ["vt_c0_h4", "vt_c1_h0", "cwe_0", "cwe_10_3_3", "cwe_10_30_0", "cwe_101"] {
        assert!(
            matches!(bad.parse::<TaskKind>(), Err(RetrievalError::InvalidTask { .. })),
            "`{bad}` parsed"
        );
    }
}

#[test]
fn impossible_requests_are_typed_errors() {
    let hay = essay(3_000);
    for kind in all_kinds() {
        match generate(&kind, &hay, 20, &words, 0, 0) {
            Err(RetrievalError::TargetTooSmall { target_tokens: 20, needed_tokens, .. }) => {
                assert!(needed_tokens > 20, "{kind}")
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    for kind in TaskKind::standard().into_iter().filter(TaskKind::uses_haystack) {
        match generate(&kind, &hay, 10_000, &words, 0, 0) {
            Err(RetrievalError::HaystackTooShort {
                target_tokens: 10_000,
                available_tokens,
                ..
            }) => {
                assert!((3_000..10_000).contains(&available_tokens), "{kind}: {available_tokens}")
            }
            other => panic!("{kind}: {other:?}"),
        }
        assert!(matches!(
            generate(&kind, "", 1_000, &words, 0, 0),
            Err(RetrievalError::HaystackTooShort { .. })
        ));
    }
    // A counter that never grows cannot be filled.
    assert!(matches!(
        generate(&TaskKind::Passkey, "", 100, &|_: &str| 5, 0, 0),
        Err(RetrievalError::HaystackTooShort { .. })
    ));
    for kind in [
        TaskKind::NiahSingle { variant: 0 },
        TaskKind::NiahMultiKey { variant: 4 },
        TaskKind::VariableTracking { chains: 1, hops: 0 },
        TaskKind::CommonWords { common: 10, frequencies: Some((3, 3)) },
    ] {
        assert!(
            matches!(
                generate(&kind, &hay, 1_000, &words, 0, 0),
                Err(RetrievalError::InvalidTask { .. })
            ),
            "{kind:?}"
        );
    }
}

#[test]
fn cheap_tokens_read_past_the_first_slice_of_the_haystack() {
    // Eight words per token: more words than the generator reads at first (4 per token).
    let eighth = |s: &str| words(s) / 8;
    let hay = essay(30_000);
    let kind = TaskKind::NiahSingle { variant: 2 };
    let s = generate(&kind, &hay, 2_000, &eighth, 4, 0).unwrap();
    assert!((1_800..=2_000).contains(&s.prompt_tokens), "{}", s.prompt_tokens);
    assert!(words(&s.prompt) > 4 * 2_000 + 1_024);
    assert_eq!(s, generate(&kind, &hay, 2_000, &eighth, 4, 0).unwrap());
}

#[test]
fn generation_lengths() {
    assert_eq!(max_new_tokens(&TaskKind::NiahMultiValue), 128);
    assert_eq!(max_new_tokens(&TaskKind::VariableTracking { chains: 1, hops: 4 }), 30);
    assert_eq!(max_new_tokens(&TaskKind::CommonWords { common: 10, frequencies: None }), 120);
    assert!(max_new_tokens(&TaskKind::Passkey) >= 8);
}

/// Speed by hand: `cargo test -p attn-eval --test retrieval -- --ignored --nocapture`.
/// Set `ATTN_ESSAYS` to a text file (e.g. the Paul Graham essays) to use real text.
#[test]
#[ignore = "timing, run by hand"]
fn speed_32k() {
    let hay = std::env::var("ATTN_ESSAYS")
        .map(|p| std::fs::read_to_string(p).expect("ATTN_ESSAYS"))
        .unwrap_or_else(|_| essay(200_000));
    let calls = std::cell::Cell::new(0usize);
    let chars4 = |s: &str| {
        calls.set(calls.get() + 1);
        s.chars().count().div_ceil(4)
    };
    for kind in TaskKind::standard() {
        calls.set(0);
        let t = std::time::Instant::now();
        let s = generate(&kind, &hay, 32_768, &chars4, 1, 0).unwrap();
        let dt = t.elapsed();
        println!(
            "{kind:16} {:6} tokens  {:8} bytes  {:3} counter calls  {:7.1} ms",
            s.prompt_tokens,
            s.prompt.len(),
            calls.get(),
            dt.as_secs_f64() * 1e3
        );
        assert!(s.prompt_tokens <= 32_768 && s.prompt_tokens >= 29_491);
        assert!(dt.as_secs_f64() < 1.0, "{kind}: {dt:?}");
    }
}
