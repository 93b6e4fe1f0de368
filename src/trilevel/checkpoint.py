"""Atomic checkpoint files and random-number-generator state capture.

``save_checkpoint`` writes through a temporary file in the target folder, flushes and
``fsync``s it, renames it onto the target with ``os.replace`` (atomic on POSIX and Windows) and
``fsync``s the folder, so a crash or an error leaves either the previous checkpoint or the new
one at ``path``, never a partial file. ``load_checkpoint`` loads with ``weights_only=True`` (no
arbitrary code runs from a checkpoint file) and checks the format marker that
``save_checkpoint`` adds.

On disk a checkpoint is ``torch.save`` of ``{"_trilevel_format": "trilevel-checkpoint",
"_trilevel_version": 1, **state}``. The two marker keys are namespaced so that callers keep every
ordinary key (a ``"format"`` or ``"version"`` entry of their own included); they are reserved and
removed again by ``load_checkpoint``, so ``load_checkpoint(save_checkpoint(state, p)) == state``.

Everything in ``state`` must be loadable by ``torch.load(weights_only=True)`` (tensors,
``dict``/``list``/``tuple``/``set``, ``int``, ``float``, ``bool``, ``str``, ``bytes``, ``None``,
``torch.Size``/``dtype``/``device``, or types registered with
``torch.serialization.add_safe_globals``); ``save_checkpoint`` checks this up front instead of
letting a resume fail later.

``capture_rng_state`` / ``restore_rng_state`` cover the torch CPU generator, every CUDA device's
generator (when CUDA is available), Python's ``random`` and NumPy's global ``np.random``; the
captured state is made of tensors, ints, floats, strings and lists only, so it can be stored in
a checkpoint.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import pickle
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_write_text",
    "atomic_write_json",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "FORMAT_KEY",
    "VERSION_KEY",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "trilevel-checkpoint"
"""Value of the :data:`FORMAT_KEY` entry that marks a file written by :func:`save_checkpoint`."""

CHECKPOINT_VERSION = 1
"""Version of the on-disk layout written by :func:`save_checkpoint` (:data:`VERSION_KEY`)."""

FORMAT_KEY = "_trilevel_format"
"""Reserved top-level key holding :data:`CHECKPOINT_FORMAT` in a checkpoint file."""

VERSION_KEY = "_trilevel_version"
"""Reserved top-level key holding :data:`CHECKPOINT_VERSION` in a checkpoint file."""

_RESERVED_KEYS = (FORMAT_KEY, VERSION_KEY)

# Leaf types torch.load(weights_only=True) accepts without extra registration.
_SAFE_LEAF_TYPES = (
    type(None), bool, int, float, complex, str, bytes,
    torch.Size, torch.dtype, torch.device, torch.Tensor, torch.nn.Parameter,
)
_SAFE_CONTAINER_TYPES = (dict, collections.OrderedDict, list, tuple, set)

_RNG_KEYS = ("torch", "cuda", "python", "numpy")


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used: truncated, corrupt, or not ours.

    The message names the file and the cause.
    """


# --------------------------------------------------------------------------------------------
# Saving


def _check_weights_only_safe(obj: Any, where: str, safe_extra: tuple[type, ...]) -> None:
    """Raises ValueError naming the first value ``torch.load(weights_only=True)`` would refuse."""
    kind = type(obj)
    if kind in _SAFE_LEAF_TYPES or kind in safe_extra:
        return
    if kind in _SAFE_CONTAINER_TYPES:
        if isinstance(obj, dict):
            for key, value in obj.items():
                _check_weights_only_safe(key, f"{where} (key {key!r})", safe_extra)
                _check_weights_only_safe(value, f"{where}[{key!r}]", safe_extra)
        else:
            for i, value in enumerate(obj):
                _check_weights_only_safe(value, f"{where}[{i}]", safe_extra)
        return
    raise ValueError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}, which torch.load(weights_only=True) "
        "cannot load; store tensors, numbers, strings, bytes, None, or dict/list/tuple/set of "
        "them (convert NumPy arrays with torch.from_numpy or .tolist(), objects with their "
        "state_dict()), or register the type with torch.serialization.add_safe_globals"
    )


