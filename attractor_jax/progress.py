"""The one progress bar (training loop, puzzle generators, evaluation): on a terminal one line rewritten in
place, otherwise (logs, CI, captured output) a plain line at most every ``every_s`` seconds plus a final one.
It writes to stdout, so a failing command still prints exactly one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class Progress:
    """``[#####...] done/total what  text`` for ``total`` items; ``text`` defaults to ``rate/s  eta``.

    ``update(n)`` after n more items (throttled), ``show(done, text)`` to print a position now (the training loop
    at each logged step), ``close()`` at the end (also on failure). Disabled (enabled=False) it does nothing."""

    WIDTH = 24

    def __init__(self, total: int, what: str = "", *, start: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, every_s: float = 10.0):
        self.total, self.what, self.enabled, self.every_s = max(int(total), 1), what, enabled, every_s
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.done = int(start)
        self.t0, self.last, self.closed = time.time(), 0.0, False
        self._show(force=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        self._show(force=self.done >= self.total)

    def show(self, done: int, text: str = "") -> None:
        self.done = int(done)
        self._show(force=True, text=text)

    def _rate_text(self, now: float) -> str:
        rate = (self.done - self.start) / max(now - self.t0, 1e-9)
        if not (math.isfinite(rate) and rate > 0):
            return ""
        eta = f"  eta {(self.total - self.done) / rate:.0f}s" if self.done < self.total else ""
        return f"{rate:.2f}/s{eta}"

    def _show(self, force: bool = False, text: str = "") -> None:
        if not self.enabled or self.closed:
            return
        now = time.time()
        if not force and now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        filled = int(self.WIDTH * min(self.done, self.total) / self.total)
        what = f" {self.what}" if self.what else ""
        text = text or self._rate_text(now)
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total}{what}  {text}".rstrip()
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and not self.closed and self.tty:
            self.stream.write("\n")  # end the in-place line (also after a failure)
            self.stream.flush()
        self.closed = True
