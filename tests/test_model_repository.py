"""The model repository on a real ``maskrt serve --model-repository``, driven by the real clients:
``tritonclient.http`` and ``tritonclient.grpc`` (in its own process: tests/oip_grpc_clients.py
says why) for Triton's repository extension, httpx for the native API.

Four servers, each shared by the tests of one part: ``api`` (models ``a`` and ``b``, ``b`` with
labels and a batch size of its own, and two broken entries; API keys; gRPC), ``poll`` (polls its
folder, has a default model), ``limits`` (``MAX_LOADED_MODELS`` and ``MODEL_MEMORY_BUDGET_MB``
set tight) and ``single`` (``--model``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from server_harness import free_port, png, publish, shapes_image, start_server
from tritonclient.utils import InferenceServerException

CLIENTS = Path(__file__).with_name("oip_grpc_clients.py")
KEY = "repository-key-0123"
AUTH = {"X-API-Key": KEY}  # tritonclient adds to the headers it is given: pass copies
IMAGE = png(shapes_image(0))
SHAPES = ["square", "circle", "triangle"]  # the shipped checkpoint's classes
B_LABELS = ["sq", "ci", "tr"]  # model b's config.yaml: the same classes, its own names
B_CONFIG = f"labels: [{', '.join(B_LABELS)}]\nmax_batch: 2\n"
SERVED = {"backend": "torch", "max_delay_ms": 2, "request_timeout_s": 60}
THREADS = 8  # clients posting during a swap
pytestmark = [pytest.mark.slow]


def repository(
    tmp_path_factory, name: str, checkpoint: Path, configs: dict[str, str] | None = None
) -> Path:
    """A repository of version 1 of ``a`` and ``b`` (``b`` with :data:`B_CONFIG`), and of each
    model of ``configs`` with that config.yaml."""
    root = tmp_path_factory.mktemp(name)
    for model, config in {"a": "", "b": B_CONFIG, **(configs or {})}.items():
        publish(checkpoint, root, model, 1)
        if config:
            (root / model / "config.yaml").write_text(config)
    return root


def serve(tmp_path_factory, name: str, settings: dict[str, object], grpc: bool = False):
    """A started server, stopped when the module's tests are done; ``grpc``: on a gRPC port of
    its own (``grpc_address``); ``root``: its repository folder."""
    port = free_port() if grpc else 0
    server = start_server(tmp_path_factory, name, {**SERVED, **settings, "grpc_port": port})
    server.grpc_address = f"127.0.0.1:{port}"
    server.root = settings.get("model_repository")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory, checkpoint):
    root = repository(tmp_path_factory, "api-models", checkpoint, {"badlabels": "labels: [x, y]"})
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.pt").write_bytes(b"not a checkpoint")
    yield from serve(tmp_path_factory, "api", {"model_repository": root, "api_keys": KEY}, True)


@pytest.fixture(scope="module")
def poll(tmp_path_factory, checkpoint):
    root = repository(tmp_path_factory, "poll-models", checkpoint)
    settings = {"model_repository": root, "repository_poll_s": 0.2, "default_model": "a"}
    yield from serve(tmp_path_factory, "poll", settings)


@pytest.fixture(scope="module")
def limits(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("limits-models")
    publish(checkpoint, root, "a", 1)
    # a version is estimated at twice its file and 64 MiB before it loads (~88 MiB here): one fits
    settings = {"model_repository": root, "max_loaded_models": 2, "model_memory_budget_mb": 150}
    yield from serve(tmp_path_factory, "limits", settings)


@pytest.fixture(scope="module")
def single(tmp_path_factory, checkpoint):
    settings = {"model": checkpoint, "model_version": 3, "api_keys": KEY}
    yield from serve(tmp_path_factory, "single", settings, True)


@pytest.fixture
def client(api):
    c = triton.InferenceServerClient(api.url.removeprefix("http://"), network_timeout=300)
    yield c
    c.close()


def predict(server, model: str | None = None, version: str | None = None, **kwargs):
    """``POST /predict`` of :data:`IMAGE`, the model and version in the query."""
    params = {k: v for k, v in (("model", model), ("version", version)) if v is not None}
    with server.client(headers=AUTH) as c:
        files = {"image": ("x.png", IMAGE, "image/png")}
        return c.post("/predict", params=params, files=files, **kwargs)


def answered_by(response: httpx.Response) -> tuple[str, str, list[str]]:
    """Model, version and detected labels of a 200 answer."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["detections"]
    return (
        body["model"]["name"],
        body["model"]["model_version"],
        [d["label"] for d in body["detections"]],
    )


