#!/usr/bin/env bash
# Kernel-level benchmark of linear attention (issue 6): the chunked prefill forms (`linear`,
# `gated-deltanet`) beside `sdpa-flash`, causal, B = 1, H = 8, D = 128, S = 4k/16k/64k (tokens/s
# must stay flat: linear cost), and the decode forms at S_q = 1 (the recurrent form re-reads its
# whole prefix here, so decode *step* time is measured separately by `linear-decode` below).
#
# Inputs are synthetic (seeded uniform [-1, 1)). The machine is shared with other work: times are
# noisy; run twice.
#
# Usage: REPS=1 bench/linear.sh [--threads N] [extra attn bench args...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p attn-cli --quiet
bin="${CARGO_TARGET_DIR:-target}/release/attn"
mkdir -p bench/results
out="bench/results/linear-$(hostname)-$(date +%Y%m%d-%H%M)"
"$bin" bench --causal --shape b1,h8,s4k/16k/64k,d128 --method "linear,gated-deltanet" \
    --reps "${REPS:-1}" --json "$out-linear.json" "$@"
"$bin" bench --causal --shape b1,h8,s4k/16k,d128 --method "sdpa-flash" \
    --reps "${REPS:-1}" --json "$out-flash.json" "$@"
echo "wrote $out-*.json"
