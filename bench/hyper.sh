#!/usr/bin/env bash
# HyperAttention (issue 7) beside sdpa-flash, causal, D = 64, 2 threads, one process per input set:
#   random inputs (uniform in [-1, 1)) at S = 131072, H = 2 — the issue's shape; and
#   real SmolLM2-135M heads (layers 10 and 20 on 8192 tokens of Emma, `attn capture`) at 8192
#   (no tiling) and tiled ×16 to 131072 (tiling repeats the recorded rows, RoPE applied: said so).
# --recall adds the estimated/exact mass ratio and the output's relative error to exact.
# Usage: bench/hyper.sh [OUT]   (~10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/hyper-$(hostname)-$(date +%Y%m%d-%H%M)}"
mkdir -p "$out"
cargo build --release -p attn-cli --quiet
attn="${CARGO_TARGET_DIR:-target}/release/attn --threads ${THREADS:-2}"
m="sdpa-flash,hyper,hyper:samples=0"
$attn bench --causal --shape b1,h2,s128k,d64 --method "$m" --reps 1 --warmup 0 --recall \
    --json "$out/random-128k.json"
$attn capture --model smollm2 --text emma --tokens 8192 --layers 10,20 --heads 0,4 \
    --out "$out/smollm2.safetensors"
$attn bench --causal --shape b1,h2,s8k/128k,d64 --qkv "$out/smollm2.safetensors" \
    --qkv-heads L10.H0.B0,L20.H4.B0 --method "$m" --reps 1 --warmup 0 --recall \
    --json "$out/smollm2.json"
rm -f "$out"/*.safetensors
echo "wrote $out"
