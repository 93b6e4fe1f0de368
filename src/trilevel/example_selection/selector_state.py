"""The saved state of an example selector: its layout, the checks of a state to load, and the digest.

:meth:`ExampleSelector.state_dict <trilevel.example_selection.ExampleSelector.state_dict>` writes
a dictionary of CPU tensors, ints and strings (``torch.load(weights_only=True)``-safe) with the
version :data:`STATE_VERSION`; :func:`check_state` is what
:meth:`~trilevel.example_selection.ExampleSelector.load_state_dict` asks of one before it changes
anything, and :func:`state_digest` the hash two ranks (or a resumed and an uninterrupted run)
compare.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import torch

__all__ = ["STATE_VERSION", "check_state", "state_digest"]

STATE_VERSION = 1
"""Version of the ``state_dict`` layout of the example selectors."""


def check_state(state: Any, kind: str, config: Mapping[str, Any], num_examples: int,
                stats: Mapping[str, torch.Tensor]) -> None:
    """Check that ``state`` can be loaded into a selector, without changing anything.

    Args:
        state: What was passed to ``load_state_dict``.
        kind: The selector's class name.
        config: The selector's configuration (each key must match the state's).
        num_examples: Size of the selector's training set.
        stats: The selector's statistics tensors, by name (shape and dtype to match).

    Raises:
        ValueError: If the state is not a dict, comes from another selector type, another state
            version, a different configuration (the mismatching key is named), or has tensors of
            the wrong size or dtype.
    """
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from state_dict(), got {type(state).__name__}")
    if state.get("kind") != kind:
        raise ValueError(f"state is for {state.get('kind')!r}, cannot load it into {kind}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"state version {state.get('version')!r} is not supported (expected {STATE_VERSION})")
    theirs = state.get("config", {})
    for key, value in config.items():
        if theirs.get(key) != value:
            raise ValueError(f"state was saved with {key}={theirs.get(key)!r} but this selector has {key}={value!r}")
    mask = state["active_mask"]
    if not isinstance(mask, torch.Tensor) or mask.shape != (num_examples,) or mask.dtype != torch.bool:
        raise ValueError(f"state['active_mask'] must be a bool tensor of shape ({num_examples},)")
    saved_stats = state.get("stats")
    if not isinstance(saved_stats, dict):
        raise ValueError("state['stats'] must be a dict of statistics tensors from state_dict()")
    for name, tensor in stats.items():
        saved = saved_stats.get(name)
        if not isinstance(saved, torch.Tensor) or saved.shape != tensor.shape or saved.dtype != tensor.dtype:
            raise ValueError(f"state['stats'][{name!r}] must be a {tensor.dtype} tensor of shape {tuple(tensor.shape)}")
    generator_state = state.get("generator_state")
    if not isinstance(generator_state, torch.Tensor) or generator_state.dtype != torch.uint8:
        raise ValueError("state['generator_state'] must be the uint8 tensor of Generator.get_state()")


def state_digest(active: torch.Tensor, removed: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> str:
    """Short hex SHA-256 over the active set, the removed pool and the statistics tensors (CPU copies).

    Args:
        active: Indices of the active set.
        removed: Indices of the removed pool.
        stats: Statistics tensors by name, hashed in this order (name, dtype, bytes).

    Returns:
        The first 16 hex characters of the SHA-256.
    """
    h = hashlib.sha256()
    for name, tensor in [("active", active), ("removed", removed), *stats.items()]:
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
