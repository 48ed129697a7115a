"""Tests of the package :mod:`pyro_iterative.data` as a whole: its exports and its imports."""

import ast
import importlib
from pathlib import Path

import pytest

from pyro_iterative import data

SUBMODULES = ("arrays", "binarization", "chorales", "corpora", "mnist")


def test_all_is_sorted_and_complete():
    assert data.__all__ == sorted(data.__all__)
    for name in data.__all__:
        assert hasattr(data, name), name


@pytest.mark.parametrize("name", SUBMODULES)
def test_submodules_export_sorted_names_all_reexported_by_the_package(name):
    module = importlib.import_module(f"pyro_iterative.data.{name}")
    assert module.__all__ == sorted(module.__all__)
    for public in module.__all__:
        assert getattr(data, public) is getattr(module, public), public
        assert public in data.__all__, public


def test_package_imports_nothing_else_from_pyro_iterative():
    """pyro_iterative.models imports pyro_iterative.data, never the other way round (not even lazily)."""
    directory = Path(data.__file__).parent
    files = sorted(directory.glob("*.py"))
    assert {path.stem for path in files} == {"__init__", *SUBMODULES}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert node.level > 0 or not module.startswith("pyro_iterative"), f"{path.name}: from {module}"
                assert not (node.level > 1), f"{path.name}: relative import out of the package"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("pyro_iterative"), f"{path.name}: import {alias.name}"
