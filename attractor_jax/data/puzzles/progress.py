"""A dependency-free progress bar for the offline puzzle generators.

It mirrors the trainer's bar (`attractor_jax.train.trainer._Progress`, which the data layer must not import):
on a terminal one line rewritten in place, otherwise (logs, CI, captured output) a plain line at most every
`every_s` seconds plus a final one. It writes to stdout, so a failing command still prints exactly one
``error: ...`` line on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``[#####...] done/total what  rate/s  eta`` for `total` items; `update()` after each, `close()` at
    the end (also on failure). Disabled (enabled=False) it does nothing."""

    WIDTH = 24

    def __init__(self, total: int, what: str, *, enabled: bool = True, stream: TextIO | None = None,
                 every_s: float = 10.0):
        self.total, self.what, self.enabled, self.every_s = max(int(total), 1), what, enabled, every_s
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done, self.t0, self.last, self.closed = 0, time.time(), 0.0, False
        self._show(force=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        self._show(force=self.done >= self.total)

    def _show(self, force: bool = False) -> None:
        if not self.enabled or self.closed:
            return
        now = time.time()
        if not force and now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        filled = int(self.WIDTH * min(self.done, self.total) / self.total)
        rate = self.done / dt
        eta = f"  eta {(self.total - self.done) / rate:.0f}s" if 0 < self.done < self.total else ""
        line = (f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} {self.what}  "
                f"{rate:.2f}/s{eta}")
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and not self.closed and self.tty:
            self.stream.write("\n")  # end the in-place line (also after a failure)
            self.stream.flush()
        self.closed = True