def index(server, ready: bool = False) -> list[dict]:
    with server.client(headers=AUTH) as c:
        r = c.post("/v2/repository/index", json={"ready": True} if ready else None)
    assert r.status_code == 200, r.text
    return r.json()


def versions(server, model: str) -> list[tuple[str, str]]:
    """``model``'s (version, state) rows of the index."""
    return [(row.get("version", ""), row["state"]) for row in index(server) if row["name"] == model]


def wait_for(server, what: str, check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f} s; index {index(server)}\n{server.log()}")
        time.sleep(0.1)


def error_lines(server) -> list[dict]:
    lines = server.log(tail=10**8).splitlines()
    return [
        record
        for record in (json.loads(line) for line in lines if line.startswith("{"))
        if record["level"] == "error"
    ]


def grpc_calls(server, model: str) -> dict:
    """tests/oip_grpc_clients.py's repository calls on ``model``."""
    command = [sys.executable, str(CLIENTS), "repository", server.grpc_address, model, KEY]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:] + server.log()
    return json.loads(run.stdout)


class Traffic:
    """:data:`THREADS` clients posting :data:`IMAGE` to ``/predict?model=...`` back to back, each
    answer kept as (when its request was sent, status, model version or error)."""

    def __init__(self, server, model: str | None = None) -> None:
        self.server, self.model = server, model
        self.answers: list[tuple[float, int, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._post) for _ in range(THREADS)]

    def _post(self) -> None:
        params = {"masks": "none", **({"model": self.model} if self.model else {})}
        with self.server.client(headers=AUTH) as c:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post(
                        "/predict", params=params, files={"image": ("x.png", IMAGE, "image/png")}
                    )
                    ok = r.status_code == 200
                    got = (
                        sent,
                        r.status_code,
                        r.json()["model"]["model_version"] if ok else r.text,
                    )
                except httpx.HTTPError as exc:
                    got = (sent, 0, repr(exc))
                with self.lock:
                    self.answers.append(got)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def sent_after(self, moment: float) -> list[tuple[float, int, str]]:
        with self.lock:
            return [a for a in self.answers if a[0] > moment]

    def wait(self, count: int, after: float = 0.0) -> None:
        """Until ``count`` answers to requests sent after ``after`` have come."""
        wait_for(
            self.server,
            f"{count} answers",
            lambda: (
                len(self.sent_after(after)) >= count or not any(t.is_alive() for t in self.threads)
            ),
        )

    def check_swap(self, swapped: float) -> None:
        """No request failed; version 1 answered before ``swapped``, only 2 from then on."""
        failed = [a for a in self.answers if a[1] != 200]
        assert not failed, f"{len(failed)} of {len(self.answers)} failed: {failed[:3]}"
        before = {v for sent, _, v in self.answers if sent <= swapped}
        assert "1" in before
        assert {v for _, _, v in self.sent_after(swapped)} == {"2"}


# -- the api server: index, broken entries, native routes, keys, load/unload, swap ----------------


def test_index_lists_every_model_and_why_a_broken_one_fails(api, client):
    assert client.is_server_ready()
    rows = {row["name"]: row for row in client.get_model_repository_index(headers=dict(AUTH))}
    assert rows["a"] == {"name": "a", "version": "1", "state": "READY", "reason": ""}
    assert rows["b"] == {"name": "b", "version": "1", "state": "READY", "reason": ""}
    for broken in ("broken", "badlabels"):
        assert rows[broken]["state"] == "UNAVAILABLE" and "version" not in rows[broken]
    assert "model.pt" in rows["broken"]["reason"]
    assert "labels" in rows["badlabels"]["reason"]
    # each at ERROR in the log, with the same reason
    logged = {r["message"] for r in error_lines(api)}
    for broken in ("broken", "badlabels"):
        assert f"model {broken} not loaded: model {broken!r}: {rows[broken]['reason']}" in logged
    assert [row["name"] for row in index(api, ready=True)] == ["a", "b"]
    assert client.is_model_ready("a", headers=dict(AUTH))
    assert not client.is_model_ready("broken", headers=dict(AUTH))


