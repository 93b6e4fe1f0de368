"""Argument checks shared by the example-selection modules.

They raise a ``ValueError`` that names the argument, the allowed values and the value given; they
never ``assert`` on user input and never clamp silently. Used by the selectors of Kong et al.,
"Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer
Training", AAAI 2023 (example-level sparsity) and by their sampler and benchmark.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = ["check_batch", "check_fraction", "check_int", "check_seed", "is_int", "is_number"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (any ``numbers.Integral``), excluding ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (any ``numbers.Real``), excluding ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int) -> int:
    """Validate an integer argument.

    Args:
        name: The argument's name, used in the error message.
        value: The value given.
        minimum: The smallest allowed value.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: If ``value`` is not an integer (``bool`` is not one) or is below ``minimum``.
    """
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction(name: str, value: Any) -> float:
    """Validate a fraction argument in ``[0, 1)``.

    Args:
        name: The argument's name, used in the error message.
        value: The value given.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: If ``value`` is not a real number in ``[0, 1)`` (NaN and ``bool`` are not).
    """
    if not is_number(value) or not (0.0 <= float(value) < 1.0) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def check_seed(value: Any) -> int:
    """Validate a seed argument.

    Args:
        value: The seed given.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: If ``value`` is not an integer (``bool`` is not one).
    """
    if not is_int(value):
        raise ValueError(f"seed must be an integer, got {value!r}")
    return int(value)


def check_batch(
    indices: Any,
    logits: Any,
    targets: Any,
    loss: Any,
    tie_break: Any,
    valid: Any,
    requires_loss: str | None,
) -> tuple[torch.Tensor, int]:
    """Validate the shapes, dtypes and types of one :meth:`ExampleSelector.record` call (metadata only).

    Reads no tensor values, so it never synchronises with a device.

    Args:
        indices: ``(B,)`` integer indices (a tensor or a sequence of ints).
        logits: ``(B, K)`` tensor, ``K >= 1``.
        targets: ``(B,)`` integer tensor or ``(B, K)`` tensor.
        loss: None or a ``(B,)`` tensor.
        tie_break: None or a ``(B,)`` tensor.
        valid: None or a 0-d bool tensor.
        requires_loss: The selector's class name when it needs ``loss`` (named in the error), else None.

    Returns:
        ``(indices as a tensor, K)``.

    Raises:
        ValueError: A wrong shape, dtype or batch size, float 1-D targets, a missing ``loss``, or a
            ``valid`` that is not a 0-d bool tensor.
        TypeError: ``logits``, ``targets``, ``loss``, ``tie_break`` or ``valid`` not a tensor.
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
    if requires_loss is not None and loss is None:
        raise ValueError(f"{requires_loss}.record requires loss, a per-example loss of shape (B,)")
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
    if valid is not None:
        if not isinstance(valid, torch.Tensor):
            raise TypeError(f"valid must be a 0-d bool torch.Tensor or None, got {type(valid).__name__}")
        if valid.dim() != 0 or valid.dtype != torch.bool:
            raise ValueError(
                f"valid must be a 0-d bool tensor, got dtype {valid.dtype} and shape {tuple(valid.shape)}"
            )
    return indices, num_classes
