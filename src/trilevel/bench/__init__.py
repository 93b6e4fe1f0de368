"""Benchmarks: training-step throughput (:mod:`~trilevel.bench.speed`) and full training runs
(:mod:`~trilevel.bench.train`), as run by ``trilevel bench speed`` and ``trilevel bench train``
for ``docs/benchmarks.md``.
"""

from .speed import DEFAULT_SPEED_CONFIGS, SpeedConfig, SpeedResult, benchmark_speed, format_speed_table, speed_for_model
from .train import (
    TRAIN_PRESETS, format_seeds_table, format_train_table, parse_seeds, run_train_bench, run_train_bench_seeds,
    summarize_seeds,
)

__all__ = [
    "DEFAULT_SPEED_CONFIGS", "SpeedConfig", "SpeedResult", "benchmark_speed", "format_speed_table", "speed_for_model",
    "TRAIN_PRESETS", "format_seeds_table", "format_train_table", "parse_seeds", "run_train_bench",
    "run_train_bench_seeds", "summarize_seeds",
]
