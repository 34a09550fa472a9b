"""Concurrency campaign: lamina processes and the Go tool write one store at the same time.

Usage: python scripts/campaigns/concurrency.py [--seconds 20] [--writers 3] [--driver vfs]

For the given time, these run against one store:

* *writers* lamina processes, each doing a random mix of create-layer (some with a diff),
  delete-layer, create-image, delete-image, set-names, add-names (including one name every
  writer keeps taking from the others' images), set-image-data, create-container and
  delete-container on its own records, printing a ledger line after each success;
* one Go writer (``containers-storage`` from a loop) doing create-layer, create-image,
  set-names, add-names of the contended name, set-image-data and delete-image;
* one raw reader process that reads layers.json, images.json, containers.json and
  mountpoints.json with plain open/read (no locks) and parses them, over and over, and also
  lists everything through a lamina Store.

Then: every update in the ledgers must be in the store (zero lost updates, nothing that was
deleted still there, nothing nobody created), no name may be held by two records, no process may
have failed (zero lock errors), the raw reader must never have seen a half-written file, check
must find nothing, and Go must list the same store. Prints figures; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import GO, gen_bytes, gen_tar, sha256  # noqa: E402

CONTENDED = "contended"


# ---------------------------------------------------------------- the lamina writer


def lamina_writer(graph: str, run_root: str, driver: str, tag: str, deadline: float, seed: int) -> int:
    """Random writes on this writer's own records until *deadline*; one ledger line per success."""
    from lamina.store import Store

    rng = random.Random(seed)
    store = Store(graph, run_root, driver_name=driver)
    layers: dict[str, list[str]] = {}  # id -> names (own view, without the contended name)
    images: dict[str, dict[str, Any]] = {}  # id -> {"top", "names", "data": {key: sha}}
    containers: dict[str, str] = {}  # id -> image
    n = 0

    def emit(*parts: Any) -> None:
        print(json.dumps([*parts, round(time.time(), 2)]) if os.environ.get("LAMINA_CAMPAIGN_TIMES") else json.dumps(parts), flush=True)

    while time.time() < deadline:
        n += 1
        tops = {i["top"] for i in images.values()}
        parents = {p for l in layers for p in _parents.get(l, ())}
        free_layers = [l for l in layers if l not in tops and l not in parents]
        choices = ["create-layer"] * 3 + ["create-image"] * (2 if layers else 0) + \
            ["set-names", "add-names"] * (1 if images or layers else 0) + ["set-image-data"] * (3 if images else 0) + \
            ["contend"] * (1 if images else 0) + ["delete-image"] * (2 if len(images) > 2 else 0) + \
            ["delete-layer"] * (1 if len(free_layers) > 3 else 0) + \
            ["create-container"] * (1 if images and not containers else 0) + ["delete-container"] * len(containers)
        op = rng.choice(choices)
        try:
            if op == "create-layer":
                names = [f"{tag}-l{n}"]
                diff = None
                if rng.random() < 0.3:
                    raw, _ = gen_tar(rng.getrandbits(31), rng.randint(1, 8), rng.choice([2000, 200000]))
                    diff = io.BytesIO(raw)
                parent = rng.choice(list(layers)) if layers and rng.random() < 0.3 else None
                layer = store.create_layer(parent=parent, names=names, diff=diff)
                layers[layer.id] = names
                _parents[layer.id] = (parent,) if parent else ()
                emit("layer", layer.id, names)
            elif op == "create-image":
                top = rng.choice(list(layers))
                names = [f"{tag}-i{n}"]
                image = store.create_image(top_layer=top, names=names)
                images[image.id] = {"top": top, "names": names, "data": {}}
                emit("image", image.id, names, top)
            elif op in ("set-names", "add-names"):
                if images and (not layers or rng.random() < 0.5):
                    id = rng.choice(list(images))
                    current = images[id]["names"]
                else:
                    id = rng.choice(list(layers))
                    current = layers[id]
                new = [f"{tag}-n{n}"]
                if op == "set-names":
                    store.set_names(id, new)
                    current[:] = new
                else:
                    store.add_names(id, new)
                    current.extend(new)
                emit("names", id, current)
            elif op == "contend":
                id = rng.choice(list(images))
                store.add_names(id, [CONTENDED])
                emit("contend", id)
            elif op == "set-image-data":
                id = rng.choice(list(images))
                key = rng.choice(["manifest", "config.json", f"sha256:{tag}", "k-" + tag])
                data = gen_bytes(rng.getrandbits(31), rng.choice([10, 5000, 300000]))
                store.set_big_data("image", id, key, data)
                images[id]["data"][key] = sha256(data)
                emit("data", id, key, sha256(data))
            elif op == "delete-image":
                candidates = [i for i in images if i not in containers.values()]
                id = rng.choice(candidates)
                removed = store.delete_image(id)
                del images[id]
                for l in removed:
                    layers.pop(l, None)
                emit("delete-image", id, removed)
            elif op == "delete-layer":
                id = rng.choice(free_layers)
                store.delete_layer(id)
                del layers[id]
                emit("delete-layer", id)
            elif op == "create-container":
                image = rng.choice(list(images))
                ctr = store.create_container(image=image, names=[f"{tag}-c{n}"])
                containers[ctr.id] = image
                emit("container", ctr.id, [f"{tag}-c{n}"], image, ctr.layer)
            elif op == "delete-container":
                id = rng.choice(list(containers))
                store.delete_container(id)
                del containers[id]
                emit("delete-container", id)
        except Exception as exc:  # every failure goes on the ledger: the campaign counts it
            emit("error", op, f"{type(exc).__name__}: {exc}")
    return 0


