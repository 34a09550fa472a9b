"""Tests for lamina.config: search order, defaults, every key, env overrides, errors, JSON shape."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lamina import config
from lamina.config import (
    StoreOptions,
    expand_env_path,
    load_store_options,
    storage_conf_path,
    to_config_json,
)
from lamina.errors import ConfigError
from lamina.types import IDMap

UID = "1000"


@pytest.fixture
def sysconf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point the system files and runtime bases into tmp_path so the host's files never matter."""
    etc = tmp_path / "etc" / "storage.conf"
    usr = tmp_path / "usr" / "storage.conf"
    etc.parent.mkdir()
    usr.parent.mkdir()
    run_user = tmp_path / "run-user"
    run_user.mkdir()
    tmp_run = tmp_path / "tmprun"
    monkeypatch.setattr(config, "OVERRIDE_CONFIG_FILE", str(etc))
    monkeypatch.setattr(config, "SYSTEM_CONFIG_FILE", str(usr))
    monkeypatch.setattr(config, "RUN_USER_BASE", str(run_user))
    monkeypatch.setattr(config, "TMP_RUN_BASE", str(tmp_run))
    return {"etc": etc, "usr": usr, "run_user": run_user, "tmp_run": tmp_run, "root": tmp_path}


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def rootless_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_RUNTIME_DIR": "/xdg/run",
        "_CONTAINERS_ROOTLESS_UID": UID,
    }
    env.update(extra)
    return env


# ---------------------------------------------------------------- defaults


def test_rootful_defaults_without_any_file(sysconf: dict[str, Path]) -> None:
    opts = load_store_options(rootless=False, environ={})
    assert opts.graph_root == "/var/lib/containers/storage"
    assert opts.run_root == "/run/containers/storage"
    assert opts.graph_driver_name == ""
    assert opts.graph_driver_options == []
    assert opts.image_store is None
    assert opts.transient_store is False
    assert opts.config_file is None
    assert opts.warnings == []


def test_rootless_defaults_use_xdg_dirs(sysconf: dict[str, Path], tmp_path: Path) -> None:
    env = rootless_env(tmp_path, XDG_DATA_HOME="/data/home")
    opts = load_store_options(rootless=True, environ=env)
    assert opts.graph_root == "/data/home/containers/storage"
    assert opts.run_root == "/xdg/run/containers"
    # 1.43 falls back to vfs when the system configuration names no rootless-capable driver
    assert opts.graph_driver_name == "vfs"


def test_rootless_defaults_use_home_without_xdg_data(sysconf: dict[str, Path], tmp_path: Path) -> None:
    opts = load_store_options(rootless=True, environ=rootless_env(tmp_path))
    assert opts.graph_root == str(tmp_path / "home/.local/share/containers/storage")


def test_rootless_run_root_falls_back_to_tmp(sysconf: dict[str, Path], tmp_path: Path) -> None:
    env = rootless_env(tmp_path)
    del env["XDG_RUNTIME_DIR"]
    opts = load_store_options(rootless=True, environ=env)
    assert opts.run_root == str(sysconf["tmp_run"] / f"storage-run-{UID}" / "containers")


def test_rootless_run_root_uses_owned_run_user_dir(sysconf: dict[str, Path], tmp_path: Path) -> None:
    me = str(os.getuid())
    (sysconf["run_user"] / me).mkdir()
    env = rootless_env(tmp_path, _CONTAINERS_ROOTLESS_UID=me)
    del env["XDG_RUNTIME_DIR"]
    opts = load_store_options(rootless=True, environ=env)
    assert opts.run_root == str(sysconf["run_user"] / me / "containers")


def test_rootless_autodetected_from_uid(sysconf: dict[str, Path], tmp_path: Path) -> None:
    opts = load_store_options(environ=rootless_env(tmp_path, XDG_DATA_HOME="/d"))
    assert opts.graph_root == "/d/containers/storage"
    root = load_store_options(environ={"_CONTAINERS_ROOTLESS_UID": "0"})
    assert root.graph_root == "/var/lib/containers/storage"


