"""The plugin library in TensorRT's own plugin registry, on a machine without a GPU: TensorRT's lean
runtime from PyPI (``tensorrt-lean-cu13-libs`` and ``-bindings``, the dev extra on Linux x86_64)
has the real ``IPluginRegistry`` and loads plugin libraries without a driver (its ``Runtime``
needs one). Its ``libnvinfer_lean.so.<major>`` takes the name the plugin library links against,
``libnvinfer.so.<major>``, so the plugin calls the real library too (version check, loggers).

- tests/plugins/trt_loader_check.cpp, linked against it: ``IPluginRegistry::loadLibrary`` loads
  the CMake-built library, the creator comes from the registry, and each plugin node of fresh fp32
  and fp16 tensorrt-target exports goes through what the builder and the runtime do: every
  capability interface, shapes and formats, serialization and re-creation in the RUNTIME phase,
  clone, attachToContext (enqueue is the GPU check's: tests/test_plugin_enqueue_gpu.py).
- the Python bindings (``trt.get_plugin_registry().load_library``, what a Python user does): the
  creator's fields, and BUILD-phase plugins from the exporter's attributes.

Under ``CI=true`` a missing lean runtime, compiler or 11.x headers fail the run (tests/tools.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from tensorrt_toolchain import HEADERS, loader_check, loader_check_args, plugin_cases, run
from tools import missing

from maskrt.export.onnx_ops import ROI_ALIGN_ATTRIBUTES

LEAN_MAJOR = 11  # tensorrt-lean-cu13-*==11.4.* (pyproject's dev extra)


def _package_dir(name: str) -> Path:
    """Where the lean runtime's package ``name`` is installed (not imported into pytest)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        missing(
            f"the Python package {name} is not installed (TensorRT's lean runtime: the dev extra "
            f"installs it on Linux x86_64: pip install -e '.[dev]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def lean_libnvinfer(tmp_path_factory) -> Path:
    """A directory where TensorRT's lean library answers to both of its names."""
    library = _package_dir("tensorrt_lean_libs") / f"libnvinfer_lean.so.{LEAN_MAJOR}"
    assert library.is_file(), f"{library} is missing from tensorrt-lean-cu13-libs"
    directory = tmp_path_factory.mktemp("lean")
    for name in (f"libnvinfer.so.{LEAN_MAJOR}", library.name):
        (directory / name).symlink_to(library)
    return directory


@pytest.fixture(scope="module")
def lean_build(plugin_builds):
    """The CMake build of the plugin library against the newest headers of the lean major."""
    headers = [h for h in HEADERS if h.major == LEAN_MAJOR]
    if not headers:
        missing(f"TensorRT {LEAN_MAJOR}.x headers not found (the lean runtime is {LEAN_MAJOR}.x)")
    return plugin_builds[headers[-1].version]


@pytest.fixture(scope="module")
def cases(tensorrt_exports, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "cases.txt"
    path.write_text(plugin_cases(tensorrt_exports.values()))
    return path


def _environment(lean_libnvinfer: Path) -> dict[str, str]:
    """The plugin library's ``libnvinfer.so.<major>`` is the lean library (no stand-in first)."""
    return {**os.environ, "LD_LIBRARY_PATH": str(lean_libnvinfer)}


def test_tensorrts_registry_loads_and_drives_the_plugin(
    lean_build, lean_libnvinfer, cases, tmp_path
):
    _package_dir("tensorrt_lean_bindings")  # the package pair of the dev extra
    exe = loader_check(lean_build.headers, lean_libnvinfer, tmp_path / "trt_registry_check")
    done = run(
        [exe, *loader_check_args(lean_build.library, cases)],
        env=_environment(lean_libnvinfer),
        timeout=300,
    )
    assert done.stdout.startswith("OK"), done.stdout + done.stderr
    version = int(done.stdout.split("libnvinfer ")[1])
    assert "TensorRT's registry" in done.stdout and version // 10000 == LEAN_MAJOR, done.stdout
    assert cases.read_text().count("float16") == 2 and cases.read_text().count("float32") == 2


# Run in a fresh interpreter with the lean library as libnvinfer.so.<major> (LD_LIBRARY_PATH is
# read at start-up). IPluginV3.clone(), like the capability interfaces' methods other than names,
# version, outputs and ids, is in TensorRT's Python bindings only to document the API for plugins
# written in Python: pyPlugin.cpp binds it to a stub that returns nullptr (None) whatever the
# plugin, so it never reaches our clone(). trt_loader_check.cpp calls the real one.
BINDINGS = """
import json, sys
import numpy as np
import tensorrt_lean_bindings as trt

library, cases = sys.argv[1], sys.argv[2]
registry = trt.get_plugin_registry()
registry.load_library(library)
creator = registry.get_creator("MaskrtMultiLevelRoIAlign", "1", "")
found = {
    "version": trt.__version__,
    "kind": creator.interface_info.kind,
    "fields": [(f.name, str(f.type)) for f in creator.field_names],
    "plugins": [],
}
kinds = trt.PluginCapabilityType
for line in open(cases):
    _, _, *pairs = line.split()
    fields = dict(pair.split("=") for pair in pairs)
    collection = trt.PluginFieldCollection([
        trt.PluginField(k, np.array([int(v)], np.int32), trt.PluginFieldType.INT32)
        for k, v in fields.items()
    ])
    plugin = creator.create_plugin("node", collection, trt.TensorRTPhase.BUILD)
    core = plugin.get_capability_interface(kinds.CORE)
    build = plugin.get_capability_interface(kinds.BUILD)
    runtime = plugin.get_capability_interface(kinds.RUNTIME)
    found["plugins"].append({
        "fields": fields,
        "core": [core.plugin_name, core.plugin_version, core.plugin_namespace],
        "kinds": [i.interface_info.kind for i in (core, build, runtime)],
        "outputs": build.num_outputs,
        "timing_cache_id": build.timing_cache_id,
        "clone": repr(plugin.clone()),
    })
print(json.dumps(found))
"""


def test_python_bindings_find_the_creator_and_build_plugins(lean_build, lean_libnvinfer, cases):
    _package_dir("tensorrt_lean_bindings")
    done = run(
        [sys.executable, "-c", BINDINGS, lean_build.library, cases],
        env=_environment(lean_libnvinfer),
        timeout=300,
    )
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["version"].startswith(f"{LEAN_MAJOR}.")
    assert found["kind"] == "PLUGIN CREATOR_V3ONE"
    assert found["fields"] == [[name, "PluginFieldType.INT32"] for name in ROI_ALIGN_ATTRIBUTES]
    assert len(found["plugins"]) == len(cases.read_text().splitlines()) == 4
    for plugin in found["plugins"]:
        assert plugin["core"] == ["MaskrtMultiLevelRoIAlign", "1", ""]
        assert plugin["kinds"] == [
            "PLUGIN_V3ONE_CORE",
            "PLUGIN_V3ONE_BUILD",
            "PLUGIN_V3ONE_RUNTIME",
        ]
        assert plugin["outputs"] == 1
        # the plugin's timing-cache id spells out the attributes it was created with
        fields = plugin["fields"]
        assert plugin["timing_cache_id"] == ",".join(
            f"{name}={fields[name]}" for name in ROI_ALIGN_ATTRIBUTES
        )
        assert plugin["clone"] == "None"  # the bindings' stub (see BINDINGS above)
