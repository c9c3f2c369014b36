#!/usr/bin/env bash
# Idempotent set-up: a .venv in the repository root with compressor and its test tools.
# Re-running is cheap: it reinstalls only when pyproject.toml or the constraints change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.compressor-setup"
want="$(cat "$root/pyproject.toml" "$root/scripts/constraints.txt" | sha256sum | cut -d' ' -f1)"
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
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$root/scripts/constraints.txt" torch
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$root/scripts/constraints.txt" -e "$root[dev,hf]"
link_import_names
echo "$want" > "$stamp"
echo "compressor set up in $venv" >&2
