#!/usr/bin/env bash
# Same-run throughput ratios (split / centralized training, benchmarks/throughput.py --cell) of a base commit and the
# working tree, measured alternately so that the machine's drift hits both; writes
# benchmarks/results/throughput_ab.jsonl and THROUGHPUT-AB.md. Usage: bash benchmarks/ab_throughput.sh BASE [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: ab_throughput.sh BASE_COMMIT [REPEATS]}
repeats=${2:-2}
python=${PYTHON:-$PWD/.venv/bin/python}
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree"' EXIT
git worktree add -q --detach "$tree" "$base"
out=benchmarks/results/throughput_ab.jsonl
: > "$out"
for rep in $(seq "$repeats"); do
  for cell in "psl 100 16" "psl 1000 1" "locfedmix 100 16" "locfedmix 1000 1"; do
    for side in base head; do
      dir=$tree; [ "$side" = head ] && dir=$PWD
      # shellcheck disable=SC2086
      row=$(cd "$dir" && PYTHONPATH=src "$python" benchmarks/throughput.py --cell $cell --seconds 2 \
            --repeats 3 --device cpu 2>/dev/null | tail -1)
      echo "{\"side\": \"$side\", \"base\": \"$base\", \"rep\": $rep, \"row\": $row}" >> "$out"
    done
  done
done
"$python" - "$out" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(line) for line in open(sys.argv[1])]
ratios = defaultdict(lambda: defaultdict(list))
for r in rows:
    ratios[r["row"]["cell"]][r["side"]].append(r["row"]["ratio"])
lines = [f"# Throughput A/B: {rows[0]['base']} (base) against the working tree (head)", "",
         "Each entry: samples/s of the algorithm over centralized training of the same CNN in the same process "
         "(median of 3 alternating measurements), base and head measured one after the other, the pair repeated. "
         "`bash benchmarks/ab_throughput.sh BASE` regenerates this file.", "",
         "| cell | base ratios | head ratios | head ÷ base per pair | median |", "|---|---|---|---|---:|"]
for cell, sides in ratios.items():
    pairs = [h / b for b, h in zip(sides["base"], sides["head"], strict=True)]
    fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)
    lines.append(f"| {cell} | {fmt(sides['base'])} | {fmt(sides['head'])} | {fmt(pairs)} | "
                 f"{statistics.median(pairs):.2f} |")
open("benchmarks/results/THROUGHPUT-AB.md", "w").write("\n".join(lines) + "\n")
PY
