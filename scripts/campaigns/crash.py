"""Crash campaign: SIGKILL lamina workers in the middle of store operations and prove nothing breaks.

Usage: python scripts/campaigns/crash.py [--trials 300] [--drivers vfs,overlay,btrfs] [--seed N]

For each driver (vfs always; overlay when the host supports it; btrfs on a loop-mounted btrfs
when possible) one store lives through all trials. Each trial runs a worker process
(worker.py) with a plan of 1-3 operations among create-layer (with or without a diff),
applydiff, create-image, set-names, set-image-data, create-container, delete-image and
delete-container, and kills it with SIGKILL:

* **call**: at a randomly chosen instrumented call of a randomly chosen operation (the N-th
  os.rename/write/fsync/unlink/open/mkdir/... or driver create/remove/apply_diff call, just
  before or just after it runs), or
* **delay**: after a random delay from the moment the store is open, or (1 in 10) from process
  start, which also lands kills in the recovery that opening a store performs.

After each kill:

1. every few trials (vfs, overlay) a copy of the crashed store is loaded by the Go tool
   (``layers/images/containers -j``), which must succeed and still list everything committed;
2. lamina opens the store (a write-locked open: the recovery point);
3. the store must match the ledger: every operation the worker reported DONE is there, the one
   in flight is either wholly applied or not at all (no leaked layers, images or containers);
4. ``check`` (full: every layer file against its tar-split) must find nothing: no damage, no
   orphan driver dirs, tar-splits, big-data files or dirs, temp files or stale mount counts;
5. the Go tool must load the store and list the same layers, images and containers.

Prints per-driver figures; exits 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import GO, LoopFS, Model, adopt_container_layers, differences, gen_tar, sha256  # noqa: E402

WORKER = os.path.join(common.HERE, "worker.py")
OPS = ("create-layer", "applydiff", "create-image", "set-names", "set-image-data", "create-container",
       "delete-image", "delete-container")


@dataclass
class Figures:
    driver: str
    trials: int = 0
    kills: int = 0
    call_kills: int = 0
    delay_kills: int = 0
    kills_in_open: int = 0
    kills_after_ops: int = 0
    no_kill: int = 0
    kills_by_op: dict[str, int] = field(default_factory=lambda: {op: 0 for op in OPS})
    rolled_forward: int = 0
    rolled_back: int = 0
    go_copy_loads: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Planner:
    """Chooses valid operations from the model, with IDs, names and data fixed in advance."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counter = 0

    def _id(self) -> str:
        return "%064x" % self.rng.getrandbits(256)

    def _name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _diff(self) -> dict[str, Any]:
        spec = {"seed": self.rng.getrandbits(31), "files": self.rng.randint(1, 24),
                "size": self.rng.choice([2000, 60000, 600000, 3000000]), "gzip": self.rng.random() < 0.3}
        spec["digest"] = gen_tar(spec["seed"], spec["files"], spec["size"])[1]
        return spec

    def plan(self, model: Model) -> list[dict[str, Any]]:
        m = model.copy()
        ops: list[dict[str, Any]] = []
        for _ in range(self.rng.randint(1, 3)):
            op = self._one(m)
            ops.append(op)
            m = m.apply(op, {"layer": "%064x" % self.rng.getrandbits(256)} if op["op"] == "create-container" else None)
        return ops

    def _one(self, m: Model) -> dict[str, Any]:
        rng = self.rng
        plain = [l for l in m.layers.values() if not l.container]
        used_images = {c.image for c in m.containers.values()}
        deletable = [i for i in m.images.values() if i.id not in used_images]
        weights = {"create-layer": 3 if len(plain) < 14 else 1, "applydiff": 2, "create-image": 2 if plain else 0,
                   "set-names": 2 if plain else 0, "set-image-data": 3 if m.images else 0,
                   "create-container": 2 if m.images and len(m.containers) < 3 else 0,
                   "delete-image": (4 if len(m.images) > 4 else 1) if deletable else 0,
                   "delete-container": (4 if len(m.containers) > 2 else 1) if m.containers else 0}
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        if kind == "create-layer":
            parent = rng.choice(plain).id if plain and rng.random() < 0.5 else ""
            return {"op": kind, "id": self._id(), "parent": parent, "names": [self._name("layer")],
                    "diff": self._diff() if rng.random() < 0.6 else None}
        if kind == "applydiff":
            children = {l.parent for l in m.layers.values()}
            empty = [l for l in plain if not l.digest and l.id not in children]
            if not empty:
                return {"op": "create-layer", "id": self._id(), "parent": "", "names": [self._name("layer")],
                        "diff": None}
            return {"op": kind, "layer": rng.choice(empty).id, "diff": self._diff()}
        if kind == "create-image":
            return {"op": kind, "id": self._id(), "top": rng.choice(plain).id,
                    "names": [self._name("img") for _ in range(rng.randint(1, 2))]}
        if kind == "set-names":
            if m.images and rng.random() < 0.5:
                target = rng.choice(list(m.images.values()))
                kind_of = "image"
            else:
                target = rng.choice(plain)
                kind_of = "layer"
            keep = target.names[:1] if target.names and rng.random() < 0.5 else []
            return {"op": kind, "kind": kind_of, "target": target.id, "names": keep + [self._name("n")]}
        if kind == "set-image-data":
            image = rng.choice(list(m.images.values()))
            if image.data and rng.random() < 0.4:
                key = rng.choice(sorted(image.data))
            else:
                key = rng.choice(["manifest", "config.json", "sha256:" + "ab" * 32, "Weird Key/with=chars"])
            seed, size = rng.getrandbits(31), rng.choice([10, 1000, 100000, 2000000])
            return {"op": kind, "image": image.id, "key": key,
                    "data": {"seed": seed, "size": size, "sha256": sha256(common.gen_bytes(seed, size))}}
        if kind == "create-container":
            return {"op": kind, "id": self._id(), "image": rng.choice(list(m.images.values())).id,
                    "names": [self._name("ctr")]}
        if kind == "delete-image":
            return {"op": kind, "image": rng.choice(deletable).id}
        return {"op": "delete-container", "container": rng.choice(list(m.containers.values())).id}


