"""Option types and checks shared by the configuration dataclasses and the command line.

The configuration dataclasses (:class:`trilevel.algorithm.TriLevelConfig`,
:class:`trilevel.training.TrainConfig`) are the one source of every option: the command line
(:mod:`trilevel.cli`, the only place that imports tyro) is generated from their fields. The type
aliases below name the few value kinds that are not plain numbers (``none``, comma-separated
block indices, fractions such as ``1/30``); the parsers read them from text (the command line and
YAML strings); the ``check_*`` functions validate a value where it enters and raise
``ValueError`` naming the option (as its flag), the value and what is allowed.
:func:`check_ratio` and :func:`check_block_indices` are the one check of a keep ratio and of a list
of block indices, for the configurations and the library functions alike (the latter name the
argument as the caller spelled it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "flag",
    "parse_none",
    "parse_fraction",
    "parse_block_list",
    "parse_update_every",
    "parse_float_list",
    "parse_int_list",
    "OptionalInt",
    "OptionalFloat",
    "Fraction",
    "OptionalFraction",
    "BlockList",
    "UpdateEvery",
    "check_int",
    "check_float",
    "check_choice",
    "check_bool",
    "check_path",
    "check_ratio",
    "check_block_indices",
]

_NONE_WORDS = ("none", "null", "")


def flag(name: str) -> str:
    """The option's spelling on the command line and in messages: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


# --------------------------------------------------------------------------------------------------
# text -> value (used by tyro, and by the YAML loader for strings)
# --------------------------------------------------------------------------------------------------


def parse_none(text: str) -> bool:
    """Whether ``text`` means "no value" (``none``, ``null`` or empty, any case)."""
    return text.strip().lower() in _NONE_WORDS


def parse_fraction(text: str) -> float:
    """A float, also written as a fraction such as ``1/30``.

    Raises:
        ValueError: If ``text`` is neither.
    """
    text = text.strip()
    if "/" in text:
        num, _, den = text.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction such as 1/30, got {text!r}") from None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def parse_block_list(text: str) -> Optional[List[int]]:
    """``"3,6,9"`` -> ``[3, 6, 9]``; ``none``/``default`` -> None (the default blocks).

    Raises:
        ValueError: If an entry is not an integer.
    """
    t = text.strip().lower()
    if t in (*_NONE_WORDS, "default"):
        return None
    try:
        return [int(p) for p in t.split(",")]
    except ValueError:
        raise ValueError(
            f"expected comma-separated block indices such as 3,6,9 (or 'none' for the default), got {text!r}"
        ) from None


def parse_update_every(text: str) -> Union[int, float]:
    """A whole number of epochs (``3``) or a fraction of the run (``0.1``).

    Raises:
        ValueError: If ``text`` is not a number.
    """
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise ValueError(
            f"expected a number of epochs (e.g. 3) or a fraction of the run (e.g. 0.1), got {text!r}"
        ) from None


def _parse_list(text: str, conv: Callable[[str], Any], what: str) -> list:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        return [conv(p) for p in parts]
    except ValueError:
        raise ValueError(f"expected comma-separated {what}, got {text!r}") from None


def parse_float_list(text: str) -> List[float]:
    """``"0.5,1,1.5"`` -> ``[0.5, 1.0, 1.5]``.

    Raises:
        ValueError: If an entry is not a number.
    """
    return _parse_list(text, parse_fraction, "numbers (e.g. 0.5,1,1.5)")


