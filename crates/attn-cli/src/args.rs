//! The command line as clap sees it: raw values, close to what was typed. Everything here is
//! checked and resolved by [`crate::config`] before any work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Help text for `--shape`, shared by `bench` and `check`.
const SHAPE_HELP: &str = "\
Problem shape(s), repeatable. A spec is a comma- (or underscore-) separated list of KEY VALUE \
items:
  b     batch size B                  (default 1)
  h     query heads H                 (default 8; `h8x2` also sets H_kv = 2)
  hkv   key/value heads H_kv, divides H (default H)
  s     S_q = S_kv                    (give s, or both sq and skv)
  sq    query rows S_q
  skv   keys S_kv
  d     head dim D of q and k         (default 64)
  dv    head dim D_v of v             (default D)
Values are integers with an optional k suffix (16k = 16384); `a/b/c` lists alternatives and the \
spec expands to every combination.
Examples: b1,h8,s4096,d128   b1,h8,hkv2,sq1,skv32768,d128   h8,s1k/4k,d64/128   \
b1_h8x2_sq512_skv512_d64 (the labels printed by bench)";

/// attn — attention kernels: list, check, benchmark and run the registered methods.
#[derive(Debug, Parser)]
#[command(name = "attn", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands (they may be given before or after the subcommand).
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Worker threads: builds the global rayon pool with exactly N threads and lets kernels use
    /// all of them [default: every core, or RAYON_NUM_THREADS]
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    /// Write results as JSON to FILE; `--json` alone (or `--json -`) writes JSON to stdout
    /// instead of the table
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        num_args = 0..=1,
        default_missing_value = "-",
        require_equals = false
    )]
    pub json: Option<PathBuf>,

    /// Seed of the random inputs (bench, check): values uniform in [-1, 1)
    #[arg(long, global = true, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every registered method in priority order, with its capabilities
    List(ListArgs),
    /// Time methods over a grid of shapes: median/best time, GFLOP/s, peak memory
    Bench(BenchArgs),
    /// Run attention on arrays read from .npy or .safetensors files
    Run(RunArgs),
    /// Compare methods against sdpa-reference on seeded random inputs
    Check(CheckArgs),
    /// Every attention method on real models and real text: quality beside cost (the main job)
    Eval(crate::cmd::eval::EvalArgs),
    /// Download the pinned models and data sets into $ATTN_HOME (default set: minilm, smollm2,
    /// austen, lee)
    Fetch(FetchArgs),
    /// Sentence embeddings of a text file, one sentence per line, to .npy
    Embed(crate::cmd::models::EmbedArgs),
    /// Perplexity of a causal LM on the first N tokens of a text
    Perplexity(crate::cmd::models::PerplexityArgs),
    /// Time a real-model workload (prefill or embedding), as bench/models_peer.py does its peer
    BenchModel(crate::cmd::models::BenchModelArgs),
    /// Search a per-(layer, head) attention plan on a model's real Q/K/V (cheapest method that
    /// keeps a target attention recall)
    Plan(crate::cmd::plan::PlanArgs),
    /// Record the Q/K/V a model's attention heads see on a text, to .safetensors (for bench,
    /// run and analysis)
    Capture(crate::cmd::plan::CaptureArgs),
    /// Draw a few heads' attention maps beside what a method or plan keeps of them (PNG)
    Maps(crate::cmd::plan::MapsArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Assets to fetch (see --list) [default: minilm, smollm2, austen, lee]
    pub names: Vec<String>,
    /// Fetch every asset
    #[arg(long)]
    pub all: bool,
    /// List the assets, their sizes and whether they are fetched, then exit
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only these methods, each with its parameters (default values and meaning)
    #[arg(value_name = "METHOD")]
    pub methods: Vec<String>,
}

