#!/usr/bin/env bash
# Issue 21: re-run, one after another on an otherwise idle machine, the committed benchmark commands whose speed
# figures the README quotes (each writes its own results folder, quality and speed in one run). Models these scripts
# train are reused when present (world_psp.sh: build/zoo/world-psp.safetensors, ood.sh:
# build/zoo/ood-tight.safetensors). Not re-run here: benchmarks/gradstyle_ablation.sh (it trains eight variants, about
# an hour and a half on 2 cores; run it alone).
# Usage: benchmarks/remeasure_speed.sh
set -euo pipefail
cd "$(dirname "$0")/.."
benchmarks/world_table.sh > /dev/null
python benchmarks/world_metrics.py --json benchmarks/results/world_zoo.json > /tmp/world_zoo.md.$$
mv /tmp/world_zoo.md.$$ benchmarks/results/world_zoo.md
gie benchmark --methods e4e,gradstyle,unaligned=gradstyle --data synthface --n 32 --edits smile:2,age:2,yaw:1 \
    --set unaligned.use_gam=false -o benchmarks/results/gradstyle > /dev/null
{ echo '# `python benchmarks/bench_hfgi.py --configs world full --batches 1 8 --images 8`'; echo
  python benchmarks/bench_hfgi.py --configs world full --batches 1 8 --images 8; } > /tmp/hfgi_speed.md.$$
mv /tmp/hfgi_speed.md.$$ benchmarks/results/hfgi/speed_cpu.md
benchmarks/style_transformer.sh > /dev/null
python benchmarks/bench_style_transformer.py --images 8 > /tmp/st_speed.md.$$
mv /tmp/st_speed.md.$$ benchmarks/results/style_transformer/speed_cpu.md
benchmarks/sfe.sh > /dev/null
benchmarks/ood.sh > /dev/null
