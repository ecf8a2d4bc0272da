//! `attn_models::fetch`: the pinned catalogue, checksum verification, interrupt safety,
//! concurrency and the fast path, on assets built from local archives in temporary folders
//! (plus one real, small asset for the no-op timing).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attn_models::fetch::{self, Asset, Package, Source, Step};
use attn_models::ModelError;

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn catalogue_is_unique_and_pinned() {
    let assets = fetch::assets();
    assert!(assets.len() >= 9, "{} assets", assets.len());
    for (i, a) in assets.iter().enumerate() {
        assert!(assets[..i].iter().all(|b| b.name != a.name), "duplicate asset {}", a.name);
        assert!(!a.description.is_empty() && a.approx_bytes > 0, "{}", a.name);
        assert!(!a.packages.is_empty() && !a.steps.is_empty(), "{}", a.name);
        for p in a.packages {
            assert!(is_hex64(p.sha256), "{}: {} sha256 {:?}", a.name, p.name, p.sha256);
            assert!(!p.version.is_empty() && p.file.contains(p.version), "{}: {:?}", a.name, p);
            assert!(
                !matches!(p.source, Source::File(_)),
                "{}: catalogue uses a local file",
                a.name
            );
        }
        for (path, sha) in a.checks {
            assert!(is_hex64(sha), "{}: check {path} {sha}", a.name);
        }
        for s in a.steps {
            let pkgs: Vec<usize> = match *s {
                Step::Copy { pkg, .. } | Step::Austen { pkg, .. } | Step::Bible { pkg, .. } => {
                    vec![pkg]
                }
                Step::Concat { parts, .. } => parts.iter().map(|p| p.0).collect(),
                Step::VerifySums { .. } => vec![],
            };
            assert!(pkgs.iter().all(|&p| p < a.packages.len()), "{}: {s:?}", a.name);
        }
        assert_eq!(fetch::find(a.name).unwrap().name, a.name);
    }
    for n in fetch::DEFAULT {
        assert!(fetch::find(n).is_ok(), "default {n} not in the catalogue");
    }
    // The digests the issue pins for the model files.
    let check = |name: &str, sha: &str| {
        assert!(fetch::find(name).unwrap().checks.iter().any(|c| c.1 == sha), "{name}")
    };
    check("minilm", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db");
    check("smollm2", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    check("gemma3", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
    check("qwen2", "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32");
}

#[test]
fn unknown_names_are_invalid_and_list_the_known_ones() {
    match fetch::find("no-such-model") {
        Err(ModelError::Invalid(m)) => {
            assert!(m.contains("no-such-model") && m.contains("minilm") && m.contains("lee"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(fetch::ensure("no-such-model"), Err(ModelError::Invalid(_))));
    assert!(!fetch::is_fetched("no-such-model"));
    assert!(fetch::path_of("no-such-model").is_err());
}

/// A fresh empty folder under the target dir (kept out of $ATTN_HOME).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-fetch-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn leak<T>(v: Vec<T>) -> &'static [T] {
    Box::leak(v.into_boxed_slice())
}

fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Writes a zip ("wheel") with the given members and returns (path, sha256).
fn wheel(dir: &Path, file: &str, members: &[(&str, &[u8])]) -> (PathBuf, String) {
    let p = dir.join(file);
    let f = std::fs::File::create(&p).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in members {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
    let bytes = std::fs::read(&p).unwrap();
    (p, sha(&bytes))
}

struct Fake {
    asset: Asset,
    part_a: Vec<u8>,
    part_b: Vec<u8>,
}

/// An asset from two local wheels: copy a folder and a SHA256SUMS file from the first, concatenate
/// one member of each into `joined.bin`, verify it against SHA256SUMS and a pinned check.
fn fake(dir: &Path, name: &str, corrupt_archive: bool, corrupt_check: bool) -> Fake {
    let part_a: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let part_b: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let joined = [part_a.as_slice(), part_b.as_slice()].concat();
    let joined_sha = sha(&joined);
    let sums = format!("{joined_sha}  joined.bin\n");
    let (w1, s1) = wheel(
        dir,
        "fake_one-1.0-py3-none-any.whl",
        &[
            ("fake_one/data/SHA256SUMS", sums.as_bytes()),
            ("fake_one/data/config.json", b"{\"x\": 1}"),
            ("fake_one/data/sub/notes.txt", b"hello"),
            ("fake_one/data/part.a", &part_a),
            ("fake_one/__init__.py", b""),
        ],
    );
    let (w2, s2) = wheel(dir, "fake_two-1.0-py3-none-any.whl", &[("fake_two/part.b", &part_b)]);
    let s1 = if corrupt_archive { "0".repeat(64) } else { s1 };
    let check = if corrupt_check { "f".repeat(64) } else { joined_sha };
    let pkg = |path: &Path, file: &'static str, sha: String| Package {
        source: Source::File(leak_str(path.display().to_string())),
        name: file,
        version: "1.0",
        file,
        sha256: leak_str(sha),
    };
    let asset = Asset {
        name: leak_str(name.to_string()),
        description: "test asset",
        approx_bytes: 120_000,
        packages: leak(vec![
            pkg(&w1, "fake_one-1.0-py3-none-any.whl", s1),
            pkg(&w2, "fake_two-1.0-py3-none-any.whl", s2),
        ]),
        steps: leak(vec![
            Step::Copy { pkg: 0, prefix: "fake_one/data/", to: "", files: &[], ext: "" },
            Step::Concat {
                parts: leak(vec![(0, "fake_one/data/part.a"), (1, "fake_two/part.b")]),
                to: "joined.bin",
            },
            Step::VerifySums { sums: "SHA256SUMS", file: "joined.bin" },
        ]),
        checks: leak(vec![("joined.bin", leak_str(check))]),
        result: "joined.bin",
    };
    Fake { asset, part_a, part_b }
}

fn leftovers(home: &Path) -> Vec<String> {
    std::fs::read_dir(home)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

#[test]
fn builds_a_local_asset_and_second_call_is_a_fast_no_op() {
    let dir = scratch("build");
    let home = dir.join("home");
    let f = fake(&dir, "fake", false, false);
    assert!(!fetch::is_fetched_in(&home, &f.asset));
    let msgs = std::sync::Mutex::new(Vec::new());
    let p = fetch::ensure_asset(&home, &f.asset, &|m| msgs.lock().unwrap().push(m.to_string()))
        .unwrap();
    assert_eq!(p, home.join("fake/joined.bin"));
    assert_eq!(std::fs::read(&p).unwrap(), [f.part_a.as_slice(), f.part_b.as_slice()].concat());
    assert_eq!(std::fs::read(home.join("fake/sub/notes.txt")).unwrap(), b"hello");
    assert!(home.join("fake/config.json").is_file());
    assert!(!home.join("fake/__init__.py").exists(), "copied a member outside the prefix");
    assert!(fetch::is_fetched_in(&home, &f.asset));
    assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));
    let msgs = msgs.into_inner().unwrap();
    assert!(msgs.iter().any(|m| m.contains("verifying")), "{msgs:?}");

    let before = std::fs::metadata(&p).unwrap().modified().unwrap();
    let t = Instant::now();
    let again = fetch::ensure_asset(&home, &f.asset, &|m| panic!("no-op reported {m}")).unwrap();
    let dt = t.elapsed();
    assert_eq!(again, p);
    assert!(dt < Duration::from_millis(50), "second ensure took {dt:?}");
    assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn archive_checksum_mismatch_is_a_fetch_error_and_installs_nothing() {
    let dir = scratch("badarchive");
    let home = dir.join("home");
    let f = fake(&dir, "fake", true, false);
    match fetch::ensure_asset(&home, &f.asset, &|_| {}) {
        Err(ModelError::Fetch { name, detail }) => {
            assert_eq!(name, "fake");
            assert!(
                detail.contains("does not match") && detail.contains(&"0".repeat(64)),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!home.join("fake").exists());
    assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));
    assert!(!fetch::is_fetched_in(&home, &f.asset));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn result_checksum_mismatch_is_a_fetch_error_and_installs_nothing() {
    let dir = scratch("badcheck");
    let home = dir.join("home");
    let f = fake(&dir, "fake", false, true);
    match fetch::ensure_asset(&home, &f.asset, &|_| {}) {
        Err(ModelError::Fetch { detail, .. }) => {
            assert!(detail.contains("joined.bin") && detail.contains(&"f".repeat(64)), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!home.join("fake").exists());
    assert!(leftovers(&home).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verify_and_sha256_file() {
    let dir = scratch("verify");
    let p = dir.join("abc.txt");
    std::fs::write(&p, b"abc").unwrap();
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(fetch::sha256_file(&p).unwrap(), abc);
    fetch::verify("x", &p, abc).unwrap();
    fetch::verify("x", &p, &abc.to_uppercase()).unwrap();
    let wrong = abc.replace('b', "c");
    match fetch::verify("x", &p, &wrong) {
        Err(ModelError::Fetch { name, detail }) => {
            assert_eq!(name, "x");
            assert!(detail.contains(abc) && detail.contains(&wrong), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(fetch::verify("x", &dir.join("missing"), abc), Err(ModelError::Io { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn interrupted_work_is_ignored_and_cleaned() {
    let dir = scratch("interrupted");
    let home = dir.join("home");
    let f = fake(&dir, "fake", false, false);
    // What a killed process leaves: a temp folder, and a half-built asset folder without marker.
    std::fs::create_dir_all(home.join(".tmp-fake-999999/out")).unwrap();
    std::fs::write(home.join(".tmp-fake-999999/out/joined.bin"), b"partial").unwrap();
    std::fs::create_dir_all(home.join("fake")).unwrap();
    std::fs::write(home.join("fake/joined.bin"), b"partial").unwrap();
    std::fs::write(home.join("fake/stale.txt"), b"old").unwrap();
    // Another asset's temp folder with a similar name is not ours to remove.
    std::fs::create_dir_all(home.join(".tmp-fake-x-999999")).unwrap();
    assert!(!fetch::is_fetched_in(&home, &f.asset), "a folder without marker counts as fetched");

    let p = fetch::ensure_asset(&home, &f.asset, &|_| {}).unwrap();
    assert_eq!(std::fs::read(&p).unwrap().len(), f.part_a.len() + f.part_b.len());
    assert!(!home.join("fake/stale.txt").exists(), "the half-built folder was not replaced");
    assert!(!home.join(".tmp-fake-999999").exists(), "stale temp folder left");
    assert!(home.join(".tmp-fake-x-999999").exists(), "removed another asset's temp folder");

    // A marker from another catalogue version does not count either.
    std::fs::write(home.join("fake/.attn-fetched"), "attn-fetch 1\nasset fake\n").unwrap();
    assert!(!fetch::is_fetched_in(&home, &f.asset));
    fetch::ensure_asset(&home, &f.asset, &|_| {}).unwrap();
    assert!(fetch::is_fetched_in(&home, &f.asset));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_ensures_build_once_and_agree() {
    let dir = scratch("concurrent");
    let home = dir.join("home");
    let f = fake(&dir, "fake", false, false);
    let expected = [f.part_a.as_slice(), f.part_b.as_slice()].concat();
    let results: Vec<PathBuf> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| fetch::ensure_asset(&home, &f.asset, &|_| {}).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|p| *p == results[0]));
    assert_eq!(std::fs::read(&results[0]).unwrap(), expected);
    assert!(leftovers(&home).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unsafe_and_missing_members_are_errors() {
    let dir = scratch("members");
    let home = dir.join("home");
    let (w, s) = wheel(&dir, "evil-1.0-py3-none-any.whl", &[("evil/../../escape.txt", b"x")]);
    let pkg = Package {
        source: Source::File(leak_str(w.display().to_string())),
        name: "evil",
        version: "1.0",
        file: "evil-1.0-py3-none-any.whl",
        sha256: leak_str(s),
    };
    let mut asset = Asset {
        name: "evil",
        description: "test asset",
        approx_bytes: 1,
        packages: leak(vec![pkg]),
        steps: &[Step::Copy { pkg: 0, prefix: "evil/", to: "", files: &[], ext: "" }],
        checks: &[],
        result: "",
    };
    let r = fetch::ensure_asset(&home, &asset, &|_| {});
    assert!(matches!(r, Err(ModelError::Malformed { .. })), "{r:?}");
    assert!(!dir.join("escape.txt").exists() && !home.join("escape.txt").exists());
    asset.steps = &[Step::Copy { pkg: 0, prefix: "evil/", to: "", files: &["model.bin"], ext: "" }];
    match fetch::ensure_asset(&home, &asset, &|_| {}) {
        Err(ModelError::Fetch { detail, .. }) => assert!(detail.contains("model.bin"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(!home.join("evil").exists());
    // Names and output paths that would leave the asset folder are refused before any work.
    asset.steps = &[Step::Copy { pkg: 0, prefix: "evil/", to: "../out", files: &[], ext: "" }];
    assert!(matches!(fetch::ensure_asset(&home, &asset, &|_| {}), Err(ModelError::Invalid(_))));
    asset.steps = &[Step::Copy { pkg: 0, prefix: "evil/", to: "", files: &[], ext: "" }];
    asset.name = "../evil";
    assert!(matches!(fetch::ensure_asset(&home, &asset, &|_| {}), Err(ModelError::Invalid(_))));
    asset.name = "evil";
    asset.result = "/etc/passwd";
    assert!(matches!(fetch::ensure_asset(&home, &asset, &|_| {}), Err(ModelError::Invalid(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real thing, on the smallest asset: fetched once (pip, ~28 MB), then a no-op.
#[test]
fn real_ensure_is_a_no_op_once_fetched() {
    let p = fetch::ensure("lee").unwrap();
    assert!(p.join("lee.cor").is_file() && p.join("similarities0-1.txt").is_file());
    assert!(fetch::is_fetched("lee"));
    let t = Instant::now();
    let again = fetch::ensure("lee").unwrap();
    let dt = t.elapsed();
    assert_eq!(again, p);
    assert!(dt < Duration::from_millis(50), "ensure of a fetched asset took {dt:?}");
    assert_eq!(fetch::path_of("lee").unwrap(), p);
}
