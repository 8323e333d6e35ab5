#!/usr/bin/env bash
# Transfer learning on the embedded digits (README, docs/training.md): pretrain LeNet-5 on digits 0-4,
# then train on digits 5-9 with 10 training images per class (50 in all), once from the pretrained
# weights (--init; head replaced) and once from scratch, same options; test on all 5-9 test images.
#   bash bench/transfer_digits.sh [SEEDS...]      (default: seeds 0 1 2 3 4; runs go to runs/transfer/)
set -euo pipefail
SEEDS=("${@:-0 1 2 3 4}")
OUT=${OUT:-runs/transfer}
FEW=(--classes 5,6,7,8,9 --train-per-class 10 --epochs 40 --progress off)
acc() { python -c "import json,sys; print(f\"{100 * json.load(open(sys.argv[1]))['test_accuracy']:.2f}\")" "$1/metrics.json"; }
printf "%-5s %10s %12s %12s %12s\n" seed "pretrain" "scratch" "fine-tuned" "ft --finetune-lr 0.01"
for s in ${SEEDS[*]}; do
  d=$OUT/seed$s
  mkdir -p "$d"
  python -m fastconv train --classes 0,1,2,3,4 --seed "$s" --progress off --out "$d/pretrain" > "$d.pretrain.log"
  python -m fastconv train "${FEW[@]}" --seed "$s" --out "$d/scratch" > "$d.scratch.log"
  python -m fastconv train "${FEW[@]}" --seed "$s" --init "$d/pretrain/checkpoint.pt" --out "$d/finetune" > "$d.finetune.log"
  python -m fastconv train "${FEW[@]}" --seed "$s" --init "$d/pretrain/checkpoint.pt" --finetune-lr 0.01 \
    --out "$d/finetune_lr" > "$d.finetune_lr.log"
  printf "%-5s %9s%% %11s%% %11s%% %11s%%\n" "$s" "$(acc "$d/pretrain")" "$(acc "$d/scratch")" "$(acc "$d/finetune")" \
    "$(acc "$d/finetune_lr")"
done
