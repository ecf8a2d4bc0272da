//! GGUF reader tests: synthetic files written here, fixtures from the Python `gguf` package, and
//! malformed files that must give typed errors.

use std::path::PathBuf;

use attn_models::gguf::{quant, GgmlType, GgufFile, Value};
use attn_models::ModelError;

/// Encodes metadata values the way GGUF stores them.
fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(a) => {
            let elem = a.first().map_or(4, value_type);
            out.extend(elem.to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for e in a {
                put_value(out, e);
            }
        }
    }
}

/// One tensor for the writer: name, stored extents (innermost first), type id, data bytes, and
/// an optional forced offset.
struct WTensor {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

/// A tiny GGUF writer. `kv` entries are (key, type id, encoded value) so that tests can write
/// values of types the reader does not know.
struct Writer {
    version: u32,
    alignment: usize,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<WTensor>,
}

impl Writer {
    fn new() -> Self {
        Self { version: 3, alignment: 32, kv: Vec::new(), tensors: Vec::new() }
    }

    fn kv(mut self, key: &str, v: Value) -> Self {
        let mut b = Vec::new();
        put_value(&mut b, &v);
        self.kv.push((key.to_string(), value_type(&v), b));
        self
    }

    fn raw_kv(mut self, key: &str, ty: u32, bytes: Vec<u8>) -> Self {
        self.kv.push((key.to_string(), ty, bytes));
        self
    }

    fn tensor(self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.tensor_raw(name, dims, ty.id(), data, None)
    }

    fn tensor_raw(
        mut self,
        name: &str,
        dims: &[u64],
        ty: u32,
        data: Vec<u8>,
        offset: Option<u64>,
    ) -> Self {
        let (name, dims) = (name.to_string(), dims.to_vec());
        self.tensors.push(WTensor { name, dims, ty, data, offset });
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            put_str(&mut out, k);
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let mut offsets = Vec::new();
        let mut at = 0usize;
        for t in &self.tensors {
            offsets.push(at);
            at = (at + t.data.len()).div_ceil(self.alignment) * self.alignment;
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend(t.offset.unwrap_or(off as u64).to_le_bytes());
        }
        if !self.tensors.is_empty() {
            out.resize(out.len().div_ceil(self.alignment) * self.alignment, 0);
            let start = out.len();
            for (t, &off) in self.tensors.iter().zip(&offsets) {
                out.resize(start + off, 0);
                out.extend(&t.data);
            }
        }
        out
    }
}

fn tmp_path(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("attn-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{tag}-{}.gguf", N.fetch_add(1, Ordering::Relaxed)))
}

