"""maskrt on Ray Serve (the optional ``ray`` extra): many model replicas, one per GPU, behind
maskrt's own HTTP API, on a Ray cluster of any size.

Two deployments::

    HTTP -> MaskrtIngress (CPU)  --one call per image-->  MaskrtModel (one GPU each)
            /predict, /predict/batch, /v1/model,          @serve.batch -> Pipeline.run_batch
            /healthz, /readyz; API keys, body and         (letterbox, deploy graph, paste, RLE)
            pixel limits, request ids, decoding

The ingress speaks maskrt's API with the same answers and errors as ``maskrt serve`` (it reuses the
server's request middleware, body reading, parameter parsing and answer format). It decodes each
image on its CPU and sends it to the model deployment, whose replicas batch images from all
ingress replicas with ``@serve.batch`` (up to ``max_batch``, waiting at most ``max_delay_ms``) and
run maskrt's pipeline on their device. Replica autoscaling follows the images in flight per model
replica (``target_ongoing_requests``; 2 x ``max_batch`` by default: one batch running, one
forming). Past ``max_queue`` images waiting in front of the replicas a request gets 503
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
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maskrt.runtime.decode import decode_image
from maskrt.runtime.pipeline import Pipeline, PostOptions, answer, model_info
from maskrt.server.errors import ApiError, install_error_handlers, json_response
from maskrt.server.metrics import LATENCY_BUCKETS, Metrics, batch_size_buckets
from maskrt.server.middleware import BodyLimitMiddleware, RequestContextMiddleware
from maskrt.server.parsing import (
    PARAMETERS,
    classify_content_type,
    parse_params,
    post_options,
    read_images,
    request_body_doc,
)
from maskrt.server.schemas import (
    ERROR_RESPONSES,
    BatchPredictResponse,
    ModelInfoResponse,
    PredictResponse,
)
from maskrt.server.security import ApiKeys
from maskrt.server.settings import Settings
from maskrt.server.state import JobResult

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


@dataclass
class ImageOut:
    """What a model replica returns for one image."""

    result: JobResult
    queue_wait_s: float


class MaskrtModel:
    """One backend and pipeline per replica; images from every ingress batched together."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from maskrt.runtime.backends import open_backend

        self.settings = Settings(**settings)
        backend = open_backend(self.settings)
        self.pipeline = Pipeline(backend)
        max_batch = min(self.settings.max_batch, backend.max_batch)
        self.pipeline.warmup([s for s in backend.warmup_batch_sizes() if s <= max_batch])
        self._run.set_max_batch_size(max_batch)
        self._run.set_batch_wait_timeout_s(self.settings.max_delay_ms / 1000)
        info = backend.info
        self.model_info = model_info(backend, max_batch)  # GET /v1/model of maskrt serve
        tags = {"model": info.name, "backend": backend.name}
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

    def info(self) -> dict[str, Any]:
        return self.model_info

    async def predict(self, image, options: PostOptions) -> ImageOut:
        """One decoded uint8 ``[3, H, W]`` image through the next batch of this replica."""
        arrived = time.perf_counter()
        result, started = await self._run(image, options)
        self.queue_wait.observe(started - arrived)
        return ImageOut(result, started - arrived)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _run(self, images: list, options: list[PostOptions]) -> list[tuple[JobResult, float]]:
        started = time.perf_counter()
        # in a thread: the replica keeps taking requests (the next batch forms meanwhile)
        out = await asyncio.to_thread(self.pipeline.run_batch, images, options)
        self.batch_size.observe(len(images))
        for stage in ("preprocess", "inference", "postprocess"):
            self.stage.observe(getattr(out, f"{stage}_s"), tags={"stage": stage})
        self.images.inc(len(images))
        return [
            (JobResult(d, out.preprocess_s, out.inference_s, out.postprocess_s), started)
            for d in out.detections
        ]


# ---------------------------------------------------------------------------------------------
# The HTTP ingress


