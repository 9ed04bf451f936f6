"""maskrt's TensorRT plugins: the multi-level RoIAlign plugin library and its loader.

``load()`` finds ``libmaskrt_plugins.so`` (built from ``plugins/`` with CMake, see
``plugins/README.md``), loads it into the process with ``RTLD_GLOBAL`` and registers its plugin
creator (``MaskrtMultiLevelRoIAlign``, version "1", namespace "") with TensorRT's global plugin
registry, so that the ONNX parser and engine deserialization find it. ``import_tensorrt()`` is the
one place maskrt imports TensorRT's Python bindings (engine building in ``maskrt.export.tensorrt``,
running in ``maskrt.runtime.backends.tensorrt_engine``). Importing this package needs neither
TensorRT nor a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from pathlib import Path
from types import ModuleType

from maskrt.errors import MaskrtError

LIBRARY_NAME = "libmaskrt_plugins.so"
ENV_VAR = "MASKRT_PLUGIN_LIB"
PLUGIN_NAME = "MaskrtMultiLevelRoIAlign"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""

_PACKAGE_DIR = Path(__file__).resolve().parent
_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL] = {}


def import_tensorrt() -> ModuleType:
    """TensorRT's Python bindings, or a MaskrtError saying where TensorRT comes from. The import
    itself is the test: a ``tensorrt`` that imports but lacks the bindings (a stubs-only or empty
    package makes ``importlib.util.find_spec("tensorrt")`` true) is refused too."""
    try:
        import tensorrt
    except ImportError as exc:
        problem = str(exc)
    else:
        if hasattr(tensorrt, "Runtime") and hasattr(tensorrt, "__version__"):
            return tensorrt
        where = getattr(tensorrt, "__file__", None) or list(getattr(tensorrt, "__path__", []))
        problem = f"the 'tensorrt' found at {where} is not TensorRT's Python bindings"
    raise MaskrtError(
        f"TensorRT is not installed here ({problem}); it ships in the GPU Docker image "
        f"(`docker compose up`), or install NVIDIA's tensorrt wheel (pip install "
        f"'maskrt[tensorrt]' with https://pypi.nvidia.com reachable)"
    )


def tensorrt_importable() -> bool:
    """Whether :func:`import_tensorrt` succeeds (it imports TensorRT)."""
    try:
        import_tensorrt()
    except MaskrtError:
        return False
    return True


def candidate_paths() -> list[Path]:
    """Where ``load()`` looks, in order: ``$MASKRT_PLUGIN_LIB`` alone when it is set; otherwise
    ``plugins/build/`` (the CMake build directory of a source checkout), then next to this package
    (an installed copy)."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return [Path(explicit).expanduser()]
    return [_PACKAGE_DIR / "build" / LIBRARY_NAME, _PACKAGE_DIR / LIBRARY_NAME]


def find_library() -> Path:
    """The plugin library's path; ``MaskrtError`` naming every searched path when there is none."""
    searched = candidate_paths()
    for path in searched:
        if path.is_file():
            return path.resolve()
    where = ", ".join(str(p) for p in searched)
    hint = (
        f"{ENV_VAR} is set but names no file"
        if os.environ.get(ENV_VAR)
        else f"build it with: cmake -S plugins -B plugins/build -DTENSORRT_ROOT=<TensorRT dir> && "
        f"cmake --build plugins/build -j, or set {ENV_VAR}"
    )
    raise MaskrtError(
        f"TensorRT plugin library {LIBRARY_NAME} not found (searched: {where}); {hint}"
    )


def load() -> Path:
    """Load the plugin library once per process and register its creator with TensorRT's global
    plugin registry; returns the library's path. Raises ``MaskrtError`` when the library is missing,
    cannot be loaded (e.g. TensorRT's ``libnvinfer`` is not installed) or refuses to register."""
    path = find_library()
    with _lock:
        if path in _loaded:
            return path
        # The Python tensorrt wheel keeps libnvinfer outside the loader's search path; importing
        # it first puts libnvinfer in the process, which then satisfies the plugin's dependency.
        with contextlib.suppress(MaskrtError):
            import_tensorrt()
        try:
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise MaskrtError(f"cannot load the TensorRT plugin library {path}: {exc}") from exc
        try:
            init = lib.initMaskrtPlugins
        except AttributeError as exc:
            raise MaskrtError(
                f"{path} is not maskrt's plugin library (no initMaskrtPlugins entry point)"
            ) from exc
        init.restype = ctypes.c_bool
        init.argtypes = [ctypes.c_void_p]
        if not init(None):
            raise MaskrtError(
                f"{path}: registering the {PLUGIN_NAME} plugin creator with TensorRT failed "
                "(see TensorRT's log)"
            )
        _loaded[path] = lib
    return path
