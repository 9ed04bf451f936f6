"""The plugin library's own ``enqueue()`` on a GPU, without TensorRT: the library built with CMake
for this GPU's architecture (against the stand-in ``libnvinfer``) and driven by
tests/plugins/trt_enqueue_check.cpp as an engine drives it: created through its creator in the
build phase, serialized, re-created in the runtime phase, one plugin per execution context; then
``enqueue`` on GPU memory on two streams at once and inside a CUDA graph capture (replayed on new
inputs in place), float32 and float16, every output against the CPU reference loops
(tests/plugins/roi_align_host.cpp). Where compute-sanitizer is found, the same run at tiny sizes
under ``memcheck`` and ``racecheck``.

The GPU tests (marker ``gpu``) skip without a GPU; the check is compiled on every machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tensorrt_toolchain import (
    HEADERS,
    SRC,
    TEST_SOURCES,
    PluginBuild,
    cmake_build,
    cudart_dir,
    gpu_architecture,
    need,
    run,
)
from tools import CUDA_HOME, compute_sanitizer, cxx


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> PluginBuild:
    """The CMake build against the newest headers, for this GPU (sm_80 without one)."""
    headers = need(HEADERS[-1] if HEADERS else None)
    return cmake_build(headers, tmp_path_factory.mktemp("enqueue-plugin"))


@pytest.fixture(scope="module")
def enqueue_check(build, tmp_path_factory) -> Path:
    """trt_enqueue_check, warnings as errors, linked against the stand-in and CUDA's runtime."""
    cuda_lib = cudart_dir()
    exe = tmp_path_factory.mktemp("enqueue-check") / "trt_enqueue_check"
    run(
        [
            cxx(),
            "-std=c++17",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-deprecated-declarations",
            f"-isystem{build.headers.include}",
            f"-isystem{CUDA_HOME / 'include'}",
            f"-I{SRC}",
            f"-I{TEST_SOURCES}",
            TEST_SOURCES / "trt_enqueue_check.cpp",
            TEST_SOURCES / "roi_align_host.cpp",
            f"-L{build.standin.parent}",
            f"-l:{build.standin.name}",
            f"-Wl,-rpath,{build.standin.parent}",
            f"-L{cuda_lib}",
            "-lcudart",
            f"-Wl,-rpath,{cuda_lib}",
            "-ldl",
            "-o",
            exe,
        ]
    )
    return exe


def _passed(done: subprocess.CompletedProcess) -> bool:
    return re.search(r"^OK \d+ checks$", done.stdout, re.MULTILINE) is not None


def test_the_enqueue_check_builds_and_needs_a_gpu(enqueue_check, build):
    """On every machine the check compiles without a warning; without a GPU it refuses to run,
    saying why, before touching the plugin."""
    if gpu_architecture() is not None:
        pytest.skip("a GPU is here: the gpu tests below run the check")
    done = subprocess.run(
        [enqueue_check, build.library], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "FAILED: no CUDA device" in done.stdout, done.stdout


@pytest.mark.gpu
def test_enqueue_on_gpu_memory_two_streams_and_a_graph(enqueue_check, build):
    done = run([enqueue_check, build.library], timeout=300)
    assert _passed(done), done.stdout + done.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_enqueue_under_compute_sanitizer(enqueue_check, build, tool):
    sanitizer = compute_sanitizer()
    done = run(
        [sanitizer, "--tool", tool, "--error-exitcode", "3", enqueue_check, build.library, "tiny"],
        timeout=600,
    )
    assert _passed(done), done.stdout + done.stderr
