"""The outside tools the tests use, and the one rule for a missing one: under ``CI=true`` it fails
the run (a green CI must never hide a check that did not run); elsewhere the test skips, saying
what is missing and how to get it. Only a GPU, TensorRT and a Docker engine may be missing under
CI too: those skips are conftest.py's markers and the Docker tests' own.

The helpers hide their frames (``__tracebackhide__``): a skip or failure is reported at the line of
the test that asked."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

ON_CI = os.environ.get("CI", "").lower() == "true"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))


def missing(what: str) -> NoReturn:
    """Fail under CI=true, skip elsewhere (also at module level)."""
    __tracebackhide__ = True
    if ON_CI:
        pytest.fail(
            f"{what} (CI=true: only a GPU, TensorRT or Docker may be missing)", pytrace=False
        )
    pytest.skip(what, allow_module_level=True)


def _extra(extra: str) -> str:
    return f"the {extra} extra installs it: pip install -e '.[{extra}]'"


def package(name: str, extra: str = "dev") -> ModuleType:
    """The Python package ``name`` of one of maskrt's extras, imported."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python package {name} is not installed ({_extra(extra)})")


def program(name: str, extra: str = "dev") -> str:
    """The command ``name`` that a package of one of maskrt's extras installs: in the virtual
    environment pytest runs from (whether or not its bin/ is on PATH), else on PATH."""
    __tracebackhide__ = True
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        missing(f"{name} is not beside {sys.executable} nor on PATH ({_extra(extra)})")
    return found


def cxx() -> str:
    """The host C++ compiler."""
    __tracebackhide__ = True
    found = shutil.which("g++") or shutil.which("c++")
    if found is None:
        missing("no host C++ compiler (g++ / c++) on PATH: apt-get install g++")
    return found


def cmake() -> str:
    """CMake, which builds plugins/."""
    __tracebackhide__ = True
    found = shutil.which("cmake")
    if found is None:
        missing("cmake not found on PATH: apt-get install cmake")
    return found


def find_nvcc() -> str | None:
    """CUDA's compiler on PATH or in $CUDA_HOME/bin, if there is one."""
    fallback = CUDA_HOME / "bin" / "nvcc"
    return shutil.which("nvcc") or (str(fallback) if fallback.is_file() else None)


def nvcc() -> str:
    """CUDA's compiler (no GPU needed to compile)."""
    __tracebackhide__ = True
    found = find_nvcc()
    if found is None:
        missing("nvcc not found on PATH nor in $CUDA_HOME/bin: install the CUDA toolkit")
    return found


def cuobjdump() -> str:
    """CUDA's object dumper: the toolkit's, else the one the dev extra installs
    (``nvidia-cuda-cuobjdump``, under site-packages' ``nvidia/cu*/bin``)."""
    __tracebackhide__ = True
    candidates = [shutil.which("cuobjdump"), str(CUDA_HOME / "bin" / "cuobjdump")]
    nvidia = importlib.util.find_spec("nvidia")
    roots = (nvidia.submodule_search_locations or []) if nvidia is not None else []
    for root in roots:
        candidates += sorted(str(p) for p in Path(root).glob("cu*/bin/cuobjdump"))
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        missing(f"cuobjdump not found (PATH, $CUDA_HOME/bin, nvidia/cu*/bin; {_extra('dev')})")
    return found


def compute_sanitizer() -> str:
    """CUDA's compute-sanitizer (memcheck, racecheck): on PATH or in the toolkit."""
    __tracebackhide__ = True
    candidates = [
        shutil.which("compute-sanitizer"),
        str(CUDA_HOME / "bin" / "compute-sanitizer"),
        str(CUDA_HOME / "compute-sanitizer" / "compute-sanitizer"),
    ]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        missing(f"compute-sanitizer not found (PATH, {CUDA_HOME}): install the CUDA toolkit")
    return found


def without_root_privileges() -> tuple[str, ...]:
    """A command prefix under which file permissions hold: as root, ``setpriv`` (util-linux)
    without the capabilities that override them; otherwise nothing."""
    __tracebackhide__ = True
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        missing(
            "setpriv not found on PATH (as root, it makes permissions hold): apt-get install util-linux"
        )
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")
