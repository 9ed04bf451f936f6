"""The models one server serves: every loaded version of every model, each behind its own data
plane, and the repository operations that change them (load, unload, swap, poll).

Front doors ask :meth:`ModelSet.get` for the data plane of a request's model and version (by
default the default model's newest ready version) and call it as before. Each loaded version is a
:class:`~maskrt.runtime.local.LocalDataPlane` with its own backend, batcher, queue, threads and
:class:`~maskrt.runtime.statistics.Statistics` (``statistics.for_model``); the decoding threads,
the pixel budgets and the cap on all queues together are the :class:`Shared` resources of the
server.

A swap never drops a request: the new version is loaded and warmed up while the old one serves;
only once it is ready do unversioned requests go to it; the old one then takes no new request,
finishes those it has, and is stopped and freed (:meth:`ModelSet.load`). ``maskrt serve --model``
is a set of one fixed data plane (:meth:`ModelSet.fixed`), which has nothing to load or unload.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maskrt.errors import MaskrtError, describe
from maskrt.runtime.dataplane import DataPlane, Shared
from maskrt.runtime.errors import BadRequest, RepositoryError, Unavailable, UnknownModel
from maskrt.runtime.local import LocalDataPlane
from maskrt.runtime.options import RuntimeOptions
from maskrt.runtime.repository import (
    NAME,
    ModelConfig,
    ModelEntry,
    options_for,
    read_model,
    scan,
)
from maskrt.runtime.statistics import Statistics

log = logging.getLogger("maskrt.repository")

State = Literal["LOADING", "READY", "UNLOADING", "UNAVAILABLE"]
PlaneFactory = Callable[[RuntimeOptions, Statistics, Shared], LocalDataPlane]
MIB = 1 << 20


@dataclass(eq=False)
class Version:
    """One version of a model and its data plane."""

    name: str
    number: int
    plane: DataPlane
    state: State = "LOADING"
    source: tuple[str, int, int] = ("", 0, 0)  # model file, size, mtime: a changed file reloads
    memory: int = 0  # bytes it takes: estimated before its load, measured after

    @property
    def label(self) -> str:
        return str(self.number)


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (Triton's ``RepositoryIndex``)."""

    name: str
    version: str  # "" for a model with no version loaded
    state: State
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        row = {"name": self.name, "version": self.version, "state": self.state}
        if not self.version:
            del row["version"]
        row["reason"] = self.reason
        return row


@dataclass
class _Model:
    """What the set knows of one model: its versions, and why it does not serve when it
    does not (``reason``)."""

    versions: dict[int, Version] = field(default_factory=dict)  # ready: taking requests
    pending: list[Version] = field(default_factory=list)  # loading, not yet taking requests
    retiring: list[Version] = field(default_factory=list)  # unloading: finishing their requests
    reason: str = ""
    failed_source: object = None  # what the last failed load read, not retried by a poll
    override: ModelConfig | None = None  # the last load request's config, which polls keep
    config: ModelConfig | None = None  # what its versions were loaded with: an edit reloads
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def live(self) -> list[Version]:
        """The versions with a data plane: loading, ready or unloading."""
        return [*self.versions.values(), *self.pending, *self.retiring]