class IngressState:
    """What the ingress app needs: settings, the metrics of the request middleware (this
    replica's requests), the API keys, the model handle and, once known, the model's info."""

    def __init__(self, settings: Settings, model: DeploymentHandle) -> None:
        self.settings = settings
        self.metrics = Metrics(max_batch=settings.max_batch, process=False)
        self.model = model
        self.keys = ApiKeys(settings.api_keys)
        self.model_info: dict[str, Any] = {}
        self.model_ref: dict[str, str] = {}  # what each answer names, as maskrt serve's
        self.decode_executor = ThreadPoolExecutor(2, thread_name_prefix="maskrt-decode")

    async def info(self) -> dict[str, Any]:
        """The model's info (asked once); 503 while no model replica is up."""
        if not self.model_info:
            try:
                info = await self.model.info.remote()
            except (RayActorError, ReplicaUnavailableError, BackPressureError):
                raise ApiError(
                    503, "not_ready", "no model replica is ready yet", {"Retry-After": "5"}
                ) from None
            self.model_ref = {k: info[k] for k in ("name", "version", "backend", "device")}
            self.model_info = info
        return self.model_info

    async def decode(self, data: bytes, name: str):
        loop = asyncio.get_running_loop()
        call = functools.partial(
            decode_image, data, max_pixels=self.settings.max_image_pixels, name=name
        )
        return await loop.run_in_executor(self.decode_executor, call)

    async def infer(self, image, options: PostOptions, request_id: str) -> ImageOut:
        for attempt in range(RETRIES + 1):
            try:
                out: ImageOut = await self.model.predict.remote(image, options)
                return out
            except BackPressureError:
                raise ApiError(
                    503,
                    "queue_full",
                    f"the server is busy (more than {self.settings.max_queue} images queued); "
                    "retry in 1 s",
                    {"Retry-After": "1"},
                ) from None
            except RayTaskError:  # the batch failed in the replica (logged there)
                raise ApiError(
                    500,
                    "inference_failed",
                    f"inference failed for this request's batch; request id {request_id}",
                ) from None
            except (RayActorError, ReplicaUnavailableError) as exc:
                log.warning(
                    "model replica lost (%s); %s",
                    type(exc).__name__,
                    "answering 503" if attempt == RETRIES else "sending the image again",
                )
        raise ApiError(
            503,
            "replica_unavailable",
            f"no model replica could take this request (request id {request_id}); retry in 1 s",
            {"Retry-After": "1"},
        )


def ingress_app(settings: Settings, model: DeploymentHandle) -> FastAPI:
    """maskrt's HTTP API in front of the model deployment."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, settings.max_image_pixels)
    state = IngressState(settings, model)
    app = FastAPI(title="maskrt on Ray Serve", description="maskrt's API; see docs/scaling.md")

    async def require_key(request: Request) -> None:
        state.keys.check(request.headers.get("authorization"), request.headers.get("x-api-key"))

    auth = [Depends(require_key)] if state.keys.enabled else []

    @app.get("/healthz", summary="the ingress answers")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", summary="a model replica has answered")
    async def readyz() -> Response:
        await state.info()
        return json_response({"status": "ready"})

    @app.get("/metrics", summary="this ingress replica's request metrics")
    async def metrics() -> Response:
        """The model replicas' metrics are Ray's: ``ray_maskrt_*`` from each node's agent."""
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/model", response_model=ModelInfoResponse, dependencies=auth)
    async def model_info() -> Response:
        return json_response(await state.info())

    async def handle(request: Request, batch: bool) -> list[dict[str, Any]]:
        await state.info()
        kind = classify_content_type(request.headers.get("content-type", ""), batch)
        rid = request.scope["state"]["request_id"]
        elapsed = time.perf_counter() - request.scope["state"]["start"]
        try:
            async with asyncio.timeout(settings.request_timeout_s - elapsed):
                datas, fields = await read_images(request, kind, batch, settings.max_queue)
                params = parse_params(list(request.query_params.multi_items()) + fields)
                options = post_options(params, settings.score_threshold)
                names = [f"images[{i}]" if batch else "image" for i in range(len(datas))]
                decoded = await asyncio.gather(*map(state.decode, datas, names))
                outs = await asyncio.gather(*(state.infer(d.tensor, options, rid) for d in decoded))
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"no answer within the request timeout of {settings.request_timeout_s:g} s",
            ) from None
        return [
            answer(state.model_ref, d, o.result.detections, o.queue_wait_s, o.result)
            for d, o in zip(decoded, outs)
        ]

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body_doc(batch=False),
        dependencies=auth,
    )
    async def predict(request: Request) -> Response:
        return json_response((await handle(request, batch=False))[0])

    @app.post(
        "/predict/batch",
        response_model=BatchPredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body_doc(batch=True),
        dependencies=auth,
    )
    async def predict_batch(request: Request) -> Response:
        return json_response({"results": await handle(request, batch=True)})

    install_error_handlers(app, known_parameters=PARAMETERS)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    app.add_middleware(_ProxySetsRequestId)
    return app


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
    return ingress.bind(model.bind(given), given)
