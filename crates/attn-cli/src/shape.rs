//! Shape specs: `b1,h8,hkv2,sq1,skv32768,d128` and grids like `h8,s1k/4k,d64/128`
//! (the syntax is documented in the `--shape` help of [`crate::args`]).

use anyhow::{bail, ensure, Context, Result};

/// The dimensions of one problem (the library's vocabulary; dtype chosen separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub b: usize,
    pub h: usize,
    pub h_kv: usize,
    pub s_q: usize,
    pub s_kv: usize,
    pub d: usize,
    pub d_v: usize,
}

impl Shape {
    /// `B = 1`, `H = H_kv = h`, `S_q = S_kv = s`, `D = D_v = d`.
    pub fn square(h: usize, s: usize, d: usize) -> Self {
        Self { b: 1, h, h_kv: h, s_q: s, s_kv: s, d, d_v: d }
    }

    /// The problem for this shape and element type.
    pub fn problem(&self, dtype: attn::DType) -> attn::Problem {
        let Shape { b, h, h_kv, s_q, s_kv, d, d_v } = *self;
        attn::Problem { b, h, h_kv, s_q, s_kv, d, d_v, dtype }
    }

    /// `[B, H, S_q, D]`, `[B, H_kv, S_kv, D]`, `[B, H_kv, S_kv, D_v]`.
    pub fn qkv_shapes(&self) -> [[usize; 4]; 3] {
        [
            [self.b, self.h, self.s_q, self.d],
            [self.b, self.h_kv, self.s_kv, self.d],
            [self.b, self.h_kv, self.s_kv, self.d_v],
        ]
    }

    /// Bytes of q, k and v with `elem` bytes per element; `None` when that overflows.
    pub fn input_bytes(&self, elem: usize) -> Option<usize> {
        self.qkv_shapes().iter().try_fold(0usize, |total, s| {
            let n = s.iter().try_fold(elem, |a, &d| a.checked_mul(d))?;
            total.checked_add(n)
        })
    }

    /// Fails when the inputs of this shape cannot be allocated (checked before generating them,
    /// so an oversized spec is an error rather than an abort).
    pub fn ensure_inputs_fit(&self, dtype: attn::DType) -> Result<()> {
        let need = self.input_bytes(dtype.size()).filter(|&n| n <= isize::MAX as usize);
        let Some(need) = need else {
            bail!("{}: the inputs would overflow the address space", self.label());
        };
        if let Some(avail) = attn::memory::available_bytes() {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            ensure!(
                need <= avail,
                "{}: q, k and v need {:.1} GiB but {:.1} GiB of memory is available",
                self.label(),
                gib(need),
                gib(avail)
            );
        }
        Ok(())
    }

    /// The label benches and tests use (`b1_h8x2_sq512_skv512_d64`).
    pub fn label(&self) -> String {
        self.problem(attn::DType::F32).label()
    }
}

const KEYS: [&str; 8] = ["b", "h", "hkv", "s", "sq", "skv", "d", "dv"];

/// Parses one spec into every shape it names (the cartesian product of its alternatives).
pub fn parse(spec: &str) -> Result<Vec<Shape>> {
    parse_inner(spec).with_context(|| format!("bad shape spec {spec:?} (see attn bench --help)"))
}

