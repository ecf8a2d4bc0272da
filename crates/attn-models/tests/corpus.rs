//! The text corpora on the real data (fetched into `$ATTN_HOME` on first use), and the format
//! readers behind them (R lazy-load databases, SWORD zText, the Lee files) on synthetic bytes:
//! good input round-trips, bad input gives typed errors and never panics.

use std::io::Write;
use std::path::{Path, PathBuf};

use attn_models::corpus::{self, rdata, sword, Lee};
use attn_models::ModelError;
use sha2::Digest;

fn sha(s: &[u8]) -> String {
    sha2::Sha256::digest(s).iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- real data

/// sha256 of the UTF-8 bytes of `corpus::austen("emma")` and its length in chars. The reference
/// script (Python) computes the same text from the same .deb independently.
const EMMA_SHA256: &str = "dd08b340a56ad4a0a00718d5682528a5a5886ae0aef91c9e0fa528074fa64b75";
const EMMA_CHARS: usize = 883_027;

#[test]
fn emma_is_the_r_object_emma_verbatim() {
    let emma = corpus::austen("emma").unwrap();
    assert!(emma.starts_with("EMMA\n\nBy Jane Austen\n\n"), "{:?}", &emma[..60]);
    assert!(emma.contains("Emma Woodhouse, handsome, clever, and rich"));
    assert!(emma.trim_end().ends_with("FINIS"), "{:?}", &emma[emma.len() - 80..]);
    assert_eq!(emma.chars().count(), EMMA_CHARS);
    assert_eq!(sha(emma.as_bytes()), EMMA_SHA256);
    assert_eq!(corpus::text("emma").unwrap(), emma);
    assert_eq!(corpus::text("austen:emma").unwrap(), emma);
}

#[test]
fn six_novels_of_plausible_size() {
    let books = corpus::austen_books();
    assert_eq!(books.len(), 6);
    let firsts = [
        ("emma", "EMMA"),
        ("mansfieldpark", "MANSFIELD PARK"),
        ("northangerabbey", "NORTHANGER ABBEY"),
        ("persuasion", "Persuasion"),
        ("prideprejudice", "PRIDE AND PREJUDICE"),
        ("sensesensibility", "SENSE AND SENSIBILITY"),
    ];
    for (book, first) in firsts {
        assert!(books.contains(&book));
        let t = corpus::austen(book).unwrap();
        assert!((400_000..=900_000).contains(&t.len()), "{book}: {} bytes", t.len());
        assert!(t.starts_with(first), "{book} starts {:?}", &t[..40]);
        assert!(t.contains("Austen"), "{book}");
    }
    assert!(matches!(corpus::austen("ulysses"), Err(ModelError::Invalid(_))));
}

#[test]
fn lee_has_50_docs_and_a_symmetric_judgement_matrix() {
    let lee = corpus::lee().unwrap();
    assert_eq!(lee.docs.len(), 50);
    assert!(lee.docs.iter().all(|d| d.split_whitespace().count() > 20));
    assert!(lee.docs[0].starts_with("The national executive of the strife-torn Democrats"));
    // The one non-ASCII byte of lee.cor is a Latin-1 pound sign.
    assert!(lee.docs.iter().any(|d| d.contains("£3,000")));
    assert_eq!(lee.similarity.len(), 50);
    let mut distinct = 0usize;
    for (i, row) in lee.similarity.iter().enumerate() {
        assert_eq!(row.len(), 50);
        assert_eq!(row[i], 1.0);
        for (j, &x) in row.iter().enumerate() {
            assert!((0.0..=1.0).contains(&x), "{i},{j}: {x}");
            assert_eq!(x, lee.similarity[j][i], "{i},{j}");
            if j > i && x > 0.0 {
                distinct += 1;
            }
        }
    }
    assert_eq!(distinct, 1225, "every upper-triangle pair has a judgement");
    // Spot values from the first row of similarities0-1.txt.
    assert_eq!(lee.similarity[0][1], 0.3);
    assert_eq!(lee.similarity[0][13], 1.0);
    assert_eq!(lee.similarity[13][0], 1.0);
}

#[test]
fn bible_is_plain_text_one_verse_per_line() {
    let bible = corpus::bible().unwrap();
    let gen1 = "In the beginning, God created the heavens and the earth.";
    let at = bible.find(gen1).expect("Genesis 1:1");
    assert!(at < 60_000, "Genesis 1:1 at byte {at}");
    assert!(bible.lines().any(|l| l == gen1), "Genesis 1:1 is not a line of its own");
    assert!(bible.contains("For God so loved the world, that he gave his only born Son"));
    assert!(!bible.contains('<') && !bible.contains("&amp;"), "markup left");
    // The footnote on Genesis 1:1 is dropped (the glossary at the end still explains Elohim).
    assert!(
        !bible.contains("The Hebrew word rendered \u{201c}God\u{201d} is"),
        "a footnote was kept"
    );
    assert!((4_000_000..6_000_000).contains(&bible.len()), "{} bytes", bible.len());
    assert!(bible.lines().count() > 31_000, "{} lines", bible.lines().count());
    assert_eq!(corpus::text("bible").unwrap(), bible);
}

#[test]
fn essays_are_the_paul_graham_haystack() {
    let essays = corpus::essays().unwrap();
    assert!(essays.len() >= 2_000_000, "{} bytes", essays.len());
    assert!(essays.starts_with("April 2012"), "{:?}", &essays[..40]);
    let dir = attn_models::fetch::ensure("essays").unwrap();
    assert!(dir.join("squad.json").is_file() && dir.join("hotpotqa.json").is_file());
}

#[test]
fn shakespeare_has_38_plays_in_a_stable_order() {
    let plays = corpus::shakespeare().unwrap();
    assert_eq!(plays.len(), 38);
    assert!(plays.windows(2).all(|w| w[0].0 < w[1].0));
    let hamlet = plays.iter().find(|(k, _)| k == "tragedies/hamlet").expect("hamlet");
    assert!(hamlet.1.starts_with("# Hamlet"));
    assert!(hamlet.1.contains("To be, or not to be"));
    assert!(plays.iter().all(|(_, t)| t.len() > 80_000));
    assert_eq!(corpus::text("shakespeare:hamlet").unwrap(), hamlet.1);
    let all = corpus::text("shakespeare").unwrap();
    assert!(all.len() > 5_000_000);
    assert!(matches!(corpus::text("shakespeare:hamlet2"), Err(ModelError::Invalid(_))));
}

#[test]
fn unknown_text_names_are_invalid() {
    match corpus::text("war-and-peace") {
        Err(ModelError::Invalid(m)) => assert!(m.contains("emma") && m.contains("bible"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(corpus::text("austen:war"), Err(ModelError::Invalid(_))));
}

// ---------------------------------------------------------------- R serialization, synthetic

struct Xdr(Vec<u8>);

impl Xdr {
    fn new() -> Self {
        let mut x = Xdr(b"X\n".to_vec());
        x.i32(3).i32(0x0004_0201).i32(0x0003_0500).i32(5);
        x.0.extend_from_slice(b"UTF-8");
        x
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn chars(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.i32(9).i32(-1),
            Some(s) => {
                self.i32(0x0000_8009).i32(s.len() as i32);
                self.0.extend_from_slice(s.as_bytes());
                self
            }
        }
    }
    fn strsxp(&mut self, v: &[Option<&str>], attrs: bool) -> &mut Self {
        self.i32(if attrs { 0x210 } else { 0x10 }).i32(v.len() as i32);
        for s in v {
            self.chars(*s);
        }
        self
    }
    /// `names` attribute pairlist: LISTSXP with tag, first time as a SYMSXP, later as a ref.
    fn names(&mut self, names: &[&str], first: bool) -> &mut Self {
        self.i32(0x402);
        if first {
            self.i32(1).chars(Some("names"));
        } else {
            self.i32(0x1ff);
        }
        let n: Vec<Option<&str>> = names.iter().map(|s| Some(*s)).collect();
        self.strsxp(&n, false).i32(254)
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A lazy-load database with the given character vectors: (rdx bytes, rdb bytes).
fn lazyload(objects: &[(&str, Vec<Option<&str>>)]) -> (Vec<u8>, Vec<u8>) {
    let mut rdb = Vec::new();
    let mut pos = Vec::new();
    for (_, v) in objects {
        let mut x = Xdr::new();
        x.strsxp(v, false);
        let start = rdb.len();
        rdb.extend_from_slice(&(x.0.len() as u32).to_be_bytes());
        rdb.extend_from_slice(&zlib(&x.0));
        pos.push((start, rdb.len() - start));
    }
    let mut x = Xdr::new();
    x.i32(0x213).i32(3); // list(variables, references, compressed) with names
    x.i32(0x213).i32(objects.len() as i32);
    for (o, l) in &pos {
        x.i32(13).i32(2).i32(*o as i32).i32(*l as i32);
    }
    let names: Vec<&str> = objects.iter().map(|(n, _)| *n).collect();
    x.names(&names, true);
    x.i32(0x213).i32(0).names(&[], false);
    x.i32(10).i32(1).i32(1);
    x.names(&["variables", "references", "compressed"], false);
    (gzip(&x.0), rdb)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-corpus-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn malformed<T: std::fmt::Debug>(r: Result<T, ModelError>, path_part: &str) -> String {
    match r {
        Err(ModelError::Malformed { path, detail, .. }) => {
            assert!(
                path.display().to_string().contains(path_part),
                "{} / {path_part}",
                path.display()
            );
            detail
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn rdata_round_trip_with_na_and_utf8() {
    let dir = tmp("rdata-ok");
    let (rdx, rdb) = lazyload(&[
        ("emma", vec![Some("EMMA"), None, Some("By Jane Austen"), Some("")]),
        ("other", vec![Some("caf\u{e9} \u{2014} na\u{ef}ve")]),
    ]);
    std::fs::write(dir.join("Rdata.rdx"), &rdx).unwrap();
    std::fs::write(dir.join("Rdata.rdb"), &rdb).unwrap();
    let v = rdata::read_character_vectors(&dir.join("Rdata.rdx"), &dir.join("Rdata.rdb")).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].0, "emma");
    assert_eq!(
        v[0].1,
        vec![
            Some("EMMA".to_string()),
            None,
            Some("By Jane Austen".to_string()),
            Some(String::new())
        ]
    );
    assert_eq!(v[1].1, vec![Some("caf\u{e9} \u{2014} na\u{ef}ve".to_string())]);
    let index = rdata::parse_index(&rdx, Path::new("Rdata.rdx")).unwrap();
    assert_eq!(index[1].0, "other");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rdata_bad_input_gives_typed_errors() {
    let (rdx, rdb) = lazyload(&[("emma", vec![Some("EMMA"), Some("By Jane Austen")])]);
    let p = Path::new("Rdata.rdb");
    let index = rdata::parse_index(&rdx, Path::new("Rdata.rdx")).unwrap();
    let (_, off, len) = index[0].clone();
    // Truncated database: the record runs past the end.
    let d = malformed(rdata::decompress_record(&rdb[..rdb.len() - 3], off, len, p), "Rdata.rdb");
    assert!(d.contains("past the end"), "{d}");
    // Lying index: offset beyond the file, or an overflowing length.
    malformed(rdata::decompress_record(&rdb, 1 << 40, 10, p), "Rdata.rdb");
    malformed(rdata::decompress_record(&rdb, 1, u64::MAX, p), "Rdata.rdb");
    // Bad zlib.
    let mut bad = rdb.clone();
    for b in &mut bad[6..12] {
        *b ^= 0x5a;
    }
    let d = malformed(rdata::decompress_record(&bad, off, len, p), "Rdata.rdb");
    assert!(d.contains("zlib") || d.contains("decompresses"), "{d}");
    // Lying uncompressed size in the record header (too big and too small).
    for claimed in [u32::MAX, 3] {
        let mut lying = rdb.clone();
        lying[..4].copy_from_slice(&claimed.to_be_bytes());
        let d = malformed(rdata::decompress_record(&lying, off, len, p), "Rdata.rdb");
        assert!(d.contains("header says"), "{d}");
    }
    // Good record, then corrupt serializations.
    let raw = rdata::decompress_record(&rdb, off, len, p).unwrap();
    assert!(rdata::unserialize(&raw, p).is_ok());
    for cut in [1, 5, 20, raw.len() - 1] {
        malformed(rdata::unserialize(&raw[..cut], p), "Rdata.rdb");
    }
    let mut magic = raw.clone();
    magic[0] = b'Y';
    assert!(malformed(rdata::unserialize(&magic, p), "rdb").contains("magic"));
    // A vector length far beyond the bytes: no huge allocation, a typed error.
    let mut x = Xdr::new();
    x.i32(0x10).i32(i32::MAX);
    assert!(malformed(rdata::unserialize(&x.0, p), "rdb").contains("length"));
    let mut x = Xdr::new();
    x.i32(0x10).i32(-1).i32(0x7fff_ffff).i32(-1); // long length
    malformed(rdata::unserialize(&x.0, p), "rdb");
    let mut x = Xdr::new();
    x.i32(0x10).i32(1).i32(0x8009).i32(1_000_000).i32(0);
    malformed(rdata::unserialize(&x.0, p), "rdb");
    // Invalid UTF-8 in a string flagged UTF-8.
    let mut x = Xdr::new();
    x.i32(0x10).i32(1).i32(0x8009).i32(2);
    x.0.extend_from_slice(&[0xff, 0xfe]);
    assert!(malformed(rdata::unserialize(&x.0, p), "rdb").contains("UTF-8"));
    // Unsupported type (a closure) and a dangling reference.
    let mut x = Xdr::new();
    x.i32(3);
    assert!(malformed(rdata::unserialize(&x.0, p), "rdb").contains("unsupported"));
    let mut x = Xdr::new();
    x.i32(0x5ff);
    assert!(malformed(rdata::unserialize(&x.0, p), "rdb").contains("reference"));
    // Deep nesting does not overflow the stack.
    let mut x = Xdr::new();
    for _ in 0..100_000 {
        x.i32(19).i32(1);
    }
    x.i32(254);
    assert!(malformed(rdata::unserialize(&x.0, p), "rdb").contains("nesting"));
    // Index: not gzip/XDR, and an unsupported compression.
    malformed(rdata::parse_index(b"\x1f\x8bnot gzip", Path::new("x.rdx")), "x.rdx");
    malformed(rdata::parse_index(b"garbage", Path::new("x.rdx")), "x.rdx");
    let mut x = Xdr::new();
    x.i32(0x213).i32(3).i32(0x213).i32(0).names(&[], true).i32(0x213).i32(0).names(&[], false);
    x.i32(13).i32(1).i32(3).names(&["variables", "references", "compressed"], false);
    assert!(
        malformed(rdata::parse_index(&x.0, Path::new("x.rdx")), "x.rdx").contains("compression")
    );
}

#[test]
fn rdata_missing_files_are_io_errors() {
    let dir = tmp("rdata-missing");
    let r = rdata::read_character_vectors(&dir.join("Rdata.rdx"), &dir.join("Rdata.rdb"));
    assert!(matches!(r, Err(ModelError::Io { .. })), "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- SWORD zText, synthetic

/// A testament with two blocks; returns (bzs, bzz, bzv).
fn ztext(blocks: &[&[&str]]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (mut bzs, mut bzz, mut bzv) = (Vec::new(), Vec::new(), Vec::new());
    // Slot 0: empty (module heading).
    bzv.extend_from_slice(&[0u8; 10]);
    for (b, verses) in blocks.iter().enumerate() {
        let text: String = verses.concat();
        let c = zlib(text.as_bytes());
        for v in [bzz.len() as u32, c.len() as u32, text.len() as u32] {
            bzs.extend_from_slice(&v.to_le_bytes());
        }
        bzz.extend_from_slice(&c);
        let mut off = 0u32;
        for v in *verses {
            bzv.extend_from_slice(&(b as u32).to_le_bytes());
            bzv.extend_from_slice(&off.to_le_bytes());
            bzv.extend_from_slice(&(v.len() as u16).to_le_bytes());
            off += v.len() as u32;
        }
    }
    (bzs, bzz, bzv)
}

#[test]
fn ztext_round_trip() {
    let v1 = "<w lemma=\"strong:H0430\">In</w> <w>the</w> <w>beginning</w>, <w>God</w><note placement=\"foot\"><reference>1:1 </reference>The Hebrew word is \u{201c}Elohim\u{201d}.</note><w>created</w> <w>the</w> <w>heavens</w> <w>and</w> <w>the</w> <w>earth</w>. ";
    let v2 = "<div sID=\"p1\" type=\"x-p\"/>Tom &amp; Jerry&#x2019;s &lt;tag&gt; &#8220;x&#8221;";
    let v3 = "<title type=\"psalm\">A Psalm.</title>Yahweh <l level=\"1\"/>is<l level=\"2\"/>my shepherd<note>n</note>.";
    let (bzs, bzz, bzv) = ztext(&[&[v1, v2], &[v3]]);
    let raw = sword::decode_ztext(&bzs, &bzz, &bzv, Path::new("mod/ot")).unwrap();
    assert_eq!(raw, vec![v1.to_string(), v2.to_string(), v3.to_string()]);
    let text: Vec<String> = raw.iter().map(|s| sword::osis_to_text(s)).collect();
    assert_eq!(text[0], "In the beginning, God created the heavens and the earth.");
    assert_eq!(text[1], "Tom & Jerry\u{2019}s <tag> \u{201c}x\u{201d}");
    assert_eq!(text[2], "A Psalm. Yahweh is my shepherd.");
    assert_eq!(sword::osis_to_text("a <note>unterminated"), "a");
    assert_eq!(sword::osis_to_text("a &bogus; b <unclosed"), "a &bogus; b");
    assert_eq!(sword::osis_to_text("  \n\t "), "");
}

#[test]
fn ztext_bad_input_gives_typed_errors() {
    let (bzs, bzz, bzv) = ztext(&[&["<w>a</w>", "b"], &["c"]]);
    let base = Path::new("mod/nt");
    let d = malformed(sword::decode_ztext(&bzs[..11], &bzz, &bzv, base), "nt.bzs");
    assert!(d.contains("12-byte"), "{d}");
    malformed(sword::decode_ztext(&bzs, &bzz, &bzv[..15], base), "nt.bzv");
    // Truncated .bzz: the second block runs past the end.
    malformed(sword::decode_ztext(&bzs, &bzz[..bzz.len() - 2], &bzv, base), "nt.bzs");
    // Corrupt zlib.
    let mut bad = bzz.clone();
    for b in &mut bad[2..8] {
        *b ^= 0xa5;
    }
    malformed(sword::decode_ztext(&bzs, &bad, &bzv, base), "nt.bzz");
    // A block record lying about the uncompressed size.
    let mut lying = bzs.clone();
    lying[8..12].copy_from_slice(&1000u32.to_le_bytes());
    assert!(
        malformed(sword::decode_ztext(&lying, &bzz, &bzv, base), "nt.bzz").contains("record says")
    );
    // A slot naming a block that does not exist, or bytes beyond its block.
    let mut v = bzv.clone();
    v[10..14].copy_from_slice(&7u32.to_le_bytes());
    malformed(sword::decode_ztext(&bzs, &bzz, &v, base), "nt.bzv");
    let mut v = bzv.clone();
    v[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
    malformed(sword::decode_ztext(&bzs, &bzz, &v, base), "nt.bzv");
    // Not UTF-8.
    let (bzs2, bzz2, bzv2) = {
        let text = [b'a', 0xff, b'b'];
        let c = zlib(&text);
        let mut s = Vec::new();
        for x in [0u32, c.len() as u32, 3] {
            s.extend_from_slice(&x.to_le_bytes());
        }
        let mut v = vec![0u8; 8];
        v.extend_from_slice(&3u16.to_le_bytes());
        (s, c, v)
    };
    assert!(malformed(sword::decode_ztext(&bzs2, &bzz2, &bzv2, base), "nt.bzz").contains("UTF-8"));
    // A folder without a module.
    let dir = tmp("ztext-empty");
    malformed(sword::read_ztext(&dir), "ztext-empty");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- Lee files, synthetic

#[test]
fn lee_parse_checks_the_matrix() {
    let (cp, sp) = (Path::new("lee.cor"), Path::new("similarities0-1.txt"));
    let docs = b"first doc\nsecond \xa3 doc\nthird doc\n";
    let good = "1\t0.5\t0.25\n0\t1\t0.75\n0\t0\t1\n";
    let lee = Lee::parse(docs, good.as_bytes(), cp, sp).unwrap();
    assert_eq!(lee.docs, vec!["first doc", "second \u{a3} doc", "third doc"]);
    assert_eq!(
        lee.similarity,
        vec![vec![1.0, 0.5, 0.25], vec![0.5, 1.0, 0.75], vec![0.25, 0.75, 1.0]]
    );
    // A full symmetric matrix is accepted too.
    let full = "1 0.5 0.25\n0.5 1 0.75\n0.25 0.75 1\n";
    assert_eq!(Lee::parse(docs, full.as_bytes(), cp, sp).unwrap(), lee);
    for (bad, why) in [
        ("1\t0.5\n0\t1\n", "rows"),
        ("1\t0.5\t0.25\n0\t1\n0\t0\t1\n", "values"),
        ("1\t0.5\t1.5\n0\t1\t0.75\n0\t0\t1\n", "outside"),
        ("1\t0.5\tx\n0\t1\t0.75\n0\t0\t1\n", "not a number"),
        ("1\t0.5\tNaN\n0\t1\t0.75\n0\t0\t1\n", "outside"),
        ("1\t0.5\t0.25\n0.4\t1\t0.75\n0\t0\t1\n", "mirror"),
        ("0.9\t0.5\t0.25\n0\t1\t0.75\n0\t0\t1\n", "diagonal"),
        ("1\t0.5\t0.25\n0\t1\t0.75\n0\t0\t1\n0\t0\t1\n", "rows"),
    ] {
        let d = malformed(Lee::parse(docs, bad.as_bytes(), cp, sp), "similarities0-1.txt");
        assert!(d.contains(why), "{bad:?}: {d}");
    }
    malformed(Lee::parse(b"", good.as_bytes(), cp, sp), "lee.cor");
    malformed(Lee::parse(docs, &[0xff, 0xfe], cp, sp), "similarities0-1.txt");
}
