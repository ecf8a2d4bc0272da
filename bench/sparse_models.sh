#!/usr/bin/env bash
# Model-level dynamic sparse prefill (issue 5): per-head plans searched by `attn plan` on one text,
# evaluated by `attn eval` on another, beside exact attention in the same run.
#
#   SmolLM2-135M: plan on 8192 tokens of Persuasion (recall >= 0.9, output error <= 0.1), eval on
#     8192 tokens of Emma (perplexity, KL, top-1, attention time) and retrieval at 8192 tokens
#     (passkey, niah_single_2; SAMPLES each).
#   Gemma-3-270M: plan on its three global layers (5, 11, 17; the others are sliding-window 512
#     and stay exact) on 32768 tokens of Persuasion; eval on 32768 tokens of Emma and niah_single_2
#     at 32768 tokens.
#
# Usage: SAMPLES=3 bench/sparse_models.sh [OUT]   (about 40 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/sparse-models-$(hostname)-$(date +%Y%m%d-%H%M)}"
mkdir -p "$out"
cargo build --release -p attn-cli --quiet
attn="${CARGO_TARGET_DIR:-target}/release/attn --threads ${THREADS:-2}"
$attn plan --model smollm2 --tokens 8192 --target-recall 0.9 --out "$out/smollm2-plan.json" \
    --scores "$out/smollm2-scores.jsonl" --quiet | tee "$out/smollm2-plan.txt"
$attn eval --task lm,retrieval --model smollm2 --tokens 8192 --samples "${SAMPLES:-3}" \
    --plan "$out/smollm2-plan.json" --out "$out/smollm2-eval" --quiet
$attn plan --model gemma3 --tokens 32768 --layers 5,11,17 --target-recall 0.9 \
    --out "$out/gemma3-plan.json" --scores "$out/gemma3-scores.jsonl" --quiet | tee "$out/gemma3-plan.txt"
$attn eval --task lm,retrieval --needles niah_single_2 --model gemma3 --tokens 32768 \
    --samples "${GEMMA_SAMPLES:-1}" --plan "$out/gemma3-plan.json" --out "$out/gemma3-eval" --quiet
python3 bench/plan_table.py "$out/smollm2-plan.json" 30 9 > "$out/smollm2-plan.md"
python3 bench/plan_table.py "$out/gemma3-plan.json" 18 4 > "$out/gemma3-plan.md"
echo "wrote $out"
