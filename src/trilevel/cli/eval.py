"""``trilevel eval``: the test-set top-1 and forward throughput of a run's checkpoint, pruned or not.

``--keep-ratio R`` evaluates at one token keep ratio (a dense run's stock model is then pruned with
the token level only, as EViT, Liang et al., ICLR 2022, evaluates a densely fine-tuned model);
``--keep-ratios 1.0,0.7,0.5,0.3`` sweeps several in one process and prints a table (``--json``: a
list of results).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..options import OptionalInt, parse_fraction
from ..training.config import DeviceName
from .common import EXIT_OK, CheckpointOptions, log_outputs, parse_command, usage_error

__all__ = ["EvalOptions", "main", "parse_keep_ratios", "format_result", "format_sweep"]


@dataclass
class EvalOptions(CheckpointOptions):
    """Options of ``trilevel eval`` (and those of :class:`~trilevel.cli.common.CheckpointOptions`).

    Attributes:
        val_subset: Evaluate on the first N validation examples only; none: all.
        batch_size: Batch size; none: twice the training batch size.
        device: Device.
        workers: DataLoader worker processes.
        ema: Evaluate the EMA weights.
        json: Print the result as JSON (with --keep-ratios: a list, one result per ratio).
        keep_ratios: Comma-separated token keep ratios to sweep, e.g. 1.0,0.7,0.5,0.3: one result
            per ratio on the same batches, each timed after a warm-up batch (not with --keep-ratio);
            none: one evaluation.
        plot: With --keep-ratios: also draw top-1 against images/s, a point per ratio, to this .png (EViT's accuracy-throughput picture).
    """

    val_subset: OptionalInt = None
    batch_size: OptionalInt = None
    device: DeviceName = "auto"
    workers: int = 0
    ema: bool = False
    json: bool = False
    keep_ratios: Optional[str] = None
    plot: Optional[str] = None


def parse_keep_ratios(text: str) -> List[float]:
    """``"1.0,0.7,0.5"`` -> ``[1.0, 0.7, 0.5]`` (fractions such as ``1/2`` allowed).

    Args:
        text: Comma-separated keep ratios.

    Returns:
        The ratios, in order (each checked in (0, 1] by the evaluation).

    Raises:
        ValueError: If an entry is not a number, or there is none.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"--keep-ratios needs comma-separated keep ratios in (0, 1], e.g. 1.0,0.7,0.5; got {text!r}")
    try:
        return [parse_fraction(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"--keep-ratios: {e}") from None


def _throughput(result: Dict[str, Any]) -> str:
    ips = result["images_per_s"]
    return "n/a" if ips is None or ips != ips else f"{ips:.1f}"


def format_result(result: Dict[str, Any]) -> str:
    """The text of one ``trilevel eval`` result: top-1 and what was evaluated, then the throughput.

    Args:
        result: A :func:`~trilevel.training.evaluate_checkpoint` result.

    Returns:
        Two lines (no trailing newline).
    """
    gflops = result.get("gflops_per_image")
    pruned = " (dense run pruned at evaluation: token level only)" if result.get("dense_run") and \
        result["keep_ratio"] < 1.0 else ""
    return (
        f"top-1 {result['top1']:.2f}% on {result['images']} {result['dataset']} test images "
        f"({result['model']}{', EMA' if result['ema'] else ''}, epoch {result['epoch']}, "
        f"keep_ratio {result['keep_ratio']:g}, attn_keep_ratio {result['attn_keep_ratio']:g}){pruned}\n"
        f"throughput {_throughput(result)} images/s ({result['seconds']:.3f} s of forward passes, "
        f"{result['cpu_seconds']:.3f} CPU s)" + ("" if gflops is None else f", {gflops:.4g} forward GFLOPs/image")
    )


def format_sweep(results: Sequence[Dict[str, Any]]) -> str:
    """The text of a ``--keep-ratios`` sweep: a heading line and a table, one row per keep ratio.

    Columns: keep ratio, top-1 (%), images/s, images/s relative to keep ratio 1.0 (``-`` without
    a 1.0 entry), forward GFLOPs per image (``-`` when not countable).

    Args:
        results: :func:`~trilevel.training.evaluation.evaluate_checkpoint_sweep` results.

    Returns:
        The lines (no trailing newline).
    """
    first = results[0]
    dense = " (dense run: pruned at evaluation with the token level only below 1.0)" if first.get("dense_run") else ""
    lines = [
        f"{first['model']}{', EMA' if first['ema'] else ''}, epoch {first['epoch']}, {first['images']} "
        f"{first['dataset']} test images, attn_keep_ratio {first['attn_keep_ratio']:g}{dense}",
        f"{'keep ratio':>10}  {'top-1 %':>7}  {'images/s':>10}  {'vs 1.0':>7}  {'GFLOPs/image':>12}",
    ]
    for r in results:
        rel = r.get("relative_images_per_s")
        gflops = r.get("gflops_per_image")
        lines.append(
            f"{r['keep_ratio']:>10g}  {r['top1']:>7.2f}  {_throughput(r):>10}  "
            f"{'-' if rel is None else f'{rel:.2f}x':>7}  {'-' if gflops is None else f'{gflops:.4g}':>12}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Run ``trilevel eval``; returns 0, or 2 on a bad option (a keep ratio outside (0, 1] included),
    checkpoint or data."""
    from ..training.evaluation import evaluate_checkpoint, evaluate_checkpoint_sweep

    opts = parse_command(EvalOptions, argv, "trilevel eval",
                         "Rebuild the model stored in a trilevel checkpoint and print its validation top-1 and "
                         "forward throughput (images/s), at one token keep ratio or a sweep (--keep-ratios).")
    common = dict(attn_keep_ratio=opts.attn_keep_ratio, data_dir=opts.data_dir, batch_size=opts.batch_size,
                  device=opts.device, workers=opts.workers, ema=opts.ema, val_subset=opts.val_subset)
    try:
        if opts.keep_ratios is not None:
            if opts.keep_ratio is not None:
                raise ValueError("give --keep-ratio or --keep-ratios, not both")
            result: Any = evaluate_checkpoint_sweep(opts.checkpoint, parse_keep_ratios(opts.keep_ratios), **common)
            if opts.plot is not None and int(os.environ.get("RANK", "0")) == 0:
                from ..viz import plot_accuracy_vs_throughput

                plot_accuracy_vs_throughput({result[0]["model"]: result}, opts.plot)
        elif opts.plot is not None:
            raise ValueError("--plot draws a sweep: pass it with --keep-ratios")
        else:
            result = evaluate_checkpoint(opts.checkpoint, keep_ratio=opts.keep_ratio, **common)
    except (ValueError, OSError) as e:
        return usage_error("trilevel eval", str(e))
    if int(os.environ.get("RANK", "0")) == 0:
        if opts.json:
            print(json.dumps(result))
        elif isinstance(result, list):
            print(format_sweep(result))
        else:
            print(format_result(result))
    if opts.plot is not None:
        log_outputs(os.path.dirname(os.path.abspath(opts.plot)), [os.path.basename(opts.plot)])
    else:
        log_outputs(None)
    return EXIT_OK
