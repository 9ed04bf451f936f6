"""Progress of the long waits (training, evaluation, export steps): a bar on a terminal, a line
every few seconds where stderr is a log (a file, a pipe, a container's log), so a person always
sees that work goes on and how far it is."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("maskrt.progress")

LOG_EVERY_S = 10.0


def say(message: str) -> None:
    """One line for the person waiting: through logging where it is configured to show it (the
    server's JSON or text lines), else on stderr."""
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(message)
    else:
        tqdm.write(message, file=sys.stderr)


class Progress:
    """``total`` steps of work named ``desc``; :meth:`update` after each."""

    def __init__(self, total: int, desc: str, unit: str = "it", every_s: float = LOG_EVERY_S):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done, self.note = 0, ""
        self.started = self.last = time.monotonic()
        self.bar = (
            tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
            if sys.stderr.isatty()
            else None
        )

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.note = note or self.note
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            say(self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (
            f", about {(self.total - self.done) / rate:.0f} s left"
            if rate > 0 and self.done < self.total
            else ""
        )
        note = f", {self.note}" if self.note else ""
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} "
            f"({100 * self.done / max(self.total, 1):.0f} %), {elapsed:.0f} s{left}{note}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], total: int, desc: str, unit: str = "it") -> Iterator[T]:
    """``items``, with progress counted as each is taken."""
    with Progress(total, desc, unit) as progress:
        for item in items:
            yield item
            progress.update()
