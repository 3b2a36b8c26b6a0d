#!/usr/bin/env bash
# Rebuilds gie's embedded demo zoo from scratch with gie's own commands:
#   gie_cli/zoo/world-{generator,attributes,e4e,gradstyle,hfgi,style-transformer,latent-classifier,
#                      edit-transformer,sfe,ood}.safetensors  (fp16, registry names world.*)
#   directions/{yaw,smile,...}.direction.safetensors          (joint regression on the attribute estimator's readings)
# Usage: scripts/build_zoo.sh   (env: WORK=build/zoo DEVICE=auto GEN_STEPS EST_STEPS E4E_STEPS GS_STEPS HFGI_STEPS
#        ST_STEPS LC_STEPS ET_STEPS SFE1_STEPS SFE2_STEPS OOD_STEPS N_FACES)
# On the 2-core CPU dev machine this takes about 3.6 hours with the defaults; a GPU takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-build/zoo}
DEVICE=${DEVICE:-auto}
GEN_STEPS=${GEN_STEPS:-8000}
EST_STEPS=${EST_STEPS:-3000}
E4E_STEPS=${E4E_STEPS:-3000}
GS_STEPS=${GS_STEPS:-1500}
HFGI_STEPS=${HFGI_STEPS:-3000}
ST_STEPS=${ST_STEPS:-6000}
LC_STEPS=${LC_STEPS:-3000}
ET_STEPS=${ET_STEPS:-10000}
SFE1_STEPS=${SFE1_STEPS:-3000}
SFE2_STEPS=${SFE2_STEPS:-1500}
OOD_STEPS=${OOD_STEPS:-3000}
N_FACES=${N_FACES:-4096}
DIRECTIONS=${DIRECTIONS:-"yaw smile mouth_open glasses age hair_length hair_lightness"}
mkdir -p "$WORK"
train() { gie train --run-dir "$WORK/runs" --device "$DEVICE" --no-progress "$@"; }

# 1. the generator, fitted by regression to renders of the clean world (64 px)
gen=$(train --method generator --data synthface --steps "$GEN_STEPS" -b 16 --snapshot-every 1000)
gen=$(python -m gie_cli.synth.zoo pack generator "$gen")
# 2. the attribute estimator (renders with detail and objects, random blur)
est=$(train --method attributes --data synthface --steps "$EST_STEPS" -b 32)
est=$(python -m gie_cli.synth.zoo pack attributes "$est")
# 3. e4e on aligned world faces with fine detail (what the generator cannot draw), against the packed generator
gie synth -o "$WORK/faces" --faces -n "$N_FACES" -s 64 --detail 1 --seed 1 >/dev/null
e4e=$(train --method e4e --data "$WORK/faces" -w "$gen" --set encoder=world --set lr=5e-4 --steps "$E4E_STEPS" -b 16)
python -m gie_cli.synth.zoo pack e4e "$e4e" >/dev/null
# 4. GradStyle on the packed e4e (stored without the e4e's parts, which it takes from world.e4e)
gs=$(train --method gradstyle --data "$WORK/faces" -w gie_cli/zoo/world-e4e.safetensors --set hidden=64 \
    --steps "$GS_STEPS" -b 8 --snapshot-every 300)
python -m gie_cli.synth.zoo pack gradstyle "$gs" >/dev/null
# 4b. HFGI's ADA + consultation encoder on the packed e4e (conditions at 32 px; stored on world.e4e as well), on the
#     same faces with objects drawn on 30% of them (trained on clean faces only, its conditions blow up on objects)
gie synth -o "$WORK/faces_ood" --faces -n "$N_FACES" -s 64 --detail 1 --seed 1 --ood-prob 0.3 >/dev/null
hf=$(train --method hfgi --data "$WORK/faces_ood" -w gie_cli/zoo/world-e4e.safetensors --steps "$HFGI_STEPS" -b 8 \
    --snapshot-every 500 --set aug_rate=0.5)
python -m gie_cli.synth.zoo pack hfgi "$hf" >/dev/null
# 4c. Style Transformer: encoder + mapping MLP on the packed generator, the backbone started from world.e4e's (the
#     offline stand-in for the official ArcFace IR-SE50 start), e4e's lr; stored on world.generator's synthesis
st=$(train --method style_transformer --data "$WORK/faces" -w "$gen" --set encoder=world \
    --set body_from=gie_cli/zoo/world-e4e.safetensors --set lr=5e-4 --steps "$ST_STEPS" -b 16 --snapshot-every 500)
python -m gie_cli.synth.zoo pack style_transformer "$st" >/dev/null  # (pack updates the registry hashes)
# 4d. Style Transformer's editing models on the faces' e4e and Style Transformer codes: the latent classifier
#     (label-based editing) and, judged by it, the reference-based editing transformer
lc=$(train --method latent_classifier --data "$WORK/faces" -w world.e4e --set encoders=world.style_transformer \
    --set hidden=128,64 --steps "$LC_STEPS" -b 256)
python -m gie_cli.synth.zoo pack latent_classifier "$lc" >/dev/null
et=$(train --method edit_transformer --data "$WORK/faces" -w world.e4e --set encoders=world.style_transformer \
    --set classifier=world.latent_classifier --steps "$ET_STEPS" -b 64)
python -m gie_cli.synth.zoo pack edit_transformer "$et" >/dev/null
# 5. directions: a joint regression of sampled W codes on what the attribute estimator reads on their renders, so each
#    direction moves its attribute with the others (as the estimator sees them) held fixed; power = attribute units
python -m gie_cli.synth.zoo labels "$gen" -o "$WORK/world-labels.safetensors" -n 5000 --estimator "$est" >/dev/null
args=(); for a in $DIRECTIONS; do args+=(-a "$a"); done
gie directions fit regression -w "$gen" --labels "$WORK/world-labels.safetensors" "${args[@]}" --power-range=-2,2 \
    -o directions --overwrite
# 6. StyleFeatureEditor on the packed e4e (stored on world.e4e): phase 1 the Inverter (the 32 px feature;
#    adversarial from 11/30 of the steps, about the supplement's 14k of 37.5k), phase 2 the Feature Editor on edit
#    pairs of the world's directions (step 5) at their range's ends and halves
s1=$(train --method sfe --data "$WORK/faces" -w gie_cli/zoo/world-e4e.safetensors --set lr=5e-4 --set reg_lambda=0.5 \
    --set adv_start=$((SFE1_STEPS * 11 / 30)) --steps "$SFE1_STEPS" -b 8 --snapshot-every 500)
s2=$(train --method sfe --data "$WORK/faces" -w "$s1" --set phase=2 --set lr=5e-4 --steps "$SFE2_STEPS" -b 8 \
    --snapshot-every 250)
python -m gie_cli.synth.zoo pack sfe "$s2" >/dev/null
# 7. OOD inversion's SAMM on the packed e4e (stored on world.e4e), trained on the faces with objects (step 4's data):
#    the paper's objective and areas, masks starting at 0.5, adversarial (0.1) from a third of the steps
ood=$(train --method ood --data "$WORK/faces_ood" -w gie_cli/zoo/world-e4e.safetensors --set lr=5e-4 \
    --set adv_lambda=0.1 --set adv_start=$((OOD_STEPS / 3)) --steps "$OOD_STEPS" -b 8 --snapshot-every 500)
python -m gie_cli.synth.zoo pack ood "$ood" >/dev/null
echo "zoo rebuilt: gie_cli/zoo/ and directions/ (run the tests, then commit)" >&2
