"""maskrt on Ray Serve (the optional ``ray`` extra): many model replicas, one per GPU, behind
maskrt's own HTTP API, on a Ray cluster of any size.

Two deployments::

    HTTP -> MaskrtIngress (CPU)  --one call per image-->  MaskrtModel (one GPU each)
            maskrt serve's app: /predict, /v2,            @serve.batch -> Pipeline.run_batch
            probes, page; keys, body and pixel            (letterbox, deploy graph, paste, RLE)
            limits, request ids, decoding

The ingress serves the very app ``maskrt serve`` serves (:func:`~maskrt.server.app.create_app`:
every route, limit, key and answer), over a data plane (:class:`RayDataPlane`) that admits and
decodes each image on the ingress's CPU and sends it to the model deployment, whose replicas batch
images from all ingress replicas with ``@serve.batch`` (up to ``max_batch``, waiting at most
``max_delay_ms``) and run maskrt's pipeline on their device. Replica autoscaling follows the
images in flight per model replica (``target_ongoing_requests``; 2 x ``max_batch`` by default: one
batch running, one forming). Past ``max_queue`` images waiting in front of the replicas a request gets 503
``queue_full``; a request whose replica dies is sent to another one (predict is idempotent) and
gets a clean 503 if none answers; 504 at ``request_timeout_s``.

Run it with ``serve run maskrt.server.ray_serve:build`` plus ``key=value`` arguments: any maskrt
setting (``max_batch=8 backend=onnxruntime``; the replicas read ``MASKRT_*`` from their
environment too) and the Ray options of :class:`RayOptions` (``num_gpus=1 min_replicas=1
max_replicas=4``); or from a Serve config file with the same ``args``
(``deploy/kubernetes/ray/rayservice.yaml``). Model replicas export ``ray_maskrt_*`` metrics
through Ray's metrics agent (batch size, stage times, images), beside Ray Serve's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import torch
from fastapi import FastAPI
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maskrt.runtime.backends import open_backend
from maskrt.runtime.dataplane import DataPlane, ServedModel, unless_gone
from maskrt.runtime.errors import InferenceFailed, Unavailable
from maskrt.runtime.options import RuntimeOptions
from maskrt.runtime.pipeline import Inferred, Pipeline, PostOptions
from maskrt.runtime.statistics import Statistics
from maskrt.server.app import create_app
from maskrt.server.metrics import LATENCY_BUCKETS, batch_size_buckets
from maskrt.server.settings import Settings

log = logging.getLogger("maskrt.ray_serve")
RETRIES = 2  # extra attempts for an image whose model replica died or went away


class RayOptions(BaseModel):
    """How the deployments use the cluster (the ``build`` arguments that are not settings)."""

    model_config = {"extra": "forbid"}

    num_gpus: float = Field(1.0, ge=0, description="GPUs per model replica (0: run on CPUs)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per model replica")
    min_replicas: int = Field(1, ge=1, description="model replicas kept when idle")
    max_replicas: int = Field(4, ge=1, description="model replicas under load")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="images in flight per model replica; default 2 x max_batch"
    )
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress replicas (decode on CPU)")
    upscale_delay_s: float = Field(10.0, ge=0, description="load this long before scaling up")
    downscale_delay_s: float = Field(60.0, ge=0, description="idle this long before scaling down")
    look_back_period_s: float = Field(30.0, gt=0, description="window of the load average")


# ---------------------------------------------------------------------------------------------
# The model deployment


class MaskrtModel:
    """One backend and pipeline per replica; images from every ingress batched together."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.options = RuntimeOptions(**settings)
        backend = open_backend(self.options)
        self.pipeline = Pipeline(backend)
        max_batch = min(self.options.max_batch, backend.max_batch)
        self.pipeline.warmup([s for s in backend.warmup_batch_sizes() if s <= max_batch])
        self._run.set_max_batch_size(max_batch)
        self._run.set_batch_wait_timeout_s(self.options.max_delay_ms / 1000)
        # GET /v1/model of maskrt serve
        self.model = ServedModel.of(backend, max_batch, self.options.model_name)
        tags = {"model": self.model.name, "backend": backend.name}
        self.batch_size = Histogram(
            "maskrt_batch_size",
            "images per inference batch",
            boundaries=list(batch_size_buckets(max_batch)),
        )
        self.stage = Histogram(
            "maskrt_stage_duration_seconds",
            "batch stage time (preprocess, inference, postprocess)",
            boundaries=list(LATENCY_BUCKETS),
            tag_keys=("model", "backend", "stage"),
        )
        self.queue_wait = Histogram(
            "maskrt_queue_wait_seconds",
            "time an image waits for its batch in the replica",
            boundaries=list(LATENCY_BUCKETS),
        )
        self.images = Counter("maskrt_images", "images inferred", tag_keys=("model", "backend"))
        self.stage.set_default_tags(dict(tags))  # Ray adds its own tags to the dict it gets
        self.images.set_default_tags(dict(tags))

    def info(self) -> ServedModel:
        return self.model

    async def predict(self, image: torch.Tensor, options: PostOptions) -> Inferred:
        """One decoded uint8 ``[3, H, W]`` image through the next batch of this replica."""
        arrived = time.perf_counter()
        inferred, started = await self._run(image, options)
        inferred.queue_s = started - arrived
        self.queue_wait.observe(inferred.queue_s)
        return inferred

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _run(
        self, images: list[torch.Tensor], options: list[PostOptions]
    ) -> list[tuple[Inferred, float]]:
        started = time.perf_counter()
        # in a thread: the replica keeps taking requests (the next batch forms meanwhile)
        out = await asyncio.to_thread(self.pipeline.run_batch, images, options)
        self.batch_size.observe(len(images))
        for stage in ("preprocess", "inference", "postprocess"):
            self.stage.observe(getattr(out, f"{stage}_s"), tags={"stage": stage})
        self.images.inc(len(images))
        return [(inferred, started) for inferred in out.per_image()]


