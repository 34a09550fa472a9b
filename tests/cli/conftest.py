"""Differential harness: the same command sequence through containers-storage and lamina.

Each tool gets its own fresh graph and run roots (vfs driver, given with --graph/--run/
--storage-driver). Outputs are normalised only where the tools cannot agree:

* random 64-hex IDs become ``<ID1>``, ``<ID2>``… in order of first appearance, per tool;
* RFC3339 timestamps (JSON ``created``, logrus ``time=``) become ``<TIME>``;
* each tool's roots become ``<GRAPH>``/``<RUN>``, and its program name ``<PROG>``.

Then stdout, stderr and the exit status are compared.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

# LAMINA_CLI_TESTS_WITHOUT_GO=1 pretends containers-storage is missing (to check the skips).
GO = None if os.environ.get("LAMINA_CLI_TESTS_WITHOUT_GO") else shutil.which("containers-storage")
_VENV_LAMINA = Path(sys.executable).parent / "lamina"
LAMINA = [str(_VENV_LAMINA)] if _VENV_LAMINA.exists() else [sys.executable, "-m", "lamina"]

def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a tool run: no STORAGE_* overrides, and compiled bytecode cached
    outside the source tree (this environment sets PYTHONDONTWRITEBYTECODE, which would make
    every lamina run recompile everything it imports)."""
    import tempfile

    env = dict(os.environ)
    env.pop("STORAGE_DRIVER", None)
    env.pop("STORAGE_OPTS", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), f"lamina-cli-tests-pycache-{os.getuid()}"))
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


_ID = re.compile(r"(?<![0-9a-f:=])[0-9a-f]{64}(?![0-9a-f])")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")

# Lines that only lamina prints in the top-level usage (1.62's flags and commands, lamina's own).
LAMINA_ONLY_USAGE = re.compile(
    r"^  (?:check|config|drivers|export|gc|get-image-dir|get-image-run-dir|import|remove-names) |"
    r"^  --(?:image-store|transient-store|version) ", re.M)


@dataclass
class Result:
    rc: int
    out: str
    err: str
    raw_out: bytes = b""
    raw_err: bytes = b""

    def __str__(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@dataclass
class Tool:
    """One implementation with its own store."""

    kind: str  # "go" or "lamina"
    argv0: list[str]
    graph: str
    run_root: str
    ids: dict[str, str] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)

    @property
    def prog(self) -> str:
        return "containers-storage" if self.kind == "go" else "lamina"

    def base(self) -> list[str]:
        return ["--graph", self.graph, "--run", self.run_root, "--storage-driver", "vfs"]

    def run(self, args: list[str], *, stdin: bytes | None = None, base: bool = True,
            env: dict[str, str] | None = None, cwd: str | None = None, timeout: float = 60,
            normalise: bool = True) -> Result:
        argv = [*self.argv0, *(self.base() if base else []), *[self.expand(a) for a in args]]
        proc = subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True,
                              env=subprocess_env(env), cwd=cwd, timeout=timeout)
        raw = Result(proc.returncode, "", "", proc.stdout, proc.stderr)
        return self.finish(raw) if normalise else raw

    def finish(self, raw: Result) -> Result:
        """Fill in the normalised text of a raw result (IDs are numbered in call order)."""
        return Result(raw.rc, self.normalise(raw.raw_out), self.normalise(raw.raw_err), raw.raw_out, raw.raw_err)

    def expand(self, arg: str) -> str:
        """``{NAME}`` in an argument becomes this tool's captured value; ``{GRAPH}``/``{RUN}`` its roots."""
        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key == "GRAPH":
                return self.graph
            if key == "RUN":
                return self.run_root
            return self.vars[key]
        return re.sub(r"\{([A-Z][A-Z0-9_]*)\}", sub, arg)

    def normalise(self, data: bytes) -> str:
        text = data.decode("utf-8", "replace")
        text = text.replace(self.graph, "<GRAPH>").replace(self.run_root, "<RUN>")
        text = text.replace(os.path.dirname(self.graph), "<DIR>")

        def id_sub(m: re.Match[str]) -> str:
            value = m.group(0)
            if value not in self.ids:
                self.ids[value] = f"<ID{len(self.ids) + 1}>"
            return self.ids[value]

        text = _ID.sub(id_sub, text)
        text = _TIME.sub("<TIME>", text)
        text = re.sub(r"(?<![/\w.-])" + re.escape(self.prog) + r"(?![\w-])", "<PROG>", text)
        return text

    def capture(self, name: str, result: Result, index: int = 0) -> str:
        """Remember the *index*-th 64-hex ID of *result*'s raw stdout as ``{name}``."""
        found = _ID.findall(result.raw_out.decode("utf-8", "replace"))
        self.vars[name] = found[index]
        return found[index]