class ModelSet:
    """Every model version a server serves (see the module docstring). Create it in the event
    loop's thread, :meth:`start` it in the running loop, :meth:`stop` it there."""

    def __init__(
        self,
        options: RuntimeOptions,
        statistics: Statistics,
        *,
        make_plane: PlaneFactory | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.options = options
        self.statistics = statistics
        self.root: Path | None = options.model_repository
        self.shared = Shared.create(options, statistics)
        self.shared.queued = self._queued
        self.shared.planes = lambda: max(1, sum(len(m.versions) for m in self.models.values()))
        self.make_plane = make_plane or _local_plane
        self.on_fatal = on_fatal
        self.models: dict[str, _Model] = {}
        self.fixed_plane: DataPlane | None = None
        self.starting = True
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warming: list[list[bool]] = []  # a flag per load warming up: did another overlap?

    @classmethod
    def fixed(cls, options: RuntimeOptions, statistics: Statistics, plane: DataPlane) -> ModelSet:
        """The set of one data plane made elsewhere (``--model``, Ray Serve's): version
        ``MODEL_VERSION`` (1) of the model it serves, which cannot be unloaded or replaced."""
        models = cls(options.model_copy(update={"model_repository": None}), statistics)
        models.shared.close()  # the plane has its own
        models.fixed_plane = plane
        return models

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.fixed_plane is not None:
            self.fixed_plane.start()
            self.starting = False
            return
        self._spawn(self._start_up())
        if self.options.repository_poll_s:
            self._spawn(self._poll_forever(self.options.repository_poll_s))

    async def _start_up(self) -> None:
        assert self.root is not None
        try:
            entries = await asyncio.to_thread(scan, self.root)
        except MaskrtError as exc:
            self._fatal(exc)
            return
        results = await asyncio.gather(
            *(self._load_logged(name, entry) for name, entry in entries.items())
        )
        self.starting = False
        if not any(results):
            self._fatal(MaskrtError(f"{self.root}: no model of the repository could be loaded"))
            return
        log.info("repository ready", extra={"fields": {"models": self.serving_names()}})

    async def _load_logged(
        self, name: str, entry: ModelEntry, config: ModelConfig | None = None
    ) -> bool:
        try:
            await self.load(name, config, entry=entry)
        except (RepositoryError, UnknownModel, Unavailable) as exc:
            log.error("model %s not loaded: %s", name, exc.message)
            return False
        return True

    def _fatal(self, exc: BaseException) -> None:
        self.starting = False
        log.error("%s", describe(exc))
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def begin_drain(self) -> None:
        self.draining = True
        for plane in self._planes():
            plane.begin_drain()

    async def stop(self) -> None:
        """Drain every version, loading ones included (a load under way fails), then free them."""
        self.begin_drain()
        for task in self._tasks:
            task.cancel()
        if self.fixed_plane is not None:
            await self.fixed_plane.stop()
            return
        await asyncio.gather(*(self._free(v) for m in self.models.values() for v in m.live()))
        self.shared.close()

    # -- what front doors ask ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every start-up load has ended and a model serves (``/readyz``)."""
        if self.fixed_plane is not None:
            return self.fixed_plane.ready
        return not self.starting and not self.draining and bool(self.serving_names())

    def not_ready(self) -> Unavailable:
        if self.fixed_plane is not None:
            return self.fixed_plane.not_ready()
        if self.draining:
            return Unavailable("shutting_down", "the server is shutting down", retry_after_s=5)
        if self.starting:
            return Unavailable(
                "not_ready", "the models are loading and warming up", retry_after_s=5
            )
        return Unavailable(
            "not_ready", "no model is loaded (see the repository index)", retry_after_s=30
        )

    def stuck_for(self) -> float | None:
        stuck = [s for s in (p.stuck_for() for p in self._planes()) if s is not None]
        return max(stuck) if stuck else None

    def get(self, name: str | None = None, version: str | int | None = None) -> DataPlane:
        """The data plane for a request to ``name`` (default: :meth:`default_name`) and
        ``version`` (default: the newest ready one). Raises
        :class:`~maskrt.runtime.errors.UnknownModel` (no such model or version loaded),
        :class:`~maskrt.runtime.errors.BadRequest` (no name where several models serve) or
        :class:`~maskrt.runtime.errors.Unavailable` (loading, or the server draining)."""
        if self.fixed_plane is not None:
            return self._get_fixed(name, version)
        if self.draining:
            raise self.not_ready()
        name = self.default_name() if name is None else name
        model = self.models.get(name)
        number = None if version is None else _version_number(version)
        ready = {} if model is None else model.versions  # all ready while not draining
        if version is None and ready:
            return ready[max(ready)].plane
        if number is not None and number in ready:
            return ready[number].plane
        if model is not None and any(version is None or v.number == number for v in model.pending):
            what = f"model {name!r}" if version is None else f"version {number} of model {name!r}"
            raise Unavailable("not_ready", f"{what} is loading and warming up", retry_after_s=5)
        if model is None or not ready:
            if self.starting:
                raise self.not_ready()
            why = f" ({model.reason})" if model is not None and model.reason else ""
            raise UnknownModel(
                "unknown_model",
                f"model {name!r} is not loaded{why}; loaded: {self._loaded_list()}",
            )
        raise UnknownModel(
            "unknown_model",
            f"model {name!r} has no version {str(version)!r} loaded; its versions: "
            f"{', '.join(str(n) for n in sorted(ready))}",
        )

    def _get_fixed(self, name: str | None, version: str | int | None) -> DataPlane:
        plane = self.fixed_plane
        assert plane is not None
        served = plane.served_model().name  # not ready: Unavailable
        if name is not None and name != served:
            raise UnknownModel(
                "unknown_model", f"unknown model {name!r}; this server serves {served!r}"
            )
        number = self.options.model_version
        if version is not None and _version_number(version) != number:
            raise UnknownModel(
                "unknown_model",
                f"model {served!r} has no version {str(version)!r}; its one version is '{number}'",
            )
        return plane

    def default_name(self) -> str:
        """The model of requests that name none: ``DEFAULT_MODEL``, else the only one loaded.
        :class:`~maskrt.runtime.errors.BadRequest` when several are and none is the default."""
        if self.fixed_plane is not None:
            return self.fixed_plane.served_model().name
        if self.options.default_model:
            return self.options.default_model
        names = [n for n, m in self.models.items() if m.versions]
        if len(names) == 1:
            return names[0]
        if not names:
            raise (
                self.not_ready()
                if self.starting
                else UnknownModel("unknown_model", "no model is loaded")
            )
        raise BadRequest(
            "model_required",
            f"this server serves several models ({', '.join(sorted(names))}): name one (the "
            f"'model' parameter, or /v2/models/NAME), or set DEFAULT_MODEL",
        )

    def serving_names(self) -> list[str]:
        """The models with a ready version."""
        if self.fixed_plane is not None:
            return [self.fixed_plane.served_model().name] if self.fixed_plane.ready else []
        return sorted(
            n
            for n, m in self.models.items()
            if any(v.state == "READY" for v in m.versions.values())
        )

    def ready_planes(self) -> list[DataPlane]:
        """The data plane of every ready version, by model name and version."""
        return [v.plane for v in self.loaded() if v.state == "READY"]

    def statistics_planes(self, name: str | None, version: str | None) -> list[DataPlane]:
        """Whose statistics a statistics request asks for, as Triton answers it: every ready
        version (``name`` ``None``), every ready version of ``name`` (``version`` ``None``), or
        that one version; :meth:`get`'s errors for a model or version not served."""
        if name is None:
            return self.ready_planes()
        if version is not None:
            return [self.get(name, version)]
        self.get(name)
        return [v.plane for v in self.loaded() if v.name == name and v.state == "READY"]

    def ready_versions(self, name: str) -> list[str]:
        """The ready versions of ``name``, ascending."""
        return [v.label for v in self.loaded() if v.name == name and v.state == "READY"]

    def loaded(self) -> list[Version]:
        """Every loaded version (loading, ready or unloading), by model name and version."""
        if self.fixed_plane is not None:
            plane = self.fixed_plane
            name = plane.model.name if plane.model is not None else self.options.model_name or ""
            state: State = "READY" if plane.ready else "LOADING"
            if plane.status in ("failed", "draining"):
                state = "UNAVAILABLE"
            return [Version(name, self.options.model_version, plane, state)]
        return sorted(
            (v for m in self.models.values() for v in m.live()), key=lambda v: (v.name, v.number)
        )

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """The repository index: every loaded version, and every model of the repository that has
        none loaded, with why."""
        rows = [IndexEntry(v.name, v.label, v.state) for v in self.loaded()]
        if self.root is not None:
            names = _names(self.root) | set(self.models)
            for name in sorted(names - {v.name for v in self.loaded()}):
                model = self.models.get(name)
                reason = model.reason if model is not None and model.reason else "unloaded"
                rows.append(IndexEntry(name, "", "UNAVAILABLE", reason))
        rows.sort(key=lambda r: (r.name, int(r.version or 0)))
        return [r for r in rows if r.state == "READY"] if ready_only else rows

    # -- repository operations -----------------------------------------------------------------

    async def load(
        self, name: str, config: ModelConfig | None = None, *, entry: ModelEntry | None = None
    ) -> None:
        """Load ``name``'s versions its version policy (of ``config``, a load request's override
        over its ``config.yaml``) selects, warm each up, then let them take the model's traffic
        and unload the versions the policy no longer selects (after their in-flight requests).
        A version already loaded from the same file with the same options stays as it is; the
        override holds until the next load request (polls keep it). Raises
        :class:`~maskrt.runtime.errors.RepositoryError`,
        :class:`~maskrt.runtime.errors.UnknownModel`, or
        :class:`~maskrt.runtime.errors.Unavailable` when the server is shutting down."""
        root = self._root()
        if self.draining:
            raise self.not_ready()
        if entry is None and name not in self.models:
            await self._known(root, name)
        model = self.models.setdefault(name, _Model())
        async with model.lock:
            if entry is None:
                try:
                    entry = await asyncio.to_thread(read_model, root, name)
                except MaskrtError as exc:
                    model.reason = str(exc)
                    raise UnknownModel("unknown_model", str(exc)) from None
            merged = _merged(entry.config, config)
            try:
                plan = await asyncio.to_thread(self._plan, entry, merged)
                devices = {options.resolved_device() for _, options, _ in plan}
                self._check_limits(plan, await asyncio.to_thread(_free_memory, devices))
            except MaskrtError as exc:
                model.reason = str(exc)
                model.failed_source = _sources(entry)
                raise RepositoryError("load_failed", f"model {name!r}: {exc}") from None
            except RepositoryError as exc:  # a limit: retried by a poll, once there is room
                model.reason = exc.message
                raise
            started = [self._new_version(name, *step) for step in plan]
            model.pending = started
            failures: list[str | None] = ["cancelled"]  # the server stopping cancels a load
            try:
                failures = await self._warm(started)
            finally:
                if any(failures) or self.draining:  # nothing of a failed load stays
                    await asyncio.gather(*(self._free(v) for v in started))
                    _announce(
                        model.versions[v.number] for v in started if v.number in model.versions
                    )
                model.pending = []
            if self.draining:
                raise self.not_ready()
            failed = [(v, why) for v, why in zip(started, failures) if why is not None]
            if failed:
                model.reason = "; ".join(f"version {v.label}: {why}" for v, why in failed)
                model.failed_source = _sources(entry)
                raise RepositoryError("load_failed", f"model {name!r}: {model.reason}")
            wanted = set(entry.served_versions(merged))
            renewed = {v.number for v in started}
            old = [v for n, v in model.versions.items() if n not in wanted or n in renewed]
            for v in old:
                del model.versions[v.number]  # no new request picks it from here on
                v.state = "UNLOADING"
                model.retiring.append(v)
            for v in started:
                model.versions[v.number] = v
                v.state = "READY"
            model.reason, model.failed_source, model.override = "", None, config
            model.config = merged
            log.info(
                "model loaded",
                extra={
                    "fields": {
                        "model": name,
                        "versions": sorted(model.versions),
                        "new": sorted(renewed),
                        "retiring": [v.number for v in old],
                    }
                },
            )
        await asyncio.gather(*(self._retire(model, v) for v in old))

    async def unload(self, name: str) -> None:
        """Unload every version of ``name`` once its in-flight requests are answered; polls leave
        it unloaded until a load request."""
        root = self._root()
        if name not in self.models:
            await self._known(root, name)
        model = self.models.setdefault(name, _Model())
        async with model.lock:
            versions = list(model.versions.values())
            model.versions.clear()
            for v in versions:
                v.state = "UNLOADING"
            model.retiring += versions
            model.reason, model.override = "unloaded", None
        await asyncio.gather(*(self._retire(model, v) for v in versions))

    def _root(self) -> Path:
        if self.root is None:
            raise RepositoryError(
                "no_repository",
                "this server serves one model (--model); serve a repository "
                "(--model-repository) to load and unload models",
            )
        return self.root

    @staticmethod
    async def _known(root: Path, name: str) -> None:
        """:class:`~maskrt.runtime.errors.UnknownModel` unless ``root`` has a folder ``name``."""
        if name not in await asyncio.to_thread(_names, root):
            raise UnknownModel("unknown_model", f"no model {name!r} in the repository")

    def _plan(
        self, entry: ModelEntry, config: ModelConfig
    ) -> list[tuple[int, RuntimeOptions, tuple[str, int, int]]]:
        """The versions to load (number, options, file signature): those the policy selects that
        are not ready from the same file with the same options. Checks each file as ``maskrt
        serve`` checks its model (class count against labels, backend against kind)."""
        from maskrt.runtime.backends import check_model

        if entry.error is not None:
            raise MaskrtError(entry.error)
        current = self.models.get(entry.name, _Model()).versions
        plan = []
        for number in entry.served_versions(config):
            options = options_for(self.options, entry, number, config)
            if options.max_queue > self.options.max_queue:
                raise MaskrtError(
                    f"max_queue {options.max_queue} is above the server's MAX_QUEUE "
                    f"({self.options.max_queue})"
                )
            source = _source(entry.versions[number])
            loaded = current.get(number)
            if loaded is not None and loaded.source == source and loaded.plane.options == options:
                continue
            check_model(options)
            plan.append((number, options, source))
        return plan

    def _new_version(
        self, name: str, number: int, options: RuntimeOptions, source: tuple[str, int, int]
    ) -> Version:
        stats = self.statistics.for_model(name, str(number))
        plane = self.make_plane(options, stats, self.shared)
        return Version(name, number, plane, "LOADING", source, _estimate(source[1]))

    def _check_limits(
        self,
        plan: list[tuple[int, RuntimeOptions, tuple[str, int, int]]],
        free: tuple[int, str] | None,
    ) -> None:
        """Refuse a load that passes ``MAX_LOADED_MODELS``, the memory budget or the ``free``
        memory (bytes, and where) before anything of it starts: a clear error rather than an
        out-of-memory kill."""
        if not plan:
            return
        loaded = [v for m in self.models.values() for v in [*m.versions.values(), *m.pending]]
        limit = self.options.max_loaded_models
        if len(loaded) + len(plan) > limit:
            raise RepositoryError(
                "too_many_models",
                f"loading {len(plan)} version(s) would pass MAX_LOADED_MODELS ({limit}): "
                f"{len(loaded)} loaded; unload one first",
            )
        need = sum(_estimate(source[1]) for _, _, source in plan)
        budget = self.options.model_memory_budget_mb
        if budget is not None:
            held = sum(v.memory for v in loaded)
            if held + need > budget * MIB:
                raise RepositoryError(
                    "memory_budget",
                    f"loading needs about {need // MIB} MiB; {held // MIB} MiB of "
                    f"MODEL_MEMORY_BUDGET_MB ({budget}) are held by the loaded versions",
                )
        if free is not None and need > free[0]:
            raise RepositoryError(
                "memory_budget",
                f"loading needs about {need // MIB} MiB; {free[1]} has {free[0] // MIB} MiB free",
            )

    async def _warm(self, started: list[Version]) -> list[str | None]:
        """Start ``started`` and wait for their loads and warm-ups: for each, ``None`` or why it
        failed. What the process grew by meanwhile is their memory (shared evenly) when no other
        load ran at the same time; else it holds the others' too, and the estimates stay."""
        if not started:
            return []
        overlapped = [bool(self._warming)]
        for other in self._warming:
            other[0] = True
        self._warming.append(overlapped)
        before = _rss()
        planes = []
        try:
            for v in started:
                assert isinstance(v.plane, LocalDataPlane)
                v.plane.start()
                planes.append(v.plane)
            await asyncio.wait([p.load_task for p in planes if p.load_task is not None])
        finally:
            self._warming.remove(overlapped)
        failures = [None if p.ready else p.error or "the model failed to load" for p in planes]
        if not overlapped[0] and not any(failures):
            share = (_rss() - before) // len(started)
            for v in started:
                v.memory = max(v.memory, share)
        return failures

    async def _retire(self, model: _Model, v: Version) -> None:
        """Free ``v`` once the requests it took are answered."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.options.request_timeout_s + 5
        while v.plane.statistics.requests_in_flight and loop.time() < until:
            await asyncio.sleep(0.02)
        await self._free(v)
        model.retiring.remove(v)
        log.info("model version unloaded", extra={"fields": {"model": v.name, "version": v.number}})

    async def _free(self, v: Version) -> None:
        """Stop ``v``'s data plane (its backend, pipeline, batcher and threads go with it) and give
        its memory back; once, whoever asks first."""
        if v.state == "UNAVAILABLE":
            return
        v.state = "UNAVAILABLE"
        await v.plane.stop()
        model = self.models.get(v.name)
        # statistics are per name and number: a version of the same number replacing this one
        # (a replaced file) has them now
        if model is None or all(o.number != v.number for o in model.live() if o is not v):
            self.statistics.model_unloaded(v.name, v.label)
        await asyncio.to_thread(_release_memory)

    # -- polling -------------------------------------------------------------------------------

    async def _poll_forever(self, interval_s: float) -> None:
        """Every ``interval_s``: load what changed on disk (a new version folder, a new model, a
        replaced file, an edited ``config.yaml``), unload what was removed. A model unloaded
        through the API stays so."""
        assert self.root is not None
        while True:
            await asyncio.sleep(interval_s)
            if self.starting or self.draining:
                continue
            try:
                await self.poll()
            except Exception:  # a poll must never end polling
                log.exception("repository poll failed")

    async def poll(self) -> None:
        """One look at the repository (see :meth:`_poll_forever`)."""
        root = self._root()
        try:
            entries = await asyncio.to_thread(scan, root)
        except MaskrtError as exc:
            log.error("repository poll: %s", exc)
            return
        for name, entry in entries.items():
            model = self.models.get(name, _Model())
            if model.reason == "unloaded":
                continue
            config = _merged(entry.config, model.override)
            target = {n: _source(entry.versions[n]) for n in entry.served_versions(config)}
            loaded = {n: v.source for n, v in model.versions.items()}
            if entry.error is None and target == loaded and config == model.config:
                continue
            if model.failed_source == _sources(entry):
                continue  # failed as it is now; retried when it changes
            await self._load_logged(name, entry, model.override)
        for name, model in list(self.models.items()):
            if name in entries:
                continue
            if model.versions:
                log.info("model %s left the repository: unloading it", name)
                await self.unload(name)
            if not model.live() and not model.lock.locked():
                del self.models[name]  # nothing to say about it in the index any more

    # -- helpers -------------------------------------------------------------------------------

    def _planes(self) -> list[DataPlane]:
        if self.fixed_plane is not None:
            return [self.fixed_plane]
        return [v.plane for m in self.models.values() for v in m.live()]

    def _queued(self) -> int:
        return sum(
            p.batcher.depth
            for p in self._planes()
            if isinstance(p, LocalDataPlane) and p.batcher is not None
        )

    def _loaded_list(self) -> str:
        return ", ".join(self.serving_names()) or "none"

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _local_plane(options: RuntimeOptions, stats: Statistics, shared: Shared) -> LocalDataPlane:
    return LocalDataPlane(options, stats, shared=shared)


def _announce(versions: Iterable[Version]) -> None:
    """Say again which model the serving ``versions`` loaded: a failed reload of one of them had
    its statistics (shared per name and version) say what it loaded."""
    for v in versions:
        if v.plane.model is not None:
            m = v.plane.model
            v.plane.statistics.model_loaded(m.name, m.backend, m.device, m.fallback_from)


def _version_number(version: str | int) -> int | None:
    text = str(version)
    return int(text) if text.isdigit() and not text.startswith("0") else None


def _names(root: Path) -> set[str]:
    """The model folders of ``root`` (without reading them); none when it is gone or cannot be
    listed (the loaded versions serve on)."""
    try:
        return {p.name for p in root.iterdir() if p.is_dir() and NAME.match(p.name)}
    except OSError as exc:
        log.warning("cannot list the model repository %s: %s", root, exc.strerror)
        return set()


def _merged(config: ModelConfig, override: ModelConfig | None) -> ModelConfig:
    """``config.yaml``'s config with what a load request's ``override`` sets over it."""
    if override is None:
        return config
    return ModelConfig.model_validate(
        {**config.model_dump(), **override.model_dump(exclude_unset=True)}
    )


def _source(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _sources(entry: ModelEntry) -> object:
    """What a load of ``entry`` reads: its error, config and version files."""
    files = tuple(sorted((n, _source(p)) for n, p in entry.versions.items()))
    return (entry.error, entry.config, files)


def _estimate(file_bytes: int) -> int:
    """Memory a version takes before it is measured: its weights twice (the file's and the
    runtime's copy) and 64 MiB of runtime."""
    return 2 * max(file_bytes, 0) + 64 * MIB


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _available_memory() -> int | None:
    """The machine's available memory, or less in a container with a memory limit (cgroup v2:
    the limit less what the container uses, its reclaimable page cache not counted)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        stat = Path("/sys/fs/cgroup/memory.stat").read_text().split()
        used -= int(dict(zip(stat[::2], stat[1::2])).get("inactive_file", 0))
    except (OSError, ValueError):
        return available
    if limit == "max":
        return available
    left = max(0, int(limit) - used)
    return left if available is None else min(available, left)


def _free_memory(devices: set[str]) -> tuple[int, str] | None:
    """The least memory free where a load on ``devices`` takes it, and where: the machine's
    available memory, and each CUDA device's free memory."""
    free = []
    available = _available_memory()
    if available is not None:
        free.append((available, "the machine"))
    cuda = sorted(d for d in devices if d.startswith("cuda"))
    if cuda:
        import torch

        free += [(torch.cuda.mem_get_info(torch.device(d))[0], f"the GPU {d}") for d in cuda]
    return min(free, default=None)


def _release_memory() -> None:
    """Give an unloaded version's memory back: collect its objects, return the freed heap to the
    system (glibc keeps it otherwise), and the GPU's cached blocks to the driver."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
