"""Where lamina and containers-storage 1.43 differ on purpose, or because lamina's store is not
there yet. Store gaps are strict xfails: once the store is fixed they XPASS, which fails the
run and tells whoever fixed it to drop the marker."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.needs_go


def test_image_names_history_with_several_names(tools, h):
    """(Was a store gap: names-history must list the newest name first, as Go prepends them.)"""
    go, la = tools
    S = h.Step
    h.run_pair(go, la, [S(["create-image", "-n", "a"]), S(["add-names", "-n", "b", "-n", "c", "a"]),
                        S(["set-names", "-n", "d", "-n", "b", "c"]), S(["images", "-j"])])


def test_container_with_id_maps_gets_a_mapped_top_layer(tools, h):
    """(Was a store gap.) A container with ID maps goes on an ID-mapped copy of the image's top
    layer, made once per mapping and listed in the image's mapped-layers; deleting the image
    deletes the copy too."""
    go, la = tools
    S = h.Step
    maps = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"]
    h.run_pair(go, la, [
        S(["create-layer"], capture="L"), S(["create-image", "-n", "img", "{L}"]),
        S(["create-container", *maps, "--name", "c1", "img"]),
        S(["create-container", *maps, "--name", "c2", "img"]),
        S(["create-container", "--uidmap", "0:200000:1000", "--gidmap", "0:200000:1000", "--name", "c3", "img"]),
        S(["layers"]), S(["layers", "-j"]), S(["images", "-j"]),
        S(["delete-container", "c1"]), S(["delete-container", "c2"]), S(["delete-container", "c3"]),
        S(["delete-image", "img"]), S(["layers", "-j"])])


def test_deliberate_mount_layer_by_name(tools, h):
    """Go 1.43 hands a layer's *name* to the driver, so mounting a layer by name fails on vfs
    ("stat .../vfs/dir/<name>: no such file or directory"). lamina resolves the name first."""
    go, la = tools
    for tool in (go, la):
        assert tool.run(["create-layer", "-n", "named"]).rc == 0
    g, l = go.run(["mount", "named"]), la.run(["mount", "named"])
    assert g.rc == 1 and "no such file or directory while mounting named" in g.err
    assert l.rc == 0 and l.out.startswith("<GRAPH>/vfs/dir/")


def test_deliberate_delete_layer_by_name_keeps_its_safety_checks(tools, h):
    """Go 1.43's DeleteLayer skips the children/image/container checks when given a name (it
    compares the parent IDs with the name) and deletes a layer that has children. lamina refuses."""
    go, la = tools
    for tool in (go, la):
        assert tool.run(["create-layer", "-n", "parent"]).rc == 0
        assert tool.run(["create-layer", "parent"]).rc == 0
    g, l = go.run(["delete-layer", "parent"]), la.run(["delete-layer", "parent"])
    assert g.rc == 0
    assert l.rc == 1 and "layer has children" in l.err


def test_deliberate_applydiff_error_text(tools, inputs, h):
    """Go untars in a re-executed chroot child and wraps its error; lamina reports the tar problem."""
    go, la = tools
    for tool in (go, la):
        assert tool.run(["create-layer", "-n", "target"]).rc == 0
    g = go.run(["applydiff", "-f", str(inputs["junk.tar"]), "target"])
    l = la.run(["applydiff", "-f", str(inputs["junk.tar"]), "target"])
    assert g.rc == l.rc == 1
    assert "ApplyLayer stdout:" in g.err
    assert l.err and "ApplyLayer" not in l.err
    for tool in (go, la):  # the layer is left as it was
        assert '"diff-digest"' not in tool.run(["layers", "-j"]).out


def test_deliberate_unknown_driver_text(tools, h):
    go, la = tools
    g = go.run(["-g", go.graph, "-R", go.run_root, "-s", "nosuch", "layers"], base=False)
    l = la.run(["-g", la.graph, "-R", la.run_root, "-s", "nosuch", "layers"], base=False)
    assert g.rc == l.rc == 1
    assert g.out == "error initializing: failed to GetDriver graph nosuch <GRAPH>: driver not supported\n"
    assert l.out.startswith("error initializing: graph driver 'nosuch' is not installed (installed drivers:")


def test_deliberate_unmount_by_mount_point(tools, h):
    """Go 1.43's Store.Unmount checks Exists() before its layer store's by-mount-point lookup can
    run, so "unmount <mountpoint>" fails; lamina's store accepts the mount point."""
    go, la = tools
    for tool in (go, la):
        assert tool.run(["create-layer", "-i", "abc"]).rc == 0
        assert tool.run(["mount", "abc"]).rc == 0
    g = go.run(["unmount", "{GRAPH}/vfs/dir/abc"])
    l = la.run(["unmount", "{GRAPH}/vfs/dir/abc"])
    assert g.rc == 1 and g.err == "layer not known while unmounting <GRAPH>/vfs/dir/abc\n"
    assert l.rc == 0 and l.out == "<GRAPH>/vfs/dir/abc mountpoint unmounted\n"