def make_tools(tmp_path: Path) -> tuple[Tool, Tool]:
    (tmp_path / "go").mkdir(parents=True, exist_ok=True)
    (tmp_path / "la").mkdir(parents=True, exist_ok=True)
    go = Tool("go", ["containers-storage"], str(tmp_path / "go" / "graph"), str(tmp_path / "go" / "run"))
    la = Tool("lamina", list(LAMINA), str(tmp_path / "la" / "graph"), str(tmp_path / "la" / "run"))
    return go, la


@pytest.fixture
def tools(tmp_path: Path) -> tuple[Tool, Tool]:
    # No "shutdown -f" at teardown: Go 1.43's loops forever when a layer is mounted (it
    # decrements the count of a copy), and vfs mounts are plain directories anyway.
    return make_tools(tmp_path)


@dataclass
class Step:
    """One command of a scenario. ``capture`` stores the first ID of stdout as a variable."""

    args: list[str]
    stdin: bytes | None = None
    capture: str | None = None
    sort: bool = False  # Go prints these lines in map (random) order
    base: bool = True
    env: dict[str, str] | None = None
    check: Callable[[Result, Result], None] | None = None
    compare: bool = True
    filter_usage: bool = False
    in_tool_dir: bool = False  # run with the tool's own directory (parent of its roots) as cwd


def filter_lamina_only(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not LAMINA_ONLY_USAGE.match(line + " "))


def _sorted_lines(text: str) -> str:
    return "\n".join(sorted(text.split("\n")))


def describe(go: tuple[int, str, str], la: tuple[int, str, str]) -> str:
    """A readable account of how two (rc, stdout, stderr) triples differ."""
    import difflib

    parts = []
    if go[0] != la[0]:
        parts.append(f"exit status: go {go[0]}, lamina {la[0]}")
    for label, a, b in (("stdout", go[1], la[1]), ("stderr", go[2], la[2])):
        if a != b:
            diff = difflib.unified_diff(a.splitlines(), b.splitlines(), f"go {label}", f"lamina {label}",
                                        lineterm="", n=2)
            parts.append("\n".join(diff) + ("\n(trailing newline differs)" if a.rstrip("\n") == b.rstrip("\n") else ""))
    return "\n".join(parts)