# ---------------------------------------------------------------------------------------------
# The HTTP ingress


class RayDataPlane(DataPlane):
    """The data plane of an ingress replica: admission and decoding here, inference in the model
    deployment (one call per image, batched there with every other ingress replica's images)."""

    def __init__(
        self, options: RuntimeOptions, model: DeploymentHandle, statistics: Statistics
    ) -> None:
        super().__init__(options, statistics)
        self.handle = model
        self._waiting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Ready once a model replica has described the model."""
        self._waiting = asyncio.get_running_loop().create_task(self._ask_model())

    async def _ask_model(self) -> None:
        while True:
            try:
                model: ServedModel = await self.handle.info.remote()
                break
            except (RayActorError, ReplicaUnavailableError, BackPressureError) as exc:
                log.info("no model replica answers yet (%s); asking again in 1 s", exc)
                await asyncio.sleep(1)
        self.model = model
        self.statistics.model_loaded(model.name, model.backend, model.device, model.fallback_from)
        if self.status == "loading":
            self.status = "ready"

    async def stop(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
        await super().stop()

    async def _run(
        self,
        images: Sequence[torch.Tensor],
        options: PostOptions,
        request_id: str,
        expired: Callable[[], bool],
        gone: Callable[[], Awaitable[None]] | None,
    ) -> list[Inferred]:
        calls = asyncio.gather(*(self._infer(image, options, request_id) for image in images))
        return list(await unless_gone(calls, gone))

    async def _infer(self, image: torch.Tensor, options: PostOptions, request_id: str) -> Inferred:
        for attempt in range(RETRIES + 1):
            response = self.handle.predict.remote(image, options)
            try:
                inferred: Inferred = await response
                return inferred
            except BackPressureError:
                raise Unavailable(
                    "queue_full",
                    f"the server is busy (more than {self.options.max_queue} images queued); "
                    "retry in 1 s",
                    retry_after_s=1,
                ) from None
            except RayTaskError:  # the batch failed in the replica (logged there)
                raise InferenceFailed(
                    "inference_failed",
                    f"inference failed for this request's batch; request id {request_id}",
                ) from None
            except (RayActorError, ReplicaUnavailableError) as exc:
                log.warning(
                    "model replica lost (%s); %s",
                    type(exc).__name__,
                    "answering 503" if attempt == RETRIES else "sending the image again",
                )
            except asyncio.CancelledError:  # the deadline, or the client gone: stop the work
                response.cancel()
                raise
        raise Unavailable(
            "replica_unavailable",
            f"no model replica could take this request (request id {request_id}); retry in 1 s",
            retry_after_s=1,
        )


class _ProxySetsRequestId:
    """Ray Serve's proxy gives every request an ``X-Request-ID`` (the client's, else a new one),
    passes it to the app (maskrt's middleware takes it as the request's id) and adds it to the
    response itself: the app's copy of the header is dropped so the client sees it once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_once(message: Message) -> None:
            if message["type"] == "http.response.start":
                del MutableHeaders(scope=message)["X-Request-ID"]
            await send(message)

        await self.app(scope, receive, send_once if scope["type"] == "http" else send)


