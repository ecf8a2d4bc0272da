#!/usr/bin/env python3
"""Cross-check of attn's linear family against fla's naive PyTorch references (issue 6):
outputs AND final states, per-token gates and β, a random initial state.

fla (flash-linear-attention) needs triton to import as a package, so its pure-PyTorch reference
files are loaded by path from an unpacked fla-core wheel (`pip download fla-core==0.6.0 --no-deps`,
then unzip): fla/ops/gated_delta_rule/naive.py, fla/ops/kda/naive.py, fla/ops/linear_attn/naive.py.
Needs torch, einops.

Inputs, fla's layout [B, T, H, D], float32, B = 1:
  q, k, v ~ N(0, 1); initial state s0 ~ N(0, 1) [B, H, K, V];
  gated-deltanet: g = logsigmoid(N(0, 1)) [B, T, H] (natural-log decay, decay = exp(g));
  kda: g = logsigmoid(N(0, 1)) [B, T, H, K] (one gate per key channel);
  β = sigmoid(N(0, 1)) [B, T, H].
attn runs them through `attn run --layout bshd --causal --g g.npy --beta beta.npy
--initial-state s0.npy --final-state s1.npy` in its three forms (chunked, -recurrent, -reference).
attn L2-normalises q and k inside (fla's use_qk_l2norm_in_kernel=True), so fla gets the
normalised q, k. fla's references: naive_recurrent_* and naive_chunk_* with initial_state=s0,
output_final_state=True (naive_chunk_kda needs T a multiple of 64: the script pads with zero
tokens, g = 0 and β = 0, which leave the state unchanged).

linear: `attn run --method linear*:map=identity,norm=false` (φ = identity, no normaliser, scale
K^-1/2) against fla's naive_recurrent_linear_attn(normalize=False, initial_state=s0,
output_final_state=True) on raw q, k (no L2 norm). fla's naive_chunk_linear_attn takes no state
and needs T % 64 == 0: the script pads with zero tokens and adds the initial-state read
(scale·q) s0 itself; it returns no final state.

Prints the relative Frobenius error ||attn − fla|| / ||fla|| of o and of the final state.

Usage: python bench/linear_peer.py --fla /path/to/unpacked/fla-core --attn target/release/attn
"""
import argparse
import importlib.util
import os
import subprocess
import tempfile

import numpy as np
import torch
import torch.nn.functional as F


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rel(a, b):
    if a is None or b is None:
        return None
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fmt(e):
    return "-" if e is None else f"{e:.2e}"


