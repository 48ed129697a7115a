"""Non-editable packaging check.

Builds a wheel of the project from a copy of the source tree, checks its contents (the top-level
``models/`` folder must ship as ``pyro_iterative.models`` and never as a top-level ``models``
package, and no module of the source tree may be left out), installs it with ``pip --target`` and
imports it in a fresh interpreter to check that the imports resolve to the installed copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Source folder in the repository -> package path inside the wheel
# (mirrors [tool.setuptools.package-dir] in pyproject.toml).
PACKAGE_DIRS = {"pyro_iterative": "pyro_iterative", "models": "pyro_iterative/models"}

# pip output that means "could not reach an index to fetch the build backend" rather than a broken build.
_OFFLINE_PATTERNS = re.compile(
    r"Could not find a version that satisfies the requirement|No matching distribution found|"
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Network is unreachable|ConnectTimeout|ReadTimeout",
    re.IGNORECASE,
)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _setuptools_can_build_here() -> bool:
    """True when the running environment's setuptools can build this project without build isolation.

    ``license = "Apache-2.0"`` (a PEP 639 SPDX string) needs setuptools >= 77.
    """
    try:
        from importlib.metadata import version

        major = int(version("setuptools").split(".")[0])
    except Exception:
        return False
    return major >= 77


def _copy_sources(dest: Path) -> None:
    """Copy only what the build needs, so the build never writes build/ or *.egg-info into the repo."""
    dest.mkdir()
    for name in os.listdir(REPO):
        if name == "pyproject.toml" or name.startswith(("README", "LICENSE", "COPYING", "NOTICE", "MANIFEST")):
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for src in PACKAGE_DIRS:
        shutil.copytree(REPO / src, dest / src, ignore=ignore)


def _build_wheel(src: Path, out: Path) -> Path:
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out), "."]
    if _setuptools_can_build_here():
        proc = _run(base + ["--no-build-isolation", "--no-index"], cwd=src)
    else:
        # Isolated build: pip must fetch setuptools from an index; skip (not fail) when none is reachable.
        proc = _run(base, cwd=src, timeout=300)
        if proc.returncode != 0 and _OFFLINE_PATTERNS.search(proc.stdout + proc.stderr):
            pytest.skip("pip wheel needs the build backend from an index, which is not reachable offline")
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = list(out.glob("pyro_iterative-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {wheels}"
    return wheels[0]


@pytest.mark.slow
def test_wheel_ships_models_as_subpackage_and_imports_from_install(tmp_path: Path) -> None:
    if not (REPO / "pyproject.toml").exists():
        pytest.skip("not running from a source checkout")
    src = tmp_path / "src"
    _copy_sources(src)
    wheel = _build_wheel(src, tmp_path / "dist")

    names = zipfile.ZipFile(wheel).namelist()
    assert "pyro_iterative/__init__.py" in names
    assert "pyro_iterative/models/__init__.py" in names
    assert not [n for n in names if n.startswith("models/")], "a top-level models/ package leaked into the wheel"
    top_level = next((n for n in names if n.endswith(".dist-info/top_level.txt")), None)
    if top_level is not None:
        tops = set(zipfile.ZipFile(wheel).read(top_level).decode().split())
        assert tops == {"pyro_iterative"}, f"unexpected top-level packages {tops}"

    # Every module of the source tree must be in the wheel (catches subpackages missing from
    # [tool.setuptools] packages in pyproject.toml).
    missing = []
    for src_dir, pkg_path in PACKAGE_DIRS.items():
        for py in sorted((REPO / src_dir).rglob("*.py")):
            if "__pycache__" in py.parts:
                continue
            rel = py.relative_to(REPO / src_dir).as_posix()
            if f"{pkg_path}/{rel}" not in names:
                missing.append(f"{src_dir}/{rel}")
    assert not missing, f"source modules missing from the wheel (add their packages to pyproject.toml): {missing}"

    site = tmp_path / "site"
    proc = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(wheel),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"pip install --target failed:\n{proc.stdout}\n{proc.stderr}"

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONNOUSERSITE"] = "1"
    code = (
        "import pyro_iterative, pyro_iterative.models\n"
        "print(pyro_iterative.__file__)\n"
        "print(pyro_iterative.models.__file__)\n"
    )
    proc = _run([sys.executable, "-c", code], cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"import from the installed wheel failed:\n{proc.stdout}\n{proc.stderr}"
    pkg_file, models_file = (Path(line).resolve() for line in proc.stdout.splitlines()[-2:])
    site = site.resolve()
    assert pkg_file == site / "pyro_iterative" / "__init__.py", pkg_file
    assert models_file == site / "pyro_iterative" / "models" / "__init__.py", models_file
