//! Validated, resolved settings: the raw [`crate::args`] are checked and turned into these once,
//! before any work (shapes parsed, methods looked up in the registry, file formats known), so a
//! mistake on the command line fails in milliseconds, not after a long benchmark.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use attn::{DType, Mask, MethodRef, Par, Params};

use crate::args::{
    BenchArgs, CheckArgs, CommonArgs, DTypeArg, LayoutArg, ListArgs, MaskArg, RunArgs,
};
use crate::shape::{self, Shape};
use crate::tensor_file::{Format, Source};

/// Where JSON goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonDest {
    Stdout,
    File(PathBuf),
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Worker threads asked for (`None`: rayon's default pool).
    pub threads: Option<usize>,
    pub json: Option<JsonDest>,
    pub seed: u64,
}

impl Runtime {
    pub fn from_args(a: &CommonArgs) -> Result<Self> {
        if a.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        let json = a.json.as_ref().map(|p| {
            if p.as_os_str() == "-" {
                JsonDest::Stdout
            } else {
                JsonDest::File(p.clone())
            }
        });
        Ok(Self { threads: a.threads, json, seed: a.seed })
    }

    /// Builds the global rayon pool with exactly `--threads` workers (once, before any work).
    pub fn install_thread_pool(&self) -> Result<()> {
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .with_context(|| format!("building a pool of {n} threads"))?;
        }
        Ok(())
    }

    /// The parallelism kernels get.
    pub fn par(&self) -> Par {
        self.threads.map_or(Par::All, Par::with_threads)
    }

    /// Worker threads kernels actually use.
    pub fn threads_used(&self) -> usize {
        self.par().threads()
    }

    /// True when JSON replaces the table on stdout.
    pub fn json_to_stdout(&self) -> bool {
        self.json == Some(JsonDest::Stdout)
    }

    /// Writes `value` as pretty JSON where `--json` said.
    pub fn write_json(&self, value: &impl serde::Serialize) -> Result<()> {
        match &self.json {
            None => Ok(()),
            Some(JsonDest::Stdout) => {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer_pretty(&mut out, value)?;
                use std::io::Write;
                writeln!(out)?;
                Ok(())
            }
            Some(JsonDest::File(p)) => {
                let text = serde_json::to_string_pretty(value)? + "\n";
                std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
            }
        }
    }
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

fn lookup(spec: &str) -> Result<MethodRef> {
    Ok(attn::registry().build(spec)?)
}

/// The method specs of repeated/comma-separated `--method` values, built.
fn method_specs(values: &[String]) -> Result<Vec<MethodRef>> {
    split_method_specs(values).iter().map(|s| lookup(s)).collect()
}

/// Splits repeated/comma-separated `--method` values into one string per method. Commas separate
/// methods and also the parameters of one spec (`a-shape:sink=64,window=512,sdpa-flash`): an item
/// with `=` but no `:` continues the spec before it.
pub fn split_method_specs(values: &[String]) -> Vec<String> {
    let mut specs: Vec<String> = Vec::new();
    for v in values {
        let mut own = false; // whether the last spec came from this value
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match specs.last_mut() {
                Some(last) if own && item.contains('=') && !item.contains(':') => {
                    last.push(',');
                    last.push_str(item);
                }
                _ => {
                    specs.push(item.to_string());
                    own = true;
                }
            }
        }
    }
    specs
}

/// The method `attn run --method` forces: `None` for `auto`, else the full spec (name and every
/// parameter, so `gated-deltanet:beta=0.3` runs with β = 0.3).
fn forced_method(spec: &str) -> Result<Option<String>> {
    Ok(match spec {
        "auto" => None,
        spec => Some(lookup(spec)?.spec()),
    })
}

/// `attn list`.
#[derive(Debug, Clone)]
pub struct ListConfig {
    /// Methods to show with their parameters (`routing` or `routing:window=64`, which shows the
    /// values given); empty = every method, compactly.
    pub methods: Vec<MethodRef>,
}

impl ListConfig {
    pub fn from_args(a: &ListArgs) -> Result<Self> {
        Ok(Self { methods: method_specs(&a.methods)? })
    }
}

/// How long each bench case is timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timing {
    /// Exactly this many timed calls.
    Reps(usize),
    /// Until this much time has been timed, with at least [`MIN_REPS`] calls.
    MinTime(Duration),
}

/// Fewest timed calls per case under [`Timing::MinTime`] (a median of fewer means little).
pub const MIN_REPS: usize = 3;

