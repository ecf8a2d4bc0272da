#!/usr/bin/env python3
"""Turns a bench/peers.py JSON file into the markdown tables of BENCHMARKS.md.

    python3 bench/tables.py bench-results/run.json
"""
import json
import math
import sys


def main(*paths):
    r = json.load(open(paths[0]))
    for extra in paths[1:]:  # later runs (e.g. --no-grid) add or replace sections
        e = json.load(open(extra))
        for key in ("decode", "memory", "check"):
            if key in e:
                r[key] = e[key]
    print(f"Run {r['date_utc']} UTC · {r['cpu']} · {r['nproc']} CPUs · torch {r['torch']} · numpy {r['numpy']}\n")
    sg = r["sgemm"]
    ts = sorted(sg, key=int)
    print("| ceiling | " + " | ".join(f"{t} thread(s)" for t in ts) + " |\n|---|" + "---|" * len(ts))
    print("| SGEMM 4096³ (numpy/OpenBLAS), GFLOP/s median (best) | "
          + " | ".join(f"{sg[t]['gflops_median']:.1f} ({sg[t]['gflops_best']:.1f})" for t in ts) + " |")
    print(f"| copy bandwidth (1 thread), GB/s median (best) | {r['copy']['gbps_median']:.2f} ({r['copy']['gbps_best']:.2f}) |"
          + " |" * (len(ts) - 1) + "\n")
    for t in sorted({c["threads"] for c in r["cases"]}):
        rows = [c for c in r["cases"] if c["threads"] == t]
        print(f"**{t} thread{'s' if t > 1 else ''}** — GFLOP/s from the median time (best in brackets); "
              f"FLOPs 4·B·H·S²·D, halved for causal\n")
        print("| S | D | causal | PyTorch SDPA | attn | attn / PyTorch (median) | (best) | attn / SGEMM |")
        print("|---|---|---|---|---|---|---|---|")
        ratios, bests = [], []
        for c in rows:
            s, d = c["shape"][3], c["shape"][5]
            ratio = c["speedup_median"]
            best = c["torch"]["best_s"] / c["attn"]["best_s"]
            ratios.append(ratio)
            bests.append(best)
            frac = c["gflops_attn"] / r["sgemm"][str(t)]["gflops_median"]
            print(f"| {s} | {d} | {'yes' if c['causal'] else 'no'} | {c['gflops_torch']:.1f} ({c['gflops_torch_best']:.1f}) | "
                  f"{c['gflops_attn']:.1f} ({c['gflops_attn_best']:.1f}) | {ratio:.2f}× | {best:.2f}× | {frac:.0%} |")
        gm = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))
        print(f"\nGeometric mean of attn/PyTorch: **{gm(ratios):.2f}×** on medians (slowest shape {min(ratios):.2f}×), "
              f"**{gm(bests):.2f}×** on best times (slowest {min(bests):.2f}×).\n")
        saves = []
        for c in rows:
            if c["causal"]:
                nc = [x for x in rows if x["shape"] == c["shape"] and not x["causal"]]
                if nc:
                    saves.append((c["shape"][3], c["shape"][5], 1 - c["attn"]["median_s"] / nc[0]["attn"]["median_s"],
                                  1 - c["torch"]["median_s"] / nc[0]["torch"]["median_s"]))
        if saves:
            print("Causal saving of time (1 − causal/non-causal): " + "; ".join(
                f"S={s} D={d}: attn {a:.0%}, PyTorch {p:.0%}" for s, d, a, p in saves) + "\n")
    for dec in r.get("decode", []):
        print(f"Decode (S_q=1, S_kv=32768, H/H_kv=8/2, D=128), {dec['threads']} thread(s): attn {dec['attn']['median_s']*1e3:.2f} ms "
              f"(best {dec['attn']['best_s']*1e3:.2f}), PyTorch {dec['torch']['median_s']*1e3:.2f} ms; K+V {dec['kv_bytes']/2**20:.0f} MiB ÷ "
              f"copy bandwidth = {dec['bandwidth_bound_s']*1e3:.2f} ms → attn at **{dec['attn_over_bound']:.2f}×** the bound.\n")
    if "memory" in r:
        m = r["memory"]
        print(f"Memory (S=65536, D=128, H=8, causal, 2 threads): peak RSS above the inputs "
              f"{(m.get('peak_extra_bytes') or 0)/2**20:.0f} MiB; one call {m['median_s']:.1f} s.\n")
    if "check" in r:
        print("| check shape [B,H,H_kv,S_q,S_kv,D] | causal | attn vs torch f64 | torch f32 vs torch f64 | attn vs torch f32 |")
        print("|---|---|---|---|---|")
        for c in r["check"]:
            print(f"| {c['shape']} | {c['causal']} | {c['rel_fro_attn_vs_torch_f64']:.1e} | {c['rel_fro_torch_f32_vs_torch_f64']:.1e} | "
                  f"{c['rel_fro_attn_vs_torch_f32']:.1e} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
