"""Code rules checked on the source itself: functions that read in one screen (issue #12)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "medmtl"

#: Longest function or method allowed, counted from ``def`` to its last line, docstring included.
MAX_FUNCTION_LINES = 80


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """``(qualified name, lines)`` of every function, method and nested function under ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{child.name}"
            end = child.end_lineno if child.end_lineno is not None else child.lineno
            yield name, end - child.lineno + 1
            yield from _functions(child, f"{name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def _too_long(source: str, path: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``"path:function (N lines)"`` for each function of ``source`` longer than ``limit`` lines."""
    tree = ast.parse(source, filename=path)
    return [f"{path}:{name} ({n} lines)" for name, n in _functions(tree) if n > limit]


def _body(n_lines: int) -> str:
    """Source of a function ``f`` of exactly ``n_lines`` lines (``def`` line included)."""
    return "def f():\n" + "    x = 1\n" * (n_lines - 1)


def test_checker_counts_def_to_last_line() -> None:
    assert _too_long(_body(MAX_FUNCTION_LINES), "m.py") == []
    assert _too_long(_body(MAX_FUNCTION_LINES + 1), "m.py") == [f"m.py:f ({MAX_FUNCTION_LINES + 1} lines)"]
    method = "class C:\n    def g(self):\n" + "        x = 1\n" * MAX_FUNCTION_LINES
    assert _too_long(method, "m.py") == [f"m.py:C.g ({MAX_FUNCTION_LINES + 1} lines)"]


def test_functions_fit_in_one_screen() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no Python files found under {PACKAGE}"
    offenders: list[str] = []
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        offenders += _too_long(path.read_text(encoding="utf-8"), rel)
    assert not offenders, (
        f"{len(offenders)} function(s) longer than {MAX_FUNCTION_LINES} lines (def to last line); "
        "split them into small private helpers:\n" + "\n".join(offenders)
    )


# --------------------------------------------------------------------------- the import rule
#: DESIGN.md → Layout: ``io`` ← ``data``, ``transforms``, ``models``, ``mtl`` (and ``config``) ←
#: ``engine`` ← ``shift`` ← ``api`` ← ``cli``/``commands``. A module may import its own layer and
#: those below, never one above. Top-level helper modules sit with ``io``.
LAYERS: dict[str, int] = {
    "errors": 0, "records": 0, "io": 0, "metrics": 0, "metrics_bootstrap": 0,
    "data": 1, "transforms": 1, "models": 1, "mtl": 1, "config": 1,
    "engine": 2, "shift": 3, "api": 4, "cli": 5, "commands": 5, "__main__": 5, "__init__": 0,
}


def _imports(tree: ast.AST) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """``(module, names, line)`` of every ``medmtl`` import, also inside functions and TYPE_CHECKING."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "medmtl":
                for a in node.names:
                    yield f"medmtl.{a.name}", (), node.lineno
            elif node.module.startswith("medmtl."):
                yield node.module, tuple(a.name for a in node.names), node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("medmtl.") or a.name in ("pipelines", "bench") or a.name.startswith(
                        ("pipelines.", "bench.")):
                    yield a.name, (), node.lineno
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("pipelines", "bench"):
            yield node.module, (), node.lineno


def _layer_violations(path: Path, source: str) -> list[str]:
    """Imports of ``path`` (a module under ``medmtl/``) that run back up a layer or break the engine API."""
    from medmtl.engine import PUBLIC_API

    pkg = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    out = []
    for module, names, line in _imports(ast.parse(source, filename=str(path))):
        where = f"{path.relative_to(REPO)}:{line} imports {module}"
        top = module.split(".")[0]
        if top in ("pipelines", "bench"):
            out.append(f"{where} (the library never imports pipelines or bench)")
            continue
        target = module.split(".")[1]
        if LAYERS.get(target, 0) > LAYERS.get(pkg, 0):
            out.append(f"{where} (layer {target} is above {pkg})")
        if pkg == "shift" and target == "engine":
            allowed = PUBLIC_API.get(module)
            extra = sorted(set(names) - set(allowed or ()))
            if allowed is None or extra or not names:
                out.append(f"{where} {list(names)} (shift may use only medmtl.engine.PUBLIC_API: {PUBLIC_API})")
    return out


def test_imports_never_run_back_up_a_layer() -> None:
    problems = [v for p in sorted(PACKAGE.rglob("*.py")) for v in _layer_violations(p, p.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


def test_import_rule_catches_violations(tmp_path: Path) -> None:
    """The checker itself fails on each kind of violation (so the rule above can fail)."""
    engine, shift = PACKAGE / "engine" / "x.py", PACKAGE / "shift" / "x.py"
    assert _layer_violations(engine, "def f():\n    from medmtl.shift.gate import maybe_adapt\n")
    assert _layer_violations(engine, "import medmtl.api\n")
    assert _layer_violations(shift, "from medmtl.engine.session import TrainingSession\n")
    assert _layer_violations(shift, "from medmtl.engine.checkpoint import atomic_folder\n")
    assert _layer_violations(PACKAGE / "io" / "x.py", "from medmtl.models.spec import ModelSpec\n")
    assert _layer_violations(PACKAGE / "models" / "x.py", "import pipelines.runs\n")
    assert not _layer_violations(shift, "from medmtl.engine.checkpoint import load_checkpoint, read_card\n")
    assert not _layer_violations(engine, "from medmtl.transforms.presets import InputSpec\n")
