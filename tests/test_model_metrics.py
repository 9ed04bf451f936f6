"""The metrics of many model versions (``Metrics.for_model``): each loaded version's series carry
``model`` and ``version``, unloading a version removes them (its request series too), and a
version reloaded from a changed file shares its series with the data plane it replaces. Read
back through the registry's Prometheus exposition, as a scrape reads them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from maskrt.bench.load import parse_metrics
from maskrt.server.metrics import Metrics


def _scrape(m: Metrics) -> dict[str, float]:
    return parse_metrics(m.render()[0].decode())


def _of(values: dict[str, float], model: str, version: str) -> dict[str, float]:
    """The samples of one model version (``maskrt_model_info`` names it ``name``)."""
    mine = (f'model="{model}"', f'name="{model}"')
    return {
        k: v for k, v in values.items() if any(m in k for m in mine) and f'version="{version}"' in k
    }


def _loaded(m: Metrics, name: str, version: str, backend: str = "onnxruntime"):
    stats = m.for_model(name, version)
    stats.model_loaded(name, backend, "cpu")
    return stats


def _traffic(stats, images: int, detections: int) -> None:
    stats.request_started()
    stats.queued(images)
    stats.queued(0)
    stats.batch_started([0.001] * images)
    stats.batch_inferred(images, 0.001, 0.01)
    stats.batch_finished(images, 0.002, detections)
    stats.image_dropped("timeout")
    stats.request_ended(0.05, True)


def test_each_version_has_its_own_series_and_unload_removes_only_its_own():
    m = Metrics(registry=CollectorRegistry(), process=False)
    a, b = _loaded(m, "a", "1"), _loaded(m, "b", "3", backend="torch")
    _traffic(a, 3, 5)
    _traffic(b, 1, 2)
    m.request_answered("/predict", "200", ("a", "1"), 0.05)
    m.request_answered("/v2/models/{name}/infer", "200", ("b", "3"), 0.05)
    m.request_answered("/healthz", "200", None, 0.001)
    v = _scrape(m)
    assert v['maskrt_images_total{model="a",version="1"}'] == 3
    assert v['maskrt_images_total{model="b",version="3"}'] == 1
    assert v['maskrt_detections_total{model="a",version="1"}'] == 5
    assert v['maskrt_dropped_images_total{model="b",reason="timeout",version="3"}'] == 1
    assert v['maskrt_inference_duration_seconds_count{backend="torch",model="b",version="3"}'] == 1
    assert v['maskrt_model_info{backend="torch",device="cpu",name="b",version="3"}'] == 1
    assert v['maskrt_backend_fallback{backend="torch",model="b",version="3",wanted="torch"}'] == 0
    assert v['maskrt_requests_total{endpoint="/predict",model="a",status="200",version="1"}'] == 1
    assert v['maskrt_requests_total{endpoint="/healthz",model="",status="200",version=""}'] == 1
    assert v['maskrt_inflight_requests{model="a",version="1"}'] == 0

    m.model_unloaded("a", "1")
    after = _scrape(m)
    assert _of(after, "a", "1") == {}
    assert _of(after, "b", "3") == _of(v, "b", "3")  # untouched
    assert after['maskrt_requests_total{endpoint="/healthz",model="",status="200",version=""}'] == 1

    # a late event of the unloaded version, and a request it answered after its unload (a race),
    # create no series of it: no series outlives its version
    _traffic(a, 1, 1)
    m.request_answered("/predict", "200", ("a", "1"), 0.05)
    late = _scrape(m)
    assert _of(late, "a", "1") == {}
    assert late['maskrt_requests_total{endpoint="/predict",model="",status="200",version=""}'] == 1


def test_a_loaded_version_has_its_series_before_any_traffic():
    m = Metrics(registry=CollectorRegistry(), process=False)
    _loaded(m, "a", "1")
    v = _scrape(m)
    for sample in (
        "maskrt_images_total",
        "maskrt_detections_total",
        "maskrt_failed_batches_total",
        "maskrt_queue_depth",
        "maskrt_inflight_requests",
        "maskrt_batch_size_count",
        "maskrt_queue_wait_seconds_count",
    ):
        assert v[f'{sample}{{model="a",version="1"}}'] == 0, sample


def test_a_reloaded_version_keeps_its_series_until_both_data_planes_are_gone():
    m = Metrics(registry=CollectorRegistry(), process=False)
    old = _loaded(m, "a", "1")
    _traffic(old, 2, 2)
    old.queued(4)  # the old data plane still has images queued while the new one loads
    new = _loaded(m, "a", "1", backend="torch")  # the same version, from a changed file
    new.queued(1)
    v = _scrape(m)
    assert v['maskrt_queue_depth{model="a",version="1"}'] == 5  # both planes' queues
    infos = [k for k in v if k.startswith("maskrt_model_info{")]
    assert infos == ['maskrt_model_info{backend="torch",device="cpu",name="a",version="1"}']
    m.model_unloaded("a", "1")  # the old one retires
    _traffic(new, 1, 1)
    v = _scrape(m)
    assert v['maskrt_images_total{model="a",version="1"}'] == 3  # the counter goes on
    assert v['maskrt_model_info{backend="torch",device="cpu",name="a",version="1"}'] == 1
    m.model_unloaded("a", "1")
    assert _of(_scrape(m), "a", "1") == {}


def test_a_data_plane_named_when_loaded_takes_its_model_name():
    """``--model`` and Ray Serve: the checkpoint's config may name the model, known once
    loaded."""
    m = Metrics(registry=CollectorRegistry(), process=False)
    stats = m.for_model("", "1")
    stats.model_loaded("shapes", "onnxruntime", "cpu")
    _traffic(stats, 2, 1)
    stats.pixels_admitted(1234)  # the server's, unlabelled
    stats.image_decoded("pillow", 0.001)
    v = _scrape(m)
    assert v['maskrt_images_total{model="shapes",version="1"}'] == 2
    assert not any('model=""' in k for k in v if k.startswith("maskrt_images"))
    assert v["maskrt_inflight_pixels"] == 1234
    assert v['maskrt_decode_duration_seconds_count{decoder="pillow"}'] == 1
    m.request_answered("/predict", "200", ("shapes", "1"), 0.01)
    assert (
        _scrape(m)[
            'maskrt_requests_total{endpoint="/predict",model="shapes",status="200",version="1"}'
        ]
        == 1
    )
