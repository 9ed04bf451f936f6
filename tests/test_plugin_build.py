"""The plugin library as CMake builds it, per TensorRT header version, against a generated stand-in
``libnvinfer.so.<major>`` (tests/plugins/libnvinfer_standin.cpp): no warnings, exactly the three
entry points exported, ``NEEDED libnvinfer.so.<major>``; headers and library of different majors
refused at configure time and at load time; and the built library loaded and driven the way
TensorRT's ``loadLibrary`` and ONNX parser do (tests/plugins/trt_loader_check.cpp) with the plugin
attributes of freshly exported tensorrt-target ONNX files. Also the kernel's register budget from
``nvcc -Xptxas -v``. Nothing here needs a GPU or TensorRT itself."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from tensorrt_toolchain import (
    HEADER_PARAMS,
    HEADERS,
    PLUGINS,
    SRC,
    loader_check,
    loader_check_args,
    need,
    plugin_cases,
    run,
    standin_libnvinfer,
)
from tools import cmake, missing, nvcc

ENTRY_POINTS = ["getCreators", "initMaskrtPlugins", "setLoggerFinder"]


def _build(plugin_builds, headers):
    return plugin_builds[need(headers).version]


@pytest.mark.parametrize("headers", HEADER_PARAMS)
def test_cmake_build_is_clean_and_exports_only_the_entry_points(plugin_builds, headers):
    build = _build(plugin_builds, headers)
    assert f"TensorRT {build.headers.major}:" in build.log
    assert not re.search(r"warning", build.log, re.IGNORECASE), build.log
    exported = run(["nm", "-D", "--defined-only", build.library]).stdout
    names = sorted(
        line.split()[-1] for line in exported.splitlines() if " T " in line or " W " in line
    )
    assert names == ENTRY_POINTS, exported
    needed = re.findall(
        r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run(["readelf", "-d", build.library]).stdout
    )
    assert f"libnvinfer.so.{build.headers.major}" in needed
    assert not any(
        n.startswith("libcudart") for n in needed
    )  # the CUDA runtime is linked statically


def test_configure_refuses_headers_and_library_of_different_majors(tmp_path):
    if len({h.major for h in HEADERS}) < 2:
        missing("needs TensorRT headers of two major versions (10.x and 11.x)")
    old, new = HEADERS[0], HEADERS[-1]
    library = standin_libnvinfer(new, tmp_path / "lib")
    done = subprocess.run(
        [
            cmake(),
            "-S",
            str(PLUGINS),
            "-B",
            str(tmp_path / "build"),
            f"-DTENSORRT_INCLUDE_DIR={old.include}",
            f"-DTENSORRT_LIBRARY={library}",
            "-DCMAKE_CUDA_ARCHITECTURES=80-real",
            f"-DCMAKE_CUDA_COMPILER={nvcc()}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    message = " ".join(done.stderr.split())  # CMake wraps its messages
    assert done.returncode != 0
    assert f"are version {old.major} but" in message and f"is version {new.major}:" in message


@pytest.mark.parametrize("headers", HEADER_PARAMS)
def test_library_of_another_major_is_refused_at_load_time(plugin_builds, headers, tmp_path):
    """A plugin built for major N, in a process whose libnvinfer reports another major: no creator,
    no registration, a message instead of a crash."""
    build = _build(plugin_builds, headers)
    other = 110100 if build.headers.major == 10 else 101400
    lying = standin_libnvinfer(build.headers, tmp_path / "lib", version=other)
    script = (
        "import ctypes, sys\n"
        f"ctypes.CDLL({str(lying)!r}, mode=ctypes.RTLD_GLOBAL)\n"
        f"lib = ctypes.CDLL({str(build.library)!r})\n"
        "lib.initMaskrtPlugins.restype = ctypes.c_bool\n"
        "n = ctypes.c_int32(-1)\n"
        "lib.getCreators.restype = ctypes.c_void_p\n"
        "creators = lib.getCreators(ctypes.byref(n))\n"
        "print(lib.initMaskrtPlugins(None), n.value, creators)\n"
    )
    done = run([sys.executable, "-c", script])
    assert done.stdout.split() == ["False", "0", "None"], done.stdout
    assert f"built against TensorRT {build.headers.major} headers" in done.stderr
    assert f"libnvinfer is TensorRT {other // 10000}" in done.stderr


@pytest.mark.parametrize("headers", HEADER_PARAMS)
def test_built_library_loads_and_runs_like_tensorrt_does(
    plugin_builds, headers, tensorrt_exports, tmp_path
):
    build = _build(plugin_builds, headers)
    cases = tmp_path / "cases.txt"
    cases.write_text(plugin_cases(tensorrt_exports.values()))
    assert cases.read_text().count("float16") == 2 and cases.read_text().count("float32") == 2
    exe = loader_check(build.headers, build.standin.parent, tmp_path / "trt_loader_check")
    done = run([exe, *loader_check_args(build.library, cases)], timeout=120)
    assert done.stdout.startswith("OK"), done.stdout + done.stderr
    assert "[maskrt]" not in done.stderr  # every message went to TensorRT's logger


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernel_register_budget(arch, tmp_path):
    """``nvcc -Xptxas -v``: every kernel instantiation without spills and with registers that let
    ``__launch_bounds__``' minimum number of blocks be resident (the launcher sizes its grid from the
    occupancy the GPU reports)."""
    compiler = nvcc()
    source = SRC / "roi_align_kernel.cu"
    threads, min_blocks = _launch_bounds(source)
    done = run(
        [
            compiler,
            "-c",
            "-std=c++17",
            "-O3",
            f"-arch={arch}",
            "-Xptxas",
            "-v",
            f"-I{SRC}",
            source,
            "-o",
            tmp_path / "kernel.o",
        ]
    )
    report = done.stdout + done.stderr
    kernels = re.findall(r"Compiling entry function '(\w+)' for '(\w+)'", report)
    usage = [int(r) for r in re.findall(r"Used (\d+) registers", report)]
    spills = [
        (int(a), int(b))
        for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    ]
    assert len(kernels) == 6 and {a for _, a in kernels} == {arch}, report  # fp32/fp16 x grid 0/1/2
    assert len(usage) == len(kernels) and spills and all(s == (0, 0) for s in spills), report
    budget = 65536 // (threads * min_blocks)  # registers per thread for min_blocks resident blocks
    assert max(usage) <= budget, report
    print(f"{arch}: registers {min(usage)}..{max(usage)} (budget {budget}), spills 0")


def _launch_bounds(source) -> tuple[int, int]:
    text = source.read_text()
    (threads, blocks) = re.search(r"__launch_bounds__\((\w+), (\d+)\)", text).groups()
    value = (
        int(threads)
        if threads.isdigit()
        else int(
            re.search(
                rf"constexpr int {threads} = (\d+);", (SRC / "roi_align_kernel.cuh").read_text()
            )[1]
        )
    )
    return value, int(blocks)
