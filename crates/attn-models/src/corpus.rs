//! The text corpora: Jane Austen's novels, Shakespeare's plays, the World English Bible, the Paul
//! Graham essays haystack and the Lee document-similarity benchmark.
//!
//! Each function fetches its asset on first use ([`crate::fetch::ensure`]) and reads the files
//! the fetch produced; [`text`] maps a corpus name (as the CLI takes it) to one string. The
//! format readers behind the fetch are in [`rdata`] (R lazy-load databases, for the Austen
//! novels) and [`sword`] (SWORD zText modules, for the Bible).

pub mod rdata;
pub mod sword;

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::fetch;

/// The novels of the `austen` asset, by their R object names.
const AUSTEN: &[&str] = &[
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
];

/// The names [`austen`] accepts: `emma`, `mansfieldpark`, `northangerabbey`, `persuasion`,
/// `prideprejudice`, `sensesensibility` (the janeaustenr R objects).
pub fn austen_books() -> &'static [&'static str] {
    AUSTEN
}

/// An R character vector as one text: the lines joined with `\n` (no trailing newline),
/// `NA` lines as empty lines.
pub(crate) fn join_lines(lines: &[Option<String>]) -> String {
    let total: usize = lines.iter().map(|l| l.as_ref().map_or(0, String::len) + 1).sum();
    let mut s = String::with_capacity(total);
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        if let Some(l) = l {
            s.push_str(l);
        }
    }
    s
}

fn read_string(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    String::from_utf8(bytes)
        .map_err(|e| ModelError::malformed(path, "UTF-8 text", e.utf8_error().to_string()))
}

/// One of Jane Austen's novels ([`austen_books`]) exactly as the janeaustenr package stores it:
/// its lines joined with `\n`, `NA` lines as empty ones, nothing trimmed.
///
/// # Errors
/// [`ModelError::Invalid`] for an unknown book; the fetch and read errors of the `austen` asset.
pub fn austen(book: &str) -> Result<String> {
    if !AUSTEN.contains(&book) {
        return Err(ModelError::Invalid(format!(
            "unknown Austen novel `{book}`; known: {}",
            AUSTEN.join(", ")
        )));
    }
    read_string(&fetch::ensure("austen")?.join(format!("{book}.txt")))
}

fn collect_md(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| ModelError::io(dir, e))?;
        let p = e.path();
        if p.is_dir() {
            collect_md(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
    Ok(())
}

/// Shakespeare's plays: (path under the plays folder without `.md`, e.g. `tragedies/hamlet`,
/// Markdown text), sorted by that path.
///
/// # Errors
/// The fetch and read errors of the `shakespeare` asset.
pub fn shakespeare() -> Result<Vec<(String, String)>> {
    let dir = fetch::ensure("shakespeare")?;
    let mut files = Vec::new();
    collect_md(&dir, &mut files)?;
    let mut plays = Vec::with_capacity(files.len());
    for f in files {
        let rel = f.strip_prefix(&dir).unwrap_or(&f).with_extension("");
        let key: Vec<String> =
            rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        plays.push((key.join("/"), read_string(&f)?));
    }
    plays.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(plays)
}

/// The World English Bible (with its preface), one verse or heading per line.
///
/// # Errors
/// The fetch and read errors of the `bible` asset.
pub fn bible() -> Result<String> {
    read_string(&fetch::ensure("bible")?)
}

/// The Paul Graham essays haystack: the `text` field of RULER's `PaulGrahamEssays.json`.
///
/// # Errors
/// The fetch and read errors of the `essays` asset; [`ModelError::Malformed`] if the JSON is not
/// an object with a string `text`.
pub fn essays() -> Result<String> {
    let path = fetch::ensure("essays")?.join("PaulGrahamEssays.json");
    let raw = read_string(&path)?;
    let v: serde_json::Value = serde_json::from_str(&raw)
        .map_err(|e| ModelError::malformed(&path, "JSON", e.to_string()))?;
    match v.get("text").and_then(|t| t.as_str()) {
        Some(t) => Ok(t.to_string()),
        None => Err(ModelError::malformed(&path, "JSON", "no string field `text`")),
    }
}

/// The Lee document-similarity benchmark (Lee, Pincombe & Welsh 2005, as shipped with gensim):
/// 50 short news documents and the mean human similarity judgement of every pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Lee {
    /// The documents, one per line of `lee.cor`.
    pub docs: Vec<String>,
    /// `similarity[i][j]`: human similarity of documents i and j in [0, 1]; symmetric, 1 on the
    /// diagonal.
    pub similarity: Vec<Vec<f64>>,
}

/// Bytes as text: UTF-8 when valid, else Windows-1252 (`lee.cor` has one Latin-1 `£`).
fn decode_legacy(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_string();
    }
    const CP1252: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9f => char::from_u32(CP1252[(b - 0x80) as usize]).unwrap_or('\u{fffd}'),
            _ => b as char,
        })
        .collect()
}