/// Element type of generated inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Args)]
#[command(after_long_help = "\
FLOPs are Problem::flops() = 2·B·H·S_q·S_kv·(D + D_v) (= 4·B·H·S_q·S_kv·D), halved for causal \
masks by convention (flash-attention's); the halving undercounts when S_q < S_kv.
Peak memory: peak RSS during the first (warm-up) call minus RSS just before it, and the peak of \
live heap bytes over the same call; both include the output and LSE buffers and the method's \
scratch (the library's scratch pool is emptied before the call) but not the inputs.
Examples:
  attn bench --quick
  attn bench --shape b1,h8,s4096,d128 --both --threads 2 --json out.json
  attn bench --shape b1,h8,s65536,d128 --causal --reps 1
  attn bench --shape b1,h8,hkv2,sq1,skv32768,d128          # runs sdpa-flash and sdpa-decode")]
pub struct BenchArgs {
    /// Method to time, repeatable (or comma-separated), with parameters as `name:key=value,...`
    /// (`streaming:sink=4,window=1024`) [default: sdpa-flash, plus sdpa-decode on shapes it
    /// accepts]
    #[arg(long, value_name = "M")]
    pub method: Vec<String>,

    #[arg(long, value_name = "SPEC", long_help = SHAPE_HELP,
        help = "Problem shape(s), e.g. b1,h8,hkv2,sq1,skv32768,d128 [default: B=1, H=8, S in {1k,4k,16k}, D in {64,128}]")]
    pub shape: Vec<String>,

    /// For CI and smoke tests: a small grid (S in {256, 1024}, D = 64, and one decode shape)
    /// unless --shape is given, and 0.2 s minimum time per case
    #[arg(long)]
    pub quick: bool,

    /// Causal mask only [default: both masks for the built-in grids, no mask for --shape]
    #[arg(long, conflicts_with = "both")]
    pub causal: bool,

    /// Both no mask and causal
    #[arg(long)]
    pub both: bool,

    /// Exactly N timed repetitions per case (ignores --min-time)
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,

    /// Repeat each case until this many seconds have been timed, at least 3 times [default: 1,
    /// 0.2 with --quick]
    #[arg(long, value_name = "SECS")]
    pub min_time: Option<f64>,

    /// Untimed calls before timing; the first call also measures peak memory (with 0, the
    /// first timed call does)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub warmup: usize,

    /// Time the methods of each shape in turns, one call of each per round (after every
    /// method's first call and warm-ups), instead of all of one method's calls in a row, so
    /// that a drift of the machine (its clock under sustained load, other tenants) falls on
    /// every method alike. Needs --reps (the rounds)
    #[arg(long, requires = "reps")]
    pub interleave: bool,

    /// Element type of the inputs (accumulation is f32 whatever the input)
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,

    /// For approximate methods, also report the attention mass they keep: per row
    /// exp(lse_method − lse_exact) (the exact probability mass on the keys the method attends
    /// to; for estimators such as performer or hyper, the ratio of estimated to exact mass),
    /// mean and minimum over rows, and the output's relative Frobenius error to exact; the exact
    /// output comes from one untimed sdpa-flash call on the same inputs
    #[arg(long)]
    pub recall: bool,

    /// Real inputs instead of random ones: a .safetensors file written by `attn capture`; each
    /// benchmark head takes the next recorded head (cycling), tiled along the sequence to the
    /// shape's S (the shape needs B = 1 and H = H_kv, and D equal to the recorded D)
    #[arg(long, value_name = "FILE")]
    pub qkv: Option<std::path::PathBuf>,

    /// With --qkv: the records to use, comma-separated (`L3.H0.B0,L20.H4.B0`); `A+B` joins two
    /// records along D (their logits add) [default: every record in the file]
    #[arg(long, value_name = "KEYS", value_delimiter = ',', requires = "qkv")]
    pub qkv_heads: Vec<String>,

    /// With --qkv, how rows past the recorded length get their positions: `repeat` copies the
    /// recorded rows as they are (their RoPE repeats every S_rec rows, so each tile sees the
    /// previous tiles at the relative positions of its own rows); `rope` rotates the copy in
    /// tile m by m·S_rec more positions (the record's RoPE, from the capture metadata), so
    /// every pair's rotation matches its true distance in the tiled sequence
    #[arg(long, value_enum, default_value = "repeat", requires = "qkv")]
    pub qkv_tiling: TilingArg,
}

