"""Settings (environment and ``maskrt serve`` flags), API keys, metrics registry and backend
selection rules - everything of the server that needs neither a model nor a socket."""

from __future__ import annotations

import argparse

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from maskrt.cli.serve import register
from maskrt.errors import MaskrtError
from maskrt.runtime.backends import model_kind, resolve_backend
from maskrt.runtime.options import RuntimeOptions, from_flags
from maskrt.server.errors import ApiError
from maskrt.server.metrics import Metrics, batch_size_buckets
from maskrt.server.security import ApiKeys
from maskrt.server.settings import Settings

DESIGN_NAMES = {
    "histogram": [
        "maskrt_request_duration_seconds",
        "maskrt_queue_wait_seconds",
        "maskrt_preprocess_duration_seconds",
        "maskrt_inference_duration_seconds",
        "maskrt_postprocess_duration_seconds",
        "maskrt_batch_size",
    ],
    "counter": ["maskrt_requests", "maskrt_images", "maskrt_detections"],
    "gauge": ["maskrt_queue_depth", "maskrt_inflight_requests", "maskrt_model_info"],
}
SETTING_NAMES = [
    "MODEL",
    "BACKEND",
    "DEVICE",
    "MAX_BATCH",
    "MAX_DELAY_MS",
    "MAX_QUEUE",
    "REQUEST_TIMEOUT_S",
    "MAX_UPLOAD_BYTES",
    "MAX_IMAGE_PIXELS",
    "SCORE_THRESHOLD",
    "API_KEYS",
    "CORS_ORIGINS",
    "HOST",
    "PORT",
    "GRPC_PORT",
    "LOG_FORMAT",
]


@pytest.fixture
def clean_env(monkeypatch):
    for name in SETTING_NAMES:
        monkeypatch.delenv(f"MASKRT_{name}", raising=False)
    return monkeypatch


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def settings_from_args(args: argparse.Namespace) -> Settings:
    return from_flags(args, Settings)


def test_every_design_setting_is_a_field_and_a_flag(clean_env):
    fields = set(Settings.model_fields)
    assert {n.lower() for n in SETTING_NAMES} <= fields
    args = parse([])
    assert {n.lower() for n in SETTING_NAMES} <= set(vars(args))


def test_environment_then_flags(clean_env):
    clean_env.setenv("MASKRT_MAX_BATCH", "4")
    clean_env.setenv("MASKRT_API_KEYS", "key-one-123, key-two-456")
    clean_env.setenv("MASKRT_CORS_ORIGINS", '["https://a.example"]')
    clean_env.setenv("MASKRT_DEVICE", "CPU")
    s = settings_from_args(parse([]))
    assert s.max_batch == 4 and s.device == "cpu"
    assert s.api_keys == ["key-one-123", "key-two-456"]
    assert s.cors_origins == ["https://a.example"]
    assert "key-one" not in repr(s)  # keys never printed
    s = settings_from_args(parse(["--max-batch", "2", "--max-delay-ms", "1.5", "--port", "9"]))
    assert (s.max_batch, s.max_delay_ms, s.port) == (2, 1.5, 9)


def test_defaults(clean_env):
    s = Settings()
    assert (s.backend, s.device, s.host, s.log_format, s.model) == (
        "auto",
        "auto",
        "127.0.0.1",
        "auto",
        None,
    )
    assert s.api_keys == [] and s.cors_origins == []


def test_grpc_port(clean_env):
    """Triton's 8001 unless told; 0 turns gRPC off; it may not share a port with HTTP."""
    assert settings_from_args(parse([])).grpc_port == 8001
    clean_env.setenv("MASKRT_GRPC_PORT", "0")
    assert settings_from_args(parse([])).grpc_port == 0
    assert settings_from_args(parse(["--grpc-port", "9001"])).grpc_port == 9001
    with pytest.raises(MaskrtError, match="GRPC_PORT must differ"):
        settings_from_args(parse(["--grpc-port", "9000", "--port", "9000"]))
    with pytest.raises(MaskrtError, match="GRPC_PORT must differ"):
        settings_from_args(parse(["--grpc-port", "9002", "--metrics-port", "9002"]))


