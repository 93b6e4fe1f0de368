"""The package's shape: no import cycles, no use of another module's private names, small modules and functions.

Imports are read from the source with ``ast`` (function-level imports included, since a lazy
import still ties two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "trilevel"
MAX_LINES = 500
MAX_FUNCTION_CODE_LINES = 80  # docstring, blank and comment lines not counted


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, level: int, current: str) -> str:
    """Absolute name of ``from <level dots><module> import ...`` written in module ``current``."""
    if level == 0:
        return module
    base = current.split(".")
    if not _is_package(current):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(name: str):
    """``(target module, imported name or None, line)`` for every trilevel import in module ``name``."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("trilevel"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module or "", node.level, name)
            if not target.startswith("trilevel"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    yield sub, None, node.lineno
                else:
                    yield target, alias.name, node.lineno


def _graph():
    graph = {name: set() for name in MODULES}
    for name in MODULES:
        for target, _, _ in _imports(name):
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_source_tree_is_found():
    assert "trilevel.models.vit" in MODULES and "trilevel.training.trainer" in MODULES and len(MODULES) > 20


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def _private_uses():
    found = []
    for name in MODULES:
        for target, imported, line in _imports(name):
            if imported and imported.startswith("_") and not imported.startswith("__"):
                found.append(f"{name}:{line} imports {target}.{imported}")
        # module._private through an imported trilevel module alias
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(node.module or "", node.level, name)
                for alias in node.names:
                    if f"{target}.{alias.name}" in MODULES:
                        aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("trilevel") and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    assert _private_uses() == []


def _oversized_modules(modules, limit=MAX_LINES):
    """``"<path> has N lines"`` for every module of ``{name: path}`` over ``limit`` lines."""
    found = []
    for name, path in sorted(modules.items()):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{path} has {lines} lines (at most {limit})")
    return found


def test_modules_stay_small():
    assert _oversized_modules(MODULES) == []


def test_the_module_size_check_can_fail(tmp_path):
    small, big = tmp_path / "small.py", tmp_path / "big.py"
    small.write_text("x = 1\n" * 3)
    big.write_text("x = 1\n" * 4)
    assert _oversized_modules({"small": small, "big": big}, limit=3) == [f"{big} has 4 lines (at most 3)"]


def _code_lines(node, lines):
    """Lines of code of a function: its decorators, signature and body, without its docstring, blank
    lines and comment lines (nested functions count towards the function that holds them)."""
    skip = set()
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return sum(1 for i in range(start, node.end_lineno + 1)
               if i not in skip and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def _long_functions(source, where, limit=MAX_FUNCTION_CODE_LINES):
    """``"<where>:<line> <function> has N lines of code"`` for every function of ``source`` over ``limit``."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = _code_lines(node, lines)
            if n > limit:
                found.append(f"{where}:{node.lineno} {node.name} has {n} lines of code (at most {limit})")
    return found


def test_functions_stay_small():
    found = []
    for name, path in sorted(MODULES.items()):
        found += _long_functions(path.read_text(encoding="utf-8"), name)
    assert found == []


def test_the_function_size_check_can_fail():
    source = '''
def short(a):
    """A docstring

    over lines, not counted.
    """
    # a comment, not counted

    return a


@decorator
def long(a):
    b = a
    c = b
    return c
'''
    assert _long_functions(source, "m", limit=4) == ["m:13 long has 5 lines of code (at most 4)"]  # decorator included
    assert _long_functions(source, "m", limit=5) == []  # short has 2


def test_the_layers_contract_of_pyproject_holds():
    # import-linter reads [tool.importlinter] of pyproject.toml: core <- settings <- algorithm <- training <- viz
    # <- bench / integrations <- cli, and tyro only under cli. Run in its own process: lint_imports configures
    # logging in the calling process (disabling the loggers that later tests read through caplog).
    import subprocess
    import sys

    root = SRC.parents[1]
    linter = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(linter), "--config", str(root / "pyproject.toml")], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_layers_contract_names_every_top_level_module():
    import tomllib

    config = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    layers = config["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    top = {".".join(name.split(".")[:2]) for name in MODULES if name.count(".") >= 1} - {"trilevel.__main__"}
    assert top - named == set(), f"modules outside the layers contract: {sorted(top - named)}"


def test_the_import_contracts_hold_without_exceptions():
    # issue 28: "the import-linter layers hold with no workaround": no contract lists ignored imports
    import tomllib

    config = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    excepted = {c["name"]: c["ignore_imports"] for c in config["tool"]["importlinter"]["contracts"] if c.get("ignore_imports")}
    assert excepted == {}
