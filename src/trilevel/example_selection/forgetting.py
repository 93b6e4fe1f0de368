"""Forgetting-event example selection (the paper's selector) and its random-swap baseline.

The example level of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for
Efficient Vision Transformer Training", AAAI 2023 (arXiv 2211.10801), method section, example-level
sparsity: a seeded random fraction of the training set starts in the removed pool, and every
``update_every`` epochs the active examples with the fewest forgetting events (Toneva et al., "An
Empirical Study of Example Forgetting during Deep Neural Network Learning", ICLR 2019) are swapped
for examples drawn at random from the removed pool, so the active set keeps its size.
:class:`RandomSelector` keeps the sizes and schedule but swaps at random (an ablation baseline).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import ExampleSelector
from .validation import check_fraction, check_int, is_number

__all__ = ["ForgettingSelector", "RandomSelector", "initial_active_count"]


def _resolve_update_every(update_every: Any, num_epochs: int | None) -> int:
    """Resolve ``update_every`` (epochs, or a fraction of the run) into a whole number of epochs."""
    if not is_number(update_every) or math.isnan(float(update_every)) or update_every <= 0:
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


def initial_active_count(num_examples: int, initial_remove_fraction: float) -> int:
    """Size of the active set a :class:`ForgettingSelector` (or :class:`RandomSelector`) keeps.

    ``num_examples - round(initial_remove_fraction * num_examples)`` (Python's ``round``, half to
    even); it stays constant through the updates, which swap examples one for one.
    """
    return num_examples - round(initial_remove_fraction * num_examples)


class ForgettingSelector(ExampleSelector):
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
    4. reset the statistics, except each example's outcome at its last presentation: a forgetting
       event needs two consecutive presentations, which may lie on both sides of an update (with an
       update every epoch, each example is presented once between updates, so resetting it too
       would never count an event).

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
        device: Device of the active mask and the statistics tensors (None: the CPU); use the model's
            device so that :meth:`record` never synchronises. Random draws stay on the CPU generator,
            so the device changes no decision.

    Attributes:
        remove_count (int): Size of the removed pool.
        swap_count (int): Examples swapped per update (at most).
        update_every (int): Resolved epochs between updates.
        update_epochs (list[int]): The epochs at which updates happen when every epoch is visited.
        num_updates (int): Updates made so far.
        history (list[dict]): One ``{"epoch", "removed", "restored"}`` entry per update.
        last_correct (torch.Tensor): ``(num_examples,)`` bool on :attr:`device`, correctness at the
            last presentation (kept across updates; False before the first one).
        forgetting_counts (torch.Tensor): ``(num_examples,)`` int32 on :attr:`device`, forgetting
            events since the last update.
        ever_learned (torch.Tensor): ``(num_examples,)`` bool on :attr:`device`, classified correctly
            at least once since the last update.
        presentations (torch.Tensor): ``(num_examples,)`` int32 on :attr:`device`, presentations since
            the last update.
        tie_break_scores (torch.Tensor): ``(num_examples,)`` float32 on :attr:`device`, last score
            passed as ``tie_break`` to :meth:`record` (NaN = none since the last update).

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
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(num_examples, seed, device)
        n = self.num_examples
        self.initial_remove_fraction = check_fraction("initial_remove_fraction", initial_remove_fraction)
        self.swap_fraction = check_fraction("swap_fraction", swap_fraction)
        self.num_epochs = None if num_epochs is None else check_int("num_epochs", num_epochs, 1)
        self.update_every = _resolve_update_every(update_every, self.num_epochs)
        self.max_updates = check_int("max_updates", max_updates, 0)
        self.remove_count = n - initial_active_count(n, self.initial_remove_fraction)
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

        # The statistics, on the selector's device (each with a hidden dummy slot, see ExampleSelector).
        self.add_stat("last_correct", False, torch.bool)
        self.add_stat("forgetting_counts", 0, torch.int32)
        self.add_stat("ever_learned", False, torch.bool)
        self.add_stat("presentations", 0, torch.int32)
        self.add_stat("tie_break_scores", float("nan"), torch.float32)

        # The initial removal: a seeded random choice (the same on every rank).
        mask = torch.ones(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=self.generator)[: self.remove_count]] = False
        self.set_active_mask(mask)

    # ----------------------------------------------------------------------------- recording
    def observe(self, idx: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor | None,
                tie_break: torch.Tensor | None) -> None:
        """Count presentations and forgetting events of one gathered batch (hook of :meth:`record`).

        Fixed-shape scatters on :attr:`device`, no host read.

        Args:
            idx: ``(N,)`` int64 scatter targets on :attr:`device`: each real index at most once, the
                rows to ignore at the dummy slot ``num_examples``.
            correct: ``(N,)`` bool top-1 correctness, on :attr:`device`.
            loss: Unused.
            tie_break: ``(N,)`` float32 scores stored in ``tie_break_scores``, or None.
        """
        if idx.numel() == 0:
            return
        last_correct = self.full_stat("last_correct")
        ever_learned = self.full_stat("ever_learned")
        # A forgetting event (Toneva et al., ICLR 2019): correct at the previous presentation, not now.
        previous = last_correct.index_select(0, idx)
        self.full_stat("forgetting_counts").index_put_(
            (idx,), (previous > correct).to(torch.int32), accumulate=True)
        ever_learned.index_put_((idx,), ever_learned.index_select(0, idx) | correct)
        self.full_stat("presentations").index_put_(
            (idx,), torch.ones_like(idx, dtype=torch.int32), accumulate=True)
        last_correct.index_put_((idx,), correct)
        if tie_break is not None:
            self.full_stat("tie_break_scores").index_put_((idx,), tie_break)

    # ----------------------------------------------------------------------------- updates
    def on_epoch(self, epoch: int) -> None:
        """Perform an update if ``epoch`` is a due update epoch (hook of :meth:`set_epoch`).

        Args:
            epoch: The epoch about to start (``>= 0``).
        """
        if (
            epoch > 0
            and epoch % self.update_every == 0
            and self.num_updates < self.max_updates
            and epoch > self._last_update_epoch
        ):
            self._update(epoch)

    def _choose_removal(self, active: torch.Tensor) -> torch.Tensor:
        """The active examples to move to the removed pool, forgetting-ranked."""
        g = self.generator
        # Epoch boundary: work on CPU copies of the statistics (the draws use the CPU generator).
        candidates = active[self.ever_learned.to("cpu")[active]]
        count = min(self.swap_count, int(candidates.numel()))
        # Least significant key first, stable sorts: random order < tie-break score < forgetting count.
        candidates = candidates[torch.randperm(candidates.numel(), generator=g)]
        scores = self.tie_break_scores.to("cpu")[candidates]
        scores = torch.where(torch.isnan(scores), torch.full_like(scores, float("inf")), scores)
        candidates = candidates[torch.sort(scores, stable=True).indices]
        counts = self.forgetting_counts.to("cpu")[candidates]
        candidates = candidates[torch.sort(counts, stable=True).indices]
        return candidates[:count]

    def _update(self, epoch: int) -> None:
        active, pool = self.index_sets()
        to_remove = self._choose_removal(active)
        count = int(to_remove.numel())
        # Restore from the pool as it was before adding the newly removed examples.
        restore = pool[torch.randperm(pool.numel(), generator=self.generator)[:count]]
        mask = self._active_mask.to("cpu", copy=True)
        mask[to_remove] = False
        mask[restore] = True
        self.set_active_mask(mask)
        self.num_updates += 1
        self._last_update_epoch = epoch
        self.history.append({"epoch": int(epoch), "removed": count, "restored": int(restore.numel())})
        self._reset_statistics()

    def _reset_statistics(self) -> None:
        # last_correct is kept: consecutive presentations may straddle the update
        self.full_stat("forgetting_counts").zero_()
        self.full_stat("ever_learned").zero_()
        self.full_stat("presentations").zero_()
        self.full_stat("tie_break_scores").fill_(float("nan"))

    # ----------------------------------------------------------------------------- state
    def config(self) -> dict[str, Any]:
        """The resolved sizes, schedule and seed that a loaded state must match.

        Returns:
            ``{"num_examples", "remove_count", "swap_count", "update_every", "max_updates", "seed"}``.
        """
        return {
            "num_examples": self.num_examples,
            "remove_count": self.remove_count,
            "swap_count": self.swap_count,
            "update_every": self.update_every,
            "max_updates": self.max_updates,
            "seed": self.seed,
        }

    def extra_state(self) -> dict[str, Any]:
        """The update counters for :meth:`state_dict`.

        Returns:
            ``{"num_updates": int, "last_update_epoch": int, "history": list[dict]}``.
        """
        return {
            "num_updates": int(self.num_updates),
            "last_update_epoch": int(self._last_update_epoch),
            "history": [dict(h) for h in self.history],
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the update counters saved by :meth:`extra_state`.

        Args:
            state: The dictionary passed to :meth:`load_state_dict`.
        """
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
        device: Device of the active mask and the statistics (None: the CPU).

    Raises:
        ValueError: As :class:`ForgettingSelector`.
    """

    def _choose_removal(self, active: torch.Tensor) -> torch.Tensor:
        perm = torch.randperm(active.numel(), generator=self.generator)
        return active[perm[: self.swap_count]]
