//! Runs the built `attn` binary on tiny inputs: every subcommand's happy path, the file formats
//! round-tripped against `attn::attend`, and bad input failing with a message, never a panic.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use attn::{attend, Par, Params, Prefs, TensorRef};
use half::f16;
use npyz::WriterBuilder;

fn attn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attn")).args(args).output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(args: &[&str]) -> String {
    let o = attn(args);
    assert!(o.status.success(), "attn {args:?} failed:\n{}", stderr(&o));
    stdout(&o)
}

/// Asserts a clean failure (non-zero exit, no panic) and returns stderr.
fn fails(args: &[&str]) -> String {
    let o = attn(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "attn {args:?} should fail; stdout:\n{}", stdout(&o));
    assert!(!err.contains("panicked"), "attn {args:?} panicked:\n{err}");
    assert!(err.starts_with("error: "), "attn {args:?}: unexpected stderr:\n{err}");
    err
}

/// A fresh directory for one test.
fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) {
    let shape: Vec<u64> = shape.iter().map(|&n| n as u64).collect();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(File::create(path).unwrap()))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let npy = npyz::NpyFile::new(File::open(path).unwrap()).unwrap();
    (npy.shape().to_vec(), npy.into_vec::<f32>().unwrap())
}

fn le_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_le(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// What the library computes on one thread (the CLI runs with `--threads 1`).
fn expected(
    q: (&[f32], [usize; 4]),
    k: (&[f32], [usize; 4]),
    v: (&[f32], [usize; 4]),
    params: &Params,
) -> attn::Output {
    fn t((x, s): (&[f32], [usize; 4])) -> TensorRef<'_> {
        TensorRef::new(x, s).unwrap()
    }
    let prefs = Prefs { par: Par::Seq, ..Prefs::default() };
    attend(t(q), t(k), t(v), params, &prefs).unwrap()
}

#[test]
fn list_shows_the_registry() {
    let out = ok(&["list"]);
    assert!(out.contains("sdpa-flash"), "{out}");
    assert!(out.contains("sdpa-reference"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["list", "--json"])).unwrap();
    let names: Vec<&str> =
        json.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    let registry: Vec<&str> = attn::registry().methods().iter().map(|m| m.name()).collect();
    assert_eq!(names, registry);
    assert_eq!(json[0]["priority"], 1);
    assert!(json[0]["dtypes"].as_array().unwrap().contains(&"f32".into()));
    // Every method's parameters with their defaults, in JSON and (compactly) in the text.
    let streaming = json.as_array().unwrap().iter().find(|m| m["name"] == "streaming").unwrap();
    let params = streaming["params"].as_array().unwrap();
    assert!(params.iter().any(|p| p["name"] == "window" && p["default"] == "1024"), "{params:?}");
    assert!(out.contains("params sink=4,window=1024"), "{out}");

    // Named methods (with parameters: their values) each with every parameter explained.
    let out = ok(&["list", "streaming:window=64,sea"]);
    assert!(out.contains("streaming") && out.contains("sea"), "{out}");
    assert!(!out.contains("sdpa-flash"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("window=64  ")), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("cells=256  ")), "{out}");
    assert!(fails(&["list", "nope"]).contains("unknown method"));
    assert!(fails(&["list", "sea:nope=1"]).contains("no parameter"));
}

