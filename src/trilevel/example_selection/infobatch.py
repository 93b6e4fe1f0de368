"""InfoBatch-style loss-based soft pruning behind the example-selector interface.

A baseline for the example level of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data
Redundancy for Efficient Vision Transformer Training", AAAI 2023 (example-level sparsity), after Qin
et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024: each
epoch, low-loss examples are dropped at random and the kept ones are up-weighted so that the
expected gradient is unchanged; the final epochs train on the full data.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import ExampleSelector
from .recording import assert_indices, index_error
from .syncfree import move
from .validation import check_fraction, check_int

__all__ = ["LossSelector"]


class LossSelector(ExampleSelector):
    """Loss-based soft pruning with rescaling, after InfoBatch (Qin et al., ICLR 2024).

    At every new epoch (:meth:`set_epoch`) before ``anneal_start_epoch``: among the examples with a
    recorded loss, those whose last recorded loss is below the mean of the recorded losses are each
    dropped from the active set with probability ``prune_ratio`` (seeded generator); the kept low-loss
    examples get weight ``1 / (1 - prune_ratio)``, all other examples weight 1. Examples without a
    recorded loss are kept with weight 1. From ``anneal_start_epoch =
    num_epochs - round(anneal_fraction * num_epochs)`` on, the full data set is used with weight 1.
    The active set therefore changes size every epoch; :class:`ActiveSubsetSampler` re-reads it at
    ``set_epoch``. Dropped examples keep their last loss (they are not presented).

    Args:
        num_examples: Size of the training set (``>= 1``).
        prune_ratio: Probability of dropping a low-loss example, in ``[0, 1)`` (InfoBatch: 0.5).
        num_epochs: Length of the run in epochs (``>= 1``); required, positional or keyword.
        anneal_fraction: Final fraction of the epochs trained on the full data, in ``[0, 1)``
            (InfoBatch: 0.125, i.e. ``delta = 0.875``).
        seed: Seed of the selector's generator.
        device: Device of the active mask and the statistics (None: the CPU); use the model's device
            so that :meth:`record` and :meth:`batch_weights` never synchronise.

    Attributes:
        last_loss (torch.Tensor): ``(num_examples,)`` float32 on :attr:`device`, last recorded loss
            (NaN = none yet).
        has_loss (torch.Tensor): ``(num_examples,)`` bool on :attr:`device`, whether a loss was recorded.
        weights (torch.Tensor): ``(num_examples,)`` float32 on :attr:`device`, loss weight of each
            example this epoch.
        anneal_start_epoch (int): First epoch on the full data.

    Raises:
        ValueError: If ``num_examples < 1``, ``num_epochs`` is missing or ``< 1``, or ``prune_ratio``
            or ``anneal_fraction`` is outside ``[0, 1)``.
    """

    needs_loss = True

    def __init__(
        self,
        num_examples: int,
        prune_ratio: float = 0.5,
        num_epochs: int | None = None,
        anneal_fraction: float = 0.125,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(num_examples, seed, device)
        if num_epochs is None:
            raise ValueError("num_epochs is required by LossSelector (an integer >= 1), got None")
        self.num_epochs = check_int("num_epochs", num_epochs, 1)
        self.prune_ratio = check_fraction("prune_ratio", prune_ratio)
        self.anneal_fraction = check_fraction("anneal_fraction", anneal_fraction)
        self.anneal_start_epoch = self.num_epochs - round(self.anneal_fraction * self.num_epochs)
        self.add_stat("last_loss", float("nan"), torch.float32)
        self.add_stat("has_loss", False, torch.bool)
        self.add_stat("weights", 1.0, torch.float32)

    def on_epoch(self, epoch: int) -> None:
        """Draw this epoch's active set and weights, or use the full data from ``anneal_start_epoch`` on.

        Hook of :meth:`set_epoch`. An epoch boundary: works on CPU copies of the statistics (one
        device-to-host copy when :attr:`device` is an accelerator) and draws from the CPU generator,
        so the draw does not depend on the device.

        Args:
            epoch: The epoch about to start (``>= 0``).
        """
        n = self.num_examples
        mask = torch.ones(n, dtype=torch.bool)
        weights = torch.ones(n, dtype=torch.float32)
        has_loss, last_loss = self.has_loss.to("cpu"), self.last_loss.to("cpu")
        if epoch < self.anneal_start_epoch and bool(has_loss.any()):
            recorded = last_loss[has_loss]
            mean = recorded.to(torch.float64).mean().to(torch.float32)
            low = torch.nonzero(has_loss & (last_loss < mean), as_tuple=False).flatten()
            dropped = torch.rand(low.numel(), generator=self.generator) < self.prune_ratio
            mask[low[dropped]] = False
            weights[low[~dropped]] = 1.0 / (1.0 - self.prune_ratio)
        self.weights.copy_(weights)
        self.set_active_mask(mask)

    def observe(self, idx: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor | None,
                tie_break: torch.Tensor | None) -> None:
        """Store the gathered batch's losses as the examples' last losses (hook of :meth:`record`).

        Fixed-shape scatters on :attr:`device`, no host read.

        Args:
            idx: ``(N,)`` int64 scatter targets on :attr:`device`: each real index at most once, the
                rows to ignore at the dummy slot ``num_examples``.
            correct: Unused.
            loss: ``(N,)`` float32 per-example loss on :attr:`device` (always given:
                :attr:`needs_loss` is True).
            tie_break: Unused.
        """
        if idx.numel() == 0:
            return
        self.full_stat("last_loss").index_put_((idx,), loss)
        self.full_stat("has_loss").index_fill_(0, idx, True)

    def batch_weights(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """This epoch's loss weights of a batch's examples, ``weights[indices]``, without a host read.

        The InfoBatch rescaling (Qin et al., ICLR 2024): ``1 / (1 - prune_ratio)`` for a kept low-loss
        example, 1 otherwise; multiply the per-example loss by it before the mean.

        Args:
            indices: ``(B,)`` integer example indices in ``[0, num_examples)``, any device.

        Returns:
            ``(B,)`` float32 on :attr:`device` (move it to the loss with
            ``w.to(loss.device, loss.dtype, non_blocking=True)``).

        Raises:
            ValueError: ``indices`` is not a 1-D integer tensor (or sequence), or, when it lives in
                host memory, holds a value out of range (checked exactly).
            RuntimeError: An index out of range in a tensor on an accelerator is checked with
                ``torch._assert_async`` (same message text) and surfaces asynchronously; the lookup
                is clamped to the valid range meanwhile.
        """
        local = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(indices)
        if local.dim() != 1:
            raise ValueError(f"indices must have shape (B,), got shape {tuple(local.shape)}")
        if local.dtype.is_floating_point or local.dtype.is_complex or local.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got dtype {local.dtype}")
        error = index_error(local, self.num_examples)
        if error is not None:
            raise ValueError(error)
        assert_indices(local, self.num_examples)
        local = move(local.detach(), self.device, torch.int64)
        return self.weights.index_select(0, local.clamp(0, self.num_examples - 1))

    def reweighted(
        self,
        idx: torch.Tensor,
        indices: torch.Tensor | Sequence[int],
        loss: torch.Tensor | None,
    ) -> torch.Tensor:
        """The local batch's loss weighted by this epoch's weights (the value :meth:`record` returns).

        Args:
            idx: Unused (the global scatter targets).
            indices: ``(B,)`` the local batch's indices.
            loss: ``(B,)`` the local per-example loss, with grad.

        Returns:
            ``(loss * batch_weights(indices)).mean()``, a scalar on ``loss``'s device (no host read,
            unless the weights must be copied from an accelerator to a CPU ``loss``).
        """
        w = self.batch_weights(indices)
        return (loss * move(w, loss.device, loss.dtype)).mean()

    def config(self) -> dict[str, Any]:
        """The settings that a loaded state must match.

        Returns:
            ``{"num_examples", "prune_ratio", "num_epochs", "anneal_start_epoch", "seed"}``.
        """
        return {
            "num_examples": self.num_examples,
            "prune_ratio": self.prune_ratio,
            "num_epochs": self.num_epochs,
            "anneal_start_epoch": self.anneal_start_epoch,
            "seed": self.seed,
        }
