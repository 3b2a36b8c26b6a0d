#!/usr/bin/env bash
# GradStyle on the synthetic world: every row of the paper's Table 4 that the world can run, at equal training length,
# measured in ONE `gie benchmark` run (every column, images/s included, comes from that run).
#
# Rows: e4e (= "w/o GAM & GRM"), full, w/o GAM, w/o GRM, one stage (low, 8 px), one stage (high, 32 px), only
# hierarchical I / II / III (every stage reads the encoder's c3 / p2 / p1 level), and "full, edits unaligned" (the
# full checkpoint with use_gam=false at inference: what the GAM adds to the same model).
# Every variant is trained STEPS steps with the settings of scripts/build_zoo.sh (batch 8, seed 0, hidden 64) on the
# same faces. `full` is the STEPS snapshot of the zoo model's run (RUN, exported with export_snapshot.py), or is
# trained here like the others when RUN is not given.
#
# Usage: benchmarks/gradstyle_ablation.sh [RUN_DIR_OF_THE_FULL_MODEL]   (env: FACES WORK STEPS OUT DEVICE N)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-}
FACES=${FACES:-build/zoo/faces}
WORK=${WORK:-build/gradstyle-ablation}
STEPS=${STEPS:-300}
OUT=${OUT:-benchmarks/results/gradstyle_ablation}
DEVICE=${DEVICE:-auto}
N=${N:-32}
mkdir -p "$WORK"
[ -d "$FACES" ] || gie synth -o "$FACES" --faces -n 4096 -s 64 --detail 1 --seed 1 >/dev/null
train() {
    gie train --method gradstyle -w gie_cli/zoo/world-e4e.safetensors --data "$FACES" -b 8 --seed 0 --set hidden=64 \
        --run-dir "$WORK/runs" --device "$DEVICE" --no-progress --steps "$STEPS" --snapshot-every 100000 "$@"
}
if [ -n "$RUN" ]; then
    full=$(python benchmarks/export_snapshot.py "$RUN/snapshot-$(printf %07d "$STEPS").pt" -o "$WORK/full.safetensors")
else
    full=$(train)
fi
no_gam=$(train --set use_gam=false)
no_grm=$(train --set use_grm=false)
low=$(train --set stages=1)
high=$(train --set stages=6)
hier1=$(train --set level=c3)
hier2=$(train --set level=p2)
hier3=$(train --set level=p1)
gie benchmark \
    --methods "e4e,full=gradstyle,no-gam=gradstyle,no-grm=gradstyle,low=gradstyle,high=gradstyle,hier-I=gradstyle,hier-II=gradstyle,hier-III=gradstyle,full-unaligned=gradstyle" \
    --weights "full=$full" --weights "no-gam=$no_gam" --weights "no-grm=$no_grm" --weights "low=$low" \
    --weights "high=$high" --weights "hier-I=$hier1" --weights "hier-II=$hier2" --weights "hier-III=$hier3" \
    --weights "full-unaligned=$full" --set full-unaligned.use_gam=false \
    --data synthface --n "$N" --edits smile:2,age:2,yaw:1 --device "$DEVICE" -o "$OUT"
