"""A third-party driver distribution, built and pip-installed into a temporary venv, is found by
name, passes the conformance suite, and disappears when uninstalled."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "example-driver"


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that sees this environment's packages (lamina, pytest) through a .pth file."""
    root = tmp_path_factory.mktemp("third-party")
    env_dir = root / "venv"
    proc = _run([sys.executable, "-m", "venv", str(env_dir)])
    assert proc.returncode == 0, proc.stderr
    python = env_dir / "bin" / "python"
    inner_site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    outer_sites = [p for p in site.getsitepackages() if Path(p).is_dir()]
    # "import" lines in a .pth run at start-up; addsitedir also processes the outer .pth files
    # (editable installs of lamina and its plugins live there).
    Path(inner_site, "zz_outer_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in outer_sites)
    )
    return env_dir


def _drivers_in(python: Path) -> str:
    proc = _run([str(python), "-c",
                 "from lamina.drivers import installed_drivers\n"
                 "for d in installed_drivers(): print(d.name, d.distribution, d.version)"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_install_discover_conform_uninstall(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    source = tmp_path / "example-driver"
    shutil.copytree(FIXTURE, source)
    proc = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                 str(source)])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    listing = _drivers_in(python)
    assert "example lamina-example-driver 1.2.3" in listing
    assert "vfs lamina-vfs" in listing

    test_file = tmp_path / "test_example_conformance.py"
    test_file.write_text(textwrap.dedent(
        """
        from lamina.testing import DriverConformance

        class TestExample(DriverConformance):
            driver_name = "example"
        """
    ))
    proc = _run([str(python), "-m", "pytest", "-q", "-p", "lamina.testing", "-p", "no:cacheprovider",
                 "--import-mode=importlib", str(test_file)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout

    proc = _run([str(python), "-m", "pip", "uninstall", "-y", "-q", "lamina-example-driver"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "example" not in _drivers_in(python).split()
    proc = _run([str(python), "-c",
                 "from lamina.drivers import load_driver_class\n"
                 "from lamina.errors import DriverNotFound\n"
                 "try:\n    load_driver_class('example')\nexcept DriverNotFound as e:\n    print('gone:', e)"])
    assert "gone:" in proc.stdout, proc.stdout + proc.stderr
