"""Every third-party package that medmtl/ and pipelines/ import is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parents[1]
#: Import name → distribution name, where they differ.
DIST = {"skimage": "scikit-image", "sklearn": "scikit-learn", "yaml": "PyYAML", "SimpleITK": "SimpleITK"}
#: Imported only on the paths of an optional extra (``pip install medmtl[<extra>]``).
EXTRA = {"highdicom": "dicom", "pydicom": "dicom"}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(spec: list[str]) -> set[str]:
    return {_canon(re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0]) for s in spec}


def imported_packages(*folders: str) -> dict[str, str]:
    """Top-level third-party import names in the ``.py`` files of ``folders`` → one file importing it."""
    own = {"medmtl", "pipelines"}
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = _declared(project["dependencies"])
    extras = {k: _declared(v) for k, v in project["optional-dependencies"].items()}
    imports = imported_packages("medmtl", "pipelines")
    assert {"torch", "monai", "numpy", "scipy", "yaml", "skimage"} <= set(imports)  # the scan sees the imports
    missing = []
    for name, where in sorted(imports.items()):
        dist = _canon(DIST.get(name, name))
        declared = dist in extras[EXTRA[name]] if name in EXTRA else dist in core
        if not declared:
            missing.append(f"{name} (distribution {dist}, imported in {where})")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


def test_torch_is_declared_without_an_upper_bound_or_a_build() -> None:
    """A pinned or capped torch would make pip replace the CPU build the Makefile installed."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    (torch,) = [d for d in deps if _canon(re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0]) == "torch"]
    assert re.fullmatch(r"torch>=[0-9.]+", torch.replace(" ", "")), torch
