"""podman runs an image whose layers lamina applied on overlay (needs podman, crun, busybox-static, jq)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from lamina.store import Store
from lamina.testing.interop import sandbox
from lamina.testing import mounts_under

TOOLS = Path("/work/shared/tools")
MISSING = [t for t in ("podman", "crun", "unshare", "jq") if shutil.which(t) is None]
if not (TOOLS / "make-test-image.sh").exists():
    MISSING.append("make-test-image.sh")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"missing for the podman test: {', '.join(MISSING)} "
                                             "(apt-get install podman crun busybox-static jq)"),
]

def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def test_podman_runs_image_applied_by_lamina(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    layout = tmp_path / "img"
    made = subprocess.run(["bash", str(TOOLS / "make-test-image.sh"), str(layout)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"make-test-image.sh failed: {made.stderr.strip()}")
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest_bytes = _blob(layout, manifest_digest).read_bytes()
    manifest = json.loads(manifest_bytes)
    config_digest = manifest["config"]["digest"]
    config_bytes = _blob(layout, config_digest).read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == manifest_digest.split(":")[1]

    g = tmp_path / "g"
    short = Path(tempfile.mkdtemp(prefix="lov-", dir="/tmp"))  # podman wants a run root under 50 characters
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    r = short / "r"
    store = Store(str(g), str(r), driver_name="overlay")
    try:
        parent = None
        for layer in manifest["layers"]:
            with open(_blob(layout, layer["digest"]), "rb") as f:
                parent = store.create_layer(parent=parent, diff=f, writeable=False).id
        image = store.create_image(id=config_digest.split(":")[1], top_layer=parent,
                                   names=["localhost/test:latest"], digest=manifest_digest)
        store.set_big_data("image", image.id, f"manifest-{manifest_digest}", manifest_bytes)
        store.set_big_data("image", image.id, "manifest", manifest_bytes)
        store.set_big_data("image", image.id, config_digest, config_bytes)
    finally:
        store.shutdown(force=True)

    conf = tmp_path / "containers.conf"
    conf.write_text(f'''[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
lock_type = "file"
tmp_dir = "{tmp_path}/libpod-tmp"
events_logger = "file"
events_logfile_path = "{tmp_path}/libpod-tmp/events.log"
cgroup_manager = "cgroupfs"
runtime = "crun"
[network]
network_config_dir = "{tmp_path}/netconf"
''')
    (tmp_path / "tmp").mkdir()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF": str(conf), "TMPDIR": str(tmp_path / "tmp"),
           "HOME": str(tmp_path)}
    podman = ["podman", "--root", str(g), "--runroot", str(r), "--storage-driver", "overlay"]
    run = [*podman, "run", "--rm", "--network", "none", "--cgroups", "disabled", "localhost/test:latest",
           "/bin/sh", "-c", "cat /etc/added /etc/motd; ls /etc"]
    proc = sandbox(*run, env=env)
    assert proc.returncode == 0, f"podman failed: {proc.stderr}"
    lines = proc.stdout.splitlines()
    assert "added in layer2" in lines
    assert "layer2 motd" in lines
    assert "deleteme" not in lines, "the whiteout of layer 2 must hide /etc/deleteme"
    assert {"passwd", "group", "motd", "added"} <= set(lines)

    # lamina still reads the store after podman used it
    store = Store(str(g), str(r), driver_name="overlay")
    try:
        assert [i.names for i in store.images()] == [["localhost/test:latest"]]
        with store.mounted_layer(parent) as root:
            assert (Path(root) / "etc" / "added").read_text() == "added in layer2\n"
            assert not (Path(root) / "etc" / "deleteme").exists()
    finally:
        store.shutdown(force=True)
    assert not mounts_under(str(tmp_path)) and not mounts_under(str(short))
