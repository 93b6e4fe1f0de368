"""The interface and shared machinery of the example selectors.

Example-level data reduction is the outer layer of the "onion" of Kong et al., "Peeling the Onion:
Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer Training", AAAI 2023
(arXiv 2211.10801), method section, example-level sparsity: each epoch trains on an *active set* of
examples while the rest wait in a *removed pool*. :class:`ExampleSelector` is the interface every
selector implements (:class:`~trilevel.example_selection.ForgettingSelector`,
:class:`~trilevel.example_selection.RandomSelector`, :class:`~trilevel.example_selection.LossSelector`);
it owns the active set, the validation and cross-rank gathering of :meth:`ExampleSelector.record`, the
``state_dict`` / ``load_state_dict`` layout and the digest, and calls public hook methods that the
subclasses define.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Sequence

import torch
import torch.distributed as dist

from .collective import gather_batch
from .validation import check_int, check_seed

__all__ = ["ExampleSelector"]

_STATE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# the selector interface and its shared machinery
# --------------------------------------------------------------------------------------------------


class ExampleSelector:
    """The interface every example selector implements, and the machinery they share.

    A selector holds a boolean *active mask* over the ``num_examples`` training examples (the active
    set; the others form the removed pool), per-example statistics as CPU tensors of shape
    ``(num_examples,)``, and one seeded CPU ``torch.Generator`` that is its only source of
    randomness. :meth:`record` validates a batch, judges top-1 correctness, all-gathers the
    observations across ranks under ``torch.distributed``, drops duplicate indices and passes the
    result to :meth:`observe`; :meth:`set_epoch` calls :meth:`on_epoch` once per new epoch.

    Subclasses implement the hooks :meth:`observe`, :meth:`on_epoch`, :meth:`config` and
    :meth:`stat_tensors`, and may override :meth:`extra_state`, :meth:`load_extra_state`,
    :meth:`reweighted` and :attr:`needs_loss`. They change the active set only through
    :meth:`set_active_mask` and draw random numbers only from :attr:`generator`.

    Args:
        num_examples: Size of the training set (``>= 1``).
        seed: Seed of the selector's generator (an integer).

    Attributes:
        num_examples (int): Size of the training set.
        seed (int): Seed of :attr:`generator`.
        last_epoch (int): The last epoch passed to :meth:`set_epoch` (-1 before the first call).

    Raises:
        ValueError: If ``num_examples`` is not an integer ``>= 1`` or ``seed`` is not an integer.
    """

    #: Whether :meth:`record` requires a per-example ``loss`` (a ``ValueError`` names it if missing).
    needs_loss: ClassVar[bool] = False

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples = check_int("num_examples", num_examples, 1)
        self.seed = check_seed(seed)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed)
        self._active_mask = torch.ones(self.num_examples, dtype=torch.bool)
        self._version = 0  # bumped whenever the active set changes (the sampler re-reads it)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        #: The last epoch passed to :meth:`set_epoch` (-1 before the first call).
        self.last_epoch = -1

    # ----------------------------------------------------------------------------- the active set
    @property
    def generator(self) -> torch.Generator:
        """The selector's seeded CPU ``torch.Generator`` (the live object, saved by :meth:`state_dict`).

        Every random choice of a selector draws from it, so the same seed gives the same choices on
        every rank; the global RNG is never touched.
        """
        return self._generator

    @property
    def active_set_version(self) -> int:
        """A counter that changes whenever the active set changes (read-only).

        :class:`~trilevel.example_selection.ActiveSubsetSampler` compares it to decide whether to
        re-read :meth:`index_sets`.
        """
        return self._version

    @property
    def active_mask(self) -> torch.Tensor:
        """``(num_examples,)`` bool tensor, True for the active set (a copy; safe to modify)."""
        return self._active_mask.clone()

    def set_active_mask(self, mask: torch.Tensor) -> None:
        """Replace the active set (for subclasses and :meth:`load_state_dict`).

        Takes ownership of ``mask`` (no copy: do not modify it afterwards), bumps
        :attr:`active_set_version` and drops the cached :meth:`index_sets`.

        Args:
            mask: ``(num_examples,)`` bool CPU tensor, True for the active examples.
        """
        self._active_mask = mask
        self._version += 1
        self._cache = None

    def index_sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached ``(active, removed)`` index tensors, without copying.

        Returns:
            Two sorted, disjoint 1-D int64 CPU tensors that together cover ``range(num_examples)``.
            They are the selector's cache: read them, never modify them in place (use
            :attr:`active_indices` / :attr:`removed_indices` for copies). They stay valid until
            :attr:`active_set_version` changes.
        """
        if self._cache is None:
            active = torch.nonzero(self._active_mask, as_tuple=False).flatten()
            removed = torch.nonzero(~self._active_mask, as_tuple=False).flatten()
            self._cache = (active, removed)
        return self._cache

    @property
    def active_indices(self) -> torch.Tensor:
        """Indices of the active set, a sorted 1-D ``LongTensor`` (a copy; safe to modify)."""
        return self.index_sets()[0].clone()

    @property
    def removed_indices(self) -> torch.Tensor:
        """Indices of the removed pool, a sorted 1-D ``LongTensor`` disjoint from the active set."""
        return self.index_sets()[1].clone()

    @property
    def num_active(self) -> int:
        """Size of the active set."""
        return int(self.index_sets()[0].numel())

    @property
    def keep_ratio(self) -> float:
        """Current example keep ratio: ``num_active / num_examples``."""
        return self.num_active / self.num_examples

    # ----------------------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Tell the selector that ``epoch`` starts; applies whatever is due at that epoch.

        Idempotent: calling it again with the same epoch changes nothing. Called by
        :meth:`~trilevel.example_selection.ActiveSubsetSampler.set_epoch`, so with the sampler you
        never call it yourself.

        Args:
            epoch: The epoch about to start (0-based, ``>= 0``).

        Raises:
            ValueError: If ``epoch`` is not an integer ``>= 0``.
        """
        epoch = check_int("epoch", epoch, 0)
        if epoch == self.last_epoch:
            return
        self.last_epoch = epoch
        self.on_epoch(epoch)

    def on_epoch(self, epoch: int) -> None:  # pragma: no cover - overridden
        """Hook: apply what is due when ``epoch`` starts (called once per new epoch by :meth:`set_epoch`).

        Args:
            epoch: The validated epoch (``>= 0``), different from the previous call's.
        """
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
        """Record the outcome of one batch.

        An example is correct when the logit of its label is the largest logit (top-1; an exact tie
        for the maximum counts as correct). With soft targets of shape ``(B, K)`` (mixup, cutmix,
        label smoothing) the label is ``argmax(targets)``, the class with the larger mixing weight
        (the first one on an exact tie), instead of the original hard label of an image that was
        mixed (what the authors' released code does). What is kept is the subclass's
        :meth:`observe`: forgetting events and presentations (:class:`ForgettingSelector`), or the
        last loss (:class:`LossSelector`).

        Vectorised; the statistics stay on the CPU. Per batch there is one device-to-host copy of
        the correctness (plus the indices if they live on a device), no per-example ``.item()``.
        With ``torch.distributed`` initialised (world size > 1) the observations (indices,
        correctness, ``loss``, ``tie_break``) of all ranks are all-gathered first - two collectives,
        on CUDA (the logits' device) for NCCL and on the CPU for gloo/MPI, unequal batch sizes padded
        to the largest - so every rank updates identical global statistics. Every rank must
        therefore call ``record`` the same number of times (batch sizes may differ, also 0); an
        invalid shape on one rank only raises there and leaves the others waiting. Duplicate
        indices in one (gathered) batch count as one presentation with the outcome of the first
        occurrence (in batch order, then rank order); :class:`ActiveSubsetSampler` never repeats an
        index within one rank's epoch, but its padding may repeat one across ranks.

        Args:
            indices: ``(B,)`` integer example indices in ``[0, num_examples)`` (e.g. from
                :class:`IndexedDataset`), any device.
            logits: ``(B, K)`` model outputs.
            targets: ``(B,)`` integer class indices in ``[0, K)``, or ``(B, K)`` soft / mixed targets.
            loss: ``(B,)`` per-example loss (``reduction="none"``); required when :attr:`needs_loss`
                (:class:`LossSelector` stores its detached value), else unused.
            tie_break: Optional ``(B,)`` per-example score; :class:`ForgettingSelector` stores the
                last one in ``tie_break_scores`` and breaks ties in the forgetting count with it,
                lower removed first (paper variant: variance of the last block's [CLS] attention).

        Returns:
            What :meth:`reweighted` returns: None, or for :class:`LossSelector`
            ``(loss * weights[indices]).mean()``, a scalar with grad on ``loss``'s device (NaN for an
            empty batch; only the local batch enters it).

        Raises:
            ValueError: A wrong shape, dtype or batch size, float 1-D targets, an index or class
                index out of range, a missing ``loss`` when :attr:`needs_loss`, or
                ``loss``/``tie_break`` given on some ranks only.
            TypeError: ``logits``, ``targets``, ``loss`` or ``tie_break`` not a tensor.
        """
        idx, correct, loss_cpu, tb_cpu = self._prepare(indices, logits, targets, loss, tie_break)
        self.observe(idx, correct, loss_cpu, tb_cpu)
        return self.reweighted(idx, indices, loss)

    def observe(
        self,
        idx: torch.Tensor,
        correct: torch.Tensor,
        loss: torch.Tensor | None,
        tie_break: torch.Tensor | None,
    ) -> None:  # pragma: no cover - overridden
        """Hook: update the statistics with one validated, gathered, de-duplicated batch.

        Called by :meth:`record`; not meant to be called directly.

        Args:
            idx: ``(N,)`` int64 CPU example indices, distinct, in ``[0, num_examples)``; ``N`` is the
                global batch size (all ranks) after dropping duplicates, possibly 0.
            correct: ``(N,)`` bool CPU tensor, top-1 correctness of each example.
            loss: ``(N,)`` float32 CPU per-example loss, or None if not given.
            tie_break: ``(N,)`` float32 CPU tie-break score, or None if not given.
        """
        raise NotImplementedError

    def reweighted(
        self,
        idx: torch.Tensor,
        indices: torch.Tensor | Sequence[int],
        loss: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Hook: the value :meth:`record` returns (the base class returns None).

        Args:
            idx: ``(N,)`` int64 CPU global, de-duplicated indices (as passed to :meth:`observe`).
            indices: ``(B,)`` the local batch's indices as given to :meth:`record`.
            loss: ``(B,)`` the local per-example loss as given to :meth:`record` (with grad), or None.

        Returns:
            None here; :class:`~trilevel.example_selection.LossSelector` returns its reweighted loss.
        """
        return None

    def _prepare(self, indices: torch.Tensor | Sequence[int], logits: torch.Tensor, targets: torch.Tensor,
                 loss: torch.Tensor | None, tie_break: torch.Tensor | None) -> tuple:
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
        if self.needs_loss and loss is None:
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
            idx, status_cpu, loss_cpu, tb_cpu = gather_batch(indices, status, loss, tie_break, logits.device)
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

    # ----------------------------------------------------------------------------- state
    def config(self) -> dict[str, Any]:  # pragma: no cover - overridden
        """Hook: the configuration that a loaded state must match, and that ``repr`` shows.

        Returns:
            A dict of ints / floats (stored under ``state_dict()["config"]``).
        """
        raise NotImplementedError

    def stat_tensors(self) -> dict[str, torch.Tensor]:  # pragma: no cover - overridden
        """Hook: the statistics tensors, by attribute name (the live tensors, not copies).

        Returns:
            ``{name: tensor}`` where ``getattr(self, name) is tensor``; each is a CPU tensor of shape
            ``(num_examples,)``. Saved under ``state_dict()["stats"]``, restored in place by
            :meth:`load_state_dict`, and hashed by :meth:`digest` in this order.
        """
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Hook: further top-level ``state_dict`` entries (counters, history); none by default.

        Returns:
            A dict of ints, lists and dicts (``torch.load(weights_only=True)``-safe).
        """
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Hook: restore what :meth:`extra_state` saved; does nothing by default.

        Args:
            state: The whole dictionary passed to :meth:`load_state_dict`, already validated.
        """

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
            "config": dict(self.config()),
            "active_mask": self._active_mask.clone(),
            "stats": {k: v.clone() for k, v in self.stat_tensors().items()},
            "last_epoch": int(self.last_epoch),
            "generator_state": self._generator.get_state(),
        }
        state.update(self.extra_state())
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
        mine = self.config()
        theirs = state.get("config", {})
        for key, value in mine.items():
            if theirs.get(key) != value:
                raise ValueError(
                    f"state was saved with {key}={theirs.get(key)!r} but this selector has {key}={value!r}"
                )
        mask = state["active_mask"]
        if not isinstance(mask, torch.Tensor) or mask.shape != (self.num_examples,) or mask.dtype != torch.bool:
            raise ValueError(f"state['active_mask'] must be a bool tensor of shape ({self.num_examples},)")
        current = self.stat_tensors()
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
        self.set_active_mask(mask.clone().to("cpu"))
        self.last_epoch = int(state["last_epoch"])
        self._generator.set_state(generator_state.clone())
        self.load_extra_state(state)

    def digest(self) -> str:
        """Short hex SHA-256 over the active set, the removed pool and the statistics tensors.

        Two selectors (two ranks, or a resumed and an uninterrupted run) with the same digest hold the
        same sets and statistics.

        Returns:
            The first 16 hex characters of the SHA-256.
        """
        h = hashlib.sha256()
        active, removed = self.index_sets()
        tensors = [("active", active), ("removed", removed), *self.stat_tensors().items()]
        for name, tensor in tensors:
            h.update(name.encode())
            h.update(str(tensor.dtype).encode())
            h.update(tensor.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg}, num_active={self.num_active})"