def ingress_app(settings: Settings, model: DeploymentHandle) -> FastAPI:
    """``maskrt serve``'s app (:func:`~maskrt.server.app.create_app`) over the model deployment."""
    app = create_app(
        settings, data_plane=lambda statistics: RayDataPlane(settings, model, statistics)
    )
    app.add_middleware(_ProxySetsRequestId)
    return app


class MaskrtIngress:
    """The HTTP front: builds :func:`ingress_app` on each replica."""

    def __init__(self, model: DeploymentHandle, settings: dict[str, Any]) -> None:
        self.model = model
        self.settings = Settings(**settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return ingress_app(self.settings, self.model)


# ---------------------------------------------------------------------------------------------
# The application


def build(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``serve run maskrt.server.ray_serve:build key=value ...``."""
    ray_fields = set(RayOptions.model_fields)
    ray = RayOptions(**{k: v for k, v in args.items() if k in ray_fields})
    given = {k: v for k, v in args.items() if k not in ray_fields}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        known = sorted(ray_fields | set(Settings.model_fields))
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(known)}")
    settings = Settings(**given)  # invalid settings fail here, before any replica starts
    if settings.model_repository is not None:
        raise ValueError(
            "model_repository: the Ray Serve application serves one model (model=...); deploy "
            "one application per model, or serve a repository with maskrt serve"
        )
    target = ray.target_ongoing_requests or 2 * settings.max_batch
    model = serve.deployment(
        MaskrtModel,
        name="MaskrtModel",
        ray_actor_options={"num_gpus": ray.num_gpus, "num_cpus": ray.num_cpus},
        # one batch running and one forming per replica; more wait in front of the replicas
        max_ongoing_requests=2 * settings.max_batch,
        max_queued_requests=settings.max_queue,
        autoscaling_config={
            "min_replicas": ray.min_replicas,
            "max_replicas": ray.max_replicas,
            "target_ongoing_requests": target,
            "upscale_delay_s": ray.upscale_delay_s,
            "downscale_delay_s": ray.downscale_delay_s,
            "look_back_period_s": ray.look_back_period_s,
        },
        graceful_shutdown_timeout_s=settings.request_timeout_s + 5,
        health_check_period_s=10,
    )
    ingress = serve.deployment(
        serve.ingress()(MaskrtIngress),
        name="MaskrtIngress",
        num_replicas=ray.ingress_replicas,
        ray_actor_options={"num_cpus": 0.5},
        max_ongoing_requests=4 * settings.max_queue,
        graceful_shutdown_timeout_s=settings.request_timeout_s + 5,
    )
    runtime = {k: v for k, v in given.items() if k in RuntimeOptions.model_fields}
    return ingress.bind(model.bind(runtime), given)
