"""What the TensorRT plugin tests build with, found once per session (a pytest plugin, registered in
conftest.py): TensorRT's headers of every version present, a host C++ compiler, nvcc, CUDA's
headers and runtime, the stand-in ``libnvinfer.so.<major>``, the CMake build of the plugin
library against it (for this machine's GPU where there is one), the plugin nodes of fresh
tensorrt-target exports, and the loader check (tests/plugins/trt_loader_check.cpp) that drives a
built library through a ``libnvinfer``.

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
import torch
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


def gpu_architecture() -> str | None:
    """This machine's GPU as a CUDA architecture number ("90"), None without a GPU. Builds that
    run on the GPU target it alone: a library without its code would fail for that reason
    only."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}"


@dataclass(frozen=True)
class PluginBuild:
    headers: Headers
    standin: Path
    library: Path
    log: str  # configure and build output


def cmake_build(headers: Headers, work: Path) -> PluginBuild:
    """The plugin library built with CMake under ``work`` against ``headers``, for this machine's
    GPU (else sm_80 only, to keep it short), and against a stand-in libnvinfer.so.<major> that only
    has the versioned name, as the pip wheels' tensorrt_libs/ does."""
    cmake_exe = cmake()
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
            f"-DCMAKE_CUDA_ARCHITECTURES={gpu_architecture() or '80'}-real",
            f"-DCMAKE_CUDA_COMPILER={nvcc()}",
        ]
    )
    build = run([cmake_exe, "--build", work / "build", "-j2"])
    return PluginBuild(
        headers,
        standin,
        work / "build" / "libmaskrt_plugins.so",
        configure.stdout + configure.stderr + build.stdout + build.stderr,
    )


@pytest.fixture(scope="session")
def plugin_builds(tmp_path_factory) -> dict[str, PluginBuild]:
    """:func:`cmake_build` once per header version."""
    return {
        h.version: cmake_build(h, tmp_path_factory.mktemp(f"plugin-trt{h.version}"))
        for h in HEADERS
    }


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


def plugin_cases(paths) -> str:
    """The cases file of trt_loader_check: one line per plugin node of the tensorrt-target ONNX
    files ``paths``: feature type, levels, its INT attributes as int32 fields (what TensorRT's ONNX
    parser passes: plugin_version / plugin_namespace select the creator and are not fields)."""
    import onnx

    lines = []
    for path in paths:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
        for node in model.graph.node:
            if node.op_type != "MaskrtMultiLevelRoIAlign":
                continue
            fields = []
            for a in node.attribute:
                if a.name in ("plugin_version", "plugin_namespace"):
                    continue
                assert a.type == onnx.AttributeProto.INT, a.name
                fields.append(f"{a.name}={a.i}")
            kind = types[node.input[1]]
            name = "float16" if kind == onnx.TensorProto.FLOAT16 else "float32"
            lines.append(" ".join([name, str(len(node.input) - 1), *fields]))
    return "\n".join(lines) + "\n"


def loader_check(headers: Headers, libnvinfer_dir: Path, out: Path) -> Path:
    """tests/plugins/trt_loader_check.cpp compiled against ``headers`` and linked against the
    ``libnvinfer.so.<major>`` in ``libnvinfer_dir`` (the stand-in, or TensorRT's own)."""
    run(
        [
            cxx(),
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Wno-deprecated-declarations",
            f"-isystem{headers.include}",
            f"-isystem{CUDA_HOME / 'include'}",
            f"-I{TEST_SOURCES}",
            TEST_SOURCES / "trt_loader_check.cpp",
            f"-L{libnvinfer_dir}",
            f"-l:libnvinfer.so.{headers.major}",
            f"-Wl,-rpath,{libnvinfer_dir}",
            "-ldl",
            "-o",
            out,
        ]
    )
    return out


def loader_check_args(library: Path, cases: Path) -> list[str]:
    """trt_loader_check's arguments: with ``gpu`` where there is one (enqueue is then left to the
    GPU check, tests/test_plugin_enqueue_gpu.py)."""
    return [str(library), str(cases), *(["gpu"] if gpu_architecture() else [])]