/// One method on one shape with one mask.
#[derive(Debug, Clone)]
pub struct BenchCase {
    pub method: MethodRef,
    pub shape: Shape,
    pub causal: bool,
}

/// `attn bench`.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub cases: Vec<BenchCase>,
    /// Cases named on the command line that the method rejects, with the reasons (reported).
    pub skipped: Vec<String>,
    pub timing: Timing,
    pub warmup: usize,
    pub dtype: DType,
    /// Report the attention mass approximate methods keep.
    pub recall: bool,
    /// Real recorded heads instead of random inputs.
    pub real: Option<crate::real::RealInputs>,
    /// Time the methods of a shape in rounds (`--interleave`).
    pub interleave: bool,
}

/// The default grid: B = 1, H = 8, S ∈ {1k, 4k, 16k}, D ∈ {64, 128} (the main measurement until
/// `attn eval` exists; ~2 minutes on 2 cores).
fn default_grid() -> Vec<Shape> {
    let mut g = Vec::new();
    for s in [1024, 4096, 16384] {
        for d in [64, 128] {
            g.push(Shape::square(8, s, d));
        }
    }
    g
}

/// The `--quick` grid: two small prefill shapes and one decode shape.
fn quick_grid() -> Vec<Shape> {
    vec![
        Shape::square(8, 256, 64),
        Shape::square(8, 1024, 64),
        Shape { b: 1, h: 8, h_kv: 2, s_q: 1, s_kv: 4096, d: 128, d_v: 128 },
    ]
}

/// Methods timed when none is named: `sdpa-flash` everywhere, `sdpa-decode` where it applies.
const DEFAULT_METHODS: [&str; 2] = ["sdpa-flash", "sdpa-decode"];

impl BenchConfig {
    pub fn from_args(a: &BenchArgs) -> Result<Self> {
        let dtype = DType::from(a.dtype);
        let builtin = a.shape.is_empty();
        let shapes = if builtin && a.quick {
            quick_grid()
        } else if builtin {
            default_grid()
        } else {
            let mut v = Vec::new();
            for s in &a.shape {
                v.extend(shape::parse(s)?);
            }
            v
        };
        let masks: &[bool] = match (a.causal, a.both) {
            (true, _) => &[true],
            (false, true) => &[false, true],
            (false, false) if builtin => &[false, true],
            (false, false) => &[false],
        };
        let named = method_specs(&a.method)?;

        let flash = lookup(DEFAULT_METHODS[0])?;
        // A registry without the decode path still benches flash.
        let decode = lookup(DEFAULT_METHODS[1]).ok();
        let mut cases = Vec::new();
        let mut skipped = Vec::new();
        for &shape in &shapes {
            for &causal in masks {
                let params = if causal { Params::causal() } else { Params::default() };
                let p = shape.problem(dtype);
                // Named methods are reported when they reject a shape; by default sdpa-decode
                // joins only on the shapes it accepts.
                let (methods, report) = if named.is_empty() {
                    (
                        std::iter::once(flash.clone()).chain(decode.clone()).collect(),
                        vec![true, false],
                    )
                } else {
                    (named.clone(), vec![true; named.len()])
                };
                for (m, report) in methods.into_iter().zip(report) {
                    let reasons = m.unsupported(&p, &params);
                    if reasons.is_empty() {
                        cases.push(BenchCase { method: m, shape, causal });
                    } else if report {
                        let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                        skipped.push(format!(
                            "{} on {}{}: {}",
                            m.name(),
                            shape.label(),
                            if causal { " causal" } else { "" },
                            why.join("; ")
                        ));
                    }
                }
            }
        }
        if cases.is_empty() {
            bail!("nothing to run: every method rejects every shape:\n  {}", skipped.join("\n  "));
        }

        let timing = match (a.reps, a.min_time) {
            (Some(_), Some(_)) => bail!("give --reps or --min-time, not both"),
            (Some(0), _) => bail!("--reps must be at least 1"),
            (Some(n), None) => Timing::Reps(n),
            (None, t) => {
                let t = t.unwrap_or(if a.quick { 0.2 } else { 1.0 });
                ensure!(t.is_finite() && t >= 0.0, "--min-time must be a number of seconds ≥ 0");
                Timing::MinTime(Duration::from_secs_f64(t))
            }
        };
        let real = match &a.qkv {
            Some(f) => Some(crate::real::RealInputs::load(
                f,
                &a.qkv_heads,
                match a.qkv_tiling {
                    crate::args::TilingArg::Repeat => crate::real::Tiling::Repeat,
                    crate::args::TilingArg::Rope => crate::real::Tiling::Rope,
                },
            )?),
            None => None,
        };
        Ok(Self {
            cases,
            skipped,
            timing,
            warmup: a.warmup,
            dtype,
            recall: a.recall,
            real,
            interleave: a.interleave,
        })
    }
}

