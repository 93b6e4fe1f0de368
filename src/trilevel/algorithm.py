"""The three levels as one object that a training loop calls at fixed events.

:class:`TriLevel` owns what the method adds to an ordinary training loop: the in-place patch of a
timm model of any registered family (token and attention levels, :mod:`trilevel.models`), the
keep-ratio schedules (:mod:`trilevel.schedules`), the example selector and its sampler
(:mod:`trilevel.example_selection`). A loop calls it at three events, in the shape of composer's
``Algorithm`` (MosaicML composer): :meth:`TriLevel.on_epoch_start`, :meth:`TriLevel.on_step` and
:meth:`TriLevel.after_forward`; :meth:`TriLevel.state_dict` makes a resume exact. ``trilevel
train`` runs the same object, so the few lines in the README are what the command does. Its
settings are :class:`~trilevel.settings.TriLevelConfig`, resolved once for the model
(:func:`~trilevel.settings.resolve_config`).

Source: Kong et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient
Vision Transformer Training", AAAI 2023 (arXiv 2211.10801); the example level's forgetting events
follow Toneva et al., ICLR 2019; the loss-based selector follows InfoBatch (Qin et al., ICLR 2024).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .models import family_of, patch, set_keep_ratios, unwrap_model
from .options import check_int
from .settings import (
    ALLOWED_SELECTORS, PRESETS, ResolvedTriLevel, TriLevelConfig, build_selector, layered_settings, preset_settings,
    resolve_config, resolve_patch_drop, resolve_speedup, schedule_flops,
)

__all__ = ["ALLOWED_SELECTORS", "PRESETS", "install_patch_dropout", "TriLevelConfig", "ResolvedTriLevel", "TriLevel", "build_selector",
           "compile_model", "preset_settings", "resolve_config", "resolve_speedup", "schedule_flops"]


def compile_model(model: nn.Module, buckets: int = 8, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` a patched model so that a whole run recompiles at most once per keep-ratio bucket.

    The keep ratios are plain float attributes of the blocks, set between steps (never inside the
    forward); ``torch.compile`` guards on them, so each distinct ratio is one graph. With bucketed
    schedules (``ratio_buckets``, 8 by default) a run uses at most ``buckets`` ratios per mode, so
    the recompile limit is raised to cover training and evaluation graphs of every bucket. Per-call
    records (``get_trilevel_info``) are not kept while compiled.

    Args:
        model: The patched model (or a DDP wrapper of it).
        buckets: The schedule's buckets (0: continuous, a new graph per ratio; not recommended).
        **compile_kwargs: Passed to ``torch.compile`` (e.g. ``backend="eager"`` in tests, ``mode``).

    Returns:
        The compiled module (it shares parameters with ``model``).
    """
    import torch._dynamo

    needed = 2 * max(buckets, 1) + 4  # train + eval graphs per bucket, and the dense ones
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), needed))
    return torch.compile(model, **compile_kwargs)


def install_patch_dropout(model: nn.Module, prob: Optional[float]) -> None:
    """Give ``model`` timm's ``PatchDropout`` with drop fraction ``prob`` (what ``patch_drop_rate`` builds).

    A random ``prob`` fraction of the patch tokens (never the ``num_prefix_tokens`` prefix tokens)
    is dropped at the input of every training forward (Liu et al., "PatchDropout", WACV 2023); the
    model keeps its parameters, so its checkpoints still load into stock timm, and in ``eval()``
    it is the identity. Nothing changes when ``prob`` is 0 (a model built with its own
    ``patch_drop_rate`` keeps it) or the model already has one with this ``prob``.

    Args:
        model: A model of a family with a PatchDropout slot (ViT/DeiT, EVA-02:
            :meth:`~trilevel.models.ModelFamily.patch_dropout_class`); wrappers (DDP) are fine.
        prob: Fraction of patch tokens dropped, in [0, 1); None: 0.3 where the model has the slot,
            else nothing (:func:`trilevel.settings.resolve_patch_drop`).

    Raises:
        ValueError: ``prob`` > 0 for a model without a ``patch_drop`` slot (e.g. Swin).
    """
    base = unwrap_model(model)
    prob = resolve_patch_drop(base, prob)
    have = float(getattr(getattr(base, "patch_drop", None), "prob", 0.0) or 0.0)
    if prob == 0 or have == prob:
        return
    layer = family_of(base).patch_dropout_class()  # the class timm's own constructor builds
    base.patch_drop = layer(prob, num_prefix_tokens=base.num_prefix_tokens)