_parents: dict[str, tuple[str, ...]] = {}


# ---------------------------------------------------------------- the Go writer


def go_writer(graph: str, run_root: str, driver: str, deadline: float, seed: int, workdir: str) -> list[list[Any]]:
    """Random writes through containers-storage until *deadline*; returns its ledger."""
    rng = random.Random(seed)
    base = [GO or "containers-storage", "-g", graph, "-R", run_root, "-s", driver]
    ledger: list[list[Any]] = []
    layers: list[str] = []
    images: dict[str, list[str]] = {}
    n = 0

    def go(*args: str) -> str:
        proc = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    data_file = os.path.join(workdir, "go-data")
    while time.time() < deadline:
        n += 1
        op = rng.choice(["create-layer"] * 2 + ["create-image", "set-names", "contend", "set-image-data",
                                                "delete-image"] * (1 if images else 0) + (["create-image"] if layers else []))
        try:
            if op == "create-layer":
                id = go("create-layer", "-n", f"go-l{n}").split()[0]
                layers.append(id)
                ledger.append(["layer", id, [f"go-l{n}"]])
            elif op == "create-image":
                top = rng.choice(layers)
                id = go("create-image", "-n", f"go-i{n}", top).split()[0]
                images[id] = [f"go-i{n}"]
                ledger.append(["image", id, [f"go-i{n}"], top])
            elif op == "set-names":
                id = rng.choice(list(images))
                go("set-names", "-n", f"go-n{n}", id)
                images[id] = [f"go-n{n}"]
                ledger.append(["names", id, [f"go-n{n}"]])
            elif op == "contend":
                id = rng.choice(list(images))
                go("add-names", "-n", CONTENDED, id)
                ledger.append(["contend", id])
            elif op == "set-image-data":
                id = rng.choice(list(images))
                data = gen_bytes(rng.getrandbits(31), rng.choice([10, 5000]))
                with open(data_file, "wb") as f:
                    f.write(data)
                go("set-image-data", "-f", data_file, id, "go-key")
                ledger.append(["data", id, "go-key", sha256(data)])
            elif op == "delete-image":
                id = rng.choice(list(images))
                out = go("delete-image", "-j", id)
                removed = json.loads(out or "{}").get(id, {}).get("deleted-layers") or []
                del images[id]
                for l in removed:
                    if l in layers:
                        layers.remove(l)
                ledger.append(["delete-image", id, removed])
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            ledger.append(["error", op, str(exc)])
    return ledger


