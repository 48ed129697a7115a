"""Sphinx configuration of the pyro-iterative documentation (``make docs``: ``docs/_build/html``).

The build runs offline and strict: ``sphinx-build -W -n --keep-going`` (warnings are errors, every cross-reference
must resolve). The tutorials in ``docs/tutorials/`` are executed by sphinx-gallery on every build, so the numbers and
figures they show come from the code they show.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
# One torch thread (as the benchmarks and examples use): the tutorials' networks are small, and more threads slow
# down many-fold on a shared 2-core machine. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyro_iterative  # noqa: E402

project = "pyro-iterative"
author = "pyro-iterative contributors"
copyright = "the pyro-iterative contributors"
release = version = pyro_iterative.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "pyro_iterative_docs",  # docs/_ext: re-exported names, the re-export tables, the public-name check
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# The pages of the site: the guide's pages at the top of docs/, the API reference, the tutorials sphinx-gallery writes
# to auto_tutorials/, and the run reports listed here. Other files under docs/ (the outputs of runs: a report.md beside
# its figures and metrics.json) are not pages unless added here; records.md includes or links them.
include_patterns = ["*.md", "api/*.rst", "auto_tutorials/**", "dmm/report.md", "default/report.md", "study/report.md"]
exclude_patterns = ["_build", "tutorials"]  # tutorials/: the tutorials' sources, run by sphinx-gallery

# --------------------------------------------------------------------------------------------------------- MyST
myst_enable_extensions = ["colon_fence", "dollarmath"]
# Anchors for headings down to ####, so that `[text](page.md#heading)` links (as on GitHub) resolve.
myst_heading_anchors = 4

# ------------------------------------------------------------------------------------------------------- autodoc
autodoc_default_options = {
    "members": True,  # a module's __all__ when it has one
    "member-order": "bysource",
    "show-inheritance": True,
}
# A method without a docstring of its own is not given its parent's: torch's docstrings (nn.Module.forward, ...)
# are written for torch's site and their references do not resolve here.
autodoc_inherit_docstrings = False
autodoc_typehints = "signature"
autodoc_preserve_defaults = False
autodoc_class_signature = "mixed"
autoclass_content = "class"
autosummary_generate = False  # the re-export tables are autosummary tables without stub pages

# -------------------------------------------------------------------------------------------- cross-references
# No intersphinx: the build runs without network access. With -n, every name in a signature or a role must resolve,
# so references to objects of *other* packages (torch, Pyro, NumPy, Lightning, matplotlib, the standard library and
# builtins), which this site does not document, are ignored here, and only those: a reference to any name of
# pyro_iterative that does not resolve still fails the build.
_EXTERNAL = (
    r"(torch|pyro|numpy|np|lightning|pytorch_lightning|matplotlib|tqdm|music21|mlxtend|torchvision"
    r"|typing|typing_extensions|collections|pathlib|argparse|dataclasses|enum|contextlib|types|os|io|json"
    r"|datetime|functools|itertools|abc|numbers|random|re|subprocess|concurrent|multiprocessing|weakref)"
    r"(\..+)?"
)
_BUILTINS = (
    r"(int|float|complex|str|bytes|bool|dict|list|tuple|set|frozenset|object|type|slice|range|callable|Callable"
    r"|None|NoneType|Ellipsis|\.\.\.|Any|Optional|Union|Iterable|Iterator|Sequence|Mapping|Generator"
    r"|Exception|ValueError|TypeError|RuntimeError|KeyError|IndexError|FileNotFoundError|OSError|AssertionError"
    r"|NotImplementedError|ImportError|ModuleNotFoundError|AttributeError|ArithmeticError|Warning|UserWarning)"
)
nitpick_ignore_regex = [
    (r"py:.*", _EXTERNAL),
    (r"py:.*", _BUILTINS),
]

# ------------------------------------------------------------------------------------------------ sphinx-gallery
# The tutorials run at the sizes written in them; each states its sizes and run time (a minute or less on 2 cores).
sphinx_gallery_conf = {
    "examples_dirs": ["tutorials"],
    "gallery_dirs": ["auto_tutorials"],
    "filename_pattern": r"/tutorial_",  # execute every tutorial
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": False,  # an error is reported as a build warning (an error with -W), not a crash
    "only_warn_on_example_error": True,
    "write_computation_times": False,
    "plot_gallery": "True",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib", "pyro_iterative_docs.reset_pyro"),
    "capture_repr": ("_repr_html_",),  # a block ending in an object with _repr_html_ shows it, as a notebook would
    "min_reported_time": 1,
}

# ----------------------------------------------------------------------------------------------------------- HTML
html_theme = "furo"
html_title = f"pyro-iterative {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
