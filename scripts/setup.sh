#!/usr/bin/env bash
# Idempotent set-up: a .venv in the repository root with compressor and its test tools.
# Re-running is cheap: it reinstalls only when pyproject.toml or the constraints change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.compressor-setup"
want="$(cat "$root/pyproject.toml" "$root/scripts/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/compressor" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$root/scripts/constraints.txt" torch
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$root/scripts/constraints.txt" -e "$root[dev]"
echo "$want" > "$stamp"
echo "compressor set up in $venv" >&2
