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

__all__ = ["check_fraction", "check_int", "check_seed", "is_int", "is_number"]


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
