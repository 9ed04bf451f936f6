"""The package as it installs. ``maskrt/`` holds the root modules and a link to each part's
top-level folder (``maskrt/runtime -> ../runtime``), so Python, mypy and editors see one package;
these tests keep that true: every part is linked, every folder holding Python is a declared package
(a missing one would vanish from the wheel and the image), the wheel holds every module, and the
runtime imports no web framework."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "maskrt"
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")


def declared_packages() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["tool"]["setuptools"]["packages"])


def python_folders() -> dict[str, Path]:
    """Dotted name -> folder, for every folder under ``maskrt/`` (links followed) with Python."""
    found = {}
    for folder, subfolders, files in os.walk(PACKAGE, followlinks=True):
        subfolders[:] = [d for d in subfolders if d != "__pycache__"]
        if any(f.endswith(".py") for f in files):
            found[".".join(Path(folder).relative_to(ROOT).parts)] = Path(folder)
    return found


def test_every_part_is_linked_into_the_package():
    parts = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"maskrt"}
    linked = {p.name for p in PACKAGE.iterdir() if p.is_symlink()}
    assert parts == linked, f"parts not linked from maskrt/: {parts - linked}"
    for name in linked:
        assert os.readlink(PACKAGE / name) == f"../{name}"


def test_every_folder_holding_python_is_a_declared_package():
    folders = python_folders()
    assert {"maskrt.runtime", "maskrt.server.routes", "maskrt.cli"} <= set(folders)
    missing = sorted(set(folders) - declared_packages())
    assert not missing, f"folders with Python missing from pyproject's packages: {missing}"
    no_init = sorted(name for name, path in folders.items() if not (path / "__init__.py").is_file())
    assert not no_init, f"folders with Python but no __init__.py: {no_init}"


def test_the_wheel_holds_every_module(tmp_path):
    """Built from a copy of what the image's build copies (the build writes beside its sources)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    for folder in [PACKAGE, *(ROOT / p.name for p in PACKAGE.iterdir() if p.is_symlink())]:
        shutil.copytree(folder, source / folder.name, symlinks=True, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("maskrt-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.endswith(".py")}
    tree = {
        f"{path.relative_to(ROOT).as_posix()}/{f.name}"
        for path in python_folders().values()
        for f in path.iterdir()
        if f.suffix == ".py"
    }
    assert tree == shipped, f"not shipped: {sorted(tree - shipped)}"


def test_the_runtime_imports_no_web_framework():
    """Every module of ``maskrt.runtime`` imported, in a fresh interpreter: no FastAPI, Starlette
    or uvicorn among ``sys.modules`` (a front door brings its own)."""
    code = (
        "import importlib, pkgutil, sys, maskrt.runtime as r\n"
        "for m in pkgutil.walk_packages(r.__path__, 'maskrt.runtime.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {WEB_FRAMEWORKS!r}))\n"
        "print(len([m for m in sys.modules if m.startswith('maskrt.runtime.')]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    frameworks, runtime_modules = run.stdout.splitlines()
    assert frameworks == "[]"
    assert int(runtime_modules) >= 15  # the walk really imported the runtime
