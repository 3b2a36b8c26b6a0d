#!/usr/bin/env bash
# The README's first benchmark table: e4e, pSp and latent optimisation (W+, 300 steps) on 32 held-out
# synthetic-world faces, every column (speed, reconstruction, ground-truth edits) from one `gie benchmark` run.
# pSp is world_psp.sh's (trained once, reused). Writes benchmarks/results/world/ (benchmark.md/.json).
# Usage: benchmarks/world_table.sh   (env: WORK=build/zoo OUT=benchmarks/results/world)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/world}
psp=$(benchmarks/world_psp.sh)
gie benchmark --methods e4e,psp,optim --weights psp="$psp" --data synthface --n 32 --edits smile:2,age:2 \
    --metrics all -b 8 --size 64 --seed 20261121 --ood-prob 0.3 -o "$OUT"
