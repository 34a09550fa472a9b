#!/usr/bin/env python3
"""Cold start-up time of the lamina CLI, next to containers-storage's.

Runs each command N times as a fresh process and prints the median wall time:

* ``lamina --version``      (no store, no driver imported)
* ``lamina drivers``        (imports each driver module to ask whether it works here)
* ``containers-storage version`` (Go; opens a throw-away vfs store, as every Go command does)

and the ratios. Python is measured twice: as the environment is configured, and with a
bytecode cache kept outside the source tree (``PYTHONPYCACHEPREFIX``), because an
environment with ``PYTHONDONTWRITEBYTECODE`` recompiles every imported module on each run.

Usage: .venv/bin/python benchmarks/cli_startup.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_MS = 150.0


def lamina_command() -> list[str]:
    exe = Path(sys.executable).parent / "lamina"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lamina"]


def median_ms(argv: list[str], runs: int, env: dict[str, str]) -> float:
    subprocess.run(argv, capture_output=True, env=env, check=False)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, check=False)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=21, help="runs per command (default 21)")
    args = parser.parse_args()

    lamina = lamina_command()
    go = shutil.which("containers-storage")
    as_is = dict(os.environ)
    cached = dict(os.environ)
    cached.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="lamina-startup-") as tmp:
        cached["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        rows: list[tuple[str, float]] = []
        for label, env in (("as configured", as_is), ("bytecode cached", cached)):
            suffix = "" if env is as_is else " [bytecode cached]"
            rows.append((f"lamina --version{suffix}", median_ms([*lamina, "--version"], args.runs, env)))
            rows.append((f"lamina drivers{suffix}", median_ms([*lamina, "-g", os.path.join(tmp, "g"), "drivers"],
                                                          args.runs, env)))
        go_ms = None
        if go is not None:
            store = ["-g", os.path.join(tmp, "go-g"), "-R", os.path.join(tmp, "go-r"), "-s", "vfs"]
            go_ms = median_ms(["containers-storage", *store, "version"], args.runs, as_is)
            rows.append(("containers-storage version", go_ms))

    width = max(len(name) for name, _ in rows)
    env_note = "PYTHONDONTWRITEBYTECODE=1" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "default"
    print(f"median of {args.runs} cold starts (Python environment: {env_note}; budget {BUDGET_MS:.0f} ms)")
    for name, ms in rows:
        ratio = f"  x{ms / go_ms:5.1f} of Go" if go_ms and not name.startswith("containers-storage") else ""
        over = "  OVER BUDGET" if name.startswith("lamina") and ms > BUDGET_MS else ""
        print(f"  {name:<{width}}  {ms:7.1f} ms{ratio}{over}")
    if go_ms is None:
        print("  (containers-storage not installed: no Go comparison)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
