#!/usr/bin/env python3
"""attn's Performer beside performer-pytorch on the same Q/K/V, in one run (issue 7).

Inputs (as /work/shared/peers/approx/README.md §2 `gauss`): q, k ~ N(0, 1.5^2), v ~ N(0, 1),
1 x 8 heads x N x 64, torch.Generator().manual_seed(1234), the first N rows of one 16384-long draw.
Real MiniLM captures are used when MINILM_QKV points at the peers' `minilm_qkv.pt` (layer
MINILM_LAYER, default 1, heads 0-7, head dim 32); otherwise that input is skipped and said so.

Both sides get the same budget: nb_features = m (default: the package default ⌊D ln D⌋, 266 at
D = 64) for performer-pytorch's FastAttention and `performer:features=m` for attn. Error is the
relative Frobenius error of o against exact softmax attention computed in float64 (chunked).

Timing: the peer runs in this process with torch.set_num_threads(THREADS) (one warm-up call, then
the median of REPS calls; no warm-up repeat when one call takes over 20 s); the attn side is
`attn run --threads THREADS` on .npy copies of the same tensors, and the time is the kernel time
that `attn run` prints (file I/O excluded), median of REPS runs. The machine may be shared:
compare the two sides of one run, not across runs.

Usage:
    PYTHONPATH=<site with performer_pytorch> ~/.cache/attn-peers/venv/bin/python bench/approx_peer.py \
        --attn target/release/attn --lengths 1024,4096,16384 --modes noncausal,causal --threads 2
Prints one JSON object per (input, n, mode, side) and a markdown table at the end.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

H, D, NMAX, STD = 8, 64, 16384, 1.5


def gauss(n):
    g = torch.Generator().manual_seed(1234)
    q = torch.randn(1, H, NMAX, D, generator=g) * STD
    k = torch.randn(1, H, NMAX, D, generator=g) * STD
    v = torch.randn(1, H, NMAX, D, generator=g)
    return tuple(x[:, :, :n].contiguous().float() for x in (q, k, v))


def minilm(n):
    path = os.environ.get("MINILM_QKV")
    if not path or not os.path.exists(path):
        return None
    t = torch.load(path)[int(os.environ.get("MINILM_LAYER", "1"))]
    return tuple(t[x][:, :H, :n].contiguous().float() for x in ("q", "k", "v"))


def exact(q, k, v, causal, rows=512):
    q64, k64, v64 = q.double(), k.double(), v.double()
    n, d = q.shape[2], q.shape[3]
    out = torch.empty_like(q64)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        s = (q64[:, :, r0:r1] @ k64.transpose(-1, -2)) * d ** -0.5
        if causal:
            i = torch.arange(r0, r1)[:, None]
            j = torch.arange(k.shape[2])[None, :]
            s.masked_fill_((j > i)[None, None], float("-inf"))
        out[:, :, r0:r1] = torch.softmax(s, dim=-1) @ v64
    return out


def rel(o, ref):
    return ((o.double() - ref).norm() / ref.norm()).item()


def peer(q, k, v, causal, m, reps):
    import warnings
    warnings.filterwarnings("ignore")
    from performer_pytorch import FastAttention
    torch.manual_seed(0)
    fa = FastAttention(dim_heads=q.shape[-1], nb_features=m, causal=causal)
    t0 = time.perf_counter()
    o = fa(q, k, v)
    first = time.perf_counter() - t0
    times = [first]
    if first < 20:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fa(q, k, v)
            times.append(time.perf_counter() - t0)
    return o, statistics.median(times), m or int(q.shape[-1] * np.log(q.shape[-1]))


def ours(attn, q, k, v, causal, m, reps, threads, tmp):
    paths = {}
    for name, x in (("q", q), ("k", k), ("v", v)):
        paths[name] = os.path.join(tmp, f"{name}.npy")
        np.save(paths[name], x.numpy())
    out = os.path.join(tmp, "o.npy")
    spec = "performer" + (f":features={m}" if m else "")
    cmd = [attn, "run", "--method", spec, "--q", paths["q"], "--k", paths["k"], "--v", paths["v"],
           "--out", out, "--threads", str(threads)] + (["--causal"] if causal else [])
    times = []
    for _ in range(reps):
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        times.append(float(re.search(r"([0-9.]+) ms on", r.stderr).group(1)) / 1e3)
    return torch.from_numpy(np.load(out)), statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", default="target/release/attn")
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--modes", default="noncausal,causal")
    ap.add_argument("--inputs", default="gauss,minilm")
    ap.add_argument("--features", type=int, default=0, help="0 = package default ⌊D ln D⌋")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for inp in a.inputs.split(","):
            for n in map(int, a.lengths.split(",")):
                qkv = gauss(n) if inp == "gauss" else minilm(n)
                if qkv is None:
                    print(json.dumps({"input": inp, "status": "skipped: MINILM_QKV not set or missing"}))
                    break
                q, k, v = qkv
                for mode in a.modes.split(","):
                    causal = mode == "causal"
                    ref = exact(q, k, v, causal)
                    load = os.getloadavg()[0]
                    po, pt, m = peer(q, k, v, causal, a.features or None, a.reps)
                    oo, ot = ours(a.attn, q, k, v, causal, a.features, a.reps, a.threads, tmp)
                    row = {"input": inp, "n": n, "mode": mode, "features": m, "threads": a.threads,
                           "peer_err": rel(po, ref), "peer_s": pt, "attn_err": rel(oo, ref),
                           "attn_s": ot, "speedup": pt / ot, "load1_before": load}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print("\n| input | n | mode | m | performer-pytorch err | attn err | performer-pytorch s | attn s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['n']} | {r['mode']} | {r['features']} | {r['peer_err']:.3f} | "
              f"{r['attn_err']:.3f} | {r['peer_s']:.3f} | {r['attn_s']:.3f} | {r['speedup']:.1f}x |")


if __name__ == "__main__":
    sys.exit(main())
