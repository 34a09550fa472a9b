"""Driver discovery, the hook contract's validation, the core fallbacks and extra plugins."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lamina import drivers
from lamina.errors import (
    DriverConflict,
    DriverInterfaceError,
    DriverNotFound,
    DriverNotSupported,
    PluginError,
)
from lamina.graphdriver import build_driver
from lamina.hookspecs import hookimpl
from lamina.testing import BASE_TAR_ENTRIES, make_tar
from lamina.types import ApplyDiffOpts, DriverConfig, MountOpts

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from broken_driver import BrokenDriver  # noqa: E402


def _config(tmp_path: Path, name: str = "x") -> DriverConfig:
    return DriverConfig(name, str(tmp_path / "g" / name), str(tmp_path / "r"))


def _fake_dist(site: Path, dist: str, entry_points: str) -> None:
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def _run_py(code: str, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


# ---------------------------------------------------------------- discovery


def test_in_tree_drivers_are_listed():
    names = drivers.installed_driver_names()
    assert {"vfs", "overlay", "btrfs"} <= set(names)
    vfs = next(d for d in drivers.installed_drivers() if d.name == "vfs")
    assert vfs.distribution == "lamina-vfs" and vfs.version


def test_listing_does_not_import_drivers():
    proc = _run_py(
        """
        import sys
        from lamina.drivers import installed_drivers
        assert installed_drivers()
        print(sorted(m for m in sys.modules if m.startswith("lamina_") or m.startswith("stevedore")))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_loading_imports_only_the_chosen_driver():
    proc = _run_py(
        """
        import sys
        from lamina.drivers import load_driver_class
        load_driver_class("vfs")
        print(sorted(m for m in sys.modules if m.startswith("lamina_")))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['lamina_vfs']"


def test_unknown_driver_lists_installed_ones():
    with pytest.raises(DriverNotFound) as info:
        drivers.load_driver_class("zfs")
    assert "vfs" in info.value.available and "vfs" in str(info.value)


class _Unsupported(BrokenDriver):
    @classmethod
    def check_host(cls, graph_root: str) -> None:
        raise DriverNotSupported("nope", f"{graph_root} lacks the magic")


def test_unsupported_driver_reports_why(tmp_path):
    drivers.register_driver("nope", _Unsupported)
    try:
        assert drivers.support_reason("nope", str(tmp_path)) == f"{tmp_path} lacks the magic"
        with pytest.raises(DriverNotSupported, match="lacks the magic"):
            drivers.new_driver(_config(tmp_path, "nope"))
    finally:
        drivers.unregister_driver("nope")


def test_btrfs_is_not_supported_off_btrfs(tmp_path):
    reason = drivers.support_reason("btrfs", str(tmp_path))
    assert reason is not None and reason != ""


def test_two_distributions_claiming_one_name(tmp_path):
    _fake_dist(tmp_path, "dist_one", "[lamina.drivers]\ndupe = collections:OrderedDict\n")
    _fake_dist(tmp_path, "dist_two", "[lamina.drivers]\ndupe = collections:Counter\n")
    proc = _run_py(
        """
        from lamina.drivers import load_driver_class
        from lamina.errors import DriverConflict
        try:
            load_driver_class("dupe")
        except DriverConflict as exc:
            print("conflict:", exc)
        """,
        tmp_path,
    )
    assert "conflict:" in proc.stdout and "dist_one" in proc.stdout and "dist_two" in proc.stdout, proc


def test_driver_that_fails_to_import(tmp_path):
    _fake_dist(tmp_path, "dist_bad", "[lamina.drivers]\nbad = no_such_module_here:Driver\n")
    proc = _run_py(
        """
        from lamina.drivers import load_driver_class
        from lamina.errors import DriverLoadError
        try:
            load_driver_class("bad")
        except DriverLoadError as exc:
            print("load error:", exc)
        """,
        tmp_path,
    )
    assert "load error:" in proc.stdout and "no_such_module_here" in proc.stdout, proc


def test_registered_driver_is_found(tmp_path):
    drivers.register_driver("broken-reg", BrokenDriver)
    try:
        assert "broken-reg" in drivers.installed_driver_names()
        assert isinstance(drivers.new_driver(_config(tmp_path, "broken-reg")), BrokenDriver)
    finally:
        drivers.unregister_driver("broken-reg")
    assert "broken-reg" not in drivers.installed_driver_names()


def test_choose_driver_by_priority_and_prior_state(tmp_path):
    root = tmp_path / "g"
    root.mkdir()
    drivers.register_driver("nope", _Unsupported)
    try:
        assert drivers.choose_driver(str(root), ("nope", "vfs")) == "vfs"  # the first supported one
        with pytest.raises(DriverNotSupported, match="nope: .* lacks the magic"):
            _only_unsupported(str(root))
    finally:
        drivers.unregister_driver("nope")
    (root / "vfs").mkdir()
    assert drivers.choose_driver(str(root)) == "vfs"  # prior state wins over the priority list
    (root / "overlay").mkdir()
    with pytest.raises(DriverConflict, match="several valid graph drivers"):
        drivers.choose_driver(str(root))


def _only_unsupported(root: str) -> str:
    """choose_driver with every installed driver hidden except the unsupported one."""
    saved = drivers.installed_driver_names
    drivers.installed_driver_names = lambda: ["nope"]  # type: ignore[assignment]
    try:
        return drivers.choose_driver(root, ("nope",))
    finally:
        drivers.installed_driver_names = saved  # type: ignore[assignment]


# ---------------------------------------------------------------- validation


class _Misspelled(BrokenDriver):
    @hookimpl
    def driver_craete(self, id, parent, opts, read_write):  # type: ignore[no-untyped-def]
        return True


class _MissingHooks:
    def __init__(self, config: DriverConfig) -> None:
        pass

    @hookimpl
    def driver_create(self, id, parent, opts, read_write):  # type: ignore[no-untyped-def]
        return True

    def driver_remove(self, id):  # type: ignore[no-untyped-def]  # forgot @hookimpl
        return True


class _BadSignature(BrokenDriver):
    @hookimpl
    def driver_get(self, id, opts, extra):  # type: ignore[no-untyped-def,override]
        return "/"


def test_misspelled_hook_is_named(tmp_path):
    with pytest.raises(DriverInterfaceError) as info:
        build_driver(_config(tmp_path), _Misspelled(_config(tmp_path)))
    assert "driver_craete" in str(info.value) and "'x'" in str(info.value)


def test_missing_hooks_are_named(tmp_path):
    with pytest.raises(DriverInterfaceError) as info:
        build_driver(_config(tmp_path), _MissingHooks(_config(tmp_path)))
    message = str(info.value)
    for hook in ("driver_remove", "driver_get", "driver_put", "driver_exists", "driver_status"):
        assert hook in info.value.hooks
    assert "defined without @hookimpl: driver_remove" in message
    assert "driver_create" not in info.value.hooks


def test_bad_signature_is_an_interface_error(tmp_path):
    with pytest.raises(DriverInterfaceError, match="signature"):
        build_driver(_config(tmp_path), _BadSignature(_config(tmp_path)))


class _AnsweringPlugin:
    @hookimpl
    def driver_exists(self, id):  # type: ignore[no-untyped-def]
        return True


class _WrappingPlugin:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.events: list[tuple[str, str]] = []

    @hookimpl(wrapper=True)
    def driver_get(self, id, opts):  # type: ignore[no-untyped-def]
        self.seen.append(id)
        return (yield)

    @hookimpl
    def store_layer_created(self, store_root, layer_id, parent):  # type: ignore[no-untyped-def]
        self.events.append(("created", layer_id))

    @hookimpl
    def store_diff_applied(self, store_root, layer_id, diff_digest, size):  # type: ignore[no-untyped-def]
        self.events.append(("applied", diff_digest))

    @hookimpl
    def store_layer_unmounted(self, store_root, layer_id, count):  # type: ignore[no-untyped-def]
        self.events.append(("unmounted", str(count)))


def test_plugins_may_not_answer_driver_hooks(tmp_path):
    with pytest.raises(PluginError, match="may only wrap"):
        build_driver(_config(tmp_path), BrokenDriver(_config(tmp_path)), plugins=[_AnsweringPlugin()])


def test_wrapping_plugin_sees_calls_and_events(tmp_path):
    from lamina.store import Store

    plugin = _WrappingPlugin()
    store = Store(str(tmp_path / "g"), str(tmp_path / "r"), driver_name="vfs", plugins=[plugin])
    layer = store.create_layer()
    store.mount(layer.id)
    store.unmount(layer.id)
    tar = make_tar(BASE_TAR_ENTRIES)
    store.apply_diff(layer.id, io.BytesIO(tar))
    assert plugin.seen[0] == layer.id
    import hashlib

    assert plugin.events == [("created", layer.id), ("unmounted", "0"),
                             ("applied", "sha256:" + hashlib.sha256(tar).hexdigest())]


def test_naive_fallback_answers_for_a_driver_without_diff(tmp_path):
    config = _config(tmp_path, "broken")
    proxy = build_driver(config, BrokenDriver(config))
    proxy.create("a", None)
    size = proxy.apply_diff("a", None, ApplyDiffOpts(diff=io.BytesIO(make_tar(BASE_TAR_ENTRIES))))
    assert size > 0
    assert os.path.isfile(os.path.join(proxy.get("a", MountOpts()), "etc", "hello.txt"))
    assert {c.path for c in proxy.changes("a", None)} >= {"/etc", "/etc/hello.txt"}


# ---------------------------------------------------------------- the conformance suite itself


def test_conformance_suite_fails_for_a_broken_driver(tmp_path):
    test_file = tmp_path / "test_broken_conformance.py"
    test_file.write_text(textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(FIXTURES)!r})
        from broken_driver import BrokenDriver
        from lamina.drivers import register_driver
        from lamina.testing import DriverConformance

        register_driver("broken", BrokenDriver)

        class TestBroken(DriverConformance):
            driver_name = "broken"
        """
    ))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "lamina.testing", "--import-mode=importlib",
         "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "test_child_sees_parent_and_is_isolated FAILED" in proc.stdout or \
        "FAILED test_broken_conformance.py::TestBroken::test_child_sees_parent_and_is_isolated" in proc.stdout
    assert "test_create_duplicate_fails" in proc.stdout