fn parse_inner(spec: &str) -> Result<Vec<Shape>> {
    // values[i]: the alternatives given for KEYS[i] (empty = not given).
    let mut values: [Vec<usize>; 8] = Default::default();
    for item in spec.split([',', '_']).map(str::trim).filter(|s| !s.is_empty()) {
        let split = item.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(item.len());
        let (key, rest) = item.split_at(split);
        let key = key.to_ascii_lowercase();
        let Some(slot) = KEYS.iter().position(|k| *k == key) else {
            bail!("unknown key {key:?} in {item:?}; keys are {}", KEYS.join(", "));
        };
        ensure!(values[slot].is_empty(), "{key} given twice");
        if key == "h" && rest.contains('x') {
            // `h8x2`: H and H_kv in one item, as in the labels.
            let (h, h_kv) = rest.split_once('x').expect("checked above");
            values[slot] = parse_values(h)?;
            ensure!(values[2].is_empty(), "hkv given twice");
            values[2] = parse_values(h_kv)?;
        } else {
            values[slot] = parse_values(rest).with_context(|| format!("in {item:?}"))?;
        }
    }
    let [b, h, h_kv, s, s_q, s_kv, d, d_v] = values;
    // (S_q, S_kv) pairs: `s` ties them, `sq` and `skv` combine freely.
    let lengths: Vec<(usize, usize)> = match (s.is_empty(), s_q.is_empty(), s_kv.is_empty()) {
        (false, true, true) => s.iter().map(|&n| (n, n)).collect(),
        (true, false, false) => {
            s_q.iter().flat_map(|&q| s_kv.iter().map(move |&k| (q, k))).collect()
        }
        (true, _, _) => bail!("give s (S_q = S_kv) or both sq and skv"),
        (false, _, _) => bail!("give either s or sq and skv, not both"),
    };
    let or = |v: Vec<usize>, default: usize| if v.is_empty() { vec![default] } else { v };
    let mut out = Vec::new();
    for &b in &or(b, 1) {
        for &h in &or(h.clone(), 8) {
            for &h_kv in &or(h_kv.clone(), h) {
                ensure!(h % h_kv == 0, "H = {h} is not a multiple of H_kv = {h_kv}");
                for &(s_q, s_kv) in &lengths {
                    for &d in &or(d.clone(), 64) {
                        for &d_v in &or(d_v.clone(), d) {
                            let shape = Shape { b, h, h_kv, s_q, s_kv, d, d_v };
                            ensure!(
                                shape.input_bytes(8).is_some(),
                                "{} is too large",
                                shape.label()
                            );
                            out.push(shape);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `1024`, `16k`, `1k/4k/16k`.
fn parse_values(s: &str) -> Result<Vec<usize>> {
    ensure!(!s.is_empty(), "missing value");
    s.split('/')
        .map(|v| {
            let (digits, mult) = match v.strip_suffix(['k', 'K']) {
                Some(d) => (d, 1024),
                None => (v, 1),
            };
            let n: usize =
                digits.parse().with_context(|| format!("{v:?} is not a positive integer"))?;
            ensure!(n > 0, "dimensions must be positive, got {v:?}");
            n.checked_mul(mult).with_context(|| format!("{v:?} is too large"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_spec() {
        let s = parse("b1,h8,hkv2,sq1,skv32768,d128").unwrap();
        assert_eq!(s, vec![Shape { b: 1, h: 8, h_kv: 2, s_q: 1, s_kv: 32768, d: 128, d_v: 128 }]);
    }

    #[test]
    fn defaults_grid_and_labels_round_trip() {
        let s = parse("s1k/4k,d64/128").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], Shape::square(8, 1024, 64));
        assert_eq!(s[3], Shape::square(8, 4096, 128));
        let g = Shape { b: 2, h: 8, h_kv: 2, s_q: 100, s_kv: 300, d: 80, d_v: 64 };
        assert_eq!(parse(&g.label()).unwrap(), vec![g]);
    }

    #[test]
    fn errors_name_the_problem() {
        for (spec, want) in [
            ("h8,d64", "give s"),
            ("s8,sq4,skv4", "not both"),
            ("x3,s4", "unknown key"),
            ("h6,hkv4,s8", "not a multiple"),
            ("s0", "positive"),
            ("s8,s9", "twice"),
            ("s,d64", "missing value"),
            ("sabc", "unknown key"),
            ("s12q", "not a positive integer"),
            ("b99999999999,s99999999999", "too large"),
        ] {
            let e = format!("{:#}", parse(spec).unwrap_err());
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
