#!/usr/bin/env bash
# Installs lamina with all three drivers into .venv and runs the demo on ./demo-store.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --config-settings editable_mode=compat \
    -e . -e ./plugins/vfs -e ./plugins/overlay -e ./plugins/btrfs
.venv/bin/python -m compileall -q core plugins >/dev/null
exec .venv/bin/python scripts/demo.py "${@:-demo-store}"
