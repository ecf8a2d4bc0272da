#!/usr/bin/env python3
"""attn beside PyTorch's scaled_dot_product_attention, in one run, on this machine.

For every shape of the grid and every thread count it times PyTorch SDPA and `attn bench` back to
back (so both see the same machine load), and it measures in the same run the two ceilings the
numbers are judged against: numpy/OpenBLAS SGEMM GFLOP/s and memory copy bandwidth. With --check it
also runs `attn run` on inputs written by PyTorch and reports the relative Frobenius error of the
output against PyTorch's, causal and not, GQA included.

Usage (see BENCHMARKS.md):
    python3 -m venv $PEERS/venv && $PEERS/venv/bin/pip install torch numpy threadpoolctl
    cargo build --release -p attn-cli
    $PEERS/venv/bin/python bench/peers.py --out bench-results/run.json [--quick] [--check]

FLOPs are 4*B*H*S_q*S_kv*D, halved for causal, for both implementations. Times are the median and
best of repetitions after one warm-up call (at least 3 repetitions, up to ~--min-time seconds).

The host drifts (the same binary moves by up to 2x from minute to minute), so with --rounds N
(default 3) every grid shape is measured in N alternating rounds, PyTorch then attn in odd rounds
and attn then PyTorch in even ones, each round spending --min-time / N seconds per side; a side's
median is the median of its round medians and its best the best of all rounds. A slow minute then
hits both sides instead of one.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from rounds import combine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTN = os.path.join(ROOT, "target", "release", "attn")


def timed(fn, min_time, warm=True, min_reps=3):
    if warm:
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < 100):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], times[0]


def torch_case(shape, causal, threads, min_time, warm=True, min_reps=3):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    b, h, hkv, sq, skv, d = shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, sq, d, generator=g)
    k = torch.randn(b, hkv, skv, d, generator=g)
    v = torch.randn(b, hkv, skv, d, generator=g)
    kw = {"is_causal": causal}
    if hkv != h:
        kw["enable_gqa"] = True
    med, best = timed(lambda: F.scaled_dot_product_attention(q, k, v, **kw), min_time, warm, min_reps)
    return {"median_s": med, "best_s": best}


def attn_case(shape, causal, threads, min_time, method=None, extra=()):
    b, h, hkv, sq, skv, d = shape
    spec = f"b{b},h{h},hkv{hkv},sq{sq},skv{skv},d{d}"
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    timing = ["--min-time", str(min_time)] if "--reps" not in extra else []
    cmd = [ATTN, "bench", "--shape", spec, "--threads", str(threads), *timing, "--json", out]
    if causal:
        cmd.append("--causal")
    if method:
        cmd += ["--method", method]
    cmd += list(extra)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = json.load(open(out))
    os.unlink(out)
    rows = rows if isinstance(rows, list) else rows.get("results", [rows])
    r = rows[0]
    return {"median_s": r["median_s"], "best_s": r["best_s"], "method": r["method"],
            "peak_extra_bytes": r.get("peak_extra_bytes")}


def interleaved(shape, causal, threads, min_time, rounds):
    """PyTorch and attn on one shape in `rounds` alternating rounds (ABBA order). The first round
    warms up and makes at least 3 calls per side; later rounds make as many calls as fill
    min_time / rounds (at least one), without a warm-up, so the rounds cost about what one
    min_time measurement did."""
    per = min_time / rounds
    ts, as_ = [], []
    for i in range(rounds):
        if i == 0:
            t = lambda: torch_case(shape, causal, threads, per)
            a = lambda: attn_case(shape, causal, threads, per)
        else:
            reps = max(1, round(per / max(as_[0]["median_s"], 1e-9)))
            t = lambda: torch_case(shape, causal, threads, per, warm=False, min_reps=1)
            a = lambda: attn_case(shape, causal, threads, per, extra=("--warmup", "0", "--reps", str(reps)))
        if i % 2 == 0:
            ts.append(t())
            as_.append(a())
        else:
            as_.append(a())
            ts.append(t())

    return combine(ts), combine(as_)


def sgemm(threads, n=4096, min_time=2.0):
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    bm = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads):
        med, best = timed(lambda: np.matmul(a, bm, out=c), min_time)
    fl = 2.0 * n ** 3
    return {"n": n, "gflops_median": fl / med / 1e9, "gflops_best": fl / best / 1e9}


def copy_bandwidth(mib=256):
    a = np.ones(mib * 1024 * 1024 // 4, dtype=np.float32)
    b = np.empty_like(a)
    med, best = timed(lambda: np.copyto(b, a), 1.0)
    return {"bytes": a.nbytes, "gbps_median": a.nbytes / med / 1e9, "gbps_best": a.nbytes / best / 1e9}


def check(min_err=1e-5):
    """attn run vs torch SDPA on torch-written inputs: relative Frobenius error."""
    import torch
    import torch.nn.functional as F

    out = []
    tmp = tempfile.mkdtemp()
    for (b, h, hkv, sq, skv, d, causal) in [(1, 8, 8, 300, 300, 64, False), (1, 8, 8, 300, 300, 64, True),
                                            (2, 8, 2, 257, 513, 128, True), (1, 8, 2, 1, 4096, 128, False),
                                            (1, 4, 1, 100, 1000, 80, False)]:
        g = torch.Generator().manual_seed(1)
        q = torch.randn(b, h, sq, d, generator=g)
        k = torch.randn(b, hkv, skv, d, generator=g)
        v = torch.randn(b, hkv, skv, d, generator=g)
        kw = {"enable_gqa": True} if hkv != h else {}
        flag = causal
        if causal and sq != skv:
            # torch aligns is_causal top-left; attn (like flash-attn) aligns bottom-right: pass the
            # explicit mask so both compute the same thing.
            pos = torch.arange(sq)[:, None] + (skv - sq)
            kw["attn_mask"] = torch.arange(skv)[None, :] <= pos
            flag = False
        want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=flag, **kw)
        ref32 = F.scaled_dot_product_attention(q, k, v, is_causal=flag, **kw)
        paths = {}
        for name, t in (("q", q), ("k", k), ("v", v)):
            paths[name] = os.path.join(tmp, name + ".npy")
            np.save(paths[name], t.numpy())
        o_path = os.path.join(tmp, "o.npy")
        cmd = [ATTN, "run", "--q", paths["q"], "--k", paths["k"], "--v", paths["v"], "--out", o_path]
        if causal:
            cmd.append("--causal")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        got = torch.from_numpy(np.load(o_path)).double()
        rel = lambda a: float(torch.linalg.norm(a - want) / torch.linalg.norm(want))
        out.append({"shape": [b, h, hkv, sq, skv, d], "causal": causal, "rel_fro_attn_vs_torch_f64": rel(got),
                    "rel_fro_torch_f32_vs_torch_f64": rel(ref32.double()),
                    "rel_fro_attn_vs_torch_f32": float(torch.linalg.norm(got - ref32.double()) / torch.linalg.norm(ref32.double()))})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="JSON file for every measurement")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="S in {1024} only")
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3, help="alternating peer/attn rounds per grid shape")
    ap.add_argument("--check", action="store_true", help="also compare attn run with torch on the same inputs")
    ap.add_argument("--no-grid", action="store_true", help="skip the main grid")
    ap.add_argument("--memory", action="store_true", help="also S=65536, D=128, H=8 causal, 2 threads, one rep")
    args = ap.parse_args()
    import torch

    res = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "machine": platform.processor() or platform.machine(),
           "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].split(":", 1)[1].strip() if os.path.exists("/proc/cpuinfo") else "",
           "nproc": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__, "cases": []}
    threads = [int(t) for t in args.threads.split(",")]

    def save():
        # Written after every case, so an interrupted run keeps what it measured.
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)

    res["sgemm"] = {t: sgemm(t) for t in threads}
    res["copy"] = copy_bandwidth()
    print(f"sgemm {res['sgemm']}  copy {res['copy']}", file=sys.stderr)
    ss = [1024] if args.quick else [1024, 4096, 16384]
    grid = [] if args.no_grid else [((1, 8, 8, s, s, d), c) for s in ss for d in (64, 128) for c in (False, True)]
    for t in threads:
        for shape, causal in grid:
            b, h, hkv, sq, skv, d = shape
            fl = 4.0 * b * h * sq * skv * d * (0.5 if causal else 1.0)
            tr, ar = interleaved(shape, causal, t, args.min_time, max(1, args.rounds))
            row = {"shape": shape, "causal": causal, "threads": t, "torch": tr, "attn": ar,
                   "gflops_torch": fl / tr["median_s"] / 1e9, "gflops_attn": fl / ar["median_s"] / 1e9,
                   "gflops_torch_best": fl / tr["best_s"] / 1e9, "gflops_attn_best": fl / ar["best_s"] / 1e9}
            row["speedup_median"] = tr["median_s"] / ar["median_s"]
            res["cases"].append(row)
            save()
            print(f"t={t} S={sq} D={d} causal={causal}: torch {row['gflops_torch']:.1f} attn {row['gflops_attn']:.1f} GFLOP/s  x{row['speedup_median']:.2f}", file=sys.stderr)
    # decode: S_q = 1 over 32768 keys, 8/2 heads, D = 128, against the copy bandwidth
    dec = (1, 8, 2, 1, 32768, 128)
    res["decode"] = []
    for t in threads:
        ar = attn_case(dec, False, t, args.min_time, method="sdpa-decode")
        tr = torch_case(dec, False, t, args.min_time)
        kv_bytes = 2 * 2 * 32768 * 128 * 4
        bound = kv_bytes / (res["copy"]["gbps_median"] * 1e9)
        res["decode"].append({"threads": t, "attn": ar, "torch": tr, "kv_bytes": kv_bytes, "bandwidth_bound_s": bound,
                              "attn_over_bound": ar["median_s"] / bound})
        print(f"decode t={t}: attn {ar['median_s']*1e3:.2f} ms torch {tr['median_s']*1e3:.2f} ms bound {bound*1e3:.2f} ms", file=sys.stderr)
    if args.memory:
        ar = attn_case((1, 8, 8, 65536, 65536, 128), True, 2, 0.0, extra=("--warmup", "0", "--reps", "1"))
        res["memory"] = ar
        print(f"memory S=65536: {ar}", file=sys.stderr)
        save()
    if args.check:
        res["check"] = check()
        for c in res["check"]:
            print("check", c, file=sys.stderr)
    save()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
