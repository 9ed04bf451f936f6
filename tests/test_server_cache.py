"""The artefact cache seen from ``maskrt serve``: a damaged cached export is made again on the next
start, and a read-only cache that holds the export (a volume filled once) is served as it is."""

from __future__ import annotations

import signal

import pytest
from server_harness import Server, png, shapes_image
from tools import without_root_privileges


def serve(tmp_path_factory, settings: dict, name: str, prefix: tuple[str, ...] = ()) -> Server:
    server = Server(tmp_path_factory.mktemp(name), settings, name, prefix)
    try:
        server.wait_ready()
        with server.client() as c:
            r = c.post("/predict", files={"image": ("a.png", png(shapes_image()), "image/png")})
        assert r.status_code == 200, r.text
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@pytest.mark.slow
def test_damaged_export_is_remade_and_a_read_only_cache_is_served(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    settings = {"cache_dir": cache, "backend": "onnxruntime", "device": "cpu", "max_batch": 1}
    assert serve(tmp_path_factory, settings, "first").stop() == 0
    (onnx,) = (cache / "onnx").glob("*.onnx")
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])  # a truncated export

    second = serve(tmp_path_factory, settings, "second")
    assert "is damaged" in second.log(100_000)
    assert second.stop() == 0

    for path in [cache, *cache.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        third = serve(tmp_path_factory, settings, "third", without_root_privileges())
        assert "reusing cached" in third.log(100_000)
        assert third.stop() == 0
    finally:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
