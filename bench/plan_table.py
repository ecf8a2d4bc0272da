#!/usr/bin/env python3
"""Markdown table of a plan file written by `attn plan`: one row per layer, one cell per head with
the chosen method (short name, budget) and the attention-mass recall it kept on the calibration
tokens. Heads without an override are exact.

Usage: bench/plan_table.py plan.json [LAYERS HEADS]
"""
import json
import sys

SHORT = {"streaming": "SL", "a-shape": "A", "vertical-slash": "VS", "block-sparse": "BS"}


def cell(o):
    if o is None:
        return "exact"
    m = SHORT.get(o["method"], o["method"])
    p = o.get("params", {})
    if o["method"] == "streaming":
        b = f"w{p.get('window', '')}"
    elif o["method"] == "a-shape":
        b = f"l{p.get('local', '')}"
    elif o["method"] == "vertical-slash":
        b = f"{p.get('vertical', '')}/{p.get('slash', '')}"
    elif o["method"] == "block-sparse":
        b = f"k{p.get('top_k', '')}"
    else:
        b = ",".join(f"{k}={v}" for k, v in p.items())
    r = o.get("score", {}).get("recall")
    return f"{m} {b}" + (f" ({r:.2f})" if r is not None else "")


def main():
    plan = json.load(open(sys.argv[1]))
    ov = {(o["layer"], o.get("head")): o for o in plan["overrides"]}
    layers = int(sys.argv[2]) if len(sys.argv) > 2 else 1 + max(k[0] for k in ov)
    heads = int(sys.argv[3]) if len(sys.argv) > 3 else 1 + max(k[1] for k in ov if k[1] is not None)
    print("| layer | " + " | ".join(f"h{h}" for h in range(heads)) + " |")
    print("|---" * (heads + 1) + "|")
    for l in range(layers):
        if not any((l, h) in ov for h in range(heads)) and (l, None) not in ov:
            if len(sys.argv) > 4:
                continue
        cells = [cell(ov.get((l, h), ov.get((l, None)))) for h in range(heads)]
        print(f"| {l} | " + " | ".join(cells) + " |")
    print()
    print("SL w = StreamingLLM window (64 sinks); A l = A-shape local (64 sinks); VS v/s = "
          "vertical-slash budgets; BS k = block-sparse top-k blocks of 64; (recall) = mean "
          "attention mass kept on the calibration tokens.")


if __name__ == "__main__":
    main()
