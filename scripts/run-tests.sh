#!/usr/bin/env bash
# Installs what the tests need (Debian packages when root, the venv) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec .venv/bin/python -m pytest -q -ra "$@"