fn write(tag: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp_path(tag);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn round_trip_metadata_and_plain_tensors() {
    let w32: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let w16: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 2.0).collect();
    let f16b: Vec<u8> = w16.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    // Q8_0: one block, d = 0.25, q_j = 3 j - 40.
    let mut q8 = half::f16::from_f32(0.25).to_le_bytes().to_vec();
    q8.extend((0..32).map(|j| (3 * j - 40) as i8 as u8));
    let path = write(
        "roundtrip",
        &Writer::new()
            .kv("general.architecture", Value::Str("llama".into()))
            .kv("llama.block_count", Value::U32(30))
            .kv("llama.context_length", Value::U64(8192))
            .kv("small", Value::I8(-3))
            .kv("eps", Value::F32(1e-5))
            .kv("theta", Value::F64(10000.0))
            .kv("flag", Value::Bool(true))
            .kv("toks", Value::Array(vec![Value::Str("a".into()), Value::Str("bé".into())]))
            .kv("scores", Value::Array(vec![Value::F32(0.5), Value::F32(-1.5)]))
            .kv("types", Value::Array(vec![Value::I32(1), Value::I32(-6)]))
            .tensor("w32", &[4, 3], GgmlType::F32, f32_bytes(&w32))
            .tensor("w16", &[8], GgmlType::F16, f16b)
            .tensor("q8", &[32, 1], GgmlType::Q8_0, q8)
            .bytes(),
    );
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.path(), path.as_path());
    let keys: Vec<&str> = g.keys().collect();
    assert_eq!(keys[0], "general.architecture");
    assert_eq!(keys.len(), 10);
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    assert_eq!(g.u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.u32("llama.context_length").unwrap(), 8192);
    assert_eq!(g.get("small"), Some(&Value::I8(-3)));
    assert!(matches!(g.u32("small"), Err(ModelError::Config { ref key, .. }) if key == "small"));
    assert_eq!(g.f32("eps").unwrap(), 1e-5);
    assert_eq!(g.f32("theta").unwrap(), 10000.0);
    assert!(g.bool("flag").unwrap());
    assert_eq!(g.opt_bool("absent").unwrap(), None);
    assert_eq!(g.opt_u32("llama.block_count").unwrap(), Some(30));
    assert!(matches!(g.opt_str("flag"), Err(ModelError::Config { .. })));
    assert!(matches!(g.str("absent"), Err(ModelError::Config { ref key, .. }) if key == "absent"));
    assert_eq!(g.str_array("toks").unwrap(), vec!["a", "bé"]);
    assert_eq!(g.f32_array("scores").unwrap(), vec![0.5, -1.5]);
    assert_eq!(g.i32_array("types").unwrap(), vec![1, -6]);
    assert!(matches!(g.str_array("scores"), Err(ModelError::Config { .. })));

    assert_eq!(g.tensors().len(), 3);
    let t = g.tensor("w32").unwrap();
    assert_eq!(t.dims, vec![4, 3]);
    assert_eq!(t.shape(), vec![3, 4]);
    assert_eq!(t.n_elements(), 12);
    assert_eq!(t.n_bytes(), Some(48));
    assert_eq!(g.raw("w32").unwrap(), f32_bytes(&w32).as_slice());
    assert_eq!(g.dequantize("w32").unwrap(), w32);
    assert_eq!(g.dequantize_shaped("w32", &[3, 4]).unwrap(), w32);
    assert!(matches!(
        g.dequantize_shaped("w32", &[4, 3]),
        Err(ModelError::WrongShape { ref expected, ref found, .. })
            if expected == &[4, 3] && found == &[3, 4]
    ));
    assert_eq!(g.dequantize("w16").unwrap(), w16);
    let want: Vec<f32> = (0..32).map(|j| 0.25 * (3 * j - 40) as f32).collect();
    assert_eq!(g.dequantize("q8").unwrap(), want);
    assert_eq!(g.tensor("q8").unwrap().shape(), vec![1, 32]);
    assert!(matches!(
        g.tensor("nope"),
        Err(ModelError::MissingTensor { ref tensor, ref path }) if tensor == "nope" && path == &path_of(&g)
    ));
    assert!(matches!(g.raw("nope"), Err(ModelError::MissingTensor { .. })));
    assert!(matches!(g.dequantize("nope"), Err(ModelError::MissingTensor { .. })));
}

