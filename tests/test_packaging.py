"""Packagers install the distributions one by one: the core with vfs alone is a working store;
adding lamina-overlay adds overlay; removing it removes it. Run in a fresh venv (dependencies
from the package index), with real wheels built from this tree."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


@pytest.mark.slow
def test_core_with_vfs_only_then_overlay_added_and_removed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, src / item)
    shutil.copytree(ROOT / "core", src / "core", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for plugin in ("vfs", "overlay"):
        shutil.copytree(ROOT / "plugins" / plugin, src / "plugins" / plugin,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tests"))
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    proc = _run(pip + ["setuptools>=68", "wheel"])
    if proc.returncode != 0:
        pytest.skip(f"the package index is not reachable from here: {proc.stderr.strip()[-300:]}")
    proc = _run(pip + ["--no-build-isolation", str(src), str(src / "plugins" / "vfs")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lamina = str(venv / "bin" / "lamina")

    proc = _run([lamina, "drivers", "-j"])
    assert proc.returncode == 0, proc.stderr
    assert [d["name"] for d in json.loads(proc.stdout)] == ["vfs"]

    store = ["--graph", str(tmp_path / "g"), "--run", str(tmp_path / "r")]
    proc = _run([lamina, *store, "create-layer", "-n", "works"])  # no driver named: the only one is used
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run([lamina, *store, "--storage-driver", "vfs", "layers"])
    assert "works" in proc.stdout

    proc = _run(pip + ["--no-build-isolation", str(src / "plugins" / "overlay")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [d["name"] for d in json.loads(_run([lamina, "drivers", "-j"]).stdout)]
    assert names == ["overlay", "vfs"]

    proc = _run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", "lamina-overlay"])
    assert proc.returncode == 0, proc.stderr
    assert [d["name"] for d in json.loads(_run([lamina, "drivers", "-j"]).stdout)] == ["vfs"]
