#!/usr/bin/env bash
# Routing Transformer attention (issue 7) beside sdpa-flash, causal, D = 64, H = 2, 2 threads:
#   random inputs (uniform in [-1, 1)) at S = 16384; and
#   real SmolLM2-135M heads (layers 10 and 20 on 8192 tokens of Emma, `attn capture`) at 8192
#   (no tiling) and tiled ×2 to 16384 (tiling repeats the recorded rows, RoPE applied).
# routing at its defaults (spec: window 512 → C = S/512, 10 k-means iterations, one cluster per
# token, the port's local window 256), routing alone (local=1: the diagonal) and with the drop-in
# settings for pre-trained heads (4 sinks, a 64-key local window, keys in their 2 nearest clusters).
# --recall adds the kept exact mass and the output's relative error to exact.
# Usage: bench/routing.sh [OUT]   (~5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/routing-$(hostname)-$(date +%Y%m%d-%H%M)}"
mkdir -p "$out"
cargo build --release -p attn-cli --quiet
attn="${CARGO_TARGET_DIR:-target}/release/attn --threads ${THREADS:-2}"
m="sdpa-flash,routing,routing:local=1,routing:sink=4,local=64,key_memberships=2"
$attn bench --causal --shape b1,h2,s16k,d64 --method "$m" --reps 1 --warmup 1 --recall \
    --json "$out/random-16k.json"
$attn capture --model smollm2 --text emma --tokens 8192 --layers 10,20 --heads 0,4 \
    --out "$out/smollm2.safetensors"
$attn bench --causal --shape b1,h2,s8k/16k,d64 --qkv "$out/smollm2.safetensors" \
    --qkv-heads L10.H0.B0,L20.H4.B0 --method "$m" --reps 1 --warmup 1 --recall \
    --json "$out/smollm2.json"
rm -f "$out"/*.safetensors
echo "wrote $out"
