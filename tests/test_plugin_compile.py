"""Compile checks of plugins/ that need no GPU: every CUDA translation unit really compiles its
device code (nvcc -c for sm_80), the kernel stays free of TensorRT headers, and, once per TensorRT
header version found (tests/tensorrt_toolchain.py), the TensorRT plugin class compiles without
warnings and behaves as TensorRT expects on the host. Under CI=true a missing compiler or missing
headers fail instead of skipping (tests/tools.py). Build outputs go to pytest's tmp dir."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tensorrt_toolchain import HEADER_PARAMS, PLUGINS, SRC, TEST_SOURCES, cudart_dir, need, run
from tools import CUDA_HOME, cuobjdump, cxx, nvcc

CU_FILES = sorted(PLUGINS.rglob("*.cu"))
# the PyTorch extension's own TUs include ATen, so they compile with torch's headers (and its C++20)
TORCH_TUS = {p for p in CU_FILES if "<ATen/" in p.read_text()}


def language_flags(source: Path) -> list[str]:
    """What a TU needs beyond nvcc's defaults: torch's headers for the extension's own TUs."""
    if source not in TORCH_TUS:
        return ["-std=c++17"]
    from torch.utils import cpp_extension

    return ["-std=c++20"] + [f"-isystem={p}" for p in cpp_extension.include_paths("cuda")]


def test_there_are_kernel_translation_units():
    assert SRC / "roi_align_kernel.cu" in CU_FILES


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_cuda_translation_unit_compiles_device_code(source, tmp_path):
    compiler = nvcc()
    obj = tmp_path / (source.stem + ".o")
    cmd = [
        compiler,
        "-c",
        *language_flags(source),
        "-O2",
        "-arch=sm_80",
        "-Xcompiler=-Wall",
        f"-I{SRC}",
        f"-I{source.parent}",
        str(source),
        "-o",
        str(obj),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    # device code was generated, not only host stubs: the object embeds a fat binary (with sm_80
    # machine code, where cuobjdump can list it)
    assert b".nv_fatbin" in obj.read_bytes()
    listing = subprocess.run([cuobjdump(), "--list-elf", str(obj)], capture_output=True, text=True)
    assert "sm_80" in listing.stdout, listing.stdout + listing.stderr


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_kernel_translation_units_do_not_need_tensorrt(source):
    """Kernel TUs build without TensorRT (into the PyTorch extension too): no NvInfer include."""
    text = source.read_text()
    assert not re.search(r'#\s*include\s*[<"]NvInfer', text)
    for header in re.findall(r'#\s*include\s*"([^"]+)"', text):
        found = source.parent / header if (source.parent / header).is_file() else SRC / header
        assert "NvInfer" not in found.read_text(), (
            f"{header} (included by {source.name}) pulls in TensorRT"
        )


@pytest.mark.parametrize("headers", HEADER_PARAMS)
def test_tensorrt_plugin_compiles_without_warnings(tmp_path, headers):
    """-Werror with -Wall -Wextra -Wpedantic -Wshadow -Wconversion, per TensorRT header version."""
    include = need(headers).include
    run(
        [
            cxx(),
            "-c",
            "-std=c++17",
            "-O2",
            "-fPIC",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Wshadow",
            "-Wconversion",
            "-Werror",
            "-Wno-deprecated-declarations",
            f"-isystem{include}",
            f"-isystem{CUDA_HOME / 'include'}",
            f"-I{SRC}",
            SRC / "roi_align_plugin.cpp",
            "-o",
            tmp_path / "roi_align_plugin.o",
        ]
    )


@pytest.mark.parametrize("headers", HEADER_PARAMS)
def test_tensorrt_plugin_behaviour_on_host(tmp_path, headers):
    """tests/plugins/trt_plugin_check.cpp drives the plugin through getCreators() as TensorRT
    would (fields, formats, types, shapes, serialization round trip, clone, enqueue with the kernel
    emulated on the CPU, errors to TensorRT's logger), per TensorRT header version; it needs the
    headers, not the libraries."""
    include = need(headers).include
    cuda_lib = cudart_dir()
    exe = tmp_path / "trt_plugin_check"
    run(
        [
            cxx(),
            "-std=c++17",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Wno-deprecated-declarations",
            f"-isystem{include}",
            f"-isystem{CUDA_HOME / 'include'}",
            f"-I{SRC}",
            f"-I{TEST_SOURCES}",
            TEST_SOURCES / "trt_plugin_check.cpp",
            SRC / "roi_align_plugin.cpp",
            TEST_SOURCES / "roi_align_host.cpp",
            f"-L{cuda_lib}",
            "-lcudart",
            f"-Wl,-rpath,{cuda_lib}",
            "-o",
            exe,
        ]
    )
    done = run([exe], timeout=300)
    assert done.stdout.startswith("OK"), done.stdout + done.stderr
    assert "[maskrt]" not in done.stderr  # every message went to TensorRT's logger


@pytest.mark.slow
def test_torch_extension_builds_without_tensorrt(tmp_path, monkeypatch):
    """The kernel's PyTorch binding compiles and imports on a machine without GPU or TensorRT (what
    the GPU tests and bench/roi_align_gpu.py run); calling it with CPU tensors is refused."""
    nvcc()  # load_extension compiles the binding with it
    import torch

    from maskrt.plugins.torch_ext import load_extension

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")  # one architecture keeps the build short
    ext = load_extension(str(tmp_path / "ext"))
    with pytest.raises(RuntimeError, match="rois must be a CUDA tensor"):
        ext.multilevel_roi_align(
            torch.zeros(1, 2, 4), [torch.zeros(1, 3, 8, 8)], 7, 2, False, 224, 4, 2
        )