def test_rootless_inherits_only_the_safe_part_of_the_system_file(
    sysconf: dict[str, Path], tmp_path: Path
) -> None:
    write(
        sysconf["usr"],
        """
[storage]
driver = "overlay"
graphroot = "/sys/graph"
runroot = "/sys/run"
rootless_storage_path = "/rootless/$USER/$UID"
[storage.options]
additionalimagestores = ["/ais"]
pull_options = {enable_partial_images = "true"}
remap-uids = "0:1:2"
[storage.options.overlay]
mountopt = "nodev"
ignore_chown_errors = "true"
""",
    )
    opts = load_store_options(rootless=True, environ=rootless_env(tmp_path, USER="alice"))
    assert opts.graph_root == "/rootless/alice/1000"
    assert opts.run_root == "/xdg/run/containers"
    assert opts.graph_driver_name == "overlay"
    assert opts.graph_driver_options == ["overlay.ignore_chown_errors=true"]
    assert opts.additional_image_stores == []
    assert opts.uid_map == ()
    assert opts.pull_options == {"enable_partial_images": "true"}


def test_rootless_ignores_a_system_driver_that_cannot_run_rootless(
    sysconf: dict[str, Path], tmp_path: Path
) -> None:
    write(sysconf["usr"], '[storage]\ndriver = "zfs"\n')
    assert load_store_options(rootless=True, environ=rootless_env(tmp_path)).graph_driver_name == "vfs"
    write(sysconf["usr"], '[storage]\ndriver_priority = ["btrfs", "overlay"]\n')
    opts = load_store_options(rootless=True, environ=rootless_env(tmp_path))
    assert opts.graph_driver_name == ""
    assert opts.graph_driver_priority == ["btrfs", "overlay"]


def test_rootless_user_file_replaces_the_system_file(
    sysconf: dict[str, Path], tmp_path: Path
) -> None:
    write(sysconf["usr"], '[storage]\ndriver = "overlay"\n[storage.options]\nsize = "1G"\n')
    user = write(
        tmp_path / "home/.config/containers/storage.conf",
        '[storage]\ndriver = "vfs"\n[storage.options]\nadditionalimagestores = ["/ais"]\n',
    )
    opts = load_store_options(rootless=True, environ=rootless_env(tmp_path))
    assert opts.config_file == user
    assert opts.graph_driver_name == "vfs"
    assert opts.graph_driver_options == []
    assert opts.driver_options_for("vfs") == ["vfs.imagestore=/ais"]
    # roots not set in the user file fall back to the per-user defaults
    assert opts.run_root == "/xdg/run/containers"
    assert opts.graph_root == str(tmp_path / "home/.local/share/containers/storage")


def test_rootless_user_file_rootless_storage_path_sets_graph_root(
    sysconf: dict[str, Path], tmp_path: Path
) -> None:
    write(
        tmp_path / "cfg/containers/storage.conf",
        '[storage]\nrootless_storage_path = "$HOME/stor"\n',
    )
    env = rootless_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    opts = load_store_options(rootless=True, environ=env)
    assert opts.graph_root == str(tmp_path / "home/stor")
    assert opts.rootless_storage_path == str(tmp_path / "home/stor")


# ---------------------------------------------------------------- search order


def test_search_order_rootful(sysconf: dict[str, Path]) -> None:
    assert storage_conf_path(False, environ={}) == str(sysconf["usr"])
    write(sysconf["usr"], "")
    assert storage_conf_path(False, environ={}) == str(sysconf["usr"])
    write(sysconf["etc"], "")
    assert storage_conf_path(False, environ={}) == str(sysconf["etc"])
    assert storage_conf_path(False, environ={"CONTAINERS_STORAGE_CONF": "/x.conf"}) == "/x.conf"


def test_search_order_rootless(sysconf: dict[str, Path], tmp_path: Path) -> None:
    env = rootless_env(tmp_path)
    write(sysconf["etc"], "")
    assert storage_conf_path(True, environ=env) == str(sysconf["etc"])
    home_file = write(tmp_path / "home/.config/containers/storage.conf", "")
    assert storage_conf_path(True, environ=env) == home_file
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    assert storage_conf_path(True, environ=env) == str(sysconf["etc"])
    xdg_file = write(tmp_path / "xdg/containers/storage.conf", "")
    assert storage_conf_path(True, environ=env) == xdg_file
    env["CONTAINERS_STORAGE_CONF"] = "/x.conf"
    assert storage_conf_path(True, environ=env) == "/x.conf"
    # a rootful lookup never looks at the user's file
    del env["CONTAINERS_STORAGE_CONF"]
    assert storage_conf_path(False, environ=env) == str(sysconf["etc"])


