"""The suite's shared fixtures; tests/ on ``sys.path`` for the helper modules beside this file.

Layout: ``unit/`` (pure functions and modules), ``families/`` (the patched model families and their
shared contract), ``training/`` (the trainer, the algorithm object, bench, integrations), ``cli/``
(the command line and its pictures and report).
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# The helper modules (``_models``, ``_contract``...) live here, beside the test folders: each test file's
# own folder is what pytest puts on sys.path, so this one is put there for every import mode.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
