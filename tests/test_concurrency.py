"""Two lamina processes and the Go tool writing one store at the same time lose nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GO = shutil.which("containers-storage")

WORKER = textwrap.dedent(
    """
    import sys
    from lamina.store import Store
    graph, run, tag, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = Store(graph, run, driver_name="vfs")
    for i in range(count):
        layer = store.create_layer(names=[f"{tag}-layer-{i}"])
        image = store.create_image(top_layer=layer.id, names=[f"{tag}-image-{i}"])
        store.add_names(layer.id, [f"{tag}-extra-{i}"])
        store.add_names(image.id, ["contended"])  # a name that moves between images
        print(layer.id, image.id, flush=True)
    """
)


@pytest.mark.skipif(GO is None, reason="Go containers-storage (Debian package) not installed")
def test_two_lamina_processes_and_go_concurrently(tmp_path: Path) -> None:
    graph, run = str(tmp_path / "g"), str(tmp_path / "r")
    count = 36
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    go_loop = (
        f'for i in $(seq 0 {count - 1}); do '
        f'l=$({GO} -g {graph} -R {run} -s vfs create-layer -n go-layer-$i | head -n1) || exit 1; '
        f'i2=$({GO} -g {graph} -R {run} -s vfs create-image -n go-image-$i $l | head -n1) || exit 1; '
        f'{GO} -g {graph} -R {run} -s vfs add-names -n go-extra-$i $l || exit 1; '
        f'{GO} -g {graph} -R {run} -s vfs add-names -n contended $i2 || exit 1; '
        f'echo $l $i2; done'
    )
    # Create the store first so the three writers race on records, not on initialisation.
    subprocess.run([sys.executable, "-c", f"from lamina.store import Store; Store({graph!r}, {run!r}, driver_name='vfs')"],
                   check=True)
    procs = [
        subprocess.Popen([sys.executable, str(script), graph, run, tag, str(count)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    procs.append(subprocess.Popen(["bash", "-c", go_loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    created_layers = {ids[k] for ids in outputs for k in range(0, len(ids), 2)}
    created_images = {ids[k] for ids in outputs for k in range(1, len(ids), 2)}
    assert len(created_layers) == 3 * count and len(created_images) == 3 * count

    from lamina.store import Store

    store = Store(graph, run, driver_name="vfs")
    layers = store.layers()
    images = store.images()
    assert {l.id for l in layers} == created_layers
    assert {i.id for i in images} == created_images
    all_layer_names = [n for l in layers for n in l.names]
    all_image_names = [n for i in images for n in i.names]
    assert len(all_layer_names) == len(set(all_layer_names)) == 2 * 3 * count
    assert len(all_image_names) == len(set(all_image_names))
    assert sum(1 for n in all_image_names if n == "contended") == 1
    for tag in ("a", "b", "go"):
        for i in range(count):
            assert store.layer(f"{tag}-layer-{i}").names == [f"{tag}-layer-{i}", f"{tag}-extra-{i}"]
            assert f"{tag}-image-{i}" in store.image(f"{tag}-image-{i}").names
    go_layers = json.loads(subprocess.run([GO or "", "-g", graph, "-R", run, "-s", "vfs", "layers", "-j"],
                                          capture_output=True, text=True, check=True).stdout)
    assert {l["id"] for l in go_layers} == created_layers
    go_images = json.loads(subprocess.run([GO or "", "-g", graph, "-R", run, "-s", "vfs", "images", "-j"],
                                          capture_output=True, text=True, check=True).stdout)
    assert {i["id"] for i in go_images} == created_images
