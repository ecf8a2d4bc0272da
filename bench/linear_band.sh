#!/usr/bin/env bash
# Throughput band of the linear family (issue 6): tokens/s of the chunked prefill at S = 4096 and
# S = 65536 (causal, B = 1, H = 8, D = 128, 2 threads) must stay within 20 %.
#
# This machine's speed drifts by up to 2× over minutes, so two numbers taken minutes apart say
# little. Each round therefore brackets one 64k run between two 4k runs (separate processes,
# seconds apart) and compares the 64k per-token time with the mean of its two 4k neighbours; a
# method's verdict is its worst round. The best-of-all per-token times are printed beside.
# Usage: bench/linear_band.sh [ROUNDS] [METHODS]   (~4 minutes with the defaults on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
methods="${2:-linear,gated-deltanet,kda,transnormer,nalaformer,titans-memory}"
cargo build --release -p attn-cli --quiet
attn="${CARGO_TARGET_DIR:-target}/release/attn --threads ${THREADS:-2}"

# Best per-token time in microseconds of one bench process.
per_token() { # METHOD TOKENS
    $attn bench --causal --shape "b1,h8,s$2,d128" --method "$1" --reps 3 --warmup 1 --json - |
        jq -r --argjson n "$2" '.[0].best_s * 1e6 / $n'
}

echo "# $(date -u +%FT%TZ) · $(nproc) cores · load $(cut -d' ' -f1-3 /proc/loadavg) · $rounds rounds"
printf '%-15s %5s %10s %10s %10s %9s\n' method round "4k before" 64k "4k after" "64k/4k"
for m in ${methods//,/ }; do
    worst=1
    all4=()
    all64=()
    for r in $(seq "$rounds"); do
        a=$(per_token "$m" 4096)
        b=$(per_token "$m" 65536)
        c=$(per_token "$m" 4096)
        ratio=$(jq -n --argjson a "$a" --argjson b "$b" --argjson c "$c" '$b / (($a + $c) / 2)')
        printf '%-15s %5s %10.2f %10.2f %10.2f %9.3f\n' "$m" "$r" "$a" "$b" "$c" "$ratio"
        worst=$(jq -n --argjson w "$worst" --argjson x "$ratio" \
            'if ($x - 1 | fabs) > ($w - 1 | fabs) then $x else $w end')
        all4+=("$a" "$c")
        all64+=("$b")
    done
    best4=$(printf '%s\n' "${all4[@]}" | sort -g | head -1)
    best64=$(printf '%s\n' "${all64[@]}" | sort -g | head -1)
    verdict=$(jq -n --argjson w "$worst" 'if ($w - 1 | fabs) <= 0.2 then "within 20 %" else "OUTSIDE 20 %" end')
    printf '%-15s worst round 64k/4k per-token time %.3f (%s); best 4k %.2f us, best 64k %.2f us per token\n' \
        "$m" "$worst" "${verdict//\"/}" "$best4" "$best64"
done
