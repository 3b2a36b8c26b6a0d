#!/usr/bin/env bash
# Issue 18: second-order label edits at larger finite-difference steps xi than the supplement's 1e-3, on Style
# Transformer's codes of the 32 held-out faces of benchmarks/style_transformer.sh (run that first: it fits the
# first-order directions). Writes benchmarks/results/style_transformer/label_xi/.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-build/zoo}
OUT=${OUT:-benchmarks/results/style_transformer/label_xi}
dirs="$WORK/label-xi"
mkdir -p "$dirs"
edits="smile-label1:3,hair_lightness-label1:3,glasses-label1:3"
for xi in 0.1 1 10; do
    tag=${xi/./p}
    for a in smile hair_lightness glasses; do
        gie directions fit label -n "$a-l2xi$tag" -w world.generator --attribute "$a" --order 2 --xi "$xi" \
            --classifier gie_cli/zoo/world-latent-classifier.safetensors -o "$dirs" --overwrite >/dev/null
        edits="$edits,$a-l2xi$tag:3"
    done
done
GIE_DIRECTIONS_PATH="$WORK/label-directions:$dirs" gie benchmark --methods style_transformer --data synthface --n 32 \
    --edits "$edits" --metrics psnr -b 8 --size 64 --seed 20261121 -o "$OUT"
