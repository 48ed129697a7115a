"""The package's architecture, checked from its source: import direction, public seams, sorted ``__all__``, no
dispatch on method or model names outside the registries."""

import ast
import importlib
from pathlib import Path

import pytest

import pyro_iterative

ROOT = Path(pyro_iterative.__file__).parent
MODELS_ROOT = Path(importlib.import_module("pyro_iterative.models").__file__).parent


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the package (the models included), by dotted name, with its parsed source."""
    modules = {}
    for root, prefix in ((ROOT, "pyro_iterative"), (MODELS_ROOT, "pyro_iterative.models")):
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if root == ROOT and parts[0] == "models":
                continue
            name = ".".join((prefix, *parts)).removesuffix(".__init__")
            modules[name] = (path, ast.parse(path.read_text(), str(path)))
    return modules


MODULES = _modules()


def _imported(name: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for every import of a pyro_iterative module, relative imports resolved."""
    package = name if MODULES[name][0].name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("pyro_iterative"):
                names = [alias.name for alias in node.names]
                found.append((target, names))
                found += [(f"{target}.{n}", []) for n in names if f"{target}.{n}" in MODULES]
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("pyro_iterative")]
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


#: which layers each layer may import ("" is the package's __init__, re-exporting the public API)
ALLOWED = {
    "inference": {"inference"},
    "guides": {"guides", "inference"},
    "evaluation": {"guides", "inference"},
    "optimization": {"guides", "inference"},
    "matching": {"guides", "inference"},
    "data": {"data"},
    "models": {"models", "data", "inference"},
    "experiments": {"experiments", "data", "models", "guides", "inference", "evaluation", "optimization", "matching",
                    ""},
    "cli": {"experiments", "data", "guides"},
    "": {"guides", "inference", "matching", "optimization"},
    "__main__": {"cli"},
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_one_way(name):
    layer = _layer(name)
    allowed = ALLOWED[layer]
    for target, _ in _imported(name, MODULES[name][1]):
        assert _layer(target) in allowed, f"{name} imports {target}: layer '{layer}' may import only {sorted(allowed)}"


def test_the_check_can_fail():
    tree = ast.parse("from ..experiments.registry import METHODS\n")
    [(target, _)] = [item for item in _imported("pyro_iterative.guides.base", tree) if item[1]]
    assert target == "pyro_iterative.experiments.registry" and _layer(target) not in ALLOWED["guides"]


def _private_definitions() -> dict[str, set[str]]:
    """Private names (a leading underscore, not dunder) defined in each module: functions, classes, methods,
    module-level assignments."""
    defined = {}
    for name, (_, tree) in MODULES.items():
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        defined[name] = {n for n in names if n.startswith("_") and not n.endswith("__")}
    return defined


def test_no_module_uses_another_modules_private_names():
    defined = _private_definitions()
    problems = []
    for name, (path, tree) in MODULES.items():
        for target, names in _imported(name, tree):
            problems += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
        others = set().union(*(names for module, names in defined.items() if module != name)) - defined[name]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in others:
                owner = node.value
                on_self = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
                on_super = isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"
                if not (on_self or on_super):
                    problems.append(f"{path.name}:{node.lineno} reads .{node.attr}, a private name of another module")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_has_a_docstring_and_a_sorted_all(name):
    path, tree = MODULES[name]
    assert ast.get_docstring(tree), f"{path} has no module docstring"
    if name.endswith("__main__"):
        return  # importing it runs the command
    module = importlib.import_module(name) if name != "pyro_iterative.experiments.lightning" else None
    if module is None:
        pytest.importorskip("lightning")
        module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert name.endswith("experiments"), f"{name} has no __all__"  # a package of optional modules
        return
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names {missing}, which it does not define"


def test_no_dispatch_on_method_or_model_names_outside_the_registries():
    from pyro_iterative.experiments.datasets import DATASETS
    from pyro_iterative.experiments.registry import METHODS, MODELS

    names = set(METHODS.names()) | set(MODELS.names()) | set(DATASETS.names())
    registries = {"pyro_iterative.experiments.registry", "pyro_iterative.experiments.datasets"}
    # The report and its figures read metrics.json, whose schema (docs/metrics-schema.md) names the entries of the
    # iterative method and the standard encoder: those are keys of a file format, not a choice of behaviour.
    registries |= {"pyro_iterative.experiments.report", "pyro_iterative.experiments.plots"}
    found = []
    for name, (path, tree) in MODULES.items():
        if name in registries:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                constants = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                found += [f"{path.name}:{node.lineno} compares with '{c.value}'" for c in constants if c.value in names]
    assert not found, "\n".join(found)


def test_public_api_is_importable_from_the_package():
    import pyro_iterative.models as models

    for name in ("AmortizedGuide", "IterativeGuide", "LocalGuide", "LocalOptimization", "ModelPasses",
                 "PerDatapointGuide", "SemiAmortizedGuide", "inference_parameters", "matched_amortized_guide",
                 "optimize_local"):
        assert hasattr(pyro_iterative, name), name
    for name in ("BagOfWords", "GaussianVAE", "HierarchicalVAE", "LinearGaussian", "VAE", "load_counts", "perplexity",
                 "synthetic_corpus"):
        assert hasattr(models, name), name