def test_etc_file_wins_over_usr_share(sysconf: dict[str, Path]) -> None:
    write(sysconf["usr"], '[storage]\ndriver = "btrfs"\n')
    write(sysconf["etc"], '[storage]\ndriver = "vfs"\n')
    opts = load_store_options(rootless=False, environ={})
    assert opts.graph_driver_name == "vfs"
    assert opts.config_file == str(sysconf["etc"])


def test_env_and_path_argument_select_the_file(sysconf: dict[str, Path], tmp_path: Path) -> None:
    write(sysconf["etc"], '[storage]\ndriver = "btrfs"\n')
    other = write(tmp_path / "other.conf", '[storage]\ndriver = "vfs"\n')
    env = {"CONTAINERS_STORAGE_CONF": other}
    assert load_store_options(rootless=False, environ=env).graph_driver_name == "vfs"
    assert load_store_options(rootless=False, path=other, environ={}).graph_driver_name == "vfs"
    missing = load_store_options(rootless=False, path=str(tmp_path / "nope.conf"), environ={})
    assert missing.graph_driver_name == ""
    assert missing.graph_root == "/var/lib/containers/storage"


def test_explicit_file_for_rootless_keeps_all_its_options(tmp_path: Path, sysconf: dict[str, Path]) -> None:
    conf = write(tmp_path / "x.conf", '[storage]\ndriver = "overlay"\n[storage.options]\nmountopt = "nodev"\n')
    opts = load_store_options(rootless=True, path=conf, environ=rootless_env(tmp_path))
    assert opts.graph_driver_options == ["overlay.mountopt=nodev"]
    assert opts.graph_root == str(tmp_path / "home/.local/share/containers/storage")


# ---------------------------------------------------------------- keys

FULL = """
[storage]
driver = "overlay"
driver_priority = ["overlay", "vfs"]
graphroot = "/g"
runroot = "/r"
imagestore = "/imgs"
rootless_storage_path = "/rl/$UID"
transient_store = true

[storage.options]
additionalimagestores = ["/ais1", "/ais2"]
additionallayerstores = ["/als"]
size = "10G"
mount_program = "/usr/bin/fuse-overlayfs"
skip_mount_home = "true"
ignore_chown_errors = "false"
force_mask = 0o700
mountopt = "nosuid"
remap-uids = "0:100000:65536"
remap-gids = "0:200000:1000:1000:300000:10"
root-auto-userns-user = "storage"
auto-userns-min-size = 1024
auto-userns-max-size = 65536
pull_options = {enable_partial_images = "true", use_hard_links = "false"}
disable-volatile = true
use_composefs = "false"

[storage.options.overlay]
mountopt = "nodev"
inodes = "1000"
force_mask = "shared"
use_composefs = "true"

[storage.options.vfs]
ignore_chown_errors = "true"

[storage.options.btrfs]
min_space = "1G"

[storage.options.zfs]
fsname = "tank"

[storage.options.aufs]
mountopt = "x"

[storage.options.thinpool]
autoextend_percent = "20"
basesize = "10G"
directlvm_device = ""

[storage.options.lamina]
plugins = ["audit", "quota"]
"""