@dataclass
class WorkerRun:
    lines: list[str]
    returncode: int
    stderr: str
    t_ready: float | None
    t_end: float


def run_worker(plan: dict[str, Any], workdir: str, delay: float | None, from_start: bool) -> WorkerRun:
    path = os.path.join(workdir, "plan.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(plan, f)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, WORKER, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    lines: list[str] = []
    ready = threading.Event()
    t_ready: list[float] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.endswith("\n"):
                lines.append(line.rstrip("\n"))
            if line.startswith("READY"):
                t_ready.append(time.monotonic() - t0)
                ready.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if delay is not None:
        if not from_start:
            ready.wait(timeout=60)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    thread.join(timeout=10)
    stderr = proc.stderr.read() if proc.stderr else ""
    return WorkerRun(lines, proc.returncode, stderr, t_ready[0] if t_ready else None, time.monotonic() - t0)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), f"lamina-campaign-pycache-{os.getuid()}"))
    return env


def parse_ledger(lines: list[str]) -> tuple[list[tuple[int, dict[str, Any]]], int | None, list[str], dict[int, int]]:
    """(completed (index, result) pairs, index in flight or None, worker FAIL lines, calls per op)."""
    done: list[tuple[int, dict[str, Any]]] = []
    started: int | None = None
    fails: list[str] = []
    calls: dict[int, int] = {}
    for line in lines:
        parts = line.split(" ", 2)
        if parts[0] == "START":
            started = int(parts[1])
        elif parts[0] == "DONE":
            done.append((int(parts[1]), json.loads(parts[2]) if len(parts) > 2 else {}))
            started = None
        elif parts[0] == "CALLS":
            calls[int(parts[1])] = int(parts[2])
        elif parts[0] == "FAIL":
            fails.append(line)
    return done, started, fails, calls


