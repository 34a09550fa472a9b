#!/usr/bin/env bash
# Installs what lamina's tests need on a fresh Debian 12 machine: the Go reference tool and the
# filesystem tools (Debian packages, root only), then a venv with lamina, its three driver
# distributions and the test tools. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(containers-storage btrfs-progs fuse-overlayfs xfsprogs busybox-static jq debootstrap e2fsprogs
      skopeo podman buildah crun)
missing=()
for pkg in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "note: not root, so these Debian packages were not installed: ${missing[*]}" >&2
        echo "      tests that need them will be skipped" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# "compat" editable installs are plain path entries: no import hook to load at every start-up.
# The editables are named here, not in requirements-dev.txt: pip applies --config-settings only to
# requirements given on its command line, so a requirements file would get import-hook installs.
.venv/bin/python -m pip install -q --config-settings editable_mode=compat \
    -e . -e ./plugins/vfs -e ./plugins/overlay -e ./plugins/btrfs
.venv/bin/python -m pip install -q -r requirements-dev.txt
# Byte-compile now: imports then read cached bytecode even where PYTHONDONTWRITEBYTECODE is set
# (it matters for the CLI's start-up time).
.venv/bin/python -m compileall -q core plugins >/dev/null