/// Where the log-sum-exp goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LseDest {
    None,
    /// Tensor `lse` in the `--out` safetensors file.
    WithOutput,
    File(PathBuf, Format),
}

/// `attn run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Forced method; `None` selects automatically.
    pub method: Option<String>,
    pub q: Source,
    pub k: Source,
    pub v: Source,
    /// Files hold `[B, S, H, D]` instead of `[B, H, S, D]`.
    pub bshd: bool,
    pub params: Params,
    pub out: PathBuf,
    pub out_format: Format,
    pub lse: LseDest,
    pub check_finite: bool,
    /// Untimed calls before the timed one.
    pub warmup: usize,
    /// Per-token gates and states (the linear family's fla-layout path).
    pub state: StateIo,
}

/// `attn run`'s per-token gate, β and state files.
#[derive(Debug, Clone, Default)]
pub struct StateIo {
    pub g: Option<Source>,
    pub beta: Option<Source>,
    pub initial_state: Option<Source>,
    pub final_state: Option<(PathBuf, Format)>,
}

impl StateIo {
    /// Whether any of the options is given.
    pub fn any(&self) -> bool {
        self.g.is_some()
            || self.beta.is_some()
            || self.initial_state.is_some()
            || self.final_state.is_some()
    }
}

impl RunConfig {
    pub fn from_args(a: &RunArgs) -> Result<Self> {
        let method = forced_method(&a.method)?;
        if let Some(p) = &a.inputs {
            ensure!(
                Format::of(p)? == Format::Safetensors,
                "--inputs takes a .safetensors file holding q, k and v; got {}",
                p.display()
            );
        }
        let source = |arg: &Option<String>, name: &str| -> Result<Source> {
            match (arg, &a.inputs) {
                (Some(s), _) => Source::parse(s, name).with_context(|| format!("--{name} {s}")),
                (None, Some(file)) => Ok(Source {
                    path: file.clone(),
                    format: Format::Safetensors,
                    name: Some(name.to_string()),
                }),
                (None, None) => bail!("missing --{name} FILE (or --inputs FILE.safetensors)"),
            }
        };
        let (q, k, v) = (source(&a.q, "q")?, source(&a.k, "k")?, source(&a.v, "v")?);

        let window = a.window.as_deref().map(parse_window).transpose()?;
        let mask = match (a.causal, window) {
            (false, None) => Mask::None,
            (true, None) => Mask::Causal,
            (false, Some(w)) => w,
            (true, Some(w)) => Mask::And(vec![Mask::Causal, w]),
        };
        let params = Params {
            scale: a.scale,
            softcap: a.softcap,
            alibi_slopes: None,
            mask,
            q_offset: a.q_offset,
        };

        let opt_source =
            |arg: &Option<String>, name: &str, tensor: &str| -> Result<Option<Source>> {
                arg.as_deref()
                    .map(|s| Source::parse(s, tensor).with_context(|| format!("--{name} {s}")))
                    .transpose()
            };
        let state = StateIo {
            g: opt_source(&a.g, "g", "g")?,
            beta: opt_source(&a.beta, "beta", "beta")?,
            initial_state: opt_source(&a.initial_state, "initial-state", "initial_state")?,
            final_state: match &a.final_state {
                Some(p) => Some((p.clone(), Format::of(p).context("--final-state")?)),
                None => None,
            },
        };
        let out_format = Format::of(&a.out).context("--out")?;
        let lse = match &a.lse {
            None => LseDest::None,
            Some(None) => {
                ensure!(
                    out_format == Format::Safetensors,
                    "--lse without a FILE stores the LSE beside o in a .safetensors --out; \
                     with a .npy --out give --lse FILE.npy"
                );
                LseDest::WithOutput
            }
            Some(Some(p)) => LseDest::File(p.clone(), Format::of(p).context("--lse")?),
        };
        Ok(Self {
            method,
            q,
            k,
            v,
            bshd: a.layout == LayoutArg::Bshd,
            params,
            out: a.out.clone(),
            out_format,
            lse,
            check_finite: a.check_finite,
            warmup: a.warmup,
            state,
        })
    }
}