# ---------------------------------------------------------------- the reader


def reader(graph: str, run_root: str, driver: str, deadline: float) -> int:
    """Raw reads of the metadata files (no locks) and Store listings until *deadline*."""
    from lamina.store import Store

    files = [os.path.join(graph, f"{driver}-layers", "layers.json"), os.path.join(graph, f"{driver}-images", "images.json"),
             os.path.join(graph, f"{driver}-containers", "containers.json"),
             os.path.join(run_root, f"{driver}-layers", "mountpoints.json")]
    raw_reads = raw_bad = api_reads = api_bad = 0
    bad: list[str] = []
    store = Store(graph, run_root, driver_name=driver)
    i = 0
    while time.time() < deadline:
        i += 1
        for path in files:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            raw_reads += 1
            try:
                parsed = json.loads(data)
                if not isinstance(parsed, list):
                    raise ValueError("not a JSON array")
            except ValueError as exc:
                raw_bad += 1
                bad.append(f"{os.path.basename(path)}: {exc} ({len(data)} bytes)")
        if i % 5 == 0:
            try:
                store.layers()
                store.images()
                store.containers()
                api_reads += 1
            except Exception as exc:  # counted and reported by the campaign
                api_bad += 1
                bad.append(f"store listing: {type(exc).__name__}: {exc}")
    print(json.dumps({"raw_reads": raw_reads, "raw_bad": raw_bad, "api_reads": api_reads, "api_bad": api_bad,
                      "bad": bad[:20]}), flush=True)
    return 0


# ---------------------------------------------------------------- checking the result


def expected_from(ledgers: dict[str, list[list[Any]]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], set[str], int]:
    """(layers id->names, images id->{names,data}, containers id->names, deleted IDs, updates) from the ledgers."""
    layers: dict[str, list[str]] = {}
    images: dict[str, dict[str, Any]] = {}
    containers: dict[str, list[str]] = {}
    deleted: set[str] = set()
    ctr_layer: dict[str, str] = {}
    updates = 0
    for _, ledger in ledgers.items():
        for entry in ledger:
            kind = entry[0]
            if kind == "error":
                continue
            updates += 1
            if kind == "layer":
                layers[entry[1]] = list(entry[2])
            elif kind == "image":
                images[entry[1]] = {"names": list(entry[2]), "data": {}}
            elif kind == "names":
                target = images[entry[1]] if entry[1] in images else None
                if target is not None:
                    target["names"] = list(entry[2])
                else:
                    layers[entry[1]] = list(entry[2])
            elif kind == "data":
                images[entry[1]]["data"][entry[2]] = entry[3]
            elif kind == "delete-image":
                images.pop(entry[1], None)
                deleted.add(entry[1])
                for l in entry[2]:
                    layers.pop(l, None)
                    deleted.add(l)
            elif kind == "delete-layer":
                layers.pop(entry[1], None)
                deleted.add(entry[1])
            elif kind == "container":
                containers[entry[1]] = list(entry[2])
                layers[entry[4]] = []
                ctr_layer[entry[1]] = entry[4]
            elif kind == "delete-container":
                containers.pop(entry[1], None)
                deleted.add(entry[1])
                layer = ctr_layer.pop(entry[1], "")
                layers.pop(layer, None)
                deleted.add(layer)
    return layers, images, containers, deleted, updates