#[test]
fn bench_writes_json_records() {
    let d = dir("bench");
    let file = d.join("bench.json");
    let out = ok(&[
        "bench",
        "--quick",
        "--shape",
        "b1,h2,s64,d32",
        "--shape",
        "h4x2,sq1,skv256,d16",
        "--both",
        "--reps",
        "2",
        "--threads",
        "1",
        "--json",
        s(&file),
    ]);
    assert!(out.contains("sdpa-flash"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let records = json.as_array().unwrap();
    // 2 shapes × 2 masks with sdpa-flash, plus sdpa-decode on the decode shape's 2 masks.
    assert_eq!(records.len(), 6, "{json:#}");
    let decode = records.iter().filter(|r| r["method"] == "sdpa-decode").count();
    assert_eq!(decode, 2);
    for r in records {
        for key in [
            "method",
            "shape",
            "b",
            "h",
            "h_kv",
            "s_q",
            "s_kv",
            "d",
            "d_v",
            "causal",
            "dtype",
            "threads",
            "median_s",
            "best_s",
            "gflops_median",
            "gflops_best",
            "peak_extra_bytes",
            "simd",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        assert_eq!(r["threads"], 1);
        assert_eq!(r["reps"], 2);
        assert_eq!(r["dtype"], "f32");
        assert!(r["best_s"].as_f64().unwrap() <= r["median_s"].as_f64().unwrap());
        // Every timed call, in call order: the best is their minimum.
        let calls: Vec<f64> =
            r["times_s"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls.iter().copied().fold(f64::INFINITY, f64::min),
            r["best_s"].as_f64().unwrap()
        );
        assert!(r["gflops_best"].as_f64().unwrap() > 0.0);
    }
    let first = &records[0];
    assert_eq!(
        (first["shape"].as_str(), first["causal"].as_bool()),
        (Some("b1_h2_sq64_skv64_d32"), Some(false))
    );
    // FLOPs = 4·B·H·S_q·S_kv·D, halved for causal.
    let flops = |r: &serde_json::Value| r["flops"].as_f64().unwrap();
    assert_eq!(flops(first), 4.0 * 2.0 * 64.0 * 64.0 * 32.0);
    assert_eq!(flops(&records[1]), flops(first) / 2.0);

    // JSON to stdout replaces the table.
    let out = ok(&["bench", "--shape", "b1,h1,s16,d8", "--reps", "1", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
}

/// The first case of a process is charged only its own heap: a GEMM-based method (`linear`'s
/// chunked form) on a 64 KiB problem once reported ~600 MB per thread, faer's per-thread packing
/// reservation, which `attn bench` now sets up before the first case.
#[test]
fn bench_first_case_heap_is_its_own() {
    let args = ["bench", "--causal", "--shape", "b1,h2,s256,d32", "--reps", "1"];
    let out = ok(&[&args[..], &["--method", "linear", "--threads", "2", "--json"]].concat());
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let heap = json[0]["peak_alloc_bytes"].as_u64().unwrap();
    // Inputs are allocated before the measurement; output, LSE and scratch are ~0.2 MB.
    assert!(heap < 16 << 20, "first case heap {heap} B");
}

/// `--interleave`: the methods of a shape are timed in rounds; every case still gets its own
/// record with the asked number of timed calls, the same numbers of pairs and the same recall as
/// when timed one after another (the calls are the same, only their order changes).
#[test]
fn bench_interleave_times_each_method_per_round() {
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let args = [
            "bench",
            "--causal",
            "--shape",
            "b1,h2,s256,d32",
            "--shape",
            "b1,h1,s128,d16",
            "--method",
            "sdpa-flash,streaming:sink=4,window=32,block-sparse:top_k=2",
            "--reps",
            "3",
            "--recall",
            "--json",
        ];
        let out = ok(&[&args[..], extra].concat());
        serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
    };
    let (plain, rounds) = (run(&[]), run(&["--interleave"]));
    assert_eq!(rounds.len(), 6);
    for (a, b) in plain.iter().zip(&rounds) {
        for key in ["method", "shape", "computed_pairs", "mass_recall_mean", "rel_error"] {
            assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
        }
        assert_eq!(b["reps"], 3);
        assert!(b["best_s"].as_f64().unwrap() <= b["median_s"].as_f64().unwrap());
        assert_eq!(b["times_s"].as_array().map(Vec::len), Some(3), "one time per round: {b}");
    }
    // Rounds are --reps, so --interleave needs it.
    let err = fails(&["bench", "--shape", "s64", "--interleave"]);
    assert!(err.contains("--reps"), "{err}");
}

/// `--qkv` with `--recall` past the recorded length: every approximate record says how much of
/// the exact attention of the rows past `S_rec` lies at distances `≥ S_rec`, the table says it
/// once per shape, and the number is that of a plain f64 softmax over the tiled rows.
#[test]
fn bench_reports_the_attention_mass_beyond_the_recorded_length() {
    use safetensors::{tensor::TensorView, Dtype};
    let d = dir("bench-beyond");
    let (s_rec, dd, n) = (4usize, 4usize, 12usize);
    let (q, k, v) = (values(s_rec * dd, 21), values(s_rec * dd, 22), values(s_rec * dd, 23));
    let bytes = [le_bytes(&q), le_bytes(&k), le_bytes(&v)];
    let views: Vec<(String, TensorView)> = ["q", "k", "v"]
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            (format!("L0.H0.B0.{t}"), TensorView::new(Dtype::F32, vec![s_rec, dd], b).unwrap())
        })
        .collect();
    let meta: std::collections::HashMap<String, String> =
        [("L0.H0.B0".to_string(), "{\"scale\":0.5}".to_string())].into_iter().collect();
    let file = d.join("rec.safetensors");
    safetensors::serialize_to_file(views, &Some(meta), &file).unwrap();
    let args = [
        "bench",
        "--causal",
        "--shape",
        "b1,h1,s12,d4",
        "--qkv",
        s(&file),
        "--method",
        "sdpa-flash,streaming:sink=1,window=2",
        "--reps",
        "1",
        "--recall",
    ];
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&[&args[..], &["--json"]].concat())).unwrap();
    // Tiled row i is record row i mod S_rec; logits are the record's scale times q·k.
    let z = |i: usize, j: usize| {
        0.5 * (0..dd)
            .map(|t| (q[(i % s_rec) * dd + t] * k[(j % s_rec) * dd + t]) as f64)
            .sum::<f64>()
    };
    let want = (s_rec..n)
        .map(|i| {
            let all: f64 = (0..=i).map(|j| z(i, j).exp()).sum();
            let far: f64 = (0..=i - s_rec).map(|j| z(i, j).exp()).sum();
            far / all
        })
        .sum::<f64>()
        / (n - s_rec) as f64;
    assert!(json[0]["mass_beyond_recorded"].is_null(), "exact rows have no recall: {}", json[0]);
    let got = json[1]["mass_beyond_recorded"].as_f64().expect("streaming row");
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    let table = ok(&args);
    let line = format!("rows past the recorded 4 put {:.1} %", 100.0 * want);
    assert_eq!(table.matches(&line).count(), 1, "{table}");
}