def _safe_globals() -> tuple[type, ...]:
    extra = []
    for entry in torch.serialization.get_safe_globals():
        obj = entry[0] if isinstance(entry, tuple) else entry  # (obj, "module.name") pairs too
        if isinstance(obj, type):
            extra.append(obj)
    return tuple(extra)


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name == "nt":  # Windows cannot open a directory for fsync; NTFS journals renames.
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Saves ``state`` to ``path`` atomically with ``torch.save``.

    The data go to a temporary file ``.<name>.<random>.tmp`` in the same folder, which is
    flushed, ``fsync``ed and renamed onto ``path`` with ``os.replace``; then the folder is
    ``fsync``ed. If anything fails (including ``KeyboardInterrupt``), the temporary file is
    removed and a previous file at ``path`` is left untouched. The new file gets the usual
    permissions (``0o666`` minus the umask).

    Args:
        state: What to save, e.g. ``{"model": model.state_dict(), "optimizer": ...,
            "epoch": 3, "rng": capture_rng_state()}``. Must be loadable by
            ``torch.load(weights_only=True)`` (see the module docstring). The keys
            ``"_trilevel_format"`` and ``"_trilevel_version"`` are reserved.
        path: Target file. Its folder must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``state`` is not a dict, uses a reserved key, or holds a value that
            ``torch.load(weights_only=True)`` could not load (the message names where).
        FileNotFoundError: If the folder of ``path`` does not exist.
        OSError: If writing, syncing or renaming fails (the previous file stays as it was).
    """
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict, got {type(state).__name__}")
    reserved = [k for k in _RESERVED_KEYS if k in state]
    if reserved:
        raise ValueError(
            f"state uses the reserved key(s) {reserved}; {list(_RESERVED_KEYS)} are added by "
            "save_checkpoint and removed by load_checkpoint"
        )
    _check_weights_only_safe(state, "state", _safe_globals())
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, f"cannot save checkpoint: folder {str(folder)!r} does not exist",
            str(folder),
        )
    payload = {FORMAT_KEY: CHECKPOINT_FORMAT, VERSION_KEY: CHECKPOINT_VERSION, **state}
    _atomic_write(path, lambda f: torch.save(payload, f))
    logger.debug("saved checkpoint %s", path)
    return path


def _atomic_write(path: Path, write) -> None:
    """``write(f)`` into a temporary file next to ``path``, fsync, ``os.replace`` onto ``path``, fsync the folder."""
    folder = path.parent
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # O_EXCL: never clobber anything; mode 0o666 is reduced by the process umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`save_checkpoint` writes a checkpoint.

    A reader sees the old file or the new one, never a truncated one (``summary.json``,
    ``config.yaml`` and the bench's run list are written this way).

    Raises:
        FileNotFoundError: If the folder does not exist.
        OSError: If writing fails (the previous file stays as it was).
    """
    path = Path(path)
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(value, indent=2)``."""
    import json

    return atomic_write_text(path, json.dumps(value, indent=2))


# --------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Loads a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: Checkpoint file.
        map_location: Where tensors go, as for ``torch.load`` (default ``"cpu"``).

    Returns:
        The saved ``state`` dict, without the two reserved marker keys.

    Raises:
        FileNotFoundError: If ``path`` does not exist (or is not a file).
        CheckpointError: If the file is truncated or corrupt, holds objects that
            ``weights_only`` loading refuses, is not a dict with
            ``"_trilevel_format": "trilevel-checkpoint"``, or has a newer ``"_trilevel_version"``
            than this code reads. The
            message names the file and the cause. It is a ``ValueError``.
        OSError: If the file cannot be read (e.g. permissions).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "checkpoint file not found", str(path))
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # corrupt data surfaces as RuntimeError, EOFError, UnpicklingError...
        cause = (str(exc).strip().splitlines() or [""])[0][:300]
        hint = (
            " (it holds objects that weights_only loading refuses: not written by "
            "save_checkpoint?)" if isinstance(exc, pickle.UnpicklingError) else ""
        )
        raise CheckpointError(
            f"cannot load checkpoint {str(path)!r}: truncated, corrupt or foreign file"
            f"{hint}: {type(exc).__name__}: {cause}"
        ) from exc
    if not isinstance(obj, dict) or obj.get(FORMAT_KEY) != CHECKPOINT_FORMAT:
        found = (
            f"a dict with {FORMAT_KEY}={obj.get(FORMAT_KEY)!r}" if isinstance(obj, dict)
            else f"a {type(obj).__name__}"
        )
        raise CheckpointError(
            f"{str(path)!r} is not a trilevel checkpoint: expected a dict with "
            f"{FORMAT_KEY}={CHECKPOINT_FORMAT!r}, found {found}"
        )
    version = obj.get(VERSION_KEY)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint version {version!r}; this trilevel reads versions "
            f"1 to {CHECKPOINT_VERSION}"
        )
    return {k: v for k, v in obj.items() if k not in _RESERVED_KEYS}


# --------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict:
    """Captures the state of every global random number generator training draws from.

    Returns:
        ``{"torch": uint8 tensor, "cuda": list of uint8 tensors (one per device; empty without
        CUDA), "python": {"version": int, "state": int64 tensor (625,), "gauss_next": float or
        None}, "numpy": {"bit_generator": str, "key": int64 tensor (624,), "pos": int,
        "has_gauss": int, "cached_gaussian": float}}``, loadable with ``weights_only=True``.
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # legacy=True gives a tuple for the MT19937 generator
        raise ValueError(
            f"NumPy's global generator is {np_state.get('bit_generator')!r}; only MT19937 "
            "(the default) can be captured"
        )
    np_name, np_key, np_pos, np_has_gauss, np_cached = np_state
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "bit_generator": str(np_name),
            "key": torch.from_numpy(np_key.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
    }


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"RNG state {where} lacks the key {key!r} (not from capture_rng_state?)")
    return mapping[key]


