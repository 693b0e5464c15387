"""The layout's import rules, read from the source with ``ast`` (no imports executed).

Allowed directions between subpackages (docs/architecture.md):

    kernels      <- nothing of atomsim
    potentials   <- kernels
    integrators  <- kernels
    engine       <- kernels, potentials, integrators
    front ends (atomsim/*.py, atomsim.training, atomsim.bench) <- anything

and the installed package never locates files of a source checkout.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder on disk -> import name
PACKAGES = {"kernels": "kernels", "potentials": "potentials", "integrators": "integrators", "engine": "engine",
            "atomsim/bench": "bench", "atomsim/training": "training"}
ALLOWED = {
    "kernels": set(),
    "potentials": {"kernels"},
    "integrators": {"kernels"},
    "engine": {"kernels", "potentials", "integrators"},
    "training": {"kernels", "potentials", "integrators", "engine"},
    "bench": {"kernels", "potentials", "integrators", "engine", "frontends"},
}
SUBPACKAGES = ("kernels", "potentials", "integrators", "engine", "bench", "training")


def _atomsim_imports(path: Path):
    """(line, subpackage) for every ``atomsim.X`` this file imports, including lazy ones in functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != "atomsim":
                continue
            if len(parts) == 1:
                yield node.lineno, "frontends"  # `import atomsim` / `from atomsim import X`: the public API
            elif parts[1] in SUBPACKAGES:
                yield node.lineno, parts[1]
            elif len(parts) == 2 and node.__class__ is ast.ImportFrom and name == node.module:
                yield node.lineno, "frontends"  # from atomsim.cli / atomsim.calculator import ...


def _package_files():
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield name, path


def test_every_package_folder_is_scanned():
    assert len(list(_package_files())) > 40


@pytest.mark.parametrize("package", list(ALLOWED))
def test_subpackage_imports_only_in_allowed_directions(package):
    bad = []
    for name, path in _package_files():
        if name != package:
            continue
        for line, target in _atomsim_imports(path):
            if target != package and target not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports atomsim.{target}")
    assert not bad, f"atomsim.{package} may import only {sorted(ALLOWED[package]) or 'nothing of atomsim'}:\n" \
        + "\n".join(bad)


def test_relative_imports_stay_inside_their_subpackage():
    """``from ..x import`` would hide a cross-package import from the check above."""
    bad = []
    for _, path in _package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 1 and "pretrained" not in str(path):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad


def test_installed_package_never_reads_the_checkout():
    """No module finds ``benchmarks/`` (or another checkout folder) relative to its own file."""
    pattern = re.compile(r"__file__\)?\.resolve\(\)\.parents\[\d\]"
                         r"|parents\[\d\]\s*/\s*[\"'](benchmarks|tests|examples)")
    bad = []
    for _, path in list(_package_files()) + [(None, p) for p in (ROOT / "atomsim").glob("*.py")]:
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()}")
    assert not bad, "\n".join(bad)
