"""What the end-to-end tests share: the Fashion-MNIST skip, a tiny run's settings, the command line in process."""

from __future__ import annotations

from pathlib import Path

import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (scripts/setup.sh installs it)
FMNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
HAS_FMNIST = all((FMNIST / f).is_file() for f in FMNIST_FILES)
needs_fmnist = pytest.mark.skipif(
    not HAS_FMNIST,
    reason=f"Fashion-MNIST not installed in {FMNIST} (scripts/setup.sh: sudo apt-get install dataset-fashion-mnist)",
)

# A tiny run (with the subset sizes, epochs and schedules each file adds): a 4-block, 32-wide ViT on
# 7x7 patches of Fashion-MNIST, on the CPU, with the paper's settings the tests were written for.
TINY_RUN = dict(
    model="vit_tiny_patch16_224", embed_dim=32, depth=4, num_heads=2, patch_size=7, dataset="fashion-mnist",
    batch_size=32, workers=0, device="cpu", seed=0, example_update_every=1, preset="paper",
)
# The same model and loader as ``trilevel train`` flags (the preset left to each file).
TINY_RUN_FLAGS = [
    "--model", "vit_tiny_patch16_224", "--embed-dim", "32", "--depth", "4", "--num-heads", "2", "--patch-size", "7",
    "--batch-size", "32", "--workers", "0", "--device", "cpu", "--example-update-every", "1",
]


def exit_status(argv: list[str]) -> int:
    """The exit status of ``trilevel ARGV`` run in process (returned, or raised by the parser)."""
    from trilevel import cli

    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code