#[test]
fn bench_rejects_bad_options() {
    assert!(fails(&["bench", "--shape", "b1,h8,d64"]).contains("give s"));
    assert!(fails(&["bench", "--method", "nope"]).contains("known methods"));
    assert!(fails(&["bench", "--reps", "0"]).contains("--reps"));
    // A forced decode path on a prefill shape: nothing to run, and the reason is given.
    let err = fails(&["bench", "--method", "sdpa-decode", "--shape", "s64"]);
    assert!(err.contains("query rows"), "{err}");
}

#[test]
fn check_passes_on_small_shapes() {
    let out = ok(&[
        "check",
        "--method",
        "sdpa-flash",
        "--shape",
        "b1,h2,hkv1,sq20,skv33,d16",
        "--mask",
        "all",
    ]);
    assert!(out.contains("ok") && !out.contains("FAIL"), "{out}");
}

#[test]
fn run_npy_matches_the_library() {
    let d = dir("run-npy");
    let (qs, ks, vs) = ([1, 4, 33, 16], [1, 2, 40, 16], [1, 2, 40, 8]);
    let q = values(qs.iter().product(), 1);
    let k = values(ks.iter().product(), 2);
    let v = values(vs.iter().product(), 3);
    for (name, shape, data) in [("q", qs, &q), ("k", ks, &k), ("v", vs, &v)] {
        write_npy(&d.join(format!("{name}.npy")), &shape, data);
    }
    let (o_path, lse_path) = (d.join("o.npy"), d.join("lse.npy"));
    let run = attn(&[
        "run",
        "--q",
        s(&d.join("q.npy")),
        "--k",
        s(&d.join("k.npy")),
        "--v",
        s(&d.join("v.npy")),
        "--causal",
        "--threads",
        "1",
        "--out",
        s(&o_path),
        "--lse",
        s(&lse_path),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let want = expected((&q, qs), (&k, ks), (&v, vs), &Params::causal());
    // The method that ran, and why the faster-listed decode path did not, go to stderr.
    let err = stderr(&run);
    assert!(err.contains(want.method), "{err}");
    assert!(err.contains("sdpa-decode rejected"), "{err}");
    let (o_shape, o) = read_npy(&o_path);
    assert_eq!(o_shape, [1, 4, 33, 8]);
    assert_eq!(o, want.o);
    let (lse_shape, lse) = read_npy(&lse_path);
    assert_eq!(lse_shape, [1, 4, 33]);
    assert_eq!(lse, want.lse);
}

#[test]
fn run_safetensors_matches_the_library() {
    use safetensors::{tensor::TensorView, Dtype};
    let d = dir("run-st");
    let (qs, ks) = ([2, 2, 5, 8], [2, 2, 300, 8]);
    let q = values(qs.iter().product(), 4);
    let k = values(ks.iter().product(), 5);
    let v = values(ks.iter().product(), 6);
    let bytes = [le_bytes(&q), le_bytes(&k), le_bytes(&v)];
    let views: Vec<(&str, TensorView)> = [("q", qs), ("k", ks), ("v", ks)]
        .iter()
        .zip(&bytes)
        .map(|((n, s), b)| (*n, TensorView::new(Dtype::F32, s.to_vec(), b).unwrap()))
        .collect();
    let input = d.join("qkv.safetensors");
    std::fs::write(&input, safetensors::serialize(views, &None).unwrap()).unwrap();

    let out = d.join("o.safetensors");
    let err = stderr(&attn(&[
        "run",
        "--inputs",
        s(&input),
        "--window",
        "3,1",
        "--scale",
        "0.5",
        "--threads",
        "1",
        "--out",
        s(&out),
        "--lse",
    ]));
    let params = Params {
        scale: Some(0.5),
        mask: attn::Mask::Window { left: Some(3), right: Some(1) },
        ..Params::default()
    };
    let want = expected((&q, qs), (&k, ks), (&v, ks), &params);
    assert!(err.contains(want.method), "{err}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let o = st.tensor("o").unwrap();
    assert_eq!((o.dtype(), o.shape()), (Dtype::F32, &[2, 2, 5, 8][..]));
    assert_eq!(from_le(o.data()), want.o);
    assert_eq!(from_le(st.tensor("lse").unwrap().data()), want.lse);

    // A tensor picked by name; a forced method; f16 q read from .npy is rejected against f32 k.
    let out2 = d.join("o2.npy");
    let q_arg = format!("{}:q", s(&input));
    ok(&[
        "run",
        "--method",
        "sdpa-reference",
        "--q",
        &q_arg,
        "--k",
        &q_arg,
        "--v",
        &q_arg,
        "--out",
        s(&out2),
    ]);
    let q16: Vec<f16> = q.iter().map(|&x| f16::from_f32(x)).collect();
    write_npy(&d.join("q16.npy"), &qs, &q16);
    let err =
        fails(&["run", "--inputs", s(&input), "--q", s(&d.join("q16.npy")), "--out", s(&out2)]);
    assert!(err.contains("element type") && err.contains("f16"), "{err}");
    let err = fails(&[
        "run",
        "--inputs",
        s(&input),
        "--q",
        &format!("{}:query", s(&input)),
        "--out",
        s(&out2),
    ]);
    assert!(err.contains("no tensor named \"query\"") && err.contains("k, q, v"), "{err}");
}

#[test]
fn run_bshd_layout_round_trips() {
    let d = dir("run-bshd");
    let (b, s_q, s_kv, h, dd) = (1, 6, 9, 2, 4);
    let q = values(b * s_q * h * dd, 7);
    let k = values(b * s_kv * h * dd, 8);
    let v = values(b * s_kv * h * dd, 9);
    write_npy(&d.join("q.npy"), &[b, s_q, h, dd], &q);
    write_npy(&d.join("k.npy"), &[b, s_kv, h, dd], &k);
    write_npy(&d.join("v.npy"), &[b, s_kv, h, dd], &v);
    let o_path = d.join("o.npy");
    let (qp, kp, vp) = (d.join("q.npy"), d.join("k.npy"), d.join("v.npy"));
    ok(&[
        "run",
        "--layout",
        "bshd",
        "--threads",
        "1",
        "--out",
        s(&o_path),
        "--q",
        s(&qp),
        "--k",
        s(&kp),
        "--v",
        s(&vp),
    ]);
    fn t(x: &[f32], shape: [usize; 4]) -> TensorRef<'_> {
        TensorRef::from_bshd(x, shape).unwrap()
    }
    let prefs = Prefs { par: Par::Seq, ..Prefs::default() };
    let (qs, ks) = ([b, s_q, h, dd], [b, s_kv, h, dd]);
    let want = attend(t(&q, qs), t(&k, ks), t(&v, ks), &Params::default(), &prefs).unwrap();
    let (shape, o) = read_npy(&o_path);
    assert_eq!(shape, [1, 6, 2, 4]);
    // want.o is [B, H, S_q, D]; the file is [B, S_q, H, D].
    for i in 0..s_q {
        for hh in 0..h {
            let got = &o[(i * h + hh) * dd..][..dd];
            assert_eq!(got, &want.o[(hh * s_q + i) * dd..][..dd]);
        }
    }
}

#[test]
fn run_bad_input_fails_with_a_message() {
    let d = dir("run-bad");
    let good = |name: &str, shape: [usize; 4]| {
        let p = d.join(name);
        write_npy(&p, &shape, &values(shape.iter().product(), 1));
        p
    };
    let q = good("q.npy", [1, 2, 8, 16]);
    let k = good("k.npy", [1, 2, 8, 16]);
    let v = good("v.npy", [1, 2, 8, 16]);
    let out = d.join("o.npy");
    let run = |q: &Path, k: &Path, v: &Path| {
        fails(&["run", "--q", s(q), "--k", s(k), "--v", s(v), "--out", s(&out)])
    };

    let garbage = d.join("garbage.npy");
    std::fs::write(&garbage, b"this is not numpy").unwrap();
    let err = run(&garbage, &k, &v);
    assert!(err.contains("garbage.npy") && err.contains("not a valid .npy"), "{err}");

    let truncated = d.join("truncated.npy");
    let bytes = std::fs::read(&q).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let err = run(&q, &truncated, &v);
    assert!(err.contains("truncated.npy"), "{err}");

    // A header whose element count overflows must not reach npyz's unchecked arithmetic.
    let huge = d.join("huge.npy");
    let mut header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 3, 1, 1), }"
            .to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 64]);
    std::fs::write(&huge, bytes).unwrap();
    let err = run(&huge, &k, &v);
    assert!(err.contains("huge.npy") && err.contains("more elements than fit"), "{err}");

    let k_d8 = good("k_d8.npy", [1, 2, 8, 8]);
    let err = run(&q, &k_d8, &v);
    assert!(err.contains("head dim") && err.contains("k_d8.npy"), "{err}");

    let v_3d = d.join("v3.npy");
    write_npy(&v_3d, &[2, 8, 16], &values(256, 2));
    let err = run(&q, &k, &v_3d);
    assert!(err.contains("v3.npy") && err.contains("4-D"), "{err}");

    let ints = d.join("ints.npy");
    write_npy(&ints, &[1, 2, 8, 16], &vec![1i32; 256]);
    let err = run(&q, &k, &ints);
    assert!(err.contains("ints.npy") && err.contains("<i4"), "{err}");

    let missing = d.join("missing.npy");
    let err = run(&q, &k, &missing);
    assert!(err.contains("missing.npy"), "{err}");

    assert!(run(&q, &k, &d.join("v.txt")).contains("unknown format"));
    let err = fails(&[
        "run",
        "--q",
        s(&q),
        "--k",
        s(&k),
        "--v",
        s(&v),
        "--window",
        "7",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("--window"), "{err}");
    let err = fails(&["run", "--q", s(&q), "--k", s(&k), "--v", s(&v), "--out", s(&out), "--lse"]);
    assert!(err.contains("--lse"), "{err}");
}

