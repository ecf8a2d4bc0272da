#!/usr/bin/env python3
"""Seed spread of the randomised estimators beside their Python peers (issue 7).

One-seed rows of `bench/approx_peer.py` compare two random draws; this script repeats each case
with seeds 0..N-1 on both sides and prints the errors and their means (relative Frobenius error
of o against the harness's float64 reference, all heads). The peer's module is built under
`torch.manual_seed(s)` (its random features and hash projections are drawn at construction) and
called under the same seed; attn runs the matched spec with `seed=s` (`attn run`, 2 threads).
Same harness, inputs and references as approx_peer.py; non-causal only; no timing.

Usage (from anywhere; the harness directory is found as approx_peer.py finds it):
    ~/.cache/attn-peers/venv/bin/python bench/seed_spread.py --attn target/release/attn \
        [--n 16384] [--seeds 5] [--inputs gauss,minilm] [--peers hyper_attn,scatterbrain,routing_kmeans]
Prints one JSON object per (input, case).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# (peer, setting, attn spec without the seed): the matched specs of approx_peer.py's table.
CASES = [
    ("hyper_attn", "default", "hyper:projections=7,block=256,samples=256,min_seq_len=4096"),
    ("hyper_attn", "matched", "hyper:projections=7,block=128,samples=128,min_seq_len=256"),
    ("scatterbrain", "default", "scatterbrain:sparse=lsh,n_hashes=2,cluster=64,features=64,eps=0.0001"),
    ("scatterbrain", "matched", "scatterbrain:sparse=lsh,n_hashes=1,cluster=128,features=128,eps=0.0001"),
    ("routing_kmeans", "default", "routing:clusters={c64},window=64,local=0,combine=average"),
    ("routing_kmeans", "matched", "routing:clusters={c256},window=256,local=0,combine=average"),
]


def main():
    ap_ = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap_.add_argument("--attn", default=os.path.join(os.path.dirname(HERE), "target", "release", "attn"))
    ap_.add_argument("--n", type=int, default=16384)
    ap_.add_argument("--seeds", type=int, default=5)
    ap_.add_argument("--inputs", default="gauss,minilm")
    ap_.add_argument("--peers", default="hyper_attn,scatterbrain,routing_kmeans")
    args = ap_.parse_args()
    sys.argv = [sys.argv[0]]  # approx_peer parses nothing at import, but keep argv clean
    sys.path.insert(0, HERE)
    import torch
    import approx_peer as ap
    from peers import build  # the harness's adapters (approx_peer put them on sys.path)

    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    n = args.n
    peers = set(args.peers.split(","))
    for inp in args.inputs.split(","):
        q, k, v = ap.harness.load_input(inp, n)
        ref = ap.harness.get_reference(inp, n, "noncausal", "approx", q, k, v)
        with tempfile.TemporaryDirectory() as tmp:
            for peer, setting, spec in CASES:
                if peer not in peers:
                    continue
                spec = spec.format(c64=n // 64, c256=n // 256)
                pe, ae = [], []
                for s in range(args.seeds):
                    torch.manual_seed(s)
                    f = build(peer, setting, n, q.shape[1], q.shape[-1], False)
                    pe.append(round(ap.rel(f(q, k, v), ref), 3))
                    o, _ = ap.run_attn(args.attn, f"{spec},seed={s}", q, k, v, False, 1, 2, tmp)
                    ae.append(round(ap.rel(o, ref), 3))
                print(json.dumps({"input": inp, "n": n, "peer": peer, "setting": setting, "attn_spec": spec,
                                  "peer_errors": pe, "attn_errors": ae,
                                  "peer_mean": round(statistics.mean(pe), 3),
                                  "attn_mean": round(statistics.mean(ae), 3)}), flush=True)


if __name__ == "__main__":
    main()