def run_pair(go: Tool, la: Tool, steps: list[Step]) -> list[tuple[Step, Result, Result]]:
    """Run *steps* through both tools (concurrently: their stores are separate) and compare."""
    results: dict[str, list[Result]] = {"go": [], "lamina": []}
    crashes: list[BaseException] = []

    def drive(tool: Tool) -> None:
        try:
            _drive(tool)
        except BaseException as exc:  # reported below: a dead thread must fail the test
            crashes.append(exc)

    def _drive(tool: Tool) -> None:
        for step in steps:
            cwd = os.path.dirname(tool.graph) if step.in_tool_dir else None
            res = tool.run(step.args, stdin=step.stdin, base=step.base, env=step.env, cwd=cwd)
            if step.capture:
                assert res.rc == 0, f"{tool.kind}: {' '.join(step.args)} failed, nothing to capture:\n{res}"
                tool.capture(step.capture, res)
            results[tool.kind].append(res)

    threads = [threading.Thread(target=drive, args=(t,)) for t in (go, la)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if crashes:
        raise crashes[0]
    assert len(results["go"]) == len(results["lamina"]) == len(steps)
    problems = []
    out = []
    for step, g, l in zip(steps, results["go"], results["lamina"]):
        out.append((step, g, l))
        if step.check is not None:
            step.check(g, l)
        if not step.compare:
            continue
        gv = (g.rc, g.out, g.err)
        lv = (l.rc, l.out, l.err)
        if step.filter_usage:
            lv = (l.rc, filter_lamina_only(l.out), filter_lamina_only(l.err))
        if step.sort:
            gv = (gv[0], _sorted_lines(gv[1]), _sorted_lines(gv[2]))
            lv = (lv[0], _sorted_lines(lv[1]), _sorted_lines(lv[2]))
        if gv != lv:
            problems.append(f"$ {' '.join(step.args)}\n" + describe(gv, lv))
    assert not problems, "outputs differ:\n\n" + "\n\n".join(problems)
    return out


# ---------------------------------------------------------------- inputs


def make_tar(entries: list[dict[str, Any]]) -> bytes:
    """A GNU tar built from *entries* (name, type, data, mode, uid, gid, linkname), fixed mtime."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            info.mtime = e.get("mtime", 1_700_000_000)
            info.uid = e.get("uid", 0)
            info.gid = e.get("gid", 0)
            info.uname = info.gname = ""
            kind = e.get("type", "file")
            data = e.get("data", b"")
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = e.get("mode", 0o755)
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e["linkname"]
                info.mode = 0o777
                tar.addfile(info)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = e["linkname"]
                info.mode = e.get("mode", 0o644)
                tar.addfile(info)
            else:
                info.mode = e.get("mode", 0o644)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BASE_TAR = [
    {"name": "etc", "type": "dir"},
    {"name": "etc/hello.txt", "data": b"hello\n"},
    {"name": "etc/hello-hard", "type": "hardlink", "linkname": "etc/hello.txt"},
    {"name": "link-to-hello", "type": "symlink", "linkname": "etc/hello.txt"},
    {"name": "dir1", "type": "dir"},
    {"name": "dir1/a.txt", "data": b"a\n"},
    {"name": "dir1/b.txt", "data": b"bb\n", "uid": 1000, "gid": 1001},
    {"name": "opaque-dir", "type": "dir"},
    {"name": "opaque-dir/old.txt", "data": b"old\n"},
]

CHILD_TAR = [
    {"name": "dir1", "type": "dir"},
    {"name": "dir1/.wh.a.txt"},
    {"name": "opaque-dir", "type": "dir"},
    {"name": "opaque-dir/.wh..wh..opq"},
    {"name": "opaque-dir/new.txt", "data": b"new\n"},
    {"name": "newfile.txt", "data": b"fresh\n"},
]

THIRD_TAR = [{"name": "third.txt", "data": b"third layer\n"}]


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """Input files shared by both tools: tars, a gzipped tar, big data, metadata."""
    return write_inputs(tmp_path / "inputs")


def write_inputs(d: Path) -> dict[str, Path]:
    import gzip

    d.mkdir(parents=True, exist_ok=True)
    files = {
        "base.tar": make_tar(BASE_TAR),
        "child.tar": make_tar(CHILD_TAR),
        "third.tar.gz": gzip.compress(make_tar(THIRD_TAR), mtime=0),
        "manifest.json": b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}',
        "big.bin": bytes((i * 7 + 3) % 251 for i in range(100_000)),
        "meta.txt": b"metadata from a file\n",
        "junk.tar": b"this is not a tar archive at all" * 20,
    }
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    return out


# ---------------------------------------------------------------- wiring for the test modules


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Tests marked ``needs_go`` are skipped, with the reason, when containers-storage is missing."""
    if GO is not None:
        return
    skip = pytest.mark.skip(reason="containers-storage (Go, 1.43) is not installed; "
                                   "apt-get install containers-storage")
    here = Path(__file__).parent
    for item in items:
        if item.get_closest_marker("needs_go") is not None and here in Path(str(item.path)).parents:
            item.add_marker(skip)


class Harness:
    """What test modules use (they cannot import conftest under --import-mode=importlib)."""

    Step = Step
    Result = Result
    Tool = Tool
    run_pair = staticmethod(run_pair)
    make_tools = staticmethod(make_tools)
    make_tar = staticmethod(make_tar)
    describe = staticmethod(describe)
    LAMINA = LAMINA
    GO = GO
    subprocess_env = staticmethod(subprocess_env)


@pytest.fixture
def h() -> type[Harness]:
    return Harness