/// Files for the per-token path: q, k, v `[B, T, H, D]` (fla's layout), gates, β and a state.
struct StateFiles {
    dir: PathBuf,
    shape: [usize; 5],
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    gk: Vec<f32>,
    beta: Vec<f32>,
    s0: Vec<f32>,
}

impl StateFiles {
    fn new(name: &str) -> Self {
        let (b, t, h, dk, dv) = (1, 70, 2, 8, 4);
        let d = dir(name);
        let neg = |x: Vec<f32>| -> Vec<f32> { x.iter().map(|a| -0.05 - 0.5 * (a + 1.0)).collect() };
        let f = Self {
            q: values(b * t * h * dk, 31),
            k: values(b * t * h * dk, 32),
            v: values(b * t * h * dv, 33),
            g: neg(values(b * t * h, 34)),
            gk: neg(values(b * t * h * dk, 35)),
            beta: values(b * t * h, 36).iter().map(|a| 0.5 * (a + 1.0)).collect(),
            s0: values(b * h * dk * dv, 37),
            dir: d,
            shape: [b, t, h, dk, dv],
        };
        for (n, shape, x) in [
            ("q", vec![b, t, h, dk], &f.q),
            ("k", vec![b, t, h, dk], &f.k),
            ("v", vec![b, t, h, dv], &f.v),
            ("g", vec![b, t, h], &f.g),
            ("gk", vec![b, t, h, dk], &f.gk),
            ("beta", vec![b, t, h], &f.beta),
            ("s0", vec![b, h, dk, dv], &f.s0),
        ] {
            write_npy(&f.path(n), &shape, x);
        }
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.npy"))
    }

