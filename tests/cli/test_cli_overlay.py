"""The differential harness on the OVERLAY driver: the same command sequences through
containers-storage (Go 1.43) and lamina, each on its own fresh overlay graph and run roots
under tmp, compared after the harness's normalisation (IDs, times, roots, program name).

The conftest's ``Tool`` hard-codes ``--storage-driver vfs``, so this module uses a small
subclass that passes ``overlay`` instead. Every test ends with ``shutdown -f`` through both
tools (the overlay driver keeps a private bind mount of ``GRAPH/overlay`` while a store is
open) and checks that no mount is left below the test's tmp directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from lamina.testing import mounts_under

pytestmark = pytest.mark.needs_go


def _overlay_works() -> str | None:
    if os.geteuid() != 0:
        return "overlay mounts need root"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "the kernel has no overlay filesystem"
    return None


_WHY_NOT = _overlay_works()
if _WHY_NOT:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_WHY_NOT)]


def _same_bytes(g, l):
    assert g.rc == l.rc == 0, (g, l)
    assert hashlib.sha256(g.raw_out).hexdigest() == hashlib.sha256(l.raw_out).hexdigest(), \
        "diff output is not byte-identical"


def _members(data: bytes) -> list[tuple[str, str, int, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return sorted((m.name, m.type.decode() if isinstance(m.type, bytes) else str(m.type), m.mode, m.uid, m.size)
                      for m in tar.getmembers())


def _same_members(g, l):
    assert g.rc == l.rc == 0, (g, l)
    assert _members(g.raw_out) == _members(l.raw_out)


def _both_fail(g, l):
    assert g.rc == 1 and l.rc == 1, (g, l)


@pytest.fixture
def otools(tmp_path: Path, h) -> Iterator[tuple[object, object]]:
    """Both tools on fresh overlay stores; at teardown ``shutdown -f`` and no mounts left."""

    class OverlayTool(h.Tool):
        def base(self) -> list[str]:
            return ["--graph", self.graph, "--run", self.run_root, "--storage-driver", "overlay"]

    go, la = h.make_tools(tmp_path)
    go = OverlayTool(go.kind, go.argv0, go.graph, go.run_root)
    la = OverlayTool(la.kind, la.argv0, la.graph, la.run_root)
    yield go, la
    problems = []
    for tool in (go, la):
        try:
            # Go 1.43's "shutdown -f" never returns while a layer is still mounted (it
            # decrements the mount count of a copy), so whatever a failed test left mounted
            # is unmounted first, and there is a timeout.
            listing = tool.run(["layers", "-j"], normalise=False, timeout=30)
            try:
                mounted = [l["id"] for l in json.loads(listing.raw_out or b"[]") if l.get("mountpoint")]
            except ValueError:
                mounted = []
            for layer in mounted:
                tool.run(["unmount", "-f", layer], timeout=30)
            res = tool.run(["shutdown", "-f"], timeout=30)
            if res.rc != 0:
                problems.append(f"{tool.kind}: shutdown -f failed:\n{res}")
        except subprocess.TimeoutExpired:
            problems.append(f"{tool.kind}: shutdown -f did not return within 30s")
    left = mounts_under(str(tmp_path))
    for point in sorted(set(left), key=len, reverse=True):  # clean up before failing
        subprocess.run(["umount", "-l", point], capture_output=True)
    assert not left, f"mounts left under {tmp_path} after shutdown -f: {left}"
    assert not problems, "\n".join(problems)


def test_overlay_layers_images_containers_and_data(otools, inputs, h):
    go, la = otools
    S = h.Step
    i = {k: str(v) for k, v in inputs.items()}
    big = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    steps = [
        S(["create-layer", "-n", "base-layer"], capture="L1"),
        S(["applydiff", "-f", i["base.tar"], "{L1}"]),
        S(["create-layer", "{L1}"], capture="L2"),
        S(["applydiff", "{L2}"], stdin=Path(i["child.tar"]).read_bytes()),
        S(["import-layer", "-f", i["third.tar.gz"], "-n", "third-layer", "{L2}"], capture="L3"),
        S(["import-layer", "-f", "/nonexistent/x.tar"]),
        S(["create-layer", "-r", "-j", "-n", "ro-layer"]),
        S(["create-layer", "nope"]),
        S(["create-layer", "-n", "base-layer"]),
        S(["layers"]), S(["layers", "-j"]), S(["layers", "-t"]), S(["layers", "--tree"]),
        S(["layer", "{L1}", "{L2}", "third-layer"]), S(["layer", "-j", "base-layer"]), S(["layer", "nope"]),
        S(["create-image", "-n", "example.com/test:latest", "-n", "other-name", "-m", '{"image-meta":1}', "{L3}"],
          capture="IMG"),
        S(["create-image", "-n", "other-name", "{L3}"]),
        S(["create-image", "-j", "-i", "a" * 64, "-d", "sha256:" + "b" * 64, "-f", i["meta.txt"]]),
        S(["create-image", "nope"]),
        S(["set-image-data", "-f", i["manifest.json"], "{IMG}", "manifest"]),
        S(["set-image-data", "-f", i["big.bin"], "other-name", big]),
        S(["set-image-data", "nope", "key"], stdin=b"x"),
        S(["images"]), S(["images", "-j"]), S(["images", "-q"]),
        S(["image", "{IMG}"]), S(["image", "-j", "other-name"]), S(["image", "nope"]),
        S(["list-image-data", "other-name"]), S(["list-image-data", "-j", "other-name"]),
        S(["get-image-data", "other-name", "manifest"]),
        S(["get-image-data", "other-name", big], check=_same_bytes, compare=False),
        S(["get-image-data-size", "other-name", big]), S(["get-image-data-digest", "other-name", big]),
        S(["get-image-data", "other-name", "nokey"]),
        S(["set-layer-data", "{L1}", "Some-Layer.Data"], stdin=b"layer data\n"),
        S(["list-layer-data", "base-layer"]), S(["get-layer-data", "base-layer", "Some-Layer.Data"]),
        S(["get-layer-data", "base-layer", "nokey"]),
        S(["create-container", "--name", "ctr1", "-m", "container-meta", "{IMG}"], capture="C1"),
        S(["set-container-data", "ctr1", "config.json"], stdin=b'{"a":1}'),
        S(["set-container-data", "-f", i["big.bin"], "ctr1", "Big Key"]),
        S(["create-container", "--volatile", "--name", "vctr", "example.com/test:latest"], capture="C2"),
        S(["create-container", "--name", "ctr1", "other-name"]),
        S(["create-container", "nope"]),
        S(["containers"]), S(["containers", "-j"]),
        S(["container", "ctr1"]), S(["container", "-j", "vctr"]), S(["container", "nope"]),
        S(["list-container-data", "ctr1"]), S(["get-container-data", "ctr1", "config.json"]),
        S(["get-container-data-size", "ctr1", "Big Key"]), S(["get-container-data-digest", "ctr1", "Big Key"]),
        S(["get-container-data", "ctr1", "nokey"]),
        S(["get-container-dir", "ctr1"]), S(["get-container-run-dir", "{C1}"]),
        S(["layers"]), S(["layers", "-t"]),
    ]
    h.run_pair(go, la, steps)


def test_overlay_mounts_diffs_metadata_names_and_deletes(otools, inputs, h):
    go, la = otools
    S = h.Step
    i = {k: str(v) for k, v in inputs.items()}
    steps = [
        S(["create-layer", "-n", "base-layer"], capture="L1"),
        S(["applydiff", "-f", i["base.tar"], "{L1}"]),
        S(["create-layer", "-n", "mid", "{L1}"], capture="L2"),
        S(["applydiff", "-f", i["child.tar"], "mid"]),
        S(["create-image", "-n", "img", "-m", "image-meta\n", "mid"], capture="IMG"),
        S(["create-container", "--name", "ctr1", "-m", "container-meta", "img"], capture="C1"),
        S(["create-container", "--name", "ctr2", "img"], capture="C2"),
        # counts nest: two mounts of L1, one of each container
        S(["mount", "ctr1"]), S(["mount", "{L1}"]), S(["mount", "-j", "{L1}"]),
        S(["mounted", "{L1}", "ctr1", "ctr2"]), S(["mounted", "-j", "{L1}", "ctr2"]),
        S(["layers", "-t"]), S(["layers", "-j"]),
        S(["mount", "nope"]), S(["unmount", "nope"]), S(["mounted", "nope"]),
        S(["mount", "ctr2"]), S(["umount", "ctr2"]), S(["mounted", "ctr2"]),
        S(["unmount", "{L1}"]), S(["mounted", "{L1}"]), S(["layer", "-j", "{L1}"]),
        S(["unmount", "-j", "{L1}"]), S(["unmount", "{L1}"]), S(["mounted", "{L1}"]),
        S(["mount", "ctr1"]), S(["unmount", "-f", "ctr1"]), S(["mounted", "{L1}", "ctr1"]),
        S(["metadata", "img", "ctr1", "base-layer"]), S(["metadata", "-q", "img", "ctr1"]),
        S(["metadata", "-j", "img", "ctr1", "nope"]),
        S(["set-metadata", "-m", "layer-meta", "base-layer"]), S(["set-metadata", "-f", i["meta.txt"], "ctr1"]),
        S(["metadata", "base-layer", "ctr1"]),
        S(["get-names", "img"]), S(["get-names", "-j", "{L2}"]),
        S(["add-names", "-n", "c2b", "ctr2"]), S(["set-names", "-n", "only", "img"]),
        S(["set-names", "-j", "-n", "x1", "ctr2"]), S(["get-names", "-j", "{C2}"]),
        S(["add-names", "-n", "moved", "{L2}"]), S(["layers"]),
        S(["exists", "only"]), S(["exists", "-l", "only"]), S(["exists", "-c", "ctr1"]),
        S(["exists", "-j", "only", "ctr1", "nope"]),
        S(["changes", "mid"]), S(["changes", "-j", "mid"]), S(["changes", "{L1}"]),
        S(["diffsize", "mid"]), S(["diffsize", "{L1}"]), S(["changes", "nope"]), S(["diff", "nope"]),
        S(["diff", "-u", "mid"], check=_same_bytes, compare=False),
        S(["diff", "-u", "{L1}"], check=_same_bytes, compare=False),
        S(["diff", "{L1}"], check=_same_bytes, compare=False),
        S(["diff", "-c", "mid"], check=_same_members, compare=False),
        S(["applydiff", "-f", i["junk.tar"], "ctr1"], check=_both_fail, compare=False),
        S(["status"]), S(["status", "-j"]),
        S(["delete-image", "only"]),
        S(["delete-layer", "{L1}"]), S(["delete-layer", "-j", "{L1}", "nope"]),
        S(["delete-container", "ctr1"]), S(["delete-container", "-j", "ctr2", "nope"]),
        S(["delete-image", "only"]), S(["delete-image", "-j", "nope"]), S(["images", "-q"]), S(["layers"]),
        S(["delete", "mid"]), S(["delete", "-j", "nope", "{L1}"]), S(["layers", "-j"]),
        S(["create-layer", "-n", "tmp"], capture="T"), S(["mount", "{T}"]),
        S(["shutdown"]), S(["shutdown", "-j"]),
        S(["unmount", "{T}"]), S(["shutdown", "-f"]), S(["shutdown", "-j"]),
        S(["delete", "tmp"]), S(["wipe"]),
        S(["layers", "-j"]), S(["images", "-j"]), S(["containers", "-j"]),
    ]
    h.run_pair(go, la, steps)


def _container_with_writes(otools, inputs, h):
    """Both tools: a container of an image of base.tar, mounted; a file changed, one deleted
    (a kernel-made whiteout in the upper dir), one directory and file added; the container
    unmounted again. Sets ``{CL}`` to the container's layer ID ("diff" takes layers only)."""
    go, la = otools
    S = h.Step
    setup = [
        S(["create-layer", "-n", "base-layer"], capture="L1"),
        S(["applydiff", "-f", str(inputs["base.tar"]), "{L1}"]),
        S(["create-image", "-n", "img", "{L1}"]),
        S(["create-container", "--name", "ctr", "img"], capture="C"),
        S(["mount", "ctr"]),
    ]
    results = h.run_pair(go, la, setup)
    for tool, res in ((go, results[-1][1]), (la, results[-1][2])):
        info = tool.run(["container", "-j", "ctr"], normalise=False)
        tool.vars["CL"] = json.loads(info.raw_out)[0]["layer"]
        root = Path(res.raw_out.decode().strip())
        assert root.is_dir() and (root / "etc" / "hello.txt").read_text() == "hello\n"
        (root / "etc" / "hello.txt").write_text("changed\n")
        (root / "dir1" / "a.txt").unlink()
        (root / "new").mkdir()
        (root / "new" / "f").write_bytes(b"x" * 3000)
        for rel in ("etc/hello.txt", "new/f", "new", "dir1", "etc"):
            os.utime(root / rel, (1_700_000_000, 1_700_000_000))
        # The kernel's whiteout (a 0:0 device in the upper dir) carries the time of the unlink,
        # and the diff shows it: pin it too, or the two tools' diffs differ when their runs
        # fall in different seconds.
        whiteout = Path(tool.graph) / "overlay" / tool.vars["CL"] / "diff" / "dir1" / "a.txt"
        os.utime(whiteout, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
        os.utime(whiteout.parent, (1_700_000_000, 1_700_000_000))


def test_overlay_container_writes_and_diffs(otools, inputs, h):
    """Writes into a mounted container's merged dir show up alike in changes/diffsize/diff."""
    go, la = otools
    S = h.Step
    _container_with_writes(otools, inputs, h)
    steps = [
        S(["changes", "ctr"]), S(["changes", "-j", "ctr"]), S(["diffsize", "ctr"]), S(["diffsize", "{CL}"]),
        S(["mounted", "ctr"]), S(["mount", "ctr"]), S(["mounted", "ctr"]),
        S(["diff", "-u", "{CL}"], check=_same_members, compare=False),
        S(["unmount", "ctr"]), S(["mounted", "ctr"]),
        S(["delete-container", "ctr"]), S(["layers"]), S(["containers"]),
    ]
    h.run_pair(go, la, steps)


def test_overlay_container_diff_byte_identical(otools, inputs, h):
    go, la = otools
    S = h.Step
    _container_with_writes(otools, inputs, h)
    h.run_pair(go, la, [S(["unmount", "ctr"]), S(["diff", "-u", "{CL}"], check=_same_bytes, compare=False)])
