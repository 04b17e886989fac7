#!/usr/bin/env bash
# The README's GPU column, on a machine with an NVIDIA GPU: clip_service throughput (images/s,
# fp16), the CLIP side per segment against the authors' way, and, where vLLM and a model are
# present, LVLM calls/s in each scoring mode. Prints one table (benchmarks/gpu.py says more).
#
#   bash benchmarks/gpu.sh [--quick] [--lvlm-model Qwen/Qwen2.5-VL-7B-Instruct] [--output FILE]
#
# PYTHON picks the interpreter (default: .venv/bin/python if there, else python3); it needs
# torch with CUDA, open_clip_torch, grpcio(-health-checking, -reflection), protobuf, numpy,
# pillow and opencv (the project's install, or those packages on PYTHONPATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# The generated gRPC modules and the services, without installing the project.
export PYTHONPATH="$PWD/protos:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    echo "nvidia-smi not found: is this a machine with an NVIDIA GPU?" >&2
fi
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "torch sees no CUDA device; for a dry run of this script on a CPU: $PYTHON -m benchmarks.gpu --device cpu --quick" >&2
    exit 1
}
exec "$PYTHON" -m benchmarks.gpu --device cuda "$@"