@pytest.mark.parametrize(
    "argv,where",
    [
        (["--max-batch", "0"], "--max-batch"),
        (["--score-threshold", "1.5"], "--score-threshold"),
        (["--device", "tpu"], "--device"),
        (["--api-keys", "short"], "--api-keys"),
    ],
)
def test_bad_flags_are_one_clear_error(clean_env, argv, where):
    with pytest.raises(MaskrtError, match=where):
        settings_from_args(parse(argv))


def test_bad_environment_names_the_variable(clean_env):
    clean_env.setenv("MASKRT_MAX_QUEUE", "-1")
    with pytest.raises(MaskrtError, match="MASKRT_MAX_QUEUE"):
        settings_from_args(parse([]))


def test_runtime_options_ignore_the_http_settings(clean_env):
    """The offline commands' options neither read nor check what only the HTTP server uses."""
    clean_env.setenv("MASKRT_API_KEYS", "short")
    clean_env.setenv("MASKRT_PORT", "not-a-port")
    clean_env.setenv("MASKRT_MAX_BATCH", "3")
    options = RuntimeOptions()
    assert options.max_batch == 3 and not hasattr(options, "api_keys")
    with pytest.raises(MaskrtError) as err:
        settings_from_args(parse([]))
    assert "MASKRT_API_KEYS" in str(err.value) and "MASKRT_PORT" in str(err.value)


def test_api_keys():
    keys = ApiKeys(["alpha-123456", "beta-1234567"])
    keys.check("Bearer alpha-123456", None)
    keys.check("bearer  beta-1234567 ", None)
    keys.check(None, "alpha-123456")
    for auth, header in [
        (None, None),
        ("Bearer nope-nope-nope", None),
        ("Basic alpha-123456", None),
        (None, "alpha-12345"),
        (None, "alpha-123456x"),
    ]:
        with pytest.raises(ApiError) as err:
            keys.check(auth, header)
        assert err.value.status == 401 and "WWW-Authenticate" in err.value.headers
    ApiKeys([]).check(None, None)  # no keys configured: open


def test_metrics_registry_has_the_design_names():
    m = Metrics(registry=CollectorRegistry(), max_batch=8)
    shapes = m.for_model("shapes", "1")
    shapes.model_loaded("shapes", "torch", "cpu")
    m.request_answered("/predict", "200", ("shapes", "1"), 0.01)
    shapes.batch_inferred(2, 0.001, 0.02)
    assert (shapes.images, shapes.inference.count, shapes.inference.seconds) == (2, 1, 0.02)
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    for kind, names in DESIGN_NAMES.items():
        for name in names:
            assert families.get(name) == kind, (name, families.get(name))
    assert "maskrt_gpu_memory_used_bytes" not in families  # CPU: no GPU gauge
    assert any(n.startswith("process_") for n in families)  # process metrics too
    text = body.decode()
    assert 'maskrt_model_info{backend="torch",device="cpu",name="shapes",version="1"} 1.0' in text
    assert (
        'maskrt_inference_duration_seconds_sum{backend="torch",model="shapes",version="1"} 0.02'
        in text
    )
    assert 'maskrt_images_total{model="shapes",version="1"} 2.0' in text
    assert (
        'maskrt_requests_total{endpoint="/predict",model="shapes",status="200",version="1"} 1.0'
        in text
    )


def test_buckets():
    assert batch_size_buckets(1) == (1.0,)
    assert batch_size_buckets(8) == tuple(float(i) for i in range(1, 9))
    b = batch_size_buckets(100)
    assert b[:16] == tuple(float(i) for i in range(1, 17)) and b[-1] == 100.0 and 64.0 in b
    from maskrt.server.metrics import LATENCY_BUCKETS

    assert LATENCY_BUCKETS[0] <= 0.0001 and LATENCY_BUCKETS[-1] >= 30


@pytest.mark.parametrize(
    "model,kind",
    [
        ("a/b.pt", "checkpoint"),
        ("x.PTH", "checkpoint"),
        ("m.onnx", "onnx"),
        ("e.plan", "engine"),
        ("e.engine", "engine"),
        ("MaskRCNN_ResNet50_FPN_Weights.COCO_V1", "checkpoint"),
    ],
)
def test_model_kind(model, kind):
    assert model_kind(model) == kind