def test_every_key_is_parsed(sysconf: dict[str, Path]) -> None:
    path = write(sysconf["etc"], FULL)
    opts = load_store_options(rootless=False, environ={})
    assert opts.config_file == path
    assert opts.graph_driver_name == "overlay"
    assert opts.graph_driver_priority == ["overlay", "vfs"]
    assert opts.graph_root == "/g"
    assert opts.run_root == "/r"
    assert opts.image_store == "/imgs"
    assert opts.rootless_storage_path == "/rl/0"
    assert opts.transient_store is True
    assert opts.additional_image_stores == ["/ais1", "/ais2"]
    assert opts.additional_layer_stores == ["/als"]
    assert opts.uid_map == (IDMap(0, 100000, 65536),)
    assert opts.gid_map == (IDMap(0, 200000, 1000), IDMap(1000, 300000, 10))
    assert opts.root_auto_ns_user == "storage"
    assert opts.auto_userns_min_size == 1024
    assert opts.auto_userns_max_size == 65536
    assert opts.pull_options == {"enable_partial_images": "true", "use_hard_links": "false"}
    assert opts.disable_volatile is True
    assert opts.plugins == ["audit", "quota"]
    # generic keys first (prefixed with the configured driver), then that driver's table only
    assert opts.graph_driver_options == [
        "overlay.size=10G",
        "overlay.mount_program=/usr/bin/fuse-overlayfs",
        "overlay.skip_mount_home=true",
        "overlay.ignore_chown_errors=false",
        "overlay.force_mask=700",
        "overlay.mountopt=nosuid",
        "overlay.mountopt=nodev",
        "overlay.inodes=1000",
        "overlay.force_mask=shared",
        "overlay.use_composefs=true",
    ]
    assert opts.warnings == []


def test_defaults_of_unset_keys(sysconf: dict[str, Path]) -> None:
    write(sysconf["etc"], '[storage]\ndriver = "vfs"\n')
    opts = load_store_options(rootless=False, environ={})
    assert opts == StoreOptions(
        run_root="/run/containers/storage",
        graph_root="/var/lib/containers/storage",
        graph_driver_name="vfs",
        config_file=str(sysconf["etc"]),
    )


def test_without_driver_every_table_is_kept_with_its_prefix(sysconf: dict[str, Path]) -> None:
    write(
        sysconf["etc"],
        """
[storage]
driver_priority = ["overlay"]
[storage.options]
size = "5G"
[storage.options.overlay]
mountopt = "nodev"
[storage.options.vfs]
ignore_chown_errors = "true"
""",
    )
    opts = load_store_options(rootless=False, environ={})
    assert opts.graph_driver_options == [
        ".size=5G",
        "overlay.mountopt=nodev",
        "vfs.ignore_chown_errors=true",
    ]
    assert opts.driver_options_for("overlay") == [".size=5G", "overlay.mountopt=nodev"]
    assert opts.driver_options_for("vfs") == [".size=5G", "vfs.ignore_chown_errors=true"]


def test_additional_image_stores_become_driver_options(sysconf: dict[str, Path]) -> None:
    write(
        sysconf["etc"],
        '[storage]\ndriver = "vfs"\n[storage.options]\nadditionalimagestores = ["/a", "/b"]\n'
        '[storage.options.vfs]\nignore_chown_errors = "true"\n',
    )
    opts = load_store_options(rootless=False, environ={})
    assert opts.additional_image_stores == ["/a", "/b"]
    assert opts.driver_options_for("vfs") == [
        "vfs.imagestore=/a",
        "vfs.imagestore=/b",
        "vfs.ignore_chown_errors=true",
    ]
    assert opts.driver_options_for("overlay") == ["overlay.imagestore=/a", "overlay.imagestore=/b"]
    assert to_config_json(opts)["driver-options"] == [
        "vfs.imagestore=/a",
        "vfs.imagestore=/b",
        "vfs.ignore_chown_errors=true",
    ]


def test_driver_options_for_filters_by_prefix() -> None:
    opts = StoreOptions(
        run_root="/r",
        graph_root="/g",
        graph_driver_options=[
            "overlay.mountopt=nodev",
            "overlay2.size=1G",
            "vfs.ignore_chown_errors=true",
            ".mount_program=/bin/x",
            "size=2G",
            "dm.basesize=10G",
        ],
        additional_layer_stores=["/als"],
    )
    assert opts.driver_options_for("overlay") == [
        "overlay.additionallayerstore=/als",
        "overlay.mountopt=nodev",
        "overlay2.size=1G",
        ".mount_program=/bin/x",
        "size=2G",
    ]
    assert opts.driver_options_for("devicemapper")[-1] == "dm.basesize=10G"
    assert "overlay.mountopt=nodev" not in opts.driver_options_for("vfs")


