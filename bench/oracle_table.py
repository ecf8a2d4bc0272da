#!/usr/bin/env python3
"""Every estimator of issue 7 at ~K scored keys per query on real heads, beside the oracle for
that budget (exact top-K of each row) and the mean-of-V baseline, in one run.

Inputs (real captures, f32):
- `minilm`: all-MiniLM-L6-v2 layer 1, heads 0-7 (head_dim 32), the peer harness's capture
  (../shared/peers/approx, MINILM_QKV), first N tokens; non-causal (as the encoder runs) and causal;
- `smollm2`: a file written by `attn capture --model smollm2 --tokens N --layers ...` (every
  recorded query head with its own K/V, post-RoPE, head_dim 64), causal (as the model runs).

Per input and mode this script computes in float64 with torch, row by row over every head:
the exact output, the oracle (softmax over the K largest visible logits of the row, renormalised),
and the mean of the visible values (uniform attention). The attn methods run through one
`attn --json - bench --qkv FILE --recall` call (each benchmark head takes one recorded head; the
error it reports is the relative Frobenius error of the output to sdpa-flash on the same inputs,
over all heads; keys per query are the method's own `stats.computed_pairs` over the rows;
block-granular methods count whole blocks). Errors are relative Frobenius errors over all heads and rows.

Usage:
    ~/.cache/attn-peers/venv/bin/python bench/oracle_table.py --attn target/release/attn \
        --n 4096 --k 256 --smollm2 /tmp/smol4k.safetensors
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.environ.get("APPROX_PEERS_DIR",
                           os.path.join(os.path.dirname(REPO), "shared", "peers", "approx"))


def specs(n, k):
    """attn method specs that score about k keys per query at length n (the budgets are nominal;
    the table prints each method's measured keys per query next to it)."""
    c = max(1, n // k)
    return [
        # SEA with one key per cell: the cell bound of a single key is its exact logit, so this is
        # the top-(k−1) keys plus the row's own key: the oracle through the library's own path.
        f"sea:k={k},cells={n}",
        f"sea:k={k},cells=256",
        f"sea:k={k},cells=256,estimate=gauss",
        f"sea:k={k},cells=256,sink=1,local=1",
        # SparQ's estimate: per key (one key per cell), each query's 4 / 8 / 16 dimensions of
        # largest |q_t| only, with sink and local keys kept
        f"sea:k={k},cells={n},dims=4,sink=4,local=64",
        f"sea:k={k},cells={n},dims=8,sink=4,local=64",
        f"sea:k={k},cells={n},dims=16,sink=4,local=64",
        f"streaming:sink=4,window={k - 4}",
        f"block-sparse:top_k={max(1, k // 64)},block=64",
        f"vertical-slash:vertical={k // 2},slash={k // 2},sink=4,local=16",
        f"routing:clusters={c},window={k},local=64",
        f"reformer:n_hashes=2,chunk={k // 4}",
        f"hyper:block={k // 2},samples={k // 2},min_seq_len=0",
        f"performer:features={k}",
        f"scatterbrain:window={k // 2},features={k // 2}",
    ]


def minilm_records(n, path):
    sys.path.insert(0, PEERS_DIR)
    import bench as harness  # the peer harness (MINILM_QKV, load_input)
    if not os.path.exists(harness.MINILM):
        return None
    q, k, v = harness.load_input("minilm", n)          # [1, 8, n, 32]
    tensors, meta = {}, {}
    for h in range(q.shape[1]):
        key = f"L{harness.MINILM_LAYER}.H{h}.B0"
        for name, x in (("q", q), ("k", k), ("v", v)):
            tensors[f"{key}.{name}"] = x[0, h].contiguous()
        meta[key] = json.dumps({"scale": 1 / math.sqrt(q.shape[-1])})
    save_file(tensors, path, metadata=meta)
    return path


def read_records(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        keys = sorted({n.rsplit(".", 1)[0] for n in f.keys() if n.endswith(".q")},
                      key=lambda r: tuple(int(p[1:]) for p in r.split(".")))
        recs = []
        for r in keys:
            q, k, v = (f.get_tensor(f"{r}.{x}").double() for x in "qkv")
            scale = json.loads(meta.get(r, "{}")).get("scale") or 1 / math.sqrt(q.shape[-1])
            recs.append((r, q, k, v, scale))
    return recs


def baselines(recs, causal, k, rows=512):
    """Squared errors of the oracle (top-k) and the mean of V, and the squared norm of exact."""
    err_top = err_mean = norm = 0.0
    for _, q, kk, v, scale in recs:
        n = kk.shape[0]
        for r0 in range(0, q.shape[0], rows):
            s = (q[r0:r0 + rows] @ kk.T) * scale
            if causal:
                i = torch.arange(r0, r0 + s.shape[0]).unsqueeze(1)
                s = s.masked_fill(torch.arange(n).unsqueeze(0) > i, float("-inf"))
            exact = torch.softmax(s, -1) @ v
            kth = torch.topk(s, min(k, n), dim=-1).values[:, -1:]
            top = torch.softmax(s.masked_fill(s < kth, float("-inf")), -1) @ v
            vis = torch.isfinite(s).double()
            mean = (vis @ v) / vis.sum(-1, keepdim=True)
            err_top += (top - exact).pow(2).sum().item()
            err_mean += (mean - exact).pow(2).sum().item()
            norm += exact.pow(2).sum().item()
    return math.sqrt(err_top / norm), math.sqrt(err_mean / norm)


def run_attn(attn, path, recs, causal, methods, threads):
    d = recs[0][1].shape[-1]
    n = recs[0][1].shape[0]
    cmd = [attn, "--threads", str(threads), "--json", "-", "bench", "--qkv", path,
           "--shape", f"b1,h{len(recs)},s{n},d{d}", "--recall", "--reps", "1", "--warmup", "0",
           "--method", ",".join(methods)] + (["--causal"] if causal else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}:\n{r.stderr}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", default=os.path.join(REPO, "target/release/attn"))
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--smollm2", help="a capture file of `attn capture --model smollm2`")
    ap.add_argument("--no-minilm", action="store_true", help="skip the MiniLM captures")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    methods = specs(a.n, a.k)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        mini = None if a.no_minilm else minilm_records(a.n, os.path.join(tmp, "minilm.safetensors"))
        if mini:
            inputs += [("minilm L1 h0-7", mini, False), ("minilm L1 h0-7", mini, True)]
        elif not a.no_minilm:
            print("minilm: the harness capture is missing (MINILM_QKV); skipped", file=sys.stderr)
        if a.smollm2:
            inputs.append(("smollm2 " + os.path.basename(a.smollm2), a.smollm2, True))
        for label, path, causal in inputs:
            recs = read_records(path)
            top, mean = baselines(recs, causal, a.k)
            out = run_attn(a.attn, path, recs, causal, methods, a.threads)
            mode = "causal" if causal else "non-causal"
            print(f"\n### {label}, {mode}, n = {recs[0][1].shape[0]}, {len(recs)} heads\n")
            print("| method | keys scored per query | rel. error | × oracle |")
            print("|---|---|---|---|")
            print(f"| oracle: exact top-{a.k} (torch, f64) | {a.k} | {top:.3f} | 1.00 |")
            print(f"| mean of V (uniform) | 0 | {mean:.3f} | {mean / top:.2f} |")
            rows_total = len(recs) * recs[0][1].shape[0]
            for row in out:
                err = row.get("rel_error")
                keys = row["computed_pairs"] / rows_total
                e = f"{err:.3f}" if err is not None else "–"
                x = f"{err / top:.2f}" if err is not None else "–"
                print(f"| `{row['method']}` | {keys:.0f} | {e} | {x} |")
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
