"""Building a run's model (timm, patched for tri-level training) and counting its FLOPs."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from .config import TrainConfig

__all__ = ["build_data", "first_examples", "build_model", "build_criterion", "measured_flops", "patch_side"]


def first_examples(dataset: Dataset, n: Optional[int], what: str = "val-subset", of: str = "validation set") -> Dataset:
    """The first ``n`` items of ``dataset`` (all of it for None).

    Raises:
        ValueError: If ``n`` exceeds the dataset (named as ``what``, the set as ``of``).
    """
    if n is None:
        return dataset
    if n > len(dataset):  # type: ignore[arg-type]
        raise ValueError(f"{what} {n} is larger than the {of} ({len(dataset)} examples)")  # type: ignore[arg-type]
    return Subset(dataset, range(n))


def build_data(config: TrainConfig) -> Tuple[Dataset, Optional[Dataset], Dataset, Any]:
    """The run's training set (augmented), validation split (``val_split``) and test set.

    ``val_subset`` cuts the per-epoch evaluation set to its first N examples: the validation split,
    or the test set when there is no split (a split's test set is evaluated once, whole).

    Returns:
        ``(train, val, test, info)`` as :func:`trilevel.data.build_splits` gives them (``val`` None
        without ``val_split``).

    Raises:
        ValueError, FileNotFoundError: As :func:`trilevel.data.build_splits`, or a
            ``val_subset`` larger than an evaluation set.
    """
    from ..data import build_splits

    train, val, test, info = build_splits(
        config.dataset, config.data_dir, train_subset=config.train_subset, img_size=config.img_size,
        aug=config.aug, in_chans=config.in_chans, bad_images=config.bad_images,
        canvas_size=config.canvas_size, clutter_fragments=config.clutter_fragments, val_split=config.val_split,
        classes=config.classes,
    )
    if val is not None:
        val = first_examples(val, config.val_subset)
    # the test set is evaluated once, at the end: cut only when it is also the per-epoch set (no split)
    return train, val, test if val is not None else first_examples(test, config.val_subset, of="test set"), info


def build_model(config: TrainConfig, num_classes: int, in_chans: int, img_size: int,
                initial_weights: bool = True) -> nn.Module:
    """Create the timm model of ``config`` and check that it can be patched (unless ``dense``).

    The weights are random, or with ``init_from``/``pretrained`` loaded through timm
    (:func:`trilevel.training.pretrained.create_from_weights`: position embeddings resampled,
    input channels adapted, the classifier re-initialised on a class-count mismatch).

    Args:
        config: The run configuration (model name, architecture overrides, drop-path,
            tri-level settings).
        num_classes: Classifier outputs.
        in_chans: Input channels.
        img_size: Input side in pixels.
        initial_weights: Load ``init_from``/``pretrained`` weights; False when a checkpoint's weights
            replace them anyway (resume, evaluation), so the file need not be there any more.

    Returns:
        The stock model on the CPU (a tri-level run patches it once, in :class:`trilevel.TriLevel`).

    Raises:
        ValueError: If ``img_size`` is not a multiple of the patch size, or tri-level training
            is asked of a model that is not a timm ``VisionTransformer``, or timm rejects the
            architecture overrides, or the weights of ``init_from`` do not fit the architecture.
        FileNotFoundError: ``init_from`` does not exist.
        OSError: ``pretrained`` and timm's hub cannot be reached.
    """
    import timm

    kwargs: Dict[str, Any] = dict(
        pretrained=False, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
        drop_path_rate=config.drop_path,
    )
    kwargs.update({k: v for k, v in config.model_kwargs().items() if k not in ("img_size", "in_chans")})
    if config.dense and config.patch_drop:  # the PatchDropout peer; a tri-level run installs it after resolving
        kwargs["patch_drop_rate"] = config.patch_drop
    if config.resolution_start < 1.0:  # the resolution curriculum: position embeddings resampled per size
        kwargs["dynamic_img_size"] = True
    if config.embed_dim is not None and config.num_heads is not None and config.embed_dim % config.num_heads:
        # timm would fail later with an opaque reshape error
        raise ValueError(f"embed-dim ({config.embed_dim}) must be divisible by num-heads ({config.num_heads})")
    def create(kw: Dict[str, Any]) -> nn.Module:
        if not initial_weights or (config.init_from is None and not config.pretrained):
            return timm.create_model(config.model, **kw)
        from .pretrained import create_from_weights  # timm's loader; the report is logged there

        loaded = create_from_weights(config.model, kw, config.init_from, config.pretrained)[0]
        if config.reset_head:  # a new task with as many classes: a new head, initialised as timm initialises one
            loaded.reset_classifier(kw["num_classes"])
            head = loaded.get_classifier()
            if isinstance(head, nn.Linear):
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)
            logging.getLogger("trilevel.training").info("classifier re-initialised (--reset-head)")
        return loaded

    try:
        try:
            model = create(kwargs)
        except TypeError as e:
            # Size-agnostic models (CNNs) take no img_size; fine for a dense run that did not set it.
            if not (config.dense and config.img_size is None and "img_size" in str(e)):
                raise
            kwargs.pop("img_size")
            model = create(kwargs)
    except (TypeError, AssertionError) as e:  # timm checks sizes with assert (e.g. dim % num_heads)
        hint = "" if config.dense or isinstance(e, AssertionError) else (
            "; tri-level training needs a timm VisionTransformer (vit_*, deit_*), Eva (eva02_*) or SwinTransformer "
            "(swin_*), use --dense for other models"
        )
        raise ValueError(f"timm could not build {config.model!r} with {kwargs}: {e or type(e).__name__}{hint}") from e
    pe = getattr(model, "patch_embed", None)
    patch = getattr(pe, "patch_size", None)
    if patch is not None:
        ph, pw = patch if isinstance(patch, (tuple, list)) else (patch, patch)
        if img_size % ph or img_size % pw:
            divisors = [d for d in range(2, img_size + 1) if img_size % d == 0 and d <= 32]
            raise ValueError(
                f"img-size {img_size} is not a multiple of the patch size {ph}x{pw} of {config.model}; "
                f"pass --patch-size one of {divisors} or --img-size a multiple of {ph}"
            )
    if config.tri_level:  # checked here; patched once, by trilevel.TriLevel
        from ..models import family_of

        try:
            family_of(model).check(model)
        except TypeError as e:
            raise ValueError(
                f"model {config.model!r} cannot be trained tri-level ({e}); use a timm VisionTransformer "
                f"(vit_*, deit_*), Eva (eva02_*) or SwinTransformer (swin_*), or --dense"
            ) from e
    return model


def patch_side(model: nn.Module) -> int:
    """The side of the model's patches in pixels, as its family gives it (``ModelFamily.patch_size``).

    A model of no registered family (a dense run of, e.g., a CNN) gets timm's ``patch_embed.patch_size``,
    or 1 without one (:func:`trilevel.models.registry.timm_patch_size`).
    """
    from ..models import find_family, unwrap_model
    from ..models.registry import timm_patch_size

    base = unwrap_model(model)
    family = find_family(base)
    return timm_patch_size(base) if family is None else family.patch_size(base)


def measured_flops(model: nn.Module, in_chans: int, img_size: int, device: torch.device) -> float:
    """Forward FLOPs of one image counted by ``torch.utils.flop_counter`` (eval mode, no grad).

    Used for dense runs of models that :func:`trilevel.forward_flops` does not model (e.g. CNNs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def build_criterion(config: TrainConfig, num_classes: int) -> Tuple[Optional[Any], Callable]:
    """The batch mixer and the loss of the recipe (DeiT's, through timm).

    Returns:
        ``(mixup, criterion)``: with ``mixup``/``cutmix`` > 0, timm's ``Mixup`` (label smoothing
        folded into its soft targets) and ``SoftTargetCrossEntropy``; else None and
        ``LabelSmoothingCrossEntropy`` (``smoothing`` > 0) or plain cross-entropy.
    """
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    return None, nn.CrossEntropyLoss()
