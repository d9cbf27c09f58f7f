#!/usr/bin/env bash
# Issue #16's GPU measurement on one H100/H200, in under 10 minutes of device time:
#   1. build the sd15 preset's random-weight model once (a minute or two on the host CPU);
#   2. the ablation: each DDPOConfig throughput switch added in turn, at the sd15 preset's
#      sizes with 10 DDIM steps and one sampling batch of 16 per epoch (1 warm-up epoch, in
#      which compilation happens, then 1 timed epoch per row), MFU against the bf16 matmul peak
#      measured in the same run, graph breaks and host syncs per step;
#   3. a quarter epoch (4 x 16 samples x 50 steps, every timestep trained) with every switch;
#   4. LoRA training at train batch 1 with gradient checkpointing: peak memory (target 10 GB).
# Each step has its own time limit (150 + 240 + 150 + 50 s: one 10-minute device command), so a
# slow step cannot eat the others' time.
#
# Usage: bash benchmarks/gpu_throughput.sh [OUT_DIR]  (default benchmarks/out/gpu); needs the
# package installed with the bench group (pip install -e . --group bench) on a CUDA torch.
set -uo pipefail
out="${1:-benchmarks/out/gpu}"
mkdir -p "$out"
run() { python benchmarks/run.py --preset sd15 --device cuda "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, diffusers; print(torch.__version__, torch.version.cuda, diffusers.__version__)" \
  | tee -a "$out/gpu.txt"

# 1. The model folder (built on first use by every sd15 benchmark; here once, untimed).
timeout 150 python -c "
import sys; sys.path.insert(0, 'benchmarks')
import random_models; print(random_models.MODEL_FOLDERS['sd15']())" | tee "$out/model.txt"

# 2. The ablation (6 rows x 2 short epochs).
timeout 240 bash -c "$(declare -f run); run --only ablation --steps 10 --num-batches 1 \
  --warmup 1 --repeats 1 --out '$out/ablation'" 2>&1 | tee "$out/ablation.log"

# 3. A quarter epoch with every switch (the trainer's own phase times).
timeout 150 bash -c "$(declare -f run); run --only epoch --num-batches 4 --warmup 0 --repeats 1 \
  --compile --cuda-graphs --channels-last --prompt-cache 7 --async-reward \
  --out '$out/epoch'" 2>&1 | tee "$out/epoch.log"

# 4. Memory of LoRA training at train batch 1, with and without checkpointing.
timeout 50 bash -c "$(declare -f run); run --only memory --gradient-checkpointing \
  --out '$out/memory'" 2>&1 | tee "$out/memory.log"
ls -R "$out"
