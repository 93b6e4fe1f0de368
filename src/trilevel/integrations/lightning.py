"""PyTorch Lightning integration: :class:`TriLevelCallback` drives a :class:`trilevel.TriLevel`.

The callback calls the algorithm at Lightning's training hooks, so that a ``LightningModule``
needs no tri-level code beyond returning its logits: :meth:`TriLevel.on_epoch_start` at
``on_train_epoch_start``, :meth:`TriLevel.on_step` at ``on_train_batch_start`` and
:meth:`TriLevel.after_forward` at ``on_train_batch_end``; the algorithm's state travels in
Lightning checkpoints through the callback's ``state_dict``/``load_state_dict``.

Needs the ``lightning`` package (``pip install trilevel[lightning]``); ``import trilevel`` never
imports this module.

Source: Kong et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient
Vision Transformer Training", AAAI 2023 (arXiv 2211.10801); the event shape follows composer's
``Algorithm`` and Lightning's ``Callback`` pattern.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch.utils.data import DataLoader

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - exercised by hiding the package
    raise ImportError(
        "trilevel.integrations.lightning needs Lightning (lightning>=2.2): pip install trilevel[lightning]"
    ) from err

from ..algorithm import TriLevel
from ..schedules import run_progress
from ..models import get_keep_ratios, set_keep_ratios, unwrap_model

__all__ = ["OUTPUT_KEYS", "TriLevelCallback"]

OUTPUT_KEYS: Tuple[str, ...] = ("logits", "targets", "indices")
"""Keys that ``training_step``'s returned dict must hold (besides Lightning's ``loss``)."""


class TriLevelCallback(pl.Callback):
    """Run a :class:`~trilevel.TriLevel` algorithm inside a Lightning ``Trainer``.

    Build the algorithm on the model first (this patches the model in place), keep the model as
    an attribute of the ``LightningModule``, give the algorithm's sampler to the training
    ``DataLoader`` and turn off Lightning's sampler replacement::

        tl = trilevel.TriLevel(model, len(train_set), epochs=E)      # patches model
        module = MyModule(model)                                     # module.model is model
        loader = DataLoader(trilevel.IndexedDataset(train_set), batch_size=B, sampler=tl.sampler)
        trainer = lightning.Trainer(max_epochs=E, callbacks=[TriLevelCallback(tl)],
                                    use_distributed_sampler=False)
        trainer.fit(module, loader)

    ``tl.sampler`` is already DDP-aware (it shards the active set by rank), so Lightning must not
    wrap it in a ``DistributedSampler`` (``use_distributed_sampler=False``); with
    ``selector="none"`` there is no sampler and any sampler (or Lightning's default) is fine.

    Contract of ``training_step``: batches come from :class:`~trilevel.IndexedDataset`, so a batch
    is ``(images, targets, indices)``. ``training_step`` returns a dict (Lightning passes it to
    ``on_train_batch_end``, where this callback records the batch)::

        {"loss": scalar loss,
         "logits": (B, K) outputs,
         "targets": (B,) class indices or (B, K) soft (mixup/cutmix) targets,
         "indices": (B,) example indices}

    Lightning detaches everything but ``loss``. Returning None (Lightning skips the step) or an
    empty dict records nothing. The loss-based selector (``selector="loss"``,
    :attr:`TriLevel.reweights_loss`) needs its per-example loss weights *before* backward; then
    ``training_step`` calls :meth:`after_forward` itself, e.g. with
    ``cb = next(c for c in self.trainer.callbacks if isinstance(c, TriLevelCallback))``::

        per_example = F.cross_entropy(logits, targets, reduction="none")     # (B,)
        weights = cb.after_forward(indices, logits, targets, per_example)   # (B,)
        return (per_example * weights).mean()

    and the callback does not record that batch again (any selector may use this route).

    During validation, test and predict the model runs at :meth:`TriLevel.eval_ratios` (the
    schedules' final values unless set explicitly), as ``trilevel train`` evaluates; the training
    ratios come back afterwards. ``set_eval_ratios=False`` keeps the current ratios instead.

    Progress of a step, for the keep-ratio schedules, is ``(epoch + batch_idx / n) / epochs`` with
    ``n`` this epoch's batch count: ``trainer.num_training_batches``, capped by the current
    ``len(trainer.train_dataloader)`` because Lightning counts the batches once, before the
    selector changes the active set (the loss-based selector changes its size every epoch).

    Args:
        algorithm: The :class:`~trilevel.TriLevel` to drive; its ``model`` must be a submodule of
            the ``LightningModule`` and its ``epochs`` the trainer's ``max_epochs``.
        set_eval_ratios: Evaluate (validate, test, predict) at the algorithm's evaluation ratios.

    Attributes:
        algorithm (TriLevel): The driven algorithm (``algorithm.keep_ratio`` and
            ``algorithm.attn_keep_ratio`` are the ratios of the last training step).
        set_eval_ratios (bool): As the argument.

    Raises:
        TypeError: If ``algorithm`` is not a :class:`~trilevel.TriLevel`.
        ValueError: If ``set_eval_ratios`` is not a bool; at ``setup``, if the algorithm's model
            is not part of the ``LightningModule`` or ``max_epochs`` differs from the
            algorithm's ``epochs``; at the start of a training epoch, if the training
            ``DataLoader`` does not draw from ``algorithm.sampler`` or has no length; after a
            training batch, if its outputs break the contract above.

    Source: Kong et al., AAAI 2023; the composer ``Algorithm`` / Lightning ``Callback`` pattern.
    """

    def __init__(self, algorithm: TriLevel, *, set_eval_ratios: bool = True) -> None:
        super().__init__()
        if not isinstance(algorithm, TriLevel):
            raise TypeError(f"algorithm must be a trilevel.TriLevel, got {type(algorithm).__name__}")
        if not isinstance(set_eval_ratios, bool):
            raise ValueError(f"set_eval_ratios must be True or False, got {set_eval_ratios!r}")
        self.algorithm = algorithm
        self.set_eval_ratios = set_eval_ratios
        self._epoch: Optional[int] = None
        self._recorded = False
        self._train_ratios: Optional[Tuple[float, float]] = None

    # ------------------------------------------------------------------------------ setup
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Check that the algorithm's model is part of ``pl_module`` and the run lengths agree.

        Raises:
            ValueError: If the patched model is not a submodule of ``pl_module``, or (when
                fitting) ``trainer.max_epochs`` differs from ``algorithm.epochs``.
        """
        model = unwrap_model(self.algorithm.model)
        if not any(m is model for m in pl_module.modules()):
            raise ValueError(
                f"the TriLevel model ({type(model).__name__}) is not a submodule of the LightningModule "
                f"({type(pl_module).__name__}); build TriLevel on the model the module trains"
            )
        if stage == "fit" and trainer.max_epochs != self.algorithm.epochs:
            raise ValueError(
                f"Trainer(max_epochs={trainer.max_epochs!r}) differs from TriLevel(epochs={self.algorithm.epochs}); "
                f"the schedules and the selector's updates are fractions of the run, so they must match"
            )

    # ------------------------------------------------------------------------------ training
    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Start the epoch: the selector's due update and the epoch's order; check the sampler.

        Raises:
            ValueError: If the training ``DataLoader`` does not draw from ``algorithm.sampler``.
        """
        self._check_sampler(trainer)
        self._start_epoch(trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        """Set the keep ratios scheduled for this step.

        Raises:
            ValueError: If the training ``DataLoader`` has no length (the progress is undefined).
        """
        if self._epoch != trainer.current_epoch:  # a mid-epoch resume skips on_train_epoch_start
            self._start_epoch(trainer.current_epoch)
        self._recorded = False
        steps = self._steps_this_epoch(trainer)
        self.algorithm.on_step(run_progress(trainer.current_epoch, min(batch_idx, steps - 1), steps,
                                            self.algorithm.epochs))

    def after_forward(self, indices: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                      loss: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Record this batch from inside ``training_step``; return per-example loss weights.

        Needed for the loss-based selector (weights before backward), optional otherwise; the
        callback then does not record the batch at ``on_train_batch_end``. Once per batch.

        Args:
            indices: ``(B,)`` example indices.
            logits: ``(B, K)`` model outputs.
            targets: ``(B,)`` class indices or ``(B, K)`` soft targets.
            loss: ``(B,)`` per-example loss; required when :attr:`TriLevel.reweights_loss`.

        Returns:
            ``(B,)`` weights for ``loss`` with the loss-based selector, else None.

        Raises:
            ValueError: If this batch was already recorded, or as :meth:`TriLevel.after_forward`.
        """
        if self._recorded:
            raise ValueError("after_forward was already called for this batch; call it once per training batch")
        weights = self.algorithm.after_forward(indices, logits, targets, loss)
        self._recorded = True
        return weights

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record the batch's outcomes from ``training_step``'s dict (unless already recorded).

        Raises:
            ValueError: If the outputs are not a dict with :data:`OUTPUT_KEYS`, or the loss-based
                selector's batch was not recorded through :meth:`after_forward`.
        """
        if self._recorded or self.algorithm.selector is None:
            return
        if outputs is None or (isinstance(outputs, Mapping) and not outputs):
            return  # a skipped step
        if self.algorithm.reweights_loss:
            raise ValueError(
                "selector='loss' weights the per-example loss before backward: call "
                "TriLevelCallback.after_forward(indices, logits, targets, per_example_loss) in training_step"
            )
        if not isinstance(outputs, Mapping):
            raise ValueError(
                f"training_step must return a dict with keys {', '.join(('loss',) + OUTPUT_KEYS)} for "
                f"TriLevelCallback, got {type(outputs).__name__}"
            )
        missing = [k for k in OUTPUT_KEYS if k not in outputs]
        if missing:
            raise ValueError(
                f"training_step's dict lacks {missing} (has {sorted(outputs)}); TriLevelCallback needs "
                f"{', '.join(OUTPUT_KEYS)}"
            )
        self.algorithm.after_forward(outputs["indices"], outputs["logits"], outputs["targets"])
        self._recorded = True

    # ------------------------------------------------------------------------------ evaluation
    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Switch to the evaluation keep ratios (unless ``set_eval_ratios=False``)."""
        self._enter_eval()

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Restore the training keep ratios."""
        self._exit_eval()

    on_test_start = on_predict_start = on_validation_start
    on_test_end = on_predict_end = on_validation_end

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """Restore the training keep ratios if an evaluation was interrupted."""
        self._exit_eval()

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """The algorithm's state (:meth:`TriLevel.state_dict`), saved in Lightning checkpoints."""
        return {"trilevel": self.algorithm.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into the algorithm (same settings required).

        Raises:
            ValueError: If ``state_dict`` is not this callback's state, or as
                :meth:`TriLevel.load_state_dict` (differing settings are named).
        """
        if not isinstance(state_dict, Mapping) or "trilevel" not in state_dict:
            keys = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"state_dict must come from TriLevelCallback.state_dict() (a 'trilevel' key), got {keys}")
        self.algorithm.load_state_dict(state_dict["trilevel"])
        self._epoch = None

    # ------------------------------------------------------------------------------ helpers
    def _start_epoch(self, epoch: int) -> None:
        self.algorithm.on_epoch_start(epoch)
        self._epoch = epoch

    def _check_sampler(self, trainer: "pl.Trainer") -> None:
        sampler = self.algorithm.sampler
        loader = trainer.train_dataloader
        if sampler is None or not isinstance(loader, DataLoader):
            return
        if loader.sampler is sampler or getattr(loader.batch_sampler, "sampler", None) is sampler:
            return
        raise ValueError(
            f"the training DataLoader draws from {type(loader.sampler).__name__}, not TriLevel.sampler, so the "
            f"example level removes nothing; pass DataLoader(..., sampler=tl.sampler) and "
            f"Trainer(use_distributed_sampler=False) (TriLevel's sampler already shards by rank)"
        )

    @staticmethod
    def _steps_this_epoch(trainer: "pl.Trainer") -> int:
        steps = trainer.num_training_batches
        loader = trainer.train_dataloader
        if isinstance(loader, DataLoader):
            try:
                steps = min(steps, len(loader))
            except TypeError:  # an iterable-style dataset
                pass
        if not math.isfinite(steps) or steps < 1:
            raise ValueError(
                f"TriLevelCallback needs a training DataLoader with a length (the schedules follow the fraction "
                f"of the run done), got num_training_batches={steps!r}"
            )
        return int(steps)

    def _enter_eval(self) -> None:
        if not self.set_eval_ratios or self._train_ratios is not None:
            return
        model = self.algorithm.model
        self._train_ratios = get_keep_ratios(model)
        set_keep_ratios(model, *self.algorithm.eval_ratios())

    def _exit_eval(self) -> None:
        if self._train_ratios is None:
            return
        set_keep_ratios(self.algorithm.model, *self._train_ratios)
        self._train_ratios = None