def parse_int_list(text: str) -> List[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (decimal integers only).

    Raises:
        ValueError: If an entry is not a non-negative decimal integer.
    """

    def conv(p: str) -> int:
        if not p.isdecimal():
            raise ValueError(p)
        return int(p)

    return _parse_list(text, conv, "non-negative integers (e.g. 0,1,2)")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


OptionalInt = Optional[int]
"""An integer or ``none``."""
OptionalFloat = Optional[float]
"""A number (also a fraction such as ``1/30``) or ``none``."""
Fraction = float
"""A number, also written as a fraction such as ``1/30``."""
OptionalFraction = Optional[float]
"""A number (or fraction such as ``1/30``) or ``none``."""
BlockList = Optional[List[int]]
"""Comma-separated 0-based block indices (``3,6,9``), or ``none`` for the default blocks."""
UpdateEvery = Union[int, float]
"""A whole number of epochs or a fraction of the run in (0, 1)."""


# --------------------------------------------------------------------------------------------------
# checks (raise ValueError naming the option as its flag)
# --------------------------------------------------------------------------------------------------


def check_int(name: str, value: Any, minimum: int, optional: bool = False) -> Optional[int]:
    """``value`` as an int ``>= minimum`` (None allowed when ``optional``).

    Raises:
        ValueError: Naming the option, the value and the allowed range.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or none" if optional else ""
        raise ValueError(f"{flag(name)} must be an integer >= {minimum}{extra}, got {value!r}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Optional[float]:
    """``value`` as a float in the interval ``[low, high]`` (ends open as asked; NaN never allowed).

    Raises:
        ValueError: Naming the option, the value and the interval.
    """
    if value is None and optional:
        return None
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if not _number(value) or math.isnan(float(value)):
        raise ValueError(f"{flag(name)} must be a number in {interval}, got {value!r}")
    fv = float(value)
    if fv < low or fv > high or (low_open and fv == low) or (high_open and fv == high):
        raise ValueError(f"{flag(name)} must be in {interval}, got {value!r}")
    return fv


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``.

    Raises:
        ValueError: Naming the option, the value and the allowed values.
    """
    if value not in allowed:
        raise ValueError(f"{flag(name)} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool.

    Raises:
        ValueError: Naming the option and the value.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{flag(name)} must be true or false, got {value!r}")
    return value


def check_path(name: str, value: Any, optional: bool = True) -> Optional[str]:
    """``value`` as a path string (None allowed when ``optional``).

    Raises:
        ValueError: If it is not a non-empty path.
    """
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"{flag(name)} must be a path, got {value!r}")
    return os.fspath(value)


def check_ratio(name: str, value: Any, optional: bool = False) -> Optional[float]:
    """``value`` as a float in (0, 1]: a keep ratio (tokens, windows, attention connections, a schedule's target).

    Args:
        name: The option as the message names it: a flag (``keep-ratio``) for a configuration
            field, the argument (``keep_ratio``) for a library call.
        value: The value to check.
        optional: Whether None is allowed (and returned).

    Raises:
        ValueError: Naming ``name`` and the value: not a real number (bools and strings
            included), NaN, or outside (0, 1].
    """
    if value is None and optional:
        return None
    if not (_number(value) and 0.0 < float(value) <= 1.0):  # the comparison also rejects NaN
        raise ValueError(f"{name} must be a number in (0, 1]{' or none' if optional else ''}, got {value!r}")
    return float(value)


def check_block_indices(name: str, value: Any, depth: Optional[int] = None) -> Optional[Tuple[int, ...]]:
    """``value`` as sorted, distinct 0-based block indices (None passes through: the default blocks).

    Args:
        name: The option as the message names it (``prune-layers`` for a configuration field,
            ``prune_layers`` for a library call).
        value: None, a sequence of ints, or text such as ``3,6,9`` (``none``/``default``: None).
        depth: The model's number of blocks (indices must be below it); None: not known yet.

    Returns:
        The indices as a sorted tuple, or None.

    Raises:
        ValueError: Naming ``name`` and the value: text that is not a list of integers, not a
            sequence, empty, a non-integer entry, an index outside ``[0, depth - 1]`` (or below 0),
            or a repeated index.
    """
    if isinstance(value, str):
        try:
            value = parse_block_list(value)
        except ValueError:
            raise ValueError(f"{name} must be comma-separated block indices such as 3,6,9 (or 'none' for the "
                             f"default blocks), got {value!r}") from None
    if value is None:
        return None
    if isinstance(value, bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a sequence of block indices (or none for the default blocks), got {value!r}")
    value = list(value)
    if not value:
        raise ValueError(f"{name} must name at least one block (got an empty sequence; none: the default blocks); "
                         "use keep_ratio=1.0, attn_keep_ratio=1.0 for a dense model")
    top = "" if depth is None else f", {depth - 1}"
    for i in value:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{name} entries must be block indices (ints), got {i!r} in {value!r}")
        if i < 0 or (depth is not None and i >= depth):
            where = f"the model's blocks [0{top}]" if depth is not None else "the blocks (indices are >= 0)"
            raise ValueError(f"{name} index {i} is outside {where}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} has duplicate indices: {value!r}")
    return tuple(sorted(int(i) for i in value))
