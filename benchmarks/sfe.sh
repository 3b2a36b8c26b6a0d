#!/usr/bin/env bash
# Issue 19: StyleFeatureEditor vs e4e, GradStyle and HFGI on 32 held-out synthetic-world faces, one `gie benchmark`
# run: reconstruction, speed (images/s of invert + render, per-edit ms), and edit fidelity against the renderer's
# ground truth for smile, age, yaw and glasses, SFE unmasked and masked (the world's true face masks, and the hull of
# its landmarks as `gie edit --mask landmarks` derives it), with each edit's change inside and outside the face.
# Writes benchmarks/results/sfe/ (benchmark.md/.json, contact sheet).
# Usage: benchmarks/sfe.sh   (env: OUT=benchmarks/results/sfe POWER=1)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/sfe}
POWER=${POWER:-1}
gie benchmark --methods e4e,gradstyle,hfgi,sfe,sfe+mask=sfe,sfe+lm=sfe \
    --set sfe+mask.edit_mask=truth --set sfe+lm.edit_mask=landmarks \
    --data synthface --n 32 --edits "smile:$POWER,age:$POWER,yaw:$POWER,glasses:$POWER" --metrics all -b 8 \
    --size 64 --seed 20261121 --sheet 8 -o "$OUT"
