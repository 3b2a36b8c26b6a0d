#!/usr/bin/env bash
# GradStyle on the synthetic world: the ablation in the spirit of the paper's Table 4, at equal training length.
# Trains four variants for STEPS steps on the world e4e and compares them with the full model at the same step (the
# STEPS snapshot of the zoo model's run, RUN) and with e4e, on held-out faces with ground-truth edits.
# Usage: benchmarks/gradstyle_ablation.sh RUN_DIR_OF_THE_FULL_MODEL   (env: FACES, WORK, STEPS, OUT, DEVICE)
# On the 2-core CPU dev machine the four trainings took about 50 min; the benchmark about 3 min.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?the run folder of the full GradStyle model (gie train --method gradstyle, with a snapshot at STEPS)}
FACES=${FACES:-build/zoo/faces}
WORK=${WORK:-build/gradstyle-ablation}
STEPS=${STEPS:-500}
OUT=${OUT:-benchmarks/results/gradstyle_ablation}
DEVICE=${DEVICE:-auto}
mkdir -p "$WORK"
[ -d "$FACES" ] || gie synth -o "$FACES" --faces -n 4096 -s 64 --detail 1 --seed 1 >/dev/null
train() {
    gie train --method gradstyle -w gie_cli/zoo/world-e4e.safetensors --data "$FACES" -b 8 --seed 0 --set hidden=64 \
        --run-dir "$WORK/runs" --device "$DEVICE" --no-progress --steps "$STEPS" --snapshot-every 100000 "$@"
}
full=$(python benchmarks/export_snapshot.py "$RUN/snapshot-$(printf %07d "$STEPS").pt" -o "$WORK/full.safetensors")
no_gam=$(train --set use_gam=false)
no_grm=$(train --set use_grm=false)
low=$(train --set stages=1)
high=$(train --set stages=6)
gie benchmark --methods "e4e,full=gradstyle,no-gam=gradstyle,no-grm=gradstyle,low=gradstyle,high=gradstyle" \
    --weights "full=$full" --weights "no-gam=$no_gam" --weights "no-grm=$no_grm" --weights "low=$low" \
    --weights "high=$high" --data synthface --n 32 --edits smile:2,age:2 --device "$DEVICE" -o "$OUT"
