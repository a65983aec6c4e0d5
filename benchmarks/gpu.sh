#!/usr/bin/env bash
# CUDA paths and GPU timings, run from the repository root on a machine with a GPU:
#   bash benchmarks/gpu.sh FASHION_MNIST_DIR
# Checks that augmentation matches the CPU, that bf16 (auto), fp16 with its grad scaler and
# torch.compile train, then times the training step and the Fashion-MNIST recipe on the GPU.
set -euo pipefail
data=${1:?give the folder holding the Fashion-MNIST IDX files}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
out=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'bf16', torch.cuda.is_bf16_supported())"
python3 -m pytest -q tests/test_augment.py -k gpu
for precision in auto fp16; do
  python3 -m cnnkit train --data digits --device cuda --precision "$precision" --epochs 3 --out "$out" --name "digits-$precision" | tail -1
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['compute'])" "$out/digits-$precision/environment.json"
done
python3 -m cnnkit train --data digits --device cuda --compile --epochs 2 --out "$out" --name digits-compiled | tail -1
python3 benchmarks/train_step.py --device cuda --data-dir "$data" --epochs 2
time python3 -m cnnkit train --data fashion-mnist --data-dir "$data" --device cuda --epochs 7 --batch-size 256 \
  --label-smoothing 0.1 --lr 5e-3 --weight-decay 0.05 --out "$out" --name fashion | tail -3
