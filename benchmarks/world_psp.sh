#!/usr/bin/env bash
# pSp on the synthetic world for the benchmarks that compare against it (world_table.sh, style_transformer.sh). It is
# not in the zoo (11 MB): it is trained here once, like world.e4e (scripts/build_zoo.sh step 3), into $WORK, and
# reused while the file exists. Prints the checkpoint's path.
# Usage: benchmarks/world_psp.sh   (env: WORK=build/zoo PSP_STEPS=3000)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-build/zoo}
PSP_STEPS=${PSP_STEPS:-3000}
psp="$WORK/world-psp.safetensors"
if [ ! -f "$psp" ]; then
    [ -d "$WORK/faces" ] || gie synth -o "$WORK/faces" --faces -n 4096 -s 64 --detail 1 --seed 1 >/dev/null
    run=$(gie train --method psp --data "$WORK/faces" -w world.generator --set encoder=world --set lr=5e-4 \
        --steps "$PSP_STEPS" -b 16 --run-dir "$WORK/runs" --no-progress)
    cp "$run" "$psp"
fi
echo "$psp"
