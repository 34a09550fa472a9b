"""Images on the OVERLAY driver between lamina (lamina.transfer) and the Go tools.

* podman runs an image lamina imported into an overlay store;
* lamina reads, mounts and exports an image skopeo wrote into an overlay store;
* skopeo copies out an image lamina imported into an overlay store.

skopeo and podman run as interop-smoke.sh runs them: in a private mount + network namespace
with tmpfs over /run and /var/tmp (and, for podman, a containers.conf that keeps its state
under tmp). Every test ends by shutting down both tools' overlay drivers on its stores and
checking that no mount is left below its directories.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from lamina.store import Store
from lamina.testing.interop import sandbox
from lamina.testing import mounts_under
from lamina.transfer import chain_layer_ids, export_image, import_image

TOOLS = Path("/work/shared/tools")
MAKE_TEST_IMAGE = TOOLS / "make-test-image.sh"
GO = shutil.which("containers-storage")
SKOPEO = shutil.which("skopeo")
PODMAN = shutil.which("podman")
UNSHARE = shutil.which("unshare")


def _why_skip() -> str | None:
    if not TOOLS.is_dir() or not MAKE_TEST_IMAGE.exists():
        return f"{MAKE_TEST_IMAGE} is missing (the shared tools folder is absent)"
    if os.geteuid() != 0:
        return "overlay mounts and the skopeo/podman sandbox need root"
    if UNSHARE is None:
        return "the skopeo/podman sandbox needs unshare(1)"
    for tool in ("jq", "busybox"):
        if shutil.which(tool) is None:
            return f"make-test-image.sh needs {tool} (apt-get install jq busybox-static)"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "the kernel has no overlay filesystem"
    return None


pytestmark = [pytest.mark.slow]
_WHY = _why_skip()
if _WHY:
    pytestmark.append(pytest.mark.skip(reason=_WHY))

needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (apt-get install skopeo)")
needs_podman = pytest.mark.skipif(PODMAN is None or shutil.which("crun") is None,
                                  reason="podman/crun are not installed (apt-get install podman crun)")

def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    proc = sandbox(SKOPEO or "skopeo", *args)
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed:\n{proc.stderr}"
    return proc


def cs_ref(graph: Path, run: Path, name: str) -> str:
    return f"containers-storage:[overlay@{graph}+{run}]{name}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        index = json.loads((directory / "index.json").read_bytes())
        self.manifest_digest = index["manifests"][0]["digest"]
        self.manifest = json.loads(self.blob(self.manifest_digest).read_bytes())
        self.config = self.blob(self.manifest["config"]["digest"]).read_bytes()
        self.diff_ids = json.loads(self.config)["rootfs"]["diff_ids"]

    def blob(self, digest: str) -> Path:
        return self.dir / "blobs" / "sha256" / digest.split(":", 1)[1]

    def layer_tars(self) -> list[bytes]:
        out = []
        for desc in self.manifest["layers"]:
            data = self.blob(desc["digest"]).read_bytes()
            out.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        return out


@pytest.fixture(scope="module")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The image make-test-image.sh builds (busybox rootfs + a layer that adds, modifies, deletes)."""
    out = tmp_path_factory.mktemp("ovl-testimage") / "img"
    env = dict(os.environ, BUSYBOX=shutil.which("busybox") or "/bin/busybox")
    made = subprocess.run(["bash", str(MAKE_TEST_IMAGE), str(out)], capture_output=True, text=True, env=env)
    if made.returncode != 0:
        pytest.skip(f"make-test-image.sh failed: {made.stderr.strip()}")
    return Layout(out)


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Graph and run roots (the run root short: podman wants it under 50 characters). At the
    end both tools' overlay drivers are shut down and no mount may be left."""
    short = Path(tempfile.mkdtemp(prefix="lovi-", dir="/tmp"))
    graph, run = short / "g", short / "r"
    yield graph, run
    problems = []
    if graph.exists():
        store = Store(str(graph), str(run), driver_name="overlay")
        store.shutdown(force=True)
        if GO is not None:
            proc = subprocess.run([GO, "--graph", str(graph), "--run", str(run), "--storage-driver", "overlay",
                                   "shutdown", "-f"], capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                problems.append(f"containers-storage shutdown -f: {proc.stderr}")
    left = mounts_under(str(short)) + mounts_under(str(tmp_path))
    for point in sorted(set(left), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    shutil.rmtree(short, ignore_errors=True)
    assert not left, f"mounts left after shutting down both drivers: {left}"
    assert not problems, "\n".join(problems)


def podman_env(workdir: Path) -> dict[str, str]:
    conf = workdir / "containers.conf"
    conf.write_text(f'''[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
lock_type = "file"
tmp_dir = "{workdir}/libpod-tmp"
events_logger = "file"
events_logfile_path = "{workdir}/libpod-tmp/events.log"
cgroup_manager = "cgroupfs"
runtime = "crun"
[network]
network_config_dir = "{workdir}/netconf"
''')
    (workdir / "tmp").mkdir(exist_ok=True)
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF": str(conf), "TMPDIR": str(workdir / "tmp"),
            "HOME": str(workdir)}


@needs_podman
def test_podman_runs_image_imported_by_lamina_on_overlay(test_image: Layout, roots: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    graph, run = roots
    store = Store(str(graph), str(run), driver_name="overlay")
    try:
        image = import_image(store, f"oci:{test_image.dir}:latest", "test")
        assert image.id == sha256(test_image.config).split(":")[1]
        assert [l.id for l in store.layers()] == chain_layer_ids(test_image.diff_ids)
    finally:
        store.shutdown(force=True)
    script = "cat /etc/added /etc/motd; if ls /etc/deleteme; then echo DELETEME-PRESENT; else echo DELETEME-ABSENT; fi"
    proc = sandbox(PODMAN or "podman", "--root", str(graph), "--runroot", str(run), "--storage-driver", "overlay",
                   "run", "--rm", "--network", "none", "--cgroups", "disabled", "docker.io/library/test:latest",
                   "/bin/sh", "-c", script, env=podman_env(tmp_path))
    assert proc.returncode == 0, f"podman failed: {proc.stderr}"
    lines = proc.stdout.splitlines()
    assert "added in layer2" in lines
    assert "layer2 motd" in lines
    assert "DELETEME-ABSENT" in lines and "DELETEME-PRESENT" not in lines


@needs_skopeo
def test_lamina_reads_mounts_and_exports_skopeo_overlay_store(test_image: Layout, roots: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    graph, run = roots
    skopeo("copy", "-q", f"oci:{test_image.dir}:latest", cs_ref(graph, run, "test:latest"))
    store = Store(str(graph), str(run), driver_name="overlay")
    try:
        images = store.images()
        assert [i.names for i in images] == [["docker.io/library/test:latest"]]
        image = images[0]
        assert image.id == sha256(test_image.config).split(":")[1]
        assert [l.id for l in store.layers()] == chain_layer_ids(test_image.diff_ids)
        with store.mounted_layer(image.top_layer) as root:
            assert Path(root, "etc/added").read_text() == "added in layer2\n"
            assert Path(root, "etc/motd").read_text() == "layer2 motd\n"
            assert not os.path.lexists(os.path.join(root, "etc/deleteme"))
            assert os.path.isfile(os.path.join(root, "bin/busybox"))
        ctr = store.create_container(image=image.id)
        with store.mounted_layer(ctr.id) as root:
            Path(root, "etc/motd").write_text("container motd\n")
            assert Path(root, "etc/added").read_text() == "added in layer2\n"
        store.delete_container(ctr.id)
        out = tmp_path / "out"
        export_image(store, "test", f"oci:{out}:latest", compression="none")
    finally:
        store.shutdown(force=True)
    lay = Layout(out)
    assert lay.config == test_image.config
    assert lay.diff_ids == test_image.diff_ids
    assert [sha256(t) for t in lay.layer_tars()] == test_image.diff_ids
    assert [d["digest"] for d in lay.manifest["layers"]] == test_image.diff_ids
    # and the Go CLI still sees the store as skopeo left it
    if GO is not None:
        proc = subprocess.run([GO, "--graph", str(graph), "--run", str(run), "--storage-driver", "overlay",
                               "images", "-q"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.split() == [image.id], proc


@needs_skopeo
def test_skopeo_copies_out_image_imported_by_lamina_on_overlay(test_image: Layout, roots: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    graph, run = roots
    store = Store(str(graph), str(run), driver_name="overlay")
    try:
        import_image(store, f"oci:{test_image.dir}:latest", "test")
    finally:
        store.shutdown(force=True)
    out = tmp_path / "out"
    skopeo("copy", "-q", "--dest-oci-accept-uncompressed-layers",
           cs_ref(graph, run, "docker.io/library/test:latest"), f"oci:{out}:latest")
    lay = Layout(out)
    assert lay.config == test_image.config
    assert [sha256(t) for t in lay.layer_tars()] == test_image.diff_ids
    assert [d["digest"] for d in lay.manifest["layers"]] == test_image.diff_ids
