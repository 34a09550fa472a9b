"""Progress lines appear on a terminal only."""

from __future__ import annotations

import io
import time

from lamina.cli import progress as progress_mod
from lamina.cli.progress import ProgressReader, progress_for, reading_with_progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_stderr_is_not_a_terminal() -> None:
    assert progress_for("x", out=io.StringIO()) is None
    raw = io.BytesIO(b"abc")
    assert reading_with_progress(raw, "applydiff") is raw  # pytest captures stderr: not a tty


def test_counts_and_redraws_on_a_terminal(monkeypatch) -> None:
    out = _Tty()
    prog = progress_for("applydiff", total=3 << 20, out=out)
    assert prog is not None
    monkeypatch.setattr(progress_mod, "_INTERVAL", 0.0)
    reader = ProgressReader(io.BytesIO(b"x" * (2 << 20)), prog)
    while reader.read(1 << 19):
        time.sleep(0.001)
    reader.close()
    text = out.getvalue()
    assert "\rapplydiff: 2.0 of 3.0 MiB" in text and text.endswith("\n")