def test_overlay2_is_renamed_with_a_warning(sysconf: dict[str, Path]) -> None:
    write(sysconf["etc"], '[storage]\ndriver = "overlay2"\n[storage.options.overlay]\nmountopt = "nodev"\n')
    opts = load_store_options(rootless=False, environ={})
    assert opts.graph_driver_name == "overlay"
    assert opts.graph_driver_options == ["overlay.mountopt=nodev"]
    assert any("overlay2" in w for w in opts.warnings)


def test_missing_driver_warns(sysconf: dict[str, Path]) -> None:
    write(sysconf["etc"], '[storage]\ngraphroot = "/g"\n')
    opts = load_store_options(rootless=False, environ={})
    assert opts.graph_driver_name == ""
    assert any("storage.driver" in w for w in opts.warnings)


# ---------------------------------------------------------------- environment overrides


def test_storage_driver_overrides_the_file(sysconf: dict[str, Path]) -> None:
    write(
        sysconf["etc"],
        '[storage]\ndriver = "overlay"\n[storage.options]\nsize = "1G"\n'
        '[storage.options.vfs]\nignore_chown_errors = "true"\n',
    )
    opts = load_store_options(rootless=False, environ={"STORAGE_DRIVER": "vfs"})
    assert opts.graph_driver_name == "vfs"
    assert opts.graph_driver_options == ["vfs.size=1G", "vfs.ignore_chown_errors=true"]


def test_storage_driver_applies_without_a_file(sysconf: dict[str, Path], tmp_path: Path) -> None:
    assert load_store_options(rootless=False, environ={"STORAGE_DRIVER": "btrfs"}).graph_driver_name == "btrfs"
    env = rootless_env(tmp_path, STORAGE_DRIVER="btrfs")
    assert load_store_options(rootless=True, environ=env).graph_driver_name == "btrfs"


def test_storage_opts_replaces_driver_options(sysconf: dict[str, Path]) -> None:
    write(
        sysconf["etc"],
        '[storage]\ndriver = "overlay"\n[storage.options]\nadditionalimagestores = ["/a"]\n'
        '[storage.options.overlay]\nmountopt = "nodev"\n',
    )
    opts = load_store_options(
        rootless=False, environ={"STORAGE_OPTS": "overlay.size=5G,overlay.mountopt=noexec"}
    )
    assert opts.graph_driver_options == ["overlay.size=5G", "overlay.mountopt=noexec"]
    assert opts.additional_image_stores == []
    assert load_store_options(rootless=False, environ={"STORAGE_OPTS": ""}).graph_driver_options == []


def test_storage_opts_is_appended_for_rootless_defaults(sysconf: dict[str, Path], tmp_path: Path) -> None:
    write(sysconf["usr"], '[storage]\ndriver = "overlay"\n[storage.options.overlay]\nignore_chown_errors = "true"\n')
    env = rootless_env(tmp_path, STORAGE_OPTS="overlay.mountopt=nodev")
    opts = load_store_options(rootless=True, environ=env)
    assert opts.graph_driver_options == ["overlay.ignore_chown_errors=true", "overlay.mountopt=nodev"]


def test_environment_expansion_in_roots(sysconf: dict[str, Path]) -> None:
    write(
        sysconf["etc"],
        '[storage]\ngraphroot = "/s/$UID/${USER}/$HOME/$NOPE/x"\nrunroot = "/r/${UID}//a/../b"\n',
    )
    env = {"_CONTAINERS_ROOTLESS_UID": "0", "USER": "bob", "HOME": "/home/bob"}
    opts = load_store_options(rootless=False, environ=env)
    assert opts.graph_root == "/s/0/bob/home/bob/x"
    # only the literal "$UID" is replaced by the user ID; "${UID}" is an (unset) environment variable
    assert opts.run_root == "/r/b"


def test_expand_env_path_follows_go_rules(tmp_path: Path) -> None:
    env = {"A": "1", "B_2": "two"}
    assert expand_env_path("/x/$A/${B_2}/$UID", 7, env) == "/x/1/two/7"
    assert expand_env_path("/x/$/y", 0, env) == "/x/$/y"
    assert expand_env_path("/x/${}/y", 0, env) == "/x/y"
    assert expand_env_path("rel/$A", 0, env) == "rel/1"
    # special one-character names, as in a shell: "$1x" is "$1" then "x"
    assert expand_env_path("/x/${1}/$1x", 0, {"1": "one"}) == "/x/one/onex"
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert expand_env_path(str(tmp_path / "link"), 0, {}) == os.path.realpath(real)