def _byte_tensor(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise ValueError(f"RNG state {where} must be a 1-D uint8 tensor, got {value!r:.80}")
    return value.cpu()


def restore_rng_state(state: dict) -> None:
    """Restores generator states captured by :func:`capture_rng_state`.

    CUDA states are restored for ``min(saved, available)`` devices; a mismatch (e.g. resuming a
    GPU run on a CPU-only machine) is logged as a warning, as the CPU, Python and NumPy streams
    are still restored exactly. Tensors may be on any device (e.g. after ``map_location``).

    Args:
        state: The dict returned by :func:`capture_rng_state` (possibly after a checkpoint
            round trip).

    Raises:
        ValueError: If ``state`` is not such a dict (wrong type, missing or unknown keys,
            malformed entries); the message names the offending entry.
    """
    if not isinstance(state, dict):
        raise ValueError(
            f"RNG state must be a dict from capture_rng_state, got {type(state).__name__}"
        )
    unknown = sorted(map(str, set(state) - set(_RNG_KEYS)))
    if unknown:
        raise ValueError(f"RNG state has unknown key(s) {unknown}; allowed: {list(_RNG_KEYS)}")
    torch_state = _byte_tensor(_require(state, "torch", ""), "['torch']")
    cuda_states = _require(state, "cuda", "")
    if not isinstance(cuda_states, (list, tuple)):
        raise ValueError(
            f"RNG state ['cuda'] must be a list of tensors, got {type(cuda_states).__name__}"
        )
    cuda_states = [_byte_tensor(s, f"['cuda'][{i}]") for i, s in enumerate(cuda_states)]
    py = _require(state, "python", "")
    py_version = _require(py, "version", "['python']")
    py_internal = _require(py, "state", "['python']")
    py_gauss = _require(py, "gauss_next", "['python']")
    npy = _require(state, "numpy", "")
    np_fields = [
        _require(npy, k, "['numpy']")
        for k in ("bit_generator", "key", "pos", "has_gauss", "cached_gaussian")
    ]
    if not isinstance(py_internal, torch.Tensor) or not isinstance(np_fields[1], torch.Tensor):
        raise ValueError("RNG state ['python']['state'] and ['numpy']['key'] must be tensors")

    # Convert everything before touching any generator, so a bad entry changes nothing.
    py_full = (int(py_version), tuple(int(v) for v in py_internal.cpu().tolist()), py_gauss)
    np_full = (
        str(np_fields[0]),
        np_fields[1].cpu().numpy().astype(np.uint32),
        int(np_fields[2]),
        int(np_fields[3]),
        float(np_fields[4]),
    )
    try:  # dry runs on private generators first
        random.Random().setstate(py_full)
        np.random.RandomState().set_state(np_full)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"RNG state ['python'] or ['numpy'] is malformed: {exc!r}") from exc
    random.setstate(py_full)
    np.random.set_state(np_full)
    torch.set_rng_state(torch_state)

    n_available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda_states) != n_available:
        logger.warning(
            "RNG state holds %d CUDA generator(s) but %d device(s) are available; restoring %d",
            len(cuda_states), n_available, min(len(cuda_states), n_available),
        )
    for device, cuda_state in enumerate(cuda_states[:n_available]):
        torch.cuda.set_rng_state(cuda_state, device)
