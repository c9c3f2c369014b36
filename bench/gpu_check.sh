#!/usr/bin/env bash
# The GPU check of issue 16 as one prepared command: under 8 minutes on one H200.
#
# Here, once (needs the package index): the wheels the GPU machine lacks, for its Python 3.12
#   bash bench/gpu_check.sh --fetch-wheels          -> .gpu-wheels/ (ignored by git)
# There, through the device tool (nothing can be downloaded on that machine):
#   run(command="bash bench/gpu_check.sh", carry=[".gpu-wheels"], timeout_s=540)
# Anywhere without CUDA, the same command installs nothing new, skips every CUDA test and
# section with its reason, and still writes the JSON (the step and training code run tiny on
# CPU with --cpu-smoke, which is what the test suite checks).
#
# Results: $OUT/gpu_check.json (sections), $OUT/cuda-tests.txt (pytest -m cuda), $OUT/log.txt.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
wheels=.gpu-wheels
if [ "${1:-}" = "--fetch-wheels" ]; then
  # exactly the versions of .venv, without dependencies (torch and the rest are there already)
  py=.venv/bin/python
  pins=$("$py" -m pip freeze | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|mnist1d|torch[-_]pruning|pluggy)==')
  # shellcheck disable=SC2086
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d "$wheels" $pins
  ls "$wheels"
  exit 0
fi
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
python="${PYTHON:-python3}"  # PYTHON: another interpreter (the test suite passes its own)
if [ -d "$wheels" ] && ! "$python" -c 'import compressor_plugins' 2>/dev/null; then
  # the machine's own torch (CUDA) and packages, plus ours from the carried wheels (only where
  # compressor is not installed yet — compressor_plugins imports only from an install; the
  # wheels are for the GPU machine's Python 3.12)
  "$python" -m venv --system-site-packages /tmp/compressor-gpu-venv
  python=/tmp/compressor-gpu-venv/bin/python
  "$python" -m pip install -q --no-index --find-links "$wheels" --no-build-isolation -e . \
    || { echo "offline install failed"; exit 1; }
fi
"$python" -c 'import torch, compressor; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
# the CUDA-marked tests (skipped with a reason where there is no GPU)
timeout 180 "$python" -m pytest -m cuda -q -rs -p no:cacheprovider tests > "$out/cuda-tests.txt" 2>&1
echo "cuda tests: exit $? ($(tail -1 "$out/cuda-tests.txt"))"
smoke=()
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || smoke=(--cpu-smoke)
PYTHONUNBUFFERED=1 timeout 420 "$python" bench/gpu_check.py --out "$out" "${smoke[@]}" "$@"
