#!/usr/bin/env bash
# Kernel-level dynamic sparse prefill on REAL Q/K/V (issue 5): vertical-slash at the authors'
# default budget beside sdpa-flash, causal, on heads recorded from the models by `attn capture`.
#
#   SmolLM2-135M (context 8192, D = 64): layers 10 and 20 on 8192 tokens of Emma, tiled to 64k;
#     once at the model's D = 64 and once with two heads joined along D (D = 128; their logits add).
#   Gemma-3-270M (context 32768, D = 256): global layers 5 and 11 on 32768 tokens of Emma, at 32k
#     (no tiling) and tiled to 64k.
#
# Tiling repeats the recorded rows (RoPE already applied), so every tile has its own sinks and
# local band and a query's attention spreads over the copies: recall at tiled lengths understates
# what a real 64k text would give. Usage: REPS=2 bench/sparse_real.sh [OUT]  (~20 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/sparse-real-$(hostname)-$(date +%Y%m%d-%H%M)}"
mkdir -p "$out"
cargo build --release -p attn-cli --quiet
attn="${CARGO_TARGET_DIR:-target}/release/attn --threads ${THREADS:-2}"
reps="${REPS:-2}"
$attn capture --model smollm2 --text emma --tokens 8192 --layers 10,20 --heads 0,4 \
    --out "$out/smollm2.safetensors"
$attn capture --model gemma3 --text emma --tokens 32768 --layers 5,11 --heads 0,2 \
    --out "$out/gemma3.safetensors"
m="sdpa-flash,vertical-slash,vertical-slash:layout=elements"
$attn bench --causal --shape b1,h2,s64k,d64 --qkv "$out/smollm2.safetensors" \
    --qkv-heads L10.H0.B0,L20.H4.B0 --method "$m" --reps "$reps" --recall --json "$out/smollm2-d64.json"
$attn bench --causal --shape b1,h2,s64k,d128 --qkv "$out/smollm2.safetensors" \
    --qkv-heads L10.H0.B0+L10.H4.B0,L20.H0.B0+L20.H4.B0 --method "$m" --reps "$reps" --recall \
    --json "$out/smollm2-d128.json"
$attn bench --causal --shape b1,h2,s32k/64k,d256 --qkv "$out/gemma3.safetensors" \
    --qkv-heads L5.H0.B0,L11.H2.B0 --method "$m" --reps "$reps" --recall --json "$out/gemma3-d256.json"
rm -f "$out"/*.safetensors
echo "wrote $out"
