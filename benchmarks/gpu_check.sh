#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py) with this machine's own python3, torch and transformers: the
# project comes from this checkout via PYTHONPATH, nothing is installed and nothing is downloaded.
#   benchmarks/gpu_check.sh [OUT_DIR] [extra gpu_check.py options]     (default OUT_DIR: gpu_check_out)
# Runs in at most 8 minutes on one CUDA GPU; writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md.
# GLUE / TinyShakespeare come from $SLTLAB_DATA when set (else synthetic data of the same layout).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_out}"
shift || true
PY="${PYTHON:-python3}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: this torch sees no CUDA GPU (torch ' + torch.__version__ + ')')"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
exec timeout 480 "$PY" benchmarks/gpu_check.py --device "${GPU_CHECK_DEVICE:-cuda}" --precision bf16 --out "$OUT" "$@"
