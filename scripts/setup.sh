#!/usr/bin/env bash
# Idempotent set-up: a .venv in the repository root with compressor and its test tools.
# Re-running is cheap: it reinstalls only when pyproject.toml or the constraints change.
#   bash scripts/setup.sh            .venv        (CPU torch, constraints.txt)
#   bash scripts/setup.sh --vision   .venv-vision (torch + torchvision, constraints-vision.txt)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
constraints="$root/scripts/constraints.txt"
extras="dev,hf,sparse,compressed-tensors,lightning,accelerate,submitit,tensorboard,mlflow,onnx"  # every extra whose tests run with the real packages
case "${1:-}" in
  "") ;;
  --vision)
    venv="$root/.venv-vision"
    constraints="$root/scripts/constraints-vision.txt"
    extras="dev,vision"
    ;;
  *) echo "usage: $0 [--vision]" >&2; exit 2 ;;
esac
stamp="$venv/.compressor-setup"
want="$(cat "$root/pyproject.toml" "$constraints" | sha256sum | cut -d' ' -f1)"
link_import_names() {
  # plugins/ is imported as compressor_plugins; mypy needs a folder of that name to find it.
  mkdir -p "$venv/import-names"
  ln -sfn "$root/plugins" "$venv/import-names/compressor_plugins"
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/compressor" ]; then
  link_import_names
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" torch
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" -e "$root[$extras]"
link_import_names
echo "$want" > "$stamp"
echo "compressor set up in $venv" >&2
