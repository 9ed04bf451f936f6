"""Compile checks of plugins/ that need no GPU: every CUDA translation unit really compiles its
device code (nvcc -c for sm_80), the kernel stays free of TensorRT headers, and the TensorRT plugin
class compiles where TensorRT's headers are found. Build outputs go to pytest's tmp dir."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
SRC = PLUGINS / "src"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
CU_FILES = sorted(PLUGINS.rglob("*.cu"))


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    fallback = CUDA_HOME / "bin" / "nvcc"
    return str(fallback) if fallback.is_file() else None


def tensorrt_include_dir() -> Path | None:
    """NvInfer.h's directory: $TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include, then the usual places."""
    candidates = []
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        candidates.append(Path(os.environ["TENSORRT_INCLUDE_DIR"]))
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    candidates += [
        Path("/usr/include/x86_64-linux-gnu"),
        Path("/usr/include/aarch64-linux-gnu"),
        Path("/usr/include"),
        Path("/usr/local/tensorrt/include"),
        Path("/opt/tensorrt/include"),
    ]
    for path in candidates:
        if (path / "NvInfer.h").is_file():
            return path
    return None


NO_TRT_REASON = (
    "TensorRT headers (NvInfer.h) not found: set TENSORRT_ROOT or TENSORRT_INCLUDE_DIR; looked in "
    "$TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include, /usr/include[/<arch>], /usr/local/tensorrt/include, "
    "/opt/tensorrt/include"
)


@pytest.fixture
def trt_toolchain() -> tuple[Path, str]:
    """TensorRT's include directory and a host C++ compiler, or a skip naming the missing one."""
    include = tensorrt_include_dir()
    if include is None:
        pytest.skip(NO_TRT_REASON)
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++ / c++)")
    return include, cxx


def test_there_are_kernel_translation_units():
    assert SRC / "roi_align_kernel.cu" in CU_FILES


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_cuda_translation_unit_compiles_device_code(source, tmp_path):
    compiler = nvcc()
    if compiler is None:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME/bin)")
    obj = tmp_path / (source.stem + ".o")
    cmd = [
        compiler,
        "-c",
        "-std=c++17",
        "-O2",
        "-arch=sm_80",
        "-Xcompiler=-Wall",
        f"-I{SRC}",
        str(source),
        "-o",
        str(obj),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    # device code was generated, not only host stubs: the object embeds a fat binary (with sm_80
    # machine code, where cuobjdump can list it)
    assert b".nv_fatbin" in obj.read_bytes()
    cuobjdump = shutil.which("cuobjdump") or str(CUDA_HOME / "bin" / "cuobjdump")
    if Path(cuobjdump).is_file():
        listing = subprocess.run(
            [cuobjdump, "--list-elf", str(obj)], capture_output=True, text=True
        )
        assert "sm_80" in listing.stdout, listing.stdout + listing.stderr


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_kernel_translation_units_do_not_need_tensorrt(source):
    """Kernel TUs build without TensorRT (into the PyTorch extension too): no NvInfer include."""
    text = source.read_text()
    assert not re.search(r'#\s*include\s*[<"]NvInfer', text)
    for header in re.findall(r'#\s*include\s*"([^"]+)"', text):
        assert "NvInfer" not in (SRC / header).read_text(), (
            f"{header} (included by {source.name}) pulls in TensorRT"
        )


def test_tensorrt_plugin_compiles_against_tensorrt_headers(tmp_path, trt_toolchain):
    include, cxx = trt_toolchain
    cmd = [
        cxx,
        "-c",
        "-std=c++17",
        "-O2",
        "-fPIC",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-deprecated-declarations",
        f"-isystem{include}",
        f"-isystem{CUDA_HOME / 'include'}",
        f"-I{SRC}",
        str(SRC / "roi_align_plugin.cpp"),
        "-o",
        str(tmp_path / "roi_align_plugin.o"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"


def test_tensorrt_plugin_behaviour_on_host(tmp_path, trt_toolchain):
    """plugins/testing/trt_plugin_check.cpp drives the plugin through getCreators() as TensorRT
    would (fields, formats, types, shapes, serialization round trip, clone, enqueue with the kernel
    emulated on the CPU); it needs TensorRT's headers, not its libraries."""
    include, cxx = trt_toolchain
    cudart_dir = next(
        (
            d
            for d in (
                CUDA_HOME / "lib64",
                CUDA_HOME / "lib",
                CUDA_HOME / "targets/x86_64-linux/lib",
            )
            if any(d.glob("libcudart.so*"))
        ),
        None,
    )
    if cudart_dir is None:
        pytest.skip(f"libcudart not found under {CUDA_HOME}")
    exe = tmp_path / "trt_plugin_check"
    cmd = [
        cxx,
        "-std=c++17",
        "-O1",
        "-g",
        "-Wall",
        "-Wextra",
        "-Wno-deprecated-declarations",
        f"-isystem{include}",
        f"-isystem{CUDA_HOME / 'include'}",
        f"-I{SRC}",
        str(PLUGINS / "testing" / "trt_plugin_check.cpp"),
        str(SRC / "roi_align_plugin.cpp"),
        str(SRC / "roi_align_host.cpp"),
        f"-L{cudart_dir}",
        "-lcudart",
        f"-Wl,-rpath,{cudart_dir}",
        "-o",
        str(exe),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("OK"), run.stdout + run.stderr


@pytest.mark.slow
def test_torch_extension_builds_without_tensorrt(tmp_path, monkeypatch):
    """The kernel's PyTorch binding compiles and imports on a machine without GPU or TensorRT (what
    the GPU tests and bench/roi_align_gpu.py run); calling it with CPU tensors is refused."""
    if nvcc() is None:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME/bin)")
    import torch

    from maskrt.plugins.torch_ext import load_extension

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")  # one architecture keeps the build short
    ext = load_extension(str(tmp_path / "ext"))
    with pytest.raises(RuntimeError, match="rois must be a CUDA tensor"):
        ext.multilevel_roi_align(
            torch.zeros(1, 2, 4), [torch.zeros(1, 3, 8, 8)], 7, 2, False, 224, 4, 2
        )
