#!/usr/bin/env bash
# Transfer learning on the embedded digits (README, docs/training.md): pretrain LeNet-5 on digits 0-4,
# then train on digits 5-9 with 10 training images per class (50 in all), once from the pretrained
# weights (--init: backbone loaded, classifier head replaced) and once from scratch, with the same
# options, for 20 epochs (the digits default) and for 40; test on all the 5-9 test images (about 180).
#   bash bench/transfer_digits.sh [SEEDS...]      (default: seeds 0 1 2 3 4; runs go to $OUT, runs/transfer)
set -euo pipefail
SEEDS=("${@:-0 1 2 3 4}")
OUT=${OUT:-runs/transfer}
FEW=(--classes 5,6,7,8,9 --train-per-class 10 --progress off)
acc() { python -c "import json,sys; print(f\"{100 * json.load(open(sys.argv[1]))['test_accuracy']:.2f}\")" "$1/metrics.json"; }
printf "%-5s %9s | %-19s | %-19s\n" "" "" "20 epochs" "40 epochs"
printf "%-5s %9s | %9s %9s | %9s %9s\n" seed pretrain scratch finetuned scratch finetuned
for s in ${SEEDS[*]}; do
  d=$OUT/seed$s
  mkdir -p "$d"
  [ -f "$d/pretrain/checkpoint.pt" ] ||
    python -m fastconv train --classes 0,1,2,3,4 --seed "$s" --progress off --out "$d/pretrain" > "$d/pretrain.log"
  row=()
  for e in 20 40; do
    python -m fastconv train "${FEW[@]}" --epochs $e --seed "$s" --out "$d/scratch$e" > "$d/scratch$e.log"
    python -m fastconv train "${FEW[@]}" --epochs $e --seed "$s" --init "$d/pretrain/checkpoint.pt" \
      --out "$d/finetune$e" > "$d/finetune$e.log"
    row+=("$(acc "$d/scratch$e")%" "$(acc "$d/finetune$e")%")
  done
  printf "%-5s %9s | %9s %9s | %9s %9s\n" "$s" "$(acc "$d/pretrain")%" "${row[@]}"
done
