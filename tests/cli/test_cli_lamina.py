"""lamina's own CLI behaviour (no Go needed): the mflag emulation, JSON encoding, lamina-only
commands and flags, 1.62 additions, and the start-up import discipline."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.cli import flags as mflag
from lamina.cli.output import go_json, go_map
from lamina.cli.table import COMMANDS, find

LAMINA = [str(Path(sys.executable).parent / "lamina")]
if not Path(LAMINA[0]).exists():
    LAMINA = [sys.executable, "-m", "lamina"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    import tempfile

    full = dict(os.environ)
    full.pop("STORAGE_DRIVER", None)
    full.pop("STORAGE_OPTS", None)
    full.pop("PYTHONDONTWRITEBYTECODE", None)  # cache bytecode outside the tree instead
    full.setdefault("PYTHONPYCACHEPREFIX",
                    os.path.join(tempfile.gettempdir(), f"lamina-cli-tests-pycache-{os.getuid()}"))
    full.update(extra or {})
    return full


def run(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([*LAMINA, *args], capture_output=True, env=_env(env), input=stdin, timeout=60)


@pytest.fixture
def store_args(tmp_path: Path) -> list[str]:
    return ["-g", str(tmp_path / "graph"), "-R", str(tmp_path / "run"), "-s", "vfs"]


# ---------------------------------------------------------------- mflag emulation


def _flagset(error_handling=mflag.CONTINUE_ON_ERROR):
    fs = mflag.FlagSet("cmd", "prog", error_handling)
    fs.out = io.StringIO()
    fs.bool(["-json", "j"], False, "Prefer JSON output")
    fs.bool(["-quiet", "q"], False, "Quiet")
    fs.string(["-id", "i"], "", "An ID")
    fs.list(["-name", "n"], [], "A name")
    return fs


def test_flags_long_short_values_and_lists():
    fs = _flagset()
    rest = fs.parse(["--json", "-i", "abc", "--name=a", "-n", "b", "--name='c'", "-n", "'d'", "pos", "-q"])
    assert rest == ["pos", "-q"]
    v = fs.values()
    # quotes are trimmed only from the "=value" form
    assert v == {"json": True, "quiet": False, "id": "abc", "name": ["a", "b", "c", "'d'"]}


def test_flags_clusters_bool_values_and_terminator():
    fs = _flagset()
    assert fs.parse(["-jq", "--", "-j"]) == ["-j"]
    assert fs.values()["json"] and fs.values()["quiet"]
    fs = _flagset()
    fs.parse(["-j=false", "-q=T"])
    assert fs.values()["json"] is False and fs.values()["quiet"] is True
    fs = _flagset()
    assert fs.parse(["-", "-j"]) == ["-", "-j"]
    fs = _flagset()
    fs.parse(["-jn", "x"])  # a cluster may end with a flag that takes the next argument
    assert fs.values()["name"] == ["x"]


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "flag provided but not defined: --bogus"),
    (["-x"], "flag provided but not defined: -x"),
    (["-jx"], "flag provided but not defined: -jx"),
    (["-j=maybe"], 'invalid boolean value "maybe" for  -j: strconv.ParseBool: parsing "maybe": invalid syntax'),
    (["-n"], "flag needs an argument: -n"),
    (["-=x"], "bad flag syntax: -=x"),
])
def test_flags_errors(args, message):
    fs = _flagset()
    with pytest.raises(mflag.FlagError) as info:
        fs.parse(args)
    assert str(info.value) == message
    assert fs.out.getvalue() == f"{message}\nSee 'prog cmd --help'.\n"


def test_flags_exit_on_error_and_help():
    fs = _flagset(mflag.EXIT_ON_ERROR)
    with pytest.raises(SystemExit) as info:
        fs.parse(["--nope"])
    assert info.value.code == 125
    called = []
    fs = _flagset()
    fs.usage = lambda: called.append(True)
    with pytest.raises(mflag.HelpRequested):
        fs.parse(["-h"])
    assert called == [True]


def test_print_defaults_alignment_sorting_and_home(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    fs = mflag.FlagSet("x", "prog")
    fs.string(["-graph", "g"], "/home/someone/store", "Root of the storage tree")
    fs.bool(["-debug", "D"], False, "Print debugging information")
    fs.list(["-storage-opt"], ["a=b"], "Options")
    fs.bool(["#help", "-help"], False, "Print usage")
    fs.bool(["!-hidden"], False, "Not shown")
    # column width: the longest cell (21) plus padding 3
    assert fs.format_defaults() == (
        "\n"
        "  --debug, -D" + " " * 11 + " Print debugging information\n"
        "  --graph, -g=~/store" + " " * 3 + " Root of the storage tree\n"
        "  --help" + " " * 16 + " Print usage\n"
        "  --storage-opt=[a=b]" + " " * 3 + " Options\n")


def test_tabwrite_minimum_width():
    assert mflag.tabwrite(["a\t b", "ccc\t d"]) == "a" + " " * 19 + " b\n" + "ccc" + " " * 17 + " d\n"


# ---------------------------------------------------------------- JSON and quoting


def test_go_json_matches_encoding_json():
    value = {"a": "<&>\u2028\n\t\x01\x08", "b": [1, True, None], "c": {}}
    assert go_json(value) == '{"a":"\\u003c\\u0026\\u003e\\u2028\\n\\t\\u0001\\u0008","b":[1,true,null],"c":{}}\n'
    assert go_json(go_map({"b": 1, "a": 2})) == '{"a":2,"b":1}\n'
    assert json.loads(go_json(value)) == value


def test_go_quote():
    assert mflag.go_quote('a"b\\c\nd\x00é') == 'a\\"b\\\\c\\nd\\x00é'


# ---------------------------------------------------------------- the command table


def test_command_table_is_consistent():
    seen = set()
    for command in COMMANDS:
        for name in command.names:
            assert name not in seen, name
            seen.add(name)
            assert find(name) is command
        module, func = command.target.split(":")
        assert module.startswith("lamina.cli.cmd_")
        assert (Path(__file__).parents[2] / "core" / "lamina" / "cli" / f"{module.rsplit('.', 1)[1]}.py").exists()
    go_names = {c.names[0] for c in COMMANDS if c.origin == "1.43"}
    assert len(go_names) == 50


def test_every_command_target_exists():
    import importlib

    for command in COMMANDS:
        module, func = command.target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), command.target


# ---------------------------------------------------------------- start-up discipline


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=60, env=_env()).stdout
    return set(out.split())


def test_importing_the_cli_is_light():
    mods = _modules_after("import lamina.cli")
    for heavy in ("json", "lamina.store", "pluggy", "stevedore", "lamina.config", "importlib.metadata"):
        assert heavy not in mods, heavy


def test_version_and_drivers_do_not_load_the_store():
    mods = _modules_after("import sys\nsys.argv = ['lamina', '--version']\nfrom lamina.cli import main\n"
                          "import contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n    main()")
    for heavy in ("lamina.store", "stevedore", "pluggy", "lamina_vfs", "lamina_overlay", "lamina_btrfs"):
        assert heavy not in mods, heavy
    mods = _modules_after("import sys\nsys.argv = ['lamina', '-g', '/nonexistent/x', 'drivers']\n"
                          "from lamina.cli import main\nimport contextlib, io\n"
                          "with contextlib.redirect_stdout(io.StringIO()):\n    main()")
    for heavy in ("lamina.store", "stevedore", "lamina.metastore"):
        assert heavy not in mods, heavy


# ---------------------------------------------------------------- lamina-only commands


def test_version_flag():
    from importlib.metadata import entry_points

    import lamina

    res = run("--version")
    assert res.returncode == 0, res
    lines = res.stdout.decode().splitlines()
    assert lines[0] == f"lamina {lamina.__version__}"
    dists = {(ep.dist.name, ep.dist.version) for ep in entry_points(group="lamina.drivers")}
    assert len(lines) == 1 + len(dists)
    for name, version in dists:
        assert any(line.startswith(f"{name} {version} (driver") for line in lines[1:]), (name, lines)


def test_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "lamina", "--version"], capture_output=True, timeout=60, env=_env())
    assert res.returncode == 0 and res.stdout.startswith(b"lamina ")
    res = subprocess.run([sys.executable, "-m", "lamina", "bogus"], capture_output=True, timeout=60, env=_env())
    assert res.returncode == 1 and res.stdout == b"bogus: unrecognized command.\n"


def test_drivers(tmp_path: Path):
    from importlib.metadata import entry_points

    names = sorted(ep.name for ep in entry_points(group="lamina.drivers"))
    res = run("-g", str(tmp_path), "drivers")
    assert res.returncode == 0, res
    lines = res.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "SUPPORTED", "REASON"]
    assert [line.split()[0] for line in lines[1:]] == names
    rows = json.loads(run("-g", str(tmp_path), "drivers", "-j").stdout)
    assert [r["name"] for r in rows] == names
    by_name = {r["name"]: r for r in rows}
    if "vfs" in by_name:
        assert by_name["vfs"]["supported"] is True and by_name["vfs"]["reason"] == ""
    for r in rows:
        assert r["supported"] or r["reason"], r
    help_text = run("drivers", "--help")
    assert help_text.returncode == 125 and b"graph root" in help_text.stdout


def test_fast_entry_point_reader_agrees_with_importlib_metadata():
    from importlib.metadata import entry_points as slow

    from lamina.cli.entrypoints import entry_points

    for group in ("lamina.drivers", "console_scripts", "pytest11"):
        fast = {(ep.name, ep.value, ep.dist_name, ep.dist_version) for ep in entry_points(group)}
        reference = {(ep.name, ep.value, ep.dist.name, ep.dist.version) for ep in slow(group=group)}
        assert fast == reference, group


@pytest.mark.parametrize("graphroot", [None, "/srv/store", "$HOME/store", "relative/x"])
def test_drivers_fast_graph_root_agrees_with_config(graphroot, tmp_path: Path, monkeypatch):
    from lamina.cli.cmd_misc import _fast_graph_root
    from lamina.config import load_store_options

    conf = tmp_path / "storage.conf"
    conf.write_text("[storage]\n" + (f'graphroot = "{graphroot}"\n' if graphroot else ""))
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    fast = _fast_graph_root()
    if fast is None:  # it defers to lamina.config for anything unusual
        assert os.geteuid() != 0 or graphroot in ("$HOME/store", "relative/x")
        return
    assert fast == load_store_options().graph_root


def test_usage_lists_lamina_and_1_62_additions():
    res = run("--help")
    assert res.returncode == 0
    text = res.stdout.decode()
    for name in ("drivers", "config", "get-image-dir", "remove-names", "check", "gc", "import", "export",
                 "--version", "--transient-store", "--image-store"):
        assert name in text, name


def test_copy_usage_does_not_panic():
    res = run("copy", "--help")
    assert res.returncode == 125
    assert b"--chown" in res.stderr and b"panic" not in res.stderr


def test_unknown_driver_is_actionable(store_args):
    res = run("-g", store_args[1], "-R", store_args[3], "-s", "nosuch", "layers")
    assert res.returncode == 1
    assert res.stdout.startswith(b"error initializing: graph driver 'nosuch' is not installed")
    assert b"vfs" in res.stdout


def test_config_command(tmp_path: Path):
    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "vfs"\nrunroot = "/tmp/r"\ngraphroot = "/tmp/g"\n')
    res = run("config", str(conf))
    assert res.returncode == 0, res
    data = json.loads(res.stdout)
    assert data["driver"] == "vfs" and data["root"] == "/tmp/g" and data["runroot"] == "/tmp/r"
    res = run("config", env={"CONTAINERS_STORAGE_CONF": str(conf)})
    assert json.loads(res.stdout)["root"] == "/tmp/g"
    conf.write_text("this is = = not toml")
    res = run("config", str(conf))
    assert res.returncode == 1 and b"reload: " in res.stderr and str(conf).encode() in res.stderr


def test_image_dirs_and_remove_names(store_args):
    img = run(*store_args, "create-image", "-n", "a", "-n", "b", "-n", "c").stdout.split()[0].decode()
    res = run(*store_args, "get-image-dir", "b")
    path = res.stdout.decode().strip()
    assert res.returncode == 0 and path.endswith(f"/vfs-images/{img}/userdata") and os.path.isdir(path)
    res = run(*store_args, "get-image-run-dir", img[:12])
    path = res.stdout.decode().strip()
    assert path == f"{store_args[3]}/vfs-images/{img}/userdata" and os.path.isdir(path)
    res = run(*store_args, "get-image-dir", "nope")
    assert res.returncode == 1 and res.stderr == b'locating image with ID "nope": image not known\n'
    res = run(*store_args, "remove-names", "-j", "-n", "b", "-n", "nope", "a")
    assert res.returncode == 0 and json.loads(res.stdout) == ["a", "c"]
    res = run(*store_args, "removenames", "-n", "a", "-n", "c", "-j", img)
    assert json.loads(res.stdout) is None


def test_transient_store_and_image_store(store_args):
    img = run(*store_args, "create-image", "-n", "img").stdout.split()[0].decode()
    res = run(*store_args, "--transient-store", "create-container", "-n", "t", "img")
    assert res.returncode == 0, res
    assert run(*store_args, "--transient-store", "containers").stdout.split()[0] == res.stdout.split()[0]
    assert run(*store_args, "containers", "-j").stdout == b"[]\n"
    assert os.path.exists(os.path.join(store_args[3], "vfs-containers", "volatile-containers.json"))
    assert img


def test_image_store_flag(store_args, tmp_path):
    images = str(tmp_path / "split-images")
    res = run(*store_args, "--image-store", images, "create-layer", "-r", "-n", "ro")
    assert res.returncode == 0, res
    layer = res.stdout.split()[0].decode()
    res = run(*store_args, "--image-store", images, "create-image", "-n", "split", layer)
    assert res.returncode == 0, res
    assert os.path.isdir(os.path.join(images, "vfs", "dir", layer))
    assert b"split" in run(*store_args, "--image-store", images, "images").stdout
    assert run(*store_args, "images", "-j").stdout == b"null\n"  # the graph root alone does not hold it


def test_check_and_gc_are_wired(store_args):
    assert run(*store_args, "create-layer", "-n", "l").returncode == 0
    res = run(*store_args, "check")
    assert res.returncode == 0 and res.stdout == b"" and res.stderr == b"", res
    res = run(*store_args, "check", "-q", "-j")
    assert res.returncode == 0 and isinstance(json.loads(res.stdout), dict), res
    res = run(*store_args, "gc")
    assert res.returncode == 0 and res.stderr == b"", res
    res = run(*store_args, "check", "-m", "bogus")
    assert res.returncode == 1 and res.stderr, res


def test_import_export_are_wired(store_args, tmp_path: Path):
    for name in ("import", "export"):
        res = run(name, "--help")
        assert res.returncode == 125 and f"Usage: lamina {name} ".encode() in res.stdout
    res = run(*store_args, "import", f"oci:{tmp_path}/missing")
    assert res.returncode == 1 and res.stderr and res.stdout == b"", res
    res = run(*store_args, "export", "nope", f"oci:{tmp_path}/out")
    assert res.returncode == 1 and b"image not known" in res.stderr, res


def test_mount_read_only_alias_and_parent_owners(store_args):
    layer = run(*store_args, "create-layer").stdout.split()[0].decode()
    run(*store_args, "create-image", "-n", "img", layer)
    res = run(*store_args, "mount", "--read-only", "img")
    assert res.returncode == 0 and res.stdout.decode().strip().endswith(f"/vfs/dir/{layer}")
    assert b"--read-only" not in run(*store_args, "mount", "--help").stderr  # help stays Go's
    res = run(*store_args, "layer-parent-owners", "-j", layer)
    assert json.loads(res.stdout) == {"ID": layer, "UIDs": None, "GIDs": None}
    ctr = run(*store_args, "create-container", "img").stdout.split()[0].decode()
    res = run(*store_args, "container-parent-owners", ctr)
    assert res.stdout == f"ID: {ctr}\nUIDs: []\nGIDs: []\n".encode()


def test_mapped_layer_parent_owners(store_args):
    res = run(*store_args, "create-layer", "--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536")
    layer = res.stdout.split()[0].decode()
    res = run(*store_args, "layer-parent-owners", layer)
    assert res.returncode == 1 and res.stderr == b"LayerParentOwner: layer is not mounted\n"
    mount = run(*store_args, "mount", layer).stdout.decode().strip()
    res = run(*store_args, "layer-parent-owners", "-j", layer)
    data = json.loads(res.stdout)
    # the directories above the mount point belong to root (0), which the map cannot represent
    assert data["ID"] == layer and 0 in data["UIDs"] and 0 in data["GIDs"], (data, mount)
    res = run(*store_args, "layer", layer)
    assert b"UID mapping: (container=0, host=100000, size=65536)" in res.stdout