    /// `attn run --layout bshd --causal` on q, k, v plus `extra`; returns the arguments.
    fn args<'a>(
        &'a self,
        paths: &'a [PathBuf; 5],
        method: &'a str,
        extra: &[&'a str],
    ) -> Vec<&'a str> {
        let mut a = vec![
            "run",
            "--threads",
            "2",
            "--method",
            method,
            "--layout",
            "bshd",
            "--causal",
            "--q",
        ];
        a.extend([s(&paths[0]), "--k", s(&paths[1]), "--v", s(&paths[2]), "--out", s(&paths[3])]);
        a.extend(extra);
        a
    }
}

#[test]
fn run_per_token_gates_and_states_match_the_library() {
    use attn::linear::LinearInputs;
    use attn::linear::{gated_delta_rule, linear_attention, DeltaInputs, FeatureMap, Form};
    let f = StateFiles::new("run-state");
    let [b, t, h, dk, dv] = f.shape;
    let paths = [f.path("q"), f.path("k"), f.path("v"), f.path("o"), f.path("s1")];
    let (g, gk, beta, s0, s1) =
        (f.path("g"), f.path("gk"), f.path("beta"), f.path("s0"), &paths[4]);
    let forms =
        [("", Form::Chunked(16)), ("-recurrent", Form::Recurrent), ("-reference", Form::Reference)];
    for (family, gate, gpath) in [("gated-deltanet", &f.g, &g), ("kda", &f.gk, &gk)] {
        for (suffix, form) in forms {
            let method = format!("{family}{suffix}:chunk=16");
            let extra = [
                "--g",
                s(gpath),
                "--beta",
                s(&beta),
                "--initial-state",
                s(&s0),
                "--final-state",
                s(s1),
            ];
            ok(&f.args(&paths, &method, &extra));
            let x = DeltaInputs {
                q: &f.q,
                k: &f.k,
                v: &f.v,
                g: gate,
                beta: &f.beta,
                shape: f.shape,
                scale: 1.0 / (dk as f32).sqrt(),
                l2norm: true,
            };
            let (mut o, mut st) = (vec![0.0; b * t * h * dv], vec![0.0; b * h * dk * dv]);
            gated_delta_rule(&x, Some(&f.s0), form, Par::Seq, &mut o, &mut st).unwrap();
            let (os, got_o) = read_npy(&paths[3]);
            let (ss, got_s) = read_npy(s1);
            assert_eq!((os, ss), (vec![1, 70, 2, 4], vec![1, 2, 8, 4]), "{method}");
            assert_eq!(got_o, o, "{method}: o");
            assert_eq!(got_s, st, "{method}: final state");
        }
    }
    // linear (φ = identity, no normaliser) with a state in and out.
    for (suffix, form) in forms {
        let method = format!("linear{suffix}:map=identity,norm=false,chunk=16");
        ok(&f.args(&paths, &method, &["--initial-state", s(&s0), "--final-state", s(s1)]));
        let x = LinearInputs {
            q: &f.q,
            k: &f.k,
            v: &f.v,
            shape: f.shape,
            scale: 1.0 / (dk as f32).sqrt(),
            map: FeatureMap::Identity,
        };
        let (mut o, mut st) = (vec![0.0; b * t * h * dv], vec![0.0; b * h * dk * dv]);
        linear_attention(&x, Some(&f.s0), form, Par::Seq, &mut o, &mut st).unwrap();
        assert_eq!(read_npy(&paths[3]).1, o, "{method}: o");
        assert_eq!(read_npy(s1).1, st, "{method}: final state");
    }
    // Without --g/--beta the method's constant gates apply: equal to the registry path.
    let reg = f.path("o_registry");
    let no_state = [f.path("q"), f.path("k"), f.path("v"), reg.clone(), f.path("unused")];
    ok(&f.args(&no_state, "kda-recurrent:beta=0.3", &[]));
    ok(&f.args(&paths, "kda-recurrent:beta=0.3", &["--final-state", s(s1)]));
    assert_eq!(read_npy(&reg).1, read_npy(&paths[3]).1);
}