class TriLevel:
    """Tri-level data reduction for one training run: patch, schedules, example selector, sampler.

    Construction resolves the settings for the model once (:func:`trilevel.settings.resolve_config`:
    the family's defaults, ``speedup``, schedules, evaluation ratios), patches ``model`` in place
    (:func:`trilevel.patch`, any registered family: ViT/DeiT, EVA-02, Swin) and, unless
    ``selector="none"``, builds the example selector for ``num_examples`` examples and a DDP-aware
    :class:`~trilevel.example_selection.ActiveSubsetSampler` over its active set. A training loop
    then calls::

        tl.on_epoch_start(epoch)                          # applies a due selector update
        tl.on_step(progress)                              # keep ratios for this step
        weights = tl.after_forward(indices, logits, targets[, per_example_loss])

    Args:
        model: A timm model of a registered family (DDP-wrapped is fine), patched in place.
        num_examples: Training-set size; required unless ``selector="none"``.
        epochs: Epochs of the run (the selector's fractions of the run are resolved against it).
        config: Settings: a :class:`TriLevelConfig` (None: its defaults, the ``fast-patchdrop`` preset's;
            ``preset="paper"`` gives the paper's), or a :class:`~trilevel.settings.ResolvedTriLevel`
            already resolved for this model (then no ``settings`` may be given).
        seed: Seed of the selector and of the sampler's per-epoch order; the same on every rank.
        num_replicas: Ranks sharing the data; None: the ``torch.distributed`` world size, else 1.
        rank: This rank; None: the distributed rank, else 0.
        **settings: Fields of :class:`TriLevelConfig` overriding ``config``.

    Attributes:
        resolved (ResolvedTriLevel): The settings resolved for the model.
        config (TriLevelConfig): The settings (``resolved.config``).
        model (nn.Module): The patched model.
        selector: The example selector, or None.
        sampler: The sampler to give the training ``DataLoader``, or None without a selector
            (then use any sampler, e.g. ``DistributedSampler``).
        keep_ratio (float): Token keep ratio set by the last :meth:`on_step` (1.0 before).
        attn_keep_ratio (float): Attention keep ratio set by the last :meth:`on_step` (1.0 before).

    Raises:
        TypeError: If ``model`` is of no registered family.
        ValueError: For an invalid setting (named), or a selector without ``num_examples``.

    Source: Kong et al., AAAI 2023 (all three levels); the event shape follows composer's
    ``Algorithm``.
    """

    def __init__(
        self,
        model: nn.Module,
        num_examples: Optional[int] = None,
        *,
        epochs: int,
        config: Optional[TriLevelConfig] = None,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        **settings: Any,
    ) -> None:
        from .example_selection import ActiveSubsetSampler

        if isinstance(config, ResolvedTriLevel):
            if settings:
                raise ValueError(f"pass settings in the config or as keywords, not both (got {sorted(settings)})")
            resolved = config
        else:
            base = config if config is not None else TriLevelConfig()
            unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TriLevelConfig)})
            if unknown:
                raise ValueError(f"unknown TriLevel settings {unknown}; allowed: the fields of TriLevelConfig")
            if settings:
                base = TriLevelConfig(**layered_settings(settings, base=base.trilevel_settings()))
            resolved = resolve_config(base, model)
        self.epochs = check_int("epochs", epochs, 1)
        self.resolved = resolved
        self.config = cfg = resolved.config
        self.model = patch(model, resolved.patch)  # the one place a model is patched
        install_patch_dropout(model, cfg.patch_drop)
        self.token_schedule = resolved.token_schedule
        self.attn_schedule = resolved.attn_schedule
        self.selector = None
        self.sampler = None
        if cfg.selector != "none":
            if num_examples is None:
                raise ValueError(
                    f"num_examples (the training-set size) is required for selector={cfg.selector!r}; "
                    f"pass selector='none' to turn the example level off"
                )
            self.selector = build_selector(cfg, num_examples, self.epochs, seed)
            self.sampler = ActiveSubsetSampler(
                self.selector, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
            )
        self.keep_ratio = 1.0
        self.attn_keep_ratio = 1.0

    # ------------------------------------------------------------------------------ events
    def on_epoch_start(self, epoch: int, progress: Optional[float] = None) -> None:
        """Start ``epoch`` (0-based): apply a due selector update and fix the epoch's data order.

        Args:
            epoch: The epoch about to start.
            progress: Fraction of the run done when it starts; None: ``epoch / epochs``. In the
                dense tail (``progress >= 1 - dense_tail``) the sampler draws every example.

        Raises:
            ValueError: If ``epoch`` is not an integer >= 0.
        """
        if progress is None:
            progress = epoch / self.epochs
        tail = self.config.dense_tail > 0.0 and progress >= 1.0 - self.config.dense_tail
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, all_examples=tail)
        elif self.selector is not None:
            self.selector.set_epoch(epoch)

    def on_step(self, progress: float) -> Tuple[float, float]:
        """Set the scheduled keep ratios for the step at ``progress`` (fraction of the run done).

        Args:
            progress: Fraction of all training iterations done before this step, in [0, 1]
                (:func:`trilevel.run_progress`).

        Returns:
            ``(keep_ratio, attn_keep_ratio)`` now in effect.

        Raises:
            ValueError: If ``progress`` is not a finite number.
        """
        self.keep_ratio = self.token_schedule(progress)
        self.attn_keep_ratio = self.attn_schedule(progress)
        set_keep_ratios(self.model, self.keep_ratio, self.attn_keep_ratio)
        return self.keep_ratio, self.attn_keep_ratio

    @property
    def reweights_loss(self) -> bool:
        """Whether :meth:`after_forward` needs the per-example loss and returns loss weights (InfoBatch)."""
        return bool(getattr(self.selector, "needs_loss", False))

    def after_forward(
        self,
        indices: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        loss: Optional[torch.Tensor] = None,
    ) -> Optional[torch.Tensor]:
        """Record a batch's outcomes for the example level; return per-example loss weights.

        Call it for every batch that updates the model (not for a skipped, non-finite one); under
        DDP on every rank (the outcomes are all-gathered).

        Args:
            indices: ``(B,)`` example indices (from :class:`~trilevel.example_selection.IndexedDataset`).
            logits: ``(B, K)`` model outputs (detached or not).
            targets: ``(B,)`` class indices or ``(B, K)`` soft (mixup/cutmix) targets.
            loss: ``(B,)`` per-example loss (``reduction="none"``); required when
                :attr:`reweights_loss`, else ignored.

        Returns:
            ``(B,)`` weights on ``loss``'s device and dtype when :attr:`reweights_loss` (back-propagate
            ``(loss * weights).mean()``), else None (use the ordinary mean loss).

        Raises:
            ValueError: Shape or index errors (see the selector's ``record``), or a missing
                ``loss`` when it is required.
        """
        if self.selector is None:
            return None
        if not self.reweights_loss:
            self.selector.record(indices, logits, targets)
            return None
        if loss is None:
            raise ValueError("after_forward needs loss, the (B,) per-example loss, for the loss-based selector")
        self.selector.record(indices, logits, targets, loss=loss)
        w = self.selector.batch_weights(indices)  # on the selector's device: no host read
        return w.to(device=loss.device, dtype=loss.dtype, non_blocking=loss.device.type != "cpu")

    # ------------------------------------------------------------------------------ queries
    @property
    def num_active(self) -> Optional[int]:
        """Size of the current active set (None without a selector)."""
        return None if self.selector is None else self.selector.num_active

    def eval_ratios(self) -> Tuple[float, float]:
        """``(keep_ratio, attn_keep_ratio)`` to evaluate with (see :meth:`TriLevelConfig.eval_ratios`)."""
        return self.resolved.eval_ratios

    def digest(self) -> Optional[str]:
        """The selector's state digest (equal across ranks and resumes), or None without a selector."""
        return None if self.selector is None else self.selector.digest()

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly: settings, selector and sampler state.

        Loadable with ``torch.load(weights_only=True)`` (tensors and plain values only).
        """
        return {
            "config": self.config.trilevel_settings(),
            "epochs": self.epochs,
            "selector": None if self.selector is None else self.selector.state_dict(),
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output of an algorithm with the same settings.

        Raises:
            ValueError: If the settings differ (the first differing option is named) or the
                selector state does not fit.
        """
        if not isinstance(state, Mapping) or "config" not in state:
            raise ValueError("state must be a dict from TriLevel.state_dict()")
        mine = self.config.trilevel_settings()
        for key, value in mine.items():
            if state["config"].get(key) != value:
                raise ValueError(
                    f"TriLevel state was saved with {key}={state['config'].get(key)!r}, this one has {value!r}"
                )
        if state.get("epochs") != self.epochs:
            raise ValueError(f"TriLevel state was saved for {state.get('epochs')!r} epochs, this run has {self.epochs}")
        if self.selector is not None:
            self.selector.load_state_dict(state["selector"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
