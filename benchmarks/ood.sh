#!/usr/bin/env bash
# Issue 20: OOD inversion (SAMM) vs e4e and GradStyle on 64 held-out synthetic-world faces that all carry an
# out-of-domain object, one `gie benchmark` run: reconstruction overall, inside the objects and inside the face
# (PSNR/SSIM), the blend mask against the true object masks (IoU) and its average area (the paper's AOA), the ablations
# of its Tables 1/3 that need no retraining (N = 1/2/3 alignment iterations at inference, "skip SA": masks as usual,
# features not warped), speed, and edit fidelity for smile and age against the renderer's ground truth with the
# object kept in place (MSE to the photo inside the object).
# Writes benchmarks/results/ood/ (benchmark.md/.json, contact sheet).
# Usage: benchmarks/ood.sh   (env: OUT=benchmarks/results/ood POWER=1 N=64)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/ood}
POWER=${POWER:-1}
N=${N:-64}
gie benchmark --methods e4e,gradstyle,ood,ood-n1=ood,ood-n3=ood,ood-skipsa=ood \
    --set ood-n1.iterations=1 --set ood-n3.iterations=3 --set ood-skipsa.skip_align=true \
    --data synthface --ood-prob 1 --n "$N" --edits "smile:$POWER,age:$POWER" --metrics all -b 8 \
    --size 64 --seed 20261121 --sheet 8 -o "$OUT"