def pad_tokens(x, n):
    """Appends n zero tokens along axis 1 (fla layout [B, T, ...])."""
    if n == 0:
        return x
    shape = list(x.shape)
    shape[1] = n
    return torch.cat([x, x.new_zeros(shape)], dim=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fla", required=True, help="directory holding fla/ops/... (unpacked fla-core wheel)")
    ap.add_argument("--attn", default="target/release/attn")
    ap.add_argument("--lengths", default="1,63,64,65,1000,4096")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    gdn = load(os.path.join(args.fla, "fla/ops/gated_delta_rule/naive.py"), "fla_gdn_naive")
    kda = load(os.path.join(args.fla, "fla/ops/kda/naive.py"), "fla_kda_naive")
    lin = load(os.path.join(args.fla, "fla/ops/linear_attn/naive.py"), "fla_linear_naive")
    torch.set_num_threads(args.threads)
    h, d = args.heads, args.dim
    print(f"B = 1, H = {h}, K = V = {d}, float32; q, k, v, s0 ~ N(0,1); g = logsigmoid(N(0,1)) "
          f"(kda: per key channel); beta = sigmoid(N(0,1)); fla chunk size 64")
    print(f"{'T':>6} {'attn method':<26} {'o vs rec':>10} {'S vs rec':>10} {'o vs chunk':>11} {'S vs chunk':>11}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = lambda n: os.path.join(tmp, n)
        for t in [int(x) for x in args.lengths.split(",")]:
            rng = np.random.default_rng(t)
            q, k, v = (rng.standard_normal((1, t, h, d)).astype(np.float32) for _ in range(3))
            s0 = rng.standard_normal((1, h, d, d)).astype(np.float32)
            g_gdn = F.logsigmoid(torch.from_numpy(rng.standard_normal((1, t, h)).astype(np.float32)))
            g_kda = F.logsigmoid(torch.from_numpy(rng.standard_normal((1, t, h, d)).astype(np.float32)))
            beta = torch.sigmoid(torch.from_numpy(rng.standard_normal((1, t, h)).astype(np.float32)))
            for name, arr in (("q", q), ("k", k), ("v", v), ("s0", s0), ("g_gdn", g_gdn.numpy()),
                              ("g_kda", g_kda.numpy()), ("beta", beta.numpy())):
                np.save(path(f"{name}.npy"), arr)
            qt, kt, vt, st = (torch.from_numpy(x) for x in (q, k, v, s0))
            qn = qt / qt.norm(dim=-1, keepdim=True)
            kn = kt / kt.norm(dim=-1, keepdim=True)
            pad = (64 - t % 64) % 64
            with torch.no_grad():
                refs = {}
                o, s = gdn.naive_recurrent_gated_delta_rule(qn, kn, vt, beta, g_gdn, initial_state=st.clone(),
                                                            output_final_state=True)
                oc, sc = gdn.naive_chunk_gated_delta_rule(qn, kn, vt, g_gdn, beta, chunk_size=64,
                                                          initial_state=st.clone(), output_final_state=True)
                refs["gated-deltanet"] = (o, s, oc, sc, "g_gdn")
                o, s = kda.naive_recurrent_kda(qn, kn, vt, g_kda, beta, initial_state=st.clone(),
                                               output_final_state=True)
                oc, sc = kda.naive_chunk_kda(pad_tokens(qn, pad), pad_tokens(kn, pad), pad_tokens(vt, pad),
                                             pad_tokens(g_kda, pad), pad_tokens(beta, pad),
                                             initial_state=st.clone(), output_final_state=True, chunk_size=64)
                refs["kda"] = (o, s, oc[:, :t], sc, "g_kda")
                o, s = lin.naive_recurrent_linear_attn(qt, kt, vt, initial_state=st.clone(),
                                                       output_final_state=True, normalize=False)
                oc = lin.naive_chunk_linear_attn(pad_tokens(qt, pad), pad_tokens(kt, pad), pad_tokens(vt, pad),
                                                 normalize=False)[:, :t]
                oc = oc + torch.einsum("bthk,bhkv->bthv", qt * d ** -0.5, st)
                refs["linear"] = (o, s, oc, None, None)
            for fam, (o, s, oc, sc, gname) in refs.items():
                o, s = o.numpy(), s.numpy()
                oc = oc.numpy()
                sc = None if sc is None else sc.numpy()
                print(f"{t:>6} {'fla naive chunk (vs rec)':<26} {fmt(rel(oc, o)):>10} {fmt(rel(sc, s)):>10}")
                for suffix in ("", "-recurrent", "-reference"):
                    method = f"{fam}{suffix}" + (":map=identity,norm=false" if fam == "linear" else "")
                    cmd = [args.attn, "--threads", str(args.threads), "run", "--method", method,
                           "--layout", "bshd", "--causal", "--q", path("q.npy"), "--k", path("k.npy"),
                           "--v", path("v.npy"), "--initial-state", path("s0.npy"),
                           "--final-state", path("s1.npy"), "--out", path("o.npy")]
                    if gname:
                        cmd += ["--g", path(f"{gname}.npy"), "--beta", path("beta.npy")]
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    got_o, got_s = np.load(path("o.npy")), np.load(path("s1.npy"))
                    errs = [rel(got_o, o), rel(got_s, s), rel(got_o, oc), rel(got_s, sc)]
                    worst = max([worst] + [e for e in errs if e is not None])
                    print(f"{t:>6} {fam + suffix:<26} {fmt(errs[0]):>10} {fmt(errs[1]):>10} "
                          f"{fmt(errs[2]):>11} {fmt(errs[3]):>11}")
    print(f"worst relative error of attn to fla's naive references: {worst:.2e}")


if __name__ == "__main__":
    main()
