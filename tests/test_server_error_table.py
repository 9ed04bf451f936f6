"""docs/server.md's error table is what the server does: its codes and statuses are exactly those
the source constructs (read with ``ast``, so a new code without a row fails here), and each code a
plain request can provoke is provoked over HTTP, expecting that row's status and code."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import big_png, png, serving_checkpoint, shapes_image, start_server

from maskrt.server.errors import STATUS

ROOT = Path(__file__).resolve().parents[1]
# where the server's answers are made: the HTTP app (and the Ray Serve one), the serving runtime,
# and the command that runs them
SOURCES = [*sorted((ROOT / "server").rglob("*.py")), *sorted((ROOT / "runtime").rglob("*.py"))]
SOURCES.append(ROOT / "maskrt" / "cli" / "serve.py")
KEY = "table-test-key"
HEADERS = {"X-API-Key": KEY}
MAX_UPLOAD = 400_000
# the runtime's error classes by name, with the HTTP status the server's one table gives each
RUNTIME_ERRORS = {kind.__name__: status for kind, status in STATUS.items()}


def error_table() -> dict[str, int]:
    """code -> status, from the table under "## Errors" in docs/server.md."""
    rows = {}
    for line in (ROOT / "docs" / "server.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"\d{3}(, \d{3})*", cells[0]):
            continue
        statuses = [int(s) for s in cells[0].split(", ")]
        codes = re.findall(r"`([a-z_]+)`", cells[1])
        pairs = (
            zip(codes, statuses)
            if len(statuses) == len(codes)
            else ((c, statuses[0]) for c in codes)
        )
        rows.update(pairs)
    return rows


Emitted = dict[str, set[int | None]]  # code -> its statuses (None: not a literal in the source)


def emitted_codes(sources: dict[str, str]) -> tuple[Emitted, list[str]]:
    """Every error code the source constructs, and the constructions whose code cannot be read.

    ``sources``: file name -> Python source. Three constructions are read:

    1. any call with a keyword argument ``code=``;
    2. ``ApiError(...)`` (or ``x.ApiError(...)``), and ``super().__init__(...)`` in a class
       based on ``ApiError``: the code is the second positional argument (else ``code=``);
    3. a runtime error (``InvalidImage(...)``, ``Unavailable(...)``, ...: the classes of
       ``maskrt.server.errors.STATUS``): the code is the first positional argument (else
       ``code=``), the status the one that table gives the class.

    A code passed on from another error (``exc.code``) is that error's, read where it is made.
    Otherwise the code must be a string literal, or a name assigned exactly once in the enclosing
    function:
    then every string literal of that assignment is a code, the values of a dict literal
    ``{status: code}`` with their keys as statuses. A status is the call's ``status=`` keyword,
    else its first positional argument, when that is an int literal (else None). A construction
    whose code is neither is returned unread, as ``name:line``."""
    codes: Emitted = {}
    unread = []
    for name, text in sources.items():
        tree = ast.parse(text, name)
        for scope, call in _calls(tree):
            keyword = next((k.value for k in call.keywords if k.arg == "code"), None)
            runtime = RUNTIME_ERRORS.get(ast.unparse(call.func).rpartition(".")[2])
            if keyword is None and runtime is None and not _constructs_api_error(call, scope):
                continue
            position = 0 if runtime is not None else 1
            if keyword is None and len(call.args) > position:
                keyword = call.args[position]
            if isinstance(keyword, ast.Attribute) and keyword.attr == "code":
                continue  # another error's code passed on: read where that error is made
            status = runtime if runtime is not None else _status(call)
            found = _codes_of(keyword, status, scope)
            if not found:
                unread.append(f"{name}:{call.lineno}")
            for code, status in found:
                codes.setdefault(code, set()).add(status)
    return codes, unread


def _calls(tree: ast.Module) -> Iterator[tuple[tuple[ast.AST, ...], ast.Call]]:
    """(enclosing function or class nodes, outermost first; call) for every call in ``tree``."""

    def walk(
        node: ast.AST, scope: tuple[ast.AST, ...]
    ) -> Iterator[tuple[tuple[ast.AST, ...], ast.Call]]:
        for child in ast.iter_child_nodes(node):
            inner = (
                (*scope, child)
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                else scope
            )
            if isinstance(child, ast.Call):
                yield scope, child
            yield from walk(child, inner)

    yield from walk(tree, ())


def _status(call: ast.Call) -> int | None:
    keyword = next((k.value for k in call.keywords if k.arg == "status"), None)
    return _literal(keyword if keyword is not None else next(iter(call.args), None), int)


def _constructs_api_error(call: ast.Call, scope: tuple[ast.AST, ...]) -> bool:
    func = call.func
    if isinstance(func, ast.Name) and func.id == "ApiError":
        return True
    if isinstance(func, ast.Attribute) and func.attr == "ApiError":
        return True
    in_subclass = any(
        isinstance(s, ast.ClassDef) and any(ast.unparse(b).endswith("ApiError") for b in s.bases)
        for s in scope
    )
    return (
        in_subclass
        and isinstance(func, ast.Attribute)
        and func.attr == "__init__"
        and ast.unparse(func.value) == "super()"
    )


def _codes_of(
    arg: ast.expr | None, status: int | None, scope: tuple[ast.AST, ...]
) -> list[tuple[str, int | None]]:
    """(code, status) pairs an argument gives: a string literal, or a local name's literals."""
    if _literal(arg, str) is not None:
        return [(_literal(arg, str), status)]
    if not isinstance(arg, ast.Name) or not scope:
        return []
    values = [
        node.value
        for node in ast.walk(scope[-1])
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [arg.id]
    ]
    if len(values) != 1:
        return []
    keyed = {
        id(v): _literal(k, int)
        for node in ast.walk(values[0])
        if isinstance(node, ast.Dict)
        for k, v in zip(node.keys, node.values)
        if _literal(k, int) is not None
    }
    return [
        (node.value, keyed.get(id(node), status))
        for node in ast.walk(values[0])
        if _literal(node, str) is not None
    ]


