"""Cross-rank gathering of one batch's observations for the example selectors.

Under ``torch.distributed`` every rank all-gathers the observations of every other rank, so that all
ranks hold identical, global statistics and therefore make identical example-level decisions (Kong
et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient Vision
Transformer Training", AAAI 2023, method section, example-level sparsity). The authors' released
code seeds each rank differently and never combines the ranks' statistics; here they are combined.
Uses ``torch.distributed.all_gather`` only (https://pytorch.org/docs/stable/distributed.html).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

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


def gather_batch(
    indices: torch.Tensor,
    status: torch.Tensor,
    loss: torch.Tensor | None,
    tie_break: torch.Tensor | None,
    logits_device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """All-gather one batch's observations from every rank (rank order), as CPU tensors.

    Two collectives per batch: the per-rank sizes/flags, then the rows padded to the largest batch.
    Rows are packed as float64 (exact for indices below 2**53). Requires an initialised default
    process group; every rank must call it the same number of times (batch sizes may differ, also 0).

    Args:
        indices: ``(B,)`` integer example indices of this rank's batch, any device.
        status: ``(B,)`` uint8 per-example status (1 correct, 0 incorrect, 2 label out of range).
        loss: Optional ``(B,)`` per-example loss.
        tie_break: Optional ``(B,)`` per-example tie-break score.
        logits_device: The device of the logits (picks the communication device).

    Returns:
        ``(indices int64, status uint8, loss float32 | None, tie_break float32 | None)``, CPU tensors of
        the global batch, ranks concatenated in rank order.

    Raises:
        ValueError: If ``loss`` or ``tie_break`` is given on some ranks but not on others.
    """
    device = collective_device(logits_device)
    world = dist.get_world_size()
    batch = int(indices.shape[0])
    has_loss, has_tb = loss is not None, tie_break is not None
    meta = torch.tensor([batch, int(has_loss), int(has_tb)], dtype=torch.int64, device=device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    metas_cpu = torch.stack(metas).cpu()
    for col, name in ((1, "loss"), (2, "tie_break")):
        if not bool((metas_cpu[:, col] == metas_cpu[0, col]).all()):
            raise ValueError(
                f"{name} must be given on every rank or on none (per rank: {metas_cpu[:, col].tolist()})"
            )
    sizes = metas_cpu[:, 0].tolist()
    max_batch = max(sizes)
    columns = [indices.detach().to(device, torch.float64), status.to(device, torch.float64)]
    if has_loss:
        columns.append(loss.detach().to(device, torch.float64))
    if has_tb:
        columns.append(tie_break.detach().to(device, torch.float64))
    width = len(columns)
    padded = torch.zeros(max_batch, width, dtype=torch.float64, device=device)
    if batch:
        padded[:batch] = torch.stack(columns, dim=1)
    if max_batch == 0:
        rows = padded.cpu()
    else:
        outs = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(outs, padded)
        rows = torch.cat([out[:n] for out, n in zip(outs, sizes)]).cpu()
    idx = rows[:, 0].to(torch.int64)
    status_cpu = rows[:, 1].to(torch.uint8)
    col = 2
    loss_cpu = tb_cpu = None
    if has_loss:
        loss_cpu = rows[:, col].to(torch.float32)
        col += 1
    if has_tb:
        tb_cpu = rows[:, col].to(torch.float32)
    return idx, status_cpu, loss_cpu, tb_cpu
