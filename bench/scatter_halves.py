#!/usr/bin/env python3
"""Scatterbrain beside its halves on real captured heads, at matched budgets, in one run (issue 7).

For every budget (R hash rounds, cluster c, m features) this runs, through one
`attn --json - bench --qkv FILE --recall` call per input (the error each row reports is the
relative Frobenius error of the output to exact attention over all heads and rows):

| row                 | attn spec                                                    |
|---------------------|--------------------------------------------------------------|
| scatterbrain (LSH)  | scatterbrain:sparse=lsh,n_hashes=R,cluster=c,features=m       |
| sparse half (SMYRF) | scatterbrain:sparse=lsh,n_hashes=R,cluster=c,low_rank=false   |
| performer alone     | performer:features=m                                         |
| reformer alone      | reformer:n_hashes=R,chunk=c/2                                |
| scatterbrain local  | scatterbrain:window=R·c,features=m                           |
| local half          | scatterbrain:window=R·c,low_rank=false                       |

Budget rule: the same number of scored key slots per query, R·c (SMYRF: R clusters of c keys;
Reformer: R rounds of its chunk and the previous chunk, 2·(c/2) keys; local: a window of R·c), and
the same m random features for every low-rank part. The printed "keys" column is each method's own
`computed_pairs` per query row (SMYRF pairs found in several rounds count once; Reformer counts them
again per round; low-rank rows add (S_q + S_kv)·m / S_q for the featurisation).
ratio = min(halves) / scatterbrain, with halves = {performer, reformer} (the issue's wording) and
{performer, sparse half} (the halves Scatterbrain actually combines).

Inputs: `minilm` (the peer harness capture, all-MiniLM-L6-v2 layer 1 heads 0-7, head_dim 32,
first N tokens; non-causal, as the encoder runs, and causal) and `smollm2` (a file of
`attn capture --model smollm2`, every query head with its own K/V, post-RoPE; causal).

Usage:
    ~/.cache/attn-peers/venv/bin/python bench/scatter_halves.py --attn target/release/attn \
        --n 4096 --smollm2 /tmp/smol4k.safetensors
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_table as ot  # noqa: E402  (minilm_records, read_records, run_attn)

BUDGETS = [(2, 32, 32), (2, 64, 64), (1, 128, 128), (2, 128, 128), (4, 64, 128)]


def rows_for(r, c, m):
    return [
        ("scatterbrain (LSH)", f"scatterbrain:sparse=lsh,n_hashes={r},cluster={c},features={m}"),
        ("sparse half (SMYRF)", f"scatterbrain:sparse=lsh,n_hashes={r},cluster={c},low_rank=false"),
        ("performer alone", f"performer:features={m}"),
        ("reformer alone", f"reformer:n_hashes={r},chunk={max(1, c // 2)}"),
        ("scatterbrain local", f"scatterbrain:window={r * c},features={m}"),
        ("local half", f"scatterbrain:window={r * c},low_rank=false"),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", default=os.path.join(ot.REPO, "target/release/attn"))
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--smollm2", help="a capture file of `attn capture --model smollm2`")
    ap.add_argument("--budgets", default=";".join(f"{r},{c},{m}" for r, c, m in BUDGETS),
                    help="R,c,m;R,c,m;...")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    budgets = [tuple(map(int, b.split(","))) for b in a.budgets.split(";")]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        mini = ot.minilm_records(a.n, os.path.join(tmp, "minilm.safetensors"))
        if mini:
            inputs += [("minilm L1 h0-7", mini, False), ("minilm L1 h0-7", mini, True)]
        else:
            print("minilm: the harness capture is missing (MINILM_QKV); skipped", file=sys.stderr)
        if a.smollm2:
            inputs.append(("smollm2 " + os.path.basename(a.smollm2), a.smollm2, True))
        for label, path, causal in inputs:
            recs = ot.read_records(path)
            n = recs[0][1].shape[0]
            rows_total = len(recs) * n
            methods = list(dict.fromkeys(spec for b in budgets for _, spec in rows_for(*b)))
            out = ot.run_attn(a.attn, path, recs, causal, methods, a.threads)
            if len(out) != len(methods):
                raise RuntimeError(f"{len(methods)} methods but {len(out)} rows from attn bench")
            # attn prints the full spec; rows come back in the order asked.
            by_spec = dict(zip(methods, out))
            mode = "causal" if causal else "non-causal"
            print(f"\n### {label}, {mode}, n = {n}, {len(recs)} heads\n")
            print("| budget R·c, m | " + " | ".join(name for name, _ in rows_for(*budgets[0]))
                  + " | min(perf, ref)/sb | min(perf, smyrf)/sb |")
            print("|---|" + "---|" * (len(rows_for(*budgets[0])) + 2))
            for r, c, m in budgets:
                cells, err = [], {}
                for name, spec in rows_for(r, c, m):
                    row = by_spec[spec]
                    e = row.get("rel_error")
                    err[name] = e
                    keys = row["computed_pairs"] / rows_total
                    cells.append(f"{e:.3f} ({keys:.0f})" if e is not None else "–")
                sb = err["scatterbrain (LSH)"]
                r1 = min(err["performer alone"], err["reformer alone"]) / sb
                r2 = min(err["performer alone"], err["sparse half (SMYRF)"]) / sb
                print(f"| R={r}, c={c}: {r * c}, m={m} | " + " | ".join(cells)
                      + f" | {r1:.2f}× | {r2:.2f}× |")
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
