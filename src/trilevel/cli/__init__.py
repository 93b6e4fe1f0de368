"""The ``trilevel`` command line (also ``python -m trilevel``): one module per command.

Each command's options are a dataclass turned into flags by tyro; ``trilevel train``'s are the
fields of :class:`trilevel.training.TrainConfig`, so the library, the YAML files and the flags
share one definition of every option.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from .. import __version__
from .common import EXIT_OK, usage_error

__all__ = ["COMMANDS", "main"]

#: Command name -> (module, one-line help).
COMMANDS = {
    "train": ("train", "train a ViT (tri-level or --dense)"),
    "eval": ("eval", "evaluate a checkpoint"),
    "bench": ("bench", "benchmarks: trilevel bench speed | trilevel bench train"),
    "visualize": ("visualize", "picture of the patches kept at each pruning stage"),
    "report": ("report", "PNG plots of a run folder"),
}


def _usage() -> str:
    lines = ["usage: trilevel {" + ",".join(COMMANDS) + "} [options]   (trilevel COMMAND --help)", "",
             "Tri-level (example, token, attention) data reduction for faster ViT training (Kong et al., AAAI 2023).",
             "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``trilevel`` console script; returns the exit status.

    Exit status: 0 on success, 1 on a failed run (non-finite loss), 2 on bad options,
    configuration, data or checkpoint, 143 after SIGTERM (checkpoint saved).
    """
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return EXIT_OK if argv else usage_error("trilevel", "name a command")
    if argv[0] == "--version":
        print(f"trilevel {__version__}")
        return EXIT_OK
    command = argv[0]
    if command not in COMMANDS:
        return usage_error("trilevel", f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    module = importlib.import_module(f".{COMMANDS[command][0]}", __name__)
    return module.main(argv[1:])
