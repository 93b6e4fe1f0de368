"""The training engine stays small: the Trainer under 300 lines, its modules under 500, no function over 80 lines of code.

Lines of code: a function's lines without its docstring, blank lines and comment-only lines (issue 28's limits).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[2] / "src" / "trilevel" / "training"
ENGINE = ["trainer.py", "state.py", "events.py", "build.py", "epoch_metrics.py",
          *(f"callbacks/{p.name}" for p in sorted((TRAINING / "callbacks").glob("*.py")))]


def code_lines(source: str, node: ast.AST) -> int:
    doc = set()
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        doc = set(range(body[0].lineno, body[0].end_lineno + 1))
    lines = source.splitlines()[node.lineno - 1:node.end_lineno]
    return sum(1 for n, line in enumerate(lines, start=node.lineno)
               if n not in doc and line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("name", ENGINE)
def test_engine_modules_and_functions_are_small(name):
    source = (TRAINING / name).read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 500, name
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert code_lines(source, node) <= 80, f"{name}: {node.name}"


def test_the_trainer_class_is_under_300_lines():
    tree = ast.parse((TRAINING / "trainer.py").read_text(encoding="utf-8"))
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 < 300


def test_the_code_line_count_leaves_out_docstrings_and_comments():
    source = 'def f():\n    """Doc.\n\n    More.\n    """\n    # a comment\n\n    return 1\n'
    assert code_lines(source, ast.parse(source).body[0]) == 2
