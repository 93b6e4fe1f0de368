"""Training with the tri-level method: configuration, loop, evaluation, and rebuilding a run.

* :mod:`~trilevel.training.config`: :class:`TrainConfig`, the one source of every option.
* :mod:`~trilevel.training.trainer`: :func:`train` and the loop (:class:`Trainer`), which fires the
  :mod:`~trilevel.training.events` (:class:`Event`, :class:`Callback`) over the run's
  :class:`State` (:mod:`~trilevel.training.state`); :mod:`~trilevel.training.callbacks`: what a
  run does at them (algorithm, resolution curriculum, compile timing, FLOPs, logging,
  checkpointing, SIGTERM); :mod:`~trilevel.training.build`: the run's parts.
* :mod:`~trilevel.training.evaluation`: :func:`evaluate`, :func:`evaluate_checkpoint`.
* :mod:`~trilevel.training.run`: :func:`load_run`, the model and data of a checkpoint.
* :mod:`~trilevel.training.checkpointing`: what a run saves and restores, step checkpoints.
* :mod:`~trilevel.training.factory`, :mod:`~trilevel.training.distributed`,
  :mod:`~trilevel.training.accounting`: model construction, DDP plumbing, what the loop counts.

Source: Kong et al., "Peeling the Onion", AAAI 2023 (arXiv 2211.10801); the recipe of DeiT
(Touvron et al., ICML 2021) through timm.
"""

from .config import TrainConfig, config_from_checkpoint, load_config_file
from .evaluation import evaluate, evaluate_checkpoint
from .factory import build_model
from .events import Callback, Event
from .run import LoadedRun, load_run
from .state import State
from .trainer import (
    CheckpointWriteError, NonFiniteLossError, Trainer, TrainingFailedError, TrainingInterrupted, train,
)

__all__ = [
    "Callback",
    "Event",
    "State",
    "TrainConfig",
    "config_from_checkpoint",
    "load_config_file",
    "evaluate",
    "evaluate_checkpoint",
    "build_model",
    "LoadedRun",
    "load_run",
    "CheckpointWriteError",
    "NonFiniteLossError",
    "TrainingFailedError",
    "Trainer",
    "TrainingInterrupted",
    "train",
]
