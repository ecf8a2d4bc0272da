//! Fitting a prompt to a token budget: the largest haystack whose prompt still fits.
//!
//! A task describes its prompt as a function of a haystack size `n` (words of an essay, noise
//! blocks, distractor lines, list entries); the token count grows with `n`. RULER grows `n` in
//! fixed steps until the budget is exceeded; here an `n` whose prompt is within 1/256 below the
//! budget (or, failing that, the largest that fits) is found with few calls of the (possibly
//! slow) tokenizer: secant steps from a small probe, a gallop to bracket the answer, then
//! interpolation and bisection inside the bracket. Every accepted `n` was measured, so the
//! result never exceeds the budget even where the count is not monotone in `n`.

/// A prompt built for one haystack size.
#[derive(Debug, Clone)]
pub(crate) struct Built {
    /// The full prompt.
    pub prompt: String,
    /// Byte offset of the answer prefix in `prompt`.
    pub prefix_at: usize,
    /// Mean depth of the needles that carry answers, as a fraction of the haystack.
    pub depth: Option<f64>,
}

/// The outcome of [`fit`].
pub(crate) enum Fitted {
    /// The prompt of the largest fitting size, and its token count.
    Fits(Built, usize),
    /// Even the empty haystack does not fit: the prompt needs this many tokens.
    TooSmall(usize),
    /// The whole haystack (`max_units`) gives a prompt shorter than the target, of this many
    /// tokens.
    Exhausted(usize),
}

/// How many secant steps run at most before the gallop and the bisection take over.
const SECANT_STEPS: usize = 5;
/// The first probe size.
const PROBE: usize = 32;
/// Close enough: a prompt within this fraction below the target ends the search (about 128
/// tokens at 32k; below 256 tokens only an exact fit does). The secant steps aim here, so that
/// they tend to land just inside the budget.
const AIM_BELOW: f64 = 1.0 / 256.0;

/// Finds an `n <= max_units` with `count(build(n)) <= target`: the first one measured within
/// [`AIM_BELOW`] of the target, or else the largest.
pub(crate) fn fit(
    target: usize,
    max_units: usize,
    count: &dyn Fn(&str) -> usize,
    build: &dyn Fn(usize) -> Built,
) -> Fitted {
    let (b0, c0) = {
        let built = build(0);
        let tokens = count(&built.prompt);
        (built, tokens)
    };
    if c0 > target {
        return Fitted::TooSmall(c0);
    }
    let mut s =
        Search { target, lo: 0, lo_tokens: c0, best: b0, hi: max_units + 1, hi_tokens: None };
    let measure = |s: &mut Search, n: usize| {
        let built = build(n);
        let tokens = count(&built.prompt);
        s.record(n, built, tokens);
        tokens
    };
    let aim = target as f64 * (1.0 - AIM_BELOW);
    // Units per `AIM_BELOW · target` tokens, from the average tokens per unit.
    let mut tolerance_units = 1usize;

    // 1. Secant steps from the empty haystack and a small probe.
    let mut prev = (0usize, c0);
    let mut guess = max_units.min(PROBE);
    for _ in 0..SECANT_STEPS {
        if s.lo_tokens as f64 >= aim || guess <= s.lo || guess >= s.hi {
            break;
        }
        let tokens = measure(&mut s, guess);
        let average = (tokens as f64 - c0 as f64) / guess as f64;
        if average > 0.0 {
            tolerance_units = ((target as f64 - aim) / average).ceil().max(1.0) as usize;
        }
        let slope = (tokens as f64 - prev.1 as f64) / (guess as f64 - prev.0 as f64);
        prev = (guess, tokens);
        if slope.is_nan() || slope <= 0.0 {
            break;
        }
        let next = guess as f64 + (aim - tokens as f64) / slope;
        guess = if next <= 0.0 { 0 } else { (next.floor() as usize).min(max_units) };
    }

    // 2. Gallop from the side nearer the target (in tokens) until the bracket is about
    // `tolerance_units` wide; upward while nothing is known not to fit.
    let mut step = tolerance_units;
    while (s.lo_tokens as f64) < aim {
        let up = match s.hi_tokens {
            None if s.lo == max_units => break,
            None => true,
            Some(_) if s.hi - s.lo <= 2 * step => break,
            Some(hi_tokens) => target - s.lo_tokens <= hi_tokens - target,
        };
        let n = if up { (s.lo + step).min(s.hi - 1) } else { (s.hi - step).max(s.lo + 1) };
        measure(&mut s, n);
        step = step.saturating_mul(2);
    }
    if s.lo == max_units && (s.lo_tokens as f64) < aim {
        return Fitted::Exhausted(s.lo_tokens);
    }

    // 3. Interpolation inside (lo, hi), with a bisection step after any interpolation that did
    // not halve the bracket.
    let mut bisect = false;
    while s.hi - s.lo > 1 && (s.lo_tokens as f64) < aim {
        let width = s.hi - s.lo;
        let mid = match s.hi_tokens {
            Some(hi_tokens) if !bisect && hi_tokens > s.lo_tokens => {
                let fraction = (target - s.lo_tokens) as f64 / (hi_tokens - s.lo_tokens) as f64;
                s.lo + (fraction * width as f64).floor() as usize
            }
            _ => s.lo + width / 2,
        };
        let n = mid.clamp(s.lo + 1, s.hi - 1);
        measure(&mut s, n);
        bisect = !bisect && 2 * (s.hi - s.lo) > width;
    }
    Fitted::Fits(s.best, s.lo_tokens)
}

