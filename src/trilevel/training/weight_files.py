"""Reading weight files: the state dict a ``.pth``/``.bin``/``.safetensors`` file or a checkpoint holds.

:func:`read_state_dict` takes the weights out of a plain state dict, a ``.safetensors`` file, a
timm or DeiT checkpoint (``"state_dict"``/``"model"``), or a trilevel training checkpoint (its EMA
weights too), on the CPU and with the wrapper prefixes of ``torch.compile``, DDP and ModelEmaV3
removed; it is read with ``weights_only=True``. Loading them into a timm model is
:mod:`trilevel.training.pretrained`.
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple

import torch

__all__ = ["read_state_dict", "short_list"]

# Keys of the nested checkpoint layouts, in the order timm's load_state_dict prefers them.
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
_WEIGHT_KEYS = ("state_dict", "model")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP and ModelEmaV3 wrappers


def short_list(keys: Sequence[str], limit: int = 12) -> str:
    """``keys`` joined by commas, the first ``limit`` of them and a count of the rest (for messages).

    Args:
        keys: Names (e.g. state dict keys).
        limit: How many to name.

    Returns:
        ``"a, b, c"``, or ``"a, b, ... 5 more"`` past ``limit``.
    """
    shown = ", ".join(keys[:limit])
    return shown + (f", ... {len(keys) - limit} more" if len(keys) > limit else "")


# --------------------------------------------------------------------------------------------
# Reading weight files


def _strip_wrappers(sd: Mapping[str, Any]) -> Dict[str, Any]:
    """Keys without ``module.`` / ``_orig_mod.`` prefixes (as timm's ``clean_state_dict``)."""
    out = {}
    for k, v in sd.items():
        while k.startswith(_WRAPPER_PREFIXES):
            k = k[len("module."):] if k.startswith("module.") else k[len("_orig_mod."):]
        out[k] = v
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` as timm loads (``argparse.Namespace`` allowed), memory-mapped if possible."""
    import contextlib

    kwargs: Dict[str, Any] = dict(map_location="cpu", weights_only=True)
    allow = getattr(torch.serialization, "safe_globals", None)
    with allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext():
        try:
            return torch.load(path, mmap=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):  # the legacy (non-zip) format cannot be mapped
            return torch.load(path, **kwargs)


def read_state_dict(path: str | os.PathLike, ema: bool = False) -> Tuple[Dict[str, torch.Tensor], bool]:
    """The state dict a weights file holds, on the CPU, with wrapper prefixes removed.

    Accepted: a plain state dict (``.pth``/``.pt``/``.bin``, ``torch.save(model.state_dict())``),
    a ``.safetensors`` file, a dict holding it under ``"state_dict"`` or ``"model"`` (timm and
    DeiT checkpoints), and a trilevel training checkpoint (``"model"``, and the EMA weights under
    ``"ema"`` with ModelEmaV3's ``module.`` prefix). Files are read with ``weights_only=True``: no
    code in them runs.

    Args:
        path: The file.
        ema: Take the EMA weights (``"ema"``, ``"state_dict_ema"`` or ``"model_ema"``) of a
            checkpoint that has them.

    Returns:
        ``(state dict, nested)``: ``nested`` is True when the weights were taken out of a
        checkpoint dict (or had prefixes removed), False for a plain state dict file.

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a file.
        ValueError: If the file cannot be read as weights (corrupt, not a checkpoint, objects that
            ``weights_only`` loading refuses, no tensors), or ``ema`` is asked of a file without
            EMA weights. The message names the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise FileNotFoundError(errno.ENOENT, f"pretrained weights file {what} (--init-from)", str(path))
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            obj: Any = safetensors.torch.load_file(str(path), device="cpu")
        else:
            obj = _torch_load(path)
    except OSError:
        raise
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"cannot read the weights file {str(path)!r}: not a PyTorch checkpoint, or it holds objects that "
            f"weights_only loading refuses ({(str(exc).splitlines() or [''])[0][:200]}); save the weights alone "
            "(torch.save(model.state_dict(), path) or safetensors)"
        ) from exc
    except Exception as exc:  # truncated or foreign data: RuntimeError, EOFError, SafetensorError...
        raise ValueError(
            f"cannot read the weights file {str(path)!r}: not a checkpoint or state dict, or truncated "
            f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})"
        ) from exc

    nested = False
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        keys = _EMA_KEYS if ema else _WEIGHT_KEYS
        found = next((k for k in keys if _is_state_dict(obj.get(k))), None)
        if found is None and ema:
            raise ValueError(
                f"{str(path)!r} holds no EMA weights (looked for {', '.join(_EMA_KEYS)}); drop the EMA option "
                "to use its trained weights"
            )
        if found is None:
            tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
            found_text = (f"a dict with keys {short_list([str(k) for k in obj], 8)}" if obj else "an empty dict") + (
                f" ({len(tensors)} tensors among other values)" if tensors else "")
            raise ValueError(
                f"{str(path)!r} is not a state dict or a checkpoint holding one: expected tensors by name, or a "
                f"dict with one under {' or '.join(repr(k) for k in _WEIGHT_KEYS)}; found {found_text}"
            )
        obj, nested = obj[found], True
    elif ema:
        raise ValueError(f"{str(path)!r} is a plain state dict: it holds no EMA weights")
    if not _is_state_dict(obj):
        raise ValueError(
            f"{str(path)!r} is not a state dict or a checkpoint holding one: it holds a {type(obj).__name__}"
            + (" without tensors" if isinstance(obj, Mapping) else "")
        )
    sd = _strip_wrappers(obj)
    return sd, nested or list(sd) != list(obj)
