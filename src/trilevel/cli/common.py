"""What every ``trilevel`` command shares: exit codes, logging, ``-c FILE`` and tyro parsing.

Each command's options are a dataclass; `tyro <https://brentyi.github.io/tyro/>`_ turns its
fields into flags (hyphenated names, types, choices, defaults, help from the ``Attributes:``
docstring). ``-c/--config FILE`` (a YAML file of the same option names) and ``-v/--verbose`` are
read first: the file's values become the defaults that flags override.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Type, TypeVar

from ..options import OptionalFloat

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_SIGTERM",
    "CommonFlags",
    "split_common_flags",
    "setup_logging",
    "parse_options",
    "parse_command",
    "usage_error",
    "run_failed",
    "one_line",
    "log_outputs",
    "CheckpointOptions",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGTERM = 128 + 15

T = TypeVar("T")


class CommonFlags:
    """``-c/--config FILE`` and ``-v/--verbose``, read before the command's own flags.

    Attributes:
        config: The YAML option file, or None.
        verbose: Debug logging.
    """

    def __init__(self, config: Optional[str] = None, verbose: bool = False) -> None:
        self.config = config
        self.verbose = verbose


def split_common_flags(argv: Sequence[str]) -> Tuple[CommonFlags, List[str]]:
    """Take ``-c/--config FILE`` and ``-v/--verbose`` out of ``argv``.

    Returns:
        The common flags and the remaining arguments (in order).

    Raises:
        ValueError: If ``-c/--config`` has no value.
    """
    flags = CommonFlags()
    rest: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-c", "--config"):
            if i + 1 >= len(args):
                raise ValueError(f"{a} needs a YAML file")
            flags.config = args[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            flags.config = a.split("=", 1)[1]
        elif a in ("-v", "--verbose"):
            flags.verbose = True
        else:
            rest.append(a)
        i += 1
    return flags, rest


def setup_logging(verbose: bool) -> None:
    """Log to stderr: INFO on rank 0 (DEBUG with ``verbose``), WARNING on the other ranks."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    fmt = "%(asctime)s %(levelname)s %(message)s" if rank == 0 else f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)


def _text_rules():
    """tyro rules for the option kinds of :mod:`trilevel.options`: ``none``, fractions, block lists.

    The configuration dataclasses use plain type aliases (the library core does not import tyro);
    these rules tell tyro how to read those types from text, with readable metavars.
    """
    from typing import List, Union

    from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec

    from ..options import parse_block_list, parse_fraction, parse_none, parse_update_every

    def fmt(value: Any) -> List[str]:
        if value is None:
            return ["none"]
        if isinstance(value, (list, tuple)):
            return [",".join(str(v) for v in value)]
        return [f"{value:g}" if isinstance(value, float) else str(value)]

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def or_none(conv):
        return lambda text: None if parse_none(text) else conv(text)

    specs = {
        Optional[int]: ("INT|none", or_none(int), lambda v: v is None or isinstance(v, int)),
        Optional[float]: ("FLOAT|none", or_none(parse_fraction), lambda v: v is None or number(v)),
        float: ("FLOAT", parse_fraction, number),
        Union[int, float]: ("E", parse_update_every, number),
        Optional[List[int]]: ("LIST|none", parse_block_list, lambda v: v is None or isinstance(v, (list, tuple))),
    }
    registry = ConstructorRegistry()

    @registry.primitive_rule
    def rule(type_info):
        spec = specs.get(type_info.type)
        if spec is None:
            return None
        metavar, parse, is_instance = spec
        return PrimitiveConstructorSpec(nargs=1, metavar=metavar, instance_from_str=lambda args: parse(args[0]),
                                        is_instance=is_instance, str_from_instance=fmt)

    return registry


def parse_options(cls: Type[T], argv: Sequence[str], prog: str, description: str, default: Any = None) -> T:
    """Parse ``argv`` into ``cls`` with tyro (exits 2 with a message on bad flags).

    Args:
        cls: The options dataclass.
        argv: The command's arguments (common flags already removed).
        prog: Program name for usage lines, e.g. ``trilevel train``.
        description: Help text heading.
        default: An instance whose values are the defaults (e.g. from ``-c FILE``).
    """
    import tyro

    kwargs = {} if default is None else {"default": default}
    return tyro.cli(cls, args=list(argv), prog=prog, description=description, registry=_text_rules(), **kwargs)


def one_line(message: str) -> str:
    """``message`` without a traceback: an error re-raised from a DataLoader worker carries the worker's
    traceback in its message (``Caught X in DataLoader worker process 0. Original Traceback ...``);
    its last line is the original error."""
    lines = [line for line in str(message).strip().splitlines() if line.strip()]
    if len(lines) > 1 and any("Traceback (most recent call last)" in line for line in lines):
        return lines[-1].strip()
    return " ".join(line.strip() for line in lines)


def usage_error(prog: str, message: str) -> int:
    """Print ``<prog>: error: <message>`` (one line) to stderr; returns :data:`EXIT_USAGE` (bad options, data, checkpoint)."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_USAGE


def run_failed(prog: str, error: BaseException) -> int:
    """Report a run that failed while running (one line; the traceback at ``-v``); returns :data:`EXIT_FAILURE`."""
    logging.getLogger("trilevel.cli").debug("details", exc_info=error)
    print(f"{prog}: error: {one_line(str(error))}", file=sys.stderr)
    return EXIT_FAILURE


def log_outputs(folder: Optional[str], names: Optional[Sequence[str]] = None) -> None:
    """Log a command's final line: where its outputs are, e.g. ``outputs in runs/X (summary.json, ...)``.

    Args:
        folder: The folder holding the outputs; None: the command wrote no file (its result is
            printed above).
        names: The entries of ``folder`` to name (folders with a trailing ``/``); None: every
            entry in it, files first, by name.
    """
    log = logging.getLogger("trilevel.cli")
    if folder is None:
        log.info("outputs: none written (the result is printed above)")
        return
    if names is None:
        entries = sorted(os.scandir(folder), key=lambda e: (e.is_dir(), e.name)) if os.path.isdir(folder) else []
        names = [e.name + ("/" if e.is_dir() else "") for e in entries]
    log.info("outputs in %s%s", folder, f" ({', '.join(names)})" if names else "")


def parse_command(cls: Type[T], argv: Sequence[str], prog: str, description: str) -> T:
    """Set up logging from ``-v`` and parse the rest of ``argv`` into ``cls`` (see :func:`parse_options`).

    Raises:
        SystemExit: Status 2 on a bad flag (tyro's message) or a ``-c`` without its file.
    """
    try:
        common, rest = split_common_flags(argv)
    except ValueError as e:
        raise SystemExit(usage_error(prog, str(e))) from None
    setup_logging(common.verbose)
    return parse_options(cls, rest, prog, description)


@dataclass
class CheckpointOptions:
    """Options of the commands that rebuild a run from its checkpoint.

    Attributes:
        checkpoint: checkpoint.pt written by trilevel train.
        keep_ratio: Token keep ratio; none: the run's evaluation ratio.
        attn_keep_ratio: Attention keep ratio; none: the run's evaluation ratio.
        data_dir: Data folder; none: the run's.
    """

    checkpoint: str
    keep_ratio: OptionalFloat = None
    attn_keep_ratio: OptionalFloat = None
    data_dir: Optional[str] = None