/// The bracket of [`fit`]: `lo` fits (its prompt is `best`), `hi` does not (or is one past the
/// largest size when `hi_tokens` is `None`).
struct Search {
    target: usize,
    lo: usize,
    lo_tokens: usize,
    best: Built,
    hi: usize,
    hi_tokens: Option<usize>,
}

impl Search {
    fn record(&mut self, n: usize, built: Built, tokens: usize) {
        if tokens <= self.target {
            if n > self.lo {
                (self.lo, self.lo_tokens, self.best) = (n, tokens, built);
            }
        } else if n < self.hi && n > self.lo {
            (self.hi, self.hi_tokens) = (n, Some(tokens));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn words(n: usize) -> Built {
        Built { prompt: "w ".repeat(n + 10), prefix_at: 0, depth: None }
    }

    #[test]
    fn fills_the_target_with_few_calls() {
        let calls = Cell::new(0usize);
        let count = |s: &str| {
            calls.set(calls.get() + 1);
            s.split_whitespace().count()
        };
        for target in [10, 11, 57, 255, 1000, 32_768, 100_000] {
            calls.set(0);
            match fit(target, 1_000_000, &count, &words) {
                Fitted::Fits(b, tokens) => {
                    assert!(tokens <= target && tokens as f64 >= target as f64 * (1.0 - AIM_BELOW));
                    assert_eq!(b.prompt.split_whitespace().count(), tokens);
                }
                _ => panic!("target {target} should fit"),
            }
            assert!(calls.get() <= 6, "target {target}: {} tokenizer calls", calls.get());
        }
    }

    #[test]
    fn reports_too_small_and_exhausted() {
        let count = |s: &str| s.split_whitespace().count();
        assert!(matches!(fit(9, 100, &count, &words), Fitted::TooSmall(10)));
        assert!(matches!(fit(500, 100, &count, &words), Fitted::Exhausted(110)));
        assert!(matches!(fit(110, 100, &count, &words), Fitted::Fits(_, 110)));
        assert!(matches!(fit(109, 100, &count, &words), Fitted::Fits(_, 109)));
    }

    #[test]
    fn never_exceeds_the_target_when_the_count_is_not_monotone() {
        // A count that wobbles by a few tokens around a linear trend.
        let count = |s: &str| {
            let n = s.split_whitespace().count();
            n + (n * 7919 % 13)
        };
        for target in [100, 333, 4096, 20_000] {
            match fit(target, 1_000_000, &count, &words) {
                Fitted::Fits(b, tokens) => {
                    assert!(tokens <= target);
                    assert_eq!(count(&b.prompt), tokens);
                    // Within the aim, less at most one wobble and one unit.
                    let aim = target as f64 * (1.0 - AIM_BELOW);
                    assert!(tokens as f64 + 14.0 >= aim, "{tokens} vs {target}");
                }
                _ => panic!("target {target} should fit"),
            }
        }
    }
}