# ---------------------------------------------------------------- errors


def error_of(path: Path, text: str, **kw: object) -> str:
    write(path, text)
    with pytest.raises(ConfigError) as info:
        load_store_options(rootless=False, environ={}, **kw)  # type: ignore[arg-type]
    return str(info.value)


def test_toml_syntax_error_names_the_file(sysconf: dict[str, Path]) -> None:
    msg = error_of(sysconf["etc"], "[storage\ndriver = 'x'\n")
    assert msg.startswith(f"{sysconf['etc']}: invalid TOML")
    assert "line 1" in msg


def test_wrong_types_name_file_and_key(sysconf: dict[str, Path]) -> None:
    etc = sysconf["etc"]
    assert error_of(etc, "[storage]\ngraphroot = 5\n") == (
        f"{etc}: storage.graphroot: expected a string, got integer"
    )
    assert error_of(etc, '[storage]\ndriver = ["x"]\n') == (
        f"{etc}: storage.driver: expected a string, got array"
    )
    assert error_of(etc, "[storage]\ntransient_store = \"yes\"\n") == (
        f"{etc}: storage.transient_store: expected a boolean, got string"
    )
    assert error_of(etc, "[storage.options]\nadditionalimagestores = [\"/a\", 1]\n") == (
        f"{etc}: storage.options.additionalimagestores[1]: expected a string, got integer"
    )
    assert error_of(etc, "[storage.options]\npull_options = {use_hard_links = true}\n") == (
        f"{etc}: storage.options.pull_options.use_hard_links: expected a string, got boolean"
    )
    assert "storage.options.auto-userns-min-size" in error_of(
        etc, "[storage.options]\nauto-userns-min-size = -1\n"
    )
    assert error_of(etc, "[storage.options.overlay]\nmountopt = true\n") == (
        f"{etc}: storage.options.overlay.mountopt: expected a string, got boolean"
    )
    assert error_of(etc, "[storage.options.lamina]\nplugins = \"audit\"\n") == (
        f"{etc}: storage.options.lamina.plugins: expected an array of strings, got string"
    )
    assert error_of(etc, "storage = 1\n") == f"{etc}: storage: expected a table, got integer"


def test_bad_id_map_names_the_key(sysconf: dict[str, Path]) -> None:
    msg = error_of(sysconf["etc"], '[storage.options]\nremap-uids = "0:100000"\n')
    assert msg.startswith(f"{sysconf['etc']}: storage.options.remap-uids:")
    msg = error_of(sysconf["etc"], '[storage.options]\nremap-gids = "0:x:1"\n')
    assert "storage.options.remap-gids" in msg


def test_relative_roots_are_rejected(sysconf: dict[str, Path]) -> None:
    etc = sysconf["etc"]
    msg = error_of(etc, '[storage]\ngraphroot = "rel/g"\n')
    assert msg == f"{etc}: storage.graphroot: must be an absolute path, got 'rel/g'"
    msg = error_of(etc, '[storage]\nrunroot = "run"\n')
    assert msg == f"{etc}: storage.runroot: must be an absolute path, got 'run'"
    msg = error_of(etc, '[storage]\nimagestore = "imgs"\n')
    assert msg.startswith(f"{etc}: storage.imagestore:")


def test_imagestore_must_differ_from_graphroot(sysconf: dict[str, Path]) -> None:
    msg = error_of(sysconf["etc"], '[storage]\ngraphroot = "/g"\nimagestore = "/g"\n')
    assert "storage.imagestore" in msg


def test_relative_rootless_storage_path_is_rejected(sysconf: dict[str, Path], tmp_path: Path) -> None:
    write(sysconf["usr"], '[storage]\nrootless_storage_path = "stor"\n')
    with pytest.raises(ConfigError, match=r"storage\.rootless_storage_path: must be an absolute path"):
        load_store_options(rootless=True, environ=rootless_env(tmp_path))


# ---------------------------------------------------------------- unknown keys