/// `L,R` with either side empty (or `inf`) for unbounded.
fn parse_window(s: &str) -> Result<Mask> {
    let err = || {
        format!("--window {s:?}: expected L,R (keys before and after the query position, e.g. 127,0; leave a side empty for unbounded)")
    };
    let (l, r) = s.split_once(',').with_context(err)?;
    let side = |x: &str| -> Result<Option<usize>> {
        match x.trim() {
            "" | "inf" => Ok(None),
            n => Ok(Some(n.parse().with_context(err)?)),
        }
    };
    Ok(Mask::Window { left: side(l)?, right: side(r)? })
}

/// `attn check`.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub methods: Vec<MethodRef>,
    pub shapes: Vec<Shape>,
    pub masks: Vec<MaskArg>,
    pub dtype: DType,
    pub tol: f64,
}

/// Small shapes that reach the corners: MHA, GQA with lengths off the tile grid and S_q ≠ S_kv,
/// decode over many keys, and S_q > S_kv (causal rows with no key).
fn check_shapes() -> Vec<Shape> {
    vec![
        Shape { b: 1, h: 2, h_kv: 2, s_q: 64, s_kv: 64, d: 64, d_v: 64 },
        Shape { b: 2, h: 4, h_kv: 2, s_q: 65, s_kv: 100, d: 80, d_v: 80 },
        Shape { b: 1, h: 8, h_kv: 2, s_q: 1, s_kv: 1000, d: 128, d_v: 128 },
        Shape { b: 1, h: 2, h_kv: 1, s_q: 100, s_kv: 37, d: 32, d_v: 16 },
    ]
}

impl CheckConfig {
    pub fn from_args(a: &CheckArgs) -> Result<Self> {
        let methods: Vec<MethodRef> = if a.method.is_empty() {
            let all = attn::registry().methods().iter().copied();
            all.filter(|m| !m.is_reference()).map(MethodRef::Static).collect()
        } else {
            method_specs(&a.method)?
        };
        let shapes = if a.shape.is_empty() {
            check_shapes()
        } else {
            let mut v = Vec::new();
            for s in &a.shape {
                v.extend(shape::parse(s)?);
            }
            v
        };
        let mut masks = if a.mask.is_empty() {
            vec![MaskArg::None, MaskArg::Causal, MaskArg::Window]
        } else {
            a.mask.clone()
        };
        if masks.contains(&MaskArg::All) {
            masks = vec![
                MaskArg::None,
                MaskArg::Causal,
                MaskArg::Window,
                MaskArg::Padding,
                MaskArg::Prefix,
                MaskArg::Block,
            ];
        }
        masks.dedup();
        ensure!(a.tol.is_finite() && a.tol > 0.0, "--tol must be a positive number");
        Ok(Self { methods, shapes, masks, dtype: a.dtype.into(), tol: a.tol })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(
            parse_window("127,0").unwrap(),
            Mask::Window { left: Some(127), right: Some(0) }
        );
        assert_eq!(parse_window(",3").unwrap(), Mask::Window { left: None, right: Some(3) });
        assert_eq!(parse_window("inf, 2").unwrap(), Mask::Window { left: None, right: Some(2) });
        assert!(parse_window("12").is_err());
        assert!(parse_window("a,b").is_err());
    }

    #[test]
    fn method_lists_and_specs() {
        let names = |v: &[&str]| -> Vec<String> {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            method_specs(&v).unwrap().iter().map(|m| m.spec()).collect()
        };
        assert_eq!(names(&["sdpa-flash,sdpa-reference"]), ["sdpa-flash", "sdpa-reference"]);
        assert_eq!(names(&["sdpa-flash", "sdpa-decode"]), ["sdpa-flash", "sdpa-decode"]);
        assert!(method_specs(&["sdpa-flash:x=1,y=2".to_string()]).is_err());
        assert!(method_specs(&["nope".to_string()]).is_err());
    }

    /// `attn run --method name:key=value` keeps the parameters (they were dropped: the run used
    /// the registered defaults).
    #[test]
    fn run_keeps_the_method_parameters() {
        assert_eq!(forced_method("auto").unwrap(), None);
        let m = forced_method("gated-deltanet:beta=0.3,decay=0.9").unwrap().unwrap();
        let m = attn::methods::build(&m).unwrap();
        let p = |k: &str| m.params().into_iter().find(|p| p.name == k).unwrap().value;
        assert_eq!((p("beta"), p("decay")), ("0.3".to_string(), "0.9".to_string()));
        assert!(forced_method("gated-deltanet:gamma=1").is_err());
    }
}
