"""What the TensorRT plugin tests build with, found once per session (a pytest plugin, registered in
conftest.py): TensorRT's headers of every version present, a host C++ compiler, nvcc, CUDA's
headers and runtime, the stand-in ``libnvinfer.so.<major>`` and the CMake build of the plugin
library against it.

Headers come from ``$TENSORRT_INCLUDE_DIR``, ``$TENSORRT_ROOT/include``, the project's sibling
``../shared/third_party/tensorrt-*/include`` (CI and the developer machines) and the usual system
directories; every version found is tested once. Where none is found, or a compiler is missing, the
tests fail under ``CI=true`` and skip elsewhere (``tools.missing``).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from tools import CUDA_HOME, cmake, cxx, missing, nvcc

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
SRC = PLUGINS / "roi_align"
TEST_SOURCES = Path(__file__).resolve().parent / "plugins"


@dataclass(frozen=True)
class Headers:
    """One TensorRT version's include directory."""

    include: Path
    version: str  # "10.14"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _version(include: Path) -> str | None:
    text = (include / "NvInferVersion.h").read_text(errors="replace")
    found = {
        m[1]: m[2]
        for m in re.finditer(
            r"#define\s+(?:NV_TENSORRT|TRT)_(MAJOR|MINOR)(?:_ENTERPRISE)?\s+(\d+)", text
        )
    }
    return f"{found['MAJOR']}.{found['MINOR']}" if {"MAJOR", "MINOR"} <= found.keys() else None


def tensorrt_headers() -> list[Headers]:
    """Every TensorRT header version found, one entry per version, oldest first."""
    candidates = []
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        candidates.append(Path(os.environ["TENSORRT_INCLUDE_DIR"]))
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    candidates += sorted((ROOT.parent / "shared" / "third_party").glob("tensorrt-*/include"))
    candidates += [
        Path("/usr/include/x86_64-linux-gnu"),
        Path("/usr/include/aarch64-linux-gnu"),
        Path("/usr/local/tensorrt/include"),
        Path("/opt/tensorrt/include"),
    ]
    found: dict[str, Headers] = {}
    for include in candidates:
        if (include / "NvInferRuntime.h").is_file() and (include / "NvInferVersion.h").is_file():
            version = _version(include)
            if version and version not in found:
                found[version] = Headers(include.resolve(), version)
    return sorted(found.values(), key=lambda h: tuple(map(int, h.version.split("."))))


NO_HEADERS = (
    "TensorRT headers not found: set TENSORRT_INCLUDE_DIR or TENSORRT_ROOT, or put them in "
    "../shared/third_party/tensorrt-<version>/include"
)
HEADERS = tensorrt_headers()
# one parameter per version; None (fails on CI, skips elsewhere) when there are none
HEADER_PARAMS = [pytest.param(h, id=f"trt{h.version}") for h in HEADERS] or [
    pytest.param(None, id="no-tensorrt-headers")
]


def need(headers: Headers | None) -> Headers:
    if headers is None:
        missing(NO_HEADERS)
    return headers


def cudart_dir() -> Path:
    for d in (CUDA_HOME / "lib64", CUDA_HOME / "lib", CUDA_HOME / "targets/x86_64-linux/lib"):
        if any(d.glob("libcudart.so*")):
            return d
    missing(f"libcudart not found under {CUDA_HOME}: install the CUDA toolkit")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd``; an assertion showing the command and its output when it fails."""
    kwargs.setdefault("timeout", 900)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done


def standin_libnvinfer(headers: Headers, out_dir: Path, version: int | None = None) -> Path:
    """``out_dir/libnvinfer.so.<major>`` built from tests/plugins/libnvinfer_standin.cpp against
    ``headers``; ``version`` (e.g. 110100) is what its getInferLibVersion() reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"libnvinfer.so.{headers.major}"
    run(
        [
            cxx(),
            "-std=c++17",
            "-O1",
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-Wno-deprecated-declarations",
            f"-isystem{headers.include}",
            f"-isystem{CUDA_HOME / 'include'}",
            *([f"-DSTANDIN_VERSION={version}"] if version else []),
            TEST_SOURCES / "libnvinfer_standin.cpp",
            f"-Wl,-soname,{lib.name}",
            "-o",
            lib,
        ]
    )
    return lib


@dataclass(frozen=True)
class PluginBuild:
    headers: Headers
    standin: Path
    library: Path
    log: str  # configure and build output


@pytest.fixture(scope="session")
def plugin_builds(tmp_path_factory) -> dict[str, PluginBuild]:
    """The plugin library built with CMake once per header version (sm_80 only, to keep it short)
    against a stand-in libnvinfer.so.<major> that only has the versioned name, as the pip wheels'
    tensorrt_libs/ does."""
    cmake_exe, nvcc_exe = cmake(), nvcc()
    builds = {}
    for headers in HEADERS:
        work = tmp_path_factory.mktemp(f"plugin-trt{headers.version}")
        standin = standin_libnvinfer(headers, work / "lib")
        configure = run(
            [
                cmake_exe,
                "-S",
                PLUGINS,
                "-B",
                work / "build",
                f"-DTENSORRT_INCLUDE_DIR={headers.include}",
                f"-DTENSORRT_ROOT={work}",
                "-DCMAKE_CUDA_ARCHITECTURES=80-real",
                f"-DCMAKE_CUDA_COMPILER={nvcc_exe}",
            ]
        )
        build = run([cmake_exe, "--build", work / "build", "-j2"])
        builds[headers.version] = PluginBuild(
            headers,
            standin,
            work / "build" / "libmaskrt_plugins.so",
            configure.stdout + configure.stderr + build.stdout + build.stderr,
        )
    return builds


@pytest.fixture(scope="session")
def tensorrt_exports(tmp_path_factory) -> dict[str, Path]:
    """The shipped model exported fresh for the tensorrt target, fp32 and fp16 (max batch 2)."""
    from maskrt.export.onnx import export_onnx
    from maskrt.model.checkpoint import default_checkpoint, load_checkpoint

    shipped = load_checkpoint(str(default_checkpoint()))
    out = tmp_path_factory.mktemp("tensorrt-exports")
    return {
        precision: export_onnx(
            shipped, out / f"{precision}.onnx", "tensorrt", max_batch=2, fp16=precision == "fp16"
        )
        for precision in ("fp32", "fp16")
    }