def _go_copy_check(graph: str, run_root: str, driver: str, scratch: str, model: Model,
                   touched: set[str]) -> list[str]:
    """Load a copy of the crashed store with the Go tool: it must load and keep what was committed."""
    g2, r2 = os.path.join(scratch, "gcopy"), os.path.join(scratch, "rcopy")
    common.rmtree(g2)
    common.rmtree(r2)
    out: list[str] = []
    try:
        common.run("cp", "-a", graph, g2)
        common.run("cp", "-a", run_root, r2)
        try:
            lists = common.go_lists(g2, r2, driver)
        except RuntimeError as exc:
            return [f"Go could not load the crashed store: {exc}"]
        seen = {k: {x["id"] for x in v} for k, v in lists.items()}
        for id in model.layers:
            if id not in touched and id not in seen["layers"]:
                out.append(f"Go lost committed layer {id[:12]}")
        for id in model.images:
            if id not in touched and id not in seen["images"]:
                out.append(f"Go lost committed image {id[:12]}")
        for id in model.containers:
            if id not in touched and id not in seen["containers"]:
                out.append(f"Go lost committed container {id[:12]}")
    finally:
        common.go_shutdown(g2, r2, driver)
        common.rmtree(g2)
        common.rmtree(r2)
    return out


def _touched(model: Model, op: dict[str, Any] | None) -> set[str]:
    if op is None:
        return set()
    ids = {v for k, v in op.items() if k in ("id", "layer", "target", "image", "container") and isinstance(v, str)}
    if op["op"] == "delete-image" and op["image"] in model.images:
        ids.update(model.delete_image_layers(op["image"]))
    if op["op"] == "delete-container" and op["container"] in model.containers:
        ids.add(model.containers[op["container"]].layer)
    return ids


def verify(store_args: tuple[str, str, str], model: Model, inflight: dict[str, Any] | None) -> tuple[Model, list[str], str]:
    """Recover (lamina write-locked open), compare with the ledger, check, and read with Go.
    Returns (the model to continue with, failures, "forward"/"back"/"")."""
    from lamina.check import CheckOptions
    from lamina.store import Store

    graph, run_root, driver = store_args
    store = Store(graph, run_root, driver_name=driver)
    actual = common.snapshot(store)
    failures: list[str] = []
    outcome = ""
    pending = inflight["id"] if inflight and inflight["op"] == "create-container" else ""
    before = differences(model, actual)
    if inflight is None:
        if before:
            failures.extend(before)
        new = model
    elif not before:
        new, outcome = model, "back"
    else:
        after_model = model.apply(inflight)
        after = differences(after_model, actual, pending)
        if after:
            failures.append(f"in-flight {inflight['op']} neither applied nor absent: "
                            f"before: {'; '.join(before)} | after: {'; '.join(after)}")
            new = model
        else:
            new, outcome = after_model, "forward"
    adopt_container_layers(new, actual)
    report = store.check(CheckOptions(max_age=None))
    if not report.clean:
        failures.append("check: " + report.text().replace("\n", " | "))
    if GO:
        try:
            lists = common.go_lists(graph, run_root, driver)
            for what, records in (("layers", actual.layers), ("images", actual.images),
                                  ("containers", actual.containers)):
                ids = {x["id"] for x in lists[what]}
                if ids != set(records):
                    failures.append(f"Go lists other {what}: extra {sorted(i[:12] for i in ids - set(records))}, "
                                    f"missing {sorted(i[:12] for i in set(records) - ids)}")
        except RuntimeError as exc:
            failures.append(str(exc))
    return new, failures, outcome


def _heal(graph: str, run_root: str, driver: str) -> Model:
    """After a failed trial: repair and garbage-collect, and continue from the store's actual state,
    so that one failure is counted once instead of in every later trial."""
    from lamina.check import CheckOptions
    from lamina.store import Store

    store = Store(graph, run_root, driver_name=driver)
    store.repair(store.check(CheckOptions(max_age=None)), remove_containers=True)
    store.garbage_collect()
    return common.snapshot(store)


