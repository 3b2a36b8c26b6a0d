#!/usr/bin/env bash
# Issue 18: Style Transformer vs e4e vs pSp on 32 held-out synthetic-world faces, one `gie benchmark` run:
# reconstruction, and edit fidelity against the renderer's ground truth for InterFaceGAN-style directions (the world's
# regression directions), label-based edits of world.latent_classifier (first and second order) and reference-based
# edits of world.edit_transformer. Writes benchmarks/results/style_transformer/ (benchmark.md/.json, contact sheet).
# Usage: benchmarks/style_transformer.sh   (env: WORK=build/zoo OUT=benchmarks/results/style_transformer PSP_STEPS)
# pSp is world_psp.sh's (not in the zoo; trained once into $WORK, reused).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-build/zoo}
OUT=${OUT:-benchmarks/results/style_transformer}
LABEL_POWER=${LABEL_POWER:-3}
psp=$(WORK="$WORK" benchmarks/world_psp.sh)
# label directions of the embedded latent classifier, first and second order, on a folder of the direction path
dirs="$WORK/label-directions"
mkdir -p "$dirs"
edits="smile:2,hair_lightness:1,glasses:2"
for a in smile hair_lightness glasses; do
    for o in 1 2; do
        gie directions fit label -n "$a-label$o" -w world.generator --attribute "$a" --order "$o" \
            --classifier gie_cli/zoo/world-latent-classifier.safetensors -o "$dirs" --overwrite >/dev/null
        edits="$edits,$a-label$o:$LABEL_POWER"
    done
done
edits="$edits,ref:smile:1,ref:hair_lightness:1,ref:glasses:1"
GIE_DIRECTIONS_PATH="$dirs" gie benchmark --methods e4e,psp,style_transformer --weights psp="$psp" \
    --data synthface --n 32 --edits "$edits" --metrics all -b 8 --size 64 --seed 20261121 --sheet 8 -o "$OUT"
