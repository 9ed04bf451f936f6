"""The TensorRT-facing modules against TensorRT's Python API, without TensorRT: every name they take
from ``tensorrt`` (``trt.X.Y``, and the methods and properties of the builder, network, parser,
config, profile, engine and context objects) exists in TensorRT 11.1's bindings or is guarded by
``hasattr``. (mypy checks these modules with the rest: ``make typecheck``, part of ``make test``.)

The names come from TensorRT 11.1's binding sources (tests/data/tensorrt11_python_names.txt says
how). PyPI's ``tensorrt-stubs`` (10.8 to 10.13) cannot be used: its ``tensorrt_bindings/tensorrt.pyi``
is not valid Python (a parameter named ``in``, defaults before non-defaults), and mypy stops on it;
``tensorrt`` is therefore untyped (``Any``) for mypy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES_FILE = Path(__file__).parent / "data" / "tensorrt11_python_names.txt"
MODULES = [
    ROOT / "export" / "tensorrt.py",
    ROOT / "export" / "cache.py",
    ROOT / "runtime" / "backends" / "tensorrt_engine.py",
    ROOT / "plugins" / "__init__.py",
]
# names bound to TensorRT's module or to objects it returns, in MODULES
TRT_VALUES = {"trt", "tensorrt", "builder", "network", "parser", "config", "profile", "context"}
TRT_ATTRIBUTES = {"engine", "context", "_runtime"}  # self.<these>


def _names() -> set[str]:
    lines = NAMES_FILE.read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def _is_trt(node: ast.AST) -> bool:
    """Whether ``node`` evaluates to TensorRT's module or one of its objects."""
    if isinstance(node, ast.Name):
        return node.id in TRT_VALUES
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr in TRT_ATTRIBUTES
        return _is_trt(node.value)
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name == "import_tensorrt" or _is_trt(func)
    return False


def unknown_names(source: str, known: set[str]) -> list[str]:
    """``X.name`` uses on TensorRT values whose ``name`` TensorRT does not define and no
    ``hasattr(..., "name")`` in the module guards."""
    tree = ast.parse(source)
    guarded = {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "hasattr"
        and len(node.args) == 2
        and isinstance(node.args[1], ast.Constant)
    }
    return sorted(
        {
            f"line {node.lineno}: .{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and _is_trt(node.value)
            and node.attr not in known | guarded
            and not (node.attr.startswith("__") and node.attr != "__version__")
        }
    )


def test_the_checker_finds_a_name_tensorrt_11_removed():
    known = _names()
    assert {"Builder", "create_network", "execute_async_v3", "STRONGLY_TYPED"} <= known
    assert "FP16" not in known  # BuilderFlag.FP16: TensorRT 11 removed weak typing
    assert unknown_names("config.set_flag(trt.BuilderFlag.FP16)\n", known) == ["line 1: .FP16"]
    guarded = "if hasattr(trt.BuilderFlag, 'FP16'):\n    config.set_flag(trt.BuilderFlag.FP16)\n"
    assert unknown_names(guarded, known) == []


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_tensorrt_name_exists_in_tensorrt_11(module):
    assert unknown_names(module.read_text(), _names()) == []
