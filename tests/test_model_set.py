"""The ModelSet (runtime/models.py) in process: real repositories of copies of the shipped shapes
checkpoint, each version a real LocalDataPlane on the torch backend (the fastest to open), real
requests through DataPlane.infer. Start-up, routing, swaps under load, unload, polling, limits, the
fair share of the queue cap, load overrides, the races between them, and that nothing of an
unloaded version stays referenced."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import threading
import weakref
from pathlib import Path

import pytest
import torch
from server_harness import png, serving_checkpoint, shapes_image

from maskrt.runtime.dataplane import DataPlane, EncodedImage, ImageResult, Shared
from maskrt.runtime.errors import BadRequest, RepositoryError, Unavailable, UnknownModel
from maskrt.runtime.local import LocalDataPlane
from maskrt.runtime.models import ModelSet, _available_memory, _estimate, _rss
from maskrt.runtime.options import RuntimeOptions
from maskrt.runtime.pipeline import PostOptions
from maskrt.runtime.repository import parse_override
from maskrt.runtime.statistics import Statistics

IMAGE = png(shapes_image(0))


def add(root: Path, name: str, version: int, source: Path | None = None) -> Path:
    """``root/name/version/shapes.pt``, a copy of ``source`` (default: the shipped model)."""
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source or serving_checkpoint(), folder / "shapes.pt"))


def damaged(path: Path) -> Path:
    """A checkpoint that passes the start-up checks (its header and classes are fine) but fails
    to open: a weight changed after its digest was recorded."""
    checkpoint = torch.load(serving_checkpoint(), map_location="cpu", weights_only=False)
    weights = checkpoint["state_dict"]
    key = next(iter(weights))
    weights[key] = weights[key] + 1
    torch.save(checkpoint, path)
    return path


def options(root: Path, **kw) -> RuntimeOptions:
    return RuntimeOptions(model_repository=root, backend="torch", device="cpu", max_batch=2, **kw)


class Loaded(Statistics):
    """One version's statistics, saying what it loaded where its series (shared by every data
    plane of that name and version) say it."""

    def __init__(self, backends: dict[tuple[str, str], str], key: tuple[str, str]) -> None:
        super().__init__()
        self.backends, self.key = backends, key

    def model_loaded(self, name: str, backend: str, device: str, fallback_from=None) -> None:
        self.backends[self.key] = backend


class Series(Statistics):
    """Statistics that keep what an exporter keeps: the (model, version) series that exist."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[str, str]] = []
        self.live: set[tuple[str, str]] = set()

        self.backends: dict[tuple[str, str], str] = {}  # what maskrt_model_info says

    def for_model(self, name: str, version: str) -> Statistics:
        self.made.append((name, version))
        self.live.add((name, version))
        return Loaded(self.backends, (name, version))

    def model_unloaded(self, name: str, version: str) -> None:
        self.live.discard((name, version))


@contextlib.asynccontextmanager
async def serving(opts: RuntimeOptions, statistics: Statistics | None = None):
    models = ModelSet(opts, statistics or Statistics())
    models.start()
    while models.starting:
        await asyncio.sleep(0.01)
    try:
        yield models
    finally:
        await models.stop()


def run(check, opts: RuntimeOptions, statistics: Statistics | None = None):
    """``await check(models)`` with the repository of ``opts`` served."""

    async def main():
        async with serving(opts, statistics) as models:
            return await check(models)

    return asyncio.run(main())


async def predict(plane: DataPlane, gate: asyncio.Event | None = None) -> list[ImageResult]:
    """One image through ``plane``; with ``gate``, its upload lasts until the gate opens (the
    request is in flight meanwhile)."""

    async def read() -> tuple[list[EncodedImage], PostOptions]:
        if gate is not None:
            await gate.wait()
        return [EncodedImage(IMAGE, "image")], PostOptions(score_threshold=0.0)

    return await plane.infer(read)