def campaign(driver: str, trials: int, seed: int, workdir: str, go_copy_every: int = 5,
             progress: bool = True) -> Figures:
    """Run *trials* kill trials on one store of *driver* under *workdir*; returns the figures."""
    rng = random.Random(seed)
    planner = Planner(rng)
    figs = Figures(driver)
    graph, run_root = os.path.join(workdir, "graph"), os.path.join(workdir, "run")
    scratch = os.path.join(workdir, "scratch")
    os.makedirs(scratch, exist_ok=True)
    model = Model()
    seen_calls: dict[str, list[int]] = {}  # instrumented calls per completed op, by kind
    seen_ops: list[float] = []  # seconds from READY to exit of runs that were not killed
    est_open = 0.5
    t_start = time.monotonic()
    from lamina.store import Store

    Store(graph, run_root, driver_name=driver)  # create it before the first kill
    try:
        for trial in range(trials):
            ops = planner.plan(model)
            plan: dict[str, Any] = {"graph": graph, "run": run_root, "driver": driver, "ops": ops}
            r = rng.random()
            delay: float | None = None
            from_start = False
            mode = "call"
            if r < 0.45:
                k = rng.randrange(len(ops))
                calls = seen_calls.get(ops[k]["op"]) or [60]
                plan["kill"] = {"op": k, "n": rng.randint(1, max(1, rng.choice(calls[-40:]))),
                                "when": rng.choice(["before", "after"])}
            elif r < 0.9:
                mode, delay = "delay", rng.uniform(0, rng.choice(seen_ops[-40:] or [1.0]))
            else:
                mode, delay, from_start = "delay-open", rng.uniform(0, est_open * 1.3), True
            result = run_worker(plan, scratch, delay, from_start)
            done, started, fails, calls = parse_ledger(result.lines)
            for i, n in calls.items():
                seen_calls.setdefault(ops[i]["op"], []).append(n)
            if result.t_ready is not None:
                est_open = 0.8 * est_open + 0.2 * result.t_ready
                if not started and result.returncode == 0:
                    seen_ops.append(max(0.02, result.t_end - result.t_ready))
            figs.trials += 1
            killed = result.returncode == -signal.SIGKILL
            label = f"trial {trial} ({mode}{' ' + json.dumps(plan.get('kill')) if plan.get('kill') else ''})"
            trial_failures: list[str] = [f"worker: {f}" for f in fails]
            if result.returncode not in (0, -signal.SIGKILL):
                trial_failures.append(f"worker exited {result.returncode}: {result.stderr.strip()[-400:]}")
            if killed:
                figs.kills += 1
                if mode == "call":
                    figs.call_kills += 1
                else:
                    figs.delay_kills += 1
                if result.t_ready is None:
                    figs.kills_in_open += 1
                elif started is not None:
                    figs.kills_by_op[ops[started]["op"]] += 1
                else:
                    figs.kills_after_ops += 1
            else:
                figs.no_kill += 1
            # the ledger: apply what completed
            results = dict(done)
            for i, _ in done:
                model = model.apply(ops[i], results[i])
            inflight = ops[started] if started is not None else None
            if GO and go_copy_every and driver in ("vfs", "overlay") and trial % go_copy_every == 0:
                figs.go_copy_loads += 1
                trial_failures.extend(_go_copy_check(graph, run_root, driver, scratch, model,
                                                     _touched(model, inflight)))
            try:
                model, problems, outcome = verify((graph, run_root, driver), model, inflight)
            except Exception as exc:  # a recovery that raises is a failure of the trial, not of the campaign
                problems, outcome = [f"recovery raised {type(exc).__name__}: {exc}\n{traceback.format_exc()}"], ""
            trial_failures.extend(problems)
            if outcome == "forward":
                figs.rolled_forward += 1
            elif outcome == "back":
                figs.rolled_back += 1
            if trial_failures:
                in_flight = inflight["op"] if inflight else "-"
                figs.failures.append(f"{label}, in flight: {in_flight}: " + " || ".join(trial_failures))
                model = _heal(graph, run_root, driver)
            if progress and (trial + 1) % 25 == 0:
                print(f"  {driver}: {trial + 1}/{trials} trials, {len(figs.failures)} failures, "
                      f"{len(model.layers)} layers, {len(model.images)} images, {len(model.containers)} containers",
                      flush=True)
    finally:
        figs.seconds = time.monotonic() - t_start
        common.go_shutdown(graph, run_root, driver)
    return figs