#[test]
fn run_per_token_layout_bhsd_swaps_token_and_head_axes() {
    use attn::linear::{gated_delta_rule, DeltaInputs, Form};
    let f = StateFiles::new("run-state-bhsd");
    let [b, t, h, dk, dv] = f.shape;
    // [B, T, H, W] → [B, H, T, W].
    let swap = |x: &[f32], w: usize| -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        for s in 0..t {
            for hh in 0..h {
                y[(hh * t + s) * w..][..w].copy_from_slice(&x[(s * h + hh) * w..][..w]);
            }
        }
        y
    };
    for (n, w, x) in
        [("q", dk, &f.q), ("k", dk, &f.k), ("v", dv, &f.v), ("g", 1, &f.g), ("beta", 1, &f.beta)]
    {
        let shape = if w == 1 { vec![b, h, t] } else { vec![b, h, t, w] };
        write_npy(&f.path(&format!("{n}_t")), &shape, &swap(x, w));
    }
    let (o, s1) = (f.path("o"), f.path("s1"));
    ok(&[
        "run",
        "--threads",
        "1",
        "--method",
        "gated-deltanet-recurrent",
        "--causal",
        "--q",
        s(&f.path("q_t")),
        "--k",
        s(&f.path("k_t")),
        "--v",
        s(&f.path("v_t")),
        "--g",
        s(&f.path("g_t")),
        "--beta",
        s(&f.path("beta_t")),
        "--initial-state",
        s(&f.path("s0")),
        "--final-state",
        s(&s1),
        "--out",
        s(&o),
    ]);
    let x = DeltaInputs {
        q: &f.q,
        k: &f.k,
        v: &f.v,
        g: &f.g,
        beta: &f.beta,
        shape: f.shape,
        scale: 1.0 / (dk as f32).sqrt(),
        l2norm: true,
    };
    let (mut want_o, mut want_s) = (vec![0.0; b * t * h * dv], vec![0.0; b * h * dk * dv]);
    gated_delta_rule(&x, Some(&f.s0), Form::Recurrent, Par::Seq, &mut want_o, &mut want_s).unwrap();
    let (shape, got) = read_npy(&o);
    assert_eq!(shape, vec![1, 2, 70, 4]);
    assert_eq!(got, swap(&want_o, dv));
    assert_eq!(read_npy(&s1).1, want_s);
}

