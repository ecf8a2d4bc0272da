#!/usr/bin/env python3
"""attn's approximate methods beside their Python peers on the same Q/K/V, in one run (issue 7).

The peers are run through the adapters of the workplace's peer harness (`peers.py` and
`bench.py` in APPROX_PEERS_DIR, default ../shared/peers/approx next to the repository): the same
constructor arguments, the same inputs, the same float64 references and the same error measure
(relative Frobenius error of o over all heads and rows). Each peer setting is mapped to the attn
method spec with the same budget:

| peer (setting)                  | attn spec                                                      |
|---------------------------------|----------------------------------------------------------------|
| performer (nb_features m)       | performer:features=m (m = ⌊D ln D⌋ when the peer's is None), and |
|                                 | performer:features=m,eps=ε with the peer's kernel ε (1e-4)      |
| reformer_lsh (bucket c, R hashes)| reformer:chunk=c,n_hashes=R  (K := Q: shared-QK, keys normalised by both) |
| hyper_attn (r, block, samples, min_seq_len) | hyper:projections=r,block=..,samples=..,min_seq_len=.. |
| routing_kmeans (window w)       | routing:clusters=n/w,window=w,local=1 (routed heads only), and  |
|                                 | routing:clusters=n/w,window=w,local=0,combine=average (the      |
|                                 | peer's scatter-back: per-cluster outputs averaged, 0 when none)  |
| scatterbrain (SBSmyrf: R, c, m) | scatterbrain:sparse=lsh,n_hashes=R,cluster=c,features=m, and    |
|                                 | the same with eps=1e-4 (the harness's softmax_eps)              |
| scatterbrain_local (w, m)       | scatterbrain:window=w,features=m                               |
| smyrf (R, c)                    | scatterbrain:sparse=lsh,n_hashes=R,cluster=c,low_rank=false     |

(fly's Scatterbrain peers run with softmax_eps=1e-4 in the harness; attn's low-rank part has
eps=0 by default (spec §4.2: unbiased, for approximation studies), and with scatterbrain:eps=ε
performer-pytorch's additive feature ε, so the LSH rows are given at both.)

Inputs: `gauss` (q, k ~ N(0, 1.5²), v ~ N(0, 1), 1 × 8 × n × 64, seed 1234, prefixes of one
16384-long draw) and `minilm` (real all-MiniLM-L6-v2 captures, head_dim 32) when the harness's
MINILM_QKV file exists; see the harness README §2.

Timing: the peer runs in this process with torch.set_num_threads(THREADS), grad off; one call
gives the output (seeded with torch.manual_seed(0)) and is repeated REPS times when it took under
20 s (median of the repeats), so its timed calls are warm. The attn side is `attn run --threads
THREADS --warmup 1` on .npy copies of the same tensors; its time is the kernel time `attn run`
prints (file I/O excluded) for the call after one untimed call (a process's first call also pays
for fresh memory and faer's per-thread buffers), median of REPS runs. Construction of a peer's
module (random projections) is outside its timing; routing's k-means on the input is inside it
(that is how the package works untrained), as is ours.
The machine may be shared: compare the two sides of one row, not rows of different runs.

Usage:
    ~/.cache/attn-peers/venv/bin/python bench/approx_peer.py --attn target/release/attn \
        --peers performer,reformer_lsh,hyper_attn --settings default,matched \
        --lengths 4096,16384 --modes noncausal,causal --threads 2
Prints one JSON object per row and a markdown table at the end.
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.environ.get("APPROX_PEERS_DIR",
                           os.path.join(os.path.dirname(REPO), "shared", "peers", "approx"))
sys.path.insert(0, PEERS_DIR)
try:
    import bench as harness  # noqa: E402  (the peer harness, not this file)
    from peers import PEERS, build  # noqa: E402
except ImportError as e:
    sys.exit(f"approx_peer.py: the peer harness is not at {PEERS_DIR} ({e}); set APPROX_PEERS_DIR")


def performer_eps():
    """The ε performer-pytorch adds to every feature (`softmax_kernel`'s default `eps`)."""
    import inspect
    from performer_pytorch.performer_pytorch import softmax_kernel
    return inspect.signature(softmax_kernel).parameters["eps"].default


# The softmax_eps the harness gives fly's Scatterbrain peers (peers.py).
SCATTERBRAIN_EPS = 1e-4


def attn_specs(peer, setting, n, d):
    """The attn method specs with the peer setting's budget (empty when attn has none)."""
    spec = attn_spec(peer, setting, n, d)
    if spec is None:
        return []
    if peer == "performer":
        # FAVOR+ as the spec has it (ε = 0), and the peer's algorithm (its ε).
        return [spec, f"{spec},eps={performer_eps()}"]
    if peer == "scatterbrain":
        # Unbiased (ε = 0), and at the harness's softmax_eps for fly's SBSmyrf.
        return [spec, f"{spec},eps={SCATTERBRAIN_EPS}"]
    if peer == "routing_kmeans":
        # attn's union softmax (a stranded query joins its nearest cluster), and the peer's
        # algorithm: no diagonal, the average of the per-cluster outputs, 0 for a stranded query.
        return [spec, spec.replace(",local=1", ",local=0") + ",combine=average"]
    return [spec]


def attn_spec(peer, setting, n, d):
    """The attn method spec with the peer setting's budget, or None when attn has no counterpart."""
    s = PEERS[peer]["settings"][setting]
    if peer == "performer":
        m = s["nb_features"] or int(d * math.log(d))
        return f"performer:features={m}"
    if peer == "reformer_lsh":
        return f"reformer:chunk={s['bucket_size']},n_hashes={s['n_hashes']}"
    if peer == "hyper_attn":
        return (f"hyper:projections={s['lsh_num_projs']},block={s['block_size']},"
                f"samples={s['sample_size']},min_seq_len={s['min_seq_len']}")
    if peer == "scatterbrain":
        return (f"scatterbrain:sparse=lsh,n_hashes={s['n_hashes']},cluster={s['cluster']},"
                f"features={s['nb_features']}")
    if peer == "scatterbrain_local":
        return f"scatterbrain:window={s['local_context']},features={s['nb_features']}"
    if peer == "smyrf":
        return f"scatterbrain:sparse=lsh,n_hashes={s['n_hashes']},cluster={s['cluster']},low_rank=false"
    if peer == "routing_kmeans":
        w = s["window_size"]
        # The peer's routed heads alone: no local window beyond the diagonal (local=1).
        return f"routing:clusters={max(1, n // w)},window={w},local=1"
    return None


def time_peer(f, q, k, v, reps):
    torch.manual_seed(0)
    t0 = time.perf_counter()
    o = f(q, k, v)
    times = [time.perf_counter() - t0]
    if times[0] < 20:
        times = []
        for _ in range(reps):
            torch.manual_seed(0)
            t0 = time.perf_counter()
            f(q, k, v)
            times.append(time.perf_counter() - t0)
    return o, statistics.median(times)


def run_attn(attn, spec, q, k, v, causal, reps, threads, tmp):
    paths = {}
    for name, x in (("q", q), ("k", k), ("v", v)):
        paths[name] = os.path.join(tmp, f"{name}.npy")
        np.save(paths[name], x.numpy())
    out = os.path.join(tmp, "o.npy")
    # One untimed call first (--warmup 1), as the peer's first call is untimed (time_peer).
    cmd = [attn, "run", "--method", spec, "--q", paths["q"], "--k", paths["k"], "--v", paths["v"],
           "--out", out, "--threads", str(threads), "--warmup", "1"] + (["--causal"] if causal else [])
    times = []
    for _ in range(reps):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        times.append(float(re.search(r"([0-9.]+) ms on", r.stderr).group(1)) / 1e3)
    return torch.from_numpy(np.load(out)), statistics.median(times)


def rel(o, ref):
    return ((o.double() - ref).norm() / ref.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", default=os.path.join(REPO, "target/release/attn"))
    ap.add_argument("--peers", default="performer,reformer_lsh,hyper_attn,routing_kmeans")
    ap.add_argument("--settings", default="default,matched")
    ap.add_argument("--lengths", default="4096,16384")
    ap.add_argument("--modes", default="noncausal,causal")
    ap.add_argument("--inputs", default="gauss,minilm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for inp in a.inputs.split(","):
            if inp == "minilm" and not os.path.exists(harness.MINILM):
                print(json.dumps({"input": inp, "status": f"skipped: {harness.MINILM} missing"}))
                continue
            for n in map(int, a.lengths.split(",")):
                q, k, v = harness.load_input(inp, n)
                d = q.shape[-1]
                for mode in a.modes.split(","):
                    causal = mode == "causal"
                    for peer in a.peers.split(","):
                        info = PEERS[peer]
                        if mode not in info["modes"]:
                            continue
                        kind = info["kind"]
                        ref = harness.get_reference(inp, n, mode, kind, q, k, v)
                        # Shared-QK peers get K := Q on both sides (attn normalises keys itself).
                        kk = q if kind == "sharedqk" else k
                        for setting in a.settings.split(","):
                            if setting not in info["settings"]:
                                continue
                            specs = attn_specs(peer, setting, n, d)
                            base = {"input": inp, "n": n, "mode": mode, "peer": peer,
                                    "setting": setting, "threads": a.threads,
                                    "load1_before": os.getloadavg()[0]}
                            try:
                                f = build(peer, setting, n, q.shape[1], d, causal)
                                po, pt = time_peer(f, q, kk, v, a.reps)
                                base.update(peer_err=rel(po, ref), peer_s=pt)
                            except Exception as e:  # a peer that cannot run here is reported
                                base.update(peer_status=f"failed: {type(e).__name__}: {e}"[:300])
                            # One row per attn spec beside the same peer run.
                            for spec in specs or [None]:
                                row = dict(base, attn_spec=spec)
                                if spec is not None:
                                    try:
                                        oo, ot = run_attn(a.attn, spec, q, kk, v, causal, a.reps,
                                                          a.threads, tmp)
                                        row.update(attn_err=rel(oo, ref), attn_s=ot)
                                    except Exception as e:
                                        row.update(attn_status=f"failed: {e}"[:300])
                                if "peer_s" in row and "attn_s" in row:
                                    row["speedup"] = row["peer_s"] / row["attn_s"]
                                print(json.dumps(row), flush=True)
                                rows.append(row)
    print("\n| input | n | mode | peer (setting) | attn spec | peer err | attn err | peer s | attn s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda r, key, f: f.format(r[key]) if key in r else "—"
    for r in rows:
        print(f"| {r['input']} | {r['n']} | {r['mode']} | {r['peer']} ({r['setting']}) | "
              f"`{r['attn_spec']}` | {fmt(r, 'peer_err', '{:.3f}')} | {fmt(r, 'attn_err', '{:.3f}')} | "
              f"{fmt(r, 'peer_s', '{:.3f}')} | {fmt(r, 'attn_s', '{:.3f}')} | {fmt(r, 'speedup', '{:.1f}x')} |")


if __name__ == "__main__":
    sys.exit(main())
