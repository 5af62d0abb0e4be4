#!/usr/bin/env bash
# What a GPU box runs first: one GPU, under 10 minutes, after `pip install -e '.[gpu]'`
# (or '.[vllm]'). It
#   0. checks that the NVIDIA driver supports the CUDA that torch was built for;
#   1. trains (or reuses) the tiny profile's world and runs its 200 questions through the
#      vLLM backend and the HF engine: greedy agreement, levels of both (identical levels
#      are not expected: the difference is explained in the output), throughput ratio;
#   2. runs 8 GRPO steps of TRL with vLLM colocate through `python -m synergy train grpo`.
# Put its output in the issue / PR. OUT=dir keeps the outputs (default: a temp folder).
#     bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-$(mktemp -d -t synergy-gpu-check-XXXX)}
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
start=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" bench/gpu_check.py cuda   # stops here when the driver is too old for torch's CUDA
"$PY" - <<'PYEOF'
import torch
from synergy.runs import package_versions
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for name, version in package_versions(["vllm", "transformers", "trl", "accelerate",
                                       "peft", "deepspeed", "unsloth"]).items():
    print(name, version or "not installed")
PYEOF

timeout 420 "$PY" bench/gpu_check.py engines --out "$OUT"
timeout 240 "$PY" bench/gpu_check.py grpo --out "$OUT"
echo "[gpu-check] done in $(( $(date +%s) - start )) s; outputs in $OUT"
