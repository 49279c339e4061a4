#!/usr/bin/env bash
# Issue 20's lever table: every model scored on the same cells, the test split of
# runs/multilab-lf/split.csv (Raabin-WBC and PBC; the split `wbcnet train --config
# configs/multilab.yaml` makes, the shipped model's too) and BCCD's 351 crops (never trained on,
# never used to choose), then BCCD with 10 labelled cells per class (adapt --shots 10, 2 draws).
# The models: see benchmarks/levers.py (trained on a GPU, or here with --device cpu).
#   bash benchmarks/levers.sh     (about 40 minutes on 2 cores)
set -euo pipefail
S=runs/multilab-lf/split.csv
BCCD=../shared/datasets/bccd-wbc-crops
R=runs/levers/runs
L="python -m benchmarks.levers"
test -f $S || wbcnet train --config configs/multilab.yaml --out runs/multilab-lf --epochs 1   # only its split.csv is used
$L adopt --packed .packed160 $R/mhcnn-112 $R/mhcnn-160 $R/wide-160 $R/distilled-112
$L serve-at $R/mhcnn-160 --size 112 --out $R/mhcnn-160-at-112
E="wbcnet evaluate --no-explain --no-progress --overwrite --data raabin=$S --data pbc=$S --data bccd=$BCCD --split test"
$E --out runs/levers/eval/shipped                                  # the shipped model (multilab-v3)
for m in mhcnn-112 mhcnn-160 mhcnn-160-at-112 wide-160 distilled-112; do
    $E --checkpoint $R/$m --out runs/levers/eval/$m
done
$E --checkpoint $R/mhcnn-160 --tta --out runs/levers/eval/mhcnn-160-tta
$E --tta --out runs/levers/eval/shipped-tta
# the same student trained here, the whole recipe (~100 min on 2 cores):
#   wbcnet train --config configs/multilab.yaml --teacher runs/levers/runs/mhcnn-160 --out runs/multilab-kd
test -f runs/multilab-kd/DONE && $E --checkpoint runs/multilab-kd --out runs/levers/eval/multilab-kd
# SimCLR pretraining here on the split's train and val cells only (labels unused; no test cell,
# no BCCD cell), 8 epochs (~70 min on 2 cores), then the recipe from that backbone (~60 min):
#   mkdir -p runs/pretrain-tv
#   awk -F, 'NR==1||$4=="train"||$4=="val"' runs/multilab-lf/split.csv > runs/pretrain-tv/trainval.csv
#   wbcnet pretrain --config configs/multilab.yaml --data raabin=runs/pretrain-tv/trainval.csv \
#       --data pbc=runs/pretrain-tv/trainval.csv --out runs/pretrain-tv/backbone --epochs 8 --warmup-epochs 1
#   wbcnet train --config configs/multilab.yaml --pretrained runs/pretrain-tv/backbone --out runs/multilab-pt
#   python -m benchmarks.probe_backbone --backbone runs/pretrain-tv/backbone --split $S --bccd $BCCD \
#       --out benchmarks/results/probe_backbone.md
if test -f runs/multilab-pt/DONE; then $E --checkpoint runs/multilab-pt --out runs/levers/eval/multilab-pt; fi
$L ensemble runs/levers/eval/mhcnn-112 runs/levers/eval/mhcnn-160 --out runs/levers/eval/ens-112-160
$L ensemble runs/levers/eval/mhcnn-112 runs/levers/eval/mhcnn-160 runs/levers/eval/wide-160 --out runs/levers/eval/ens-3
A="wbcnet adapt --no-progress --overwrite --repeats 2 --data $BCCD --shots 10"
$A --out runs/levers/shots/shipped
for m in mhcnn-112 mhcnn-160; do $A --checkpoint $R/$m --out runs/levers/shots/$m; done
for m in multilab-kd multilab-pt; do
    if test -f runs/$m/DONE; then $A --checkpoint runs/$m --out runs/levers/shots/$m; fi
done
$L table "shipped multilab-v3 (112 px, threshold-finder crops)=shipped" "+ TTA (8 turns/mirrors)=shipped-tta" \
    "learned-finder crops, 112 px=mhcnn-112" "160 px=mhcnn-160" "160 px + TTA=mhcnn-160-tta" \
    "trained at 160, served at 112=mhcnn-160-at-112" "wide + deep, 160 px (teacher)=wide-160" \
    "distilled 160 -> 112 (12 of 16 epochs)=distilled-112" \
    "distilled 160 -> 112, 24 epochs on the CPU=multilab-kd" \
    "SimCLR backbone (8 epochs) + the recipe, on the CPU=multilab-pt" "ensemble 112 + 160=ens-112-160" \
    "ensemble 112 + 160 + wide=ens-3"