#[test]
fn run_per_token_bad_shapes_and_options_fail_with_typed_messages() {
    let f = StateFiles::new("run-state-bad");
    let paths = [f.path("q"), f.path("k"), f.path("v"), f.path("o"), f.path("s1")];
    let (g, gk, beta, s0) = (f.path("g"), f.path("gk"), f.path("beta"), f.path("s0"));
    let run = |method: &str, extra: &[&str]| fails(&f.args(&paths, method, extra));

    // kda needs a per-channel gate; gated-deltanet a scalar one.
    let err = run("kda", &["--g", s(&g)]);
    assert!(
        err.contains("--g")
            && err.contains("g.npy")
            && err.contains("[B, T, H, K] = [1, 70, 2, 8]"),
        "{err}"
    );
    let err = run("gated-deltanet", &["--g", s(&gk)]);
    assert!(err.contains("gk.npy") && err.contains("[B, T, H] = [1, 70, 2]"), "{err}");
    let err = run("gated-deltanet", &["--beta", s(&gk)]);
    assert!(err.contains("--beta") && err.contains("[B, T, H] = [1, 70, 2]"), "{err}");
    let err = run("kda", &["--initial-state", s(&beta)]);
    assert!(
        err.contains("--initial-state") && err.contains("[B, H, K, V] = [1, 2, 8, 4]"),
        "{err}"
    );
    // k with another length than q.
    let short = f.dir.join("k_short.npy");
    write_npy(&short, &[1, 69, 2, 8], &values(69 * 16, 3));
    let bad_k = [f.path("q"), short, f.path("v"), f.path("o"), f.path("s1")];
    let err = fails(&f.args(&bad_k, "kda", &["--g", s(&gk)]));
    assert!(err.contains("--k") && err.contains("k_short.npy"), "{err}");

    // Options the method cannot take.
    let err = run("linear", &["--g", s(&g)]);
    assert!(err.contains("--g cannot be used with linear"), "{err}");
    let err = run("linear", &["--final-state", s(&paths[4])]);
    assert!(err.contains("norm=false"), "{err}");
    let err = run("sdpa-flash", &["--initial-state", s(&s0)]);
    assert!(err.contains("only gated-deltanet, kda and linear"), "{err}");
    // Calls missing --causal, or --method.
    let without = |drop: &[&str], method: &str, extra: &[&str]| -> String {
        let a = f.args(&paths, method, extra);
        fails(&a.into_iter().filter(|x| !drop.contains(x)).collect::<Vec<_>>())
    };
    let err = without(&["--causal"], "kda", &["--g", s(&gk)]);
    assert!(err.contains("--causal"), "{err}");
    let err = without(&["--method", "gated-deltanet"], "gated-deltanet", &["--beta", s(&beta)]);
    assert!(err.contains("need a forced --method"), "{err}");
}

