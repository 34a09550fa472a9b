"""Diagnostics on stderr in logrus's text format, as containers-storage prints them.

``--debug`` sets the level to debug; otherwise only errors are shown (Go sets logrus to the
error level, so warnings such as "Found incomplete layer" stay hidden).
"""

from __future__ import annotations

import logging
import time

__all__ = ["logrus", "setup_logging"]

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")


def _timestamp() -> str:
    now = time.localtime()
    base = time.strftime("%Y-%m-%dT%H:%M:%S", now)
    offset = now.tm_gmtoff or 0
    if offset == 0:
        return base + "Z"
    sign = "+" if offset > 0 else "-"
    offset = abs(offset)
    return f"{base}{sign}{offset // 3600:02d}:{offset % 3600 // 60:02d}"


def _value(text: str) -> str:
    if text and all(ch in _SAFE for ch in text):
        return text
    from .flags import go_quote

    return '"' + go_quote(text) + '"'


def logrus(level: str, message: str) -> None:
    """One logrus TextFormatter line (non-terminal form) on stderr."""
    from .output import err

    err(f'time="{_timestamp()}" level={level} msg={_value(message)}\n')


_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
           logging.ERROR: "error", logging.CRITICAL: "fatal"}


class _LogrusHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            logrus(_LEVELS.get(record.levelno, "info"), record.getMessage())
        except Exception:  # never let logging break a command
            self.handleError(record)


def setup_logging(debug: bool) -> None:
    root = logging.getLogger("lamina")
    root.handlers[:] = [_LogrusHandler()]
    root.propagate = False
    root.setLevel(logging.DEBUG if debug else logging.ERROR)