/// How `--qkv` records are extended past their length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TilingArg {
    /// Copy the rows as recorded
    Repeat,
    /// Copy the rows and re-apply the record's RoPE at their new positions
    Rope,
}

/// Axis order of the arrays in the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// [B, H, S, D]: heads before sequence (PyTorch SDPA)
    Bhsd,
    /// [B, S, H, D]: sequence before heads (flash-attn, most model code)
    Bshd,
}

#[derive(Debug, Args)]
#[command(after_long_help = "\
Files:
  q: [B, H, S_q, D]   k: [B, H_kv, S_kv, D]   v: [B, H_kv, S_kv, D_v]    (with --layout bhsd)
  o: [B, H, S_q, D_v] lse: [B, H, S_q]                                   (axes 1 and 2 swapped
                                                                          with --layout bshd)
  H_kv must divide H (grouped-query attention); q, k and v share one dtype: f32, f16 (or bf16 in
  safetensors); .npy f64 is read and rounded to f32. Output is always f32, C order.
  .npy: one array per file (C or Fortran order, little or big endian).
  .safetensors: `--q FILE.safetensors:NAME` picks a tensor; without :NAME the tensor is named q,
  k or v. `--inputs FILE.safetensors` reads q, k and v from one file. Output written to a
  .safetensors file holds tensor `o`, and `lse` with `--lse` and no path.
Mask alignment: query row i sits at position q_offset + i (default q_offset = S_kv - S_q), key j
at position j; causal allows j <= position, --window L,R allows position-L <= j <= position+R.
Examples:
  attn run --q q.npy --k k.npy --v v.npy --causal --out o.npy --lse lse.npy
  attn run --inputs qkv.safetensors --out o.safetensors --lse --threads 2
  attn run --method sdpa-reference --q a.safetensors:query --k a.safetensors:key \\
           --v a.safetensors:value --window 127,0 --out o.npy
Per-token gates and states (the linear family, fla's layout and meaning; --layout bshd is fla's
[B, T, H, K]): --g, --beta, --initial-state and --final-state route gated-deltanet, kda and linear
(any form: chunked, -recurrent, -reference) through attn::linear::{gated_delta_rule,
linear_attention}; they need --causal, H_kv = H and S_q = S_kv.
  attn run --method kda --layout bshd --causal --q q.npy --k k.npy --v v.npy --g g.npy \\
           --beta beta.npy --initial-state s0.npy --final-state s1.npy --out o.npy")]
pub struct RunArgs {
    /// Method name, or `auto` to let the registry choose (the choice and every rejection are
    /// printed on stderr)
    #[arg(long, value_name = "M", default_value = "auto")]
    pub method: String,

    /// Queries: FILE.npy, FILE.safetensors or FILE.safetensors:NAME
    #[arg(long, value_name = "FILE[:NAME]")]
    pub q: Option<String>,

    /// Keys: FILE.npy, FILE.safetensors or FILE.safetensors:NAME
    #[arg(long, value_name = "FILE[:NAME]")]
    pub k: Option<String>,

    /// Values: FILE.npy, FILE.safetensors or FILE.safetensors:NAME
    #[arg(long, value_name = "FILE[:NAME]")]
    pub v: Option<String>,

    /// One .safetensors file holding tensors q, k and v (each may still be overridden by --q,
    /// --k, --v)
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,

    /// Axis order of the input and output arrays
    #[arg(long, value_enum, default_value_t = LayoutArg::Bhsd)]
    pub layout: LayoutArg,

