"""maskrt.plugins.load(): where it looks, what it loads, and its errors (no TensorRT needed: the
libraries here are stand-ins built with the host C++ compiler into pytest's tmp dir)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tools import cxx

import maskrt.plugins as plugins
from maskrt.errors import MaskrtError


def _shared_library(path: Path, source: str) -> Path:
    src = path.with_suffix(".cpp")
    src.write_text(source)
    done = subprocess.run(
        [cxx(), "-shared", "-fPIC", str(src), "-o", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(autouse=True)
def _fresh_loader(monkeypatch):
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)


def test_default_search_order():
    package = Path(plugins.__file__).resolve().parent
    assert plugins.candidate_paths() == [
        package / "build" / "libmaskrt_plugins.so",
        package / "libmaskrt_plugins.so",
    ]


def test_missing_library_names_every_searched_path(monkeypatch, tmp_path):
    monkeypatch.setattr(plugins, "_PACKAGE_DIR", tmp_path)
    with pytest.raises(MaskrtError) as info:
        plugins.load()
    message = str(info.value)
    assert str(tmp_path / "build" / "libmaskrt_plugins.so") in message
    assert str(tmp_path / "libmaskrt_plugins.so") in message
    assert "cmake" in message


def test_env_var_is_the_only_place_searched_when_set(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "libmaskrt_plugins.so"
    monkeypatch.setenv(plugins.ENV_VAR, str(missing))
    assert plugins.candidate_paths() == [missing]
    with pytest.raises(MaskrtError, match="MASKRT_PLUGIN_LIB is set") as info:
        plugins.load()
    assert str(missing) in str(info.value)


def test_not_a_shared_library(monkeypatch, tmp_path):
    bogus = tmp_path / "libmaskrt_plugins.so"
    bogus.write_text("not an ELF file")
    monkeypatch.setenv(plugins.ENV_VAR, str(bogus))
    with pytest.raises(MaskrtError, match="cannot load"):
        plugins.load()


def test_library_without_the_entry_point(monkeypatch, tmp_path):
    lib = _shared_library(
        tmp_path / "libother.so", 'extern "C" int something_else() { return 1; }\n'
    )
    monkeypatch.setenv(plugins.ENV_VAR, str(lib))
    with pytest.raises(MaskrtError, match="not maskrt's plugin library"):
        plugins.load()


def test_registration_refused(monkeypatch, tmp_path):
    lib = _shared_library(
        tmp_path / "librefuses.so", 'extern "C" bool initMaskrtPlugins(void*) { return false; }\n'
    )
    monkeypatch.setenv(plugins.ENV_VAR, str(lib))
    with pytest.raises(MaskrtError, match="registering"):
        plugins.load()


def test_loads_once_globally_and_returns_the_path(monkeypatch, tmp_path):
    lib = _shared_library(
        tmp_path / "libmaskrt_plugins.so",
        (
            "static int calls = 0;\n"
            'extern "C" bool initMaskrtPlugins(void* logger) { ++calls; return logger == nullptr; }\n'
            'extern "C" int init_calls() { return calls; }\n'
        ),
    )
    monkeypatch.setattr(plugins, "_PACKAGE_DIR", tmp_path)  # found "next to the package"
    assert plugins.load() == lib.resolve()
    assert plugins.load() == lib.resolve()
    assert plugins._loaded[lib.resolve()].init_calls() == 1
    # build/ wins over the package directory
    built = tmp_path / "build"
    built.mkdir()
    shutil.copy(lib, built / "libmaskrt_plugins.so")
    assert plugins.find_library() == (built / "libmaskrt_plugins.so").resolve()
