"""Compile timing: :class:`CompileTimer` counts the steps that compiled a graph apart from training time.

With ``compile`` a step that builds a ``torch.compile`` graph takes far longer than the others;
its wall-clock goes to ``progress.compile_seconds`` (``summary.json``'s ``compile_seconds``) and
out of the epoch's training clock, so ``train_seconds`` measures training.
"""

from __future__ import annotations

import time

from ..events import Callback
from ..signals import compiled_graphs
from ..state import State

__all__ = ["CompileTimer"]


class CompileTimer(Callback):
    """Times each step from ``STEP_START`` to ``STEP_END``; one that compiled a graph is excluded from training time."""

    def __init__(self) -> None:
        self._graphs = 0
        self._wall = 0.0
        self._cpu = 0.0

    def step_start(self, state: State) -> None:
        self._graphs, self._wall, self._cpu = compiled_graphs(), time.perf_counter(), time.process_time()

    def step_end(self, state: State) -> None:
        if compiled_graphs() == self._graphs:
            return
        spent = time.perf_counter() - self._wall  # this step compiled a graph: compile time, not training time
        state.epoch.clock.exclude(spent, time.process_time() - self._cpu)
        state.progress.compile_seconds += spent
