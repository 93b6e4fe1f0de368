"""What a training run does at its events, one callback per concern (:mod:`trilevel.training.events`).

:func:`default_callbacks` gives the run's callbacks in the order they run at every event:

1. :class:`AlgorithmCallback` -- the :class:`~trilevel.TriLevel` algorithm (epoch start, step
   start, the batch's outcomes);
2. :class:`ResolutionCurriculum` -- each batch resized to its step's side;
3. :class:`CompileTimer` -- steps that compiled a graph counted apart;
4. :class:`FlopAccounting` -- each step's FLOPs and tokens per block;
5. :class:`ProgressLogger` -- log lines and the progress bar (and the live step scalars);
6. :class:`Checkpointing` -- atomic saves: epoch ends, every ``checkpoint_every`` steps, before
   a stop;
7. :class:`MetricsLogger` -- ``metrics.jsonl``, ``summary.json``, TensorBoard / W&B epoch logs
   and the pruning picture (after the epoch's checkpoint);
8. :class:`SigtermHandler` -- SIGTERM: the run stops after the save.

A caller's own callbacks run after these (``train(config, callbacks=[...])``).
"""

from __future__ import annotations

from typing import List, Optional

from ..events import Callback
from ..output import RunOutput
from .algorithm import AlgorithmCallback
from .checkpoint import Checkpointing
from .compile_timer import CompileTimer
from .flops import FlopAccounting
from .logs import MetricsLogger, PictureRenderer, ProgressLogger
from .resolution import ResolutionCurriculum
from .sigterm import SigtermHandler

__all__ = ["AlgorithmCallback", "Checkpointing", "CompileTimer", "FlopAccounting", "MetricsLogger", "PictureRenderer",
           "ProgressLogger", "ResolutionCurriculum", "SigtermHandler", "default_callbacks"]


def default_callbacks(output: RunOutput, picture_renderer: Optional[PictureRenderer] = None) -> List[Callback]:
    """A run's callbacks, in the order they run at each event (see the module docstring).

    Args:
        output: The run's output folder and live-log sinks.
        picture_renderer: Draws the live logs' pruning picture (:data:`~trilevel.training.callbacks.logs.PictureRenderer`);
            None: none.
    """
    return [AlgorithmCallback(), ResolutionCurriculum(), CompileTimer(), FlopAccounting(), ProgressLogger(output),
            Checkpointing(), MetricsLogger(output, picture_renderer), SigtermHandler()]