async def until(check, what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


def rows(models: ModelSet) -> dict[tuple[str, str], str]:
    return {(r.name, r.version): r.state for r in models.index()}


def version_of(plane: DataPlane) -> str:
    return plane.served_model().model_version


# -- start-up and routing -------------------------------------------------------------------------


def test_start_up_serves_the_good_models_and_says_why_a_broken_one_does_not(tmp_path, caplog):
    add(tmp_path, "a", 1)
    add(tmp_path, "b", 1)
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.pt").write_bytes(b"not a checkpoint")

    async def check(models):
        assert models.ready and models.serving_names() == ["a", "b"]
        index = {r.name: r.as_dict() for r in models.index()}
        assert index["a"] == {"name": "a", "version": "1", "state": "READY", "reason": ""}
        assert index["b"]["state"] == "READY"
        broken = index["broken"]
        assert broken["state"] == "UNAVAILABLE" and "version" not in broken
        assert "model.pt: not a readable PyTorch checkpoint" in broken["reason"]
        assert [r.name for r in models.index(ready_only=True)] == ["a", "b"]
        (result,) = await predict(models.get("a"))
        assert result.inferred.detections
        assert models.get("a").served_model().ref()["name"] == "a"
        assert models.get("b").served_model().model_version == "1"

    with caplog.at_level(logging.ERROR, logger="maskrt.repository"):
        run(check, options(tmp_path))
    assert any("model broken not loaded" in r.getMessage() for r in caplog.records)


def test_start_up_with_no_loadable_model_is_fatal(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.pt").write_bytes(b"junk")
    fatal: list[BaseException] = []

    async def main():
        models = ModelSet(options(tmp_path), Statistics(), on_fatal=fatal.append)
        models.start()
        await until(lambda: not models.starting, "start-up ended")
        assert not models.ready and models.not_ready().code == "not_ready"
        await models.stop()

    asyncio.run(main())
    assert len(fatal) == 1 and "no model of the repository could be loaded" in str(fatal[0])


def test_get_routes_by_name_version_and_default_model(tmp_path):
    add(tmp_path, "a", 1)
    add(tmp_path, "a", 2)
    (tmp_path / "a" / "config.yaml").write_text("version_policy: all\n")
    add(tmp_path, "b", 1)

    async def main():
        async with serving(options(tmp_path)) as models:
            with pytest.raises(BadRequest) as several:
                models.get()
            assert several.value.code == "model_required" and "a, b" in several.value.message
            assert version_of(models.get("a")) == "2"  # the newest ready version
            assert models.get("a", "1") is models.get("a", 1) is not models.get("a")
            assert version_of(models.get("a", 1)) == "1" and models.ready_versions("a") == [
                "1",
                "2",
            ]
            for name, version, message in [
                ("a", "3", "model 'a' has no version '3' loaded; its versions: 1, 2"),
                ("a", "01", "has no version '01'"),
                ("a", "x", "has no version 'x'"),
                ("zz", None, "model 'zz' is not loaded; loaded: a, b"),
            ]:
                with pytest.raises(UnknownModel, match=message) as unknown:
                    models.get(name, version)
                assert unknown.value.code == "unknown_model"
        async with serving(options(tmp_path, default_model="b")) as models:
            assert models.get() is models.get("b") and models.default_name() == "b"
        async with serving(options(tmp_path, default_model="nope")) as models:
            with pytest.raises(UnknownModel, match="'nope' is not loaded"):
                models.get()

    asyncio.run(main())


def test_one_model_is_the_default_without_setting_it(tmp_path):
    add(tmp_path, "only", 1)

    async def check(models):
        assert models.get() is models.get("only", "1")
        await models.stop()  # draining: every request is refused as shutting down
        with pytest.raises(Unavailable) as draining:
            models.get("only")
        assert draining.value.code == "shutting_down" and not models.ready

    run(check, options(tmp_path))


# -- swaps and unloads ------------------------------------------------------------------------------


def test_a_swap_under_load_answers_every_request(tmp_path):
    """Requests run without pause on version 1 while version 2 loads: each is answered, version 2
    takes new requests once warm, and version 1 stops only after its last request (a slow upload
    begun before the swap) is answered."""
    add(tmp_path, "a", 1)

    async def check(models):
        v1 = models.get("a")
        answered: list[str] = []
        swapped = asyncio.Event()

        async def client():
            while not swapped.is_set() or "2" not in answered[-4:]:
                plane = models.get("a")
                (result,) = await predict(plane)
                assert result.inferred.detections
                answered.append(version_of(plane))

        clients = [asyncio.create_task(client()) for _ in range(3)]
        gate = asyncio.Event()
        slow = asyncio.create_task(predict(v1, gate))
        await until(lambda: v1.statistics.requests_in_flight >= 1, "the slow request began")
        add(tmp_path, "a", 2)
        load = asyncio.create_task(models.load("a"))
        await until(lambda: models.models["a"].pending, "version 2 loading")
        assert rows(models) == {("a", "1"): "READY", ("a", "2"): "LOADING"}
        assert models.get("a") is v1
        with pytest.raises(Unavailable, match="version 2 of model 'a' is loading"):
            models.get("a", 2)
        await until(lambda: models.get("a") is not v1, "version 2 serving")
        # version 1 finishes its requests, so it is still up, and the load waits for it
        assert rows(models) == {("a", "1"): "UNLOADING", ("a", "2"): "READY"}
        assert v1.ready and not load.done()
        swapped.set()
        gate.set()
        (late,) = await slow
        assert late.inferred.detections
        await load
        assert v1.status == "draining" and v1.backend is None  # stopped
        await asyncio.gather(*clients)  # any client's error is raised here
        assert rows(models) == {("a", "2"): "READY"}
        assert answered[0] == "1" and "2" in answered
        assert v1.statistics.requests_failed.count == 0
        assert v1.statistics.requests_ok.count == answered.count("1") + 1

    run(check, options(tmp_path))


def test_unload_waits_for_in_flight_requests_then_nothing_of_the_version_stays(tmp_path):
    add(tmp_path, "a", 1)
    add(tmp_path, "b", 1)
    series = Series()

    async def check(models):
        plane = models.get("a")
        assert isinstance(plane, LocalDataPlane)
        parts = [plane, plane.backend, plane.pipeline, plane.batcher, plane.statistics]
        parts += [plane.infer_executor, plane.post_executor]
        refs = [weakref.ref(p) for p in parts]
        del parts
        gate = asyncio.Event()
        slow = asyncio.create_task(predict(plane, gate))
        await until(lambda p=plane: p.statistics.requests_in_flight == 1, "request in flight")
        unload = asyncio.create_task(models.unload("a"))
        await until(lambda: rows(models).get(("a", "1")) == "UNLOADING", "unloading")
        for _ in range(20):  # many turns of the loop: the unload still waits
            await asyncio.sleep(0.01)
        assert not unload.done() and plane.ready
        gate.set()
        assert (await slow)[0].inferred.detections
        await unload
        assert not plane.ready
        del plane, slow
        gc.collect()  # while the set serves on: it keeps nothing of the unloaded version
        alive = [type(r()).__name__ for r in refs if r() is not None]
        assert not alive, f"still referenced after unloading: {alive}"
        with pytest.raises(UnknownModel, match=r"model 'a' is not loaded \(unloaded\)"):
            models.get("a")
        assert {r.name: (r.state, r.reason) for r in models.index()}["a"] == (
            "UNAVAILABLE",
            "unloaded",
        )
        assert series.live == {("b", "1")}
        await models.poll()  # an unloaded model stays so
        assert models.serving_names() == ["b"]
        await models.load("a")  # until it is loaded again
        assert models.serving_names() == ["a", "b"]

    run(check, options(tmp_path), series)


def test_unload_of_an_unknown_model_and_load_of_one(tmp_path):
    add(tmp_path, "a", 1)

    async def check(models):
        for call in (models.load, models.unload):
            with pytest.raises(UnknownModel, match="no model 'nope' in the repository"):
                await call("nope")
            with pytest.raises(UnknownModel):
                await call("../a")
        assert [r.name for r in models.index()] == ["a"]

    run(check, options(tmp_path))


# -- polling ----------------------------------------------------------------------------------------


def test_poll_follows_the_repository(tmp_path, caplog):
    add(tmp_path, "a", 1)
    add(tmp_path, "b", 1)
    series = Series()

    async def check(models):
        a1 = models.get("a")
        add(tmp_path, "a", 2)  # a new version: swapped in, version 1 unloaded (latest 1)
        add(tmp_path, "c", 1)  # a new model
        shutil.rmtree(tmp_path / "b")  # a removed model
        await models.poll()
        assert rows(models) == {("a", "2"): "READY", ("c", "1"): "READY"}
        assert not a1.ready and series.live == {("a", "2"), ("c", "1")}

        a2 = models.get("a")
        replaced = add(tmp_path, "a", 2)  # a replaced file (a new modification time)
        os.utime(replaced, ns=(1, 1))
        await models.poll()
        assert models.get("a") is not a2 and not a2.ready
        assert version_of(models.get("a")) == "2"
        # the new version 2 has the statistics of (a, 2) now: the old one's unload keeps them
        assert series.live == {("a", "2"), ("c", "1")}

        await models.poll()  # nothing changed: nothing reloads
        assert series.made.count(("a", "2")) == 2

        broken = tmp_path / "d" / "1" / "shapes.pt"
        broken.parent.mkdir(parents=True)
        broken.write_bytes(b"junk")
        await models.poll()
        await models.poll()  # failed as it is: not retried
        assert {r.name: r.state for r in models.index()}["d"] == "UNAVAILABLE"
        shutil.copy(serving_checkpoint(), broken)  # fixed: loaded
        await models.poll()
        assert models.serving_names() == ["a", "c", "d"]
        assert series.made.count(("d", "1")) == 1

    with caplog.at_level(logging.ERROR, logger="maskrt.repository"):
        run(check, options(tmp_path), series)
    failed = [r for r in caplog.records if "model d not loaded" in r.getMessage()]
    assert len(failed) == 1


def test_a_repository_that_cannot_be_listed_leaves_the_loaded_versions_serving(
    tmp_path, monkeypatch, caplog
):
    """The folder's file system failing (an NFS mount gone stale; tests run as root, so no
    permission keeps them from listing it): the index lists what is loaded, a poll unloads
    nothing, and the log says why."""
    add(tmp_path, "a", 1)
    listing = Path.iterdir

    def unlistable(path: Path):
        if path == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    async def check(models):
        monkeypatch.setattr(Path, "iterdir", unlistable)
        assert rows(models) == {("a", "1"): "READY"}
        await models.poll()
        assert version_of(models.get("a")) == "1"

    with caplog.at_level(logging.WARNING, logger="maskrt.repository"):
        run(check, options(tmp_path))
    said = [r.getMessage() for r in caplog.records]
    assert any("cannot list the model repository" in m and "Permission denied" in m for m in said)


def test_polling_in_the_background(tmp_path):
    add(tmp_path, "a", 1)

    async def check(models):
        add(tmp_path, "a", 2)
        await until(lambda: models.ready_versions("a") == ["2"], "version 2 polled in")

    run(check, options(tmp_path, repository_poll_s=0.05))


# -- limits -----------------------------------------------------------------------------------------


def test_max_loaded_models_refuses_before_anything_loads(tmp_path):
    add(tmp_path, "a", 1)
    add(tmp_path, "b", 1)
    series = Series()

    async def check(models):
        add(tmp_path, "c", 1)
        with pytest.raises(RepositoryError, match="MAX_LOADED_MODELS \\(2\\)") as refused:
            await models.load("c")
        assert refused.value.code == "too_many_models"
        add(tmp_path, "a", 2)  # a swap needs room for the new version beside the old
        with pytest.raises(RepositoryError, match="MAX_LOADED_MODELS"):
            await models.load("a")
        # nothing of the refused loads was made; the index says why c is not served
        assert sorted(series.made) == [("a", "1"), ("b", "1")]
        index = {r.name: r for r in models.index()}
        assert index["c"].state == "UNAVAILABLE" and "MAX_LOADED_MODELS" in index["c"].reason
        assert rows(models)[("a", "1")] == "READY"
        await models.unload("b")
        await models.load("c")  # room again
        assert models.serving_names() == ["a", "c"]

    run(check, options(tmp_path, max_loaded_models=2), series)


def test_memory_budget_refuses_before_anything_loads(tmp_path):
    add(tmp_path, "a", 1)  # about 2 x 12 MiB + 64 MiB estimated
    series = Series()

    async def check(models):
        assert models.serving_names() == ["a"]
        add(tmp_path, "b", 1)
        with pytest.raises(RepositoryError, match=r"MODEL_MEMORY_BUDGET_MB \(150\)") as refused:
            await models.load("b")
        assert refused.value.code == "memory_budget"
        assert series.made == [("a", "1")] and series.live == {("a", "1")}

    run(check, options(tmp_path, model_memory_budget_mb=150), series)


def sparse_onnx(root: Path, size: int) -> None:
    """Model ``big``: an ONNX file of ``size`` bytes that takes no disk (the limits read its size;
    the load is refused before anything opens it)."""
    path = root / "big" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.truncate(size)
    (root / "big" / "config.yaml").write_text("backend: onnxruntime\n")


def reason_of(models: ModelSet, name: str) -> str:
    return next(r.reason for r in models.index() if r.name == name)


def test_a_load_past_the_machine_s_memory_is_refused_without_a_budget(tmp_path):
    available = _available_memory()
    assert available is not None  # Linux's /proc/meminfo
    sparse_onnx(tmp_path, available)  # estimated at twice its size

    async def check(models):
        return reason_of(models, "big")

    reason = run(check, options(tmp_path))
    assert reason.startswith("loading needs about") and "MiB; the machine has" in reason


@pytest.mark.gpu
def test_a_load_past_the_gpu_s_free_memory_is_refused(tmp_path):
    free, _ = torch.cuda.mem_get_info()
    ballast = torch.empty(free - 512 * 2**20, dtype=torch.uint8, device="cuda")
    sparse_onnx(tmp_path, 2**30)  # about 2 GiB estimated: the machine has it, the GPU not

    async def check(models):
        return reason_of(models, "big")

    try:
        reason = run(check, options(tmp_path, device="cuda"))
    finally:
        del ballast
        torch.cuda.empty_cache()
    assert "the GPU cuda has" in reason and "MiB free" in reason


def test_versions_loaded_at_once_are_not_charged_each_other_s_memory(tmp_path):
    """Three models load at once: the process grows by all of them, which is no one version's
    memory. The budget counts at most that growth and the estimates, never each load's view of
    all of it."""
    for name in "abc":
        add(tmp_path, name, 1)

    async def check(models):
        return sum(v.memory for v in models.loaded()), _rss() - before

    before = _rss()
    held, grew = run(check, options(tmp_path))
    assert held <= max(grew, 0) + 3 * _estimate(serving_checkpoint().stat().st_size)


# -- the shared queue cap ---------------------------------------------------------------------------


def test_shared_admits_a_fair_share_past_the_global_cap():
    shared = Shared.create(RuntimeOptions(max_queue=8), Statistics())
    try:
        queued = 8
        shared.queued, shared.planes = (lambda: queued), (lambda: 2)
        assert shared.admits(own_depth=0, images=4)  # within its share of 8 / 2
        assert not shared.admits(own_depth=0, images=5)
        assert not shared.admits(own_depth=8, images=1)  # the flooding one
        queued = 3
        assert shared.admits(own_depth=3, images=5)  # under the global cap: anyone
    finally:
        shared.close()


def test_one_model_s_flood_does_not_refuse_another_within_its_share(tmp_path):
    """Model a's queue is full (its inference thread held), filling the server's cap: a's next
    request is refused as queue_full, b's are still taken (b is within its share)."""
    add(tmp_path, "a", 1)
    add(tmp_path, "b", 1)

    async def check(models):
        a, b = models.get("a"), models.get("b")
        assert isinstance(a, LocalDataPlane) and a.batcher is not None
        held = threading.Event()
        a.infer_executor.submit(held.wait)  # a's worker waits for its inference thread
        flood = [asyncio.create_task(predict(a)) for _ in range(12)]
        await until(lambda: a.batcher.depth == 8, "a's queue full")
        with pytest.raises(Unavailable) as full:
            await predict(a)
        assert full.value.code == "queue_full"
        for _ in range(3):
            (result,) = await predict(b)
            assert result.inferred.detections
        held.set()
        answers = await asyncio.gather(*flood, return_exceptions=True)
        refused = [e for e in answers if isinstance(e, Unavailable)]
        assert all(e.code == "queue_full" for e in refused)
        assert len(answers) - len(refused) >= 9  # the queue and the batch taken from it

    run(check, options(tmp_path, max_queue=8, max_delay_ms=0))


# -- overrides --------------------------------------------------------------------------------------


def test_a_load_override_reloads_and_polls_keep_it(tmp_path):
    add(tmp_path, "a", 1)

    async def check(models):
        before = models.get("a")
        assert before.served_model().max_batch == 2
        override = parse_override('{"max_batch_size": 1}')
        await models.load("a", override)
        after = models.get("a")
        assert after is not before and not before.ready
        assert after.served_model().max_batch == 1 and after.options.max_batch == 1
        await models.load("a", override)  # the same again: nothing reloads
        await models.poll()  # nor does a poll undo it
        assert models.get("a") is after
        await models.load("a")  # a load without one: config.yaml's settings (none)
        assert models.get("a").served_model().max_batch == 2

    run(check, options(tmp_path))


# -- races and failures -----------------------------------------------------------------------------


def test_two_loads_of_one_model_at_once_load_it_once(tmp_path):
    add(tmp_path, "a", 1)
    series = Series()

    async def check(models):
        add(tmp_path, "a", 2)
        await asyncio.gather(models.load("a"), models.load("a"))
        assert rows(models) == {("a", "2"): "READY"}
        assert series.made == [("a", "1"), ("a", "2")] and series.live == {("a", "2")}

    run(check, options(tmp_path), series)


def test_a_load_right_after_an_unload_serves_the_model(tmp_path):
    """The last of an unload and a load at once wins: the load must not take the version being
    unloaded for one it can keep."""
    add(tmp_path, "a", 1)
    add(tmp_path, "b", 1)

    async def check(models):
        await asyncio.gather(models.unload("a"), models.load("a"))
        assert rows(models) == {("a", "1"): "READY", ("b", "1"): "READY"}
        assert (await predict(models.get("a")))[0].inferred.detections
        await asyncio.gather(models.load("a"), models.unload("a"))
        assert models.serving_names() == ["b"]

    run(check, options(tmp_path))


def test_a_poll_during_an_explicit_load_keeps_its_override(tmp_path):
    add(tmp_path, "a", 1)
    add(tmp_path, "a", 2)  # config.yaml's default policy: latest 1

    async def check(models):
        assert models.ready_versions("a") == ["2"]
        every = parse_override('{"version_policy": {"all": {}}}')
        await asyncio.gather(models.load("a", every), models.poll())
        assert models.ready_versions("a") == ["1", "2"]
        await models.poll()
        assert models.ready_versions("a") == ["1", "2"]

    run(check, options(tmp_path))


def test_stop_during_a_load_stops_the_loading_version(tmp_path):
    add(tmp_path, "a", 1)

    async def main():
        models = ModelSet(options(tmp_path), Statistics())
        models.start()
        await until(lambda: not models.starting, "started")
        add(tmp_path, "a", 2)
        load = asyncio.create_task(models.load("a"))
        await until(lambda: models.models["a"].pending, "version 2 loading")
        loading = models.models["a"].pending[0].plane
        assert isinstance(loading, LocalDataPlane)
        await models.stop()
        with pytest.raises(Unavailable) as stopped:
            await load
        assert stopped.value.code == "shutting_down"
        assert not loading.ready and loading.backend is None and loading.infer_executor._shutdown
        assert models.serving_names() == [] and not any(v.plane.ready for v in models.loaded())

    asyncio.run(main())


def test_a_load_that_fails_half_way_frees_what_it_started_and_keeps_the_old_serving(tmp_path):
    add(tmp_path, "a", 1)
    series = Series()

    async def check(models):
        v1 = models.get("a")
        add(tmp_path, "a", 2)
        damaged(add(tmp_path, "a", 3))
        two = parse_override('{"version_policy": {"latest": {"num_versions": 2}}}')
        with pytest.raises(RepositoryError, match=r"version 3: .*damaged") as failed:
            await models.load("a", two)
        assert failed.value.code == "load_failed"
        assert models.get("a") is v1 and rows(models) == {("a", "1"): "READY"}
        assert ("a", "2") in series.made and series.live == {("a", "1")}
        assert (await predict(v1))[0].inferred.detections
        # version 1's own file replaced by a damaged one: its reload fails, and the version
        # 1 that serves keeps its statistics
        damaged(tmp_path / "a" / "1" / "shapes.pt")
        with pytest.raises(RepositoryError, match=r"version 1: .*damaged"):
            await models.load("a", parse_override('{"version_policy": {"specific": [1]}}'))
        assert models.get("a") is v1 and series.live == {("a", "1")}

    run(check, options(tmp_path), series)


def test_a_failed_reload_on_another_backend_leaves_the_serving_backend_announced(tmp_path):
    add(tmp_path, "a", 1)
    series = Series()

    async def check(models):
        v1 = models.get("a")
        assert series.backends[("a", "1")] == "torch"
        damaged(add(tmp_path, "a", 2))
        # version 1 reloads on ONNX Runtime (it loads), version 2 fails: neither stays
        both = parse_override('{"backend": "onnxruntime", "version_policy": {"latest": 2}}')
        with pytest.raises(RepositoryError, match=r"version 2: .*damaged"):
            await models.load("a", both)
        assert models.get("a") is v1 and series.backends[("a", "1")] == "torch"

    run(check, options(tmp_path), series)


# -- a server of one model --------------------------------------------------------------------------


def test_fixed_set_of_one_plane(checkpoint):
    opts = RuntimeOptions(model=str(checkpoint), backend="torch", device="cpu", max_batch=2)

    async def main():
        stats = Statistics()
        plane = LocalDataPlane(opts, stats)
        models = ModelSet.fixed(opts, stats, plane)
        models.start()
        await until(lambda: models.ready, "ready")
        name = plane.served_model().name
        assert models.get() is models.get(name) is models.get(name, "1") is plane
        assert models.default_name() == name and models.serving_names() == [name]
        assert [r.as_dict() for r in models.index()] == [
            {"name": name, "version": "1", "state": "READY", "reason": ""}
        ]
        with pytest.raises(UnknownModel, match="this server serves"):
            models.get("other")
        with pytest.raises(UnknownModel, match="its one version is '1'"):
            models.get(name, "2")
        for call in (models.load, models.unload):
            with pytest.raises(RepositoryError) as refused:
                await call(name)
            assert refused.value.code == "no_repository"
        with pytest.raises(RepositoryError):
            await models.poll()
        assert (await predict(models.get()))[0].inferred.detections
        await models.stop()
        assert not models.ready and plane.status == "draining"

    asyncio.run(main())