def test_unknown_keys_are_warnings(sysconf: dict[str, Path]) -> None:
    etc = sysconf["etc"]
    write(
        etc,
        """
top = 1
[storage]
driver = "vfs"
bogus = "x"
[storage.options]
what = 1
[storage.options.overlay]
nope = "1"
[storage.options.madeup]
x = 1
[storage.options.lamina]
other = []
[storage.options.thinpool]
use_deferred_removal = "True"
""",
    )
    opts = load_store_options(rootless=False, environ={})
    assert opts.graph_driver_name == "vfs"
    assert opts.warnings == [
        f"{etc}: top: unknown key, ignored",
        f"{etc}: storage.bogus: unknown key, ignored",
        f"{etc}: storage.options.what: unknown key, ignored",
        f"{etc}: storage.options.overlay.nope: unknown key, ignored",
        f"{etc}: storage.options.madeup: unknown key, ignored",
        f"{etc}: storage.options.lamina.other: unknown key, ignored",
    ]


def test_ineffective_keys_warn(sysconf: dict[str, Path]) -> None:
    write(sysconf["etc"], '[storage]\ndriver = "vfs"\n[storage.options]\nremap-user = "c"\nimagestore = "/i"\n')
    opts = load_store_options(rootless=False, environ={})
    assert opts.uid_map == ()
    assert opts.image_store is None
    assert len(opts.warnings) == 2


# ---------------------------------------------------------------- JSON


def test_config_json_shape(sysconf: dict[str, Path]) -> None:
    write(sysconf["etc"], FULL)
    out = to_config_json(load_store_options(rootless=False, environ={}))
    assert list(out) == [
        "runroot",
        "root",
        "imagestore",
        "RootlessStoragePath",
        "driver",
        "driver-priority",
        "driver-options",
        "uidmap",
        "gidmap",
        "root_auto_ns_user",
        "auto_userns_min_size",
        "auto_userns_max_size",
        "PullOptions",
        "disable-volatile",
        "transient_store",
    ]
    assert out["uidmap"] == [{"container_id": 0, "host_id": 100000, "size": 65536}]
    assert out["driver-options"][:3] == [
        "overlay.imagestore=/ais1",
        "overlay.imagestore=/ais2",
        "overlay.additionallayerstore=/als",
    ]
    assert out["RootlessStoragePath"] == "/rl/0"


def test_config_json_omits_empty_fields() -> None:
    out = to_config_json(StoreOptions(run_root="/r", graph_root="/g"))
    assert out == {"runroot": "/r", "root": "/g", "RootlessStoragePath": "", "PullOptions": None}
    auto = to_config_json(StoreOptions(run_root="/r", graph_root="/g", additional_image_stores=["/a"]))
    assert auto["driver-options"] == [".imagestore=/a"]


# ---------------------------------------------------------------- the Go tool as oracle


@pytest.mark.needs_go
@pytest.mark.skipif(shutil.which("containers-storage") is None, reason="no containers-storage")
def test_matches_go_containers_storage(tmp_path: Path, sysconf: dict[str, Path]) -> None:
    conf = write(
        tmp_path / "go.conf",
        f"""
[storage]
driver = "vfs"
graphroot = "{tmp_path}/graph"
runroot = "{tmp_path}/run"
[storage.options]
additionalimagestores = ["{tmp_path}/ais"]
ignore_chown_errors = "true"
[storage.options.vfs]
ignore_chown_errors = "false"
[storage.options.overlay]
mountopt = "nodev"
""",
    )
    (tmp_path / "ais").mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONTAINERS_STORAGE_CONF": conf}
    if os.geteuid() != 0:
        pytest.skip("the Go tool's rootless path needs a user namespace")
    proc = subprocess.run(
        ["containers-storage", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    text = proc.stdout + proc.stderr
    go_opts = re.search(r"^Driver Options: \[(.*)\]$", text, re.M)
    assert go_opts is not None, text
    ours = load_store_options(rootless=False, environ={"CONTAINERS_STORAGE_CONF": conf})
    assert to_config_json(ours)["driver-options"] == go_opts.group(1).split(" ")
    assert f"Root: {ours.graph_root}" in text
    assert f"Run Root: {ours.run_root}" in text
