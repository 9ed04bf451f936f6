"""Work run in a child process, so that a serving process keeps answering meanwhile.

An ONNX export traces the model in Python for tens of seconds, holding the interpreter lock: in
the server's own process it would stall every request of the versions serving meanwhile (a new
version swapped in beside the old one: ``maskrt bench repository`` measured the swap's p99 at 7x
the steady one with the export in the process, 1.3x to 1.6x with it here, on 2 cores).
:func:`run_isolated` runs it in a fresh interpreter (``spawn``: forking a process with threads is
unsafe) at a lower CPU priority, and logs its records through this process's loggers, as if it
had run here.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from maskrt.errors import MaskrtError

NICE = 10  # the child's CPU priority below this process's: serving goes first
T = TypeVar("T")


def run_isolated(what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a child process (``fn`` and ``args`` picklable; ``fn`` a module-level
    function); its result, or what it raised. ``what`` names the work in an error."""
    context = multiprocessing.get_context("spawn")
    records: Any = context.Queue()
    listener = logging.handlers.QueueListener(records, _Forward())
    listener.start()
    level = logging.getLogger("maskrt").getEffectiveLevel()
    try:
        with ProcessPoolExecutor(
            1, mp_context=context, initializer=_child, initargs=(records, level)
        ) as pool:
            return pool.submit(fn, *args).result()
    except BrokenProcessPool:
        raise MaskrtError(
            f"the process making {what} died (killed, out of memory?); see the kernel log"
        ) from None
    finally:
        listener.stop()
        records.close()


def _child(records: Any, level: int) -> None:
    """The child's start: lower priority, every record to the parent."""
    os.nice(NICE)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    logging.getLogger("maskrt").setLevel(level)


class _Forward(logging.Handler):
    """A child's record, handled by this process's logger of the same name."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