def test_loading_a_broken_entry_answers_400_with_its_reason(api):
    reasons = {row["name"]: row.get("reason") for row in index(api)}
    with api.client(headers=AUTH) as c:
        for broken in ("broken", "badlabels"):
            r = c.post(f"/v2/repository/models/{broken}/load")
            assert r.status_code == 400, r.text
            assert r.json() == {"error": f"model {broken!r}: {reasons[broken]}"}
            r = predict(api, broken)
            assert r.status_code == 404 and reasons[broken] in r.json()["error"]["message"]
    assert answered_by(predict(api, "a"))[:2] == ("a", "1")


def test_predict_names_the_model_and_version_in_the_query_or_the_form(api):
    name, version, labels = answered_by(predict(api, "b"))
    assert (name, version) == ("b", "1") and set(labels) <= set(B_LABELS)
    name, version, labels = answered_by(predict(api, "a", "1"))
    assert (name, version) == ("a", "1") and set(labels) <= set(SHAPES)
    with api.client(headers=AUTH) as c:
        files = {"image": ("x.png", IMAGE, "image/png")}
        r = c.post("/predict", files=files, data={"model": "b", "version": "1"})
        assert answered_by(r)[:2] == ("b", "1")
        r = c.post(
            "/predict/batch",
            files=[("images", ("x.png", IMAGE, "image/png"))] * 2,
            data={"model": "b"},
        )
        assert r.status_code == 200, r.text
        assert {res["model"]["name"] for res in r.json()["results"]} == {"b"}


def test_v1_models_lists_every_model_and_v1_model_one(api):
    with api.client(headers=AUTH) as c:
        listed = {(m["name"], m.get("version")): m for m in c.get("/v1/models").json()["models"]}
        b = c.get("/v1/model", params={"model": "b"}).json()
    assert set(listed) == {("a", "1"), ("b", "1"), ("broken", None), ("badlabels", None)}
    assert listed[("a", "1")]["state"] == "READY"
    assert listed[("a", "1")]["model"]["classes"][1:] == SHAPES
    assert listed[("b", "1")]["model"] == b
    assert listed[("broken", None)]["model"] is None
    assert (b["name"], b["model_version"], b["classes"][1:], b["max_batch"]) == (
        "b",
        "1",
        B_LABELS,
        2,
    )


def test_a_request_that_names_no_model_of_several_is_400_model_required(api):
    with api.client(headers=AUTH) as c:
        for r in (
            predict(api),
            c.post("/predict", content=IMAGE, headers={"Content-Type": "image/png"}),
            c.get("/v1/model"),
        ):
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "model_required"


def test_an_unknown_model_or_version_is_404_unknown_model(api, client):
    with api.client(headers=AUTH) as c:
        for r in (
            predict(api, "nope"),
            predict(api, "a", "9"),
            c.post(
                "/predict", files={"image": ("x.png", IMAGE, "image/png")}, data={"model": "nope"}
            ),
            c.get("/v1/model", params={"model": "nope"}),
        ):
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "unknown_model"
        assert c.get("/v2/models/a/versions/9/ready").status_code == 404
        assert c.post("/v2/repository/models/nope/load").status_code == 404
    assert not client.is_model_ready("nope", headers=dict(AUTH))


def test_load_and_unload_need_an_api_key(api, client):
    with api.client() as c:
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/b/load",
            "/v2/repository/models/b/unload",
        ):
            assert c.post(path).status_code == 401
    with pytest.raises(InferenceServerException):
        client.unload_model("b", headers={"X-API-Key": "not-the-key"})
    assert client.is_model_ready("b", headers=dict(AUTH))
    client.unload_model("b", headers=dict(AUTH))
    assert not client.is_model_ready("b", headers=dict(AUTH))
    assert versions(api, "b") == [("", "UNAVAILABLE")]
    assert {r["reason"] for r in index(api) if r["name"] == "b"} == {"unloaded"}
    assert predict(api, "b").status_code == 404
    client.load_model("b", headers=dict(AUTH))
    assert client.is_model_ready("b", headers=dict(AUTH))
    assert answered_by(predict(api, "b"))[:2] == ("b", "1")


def test_a_load_takes_a_config_override(api, client):
    """A Triton configuration override sets what it names over config.yaml's; a load without one
    goes back to config.yaml."""
    client.load_model("b", headers=dict(AUTH), config=json.dumps({"max_batch_size": 4}))
    assert client.get_model_config("b", headers=dict(AUTH))["max_batch_size"] == 4
    with api.client(headers=AUTH) as c:
        b = c.get("/v1/model", params={"model": "b"}).json()
        assert (b["max_batch"], b["classes"][1:]) == (4, B_LABELS)
        r = c.post(
            "/v2/repository/models/b/load", json={"parameters": {"config": '{"max_batch": "x"}'}}
        )
        assert r.status_code == 400 and "max_batch" in r.json()["error"]
    client.load_model("b", headers=dict(AUTH))
    assert client.get_model_config("b", headers=dict(AUTH))["max_batch_size"] == 2


