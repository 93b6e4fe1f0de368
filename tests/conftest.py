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

import pytest  # noqa: E402


@pytest.fixture
def token_norm_score():
    """``token-norm`` (tests/_toy.py) registered for one test (there is no public unregister: the dict entry is removed)."""
    from trilevel.token_pruning import TOKEN_SCORES, register_token_score

    from _toy import TOKEN_NORM

    assert "token-norm" not in TOKEN_SCORES
    register_token_score(TOKEN_NORM)
    yield TOKEN_NORM
    TOKEN_SCORES.pop("token-norm", None)


@pytest.fixture
def mean_fate():
    """The ``mean`` token fate (tests/_toy.py) registered for one test (there is no public unregister: the entry is removed)."""
    from trilevel.token_pruning import TOKEN_FATES, register_token_fate

    from _toy import MEAN

    assert "mean" not in TOKEN_FATES
    register_token_fate(MEAN)
    yield MEAN
    TOKEN_FATES.pop("mean", None)


@pytest.fixture
def toy_family(token_norm_score):
    """ToyFamily (tests/_toy.py) registered for one test; the family list is restored afterwards (no public unregister)."""
    from trilevel.models import registry
    from trilevel.models.registry import register_family

    from _toy import ToyFamily

    before = list(registry._FAMILIES)
    family = register_family(ToyFamily())
    yield family
    registry._FAMILIES[:] = before