impl Lee {
    /// Parses `lee.cor` (one document per line; UTF-8, else Windows-1252) and
    /// `similarities0-1.txt`.
    ///
    /// `similarities0-1.txt` holds an n×n matrix, one row per line, values separated by
    /// whitespace (tabs in gensim's copy): row i has `1` on the diagonal, the mean human
    /// judgement for documents i and j (rescaled to [0, 1]) at column j > i, and `0` below the
    /// diagonal, so the n(n−1)/2 = 1225 pairs are the upper triangle. The lower triangle is
    /// filled by symmetry; a non-zero lower entry must equal its mirror.
    ///
    /// # Errors
    /// [`ModelError::Malformed`] (naming the file) for a row of the wrong length, a value that is
    /// not a number in [0, 1], a diagonal other than 1, an asymmetric non-zero lower entry, or
    /// a matrix whose size differs from the number of documents.
    pub fn parse(cor: &[u8], similarities: &[u8], cor_path: &Path, sim_path: &Path) -> Result<Lee> {
        let text = decode_legacy(cor);
        let mut docs: Vec<String> =
            text.split('\n').map(|l| l.trim_end_matches('\r').to_string()).collect();
        if docs.last().is_some_and(String::is_empty) {
            docs.pop();
        }
        if docs.is_empty() {
            return Err(ModelError::malformed(cor_path, "Lee corpus", "no documents"));
        }
        let bad = |d: String| ModelError::malformed(sim_path, "Lee similarity matrix", d);
        let sims = std::str::from_utf8(similarities).map_err(|e| bad(format!("not text: {e}")))?;
        let rows: Vec<&str> = sims.lines().filter(|l| !l.trim().is_empty()).collect();
        let n = docs.len();
        if rows.len() != n {
            return Err(bad(format!("{} rows for {n} documents", rows.len())));
        }
        let mut m = vec![vec![0.0f64; n]; n];
        for (i, row) in rows.iter().enumerate() {
            let vals: Vec<&str> = row.split_whitespace().collect();
            if vals.len() != n {
                return Err(bad(format!("row {} has {} values, expected {n}", i + 1, vals.len())));
            }
            for (j, v) in vals.iter().enumerate() {
                let x: f64 = v.parse().map_err(|_| {
                    bad(format!("row {} column {}: `{v}` is not a number", i + 1, j + 1))
                })?;
                if !(0.0..=1.0).contains(&x) {
                    return Err(bad(format!(
                        "row {} column {}: {x} is outside [0, 1]",
                        i + 1,
                        j + 1
                    )));
                }
                m[i][j] = x;
            }
        }
        let upper = m.clone();
        for (i, row) in m.iter_mut().enumerate() {
            if (row[i] - 1.0).abs() > 1e-9 {
                return Err(bad(format!("diagonal entry {} is {}, expected 1", i + 1, row[i])));
            }
            for (j, x) in row.iter_mut().enumerate().take(i) {
                let mirror = upper[j][i];
                if *x != 0.0 && (*x - mirror).abs() > 1e-9 {
                    return Err(bad(format!(
                        "entry ({}, {}) = {} differs from its mirror {mirror}",
                        i + 1,
                        j + 1,
                        *x
                    )));
                }
                *x = mirror;
            }
        }
        Ok(Lee { docs, similarity: m })
    }
}

/// The Lee corpus and its human similarity matrix (fetched with the `lee` asset).
///
/// # Errors
/// The fetch and read errors of the `lee` asset; [`Lee::parse`]'s errors.
pub fn lee() -> Result<Lee> {
    let dir = fetch::ensure("lee")?;
    let (cp, sp) = (dir.join("lee.cor"), dir.join("similarities0-1.txt"));
    let cor = std::fs::read(&cp).map_err(|e| ModelError::io(&cp, e))?;
    let sims = std::fs::read(&sp).map_err(|e| ModelError::io(&sp, e))?;
    Lee::parse(&cor, &sims, &cp, &sp)
}

/// The corpus names [`text`] accepts (besides the bare Austen book names).
pub const TEXT_NAMES: &[&str] =
    &["emma", "austen", "austen:<book>", "shakespeare", "shakespeare:<play>", "bible", "essays"];

/// One text by corpus name:
/// - `emma` or any other [`austen_books`] name, or `austen:<book>`: that novel;
/// - `austen`: the six novels in [`austen_books`] order, separated by a blank line;
/// - `shakespeare`: every play in [`shakespeare`] order, separated by a blank line;
///   `shakespeare:<play>`: one play by its file name (`hamlet`) or path (`tragedies/hamlet`);
/// - `bible`: [`bible`]; `essays`: [`essays`].
///
/// # Errors
/// [`ModelError::Invalid`] for an unknown name; the fetch and read errors of the asset.
pub fn text(name: &str) -> Result<String> {
    if let Some(book) = name.strip_prefix("austen:") {
        return austen(book);
    }
    if AUSTEN.contains(&name) {
        return austen(name);
    }
    if let Some(play) = name.strip_prefix("shakespeare:") {
        let plays = shakespeare()?;
        let found = plays.iter().find(|(k, _)| k == play || k.rsplit('/').next() == Some(play));
        return match found {
            Some((_, t)) => Ok(t.clone()),
            None => {
                let names: Vec<&str> =
                    plays.iter().filter_map(|(k, _)| k.rsplit('/').next()).collect();
                Err(ModelError::Invalid(format!(
                    "unknown play `{play}`; known: {}",
                    names.join(", ")
                )))
            }
        };
    }
    match name {
        "austen" => Ok(AUSTEN.iter().map(|b| austen(b)).collect::<Result<Vec<_>>>()?.join("\n\n")),
        "shakespeare" => {
            Ok(shakespeare()?.into_iter().map(|(_, t)| t).collect::<Vec<_>>().join("\n\n"))
        }
        "bible" => bible(),
        "essays" => essays(),
        _ => Err(ModelError::Invalid(format!(
            "unknown text `{name}`; known: {} (books: {})",
            TEXT_NAMES.join(", "),
            AUSTEN.join(", ")
        ))),
    }
}