def verify(graph: str, run_root: str, driver: str, ledgers: dict[str, list[list[Any]]]) -> tuple[list[str], dict[str, int]]:
    from lamina.check import CheckOptions
    from lamina.store import Store

    store = Store(graph, run_root, driver_name=driver)
    exp_layers, exp_images, exp_ctrs, deleted, updates = expected_from(ledgers)
    problems: list[str] = []
    layers = {l.id: l for l in store.layers()}
    images = {i.id: i for i in store.images()}
    ctrs = {c.id: c for c in store.containers()}
    lost = 0
    for id, names in exp_layers.items():
        if id not in layers:
            lost += 1
            problems.append(f"lost layer {id[:12]}")
        elif [n for n in layers[id].names if n != CONTENDED] != names:
            lost += 1
            problems.append(f"layer {id[:12]} names {layers[id].names} != {names}")
    for id, e in exp_images.items():
        if id not in images:
            lost += 1
            problems.append(f"lost image {id[:12]}")
            continue
        if [n for n in images[id].names if n != CONTENDED] != e["names"]:
            lost += 1
            problems.append(f"image {id[:12]} names {images[id].names} != {e['names']}")
        for key, digest in e["data"].items():
            if key not in images[id].big_data_names or sha256(store.big_data("image", id, key)) != digest:
                lost += 1
                problems.append(f"image {id[:12]} lost the last write of {key!r}")
    for id, names in exp_ctrs.items():
        if id not in ctrs or ctrs[id].names != names:
            lost += 1
            problems.append(f"lost container {id[:12]}")
    resurrected = [i for i in deleted if i in layers or i in images or i in ctrs]
    problems.extend(f"deleted {i[:12]} is back" for i in resurrected)
    phantoms = [i for i in [*layers, *images, *ctrs] if i not in exp_layers and i not in exp_images and i not in exp_ctrs]
    problems.extend(f"{i[:12]} was never created by anyone" for i in phantoms)
    dup = 0
    for kind, records in (("layer", layers.values()), ("image", images.values()), ("container", ctrs.values())):
        counts = Counter(n for r in records for n in r.names)
        for name, c in counts.items():
            if c > 1:
                dup += 1
                problems.append(f"{kind} name {name!r} held by {c} records")
    report = store.check(CheckOptions(max_age=None))
    if not report.clean:
        problems.append("check: " + report.text().replace("\n", " | "))
    if GO:
        try:
            lists = common.go_lists(graph, run_root, driver)
            if {x["id"] for x in lists["layers"]} != set(layers) or {x["id"] for x in lists["images"]} != set(images):
                problems.append("Go lists another store than lamina")
        except RuntimeError as exc:
            problems.append(str(exc))
    return problems, {"updates": updates, "lost": lost, "resurrected": len(resurrected), "phantoms": len(phantoms),
                      "duplicate_names": dup, "layers": len(layers), "images": len(images), "containers": len(ctrs)}


# ---------------------------------------------------------------- the campaign


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), f"lamina-campaign-pycache-{os.getuid()}"))
    return env


def campaign(workdir: str, seconds: float, writers: int, driver: str, seed: int, use_go: bool = True) -> dict[str, Any]:
    """Run the campaign in *workdir*; returns figures (``failures`` lists what went wrong)."""
    from lamina.store import Store

    graph, run_root = os.path.join(workdir, "graph"), os.path.join(workdir, "run")
    Store(graph, run_root, driver_name=driver)
    start = time.time() + 2.0  # every process starts at the same moment, after its imports
    deadline = start + seconds
    me = os.path.abspath(__file__)
    procs: dict[str, subprocess.Popen[str]] = {}
    outputs: dict[str, tuple[Any, Any]] = {}

    def spawn(name: str, args: list[str]) -> None:
        # ledgers go to files: a pipe nobody reads until the end would stall the writer once full
        out = open(os.path.join(workdir, f"{name}.out"), "w+", encoding="utf-8")
        err = open(os.path.join(workdir, f"{name}.err"), "w+", encoding="utf-8")
        outputs[name] = (out, err)
        procs[name] = subprocess.Popen([sys.executable, me, *args], stdout=out, stderr=err, text=True, env=_env())

    for k in range(writers):
        spawn(f"w{k}", ["--role", "writer", "--tag", f"w{k}", "--graph", graph, "--run", run_root, "--driver", driver,
                        "--start", str(start), "--deadline", str(deadline), "--seed", str(seed + k)])
    spawn("reader", ["--role", "reader", "--graph", graph, "--run", run_root, "--driver", driver,
                     "--start", str(start), "--deadline", str(deadline)])
    go_ledger: list[list[Any]] = []
    time.sleep(max(0.0, start - time.time()))
    if use_go and GO:
        go_ledger = go_writer(graph, run_root, driver, deadline, seed + 100, workdir)
    ledgers: dict[str, list[list[Any]]] = {"go": go_ledger}
    failures: list[str] = []
    reader_figs: dict[str, Any] = {}
    for name, proc in procs.items():
        proc.wait(timeout=seconds + 300)
        out_file, err_file = outputs[name]
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
        out_file.close()
        err_file.close()
        if proc.returncode != 0:
            failures.append(f"{name} exited {proc.returncode}: {err.strip()[-500:]}")
        if name == "reader":
            reader_figs = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        else:
            ledgers[name] = [json.loads(line) for line in out.splitlines() if line.strip()]
    errors = [(name, e) for name, ledger in ledgers.items() for e in ledger if e[0] == "error"]
    failures.extend(f"{name}: {e[1]} failed: {e[2]}" for name, e in errors)
    if reader_figs.get("raw_bad") or reader_figs.get("api_bad"):
        failures.extend(f"reader: {b}" for b in reader_figs.get("bad", []))
    problems, figs = verify(graph, run_root, driver, ledgers)
    failures.extend(problems)
    ops = Counter(e[0] for name, ledger in ledgers.items() if name != "go" for e in ledger if e[0] != "error")
    go_ops = Counter(e[0] for e in go_ledger if e[0] != "error")
    return {**figs, "seconds": seconds, "writers": writers, "driver": driver, "lamina_ops": dict(ops),
            "go_ops": dict(go_ops), "errors": len(errors), "reader": {k: v for k, v in reader_figs.items() if k != "bad"},
            "failures": failures}