#[test]
fn plan_rechooses_from_a_scores_file_under_a_speed_budget() {
    let d = dir("plan-scores");
    // Two heads of 1000 exact pairs; one fast candidate (weight 1: its seconds per pair equal
    // exact's) with two budgets.
    let line = |layer: usize, cand: &str, pairs: u64, error: f64| {
        format!(
            "{{\"layer\":{layer},\"head\":0,\"candidate\":\"{cand}\",\"recall\":0.9,\
             \"recall_min\":0.5,\"error\":{error},\"pairs\":{pairs},\"exact_pairs\":1000,\
             \"time_s\":{t},\"exact_time_s\":1.0,\"chosen\":false}}\n",
            t = pairs as f64 / 1000.0
        )
    };
    let text = [
        line(0, "streaming:sink=4,window=64", 100, 0.4),
        line(0, "streaming:sink=4,window=256", 400, 0.1),
        line(1, "streaming:sink=4,window=64", 100, 0.3),
        line(1, "streaming:sink=4,window=256", 400, 0.05),
    ]
    .concat();
    let scores = d.join("scores.jsonl");
    std::fs::write(&scores, text).unwrap();
    let out = d.join("plan.json");
    // 2×: 1000 weighted pairs for both heads: the wider window on both (800 pairs).
    let o = ok(&["plan", "--from-scores", s(&scores), "--speedup", "2", "--out", s(&out)]);
    assert!(o.contains("speed budget 2×") && o.contains("weighted cost vs exact"), "{o}");
    let plan = attn_models::AttentionPlan::load(&out).expect("plan");
    for l in 0..2 {
        assert_eq!(plan.choice(l, 0).label(), "streaming:sink=4,window=256");
    }
    // 4×: 500 pairs: the wider window only where it lowers the error most (head 0: 0.3 less).
    ok(&["plan", "--from-scores", s(&scores), "--speedup", "4", "--out", s(&out)]);
    let plan = attn_models::AttentionPlan::load(&out).expect("plan");
    assert_eq!(plan.choice(0, 0).label(), "streaming:sink=4,window=256");
    assert_eq!(plan.choice(1, 0).label(), "streaming:sink=4,window=64");
    // Only the narrow window allowed: it on both heads, whatever the budget allows.
    ok(&[
        "plan",
        "--from-scores",
        s(&scores),
        "--speedup",
        "2",
        "--candidate",
        "streaming:window=64,sink=4",
        "--out",
        s(&out),
    ]);
    let plan = attn_models::AttentionPlan::load(&out).expect("plan");
    for l in 0..2 {
        assert_eq!(plan.choice(l, 0).label(), "streaming:sink=4,window=64");
    }
    let e = fails(&["plan", "--from-scores", s(&scores), "--candidate", "hyper", "--out", s(&out)]);
    assert!(e.contains("not in the scores file"), "{e}");
    // Bad budgets and files are clean errors.
    let e = fails(&["plan", "--from-scores", s(&scores), "--speedup", "20", "--out", s(&out)]);
    assert!(e.contains("10.00×"), "{e}");
    let e = fails(&["plan", "--from-scores", s(&scores), "--speedup", "0", "--out", s(&out)]);
    assert!(e.contains("≥ 1"), "{e}");
    std::fs::write(&scores, "{\"layer\": 0}\n").unwrap();
    let e = fails(&["plan", "--from-scores", s(&scores), "--out", s(&out)]);
    assert!(e.contains("line 1"), "{e}");
}
