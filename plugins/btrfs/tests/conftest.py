"""Loop-mounted btrfs filesystems for the btrfs driver's tests.

``make_btrfs()`` builds a sparse image, formats it, attaches a loop device and mounts it; teardown
unmounts it, detaches the loop device and asserts that neither is left. Tests that need one are
skipped, with the reason, only when the host cannot do this at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from lamina.testing import mounts_under


def host_cannot_loop_mount_btrfs() -> str | None:
    """Why this host cannot run loop-mounted btrfs tests, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to attach loop devices and mount btrfs"
    for tool in ("mkfs.btrfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: btrfs-progs, mount)"
    with open("/proc/filesystems") as f:
        known = {line.split()[-1] for line in f if line.strip()}
    if "btrfs" not in known:
        subprocess.run(["modprobe", "btrfs"], capture_output=True)
        with open("/proc/filesystems") as f:
            if "btrfs" not in {line.split()[-1] for line in f if line.strip()}:
                return "the kernel has no btrfs support (not in /proc/filesystems, modprobe btrfs failed)"
    return None


def run(*cmd: str, input: bytes | None = None) -> str:
    """Run *cmd*; AssertionError with its stderr if it fails. Returns stdout."""
    proc = subprocess.run(cmd, capture_output=True, input=input)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def _loop_devices_of(image: str) -> list[str]:
    out = run("losetup", "--associated", image)  # "/dev/loopN: []: (image)" per device
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


class LoopBtrfs:
    """One sparse image, formatted btrfs, on a loop device, mounted at :attr:`mount`."""

    def __init__(self, workdir: Path, size: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.image = str(workdir / "btrfs.img")
        self.mount = str(workdir / "mnt")
        os.makedirs(self.mount, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size)
        run("mkfs.btrfs", "-q", self.image)
        self.device = run("losetup", "--find", "--show", self.image).strip()
        try:
            run("mount", "-t", "btrfs", self.device, self.mount)
        except BaseException:
            run("losetup", "-d", self.device)
            raise

    def teardown(self) -> None:
        """Unmount (leftover mounts below first, reported), detach, and assert both are gone."""
        leaked = [m for m in mounts_under(self.mount) if m != os.path.realpath(self.mount)]
        try:
            for point in sorted(leaked, key=len, reverse=True):
                run("umount", point)
            run("umount", self.mount)
        finally:
            run("losetup", "-d", self.device)  # on a busy device this only sets autoclear
        assert not mounts_under(self.mount), f"{self.mount} is still mounted"
        # A lazily detached mount (Go's shutdown uses MNT_DETACH) pins the filesystem until the kernel
        # releases it after an RCU grace period; losetup -d then only sets autoclear. Allow for that.
        deadline = time.monotonic() + 10
        while _loop_devices_of(self.image) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _loop_devices_of(self.image), f"loop device of {self.image} is still attached after 10 s"
        os.unlink(self.image)
        assert not leaked, f"mounts were left below the btrfs filesystem (cleaned up now): {leaked}"


@pytest.fixture(scope="session")
def btrfs_host() -> None:
    """Skip (with the reason) when the host cannot loop-mount btrfs."""
    why = host_cannot_loop_mount_btrfs()
    if why:
        pytest.skip(f"btrfs loop-mount tests skipped: {why}")


@pytest.fixture
def make_btrfs(btrfs_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., str]]:
    """A factory: ``make_btrfs(size=2 GiB)`` returns the mount directory of a new loop-mounted btrfs."""
    made: list[LoopBtrfs] = []

    def make(size: int = 2 << 30) -> str:
        fs = LoopBtrfs(tmp_path_factory.mktemp("btrfs"), size)
        made.append(fs)
        return fs.mount

    yield make
    errors = []
    for fs in reversed(made):
        try:
            fs.teardown()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "; ".join(errors)


@pytest.fixture
def btrfs_mount(make_btrfs: Callable[..., str]) -> str:
    """The mount directory of a fresh 2 GiB (sparse) loop-mounted btrfs."""
    return make_btrfs()
