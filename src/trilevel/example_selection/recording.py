"""What :meth:`ExampleSelector.record <trilevel.example_selection.ExampleSelector.record>` does before a
selector sees a batch: validation, top-1 correctness, cross-rank gathering and the dummy slot.

The example level of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for
Efficient Vision Transformer Training", AAAI 2023 (arXiv 2211.10801), method section, example-level
sparsity, records every training batch. :func:`prepare_batch` turns one batch into the rows a
selector's ``observe`` hook reads, without a host-device synchronisation: range errors are exact
for tensors in host memory and queued with ``torch._assert_async`` for tensors on an accelerator
(:func:`index_error`, :func:`assert_indices`), and rows that must not count are sent to the dummy
slot ``num_examples``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from .collective import gather_batch
from .syncfree import host_any, host_bounds, is_host, move, redirect
from .validation import check_batch

__all__ = ["assert_indices", "index_error", "prepare_batch"]

# Per-example status codes of a recorded batch (uint8).
_INCORRECT, _CORRECT, _BAD_LABEL, _IGNORED = 0, 1, 2, 3


def index_error(idx: torch.Tensor, num_examples: int) -> str | None:
    """The out-of-range message for host-resident example indices (exact).

    Args:
        idx: Example indices, any device.
        num_examples: Size of the training set: valid indices lie in ``[0, num_examples)``.

    Returns:
        The message naming (up to 8 of) the bad values, or None if all fit or ``idx`` is not in
        host memory (then see :func:`assert_indices`).
    """
    if not is_host(idx) or idx.numel() == 0:
        return None
    lo, hi = host_bounds(idx)
    if lo >= 0 and hi < num_examples:
        return None
    bad = idx[(idx < 0) | (idx >= num_examples)]  # error path only
    return (f"indices must lie in [0, num_examples) = [0, {num_examples}), got "
            f"{bad[:8].tolist()} out of range")


def assert_indices(idx: torch.Tensor, num_examples: int) -> None:
    """Queue the range check of accelerator-resident example indices (``torch._assert_async``, no sync).

    Args:
        idx: Example indices; nothing is queued for a tensor in host memory (see :func:`index_error`).
        num_examples: Size of the training set: valid indices lie in ``[0, num_examples)``.
    """
    if not is_host(idx):
        ok = ((idx >= 0) & (idx < num_examples)).all()
        torch._assert_async(ok, f"indices must lie in [0, num_examples) = [0, {num_examples}), "
                                f"got values out of range")


def _label_error(status: torch.Tensor, label: torch.Tensor, num_classes: int) -> str | None:
    """The out-of-range message for host-resident ``status`` (exact), None if fine or not on the host."""
    if not is_host(status) or not host_any(status == _BAD_LABEL):
        return None
    local_bad = label[(label < 0) | (label >= num_classes)].to("cpu")  # error path only
    detail = local_bad[:8].tolist() if local_bad.numel() else "values on another rank"
    return f"targets must be class indices in [0, K) = [0, {num_classes}), got {detail} out of range"


def _assert_on_device(idx: torch.Tensor, status: torch.Tensor, num_examples: int, num_classes: int) -> None:
    """Queue the range checks of accelerator-resident tensors (``torch._assert_async``, no sync)."""
    assert_indices(idx, num_examples)
    if not is_host(status):
        torch._assert_async((status != _BAD_LABEL).all(),
                            f"targets must be class indices in [0, K) = [0, {num_classes}), "
                            f"got values out of range")


def _status(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None,
            num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(status uint8, label int64)`` per row, on the logits' device."""
    # Correctness on the logits' device: the label's logit attains the maximum of the logits
    # (amax + gather: ~10x cheaper than argmax on the CPU; an exact tie for the maximum counts as
    # correct). For soft (mixup/cutmix, label-smoothed) targets the label is argmax(targets), the
    # class with the larger mixing weight (the first such class on an exact tie). The status code
    # also carries an ignored batch (3) and a label outside [0, K) (2, an error), so that rows
    # keep a fixed shape and nothing is read on the host.
    scores = logits.detach()
    device = scores.device
    label = targets.detach().argmax(dim=1) if targets.dim() == 2 else targets.detach()
    label = move(label, device, torch.int64)
    safe = label.clamp(0, num_classes - 1)
    picked = scores.gather(1, safe.unsqueeze(1)).squeeze(1)
    status = (picked >= scores.amax(dim=1)).to(torch.uint8)
    if valid is not None:
        status = torch.where(move(valid, device), status, _IGNORED)
    status = torch.where(safe == label, status, _BAD_LABEL)
    return status, label


def prepare_batch(indices: torch.Tensor | Sequence[int], logits: torch.Tensor, targets: torch.Tensor,
                  loss: torch.Tensor | None, tie_break: torch.Tensor | None, valid: torch.Tensor | None, *,
                  num_examples: int, device: torch.device, needs_loss_of: str | None) -> tuple:
    """Validate one batch, judge correctness, gather across ranks, redirect what must not count.

    Args:
        indices, logits, targets, loss, tie_break, valid: As given to
            :meth:`~trilevel.example_selection.ExampleSelector.record`.
        num_examples: Size of the training set (the dummy slot's index).
        device: The selector's device: where the returned tensors go.
        needs_loss_of: The selector's class name when it needs ``loss`` (named in the error if
            missing), else None.

    Returns:
        Tensors on ``device`` covering the whole (global) batch: ``(scatter targets int64 in
        [0, num_examples], correct bool, loss float32|None, tie_break float32|None)``.

    Raises:
        ValueError, TypeError: As :meth:`~trilevel.example_selection.ExampleSelector.record`.
    """
    indices, num_classes = check_batch(indices, logits, targets, loss, tie_break, valid, needs_loss_of)
    status, label = _status(logits, targets, valid, num_classes)

    # Range checks: exact for tensors in host memory (raised before any state changes), queued
    # with torch._assert_async for tensors on an accelerator.
    error = index_error(indices, num_examples) or _label_error(status, label, num_classes)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Gather first, so that the other ranks see the bad rows too and raise as well.
        idx, status, loss, tie_break = gather_batch(indices, status, loss, tie_break, logits.device)
        error = error or index_error(idx, num_examples) or _label_error(status, label, num_classes)
    else:
        idx = indices
    if error is not None:
        raise ValueError(error)
    _assert_on_device(idx, status, num_examples, num_classes)

    checked = is_host(idx)  # its range was checked exactly above
    idx = move(idx.detach(), device, torch.int64)
    status = move(status, device)
    loss_s = None if loss is None else move(loss.detach(), device, torch.float32)
    tb_s = None if tie_break is None else move(tie_break.detach(), device, torch.float32)
    recorded = status <= _CORRECT
    if not checked:  # until the asynchronous assert fires, send out-of-range rows to the dummy slot
        recorded = recorded & (idx >= 0) & (idx < num_examples)
    return redirect(idx, recorded, num_examples), status == _CORRECT, loss_s, tb_s
