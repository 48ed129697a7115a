"""A local Sphinx extension for the pyro-iterative API reference.

The API reference documents every public object once, in the module that defines it (``automodule`` of each module,
whose ``:members:`` are its ``__all__``). The packages re-export those objects (``pyro_iterative.IterativeGuide`` is
``pyro_iterative.guides.iterative.IterativeGuide``), and docstrings refer to them by either name. This extension

- resolves a Python cross-reference to a re-exported name (``pyro_iterative.IterativeGuide``,
  ``pyro_iterative.guides.LocalGuide.refine``, ``BINARIZE_MODES`` inside :mod:`pyro_iterative.data`) to the place the
  object is documented, by importing the name and finding the documented object it *is*; nothing is guessed, so a
  reference to a name that does not exist still fails the build;
- adds the directive ``.. reexports:: package``: an autosummary table of every name in the package's ``__all__``,
  each linked to where it is documented;
- checks, once the pages are read, that every name in the ``__all__`` of every public module is documented and that
  every public class and function has a docstring, and warns (an error under ``-W``) for each one that is not;
- writes defaults that are functions or classes as code in signatures (``readable_defaults``);
- resets Pyro's parameter store and seeds before each tutorial (``reset_pyro``, named in ``sphinx_gallery_conf``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

#: The packages whose modules are public: every module under them except those named in PRIVATE_MODULES.
PUBLIC_PACKAGES = ("pyro_iterative", "pyro_iterative.models")
#: Modules that are not part of the API: ``python -m pyro_iterative`` runs the command line and is not importable.
PRIVATE_MODULES = {"pyro_iterative.__main__"}


def public_modules() -> list[str]:
    """The dotted names of every public module and package, sorted."""
    names: set[str] = set()
    for package_name in PUBLIC_PACKAGES:
        package = importlib.import_module(package_name)
        names.add(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
            names.add(info.name)
    return sorted(names - PRIVATE_MODULES)


def _import(dotted: str) -> tuple[bool, Any]:
    """``(found, object)`` for a dotted name: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    if parts[0] not in ("pyro_iterative",):
        return False, None
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False, None
        return True, obj
    return False, None


def _documented(env: BuildEnvironment) -> dict[str, Any]:
    """The Python domain's objects of this package: ``{full name: object entry}``."""
    return {name: entry for name, entry in env.get_domain("py").objects.items() if name.startswith("pyro_iterative")}


def _identity_index(env: BuildEnvironment) -> dict[int, str]:
    """``{id(object): documented name}`` for every documented object that imports (canonical entries win)."""
    cache = getattr(env, "_pyro_iterative_identity", None)
    documented = _documented(env)
    if cache is not None and cache[0] == len(documented):
        return cache[1]
    index: dict[int, str] = {}
    for name, entry in sorted(documented.items(), key=lambda item: item[1].aliased):
        if entry.objtype == "module":
            continue
        found, obj = _import(name)
        if found and not isinstance(obj, (int, float, str, bool, type(None))):
            index.setdefault(id(obj), name)
    env._pyro_iterative_identity = (len(documented), index)
    return index


def documented_name(env: BuildEnvironment, dotted: str) -> str | None:
    """Where the object called ``dotted`` is documented, or ``None`` (not ours, not found, or not documented)."""
    documented = _documented(env)
    if dotted in documented:
        return dotted
    found, obj = _import(dotted)
    if not found:
        return None
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and f"{module}.{qualname}" in documented:
        return f"{module}.{qualname}"
    return _identity_index(env).get(id(obj))