    /// Causal mask (combined with --window when both are given)
    #[arg(long)]
    pub causal: bool,

    /// Score scale [default: 1/sqrt(D)]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<f32>,

    /// Logit soft-capping: scores become c·tanh(s/c)
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    pub softcap: Option<f32>,

    /// Sliding window: keys from position-L to position+R; leave a side empty (`127,`) for
    /// unbounded
    #[arg(long, value_name = "L,R")]
    pub window: Option<String>,

    /// Absolute position of query row 0 [default: S_kv - S_q]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub q_offset: Option<i64>,

    /// Output file (.npy or .safetensors)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Also write the log-sum-exp [B, H, S_q] (natural log, -inf for fully masked rows): to FILE,
    /// or with no FILE into the --out .safetensors file as tensor `lse`
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub lse: Option<Option<PathBuf>>,

    /// Fail if q, k or v hold NaN or Inf (one extra pass over the inputs)
    #[arg(long)]
    pub check_finite: bool,

    /// Untimed calls before the timed one (the first call of a process also pays for fresh
    /// memory and per-thread GEMM buffers; the approximate peers' script times a warm call on
    /// both sides)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warmup: usize,

    /// Per-token log-space decay gate g (fla's `g`, natural log, decay = exp(g)):
    /// gated-deltanet [B, T, H], kda [B, T, H, K] (axes 1 and 2 swapped with --layout bhsd)
    /// [default: the method's constant gates]
    #[arg(long, value_name = "FILE[:NAME]")]
    pub g: Option<String>,

    /// Per-token write strength β (gated-deltanet, kda): [B, T, H] (axes 1 and 2 swapped with
    /// --layout bhsd) [default: the method's constant β]
    #[arg(long, value_name = "FILE[:NAME]")]
    pub beta: Option<String>,

    /// State before the first token (gated-deltanet, kda, linear with norm=false):
    /// [B, H, K, V] f32, fla's layout in either --layout [default: zeros]
    #[arg(long, value_name = "FILE[:NAME]")]
    pub initial_state: Option<String>,

    /// Write the state after the last token (gated-deltanet, kda, linear with norm=false):
    /// [B, H, K, V] f32 to a .npy or .safetensors (tensor `final_state`) file
    #[arg(long, value_name = "FILE")]
    pub final_state: Option<PathBuf>,
}

/// A mask `attn check` can exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MaskArg {
    /// No mask
    None,
    /// Causal, aligned bottom-right
    Causal,
    /// Causal sliding window of 17 keys
    Window,
    /// Key padding: batch element b keeps its first S_kv·(B+1-b)/(B+2) keys
    Padding,
    /// Prefix-LM with a prefix of S_kv/3 keys
    Prefix,
    /// Two packed causal segments per sequence
    Block,
    /// Every mask above
    All,
}

#[derive(Debug, Args)]
#[command(after_long_help = "\
Each case prints max-abs error, relative RMS error (||o - ref|| / ||ref||) and the index
[b, h, s, d] of the largest error; the LSE is compared the same way. An exact method fails a
case when max-abs > --tol; approximate methods are reported, never judged (their quality is
measured by attn eval). The exit status is non-zero when any case fails.")]
pub struct CheckArgs {
    /// Method to check, repeatable (or comma-separated), with parameters as
    /// `name:key=value,...` [default: every non-reference method]
    #[arg(long, value_name = "M")]
    pub method: Vec<String>,

    #[arg(long, value_name = "SPEC", long_help = SHAPE_HELP,
        help = "Problem shape(s) [default: a few small shapes: MHA, GQA with ragged lengths, decode]")]
    pub shape: Vec<String>,

    /// Masks to try, repeatable (or comma-separated) [default: none, causal, window]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub mask: Vec<MaskArg>,

    /// Element type of the inputs
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,

    /// Largest accepted max-abs error of the output
    #[arg(long, value_name = "X", default_value_t = 1e-4)]
    pub tol: f64,
}