def test_model_kind_unknown():
    with pytest.raises(MaskrtError, match="expected a checkpoint"):
        model_kind("model.bin")


def test_backend_resolution():
    assert resolve_backend("auto", "engine", "cuda") == "tensorrt"
    assert resolve_backend("auto", "checkpoint", "cpu") == "onnxruntime"
    assert resolve_backend("auto", "onnx", "cpu") == "onnxruntime"
    assert resolve_backend("torch", "checkpoint", "cpu") == "torch"
    for kind in ("checkpoint", "onnx", "engine"):  # tensorrt builds what it needs, cached
        assert resolve_backend("tensorrt", kind, "cuda") == "tensorrt"
    for backend, kind in [("torch", "onnx"), ("torch", "engine"), ("onnxruntime", "engine")]:
        with pytest.raises(MaskrtError, match=f"backend '{backend}' cannot serve"):
            resolve_backend(backend, kind, "cuda")


def test_bench_helpers():
    from maskrt.bench.load import batch_sizes, parse_metrics, percentile, require_loopback

    for url in ("http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:80"):
        require_loopback(url)
    for url in ("http://10.0.0.1:8000", "http://example.invalid", "ftp://127.0.0.1"):
        with pytest.raises(MaskrtError):
            require_loopback(url)
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5
    m = Metrics(registry=CollectorRegistry(), max_batch=4, process=False)
    a, b = m.for_model("a", "1"), m.for_model("b", "2")
    before = parse_metrics(m.render()[0].decode())
    for model, size in ((a, 1), (b, 3), (a, 3), (b, 4)):  # the batches of every model
        model.batch_inferred(size, 0.001, 0.01)
    after = parse_metrics(m.render()[0].decode())
    got = batch_sizes(before, after)
    assert got["batches"] == 4 and got["images"] == 11 and got["sizes"] == {"1": 1, "3": 2, "4": 1}


@pytest.mark.parametrize(
    ("fields", "ort_threads", "torch_threads", "spinning"),
    [
        ({}, None, 1, "0"),
        ({"inference_threads": 1, "torch_threads": 2, "inference_spinning": True}, 1, 2, "1"),
    ],
)
def test_thread_settings_reach_onnx_runtime_and_torch(fields, ort_threads, torch_threads, spinning):
    import torch
    from deploy_helpers import exported

    from maskrt.devices import usable_cores
    from maskrt.runtime.backends import open_backend

    path, _ = exported("shapes", max_batch=2)
    before = torch.get_num_threads()
    try:
        backend = open_backend(
            Settings(model=str(path), backend="onnxruntime", device="cpu", max_batch=2, **fields)
        )
        options = backend.session.get_session_options()
        assert options.intra_op_num_threads == (ort_threads or usable_cores())
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
        assert torch.get_num_threads() == torch_threads
    finally:
        torch.set_num_threads(before)


def test_thread_settings_from_flags():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--inference-threads", "2", "--decode-threads", "1"])
    settings = settings_from_args(args)
    assert (settings.inference_threads, settings.decode_threads, settings.torch_threads) == (
        2,
        1,
        None,
    )
    assert not settings.inference_spinning
    assert settings_from_args(
        parser.parse_args(["serve", "--inference-spinning"])
    ).inference_spinning
    with pytest.raises(MaskrtError, match="--inference-threads"):
        settings_from_args(parser.parse_args(["serve", "--inference-threads", "0"]))


def test_json_response_is_compact_utf8_and_takes_numpy():
    import numpy as np

    from maskrt.server.errors import json_response

    response = json_response(
        {"label": "carré", "score": np.float32(0.5), "box": np.array([1.0, 2.5])}, 201
    )
    assert response.status_code == 201 and response.media_type == "application/json"
    assert response.body == '{"label":"carré","score":0.5,"box":[1.0,2.5]}'.encode()


def test_pipeline_depth_from_flag():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert settings_from_args(parser.parse_args(["serve"])).pipeline_depth == 1
    args = parser.parse_args(["serve", "--pipeline-depth", "0"])
    assert settings_from_args(args).pipeline_depth == 0
    with pytest.raises(MaskrtError, match="--pipeline-depth"):
        settings_from_args(parser.parse_args(["serve", "--pipeline-depth", "-1"]))
