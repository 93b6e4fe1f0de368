"""Signals and compile bookkeeping shared by a run and by a bench of runs.

A SIGTERM during a run sets :data:`STOP_REQUEST` (the run then checkpoints and exits); a bench of runs
(``trilevel bench train``) reads it before starting each run, so a request that arrives while a run is
finishing is not lost.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

__all__ = ["STOP_REQUEST", "compiled_graphs", "stop_on_sigterm"]

logger = logging.getLogger("trilevel.training")

STOP_REQUEST = threading.Event()
"""Set by SIGTERM during a run (and by :func:`stop_on_sigterm`); read by a bench before each run."""


@contextlib.contextmanager
def stop_on_sigterm():
    """While inside, SIGTERM sets :data:`STOP_REQUEST` instead of killing the process (main thread only).

    A run started inside installs its own handler (which also sets the flag); between runs the
    flag is all a caller such as ``trilevel bench train`` has to read.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:  # noqa: ANN001
        STOP_REQUEST.set()
        logger.warning("SIGTERM received between runs: no further run is started")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def compiled_graphs() -> int:
    """Graphs ``torch.compile`` has built in this process so far: a change marks a step that compiled."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
