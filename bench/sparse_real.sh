#!/usr/bin/env bash
# Kernel-level dynamic sparse prefill on REAL Q/K/V (issue 5): vertical-slash at the authors'
# default budget beside sdpa-flash, causal, on heads recorded from the models by `attn capture`.
#
#   SmolLM2-135M (context 8192, D = 64): layers 10 and 20 on 8192 tokens of Emma, tiled to 64k and
#     256k; at the model's D = 64 and with two heads joined along D (D = 128; their logits add).
#   Gemma-3-270M (context 32768, D = 256): global layers 5 and 11 on 32768 tokens of Emma, at 32k
#     (no tiling) and tiled to 64k.
#
# Tiling (`attn bench --qkv-tiling`):
#   rope   — the copy in tile m is rotated by m·S_rec more positions with the record's RoPE, so
#            every pair's rotation matches its distance in the tiled sequence (the issue's rows);
#   repeat — the rows as recorded: each tile is an exact copy at every multiple of S_rec, so a
#            query's attention spreads over the copies (the protocol of earlier sessions, kept
#            for comparison).
#   Neither is a long text: with --recall each table also says how much of the exact attention of
#   the rows past S_rec sits at distances >= S_rec, which the recording never had (76.5 % for
#   SmolLM2 at 64k with rope). The last row runs the same budget over 45 joined heads (every
#   head of layers 5..25 with head h+4 mod 9), not only the issue's two.
# Usage: REPS=2 bench/sparse_real.sh [OUT]  (~32 minutes on 2 cores)
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
d128=L10.H0.B0+L10.H4.B0,L20.H0.B0+L20.H4.B0
for t in rope repeat; do
    $attn bench --causal --shape b1,h2,s64k,d128 --qkv "$out/smollm2.safetensors" --qkv-tiling $t \
        --qkv-heads "$d128" --method "$m" --reps "$reps" --recall --json "$out/smollm2-d128-64k-$t.json"
done
$attn bench --causal --shape b1,h1,s256k,d128 --qkv "$out/smollm2.safetensors" --qkv-tiling rope \
    --qkv-heads L10.H0.B0+L10.H4.B0 --method "$m" --reps 1 --warmup 0 --recall \
    --json "$out/smollm2-d128-256k-rope.json"
$attn bench --causal --shape b1,h2,s64k,d64 --qkv "$out/smollm2.safetensors" --qkv-tiling rope \
    --qkv-heads L10.H0.B0,L20.H4.B0 --method "$m" --reps "$reps" --recall --json "$out/smollm2-d64-64k-rope.json"
$attn bench --causal --shape b1,h2,s32k/64k,d256 --qkv "$out/gemma3.safetensors" --qkv-tiling rope \
    --qkv-heads L5.H0.B0,L11.H2.B0 --method "$m" --reps "$reps" --recall --json "$out/gemma3-d256.json"
# The same budget over 45 joined heads, one layer (9 heads) per call.
$attn capture --model smollm2 --text emma --tokens 8192 --layers 5,10,15,20,25 \
    --out "$out/smollm2-all.safetensors"
for l in 5 10 15 20 25; do
    heads=$(for h in 0 1 2 3 4 5 6 7 8; do printf 'L%s.H%s.B0+L%s.H%s.B0,' $l $h $l $(((h + 4) % 9)); done)
    $attn bench --causal --shape b1,h9,s64k,d128 --qkv "$out/smollm2-all.safetensors" --qkv-tiling rope \
        --qkv-heads "${heads%,}" --method sdpa-flash,vertical-slash --reps 1 --warmup 0 --recall \
        --json "$out/smollm2-all-L$l-64k-rope.json"
done
rm -f "$out"/*.safetensors
echo "wrote $out"
