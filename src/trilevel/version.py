"""Which code trained a run: the git commit of the source tree (``code_version``), for every summary.

A figure is only comparable with another made by the same code. Every run's summary records the
commit its code came from, and ``trilevel bench train`` reuses a stored run only when that commit
is the current one.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["code_version"]


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The version of the code that runs, as one string.

    Returns:
        ``"git:<40-hex commit>"`` when the package is imported from a git checkout (an editable
        install), with ``"+dirty"`` appended when files under the checkout's ``src/`` differ from
        that commit (uncommitted code changes); else ``"trilevel <package version>"`` (an installed
        wheel). Computed once per process.
    """
    root = Path(__file__).resolve().parents[2]  # src/trilevel/version.py -> the checkout
    try:
        head = _git(root, "rev-parse", "HEAD")
        if head.returncode == 0 and (root / "src" / "trilevel").is_dir():
            dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "src").stdout.strip()
            return f"git:{head.stdout.strip()}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version
        return f"trilevel {version('trilevel')}"
    except PackageNotFoundError:
        return "trilevel (unknown version)"