def test_grpc_repository_calls(api):
    calls = grpc_calls(api, "b")
    for refused in ("index no key", "load no key", "unload no key"):
        assert calls[refused]["status"] == "StatusCode.UNAUTHENTICATED", calls[refused]
    for done in ("index", "unload", "index unloaded", "load", "config", "index loaded"):
        assert calls[done]["status"] == "OK", calls[done]
    rows = {m["name"]: m for m in calls["index"]["value"]["models"]}
    assert rows["b"] == {"name": "b", "version": "1", "state": "READY"}  # protobuf's JSON: no ""
    assert rows["broken"]["state"] == "UNAVAILABLE" and "model.pt" in rows["broken"]["reason"]
    unloaded = {m["name"]: m for m in calls["index unloaded"]["value"]["models"]}
    assert unloaded["b"] == {"name": "b", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert calls["ready unloaded"] == {"status": "OK", "value": False}  # as Triton answers
    assert calls["ready loaded"] == {"status": "OK", "value": True}
    assert calls["config"]["value"]["config"]["max_batch_size"] == 4
    loaded = {m["name"]: m for m in calls["index loaded"]["value"]["models"]}
    assert loaded["b"]["state"] == "READY"
    assert calls["load unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert calls["load bad config"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "not JSON" in calls["load bad config"]["message"]
    assert calls["load file"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "(file:1/model.pt) are not supported" in calls["load file"]["message"]
    assert calls["index other"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "one repository" in calls["index other"]["message"]
    assert answered_by(predict(api, "b"))[:2] == ("b", "1")


def test_a_new_version_swaps_in_under_load_and_drops_nothing(api, client, checkpoint):
    with Traffic(api, "a") as traffic:
        traffic.wait(THREADS)
        publish(checkpoint, api.root, "a", 2)
        client.load_model("a", headers=dict(AUTH))
        loaded = time.monotonic()
        traffic.wait(2 * THREADS, after=loaded)
    traffic.check_swap(loaded)
    assert versions(api, "a") == [("2", "READY")]


def test_inference_on_a_chosen_version(api, client):
    """A version policy override serves versions 1 and 2 side by side, each asked for by
    number; a plain load goes back to config.yaml's policy (the latest)."""
    policy = {"version_policy": {"specific": {"versions": [1, 2]}}}
    client.load_model("a", headers=dict(AUTH), config=json.dumps(policy))
    assert client.get_model_metadata("a", headers=dict(AUTH))["versions"] == ["1", "2"]
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([IMAGE], dtype=np.object_))
    for version in ("1", "2"):
        result = client.infer("a", [image], model_version=version, headers=dict(AUTH))
        assert result.get_response()["model_version"] == version
        assert result.as_numpy("num_detections")[0] > 0
        assert answered_by(predict(api, "a", version))[:2] == ("a", version)
    assert answered_by(predict(api, "a"))[:2] == ("a", "2")  # unversioned: the newest
    client.load_model("a", headers=dict(AUTH))
    assert client.get_model_metadata("a", headers=dict(AUTH))["versions"] == ["2"]
    assert predict(api, "a", "1").status_code == 404


# -- the poll server: a default model, versions and models coming and going on disk --------------


def test_the_default_model_answers_requests_that_name_none(poll):
    assert answered_by(predict(poll))[:2] == ("a", "1")
    with poll.client() as c:
        assert c.get("/v1/model").json()["name"] == "a"
    name, _, labels = answered_by(predict(poll, "b"))
    assert name == "b" and set(labels) <= set(B_LABELS)


def test_a_form_naming_a_model_not_served_is_404_and_no_failure_of_the_default(poll):
    def failed() -> int:
        with poll.client() as c:
            stats = c.get("/v2/models/a/stats").json()["model_stats"]
        return sum(s["inference_stats"]["fail"]["count"] for s in stats)

    before = failed()
    with poll.client() as c:
        files = {"image": ("x.png", IMAGE, "image/png")}
        r = c.post("/predict", data={"model": "nope"}, files=files)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model", r.text
    assert failed() == before


def test_a_polled_version_folder_swaps_in_under_load(poll, checkpoint):
    with Traffic(poll) as traffic:
        traffic.wait(THREADS)
        publish(checkpoint, poll.root, "a", 2)
        wait_for(poll, "version 2 alone", lambda: versions(poll, "a") == [("2", "READY")])
        swapped = time.monotonic()
        traffic.wait(2 * THREADS, after=swapped)
    traffic.check_swap(swapped)


def test_a_poll_loads_a_new_model_and_unloads_a_removed_one(poll, checkpoint):
    publish(checkpoint, poll.root, "c", 1)
    wait_for(poll, "model c", lambda: versions(poll, "c") == [("1", "READY")])
    assert answered_by(predict(poll, "c"))[:2] == ("c", "1")
    shutil.rmtree(poll.root / "b")
    wait_for(poll, "model b gone", lambda: ("1", "READY") not in versions(poll, "b"))
    r = predict(poll, "b")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
    assert answered_by(predict(poll))[:2] == ("a", "2")
    assert not error_lines(poll)


def test_a_poll_reloads_a_model_whose_config_was_edited_and_keeps_one_broken_by_it(poll):
    """Model ``c`` (the test before loads it) gets labels of its own in a new config.yaml: it
    answers with them; then labels that do not fit its classes: it serves on as it was."""
    config = poll.root / "c" / "config.yaml"
    config.write_text("labels: [q, o, t]\n")
    wait_for(poll, "c's new labels", lambda: set(answered_by(predict(poll, "c"))[2]) <= set("qot"))
    config.write_text("labels: [x, y]\n")
    wait_for(
        poll, "c's failed load", lambda: any("model c " in r["message"] for r in error_lines(poll))
    )
    name, version, labels = answered_by(predict(poll, "c"))
    assert (name, version) == ("c", "1") and set(labels) <= set("qot")


# -- limits ---------------------------------------------------------------------------------------


def test_loads_past_the_limits_are_refused_and_the_server_serves_on(limits, checkpoint):
    publish(checkpoint, limits.root, "b", 1)
    publish(checkpoint, limits.root, "b", 2)
    (limits.root / "b" / "config.yaml").write_text("version_policy: all\n")
    with limits.client() as c:
        # a's one version and b's two would be 3 of MAX_LOADED_MODELS 2
        r = c.post("/v2/repository/models/b/load")
        assert r.status_code == 400, r.text
        assert "would pass MAX_LOADED_MODELS (2): 1 loaded" in r.json()["error"]
        # one of b's: 2 versions, but a's ~88 MiB and b's ~88 pass the 150 MiB budget
        latest = {"parameters": {"config": json.dumps({"version_policy": {"latest": 1}})}}
        r = c.post("/v2/repository/models/b/load", json=latest)
        assert r.status_code == 400, r.text
        assert "of MODEL_MEMORY_BUDGET_MB (150) are held" in r.json()["error"]
    assert versions(limits, "a") == [("1", "READY")]
    assert versions(limits, "b") == [("", "UNAVAILABLE")]
    assert answered_by(predict(limits))[:2] == ("a", "1")


# -- a --model server ---------------------------------------------------------------------------


def test_a_single_model_server_answers_the_repository_calls(single):
    """A ``--model`` server is a repository of one version, ``MODEL_VERSION``."""
    one = [{"name": "shapes", "version": "3", "state": "READY", "reason": ""}]
    assert index(single) == one
    with single.client(headers=AUTH) as c:
        assert c.get("/v2/models/shapes/versions/3/ready").status_code == 200
        assert c.get("/v2/models/shapes/versions/1/ready").status_code == 404
        assert c.get("/v2/models/shapes").json()["versions"] == ["3"]
        for call in ("load", "unload"):
            r = c.post(f"/v2/repository/models/shapes/{call}")
            assert r.status_code == 400, r.text
            assert "this server serves one model (--model)" in r.json()["error"]
    calls = grpc_calls(single, "shapes")
    assert calls["index"]["value"]["models"] == [
        {"name": "shapes", "version": "3", "state": "READY"}
    ]
    for call in ("load", "unload"):
        assert calls[call]["status"] == "StatusCode.INVALID_ARGUMENT", calls[call]
        assert "this server serves one model (--model)" in calls[call]["message"]
    assert answered_by(predict(single))[:2] == ("shapes", "3")
    assert answered_by(predict(single, "shapes", "3"))[:2] == ("shapes", "3")
