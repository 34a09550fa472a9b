"""Cross-reading: one tool builds a store, then both tools read that same store and must print
the same thing; the reader writes into it and the creator reads that back and cleans up."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.needs_go

BIG_KEY = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def _build(tool, inputs) -> None:
    i = {k: str(v) for k, v in inputs.items()}

    def ok(args, capture=None, stdin=None):
        res = tool.run(args, stdin=stdin)
        assert res.rc == 0, f"{tool.kind}: {args}\n{res}"
        if capture:
            tool.capture(capture, res)
        return res

    ok(["create-layer", "-n", "base-layer"], "L1")
    ok(["applydiff", "-f", i["base.tar"], "{L1}"])
    ok(["create-layer", "{L1}"], "L2")
    ok(["applydiff", "-f", i["child.tar"], "{L2}"])
    ok(["set-metadata", "-m", "layer two", "{L2}"])
    ok(["import-layer", "-f", i["third.tar.gz"], "-n", "third-layer", "{L2}"], "L3")
    ok(["create-image", "-n", "example.com/test:latest", "-n", "other-name", "-m", '{"image-meta":1}', "{L3}"],
       "IMG")
    ok(["set-image-data", "-f", i["manifest.json"], "{IMG}", "manifest"])
    ok(["set-image-data", "-f", i["big.bin"], "{IMG}", BIG_KEY])
    ok(["set-layer-data", "{L1}", "Some-Layer.Data"], stdin=b"layer data\n")
    ok(["create-container", "--name", "ctr1", "-m", "container-meta", "{IMG}"], "C1")
    ok(["set-container-data", "ctr1", "config.json"], stdin=b'{"cfg":true}')
    ok(["create-container", "--volatile", "--name", "vctr", "{IMG}"], "C2")


def _read_steps(h):
    S = h.Step
    same_bytes = dict(check=_same_bytes, compare=False)
    return [
        S(["layers"]), S(["layers", "-j"]), S(["layers", "-t"]),
        S(["images"]), S(["images", "-j"]), S(["containers"]), S(["containers", "-j"]),
        S(["layer", "{L1}", "{L2}", "{L3}"]), S(["layer", "-j", "third-layer"]),
        S(["image", "{IMG}"]), S(["image", "-j", "other-name"]),
        S(["container", "ctr1", "vctr"]), S(["container", "-j", "{C1}"]),
        S(["get-names", "-j", "{IMG}"]), S(["get-names", "{L1}"]), S(["get-names", "{C2}"]),
        S(["metadata", "{L2}", "{IMG}", "ctr1"]),
        S(["list-image-data", "{IMG}"]), S(["list-layer-data", "{L1}"]), S(["list-container-data", "ctr1"]),
        S(["get-image-data", "{IMG}", "manifest"]), S(["get-image-data", "{IMG}", BIG_KEY], **same_bytes),
        S(["get-image-data-size", "{IMG}", BIG_KEY]), S(["get-image-data-digest", "{IMG}", BIG_KEY]),
        S(["get-image-data-digest", "{IMG}", "manifest"]),
        S(["get-layer-data", "{L1}", "Some-Layer.Data"]),
        S(["get-container-data", "ctr1", "config.json"]), S(["get-container-data-size", "ctr1", "config.json"]),
        S(["get-container-data-digest", "ctr1", "config.json"]),
        S(["images-by-digest", "-q", "sha256:" + hashlib.sha256(b"").hexdigest()]),
        S(["exists", "-l", "{L3}"]), S(["exists", "-i", "other-name"]), S(["exists", "-c", "vctr"]),
        S(["changes", "{L2}"], sort=True), S(["diffsize", "{L2}"]), S(["diffsize", "{L3}"]),
        S(["diff", "-u", "{L1}"], **same_bytes), S(["diff", "-u", "{L2}"], **same_bytes),
        S(["diff", "-u", "{L3}"], **same_bytes),
        S(["mounted", "ctr1"]),
    ]


def _same_bytes(g, l):
    assert g.rc == l.rc == 0, (g, l)
    assert g.raw_out == l.raw_out


def _raw_run(tool, step):
    return tool.run(step.args, stdin=step.stdin, normalise=False)


def _compare_on_one_store(h, first, second, steps) -> None:
    """Run each step with *first* then *second* on the same store and compare."""
    from concurrent.futures import ThreadPoolExecutor

    first.ids.clear()
    second.ids.clear()
    problems = []
    # Reads only: both tools may look at the store at the same time (they take shared locks).
    # Normalisation happens in step order afterwards, so the ID numbering stays deterministic.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [(pool.submit(_raw_run, first, step), pool.submit(_raw_run, second, step)) for step in steps]
        raws = [(fa.result(), fb.result()) for fa, fb in futures]
    for step, (ra, rb) in zip(steps, raws):
        a, b = first.finish(ra), second.finish(rb)
        if step.check is not None:
            step.check(a, b)
        if not step.compare:
            continue
        av, bv = (a.rc, a.out, a.err), (b.rc, b.out, b.err)
        if step.sort:
            av = (av[0], sorted(av[1].split("\n")), av[2])
            bv = (bv[0], sorted(bv[1].split("\n")), bv[2])
            if av != bv:
                problems.append(f"$ {' '.join(step.args)}\n{first.kind}: {a}\n{second.kind}: {b}")
        elif av != bv:
            problems.append(f"$ {' '.join(step.args)}\n" + h.describe(av, bv).replace("go ", first.kind + " ")
                            .replace("lamina ", second.kind + " "))
    assert not problems, f"{first.kind} and {second.kind} read the same store differently:\n\n" + \
        "\n\n".join(problems)


@pytest.mark.parametrize("creator", ["go", "lamina"])
def test_cross_read_write(creator, tmp_path: Path, inputs, h):
    go, la = h.make_tools(tmp_path)
    if creator == "go":
        maker = go
        other = h.Tool("lamina", list(h.LAMINA), go.graph, go.run_root)
    else:
        maker = la
        other = h.Tool("go", ["containers-storage"], la.graph, la.run_root)
    _build(maker, inputs)
    other.vars = dict(maker.vars)
    _compare_on_one_store(h, maker, other, _read_steps(h))

    # Mount counts are shared through mountpoints.json.
    def ok(tool, args, stdin=None):
        res = tool.run(args, stdin=stdin)
        assert res.rc == 0, f"{tool.kind}: {args}\n{res}"
        return res

    path = ok(other, ["mount", "ctr1"]).raw_out.decode().strip()
    assert ok(maker, ["mounted", "ctr1"]).raw_out == b"ctr1 mounted\n"
    assert ok(maker, ["mount", "ctr1"]).raw_out.decode().strip() == path
    assert ok(other, ["unmount", "ctr1"]).raw_out == b""  # count 2 -> 1
    assert ok(maker, ["unmount", "ctr1"]).raw_out == b"ctr1 mountpoint unmounted\n"
    assert ok(other, ["mounted", "ctr1"]).raw_out == b""

    # The reader writes; the creator sees it.
    i = {k: str(v) for k, v in inputs.items()}
    res = ok(other, ["create-layer", "-n", "reader-layer", "{L3}"])
    other.capture("R1", res)
    maker.vars["R1"] = other.vars["R1"]
    ok(other, ["applydiff", "-f", i["base.tar"], "reader-layer"])
    ok(other, ["create-image", "-n", "reader-image", "reader-layer"])
    ok(other, ["set-image-data", "reader-image", "notes"], stdin=b"written by the reader\n")
    ok(other, ["add-names", "-n", "added-by-reader", "{IMG}"])
    ok(other, ["set-metadata", "-m", "reader meta", "ctr1"])
    ok(other, ["create-container", "-n", "reader-ctr", "reader-image"])
    ok(other, ["delete-container", "vctr"])
    steps = [h.Step(a) for a in (
        ["layers"], ["images", "-j"], ["containers", "-j"], ["get-names", "{IMG}"], ["metadata", "ctr1"],
        ["get-image-data", "reader-image", "notes"], ["layer", "reader-layer"], ["container", "reader-ctr"])]
    steps.append(h.Step(["diff", "-u", "{R1}"], check=_same_bytes, compare=False))
    _compare_on_one_store(h, maker, other, steps)

    # The creator removes everything; both see an empty store.
    for args in (["delete-container", "reader-ctr", "ctr1"], ["delete-image", "reader-image", "{IMG}"]):
        ok(maker, args)
    for tool in (maker, other):
        assert tool.run(["images", "-j"]).raw_out == b"null\n"
        assert tool.run(["containers", "-j"]).raw_out == b"[]\n"
        assert tool.run(["layers", "-j"]).raw_out == b"[]\n", tool.run(["layers"])