def print_figures(f: dict[str, Any]) -> None:
    print(f"driver {f['driver']}, {f['seconds']:.0f} s, {f['writers']} lamina writers + "
          f"{'1 Go writer' if f['go_ops'] or GO else 'no Go writer'} + 1 reader")
    rows = [[k, f["lamina_ops"].get(k, 0), f["go_ops"].get(k, 0)] for k in
            ("layer", "image", "names", "contend", "data", "delete-image", "delete-layer", "container", "delete-container")]
    print(common.table(rows, ["completed op", "lamina", "go"]))
    r = f["reader"]
    print(f"\nraw reads of the JSON files: {r.get('raw_reads', 0)}, half-written seen: {r.get('raw_bad', 0)}; "
          f"store listings: {r.get('api_reads', 0)}, failed: {r.get('api_bad', 0)}")
    print(f"updates in the ledgers: {f['updates']}, lost: {f['lost']}, deleted-but-back: {f['resurrected']}, "
          f"never-created: {f['phantoms']}, duplicate names: {f['duplicate_names']}, errors (lock or other): {f['errors']}")
    print(f"final store: {f['layers']} layers, {f['images']} images, {f['containers']} containers")
    for line in f["failures"][:30]:
        print(f"FAIL: {line}")
    print(f"\n{len(f['failures'])} failures")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--driver", default="vfs")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workdir", default="")
    parser.add_argument("--no-go", action="store_true", help="leave the Go tool out")
    parser.add_argument("--json", default="")
    # internal: the roles of the child processes
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--graph", default="", help=argparse.SUPPRESS)
    parser.add_argument("--run", default="", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        time.sleep(max(0.0, args.start - time.time()))
        if args.role == "writer":
            return lamina_writer(args.graph, args.run, args.driver, args.tag, args.deadline, args.seed)
        return reader(args.graph, args.run, args.driver, args.deadline)
    base = args.workdir or tempfile.mkdtemp(prefix="lamina-concurrency-")
    print(f"concurrency campaign: seed {args.seed}, store under {base}", flush=True)
    try:
        figs = campaign(base, args.seconds, args.writers, args.driver, args.seed, use_go=not args.no_go)
    finally:
        common.go_shutdown(os.path.join(base, "graph"), os.path.join(base, "run"), args.driver)
    print_figures(figs)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figs, f, indent=1)
    if not args.workdir:
        common.rmtree(base)
    return 1 if figs["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