def resolve_reexport(app: Sphinx, env: BuildEnvironment, node: nodes.Element, contnode: nodes.Node):
    """``missing-reference`` handler: a reference to a re-exported name resolves to where the object is documented."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module:
        if cls:
            candidates.append(f"{module}.{cls}.{target}")
        candidates.append(f"{module}.{target}")
    for candidate in candidates:
        name = documented_name(env, candidate)
        if name is not None and name != target:
            domain = env.get_domain("py")
            reftype = node["reftype"]
            found = domain.resolve_xref(env, node["refdoc"], app.builder, reftype, name, node, contnode)
            if found is None:  # e.g. :class: used for a function: link by object, whatever its type
                found = domain.resolve_xref(env, node["refdoc"], app.builder, "obj", name, node, contnode)
            if found is not None:
                return found
    return None


class ReexportsDirective(SphinxDirective):
    """``.. reexports:: package``: a table of the package's ``__all__``, each name linked to its documentation."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        package_name = self.arguments[0]
        package = importlib.import_module(package_name)
        lines = [".. autosummary::", ""]
        modules = {}  # documented name -> its module, the context of the references in its summary
        for name in package.__all__:
            target = _defining_name(package_name, name, getattr(package, name))
            modules[target] = target.rsplit(".", 1)[0]
            lines.append(f"   ~{target}")
        container = nodes.container()
        # Outside the package's module context: autosummary refuses full names under the current module.
        saved = self.env.ref_context.pop("py:module", None)
        try:
            nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        finally:
            if saved is not None:
                self.env.ref_context["py:module"] = saved
        # A summary's references are written relative to the module of its object: resolve them there.
        for row in container.findall(nodes.row):
            links = list(row[0].findall(addnodes.pending_xref))
            module = modules.get(links[0]["reftarget"]) if links else None
            for ref in row.findall(addnodes.pending_xref):
                if module and ref is not links[0] and not ref.get("py:module"):
                    ref["py:module"] = module
        return container.children


def _defining_name(package_name: str, name: str, obj: Any) -> str:
    """The dotted name under which a re-exported object is documented: its defining module's, found by identity."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and module.startswith("pyro_iterative") and isinstance(qualname, str):
        return f"{module}.{qualname}"
    # Data (constants): the deepest public module that lists the name in its __all__ and holds the same object.
    owners = []
    for module_name in public_modules():
        candidate = importlib.import_module(module_name)
        if name in getattr(candidate, "__all__", ()) and getattr(candidate, name, None) is obj:
            owners.append(module_name)
    if not owners:
        return f"{package_name}.{name}"
    return f"{max(owners, key=lambda m: m.count('.'))}.{name}"


def check_public_names(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn for every public name (``__all__`` of a public module) that is not documented or has no docstring."""
    documented = _documented(env)
    modules = public_modules()
    for module_name in modules:
        if module_name not in documented:
            logger.warning("public module %s is not in the API reference", module_name, type="pyro_iterative")
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if documented_name(env, f"{module_name}.{name}") is None:
                logger.warning(
                    "public name %s.%s is not in the API reference (give it a docstring, or a #: comment for data)",
                    module_name, name, type="pyro_iterative",
                )
            elif (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
                logger.warning("public name %s.%s has no docstring", module_name, name, type="pyro_iterative")


def readable_defaults(app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None,
                      return_annotation: str | None) -> tuple[str | None, str | None] | None:
    """``autodoc-process-signature``: write defaults that are functions, classes or dataclass factories as code (a
    dataclass's generated ``__init__`` has no source to read them from, and ``<function f>`` is not a signature Sphinx
    can parse)."""
    if not signature or "<" not in signature:
        return None
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        parameters = []
    for parameter in parameters:  # in order, as they appear in the signature
        default = parameter.default
        if inspect.isfunction(default) and default.__name__ == "<lambda>":
            code = "lambda " + ", ".join(inspect.signature(default).parameters) + ": ..."
            signature = re.sub(r"<function [\w.]*<lambda>>", lambda _: code, signature, count=1)
    if dataclasses.is_dataclass(obj):  # a field's default_factory shows as <factory>: write the call instead
        for field in dataclasses.fields(obj):
            if field.default_factory is not dataclasses.MISSING:
                call = f"{getattr(field.default_factory, '__name__', 'factory')}()"
                signature = re.sub(r"<factory>", lambda _: call, signature, count=1)
    signature = re.sub(r"<function ([\w.]+)>", r"\1", signature)
    signature = re.sub(r"<built-in function (\w+)>", r"\1", signature)
    signature = re.sub(r"<class '([\w.]+)'>", r"\1", signature)
    return signature, return_annotation


def reset_pyro(gallery_conf: dict, fname: str, when: str) -> None:
    """Before each tutorial: an empty parameter store and the same seeds, whatever ran before it."""
    import pyro

    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("missing-reference", resolve_reexport)
    app.connect("env-check-consistency", check_public_names)
    app.connect("autodoc-process-signature", readable_defaults)
    app.add_directive("reexports", ReexportsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
