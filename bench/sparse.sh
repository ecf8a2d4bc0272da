#!/usr/bin/env bash
# Kernel-level benchmark of dynamic sparse prefill (issue 5): vertical-slash at the authors'
# default budget (and the other sparse methods) beside sdpa-flash, causal, D = 128, H = 2,
# S = 16k and 64k, with the attention mass each sparse method keeps (exp(lse − lse_exact) per row,
# from `attn bench --recall`) and its computed-pair density.
#
# Inputs are SYNTHETIC (seeded uniform [-1, 1) q, k, v): their attention is nearly uniform, so the
# recall measured here is a lower bound on what the patterns keep on real heads (sinks, local
# bands, retrieval columns). Real Q/K/V captured from SmolLM2 / Gemma-3 layers come with the
# models issue; rerun this script on them then.
#
# Usage: REPS=2 bench/sparse.sh [--threads N] [extra attn bench args...]
# Writes bench/results/sparse-<host>-<date>.json and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p attn-cli --quiet
bin="${CARGO_TARGET_DIR:-target}/release/attn"
out="bench/results/sparse-$(hostname)-$(date +%Y%m%d-%H%M).json"
methods="sdpa-flash,vertical-slash,a-shape,streaming,block-sparse"
"$bin" bench --causal --shape b1,h2,s16k/64k,d128 --method "$methods" --recall \
    --reps "${REPS:-2}" --json "$out" "$@"
echo "wrote $out"
