"""Differential tests of everything that happens before a command runs: usage and help texts,
flag parsing (mflag), argument counts, unknown commands and flags, option defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.cli.table import COMMANDS

pytestmark = pytest.mark.needs_go

GO_COMMANDS = [c for c in COMMANDS if c.origin == "1.43"]
# copy's usage panics in Go (it registers a flag with an empty name); see test_cli_lamina.py.
HELPABLE = [c for c in GO_COMMANDS if c.names[0] != "copy"]


def test_top_level_usage_help_and_bad_flags(tools, h):
    go, la = tools
    S = h.Step
    steps = [
        S([], base=False, filter_usage=True),
        S(["--help"], base=False, filter_usage=True),
        S(["-help"], base=False, filter_usage=True),
        S(["-h"], base=False, filter_usage=True),
        S(["-D"], base=False, filter_usage=True),
        S(["--bogus"], base=False, filter_usage=True),
        S(["-x"], base=False, filter_usage=True),
        S(["-Dx"], base=False, filter_usage=True),
        S(["--graph"], base=False, filter_usage=True),
        S(["-D=maybe"], base=False, filter_usage=True),
        S(["-=x"], base=False, filter_usage=True),
        S(["bogus"], base=False),
        S(["bogus", "--json"]),
        S(["--", "layers", "-j"]),
    ]
    h.run_pair(go, la, steps)


def test_every_command_help(tools, h):
    go, la = tools
    Step = h.Step
    steps = [Step([c.names[0], "--help"]) for c in HELPABLE]
    # aliases appear as typed, and -h / -help behave like --help
    steps += [Step(["createlayer", "--help"]), Step(["umount", "-h"]), Step(["diff-size", "-help"]),
              Step(["layers", "-jh"])]
    h.run_pair(go, la, steps)


def test_argument_counts(tools, h):
    go, la = tools
    Step = h.Step
    steps = []
    for c in HELPABLE:
        name = c.names[0]
        if c.min_args:
            steps.append(Step([name] + ["a"] * (c.min_args - 1)))
        if c.max_args:
            steps.append(Step([name] + [f"x{i}" for i in range(c.max_args + 1)]))
    steps.append(Step(["layers", "extra", "args", "are", "ignored"]))  # max 0 means "no check"
    steps.append(Step(["copy", "onlyone"], compare=False))  # Go panics printing copy's usage
    h.run_pair(go, la, steps)


def test_flag_parsing(tools, h):
    go, la = tools
    S = h.Step
    steps = [
        S(["layers", "--bogus"]), S(["layers", "-jx"]), S(["layers", "-j=maybe"]), S(["layers", "-x"]),
        S(["create-layer", "-n"]), S(["create-layer", "--name"]), S(["layers", "-=x"]), S(["layers", "--=x"]),
        S(["layers", "-"]), S(["layers", "--", "-j"]), S(["layers", "-j='true'"]), S(["layers", "-j=1"]),
        S(["layers", "-j=F"]), S(["images", "-qj"]), S(["layers", "-tj"]),
        # flags stop at the first positional argument
        S(["create-layer", "-i", "0" * 64, "-n", "first", "-j"]),
        S(["create-layer", "0" * 64, "-n", "x"]),
        S(["layer", "-j", "first", "--json"]),
        # global flags are accepted again after the command; lists repeat
        S(["layers", "--graph", "{GRAPH}", "-R", "{RUN}", "-s", "vfs", "-D=false"]),
        S(["create-image", "-n", "a", "--name=b", "-n", "'c'", "--name", '"d"', "-j"], capture="IMG"),
        S(["get-names", "{IMG}"]),
        S(["--storage-opt", "vfs.bogus=1", "layers"]),
        S(["layers", "--storage-opt=vfs.bogus=1"]),
        S(["layers", "--storage-opt"]),
    ]
    h.run_pair(go, la, steps)


def test_store_options_and_defaults(tools, h):
    go, la = tools
    S = h.Step
    steps = [
        # no graph and no run root: GetStore refuses
        S(["-s", "vfs", "layers"], base=False),
        S(["--storage-opt", "vfs.ignore_chown_errors=true", "layers"], base=False),
        # relative roots are made absolute (against each tool's own directory here)
        S(["-g", "rel/graph", "-R", "rel/run", "-s", "vfs", "create-layer", "-n", "rel"], base=False,
          in_tool_dir=True),
        S(["-g", "rel/graph", "-R", "rel/run", "-s", "vfs", "status"], base=False, in_tool_dir=True),
        S(["-g", "rel/graph", "-R", "rel/run", "-s", "vfs", "layers", "--help"], base=False, in_tool_dir=True),
        # the sub-command's usage shows the effective values as defaults
        S(["-D", "--storage-opt", "vfs.ignore_chown_errors=1", "layers", "--help"]),
        S(["-D", "layers"]),
        S(["layers", "-D"]),
    ]
    h.run_pair(go, la, steps)


@pytest.fixture
def conf(tmp_path: Path) -> dict[str, str]:
    """A storage.conf (vfs, roots under tmp) each tool reads through CONTAINERS_STORAGE_CONF."""
    paths = {}
    for kind in ("go", "lamina"):
        root = tmp_path / f"conf-{kind[:2]}"
        root.mkdir()
        (root / "storage.conf").write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'runroot = "{root}/run"\n'
            f'graphroot = "{root}/graph"\n'
            "[storage.options.vfs]\n"
            'ignore_chown_errors = "true"\n')
        paths[kind] = str(root / "storage.conf")
    return paths


def test_storage_conf_defaults_and_environment(tools, conf):
    """storage.conf is read only when no global flag names a root, driver or option; then
    STORAGE_DRIVER and STORAGE_OPTS apply. Flags after the command override single values."""
    go, la = tools
    results = {}
    for tool in (go, la):
        env = {"CONTAINERS_STORAGE_CONF": conf[tool.kind]}
        root = str(Path(conf[tool.kind]).parent)
        runs = [
            tool.run(["status"], base=False, env=env),
            tool.run(["status", "-j"], base=False, env=env),
            tool.run(["layers", "--help"], base=False, env=env),
            tool.run(["status"], base=False, env={**env, "STORAGE_OPTS": "vfs.ignore_chown_errors=false"}),
            tool.run(["status"], base=False, env={**env, "STORAGE_DRIVER": "vfs"}),
            tool.run(["create-layer", "-n", "from-conf"], base=False, env=env),
            tool.run(["layers"], base=False, env=env),
            # a flag before the command disables storage.conf entirely (no run root: the default)
            tool.run(["-g", root + "/graph", "-R", root + "/run", "-s", "vfs", "status"], base=False, env=env),
            # GetStore fills a missing run root from the configured defaults
            tool.run(["-g", root + "/graph", "-s", "vfs", "status"], base=False, env=env),
            tool.run(["-s", "vfs", "status"], base=False, env=env),
            # after the command, storage.conf is loaded first and the flag overrides one value
            tool.run(["status", "--storage-opt", "vfs.ignore_chown_errors=false"], base=False, env=env),
        ]
        results[tool.kind] = [(r.rc, r.out.replace(root, "<CONF>"), r.err.replace(root, "<CONF>")) for r in runs]
    assert results["go"] == results["lamina"]