def _literal(node: ast.AST | None, kind: type):
    """The value of a literal of type ``kind`` (bools are no ints), else None."""
    if isinstance(node, ast.Constant) and type(node.value) is kind:
        return node.value
    return None


def _multipart(fields: dict[str, tuple] | list[tuple[str, tuple]]) -> dict:
    return {"files": fields, "headers": HEADERS}


# code -> (method, path, httpx request arguments)
IMAGE = png(shapes_image())
REQUESTS = {
    "empty_body": ("POST", "/predict", {"headers": HEADERS}),
    "empty_image": ("POST", "/predict", _multipart({"image": ("a.png", b"", "image/png")})),
    "invalid_image": (
        "POST",
        "/predict",
        {"content": b"not an image", "headers": {**HEADERS, "Content-Type": "image/png"}},
    ),
    "invalid_multipart": (
        "POST",
        "/predict",
        {
            "content": b"this is no multipart body",
            "headers": {**HEADERS, "Content-Type": "multipart/form-data; boundary=zzz"},
        },
    ),
    "unauthorized": ("POST", "/predict", {"files": {"image": ("a.png", IMAGE, "image/png")}}),
    "not_found": ("GET", "/nope", {}),
    "method_not_allowed": ("GET", "/predict", {}),
    "body_too_large": (
        "POST",
        "/predict",
        {"content": b"x" * (MAX_UPLOAD + 1), "headers": {**HEADERS, "Content-Type": "image/png"}},
    ),
    "image_too_large": (
        "POST",
        "/predict",
        {"content": big_png(1000, 1000), "headers": {**HEADERS, "Content-Type": "image/png"}},
    ),
    "too_many_images": (
        "POST",
        "/predict/batch",
        {"files": [("images", ("a.png", IMAGE, "image/png"))] * 3, "headers": HEADERS},
    ),
    "unsupported_media_type": (
        "POST",
        "/predict",
        {"content": b"hello", "headers": {**HEADERS, "Content-Type": "text/plain"}},
    ),
    "invalid_parameter": (
        "POST",
        "/predict?score_threshold=2",
        _multipart({"image": ("a.png", IMAGE, "image/png")}),
    ),
    "missing_field": (
        "POST",
        "/predict",
        {
            "content": b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\n1\r\n--b--\r\n',
            "headers": {**HEADERS, "Content-Type": "multipart/form-data; boundary=b"},
        },
    ),
    "invalid_field": (
        "POST",
        "/predict",
        _multipart([("image", ("a.png", IMAGE, "image/png"))] * 2),  # one image per /predict
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = {
        "model": serving_checkpoint(),
        "api_keys": KEY,
        "max_upload_bytes": MAX_UPLOAD,
        "max_image_pixels": 300_000,
        "max_queue": 2,
    }
    server = start_server(tmp_path_factory, "errors", settings)
    yield server
    server.stop()


def test_the_table_has_every_code_the_server_emits_with_its_status():
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in SOURCES}
    emitted, unread = emitted_codes(sources)
    assert not unread, f"error codes the test cannot read (give a string literal): {unread}"
    table = error_table()
    undocumented, unknown = sorted(set(emitted) - set(table)), sorted(set(table) - set(emitted))
    assert not undocumented, f"emitted, but not in docs/server.md's table: {undocumented}"
    assert not unknown, f"in docs/server.md's table, but never emitted: {unknown}"
    wrong = {c: (sorted(s - {None}), table[c]) for c, s in emitted.items() if s - {None, table[c]}}
    assert not wrong, f"code: (statuses in the source, status in the table): {wrong}"


def test_the_extraction_reads_every_form_it_documents():
    """What :func:`emitted_codes` matches, on a made-up module, and what it reports unread."""
    source = """
class Refused(ApiError):
    def __init__(self):
        super().__init__(413, "a_too_big", "...")

class DomainError(Exception):
    pass

def f(exc, name):
    errors.ApiError(400, "b_bad", "...")
    DomainError("...", code="c_domain", status=409)
    DomainError("...", code=name)
    code = {404: "d_missing", 405: "e_method"}.get(exc.status, "f_other")
    ApiError(exc.status, code, "...")
    ApiError(500, name, "...")
    ApiError(502, "g_" + name, "...")
    Unavailable("h_busy", "...", retry_after_s=1)
    raise errors.TooLarge("i_huge", "...")
    ApiError(STATUS[type(exc)], exc.code, "...")
"""
    codes, unread = emitted_codes({"made_up.py": source})
    assert codes == {
        "a_too_big": {413},
        "b_bad": {400},
        "c_domain": {409},
        "d_missing": {404},
        "e_method": {405},
        "f_other": {None},
        "h_busy": {503},
        "i_huge": {413},
    }
    assert unread == ["made_up.py:12", "made_up.py:15", "made_up.py:16"]


@pytest.mark.parametrize("code", sorted(REQUESTS))
def test_the_server_answers_as_the_table_says(server, code):
    status = error_table()[code]
    method, path, kwargs = REQUESTS[code]
    with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as client:
        answer = client.request(method, path, **kwargs)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