def available_drivers(base: str) -> dict[str, str | None]:
    """driver -> None if usable here, else why not."""
    os.makedirs(base, exist_ok=True)
    out: dict[str, str | None] = {"vfs": common.driver_available("vfs", base)}
    out["overlay"] = common.driver_available("overlay", base)
    out["btrfs"] = common.loop_fs_available("btrfs")
    return out


def print_figures(all_figs: list[Figures]) -> None:
    rows = []
    for f in all_figs:
        rows.append([f.driver, f.trials, f.kills, f.call_kills, f.delay_kills, f.kills_in_open, f.kills_after_ops,
                     f.no_kill, f.rolled_forward, f.rolled_back, f.go_copy_loads, len(f.failures), f"{f.seconds:.0f}s"])
    print(common.table(rows, ["driver", "trials", "kills", "at-call", "by-delay", "in-open", "after-ops",
                              "no-kill", "fwd", "back", "go-copy", "failures", "time"]))
    print()
    rows = [[op, *[f.kills_by_op[op] for f in all_figs]] for op in OPS]
    print(common.table(rows, ["kills in op", *[f.driver for f in all_figs]]))
    for f in all_figs:
        for line in f.failures[:20]:
            print(f"FAIL {f.driver}: {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="trials per driver (default 300: about 200 kills)")
    parser.add_argument("--drivers", default="", help="comma-separated (default: every one usable here)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workdir", default="", help="where the stores live (default: a new temp dir)")
    parser.add_argument("--go-copy-every", type=int, default=5, help="Go loads a crashed copy every N trials (0: never)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)
    base = args.workdir or tempfile.mkdtemp(prefix="lamina-crash-")
    print(f"crash campaign: seed {args.seed}, {args.trials} trials per driver, stores under {base}", flush=True)
    avail = available_drivers(base)
    wanted = [d for d in args.drivers.split(",") if d] or [d for d, why in avail.items() if why is None]
    for d, why in avail.items():
        if d not in wanted or why:
            print(f"  {d}: {'skipped: ' + why if why else 'not selected'}")
    all_figs: list[Figures] = []
    for i, driver in enumerate(wanted):
        if avail.get(driver):
            print(f"  {driver}: not usable here: {avail[driver]}")
            continue
        workdir = os.path.join(base, driver)
        os.makedirs(workdir, exist_ok=True)
        print(f"{driver}:", flush=True)
        if driver == "btrfs":
            with LoopFS(workdir, "btrfs", 2048) as fs:
                figs = campaign(driver, args.trials, args.seed + i, os.path.join(fs.mount, "store"), args.go_copy_every)
                common.rmtree(os.path.join(fs.mount, "store"))
        else:
            figs = campaign(driver, args.trials, args.seed + i, workdir, args.go_copy_every)
            common.rmtree(workdir)
        all_figs.append(figs)
    print()
    print_figures(all_figs)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([{**vars(x), "failures": x.failures} for x in all_figs], f, indent=1)
    if not args.workdir:
        common.rmtree(base)
    total = sum(len(f.failures) for f in all_figs)
    print(f"\n{sum(f.trials for f in all_figs)} trials, {sum(f.kills for f in all_figs)} kills, {total} failures")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
