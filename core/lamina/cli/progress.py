"""Progress on stderr for long operations (applydiff, import-layer, diff, copy), shown only when
stderr is a terminal, so scripts and pipes see exactly what containers-storage prints."""

from __future__ import annotations

import io
import os
import sys
import time
from typing import BinaryIO, TextIO

_INTERVAL = 0.2  # seconds between redraws


class Progress:
    """A one-line byte counter redrawn in place on *out*."""

    def __init__(self, label: str, out: TextIO, total: int | None = None) -> None:
        self.label = label
        self.out = out
        self.total = total
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= _INTERVAL:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        mib = self.done / (1 << 20)
        rate = mib / max(now - self._start, 1e-6)
        of = f" of {self.total / (1 << 20):.1f}" if self.total else ""
        self.out.write(f"\r{self.label}: {mib:.1f}{of} MiB ({rate:.1f} MiB/s)\x1b[K")
        self.out.flush()

    def finish(self) -> None:
        if self._last:  # only if something was drawn: short operations stay silent
            self._draw(time.monotonic())
            self.out.write("\n")
            self.out.flush()


def progress_for(label: str, total: int | None = None, out: TextIO | None = None) -> Progress | None:
    """A Progress on stderr when it is a terminal, else None (silent)."""
    stream = out if out is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Progress(label, stream, total) if tty else None


class ProgressReader(io.RawIOBase):
    """Reads through *inner*, advancing *progress*; closing it finishes the progress line."""

    def __init__(self, inner: BinaryIO, progress: Progress) -> None:
        super().__init__()
        self.inner = inner
        self.progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.progress.advance(n)
        return n

    def close(self) -> None:
        if not self.closed:
            self.progress.finish()
        super().close()


def reading_with_progress(stream: BinaryIO, label: str) -> BinaryIO:
    """*stream*, counted on stderr when stderr is a terminal."""
    total = None
    try:
        st = os.fstat(stream.fileno())
        total = st.st_size if st.st_size > 0 else None
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
    progress = progress_for(label, total)
    if progress is None:
        return stream
    return io.BufferedReader(ProgressReader(stream, progress), 1 << 16)  # type: ignore[return-value]
