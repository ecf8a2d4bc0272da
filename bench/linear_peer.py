#!/usr/bin/env python3
"""Cross-check of attn's delta-rule methods against fla's naive PyTorch references (issue 6).

fla (flash-linear-attention) needs triton to import as a package, so its pure-PyTorch reference
files are loaded by path: fla/ops/gated_delta_rule/naive.py and fla/ops/kda/naive.py from an
unpacked fla-core wheel (`pip download fla-core --no-deps`, then unzip). Needs torch, einops.

Inputs: random q, k, v in the fla layout [B, T, H, D] (float32); attn runs them through
`attn run --layout bshd --causal` with its three forms (chunked, recurrent, reference), with the
constant gates the registry takes (gated-deltanet: decay α, β; kda: channel gates log-spaced from
decay_min to decay_max, β). attn L2-normalises q and k inside (fla's use_qk_l2norm_in_kernel=True),
so the script hands fla the normalised q, k. Prints the relative Frobenius error of every attn
form to fla's naive recurrent output (and fla's naive chunked one for gated-deltanet).

Usage: python bench/linear_peer.py --fla /path/to/unpacked/fla-core --attn target/release/attn
"""
import argparse
import importlib.util
import math
import os
import subprocess
import tempfile

import numpy as np
import torch


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fla", required=True, help="directory holding fla/ops/... (unpacked fla-core wheel)")
    ap.add_argument("--attn", default="target/release/attn")
    ap.add_argument("--lengths", default="1,63,64,65,1000,4096")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    gdn = load(os.path.join(args.fla, "fla/ops/gated_delta_rule/naive.py"), "fla_gdn_naive")
    kda = load(os.path.join(args.fla, "fla/ops/kda/naive.py"), "fla_kda_naive")
    torch.set_num_threads(2)
    h, d = args.heads, args.dim
    alpha, beta = 0.95, 0.6
    dmin, dmax = 0.8, 0.999
    print(f"H = {h}, D = D_v = {d}, B = 1, float32; gated-deltanet α = {alpha}, β = {beta}; "
          f"kda α log-spaced {dmin}..{dmax}, β = {beta}")
    print(f"{'T':>6} {'method':<26} {'vs fla naive recurrent':>24} {'vs fla naive chunk':>20}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for t in [int(x) for x in args.lengths.split(",")]:
            rng = np.random.default_rng(t)
            q, k, v = (rng.standard_normal((1, t, h, d)).astype(np.float32) for _ in range(3))
            for name, arr in (("q", q), ("k", k), ("v", v)):
                np.save(os.path.join(tmp, f"{name}.npy"), arr)
            qn = torch.from_numpy(q) / torch.from_numpy(q).norm(dim=-1, keepdim=True)
            kn = torch.from_numpy(k) / torch.from_numpy(k).norm(dim=-1, keepdim=True)
            vt = torch.from_numpy(v)
            b_t = torch.full((1, t, h), beta)
            with torch.no_grad():
                g = torch.full((1, t, h), math.log(alpha))
                want, _ = gdn.naive_recurrent_gated_delta_rule(qn, kn, vt, b_t, g)
                want = want.numpy()
                chunk = None
                if hasattr(gdn, "naive_chunk_gated_delta_rule"):
                    chunk, _ = gdn.naive_chunk_gated_delta_rule(qn, kn, vt, g, b_t, chunk_size=64)
                    chunk = chunk.numpy()
                lg = np.log(np.geomspace(dmin, dmax, d)) if d > 1 else np.log([dmax])
                gk = torch.from_numpy(np.broadcast_to(lg, (1, t, h, d)).astype(np.float32).copy())
                want_k, _ = kda.naive_recurrent_kda(qn, kn, vt, gk, b_t)
                want_k = want_k.numpy()
            cases = [
                (f"gated-deltanet{s}:decay={alpha},beta={beta}", want, chunk)
                for s in ("", "-recurrent", "-reference")
            ] + [
                (f"kda{s}:decay_min={dmin},decay_max={dmax},beta={beta}", want_k, None)
                for s in ("", "-recurrent", "-reference")
            ]
            for spec, ref, ref_chunk in cases:
                out = os.path.join(tmp, "o.npy")
                subprocess.run(
                    [args.attn, "--threads", "2", "run", "--method", spec, "--layout", "bshd", "--causal",
                     "--q", os.path.join(tmp, "q.npy"), "--k", os.path.join(tmp, "k.npy"),
                     "--v", os.path.join(tmp, "v.npy"), "--out", out],
                    check=True, stdout=subprocess.DEVNULL)
                got = np.load(out)
                e = rel(got, ref)
                worst = max(worst, e)
                ec = f"{rel(got, ref_chunk):.2e}" if ref_chunk is not None else "-"
                print(f"{t:>6} {spec.split(':')[0]:<26} {e:>24.2e} {ec:>20}")
    print(f"worst relative error to fla's naive recurrent references: {worst:.2e}")


if __name__ == "__main__":
    main()
