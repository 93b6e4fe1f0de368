"""Cross-rank gathering of one batch's observations for the example selectors.

Under ``torch.distributed`` every rank all-gathers the observations of every other rank, so that all
ranks hold identical, global statistics and therefore make identical example-level decisions (Kong
et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient Vision
Transformer Training", AAAI 2023, method section, example-level sparsity). The authors' released
code seeds each rank differently and never combines the ranks' statistics; here they are combined.

One collective of a fixed-shape tensor per batch, and no host read: every rank must pass the same
batch size (``torch.utils.data.DistributedSampler`` and
:class:`~trilevel.example_selection.ActiveSubsetSampler` pad every rank to the same length, so the
batches of a ``DataLoader`` over them have equal sizes on all ranks) and the same optional columns.
Uses ``torch.distributed.all_gather_single`` (``all_gather_into_tensor`` on older PyTorch;
https://pytorch.org/docs/stable/distributed.html).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .syncfree import move

__all__ = ["collective_device", "gather_batch"]


def collective_device(logits_device: torch.device) -> torch.device:
    """The device that the default process group's backend communicates on.

    Args:
        logits_device: The device of the batch's logits.

    Returns:
        The CPU for gloo and MPI (and a ``cpu:`` entry of a multi-backend string), the current CUDA
        device for NCCL when the logits are not on CUDA, else ``logits_device``.
    """
    backend = str(dist.get_backend())
    if backend in ("gloo", "mpi") or "cpu:" in backend:
        return torch.device("cpu")
    if backend == "nccl" and logits_device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return logits_device


def _all_gather_single(output: torch.Tensor, tensor: torch.Tensor) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, tensor)


def gather_batch(
    indices: torch.Tensor,
    status: torch.Tensor,
    loss: torch.Tensor | None,
    tie_break: torch.Tensor | None,
    logits_device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """All-gather one batch's observations from every rank (rank order), without a host read.

    The rows ``(index, status[, loss][, tie_break])`` are packed into one ``(B, width)`` float64
    tensor (exact for indices below ``2**53``) on :func:`collective_device` and gathered with one
    collective into ``(world * B, width)``: rank 0's rows first. With NCCL this stays on the GPU
    (copies from the CPU are non-blocking); with gloo/MPI, data on an accelerator must first be
    copied to the CPU, which synchronises (prefer NCCL for GPU training).

    Requirements (not checked, to stay sync-free; a violation makes the collective fail or hang):
    every rank calls it the same number of times, with the same batch size ``B`` each time (0 is
    allowed if it is 0 on every rank: then nothing is communicated), and with ``loss`` given on all
    ranks or on none, and likewise ``tie_break``.

    Args:
        indices: ``(B,)`` integer example indices of this rank's batch, any device.
        status: ``(B,)`` uint8 per-example status (see :meth:`ExampleSelector.record`), any device.
        loss: Optional ``(B,)`` per-example loss.
        tie_break: Optional ``(B,)`` per-example tie-break score.
        logits_device: The device of the logits (picks the communication device).

    Returns:
        ``(indices int64, status uint8, loss float32 | None, tie_break float32 | None)``, each of
        shape ``(world * B,)`` on :func:`collective_device`, ranks concatenated in rank order.
    """
    device = collective_device(logits_device)
    world = dist.get_world_size()
    batch = int(indices.shape[0])
    columns = [move(indices.detach(), device, torch.float64), move(status, device, torch.float64)]
    if loss is not None:
        columns.append(move(loss.detach(), device, torch.float64))
    if tie_break is not None:
        columns.append(move(tie_break.detach(), device, torch.float64))
    width = len(columns)
    rows = torch.stack(columns, dim=1)
    if batch == 0:
        out = rows  # (0, width) on every rank: nothing to exchange
    else:
        out = torch.empty(world * batch, width, dtype=torch.float64, device=device)
        _all_gather_single(out, rows)
    idx = out[:, 0].to(torch.int64)
    status_all = out[:, 1].to(torch.uint8)
    col = 2
    loss_all = tb_all = None
    if loss is not None:
        loss_all = out[:, col].to(torch.float32)
        col += 1
    if tie_break is not None:
        tb_all = out[:, col].to(torch.float32)
    return idx, status_all, loss_all, tb_all
