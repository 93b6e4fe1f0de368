"""Micro-benchmark of :meth:`ForgettingSelector.record`, the per-step cost of example-level selection.

The example level of Kong et al., "Peeling the Onion: Hierarchical Reduction of Data Redundancy for
Efficient Vision Transformer Training", AAAI 2023 (example-level sparsity) records every training
batch; this times one ``record`` call on CPU statistics of ImageNet-1k size (1,281,167 examples).
"""

from __future__ import annotations

import statistics
import time

import torch

from ..example_selection.forgetting import ForgettingSelector
from ..example_selection.validation import check_int

__all__ = ["benchmark_record"]


def benchmark_record(
    num_examples: int = 1_281_167, batch_size: int = 256, repeats: int = 200, num_threads: int | None = None
) -> dict:
    """Time :meth:`ForgettingSelector.record` on the CPU (ImageNet-1k sized statistics by default).

    Uses random ``(batch_size, 1000)`` CPU logits, hard targets and distinct random indices from a
    private generator, so the figure includes judging correctness on the CPU (on a GPU run that part
    is done on the device).

    Args:
        num_examples: Training-set size.
        batch_size: Examples per ``record`` call.
        repeats: Timed calls (after 10 warm-up calls).
        num_threads: If given, ``torch.set_num_threads(num_threads)`` for the measurement (restored
            afterwards); 1 gives stable figures on a busy machine.

    Returns:
        ``{"median_us", "p90_us", "min_us", "num_examples", "batch_size", "repeats", "threads"}``,
        times in microseconds per call.

    Raises:
        ValueError: If an argument is not a positive integer.
    """
    check_int("num_examples", num_examples, 1)
    check_int("batch_size", batch_size, 1)
    check_int("repeats", repeats, 1)
    if batch_size > num_examples:
        raise ValueError(f"batch_size must be at most num_examples={num_examples}, got {batch_size}")
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(check_int("num_threads", num_threads, 1))
    try:
        g = torch.Generator().manual_seed(0)
        selector = ForgettingSelector(num_examples, seed=0)
        num_classes = 1000
        batches = []
        for _ in range(8):
            idx = torch.randperm(num_examples, generator=g)[:batch_size]
            logits = torch.randn(batch_size, num_classes, generator=g)
            targets = torch.randint(num_classes, (batch_size,), generator=g)
            batches.append((idx, logits, targets))
        for i in range(10):
            selector.record(*batches[i % len(batches)])
        times = []
        for i in range(repeats):
            batch = batches[i % len(batches)]
            start = time.perf_counter()
            selector.record(*batch)
            times.append((time.perf_counter() - start) * 1e6)
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    times.sort()
    return {
        "median_us": statistics.median(times),
        "p90_us": times[min(len(times) - 1, int(0.9 * len(times)))],
        "min_us": times[0],
        "num_examples": num_examples,
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": threads,
    }
