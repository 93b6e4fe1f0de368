"""Example-level data reduction: which training examples to present each epoch.

This module implements the outer layer of the onion of Kong et al., "Peeling the Onion: Hierarchical
Reduction of Data Redundancy for Efficient Vision Transformer Training", AAAI 2023 (arXiv 2211.10801),
method section, example-level sparsity (the outermost level of the "onion"), plus two baselines
behind the same interface:

* :class:`ForgettingSelector` - the paper's selector. A seeded random fraction of the training set is
  moved to the *removed pool* before training; the rest is the *active set*. While training, every
  presentation of an example is recorded as correct or incorrect; a *forgetting event* (Toneva et al.,
  "An Empirical Study of Example Forgetting during Deep Neural Network Learning", ICLR 2019) is a
  transition from correct to incorrect between two consecutive presentations. Every ``update_every``
  epochs the active examples with the fewest forgetting events are moved to the removed pool and the
  same number of examples, drawn at random from the removed pool, come back, so the active set keeps
  its size (the example *keep ratio* ``1 - initial_remove_fraction`` is constant).
* :class:`RandomSelector` - same sizes and schedule, random swaps (an ablation baseline).
* :class:`LossSelector` - InfoBatch-style soft pruning (Qin et al., "InfoBatch: Lossless Training
  Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024): each epoch, low-loss examples are dropped
  at random and the kept ones are up-weighted so that the expected gradient is unchanged.

The selectors are driven by :class:`ActiveSubsetSampler` (a ``DistributedSampler`` over the current
active set) and fed through :class:`IndexedDataset` (so that a batch carries its example indices)::

    selector = ForgettingSelector(num_examples=len(train_set))
    sampler = ActiveSubsetSampler(selector, num_replicas=world_size, rank=rank)
    loader = DataLoader(IndexedDataset(train_set), batch_size=256, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                    # applies a due selector update first
        for images, targets, indices in loader:
            logits = model(images)
            selector.record(indices, logits, targets)

Statistics live on the CPU as tensors of size ``num_examples`` and are updated with vectorised
indexing (no per-example Python loop, no per-example host-device sync). Under
``torch.distributed``, :meth:`record` all-gathers the observations of every rank so that all ranks hold
identical, global statistics and therefore make identical decisions (the authors' released code seeds
each rank differently and never combines the ranks' statistics).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import statistics
import time
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

__all__ = [
    "ForgettingSelector",
    "RandomSelector",
    "LossSelector",
    "ActiveSubsetSampler",
    "IndexedDataset",
    "benchmark_record",
]

_STATE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# argument validation helpers (never assert on user input, never clamp silently)
# --------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fraction(name: str, value: Any) -> float:
    if not _is_number(value) or not (0.0 <= float(value) < 1.0) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def _check_seed(value: Any) -> int:
    if not _is_int(value):
        raise ValueError(f"seed must be an integer, got {value!r}")
    return int(value)


def _resolve_update_every(update_every: Any, num_epochs: int | None) -> int:
    """Resolve ``update_every`` (epochs, or a fraction of the run) into a whole number of epochs."""
    if not _is_number(update_every) or math.isnan(float(update_every)) or update_every <= 0:
        raise ValueError(
            f"update_every must be a positive number of epochs or a fraction of the run in (0, 1), "
            f"got {update_every!r}"
        )
    if isinstance(update_every, float) and update_every < 1.0:
        if num_epochs is None:
            raise ValueError(
                f"update_every={update_every!r} is a fraction of the run, so num_epochs is required "
                f"(got num_epochs=None)"
            )
        return max(1, round(update_every * num_epochs))
    if isinstance(update_every, float) and not update_every.is_integer():
        raise ValueError(
            f"update_every must be a whole number of epochs (>= 1) or a fraction in (0, 1), "
            f"got {update_every!r}"
        )
    return int(update_every)


# --------------------------------------------------------------------------------------------------
# the shared selector machinery
# --------------------------------------------------------------------------------------------------


class _SelectorBase:
    """Machinery shared by all selectors: the active set, ``record`` plumbing, state, digest.

    Subclasses define ``_observe`` (how a gathered batch updates the statistics), ``_on_epoch``
    (what ``set_epoch`` does on a new epoch), the statistics tensors, and their configuration.
    """

    #: Whether :meth:`record` requires a per-example ``loss``.
    _needs_loss = False

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples = _check_int("num_examples", num_examples, 1)
        self.seed = _check_seed(seed)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed)
        self._active_mask = torch.ones(self.num_examples, dtype=torch.bool)
        self._version = 0  # bumped whenever the active set changes (the sampler re-reads it)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        #: The last epoch passed to :meth:`set_epoch` (-1 before the first call).
        self.last_epoch = -1

    # ----------------------------------------------------------------------------- the active set
    def _set_active_mask(self, mask: torch.Tensor) -> None:
        self._active_mask = mask
        self._version += 1
        self._cache = None

    def _sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None:
            active = torch.nonzero(self._active_mask, as_tuple=False).flatten()
            removed = torch.nonzero(~self._active_mask, as_tuple=False).flatten()
            self._cache = (active, removed)
        return self._cache

    @property
    def active_indices(self) -> torch.Tensor:
        """Indices of the active set, a sorted 1-D ``LongTensor`` (a copy; safe to modify)."""
        return self._sets()[0].clone()

    @property
    def removed_indices(self) -> torch.Tensor:
        """Indices of the removed pool, a sorted 1-D ``LongTensor`` disjoint from the active set."""
        return self._sets()[1].clone()

    @property
    def num_active(self) -> int:
        """Size of the active set."""
        return int(self._sets()[0].numel())

    @property
    def keep_ratio(self) -> float:
        """Current example keep ratio: ``num_active / num_examples``."""
        return self.num_active / self.num_examples

    # ----------------------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Tell the selector that ``epoch`` starts; applies whatever is due at that epoch.

        Idempotent: calling it again with the same epoch changes nothing. Called by
        :meth:`ActiveSubsetSampler.set_epoch`, so with the sampler you never call it yourself.

        Args:
            epoch: The epoch about to start (0-based, ``>= 0``).

        Raises:
            ValueError: If ``epoch`` is not an integer ``>= 0``.
        """
        epoch = _check_int("epoch", epoch, 0)
        if epoch == self.last_epoch:
            return
        self.last_epoch = epoch
        self._on_epoch(epoch)

    def _on_epoch(self, epoch: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # ----------------------------------------------------------------------------- recording
    def record(
        self,
        indices: torch.Tensor | Sequence[int],
        logits: torch.Tensor,
        targets: torch.Tensor,
        loss: torch.Tensor | None = None,
        tie_break: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Record the outcome of one batch (see the subclass docstrings for what is kept)."""
        idx, correct, loss_cpu, tb_cpu = self._prepare(indices, logits, targets, loss, tie_break)
        self._observe(idx, correct, loss_cpu, tb_cpu)
        return self._reweighted(idx, indices, loss)

    def _reweighted(self, idx, indices, loss):  # noqa: ANN001 - overridden by LossSelector
        return None

    def _prepare(
        self,
        indices: torch.Tensor | Sequence[int],
        logits: torch.Tensor,
        targets: torch.Tensor,
        loss: torch.Tensor | None,
        tie_break: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Validate one batch, judge correctness, gather across ranks, drop duplicates.

        Returns CPU tensors ``(indices int64, correct bool, loss float32|None, tie_break float32|None)``
        covering the whole (global) batch.
        """
        if not isinstance(indices, torch.Tensor):
            indices = torch.as_tensor(indices)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits must be a torch.Tensor of shape (B, K), got {type(logits).__name__}")
        if not isinstance(targets, torch.Tensor):
            raise TypeError(
                f"targets must be a torch.Tensor of shape (B,) or (B, K), got {type(targets).__name__}"
            )
        if indices.dim() != 1:
            raise ValueError(f"indices must have shape (B,), got shape {tuple(indices.shape)}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        if logits.dim() != 2 or logits.shape[1] < 1:
            raise ValueError(f"logits must have shape (B, K) with K >= 1, got shape {tuple(logits.shape)}")
        batch, num_classes = logits.shape
        if indices.shape[0] != batch:
            raise ValueError(
                f"indices and logits must have the same batch size, got indices of shape "
                f"{tuple(indices.shape)} and logits of shape {tuple(logits.shape)}"
            )
        if targets.dim() == 1:
            if targets.dtype.is_floating_point or targets.dtype.is_complex:
                raise ValueError(
                    f"targets of shape (B,) must hold integer class indices, got dtype {targets.dtype}"
                )
        elif targets.dim() == 2:
            if targets.shape[1] != num_classes:
                raise ValueError(
                    f"soft targets must have shape (B, K) = {tuple(logits.shape)} like the logits, "
                    f"got shape {tuple(targets.shape)}"
                )
        else:
            raise ValueError(
                f"targets must have shape (B,) or (B, K), got shape {tuple(targets.shape)}"
            )
        if targets.shape[0] != batch:
            raise ValueError(
                f"targets and logits must have the same batch size, got targets of shape "
                f"{tuple(targets.shape)} and logits of shape {tuple(logits.shape)}"
            )
        if self._needs_loss and loss is None:
            raise ValueError(f"{type(self).__name__}.record requires loss, a per-example loss of shape (B,)")
        for name, extra in (("loss", loss), ("tie_break", tie_break)):
            if extra is None:
                continue
            if not isinstance(extra, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(extra).__name__}")
            if extra.shape != (batch,):
                raise ValueError(
                    f"{name} must have shape (B,) = ({batch},) (one value per example), "
                    f"got shape {tuple(extra.shape)}"
                )

        # Correctness on the logits' device: the label's logit attains the maximum of the logits
        # (amax + gather: ~10x cheaper than argmax on the CPU; an exact tie for the maximum counts as
        # correct). For soft (mixup/cutmix, label-smoothed) targets the label is argmax(targets), the
        # class with the larger mixing weight (the first such class on an exact tie). Labels outside
        # [0, K) are flagged in the same tensor (status 2), so that checking them costs no extra
        # device-to-host copy.
        scores = logits.detach()
        if targets.dim() == 2:
            label = targets.detach().argmax(dim=1).to(scores.device)
        else:
            label = targets.detach().to(scores.device, torch.int64)
        safe = label.clamp(0, num_classes - 1)
        picked = scores.gather(1, safe.unsqueeze(1)).squeeze(1)
        # status: 1 = correct, 0 = incorrect, 2 = label out of range (an error, raised below)
        status = torch.where(safe == label, (picked >= scores.amax(dim=1)).to(torch.uint8), 2)

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            idx, status_cpu, loss_cpu, tb_cpu = _gather_batch(indices, status, loss, tie_break, logits.device)
        else:
            idx = indices.detach().to("cpu", torch.int64)
            status_cpu = status.to("cpu")
            loss_cpu = None if loss is None else loss.detach().to("cpu", torch.float32)
            tb_cpu = None if tie_break is None else tie_break.detach().to("cpu", torch.float32)
        correct_cpu = status_cpu == 1

        if idx.numel() > 0:
            # One range check per (global) batch; offending values are only read in the error path.
            lo, hi = torch.aminmax(idx)
            if int(lo) < 0 or int(hi) >= self.num_examples:
                bad = idx[(idx < 0) | (idx >= self.num_examples)]
                raise ValueError(
                    f"indices must lie in [0, num_examples) = [0, {self.num_examples}), got "
                    f"{bad[:8].tolist()} out of range"
                )
            if int(status_cpu.max()) > 1:
                local_bad = label[(label < 0) | (label >= num_classes)]
                detail = local_bad[:8].tolist() if local_bad.numel() else "values on another rank"
                raise ValueError(
                    f"targets must be class indices in [0, K) = [0, {num_classes}), got {detail} out of range"
                )
            # Duplicates: keep the first occurrence (batch order, then rank order when gathered).
            if idx.numel() > 1:
                sorted_idx, order = torch.sort(idx, stable=True)
                dup = sorted_idx[1:] == sorted_idx[:-1]
                if bool(dup.any()):
                    first = torch.ones_like(sorted_idx, dtype=torch.bool)
                    first[1:] = ~dup
                    keep = order[first]
                    idx, correct_cpu = idx[keep], correct_cpu[keep]
                    loss_cpu = None if loss_cpu is None else loss_cpu[keep]
                    tb_cpu = None if tb_cpu is None else tb_cpu[keep]
        return idx, correct_cpu, loss_cpu, tb_cpu

    def _observe(self, idx, correct, loss, tie_break) -> None:  # noqa: ANN001  # pragma: no cover
        raise NotImplementedError

    # ----------------------------------------------------------------------------- state
    def _config(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _stat_tensors(self) -> dict[str, torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: active set, statistics, counters, generator state.

        The dictionary holds only tensors, ints, floats, strings, bools, lists and dicts, so it can be
        saved with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``.

        Returns:
            A new dictionary (tensors are copies).
        """
        state: dict[str, Any] = {
            "kind": type(self).__name__,
            "version": _STATE_VERSION,
            "config": dict(self._config()),
            "active_mask": self._active_mask.clone(),
            "stats": {k: v.clone() for k, v in self._stat_tensors().items()},
            "last_epoch": int(self.last_epoch),
            "generator_state": self._generator.get_state(),
        }
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` of a selector with the same configuration.

        Args:
            state: The dictionary returned by :meth:`state_dict` (possibly via ``torch.save`` /
                ``torch.load(weights_only=True)``).

        Raises:
            ValueError: If the state comes from another selector type, another state version, a
                different configuration (the mismatching key is named), or has tensors of the wrong
                size or dtype.
        """
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        kind = state.get("kind")
        if kind != type(self).__name__:
            raise ValueError(f"state is for {kind!r}, cannot load it into {type(self).__name__}")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r} is not supported (expected {_STATE_VERSION})")
        mine = self._config()
        theirs = state.get("config", {})
        for key, value in mine.items():
            if theirs.get(key) != value:
                raise ValueError(
                    f"state was saved with {key}={theirs.get(key)!r} but this selector has {key}={value!r}"
                )
        mask = state["active_mask"]
        if not isinstance(mask, torch.Tensor) or mask.shape != (self.num_examples,) or mask.dtype != torch.bool:
            raise ValueError(f"state['active_mask'] must be a bool tensor of shape ({self.num_examples},)")
        current = self._stat_tensors()
        saved_stats = state.get("stats")
        if not isinstance(saved_stats, dict):
            raise ValueError("state['stats'] must be a dict of statistics tensors from state_dict()")
        for name, tensor in current.items():
            saved = saved_stats.get(name)
            if not isinstance(saved, torch.Tensor) or saved.shape != tensor.shape or saved.dtype != tensor.dtype:
                raise ValueError(
                    f"state['stats'][{name!r}] must be a {tensor.dtype} tensor of shape {tuple(tensor.shape)}"
                )
        generator_state = state.get("generator_state")
        if not isinstance(generator_state, torch.Tensor) or generator_state.dtype != torch.uint8:
            raise ValueError("state['generator_state'] must be the uint8 tensor of Generator.get_state()")
        for name in current:
            getattr(self, name).copy_(saved_stats[name])
        self._set_active_mask(mask.clone().to("cpu"))
        self.last_epoch = int(state["last_epoch"])
        self._generator.set_state(generator_state.clone())
        self._load_extra_state(state)

    def digest(self) -> str:
        """Short hex SHA-256 over the active set, the removed pool and the statistics tensors.

        Two selectors (two ranks, or a resumed and an uninterrupted run) with the same digest hold the
        same sets and statistics.

        Returns:
            The first 16 hex characters of the SHA-256.
        """
        h = hashlib.sha256()
        active, removed = self._sets()
        tensors = [("active", active), ("removed", removed), *self._stat_tensors().items()]
        for name, tensor in tensors:
            h.update(name.encode())
            h.update(str(tensor.dtype).encode())
            h.update(tensor.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({cfg}, num_active={self.num_active})"


def _collective_device(logits_device: torch.device) -> torch.device:
    """The device that the default process group's backend communicates on."""
    backend = str(dist.get_backend())
    if backend in ("gloo", "mpi") or "cpu:" in backend:
        return torch.device("cpu")
    if backend == "nccl" and logits_device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return logits_device


def _gather_batch(
    indices: torch.Tensor,
    status: torch.Tensor,
    loss: torch.Tensor | None,
    tie_break: torch.Tensor | None,
    logits_device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """All-gather one batch's observations from every rank (rank order), as CPU tensors.

    Two collectives per batch: the per-rank sizes/flags, then the rows padded to the largest batch.
    Rows are packed as float64 (exact for indices below 2**53).
    """
    device = _collective_device(logits_device)
    world = dist.get_world_size()
    batch = int(indices.shape[0])
    has_loss, has_tb = loss is not None, tie_break is not None
    meta = torch.tensor([batch, int(has_loss), int(has_tb)], dtype=torch.int64, device=device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    metas_cpu = torch.stack(metas).cpu()
    for col, name in ((1, "loss"), (2, "tie_break")):
        if not bool((metas_cpu[:, col] == metas_cpu[0, col]).all()):
            raise ValueError(
                f"{name} must be given on every rank or on none (per rank: {metas_cpu[:, col].tolist()})"
            )
    sizes = metas_cpu[:, 0].tolist()
    max_batch = max(sizes)
    columns = [indices.detach().to(device, torch.float64), status.to(device, torch.float64)]
    if has_loss:
        columns.append(loss.detach().to(device, torch.float64))
    if has_tb:
        columns.append(tie_break.detach().to(device, torch.float64))
    width = len(columns)
    padded = torch.zeros(max_batch, width, dtype=torch.float64, device=device)
    if batch:
        padded[:batch] = torch.stack(columns, dim=1)
    if max_batch == 0:
        rows = padded.cpu()
    else:
        outs = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(outs, padded)
        rows = torch.cat([out[:n] for out, n in zip(outs, sizes)]).cpu()
    idx = rows[:, 0].to(torch.int64)
    status_cpu = rows[:, 1].to(torch.uint8)
    col = 2
    loss_cpu = tb_cpu = None
    if has_loss:
        loss_cpu = rows[:, col].to(torch.float32)
        col += 1
    if has_tb:
        tb_cpu = rows[:, col].to(torch.float32)
    return idx, status_cpu, loss_cpu, tb_cpu


# --------------------------------------------------------------------------------------------------
# forgetting-based selection (the paper) and its random baseline
# --------------------------------------------------------------------------------------------------


class ForgettingSelector(_SelectorBase):
    """Forgetting-event example selector of Tri-Level E-ViT (Kong et al., AAAI 2023, example level).

    Before training a seeded random ``initial_remove_fraction`` of the training set goes to the removed
    pool; the rest is the active set. :meth:`record` keeps, per example, the correctness at its last
    presentation, its number of forgetting events (correct at the previous presentation, incorrect
    now; Toneva et al., ICLR 2019), whether it was ever classified correctly ("learned") and its number
    of presentations. At epochs ``update_every, 2 * update_every, ...`` (at most ``max_updates``
    times) :meth:`set_epoch` performs an update:

    1. rank the active examples by forgetting count, ascending; ties are broken by
       ``tie_break_scores`` (ascending, lower removed first; examples without a score rank after all
       scored ones) and then by a seeded random order. Active examples never classified correctly
       since the last update ("never learned", including never presented ones) rank last and are
       never removed;
    2. move the ``swap_count`` lowest-ranked examples to the removed pool (fewer if fewer active
       examples were learned; ``history`` records the number actually swapped);
    3. restore the same number of examples, drawn at random from the removed pool as it was before
       step 2, into the active set - the active set keeps its size;
    4. reset all statistics.

    Counts are ``round(fraction * num_examples)`` with Python's ``round`` (half to even), e.g. the
    paper's ImageNet-1k settings 0.2 and 0.05 of 1,281,167 give 256,233 removed and 64,058 swapped.
    All randomness comes from one ``torch.Generator`` seeded with ``seed`` - the same on every rank;
    the global RNG is never touched.

    Args:
        num_examples: Size of the training set (``>= 1``).
        initial_remove_fraction: Fraction of the training set in the removed pool, in ``[0, 1)``
            (paper: 0.2). The example keep ratio is ``1 - initial_remove_fraction``.
        swap_fraction: Fraction of the training set swapped at each update, in ``[0, 1)`` (paper:
            0.05). The swap count may not exceed the removed pool nor the active set.
        update_every: Epochs between updates: an integer ``>= 1`` (an integral float such as ``30.0``
            is accepted), or a float in ``(0, 1)`` meaning that fraction of ``num_epochs``, resolved
            to ``max(1, round(update_every * num_epochs))`` (paper: 30 of 300, i.e. 0.1).
        max_updates: Maximum number of updates, ``>= 0`` (paper: 5).
        seed: Seed of the selector's generator (initial removal, tie order, restored examples).
        num_epochs: Length of the run in epochs; required when ``update_every`` is a fraction. When
            given, ``update_epochs`` only lists epochs ``< num_epochs``.

    Attributes:
        remove_count (int): Size of the removed pool.
        swap_count (int): Examples swapped per update (at most).
        update_every (int): Resolved epochs between updates.
        update_epochs (list[int]): The epochs at which updates happen when every epoch is visited.
        num_updates (int): Updates made so far.
        history (list[dict]): One ``{"epoch", "removed", "restored"}`` entry per update.
        last_correct (torch.BoolTensor): ``(num_examples,)`` correctness at the last presentation.
        forgetting_counts (torch.IntTensor): ``(num_examples,)`` forgetting events since the last update.
        ever_learned (torch.BoolTensor): ``(num_examples,)`` classified correctly at least once since
            the last update.
        presentations (torch.IntTensor): ``(num_examples,)`` presentations since the last update.
        tie_break_scores (torch.FloatTensor): ``(num_examples,)`` last score passed as ``tie_break``
            to :meth:`record` (NaN = none since the last update).

    Raises:
        ValueError: If ``num_examples < 1``; a fraction is outside ``[0, 1)``; the removed pool would
            hold every example; the swap count exceeds the removed pool or the active set;
            ``update_every <= 0`` or is a non-integral float ``>= 1``; ``update_every`` is a fraction
            without ``num_epochs``; ``max_updates < 0``; ``num_epochs < 1``.
    """

    def __init__(
        self,
        num_examples: int,
        initial_remove_fraction: float = 0.2,
        swap_fraction: float = 0.05,
        update_every: int | float = 30,
        max_updates: int = 5,
        seed: int = 0,
        num_epochs: int | None = None,
    ) -> None:
        super().__init__(num_examples, seed)
        n = self.num_examples
        self.initial_remove_fraction = _check_fraction("initial_remove_fraction", initial_remove_fraction)
        self.swap_fraction = _check_fraction("swap_fraction", swap_fraction)
        self.num_epochs = None if num_epochs is None else _check_int("num_epochs", num_epochs, 1)
        self.update_every = _resolve_update_every(update_every, self.num_epochs)
        self.max_updates = _check_int("max_updates", max_updates, 0)
        self.remove_count = round(self.initial_remove_fraction * n)
        self.swap_count = round(self.swap_fraction * n)
        if self.remove_count >= n:
            raise ValueError(
                f"initial_remove_fraction={initial_remove_fraction!r} removes {self.remove_count} of "
                f"{n} examples, leaving an empty active set; it must leave at least one"
            )
        if self.swap_count > self.remove_count:
            raise ValueError(
                f"swap_fraction={swap_fraction!r} gives a swap count of {self.swap_count}, larger than "
                f"the removed pool ({self.remove_count} examples from initial_remove_fraction="
                f"{initial_remove_fraction!r}); it must be at most the removed pool"
            )
        if self.swap_count > n - self.remove_count:
            raise ValueError(
                f"swap_fraction={swap_fraction!r} gives a swap count of {self.swap_count}, larger than "
                f"the active set ({n - self.remove_count} examples); it must be at most the active set"
            )
        epochs = [self.update_every * k for k in range(1, self.max_updates + 1)]
        if self.num_epochs is not None:
            epochs = [e for e in epochs if e < self.num_epochs]
        self.update_epochs: list[int] = epochs
        self.num_updates = 0
        self._last_update_epoch = 0
        self.history: list[dict[str, int]] = []

        self.last_correct = torch.zeros(n, dtype=torch.bool)
        self.forgetting_counts = torch.zeros(n, dtype=torch.int32)
        self.ever_learned = torch.zeros(n, dtype=torch.bool)
        self.presentations = torch.zeros(n, dtype=torch.int32)
        self.tie_break_scores = torch.full((n,), float("nan"), dtype=torch.float32)
        self._one = torch.ones((), dtype=torch.int32)

        # The initial removal: a seeded random choice (the same on every rank).
        mask = torch.ones(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=self._generator)[: self.remove_count]] = False
        self._set_active_mask(mask)

    # ----------------------------------------------------------------------------- recording
    def record(
        self,
        indices: torch.Tensor | Sequence[int],
        logits: torch.Tensor,
        targets: torch.Tensor,
        loss: torch.Tensor | None = None,
        tie_break: torch.Tensor | None = None,
    ) -> None:
        """Record one batch: per-example correctness, forgetting events, presentations.

        An example is correct when the logit of its label is the largest logit (top-1; an exact tie
        for the maximum counts as correct). With soft targets of shape ``(B, K)`` (mixup, cutmix,
        label smoothing) the label is ``argmax(targets)``, the class with the larger mixing weight
        (the first one on an exact tie), instead of the original hard label of an image that was
        mixed (what the authors' released code does). A forgetting event (Toneva et al., ICLR 2019)
        is counted when the previous presentation since the last update was correct and this one is
        not; the first presentation after an update cannot be one.

        Vectorised; the statistics stay on the CPU. Per batch there is one device-to-host copy of
        the correctness (plus the indices if they live on a device), no per-example ``.item()``.
        With ``torch.distributed`` initialised (world size > 1) the observations (indices,
        correctness, ``tie_break``) of all ranks are all-gathered first - two collectives, on CUDA
        (the logits' device) for NCCL and on the CPU for gloo/MPI, unequal batch sizes padded to the
        largest - so every rank updates identical global statistics. Every rank must therefore call
        ``record`` the same number of times (batch sizes may differ, also 0); an invalid shape on
        one rank only raises there and leaves the others waiting. Duplicate indices in one
        (gathered) batch count as one presentation with the outcome of the first occurrence (in
        batch order, then rank order); ``ActiveSubsetSampler`` never repeats an index within one
        rank's epoch, but its padding may repeat one across ranks.

        Args:
            indices: ``(B,)`` integer example indices (e.g. from :class:`IndexedDataset`), any device.
            logits: ``(B, K)`` model outputs.
            targets: ``(B,)`` integer class indices, or ``(B, K)`` soft / mixed targets.
            loss: Optional ``(B,)`` per-example loss; accepted for interface compatibility, unused.
            tie_break: Optional ``(B,)`` per-example score stored in ``tie_break_scores`` (last value
                kept); breaks ties in the forgetting count, lower removed first (paper variant:
                variance of the last block's [CLS] attention).

        Returns:
            None.

        Raises:
            ValueError: Wrong dims, batch-size mismatch between the arguments, float 1-D targets,
                indices outside ``[0, num_examples)``, class indices outside ``[0, K)``, ``loss``/``tie_break`` not of shape ``(B,)``,
                or ``tie_break`` given on some ranks only.
            TypeError: ``logits``, ``targets``, ``loss`` or ``tie_break`` not a tensor.
        """
        return super().record(indices, logits, targets, loss, tie_break)

    def _observe(self, idx, correct, loss, tie_break) -> None:  # noqa: ANN001
        if idx.numel() == 0:
            return
        # idx holds no duplicates here (see _prepare), so accumulate=True is a plain increment and,
        # on the bool tensor, a logical or; it saves a gather per statistic.
        previous = self.last_correct.index_select(0, idx)
        self.forgetting_counts.index_put_((idx,), (previous > correct).to(torch.int32), accumulate=True)
        self.ever_learned.index_put_((idx,), correct, accumulate=True)
        self.presentations.index_put_((idx,), self._one, accumulate=True)
        self.last_correct.index_put_((idx,), correct)
        if tie_break is not None:
            self.tie_break_scores.index_put_((idx,), tie_break)

    # ----------------------------------------------------------------------------- updates
    def _on_epoch(self, epoch: int) -> None:
        if (
            epoch > 0
            and epoch % self.update_every == 0
            and self.num_updates < self.max_updates
            and epoch > self._last_update_epoch
        ):
            self._update(epoch)

    def _choose_removal(self, active: torch.Tensor) -> torch.Tensor:
        """The active examples to move to the removed pool, forgetting-ranked."""
        g = self._generator
        candidates = active[self.ever_learned[active]]
        count = min(self.swap_count, int(candidates.numel()))
        # Least significant key first, stable sorts: random order < tie-break score < forgetting count.
        candidates = candidates[torch.randperm(candidates.numel(), generator=g)]
        scores = self.tie_break_scores[candidates]
        scores = torch.where(torch.isnan(scores), torch.full_like(scores, float("inf")), scores)
        candidates = candidates[torch.sort(scores, stable=True).indices]
        counts = self.forgetting_counts[candidates]
        candidates = candidates[torch.sort(counts, stable=True).indices]
        return candidates[:count]

    def _update(self, epoch: int) -> None:
        active, pool = self._sets()
        to_remove = self._choose_removal(active)
        count = int(to_remove.numel())
        # Restore from the pool as it was before adding the newly removed examples.
        restore = pool[torch.randperm(pool.numel(), generator=self._generator)[:count]]
        mask = self._active_mask.clone()
        mask[to_remove] = False
        mask[restore] = True
        self._set_active_mask(mask)
        self.num_updates += 1
        self._last_update_epoch = epoch
        self.history.append({"epoch": int(epoch), "removed": count, "restored": int(restore.numel())})
        self._reset_statistics()

    def _reset_statistics(self) -> None:
        self.last_correct.zero_()
        self.forgetting_counts.zero_()
        self.ever_learned.zero_()
        self.presentations.zero_()
        self.tie_break_scores.fill_(float("nan"))

    # ----------------------------------------------------------------------------- state
    def _config(self) -> dict[str, Any]:
        return {
            "num_examples": self.num_examples,
            "remove_count": self.remove_count,
            "swap_count": self.swap_count,
            "update_every": self.update_every,
            "max_updates": self.max_updates,
            "seed": self.seed,
        }

    def _stat_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "last_correct": self.last_correct,
            "forgetting_counts": self.forgetting_counts,
            "ever_learned": self.ever_learned,
            "presentations": self.presentations,
            "tie_break_scores": self.tie_break_scores,
        }

    def _extra_state(self) -> dict[str, Any]:
        return {
            "num_updates": int(self.num_updates),
            "last_update_epoch": int(self._last_update_epoch),
            "history": [dict(h) for h in self.history],
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        self._last_update_epoch = int(state["last_update_epoch"])
        self.history = [{k: int(v) for k, v in h.items()} for h in state["history"]]


class RandomSelector(ForgettingSelector):
    """Random example selection: the sizes and schedule of :class:`ForgettingSelector`, random swaps.

    An ablation baseline for the example level of Kong et al. (AAAI 2023): the same seeded initial
    removal, and at each update exactly ``swap_count`` active examples chosen uniformly at random are
    moved to the removed pool while the same number, drawn at random from the removed pool as it was
    before, come back. :meth:`record` keeps the same statistics (reset at every update) so that the
    two selectors can be compared, but they do not influence the choice.

    Args:
        num_examples: Size of the training set (``>= 1``).
        initial_remove_fraction: Fraction of the training set in the removed pool, in ``[0, 1)``.
        swap_fraction: Fraction of the training set swapped at each update, in ``[0, 1)``.
        update_every: Epochs between updates (integer ``>= 1``) or a fraction of ``num_epochs`` in
            ``(0, 1)``.
        max_updates: Maximum number of updates, ``>= 0``.
        seed: Seed of the selector's generator.
        num_epochs: Length of the run; required when ``update_every`` is a fraction.

    Raises:
        ValueError: As :class:`ForgettingSelector`.
    """

    def _choose_removal(self, active: torch.Tensor) -> torch.Tensor:
        perm = torch.randperm(active.numel(), generator=self._generator)
        return active[perm[: self.swap_count]]


# --------------------------------------------------------------------------------------------------
# InfoBatch-style loss-based soft pruning
# --------------------------------------------------------------------------------------------------


class LossSelector(_SelectorBase):
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

    Attributes:
        last_loss (torch.FloatTensor): ``(num_examples,)`` last recorded loss (NaN = none yet).
        has_loss (torch.BoolTensor): ``(num_examples,)`` whether a loss was recorded.
        weights (torch.FloatTensor): ``(num_examples,)`` loss weight of each example this epoch.
        anneal_start_epoch (int): First epoch on the full data.

    Raises:
        ValueError: If ``num_examples < 1``, ``num_epochs`` is missing or ``< 1``, or ``prune_ratio``
            or ``anneal_fraction`` is outside ``[0, 1)``.
    """

    _needs_loss = True

    def __init__(
        self,
        num_examples: int,
        prune_ratio: float = 0.5,
        num_epochs: int | None = None,
        anneal_fraction: float = 0.125,
        seed: int = 0,
    ) -> None:
        super().__init__(num_examples, seed)
        if num_epochs is None:
            raise ValueError("num_epochs is required by LossSelector (an integer >= 1), got None")
        self.num_epochs = _check_int("num_epochs", num_epochs, 1)
        self.prune_ratio = _check_fraction("prune_ratio", prune_ratio)
        self.anneal_fraction = _check_fraction("anneal_fraction", anneal_fraction)
        self.anneal_start_epoch = self.num_epochs - round(self.anneal_fraction * self.num_epochs)
        n = self.num_examples
        self.last_loss = torch.full((n,), float("nan"), dtype=torch.float32)
        self.has_loss = torch.zeros(n, dtype=torch.bool)
        self.weights = torch.ones(n, dtype=torch.float32)

    def _on_epoch(self, epoch: int) -> None:
        n = self.num_examples
        mask = torch.ones(n, dtype=torch.bool)
        weights = torch.ones(n, dtype=torch.float32)
        if epoch < self.anneal_start_epoch and bool(self.has_loss.any()):
            recorded = self.last_loss[self.has_loss]
            mean = recorded.to(torch.float64).mean().to(torch.float32)
            low = torch.nonzero(self.has_loss & (self.last_loss < mean), as_tuple=False).flatten()
            dropped = torch.rand(low.numel(), generator=self._generator) < self.prune_ratio
            mask[low[dropped]] = False
            weights[low[~dropped]] = 1.0 / (1.0 - self.prune_ratio)
        self.weights.copy_(weights)
        self._set_active_mask(mask)

    def record(
        self,
        indices: torch.Tensor | Sequence[int],
        logits: torch.Tensor,
        targets: torch.Tensor,
        loss: torch.Tensor | None = None,
        tie_break: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Record per-example losses and return the reweighted mean loss to back-propagate.

        Args:
            indices: ``(B,)`` integer example indices.
            logits: ``(B, K)`` model outputs (validated; not used for the choice).
            targets: ``(B,)`` class indices or ``(B, K)`` soft targets (validated; not used).
            loss: ``(B,)`` per-example loss (``reduction="none"``); required. Its detached value is
                stored as the example's last loss (all-gathered across ranks when distributed).
            tie_break: Optional ``(B,)``; accepted for interface compatibility, unused.

        Returns:
            ``(loss * weights[indices]).mean()``, a scalar with grad on ``loss``'s device (NaN for an
            empty batch). Only the local batch enters it.

        Raises:
            ValueError: ``loss`` missing or not of shape ``(B,)``, and the checks of
                :meth:`ForgettingSelector.record`.
            TypeError: A non-tensor argument.
        """
        return super().record(indices, logits, targets, loss, tie_break)

    def _observe(self, idx, correct, loss, tie_break) -> None:  # noqa: ANN001
        if idx.numel() == 0:
            return
        self.last_loss[idx] = loss
        self.has_loss[idx] = True

    def _reweighted(self, idx, indices, loss):  # noqa: ANN001
        local = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(indices)
        w = self.weights[local.detach().to("cpu", torch.int64)]
        return (loss * w.to(device=loss.device, dtype=loss.dtype)).mean()

    def _config(self) -> dict[str, Any]:
        return {
            "num_examples": self.num_examples,
            "prune_ratio": self.prune_ratio,
            "num_epochs": self.num_epochs,
            "anneal_start_epoch": self.anneal_start_epoch,
            "seed": self.seed,
        }

    def _stat_tensors(self) -> dict[str, torch.Tensor]:
        return {"last_loss": self.last_loss, "has_loss": self.has_loss, "weights": self.weights}


# --------------------------------------------------------------------------------------------------
# data plumbing
# --------------------------------------------------------------------------------------------------


class ActiveSubsetSampler(Sampler[int]):
    """A ``DistributedSampler`` over the selector's current active set.

    At each epoch the active set (read at :meth:`set_epoch`, after the selector's due update) is
    permuted with a generator seeded by ``seed + epoch`` - identical on all ranks - padded by
    repeating its first indices until divisible by ``num_replicas`` (or truncated with
    ``drop_last``), and rank ``r`` takes positions ``r, r + num_replicas, ...``. The shards are
    disjoint, of equal length, and cover the active set (up to padding). Used with the example
    selectors of Kong et al. (AAAI 2023, example level) and InfoBatch.

    Args:
        selector: A :class:`ForgettingSelector`, :class:`RandomSelector` or :class:`LossSelector`.
        num_replicas: Number of ranks; defaults to the ``torch.distributed`` world size if
            initialised, else 1.
        rank: This rank, in ``[0, num_replicas)``; defaults to the distributed rank, else 0.
        shuffle: Permute the active set each epoch (otherwise ascending index order).
        seed: Base seed of the per-epoch permutation; must be the same on all ranks.
        drop_last: Drop the tail instead of padding when the active set is not divisible by
            ``num_replicas``.

    Raises:
        ValueError: If ``num_replicas < 1`` or ``rank`` is outside ``[0, num_replicas)``.
    """

    def __init__(
        self,
        selector: _SelectorBase,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        self.num_replicas = _check_int("num_replicas", num_replicas, 1)
        if not _is_int(rank) or not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank must be an integer in [0, num_replicas) = [0, {self.num_replicas}), got {rank!r}")
        self.rank = int(rank)
        self.selector = selector
        self.shuffle = bool(shuffle)
        self.seed = _check_seed(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._snapshot: torch.Tensor | None = None
        self._snapshot_key: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``: apply the selector's due update, then fix this epoch's order.

        Args:
            epoch: The epoch about to start, ``>= 0``.

        Raises:
            ValueError: If ``epoch`` is not an integer ``>= 0``.
        """
        epoch = _check_int("epoch", epoch, 0)
        self.selector.set_epoch(epoch)
        self.epoch = epoch
        self._indices()

    def _sizes(self, n: int) -> tuple[int, int]:
        if self.drop_last and n % self.num_replicas != 0:
            num_samples = (n - self.num_replicas) // self.num_replicas + 1 if n >= self.num_replicas else 0
        else:
            num_samples = math.ceil(n / self.num_replicas)
        return num_samples, num_samples * self.num_replicas

    def _indices(self) -> torch.Tensor:
        key = (self.epoch, self.selector._version)
        if self._snapshot is None or self._snapshot_key != key:
            active = self.selector._sets()[0]
            n = int(active.numel())
            if self.shuffle:
                g = torch.Generator()
                g.manual_seed(self.seed + self.epoch)
                order = active[torch.randperm(n, generator=g)]
            else:
                order = active.clone()
            num_samples, total = self._sizes(n)
            if total > n and n > 0:
                reps = math.ceil((total - n) / n)
                order = torch.cat([order, order.repeat(reps)[: total - n]])
            order = order[:total]
            self._snapshot = order[self.rank : total : self.num_replicas].clone()
            self._snapshot_key = key
        return self._snapshot

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return int(self._indices().numel())

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state: its epoch and order settings (ints and bools only)."""
        return {"epoch": int(self.epoch), "seed": self.seed, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch saved by :meth:`state_dict` (does not call the selector).

        ``num_replicas`` and ``rank`` are not restored, so a run may resume on another world size
        (with a different split of the same epoch order).

        Raises:
            ValueError: If ``seed``, ``shuffle`` or ``drop_last`` differ from this sampler's.
        """
        for key in ("seed", "shuffle", "drop_last"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state.get(key)!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}"
                )
        self.epoch = _check_int("epoch", state["epoch"], 0)
        self._snapshot = None


class IndexedDataset(Dataset):
    """Wrap a dataset so that each item also carries its index: ``(image, target, index)``.

    Tuple or list items are extended with the index (``(image, target)`` becomes
    ``(image, target, index)``); any other item ``x`` becomes ``(x, index)``. The index lets
    :meth:`ForgettingSelector.record` attribute a batch's outcomes to examples.

    Args:
        dataset: Any map-style dataset with ``__getitem__`` and ``__len__``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            return (*item, index)
        return (item, index)


# --------------------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------------------


def benchmark_record(
    num_examples: int = 1_281_167, batch_size: int = 256, repeats: int = 200, num_threads: int | None = None
) -> dict:
    """Time :meth:`ForgettingSelector.record` on the CPU (ImageNet-1k sized statistics by default).

    Uses random ``(batch_size, 1000)`` CPU logits, hard targets and distinct random indices from a
    private generator, so the figure includes judging correctness on the CPU (on a GPU run that part
    is done on the device).

    Args:
        num_examples: Training-set size.
        batch_size: Examples per ``record`` call.
        repeats: Timed calls (after 10 warm-up calls).
        num_threads: If given, ``torch.set_num_threads(num_threads)`` for the measurement (restored
            afterwards); 1 gives stable figures on a busy machine.

    Returns:
        ``{"median_us", "p90_us", "min_us", "num_examples", "batch_size", "repeats", "threads"}``,
        times in microseconds per call.

    Raises:
        ValueError: If an argument is not a positive integer.
    """
    _check_int("num_examples", num_examples, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("repeats", repeats, 1)
    if batch_size > num_examples:
        raise ValueError(f"batch_size must be at most num_examples={num_examples}, got {batch_size}")
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(_check_int("num_threads", num_threads, 1))
    try:
        g = torch.Generator().manual_seed(0)
        selector = ForgettingSelector(num_examples, seed=0)
        num_classes = 1000
        batches = []
        for _ in range(8):
            idx = torch.randperm(num_examples, generator=g)[:batch_size]
            logits = torch.randn(batch_size, num_classes, generator=g)
            targets = torch.randint(num_classes, (batch_size,), generator=g)
            batches.append((idx, logits, targets))
        for i in range(10):
            selector.record(*batches[i % len(batches)])
        times = []
        for i in range(repeats):
            batch = batches[i % len(batches)]
            start = time.perf_counter()
            selector.record(*batch)
            times.append((time.perf_counter() - start) * 1e6)
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    times.sort()
    return {
        "median_us": statistics.median(times),
        "p90_us": times[min(len(times) - 1, int(0.9 * len(times)))],
        "min_us": times[0],
        "num_examples": num_examples,
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": threads,
    }
