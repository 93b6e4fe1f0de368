"""The interface and shared machinery of the example selectors.

Example-level data reduction is the outer layer of the "onion" of Kong et al., "Peeling the Onion:
Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer Training", AAAI 2023
(arXiv 2211.10801), method section, example-level sparsity: each epoch trains on an *active set* of
examples while the rest wait in a *removed pool*. :class:`ExampleSelector` is the interface every
selector implements (:class:`~trilevel.example_selection.ForgettingSelector`,
:class:`~trilevel.example_selection.RandomSelector`, :class:`~trilevel.example_selection.LossSelector`);
it owns the active set, the statistics tensors and their device, and calls public hook methods that
the subclasses define. What :meth:`ExampleSelector.record` does before a hook sees a batch
(validation, correctness, cross-rank gathering, free of host-device synchronisation) is
:mod:`~trilevel.example_selection.recording`; the ``state_dict`` layout, its checks and the digest
are :mod:`~trilevel.example_selection.selector_state`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from .recording import prepare_batch
from .selector_state import STATE_VERSION, check_state, state_digest
from .validation import check_int, check_seed

__all__ = ["ExampleSelector"]


# --------------------------------------------------------------------------------------------------
# the selector interface and its shared machinery
# --------------------------------------------------------------------------------------------------


class ExampleSelector:
    """The interface every example selector implements, and the machinery they share.

    A selector holds a boolean *active mask* over the ``num_examples`` training examples (the active
    set; the others form the removed pool), per-example statistics tensors of shape
    ``(num_examples,)``, both on :attr:`device`, and one seeded CPU ``torch.Generator`` that is its
    only source of randomness. :meth:`record` validates a batch, judges top-1 correctness,
    all-gathers the observations across ranks under ``torch.distributed``, sends duplicate and
    ignored rows to a hidden dummy slot and passes the result to :meth:`observe`, all without a
    host-device synchronisation; :meth:`set_epoch` calls :meth:`on_epoch` once per new epoch (epoch
    boundaries may synchronise).

    Each statistics tensor is stored with one extra entry, the *dummy slot* at index
    ``num_examples``, that absorbs the updates which must not count; the public attributes (and
    :meth:`stat_tensors`, :meth:`state_dict`, :meth:`digest`) are views of the first
    ``num_examples`` entries only.

    Subclasses create their statistics with :meth:`add_stat`, and implement the hooks
    :meth:`observe`, :meth:`on_epoch` and :meth:`config`; they may override :meth:`extra_state`,
    :meth:`load_extra_state`, :meth:`reweighted` and :attr:`needs_loss`. They change the active set
    only through :meth:`set_active_mask` and draw random numbers only from :attr:`generator`.

    Args:
        num_examples: Size of the training set (``>= 1``).
        seed: Seed of the selector's generator (an integer).
        device: Device of the active mask and the statistics (None: the CPU). Put it on the model's
            device so that :meth:`record` never waits for the device; see :meth:`to`.

    Attributes:
        num_examples (int): Size of the training set.
        seed (int): Seed of :attr:`generator`.
        last_epoch (int): The last epoch passed to :meth:`set_epoch` (-1 before the first call).

    Raises:
        ValueError: If ``num_examples`` is not an integer ``>= 1`` or ``seed`` is not an integer.
    """

    #: Whether :meth:`record` requires a per-example ``loss`` (a ``ValueError`` names it if missing).
    needs_loss: ClassVar[bool] = False

    def __init__(self, num_examples: int, seed: int, device: torch.device | str | None = None) -> None:
        self.num_examples = check_int("num_examples", num_examples, 1)
        self.seed = check_seed(seed)
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed)
        self._stats: dict[str, torch.Tensor] = {}  # name -> (num_examples + 1,) tensor with the dummy slot
        self._active_mask = torch.ones(self.num_examples, dtype=torch.bool, device=self._device)
        self._device = self._active_mask.device  # resolved ("cuda" -> "cuda:0")
        self._version = 0  # bumped whenever the active set changes (the sampler re-reads it)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        #: The last epoch passed to :meth:`set_epoch` (-1 before the first call).
        self.last_epoch = -1

    # ----------------------------------------------------------------------------- device, statistics
    @property
    def device(self) -> torch.device:
        """The device of the active mask and the statistics tensors (read-only; change it with :meth:`to`)."""
        return self._device

    def to(self, device: torch.device | str) -> "ExampleSelector":
        """Move the active mask and all statistics tensors to ``device``.

        The generator stays on the CPU, and :meth:`index_sets`, :meth:`state_dict` and :meth:`digest`
        stay CPU-based, so moving changes neither the decisions nor the digest. Attributes holding
        statistics are rebound to the moved tensors (re-read them after the call).

        Args:
            device: The new device, e.g. the model's device.

        Returns:
            ``self``.
        """
        self._active_mask = self._active_mask.to(device)
        self._device = self._active_mask.device
        for name, full in self._stats.items():
            self._bind(name, full.to(self._device))
        return self

    def add_stat(self, name: str, fill: float | bool, dtype: torch.dtype) -> torch.Tensor:
        """Create a statistics tensor (for subclass constructors).

        Allocates ``num_examples + 1`` entries filled with ``fill`` on :attr:`device` (the last one is
        the dummy slot) and binds attribute ``name`` to the view of the first ``num_examples``.
        :meth:`stat_tensors` lists the statistics in the order they were added.

        Args:
            name: Attribute name, also the key in ``state_dict()["stats"]``.
            fill: Initial value.
            dtype: Data type.

        Returns:
            The public ``(num_examples,)`` view.
        """
        full = torch.full((self.num_examples + 1,), fill, dtype=dtype, device=self._device)
        self._bind(name, full)
        return getattr(self, name)

    def _bind(self, name: str, full: torch.Tensor) -> None:
        self._stats[name] = full
        setattr(self, name, full[: self.num_examples])

    def full_stat(self, name: str) -> torch.Tensor:
        """The ``(num_examples + 1,)`` tensor behind statistic ``name``, dummy slot included (for hooks)."""
        return self._stats[name]

    def stat_tensors(self) -> dict[str, torch.Tensor]:
        """The statistics tensors, by attribute name (the live views, not copies).

        Returns:
            ``{name: tensor}`` where ``getattr(self, name) is tensor``; each is a ``(num_examples,)``
            tensor on :attr:`device`. Saved under ``state_dict()["stats"]``, restored in place by
            :meth:`load_state_dict`, and hashed by :meth:`digest` in this order.
        """
        return {name: getattr(self, name) for name in self._stats}

    # ----------------------------------------------------------------------------- the active set
    @property
    def generator(self) -> torch.Generator:
        """The selector's seeded CPU ``torch.Generator`` (the live object, saved by :meth:`state_dict`).

        Every random choice of a selector draws from it (at epoch boundaries, on the CPU), so the same
        seed gives the same choices on every rank and on every device; the global RNG is never touched.
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
        """``(num_examples,)`` bool tensor on :attr:`device`, True for the active set (a copy; safe to modify)."""
        return self._active_mask.clone()

    def set_active_mask(self, mask: torch.Tensor) -> None:
        """Replace the active set (for subclasses and :meth:`load_state_dict`).

        Takes ownership of ``mask`` when it is on :attr:`device` (no copy: do not modify it
        afterwards), else moves it there; bumps :attr:`active_set_version` and drops the cached
        :meth:`index_sets`.

        Args:
            mask: ``(num_examples,)`` bool tensor, True for the active examples, any device.
        """
        self._active_mask = mask.to(self._device)
        self._version += 1
        self._cache = None

    def index_sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached ``(active, removed)`` index tensors, without copying.

        Computed on the CPU once per :attr:`active_set_version` (one device-to-host copy of the mask
        when :attr:`device` is an accelerator: an epoch-boundary cost).

        Returns:
            Two sorted, disjoint 1-D int64 CPU tensors that together cover ``range(num_examples)``.
            They are the selector's cache: read them, never modify them in place (use
            :attr:`active_indices` / :attr:`removed_indices` for copies). They stay valid until
            :attr:`active_set_version` changes.
        """
        if self._cache is None:
            mask = self._active_mask.to("cpu")
            active = torch.nonzero(mask, as_tuple=False).flatten()
            removed = torch.nonzero(~mask, as_tuple=False).flatten()
            self._cache = (active, removed)
        return self._cache

    @property
    def active_indices(self) -> torch.Tensor:
        """Indices of the active set, a sorted 1-D int64 CPU tensor (a copy; safe to modify)."""
        return self.index_sets()[0].clone()

    @property
    def removed_indices(self) -> torch.Tensor:
        """Indices of the removed pool, a sorted 1-D int64 CPU tensor disjoint from the active set."""
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
        never call it yourself. May synchronise with the device (an epoch-boundary cost).

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
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Record the outcome of one batch, without a host-device synchronisation.

        An example is correct when the logit of its label is the largest logit (top-1; an exact tie
        for the maximum counts as correct). With soft targets of shape ``(B, K)`` (mixup, cutmix,
        label smoothing) the label is ``argmax(targets)``, the class with the larger mixing weight
        (the first one on an exact tie), instead of the original hard label of an image that was
        mixed (what the authors' released code does). What is kept is the subclass's
        :meth:`observe`: forgetting events and presentations (:class:`ForgettingSelector`, after
        Toneva et al., ICLR 2019), or the last loss (:class:`LossSelector`, after InfoBatch).

        Vectorised, with fixed shapes. Correctness is judged on the logits' device, then the rows are
        moved to :attr:`device` (non-blocking, except a copy from an accelerator to CPU statistics,
        which blocks: put the selector on the model's device with :meth:`to`). Nothing is read on the
        host except tensors that already live in host memory (e.g. indices straight from a
        ``DataLoader``). Duplicate indices in one (gathered) batch count as one presentation with the
        outcome of the first occurrence (in batch order, then rank order): repeats are sent to a
        hidden dummy slot instead of being dropped.

        Under ``torch.distributed`` (world size > 1) the rows (index, status, ``loss``,
        ``tie_break``) of all ranks are all-gathered with one fixed-shape collective, on CUDA for
        NCCL and on the CPU for gloo/MPI, so every rank updates identical global statistics. Every
        rank must therefore call ``record`` the same number of times, with the same batch size
        ``B`` at each call (``DistributedSampler`` and :class:`ActiveSubsetSampler` pad every rank to
        the same length; do not use ``drop_last=False`` with a sampler that does not), and pass
        ``loss`` and ``tie_break`` on all ranks or on none. These requirements are not checked (a
        check would need a host read); a violation makes the collective fail or hang. An invalid
        shape on one rank only raises there and leaves the others waiting.

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
            valid: Optional 0-d bool tensor, any device: when False the whole batch is ignored (no
                statistic changes; under DDP only this rank's rows), e.g. a batch whose loss was not
                finite, without reading the flag on the host. None: the batch is valid. Range
                errors are raised even for an ignored batch.

        Returns:
            What :meth:`reweighted` returns: None, or for :class:`LossSelector`
            ``(loss * batch_weights(indices)).mean()``, a scalar with grad on ``loss``'s device (NaN
            for an empty batch; only the local batch enters it).

        Raises:
            ValueError: A wrong shape, dtype or batch size, float 1-D targets, a missing ``loss``
                when :attr:`needs_loss`, a ``valid`` that is not a 0-d bool tensor, or an index or
                class index out of range in a tensor that lives in host memory (checked exactly; under
                gloo the gathered rows are on the CPU, so every rank raises).
            TypeError: ``logits``, ``targets``, ``loss``, ``tie_break`` or ``valid`` not a tensor.
            RuntimeError: An index or class index out of range in a tensor on an accelerator is
                checked with ``torch._assert_async`` (same message text): the error surfaces
                asynchronously, at a later synchronisation, as a device-side assertion. The offending
                rows are sent to the dummy slot meanwhile, so no memory outside the statistics is
                touched.
        """
        idx, correct, loss_s, tb_s = prepare_batch(
            indices, logits, targets, loss, tie_break, valid, num_examples=self.num_examples, device=self._device,
            needs_loss_of=type(self).__name__ if self.needs_loss else None)
        self.observe(idx, correct, loss_s, tb_s)
        return self.reweighted(idx, indices, loss)

    def observe(
        self,
        idx: torch.Tensor,
        correct: torch.Tensor,
        loss: torch.Tensor | None,
        tie_break: torch.Tensor | None,
    ) -> None:  # pragma: no cover - overridden
        """Hook: update the statistics with one validated, gathered batch (no host reads here).

        Called by :meth:`record`; not meant to be called directly. Write to the full tensors
        (:meth:`full_stat`) at ``idx``: every value below ``num_examples`` appears at most once, and
        the rows to ignore (repeats, ignored or out-of-range rows) point at the dummy slot
        ``num_examples``, whose content is never read, so ``index_put_`` is exact.

        Args:
            idx: ``(N,)`` int64 on :attr:`device`, values in ``[0, num_examples]``; ``N`` is the global
                batch size (all ranks), possibly 0.
            correct: ``(N,)`` bool on :attr:`device`, top-1 correctness of each row.
            loss: ``(N,)`` float32 on :attr:`device` per-example loss, or None if not given.
            tie_break: ``(N,)`` float32 on :attr:`device` tie-break score, or None if not given.
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
            idx: ``(N,)`` int64 global scatter targets on :attr:`device` (as passed to :meth:`observe`).
            indices: ``(B,)`` the local batch's indices as given to :meth:`record`.
            loss: ``(B,)`` the local per-example loss as given to :meth:`record` (with grad), or None.

        Returns:
            None here; :class:`~trilevel.example_selection.LossSelector` returns its reweighted loss.
        """
        return None

    # ----------------------------------------------------------------------------- state
    def config(self) -> dict[str, Any]:  # pragma: no cover - overridden
        """Hook: the configuration that a loaded state must match, and that ``repr`` shows.

        Returns:
            A dict of ints / floats (stored under ``state_dict()["config"]``).
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
        saved with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``. Its
        tensors are compact CPU copies (no dummy slot) whatever :attr:`device` is, so a state saved
        on one device loads on any other.

        Returns:
            A new dictionary (tensors are CPU copies).
        """
        state: dict[str, Any] = {
            "kind": type(self).__name__,
            "version": STATE_VERSION,
            "config": dict(self.config()),
            "active_mask": self._active_mask.to("cpu", copy=True),
            "stats": {k: v.to("cpu", copy=True) for k, v in self.stat_tensors().items()},
            "last_epoch": int(self.last_epoch),
            "generator_state": self._generator.get_state(),
        }
        state.update(self.extra_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` of a selector with the same configuration.

        The tensors are copied onto :attr:`device` (the state's tensors may live on any device).

        Args:
            state: The dictionary returned by :meth:`state_dict` (possibly via ``torch.save`` /
                ``torch.load(weights_only=True)``).

        Raises:
            ValueError: If the state comes from another selector type, another state version, a
                different configuration (the mismatching key is named), or has tensors of the wrong
                size or dtype.
        """
        current = self.stat_tensors()
        check_state(state, type(self).__name__, self.config(), self.num_examples, current)
        for name, tensor in current.items():
            tensor.copy_(state["stats"][name])
        self.set_active_mask(state["active_mask"].to(self._device, copy=True))
        self.last_epoch = int(state["last_epoch"])
        self._generator.set_state(state["generator_state"].to("cpu", copy=True))
        self.load_extra_state(state)

    def digest(self) -> str:
        """Short hex SHA-256 over the active set, the removed pool and the statistics tensors.

        Two selectors (two ranks, or a resumed and an uninterrupted run) with the same digest hold the
        same sets and statistics. Hashes CPU copies, so the value does not depend on :attr:`device`
        (the dummy slot is not hashed); synchronises when :attr:`device` is an accelerator.

        Returns:
            The first 16 hex characters of the SHA-256.
        """
        active, removed = self.index_sets()
        return state_digest(active, removed, self.stat_tensors())

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg}, num_active={self.num_active})"