fn path_of(g: &GgufFile) -> PathBuf {
    g.path().to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Fixtures from the Python `gguf` package (see fixtures/gguf/make_fixtures.py).

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

const FIXTURE_TYPES: [(&str, GgmlType); 10] = [
    ("F16", GgmlType::F16),
    ("BF16", GgmlType::BF16),
    ("Q4_0", GgmlType::Q4_0),
    ("Q4_1", GgmlType::Q4_1),
    ("Q5_0", GgmlType::Q5_0),
    ("Q5_1", GgmlType::Q5_1),
    ("Q8_0", GgmlType::Q8_0),
    ("Q4_K", GgmlType::Q4K),
    ("Q5_K", GgmlType::Q5K),
    ("Q6_K", GgmlType::Q6K),
];

/// Bitwise equality (so that NaN, infinities and the sign of zero count), with the first
/// difference in the message.
fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits());
    if let Some(i) = bad {
        panic!(
            "{what}: element {i}: got {} ({:#010x}), want {} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[test]
fn every_type_matches_python_gguf_bitwise() {
    for (name, ty) in FIXTURE_TYPES {
        let bytes = std::fs::read(fixture(&format!("{name}.bin"))).unwrap();
        let want = read_f32(&fixture(&format!("{name}.f32")));
        assert!(!want.is_empty());
        assert_eq!(ty.to_string(), name);
        let bb = quant::block_bytes(ty).unwrap();
        let be = quant::block_elems(ty).unwrap();
        assert_eq!(bytes.len() / bb * be, want.len(), "{name}: sizes");
        let mut got = vec![f32::NAN; want.len()];
        quant::dequantize_into(ty, &bytes, &mut got).unwrap();
        assert_bits_eq(&got, &want, name);
        // The fixtures are not degenerate: many distinct values.
        let mut distinct: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() >= 16, "{name}: only {} distinct values", distinct.len());
    }
}

#[test]
fn reads_file_written_by_python_gguf() {
    let g = GgufFile::open(fixture("reference.gguf")).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.str("general.architecture").unwrap(), "fixture");
    assert_eq!(g.get("fx.u8"), Some(&Value::U8(200)));
    assert_eq!(g.get("fx.i8"), Some(&Value::I8(-100)));
    assert_eq!(g.get("fx.u16"), Some(&Value::U16(60000)));
    assert_eq!(g.get("fx.i16"), Some(&Value::I16(-30000)));
    assert_eq!(g.get("fx.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(g.get("fx.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(g.get("fx.u64"), Some(&Value::U64((1 << 40) + 7)));
    assert_eq!(g.get("fx.i64"), Some(&Value::I64(-(1 << 40) - 7)));
    assert_eq!(g.get("fx.f32"), Some(&Value::F32(0.1)));
    assert_eq!(g.get("fx.f64"), Some(&Value::F64(0.1)));
    assert!(g.bool("fx.bool").unwrap());
    assert_eq!(g.str("fx.str").unwrap(), "héllo ▁wörld");
    assert_eq!(g.str_array("fx.strs").unwrap(), vec!["<s>", "</s>", "▁a", ""]);
    assert_eq!(g.f32_array("fx.f32s").unwrap(), vec![0.5, -1.25, 3.0]);
    assert_eq!(g.i32_array("fx.i32s").unwrap(), vec![1, -2, 3]);
    assert_eq!(g.u32("fx.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.u32("fx.u16").unwrap(), 60000);
    for key in ["fx.i8", "fx.i32", "fx.u64", "fx.i64"] {
        assert!(matches!(g.u32(key), Err(ModelError::Config { .. })), "{key} does not fit in u32");
    }
    assert_eq!(g.keys().count(), 16);
    assert_eq!(g.tensors().len(), FIXTURE_TYPES.len());
    for (name, ty) in FIXTURE_TYPES {
        let t = g.tensor(&format!("t.{name}")).unwrap();
        assert_eq!(t.dtype, ty);
        let want = read_f32(&fixture(&format!("{name}.f32")));
        assert_eq!(t.n_elements(), want.len());
        assert_eq!(t.shape()[0], 2, "{name}: two rows");
        assert_eq!(
            g.raw(&t.name).unwrap(),
            std::fs::read(fixture(&format!("{name}.bin"))).unwrap()
        );
        let got = g.dequantize_shaped(&t.name, &t.shape()).unwrap();
        assert_bits_eq(&got, &want, name);
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed files.

fn malformed_detail(r: Result<GgufFile, ModelError>, path: &std::path::Path) -> String {
    match r {
        Err(ModelError::Malformed { path: p, format, detail }) => {
            assert_eq!(p, path);
            assert_eq!(format, "GGUF");
            detail
        }
        Err(e) => panic!("expected Malformed, got {e}"),
        Ok(_) => panic!("expected Malformed, the file opened"),
    }
}

fn expect_malformed(tag: &str, bytes: &[u8], needle: &str) {
    let p = write(tag, bytes);
    let d = malformed_detail(GgufFile::open(&p), &p);
    assert!(d.contains(needle), "{tag}: `{d}` should mention `{needle}`");
    std::fs::remove_file(&p).unwrap();
}

/// A valid file that exercises every value type, nested arrays and three tensors.
fn rich_file() -> Writer {
    let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
    q8.extend((0..32u8).map(|j| j.wrapping_mul(7)));
    Writer::new()
        .kv("u8", Value::U8(1))
        .kv("i8", Value::I8(-1))
        .kv("u16", Value::U16(2))
        .kv("i16", Value::I16(-2))
        .kv("u32", Value::U32(3))
        .kv("i32", Value::I32(-3))
        .kv("u64", Value::U64(4))
        .kv("i64", Value::I64(-4))
        .kv("f32", Value::F32(5.5))
        .kv("f64", Value::F64(6.5))
        .kv("bool", Value::Bool(false))
        .kv("str", Value::Str("seven".into()))
        .kv(
            "nested",
            Value::Array(vec![
                Value::Array(vec![Value::U16(1), Value::U16(2)]),
                Value::Array(vec![Value::U16(3)]),
            ]),
        )
        .tensor("a", &[8, 2], GgmlType::F32, f32_bytes(&[1.5; 16]))
        .tensor("b", &[32], GgmlType::Q8_0, q8)
        .tensor("c", &[3], GgmlType::F16, vec![0, 0x3c, 0, 0x40, 0, 0xc0])
}

#[test]
fn rich_file_round_trips() {
    let p = write("rich", &rich_file().bytes());
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(
        g.get("nested"),
        Some(&Value::Array(vec![
            Value::Array(vec![Value::U16(1), Value::U16(2)]),
            Value::Array(vec![Value::U16(3)]),
        ]))
    );
    assert_eq!(g.get("i64"), Some(&Value::I64(-4)));
    assert_eq!(g.dequantize("c").unwrap(), vec![1.0, 2.0, -2.0]);
    assert_eq!(g.dequantize("a").unwrap(), vec![1.5; 16]);
    let b = g.dequantize("b").unwrap();
    assert_eq!(b[3], 0.5 * 21.0);
    assert_eq!(b[20], 0.5 * (140u8 as i8) as f32);
}

#[test]
fn truncated_at_every_offset_is_malformed() {
    let full = rich_file().bytes();
    assert!(GgufFile::open(write("full", &full)).is_ok());
    for cut in 0..full.len() {
        let p = write("cut", &full[..cut]);
        let d = malformed_detail(GgufFile::open(&p), &p);
        assert!(!d.is_empty(), "cut at {cut}");
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn corrupt_bytes_never_panic() {
    let full = rich_file().bytes();
    let mut opened = 0;
    for at in 0..full.len() {
        for v in [0x00u8, 0xff, 0x80, full[at] ^ 0x01] {
            let mut b = full.clone();
            b[at] = v;
            let p = write("flip", &b);
            match GgufFile::open(&p) {
                Ok(g) => {
                    opened += 1;
                    let names: Vec<String> = g.tensors().iter().map(|t| t.name.clone()).collect();
                    for n in names {
                        match g.dequantize(&n) {
                            Ok(v) => assert_eq!(v.len(), g.tensor(&n).unwrap().n_elements()),
                            Err(ModelError::UnknownDtype { .. }) => {}
                            Err(e) => panic!("byte {at} = {v:#x}: {e}"),
                        }
                    }
                }
                Err(ModelError::Malformed { .. }) => {}
                Err(e) => panic!("byte {at} = {v:#x}: unexpected {e}"),
            }
            std::fs::remove_file(&p).unwrap();
        }
    }
    // Flips inside values and tensor data leave a readable file.
    assert!(opened > 100, "only {opened} variants opened");
}

fn patch(mut b: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
    b[at..at + with.len()].copy_from_slice(with);
    b
}

#[test]
fn header_errors() {
    let ok = rich_file().bytes();
    expect_malformed("magic", &patch(ok.clone(), 0, b"GGUG"), "magic");
    for v in [0u32, 1, 4, 3 << 24] {
        expect_malformed("version", &patch(ok.clone(), 4, &v.to_le_bytes()), "version");
    }
    expect_malformed("empty", &[], "empty");
    expect_malformed("short", b"GGU", "truncated");
    // Tensor count: absurd, and one more than there is.
    expect_malformed("ntensors", &patch(ok.clone(), 8, &u64::MAX.to_le_bytes()), "tensor count");
    let p = write("ntensors1", &patch(ok.clone(), 8, &4u64.to_le_bytes()));
    assert!(matches!(GgufFile::open(&p), Err(ModelError::Malformed { .. })));
    // Metadata count: absurd, and one more than there is.
    expect_malformed("nkv", &patch(ok.clone(), 16, &(1u64 << 60).to_le_bytes()), "metadata count");
    let p = write("nkv1", &patch(ok.clone(), 16, &14u64.to_le_bytes()));
    assert!(matches!(GgufFile::open(&p), Err(ModelError::Malformed { .. })));
    // Length of the first key (at 24) beyond the end.
    expect_malformed("keylen", &patch(ok.clone(), 24, &(u64::MAX - 3).to_le_bytes()), "length");
    expect_malformed("keylen2", &patch(ok, 24, &100_000u64.to_le_bytes()), "length");
}

#[test]
fn value_errors() {
    // One pair: key "k" (length at 24, byte at 32), type at 33, value from 37.
    let s = Writer::new().kv("k", Value::Str("abc".into())).bytes();
    expect_malformed("strlen", &patch(s.clone(), 37, &(1u64 << 62).to_le_bytes()), "length");
    let t13 = Writer::new().kv("a", Value::U8(1)).raw_kv("k", 13, vec![0; 8]).bytes();
    expect_malformed("type13", &t13, "key `k`: unknown value type 13");
    expect_malformed("typemax", &patch(s, 33, &u32::MAX.to_le_bytes()), "unknown value type");
    let a = Writer::new().kv("k", Value::Array(vec![Value::U32(1)])).bytes();
    expect_malformed(
        "elemtype",
        &patch(a.clone(), 37, &42u32.to_le_bytes()),
        "array element type 42",
    );
    expect_malformed("arrlen", &patch(a, 41, &(u64::MAX / 2).to_le_bytes()), "element count");
    let b = Writer::new().kv("k", Value::Bool(true)).bytes();
    expect_malformed("bool", &patch(b, 37, &[2]), "bool");
    // Arrays nested 100 deep: refused, without exhausting the stack.
    let mut v = Value::U8(1);
    for _ in 0..100 {
        v = Value::Array(vec![v]);
    }
    expect_malformed("deep", &Writer::new().kv("k", v).bytes(), "nested");
    let dup = Writer::new().kv("k", Value::U8(1)).kv("k", Value::U8(2)).bytes();
    expect_malformed("dupkey", &dup, "duplicate metadata key `k`");
    // Key that is not UTF-8.
    let mut w = Writer::new().kv("kk", Value::U8(1)).bytes();
    w[32] = 0xff;
    expect_malformed("utf8", &w, "UTF-8");
    for bad in [Value::U32(0), Value::U32(3), Value::U32(48), Value::Str("32".into())] {
        let f = Writer::new().kv("general.alignment", bad).bytes();
        expect_malformed("align", &f, "alignment");
    }
}

#[test]
fn tensor_table_errors() {
    let data = f32_bytes(&[0.0; 8]);
    let one = |dims: &[u64], ty: u32, offset: Option<u64>| {
        Writer::new().tensor_raw("w", dims, ty, data.clone(), offset).bytes()
    };
    expect_malformed("past", &one(&[8], 0, Some(64)), "tensor `w`");
    expect_malformed("past2", &one(&[8], 0, Some(u64::MAX - 31)), "outside");
    expect_malformed("unaligned", &one(&[8], 0, Some(4)), "alignment");
    expect_malformed("toobig", &one(&[9], 0, None), "outside");
    expect_malformed("dims5", &one(&[1, 1, 1, 1, 8], 0, None), "5 dimensions");
    expect_malformed("overflow", &one(&[u64::MAX, 2], 0, None), "overflow");
    // 16 elements of Q8_0: not a whole block.
    expect_malformed("block", &one(&[16], 8, None), "block size 32");
    // Unknown type id at an offset past the data section.
    expect_malformed("unknown-past", &one(&[8], 99, Some(1 << 20)), "past the end");
    let dup = Writer::new()
        .tensor("w", &[8], GgmlType::F32, data.clone())
        .tensor("w", &[8], GgmlType::F32, data.clone())
        .bytes();
    expect_malformed("duptensor", &dup, "duplicate tensor name `w`");
    // Data section that would start past the end of the file.
    // One empty tensor: the file is the header and the table, padded to 32 bytes; cutting the
    // padding leaves no room for the (empty) data section.
    let mut short = Writer::new().tensor("w", &[0], GgmlType::F32, vec![]).bytes();
    let table_end = 24 + 8 + 1 + 4 + 8 + 4 + 8;
    assert!(short.len() > table_end);
    short.truncate(table_end);
    let p = write("nodata", &short);
    assert!(matches!(GgufFile::open(&p), Err(ModelError::Malformed { .. })));
}

#[test]
fn unknown_and_unsupported_types() {
    let w = Writer::new()
        .tensor_raw("odd", &[8], 99, vec![0; 32], None)
        .tensor("q2", &[256], GgmlType::Q2K, vec![0; 84])
        .tensor("f", &[2], GgmlType::F32, f32_bytes(&[1.0, 2.0]))
        .bytes();
    let p = write("types", &w);
    let g = GgufFile::open(&p).unwrap();
    let odd = g.tensor("odd").unwrap();
    assert_eq!(odd.dtype, GgmlType::Other(99));
    assert_eq!(odd.n_bytes(), None);
    assert!(
        matches!(g.raw("odd"), Err(ModelError::UnknownDtype { ref tensor, .. }) if tensor == "odd")
    );
    assert!(matches!(
        g.dequantize("odd"),
        Err(ModelError::UnknownDtype { ref dtype, .. }) if dtype == "ggml type 99"
    ));
    assert_eq!(g.raw("q2").unwrap().len(), 84);
    assert!(matches!(
        g.dequantize("q2"),
        Err(ModelError::UnknownDtype { ref dtype, ref tensor, .. }) if dtype == "Q2_K" && tensor == "q2"
    ));
    assert_eq!(g.dequantize("f").unwrap(), vec![1.0, 2.0]);
    assert!(matches!(GgufFile::open(p.with_extension("absent")), Err(ModelError::Io { .. })));
}

#[test]
fn version_2_and_custom_alignment() {
    let mut w = Writer::new()
        .kv("general.alignment", Value::U32(64))
        .tensor("x", &[3], GgmlType::F32, f32_bytes(&[1.0, 2.0, 3.0]))
        .tensor("y", &[2, 2], GgmlType::BF16, vec![0x80, 0x3f, 0, 0x40, 0, 0xc0, 0, 0]);
    w.version = 2;
    w.alignment = 64;
    let p = write("v2", &w.bytes());
    let g = GgufFile::open(&p).unwrap();
    assert_eq!((g.version(), g.alignment()), (2, 64));
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor("y").unwrap().offset, 64);
    assert_eq!(g.dequantize("x").unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(g.dequantize_shaped("y", &[2, 2]).unwrap(), vec![1.0, 2.0, -2.0, 0.0]);
    // With the default alignment of 32 assumed, the same offsets are wrong.
    let mut w2 = Writer::new()
        .tensor("x", &[3], GgmlType::F32, f32_bytes(&[1.0, 2.0, 3.0]))
        .tensor_raw("y", &[4], GgmlType::F32.id(), f32_bytes(&[0.0; 4]), Some(48));
    w2.alignment = 16;
    expect_malformed("align16", &w2.bytes(), "alignment 32");
}

#[test]
fn files_with_no_tensors() {
    let p = write("notensors", &Writer::new().kv("a", Value::U8(1)).bytes());
    let g = GgufFile::open(&p).unwrap();
    assert!(g.tensors().is_empty());
    assert_eq!(g.keys().collect::<Vec<_>>(), vec!["a"]);
    let p = write("bare", &Writer::new().bytes());
    assert_eq!(GgufFile::open(&p).unwrap().keys().count(), 0);
}

#[test]
fn gguf_file_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GgufFile>();
}

// ---------------------------------------------------------------------------------------------
// Real models (not committed): run fixtures/gguf/make_real_refs.py first, then
//   ATTN_GGUF_REFS=<its output folder> cargo test -p attn-models --test gguf -- --ignored --nocapture

#[test]
#[ignore = "needs real GGUF models and ATTN_GGUF_REFS from make_real_refs.py"]
fn real_models_match_python() {
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;

    let dir = PathBuf::from(std::env::var("ATTN_GGUF_REFS").expect("set ATTN_GGUF_REFS"));
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    let mut by_model: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for line in manifest.lines() {
        let f: Vec<String> = line.split('\t').map(str::to_string).collect();
        assert_eq!(f.len(), 6, "manifest line `{line}`");
        by_model.entry(f[0].clone()).or_default().push(f);
    }
    assert!(!by_model.is_empty());
    for (model, rows) in &by_model {
        let g = GgufFile::open(model).unwrap();
        println!(
            "{model}: GGUF v{}, {} keys, {} tensors",
            g.version(),
            g.keys().count(),
            g.tensors().len()
        );
        assert_eq!(g.tensors().len(), rows.len(), "{model}: tensor count");
        println!("  keys: {}", g.keys().collect::<Vec<_>>().join(", "));
        let arch = g.str("general.architecture").unwrap();
        let layers = g.u32(&format!("{arch}.block_count")).unwrap();
        let tokens = g.str_array("tokenizer.ggml.tokens").unwrap();
        let types = g.i32_array("tokenizer.ggml.token_type").unwrap();
        assert_eq!(tokens.len(), types.len());
        let absent = g.opt_f32("no.such.key").unwrap();
        assert!(absent.is_none());
        println!("  {arch}, {layers} blocks, vocabulary {}", tokens.len());
        // Time a full dequantisation first, without hashing.
        let t0 = std::time::Instant::now();
        let mut total = 0usize;
        for t in g.tensors() {
            total += g.dequantize(&t.name).unwrap().len();
        }
        println!("  dequantized all {total} elements in {:.3} s", t0.elapsed().as_secs_f64());
        // (type) -> (tensors hashed, hash matches, dumps compared, max |diff| over dumps)
        let mut per_type: BTreeMap<String, (usize, usize, usize, f32)> = BTreeMap::new();
        for f in rows {
            let (name, ty, n, digest, dump) = (&f[1], &f[2], &f[3], &f[4], &f[5]);
            let t = g.tensor(name).unwrap();
            assert_eq!(&t.dtype.to_string(), ty, "{name}");
            assert_eq!(t.n_elements().to_string(), *n, "{name}");
            let x = g.dequantize(name).unwrap();
            let mut h = Sha256::new();
            for v in &x {
                h.update(v.to_le_bytes());
            }
            let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            let e = per_type.entry(ty.clone()).or_insert((0, 0, 0, 0.0));
            e.0 += 1;
            e.1 += usize::from(&hex == digest);
            if dump != "-" {
                let want = read_f32(&dir.join(dump));
                assert_eq!(want.len(), x.len());
                let diff = x.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                e.2 += 1;
                e.3 = e.3.max(diff);
            }
        }
        for (ty, (n, ok, dumps, diff)) in &per_type {
            println!(
                "  {ty:5}: {ok}/{n} tensors bit-identical (sha256); {dumps} dumps, max |diff| {diff}"
            );
            assert_eq!(ok, n, "{model}: {ty} hashes differ");
            assert_eq!(*diff, 0.0);
        }
    }
}
