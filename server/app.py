"""The FastAPI app: routes, request middleware, model loading and warm-up, error answers.

:func:`create_app` builds an app from :class:`~maskrt.server.settings.Settings`. The app starts
listening at once (``/healthz`` answers), loads the model in the background (the inference thread),
runs one warm-up batch of every size the backend will use, then turns ready (``/readyz`` 200) and
starts the batcher. See DESIGN.md ("HTTP contract") for the routes and the error format.

A request to ``/predict``: API key (dependency) -> ready? -> content type (415) -> body, streamed
under the size limit (413) -> parameters (422) -> decode in a thread (400/413) -> batcher queue
(503 when full) -> wait for the batch result (504 at the request's deadline; a client that goes
away drops its images before inference) -> JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import Headers, MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from maskrt import __version__
from maskrt.errors import MaskrtError
from maskrt.server.batcher import Batcher, BatcherClosed, BatchFailed, Job, QueueFull
from maskrt.server.decode import DecodedImage
from maskrt.server.errors import ApiError, BodyTooLarge
from maskrt.server.logging import request_id_var
from maskrt.server.metrics import Metrics
from maskrt.server.pipeline import Pipeline, PostOptions
from maskrt.server.schemas import (
    ERROR_RESPONSES,
    BatchPredictResponse,
    ErrorResponse,
    Health,
    ModelInfoResponse,
    PredictParams,
    PredictResponse,
    Ready,
)
from maskrt.server.security import ApiKeys
from maskrt.server.settings import Settings

log = logging.getLogger("maskrt.server")
access_log = logging.getLogger("maskrt.access")

QUIET_PATHS = ("/healthz", "/readyz", "/metrics")  # access-logged at debug level
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_RAW_TYPES = ("application/octet-stream",)


class ClientDisconnected(Exception):
    """The client went away while its request waited; nothing is sent back."""


@dataclass
class Work:
    """What the batch worker gets for one image."""

    image: Any  # uint8 [3, H, W] tensor
    options: Any  # PostOptions


@dataclass
class JobResult:
    detections: list[dict]
    preprocess_s: float
    inference_s: float
    postprocess_s: float


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Response(body.encode(), status, headers=headers, media_type="application/json")


def error_response(exc: ApiError) -> Response:
    return _json(exc.body(), exc.status, exc.headers)


# ---------------------------------------------------------------------------------------------
# State: model, batcher, executors


class ServerState:
    """Everything one app owns. ``status``: loading -> ready -> draining, or loading -> failed."""

    def __init__(
        self,
        settings: Settings,
        opener: Callable[[Settings], Any],
        on_fatal: Callable[[BaseException], None] | None,
    ) -> None:
        self.settings = settings
        self.opener = opener
        self.on_fatal = on_fatal
        device = settings.resolved_device()
        self.metrics = Metrics(
            max_batch=settings.max_batch, gpu_device=device if device.startswith("cuda") else None
        )
        self.keys = ApiKeys(settings.api_keys)
        self.status = "loading"
        self.error: str | None = None
        self.pipeline = None
        self.backend = None
        self.batcher: Batcher | None = None
        self.model_ref: dict[str, str] = {}
        self.model_info: dict[str, Any] = {}
        self.warmup_seconds: dict[int, float] = {}  # batch size -> seconds of its warm-up run
        self.infer_executor = ThreadPoolExecutor(1, thread_name_prefix="maskrt-infer")
        self.decode_executor = ThreadPoolExecutor(
            settings.decode_threads or max(1, min(4, os.cpu_count() or 1)),
            thread_name_prefix="maskrt-decode",
        )
        self.load_task: asyncio.Task | None = None
        # a batch running longer than this marks the process unhealthy (GET /healthz 503)
        self.stuck_after_s = max(120.0, 4 * settings.request_timeout_s)

    # -- life cycle ----------------------------------------------------------------------------

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            backend = await loop.run_in_executor(self.infer_executor, self.opener, self.settings)
            pipeline = Pipeline(backend)
            sizes = [s for s in backend.warmup_batch_sizes() if s <= self.settings.max_batch]
            loaded = time.perf_counter()
            warm = await loop.run_in_executor(self.infer_executor, pipeline.warmup, sizes)
        except Exception as exc:
            self.status = "failed"
            self.error = (
                str(exc) if isinstance(exc, MaskrtError) else f"{type(exc).__name__}: {exc}"
            )
            log.error(
                "the model failed to load: %s",
                self.error,
                exc_info=None if isinstance(exc, MaskrtError) else exc,
            )
            if self.on_fatal is not None:
                self.on_fatal(exc)
            return
        self.backend, self.pipeline = backend, pipeline
        self.warmup_seconds = warm
        info = backend.info
        device = str(backend.device)
        self.model_ref = {
            "name": info.name,
            "version": info.version,
            "backend": backend.name,
            "device": device,
        }
        max_batch = min(self.settings.max_batch, backend.max_batch)
        self.model_info = {
            **self.model_ref,
            "classes": list(info.classes),
            "canvas": info.canvas,
            "mask_size": info.mask_size,
            "max_detections": info.max_detections,
            "max_batch": max_batch,
        }
        self.metrics.set_model(info.name, backend.name, device)
        self.batcher = Batcher(
            self._process,
            max_batch=max_batch,
            max_delay_s=self.settings.max_delay_ms / 1000,
            max_queue=self.settings.max_queue,
            executor=self.infer_executor,
            on_queue_depth=self.metrics.queue_depth.set,
            on_batch_start=self._batch_started,
        )
        self.batcher.start()
        if self.status == "loading":
            self.status = "ready"
        log.info(
            "model ready",
            extra={
                "fields": {
                    **self.model_ref,
                    "max_batch": max_batch,
                    "load_s": round(loaded - started, 3),
                    "warmup_s": {str(k): round(v, 3) for k, v in warm.items()},
                }
            },
        )

    async def shutdown(self) -> None:
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.stop(timeout_s=self.settings.request_timeout_s + 5)
        if self.load_task is not None and not self.load_task.done():
            self.load_task.cancel()
        self.infer_executor.shutdown(wait=False, cancel_futures=True)
        self.decode_executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    def begin_drain(self) -> None:
        """SIGTERM: not ready any more; what is queued still runs."""
        if self.status in ("loading", "ready"):
            self.status = "draining"
            log.info("draining: finishing queued requests")

    # -- batch worker side (inference thread) --------------------------------------------------

    def _batch_started(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.metrics.queue_wait.observe(job.queue_wait_s)

    def _process(self, jobs: list[Job]) -> list[JobResult]:
        out = self.pipeline.run_batch(
            [j.payload.image for j in jobs], [j.payload.options for j in jobs]
        )
        m = self.metrics
        m.batch_size.observe(len(jobs))
        m.images.inc(len(jobs))
        m.preprocess.observe(out.preprocess_s)
        m.inference.labels(self.model_ref["backend"]).observe(out.inference_s)
        m.postprocess.observe(out.postprocess_s)
        m.detections.inc(sum(len(d) for d in out.detections))
        return [
            JobResult(d, out.preprocess_s, out.inference_s, out.postprocess_s)
            for d in out.detections
        ]

    # -- request side --------------------------------------------------------------------------

    def require_ready(self) -> None:
        if self.status == "ready" and self.batcher is not None and not self.batcher.closing:
            return
        if self.status == "draining" and self.batcher is not None and not self.batcher.closing:
            return  # requests already on open connections are still served while draining
        raise self.not_ready()

    def not_ready(self) -> ApiError:
        if self.status == "failed":
            return ApiError(
                503, "not_ready", f"the model failed to load: {self.error}", {"Retry-After": "30"}
            )
        if self.status == "draining":
            return ApiError(
                503, "shutting_down", "the server is shutting down", {"Retry-After": "5"}
            )
        return ApiError(
            503, "not_ready", "the model is loading and warming up", {"Retry-After": "5"}
        )


# ---------------------------------------------------------------------------------------------
# Request middleware: request id, body size limit, metrics, access log, last-resort 500


class RequestMiddleware:
    """Pure ASGI (no buffering): sees every HTTP request first and its answer last."""

    def __init__(self, app, state: ServerState, known_paths: Callable[[], set[str]]) -> None:
        self.app = app
        self.state = state
        self.known_paths = known_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})
        scope["state"]["request_id"] = rid
        scope["state"]["start"] = start
        token = request_id_var.set(rid)
        status = 500
        started = False

        async def send_wrapper(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        limit = self.state.settings.max_upload_bytes
        received = 0

        async def receive_wrapper():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            declared = headers.get("content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > limit:
                await error_response(BodyTooLarge(limit))(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except (ClientDisconnected, ClientDisconnect):
            status = 499  # nginx's "client closed request"; nothing is sent
        except ApiError as exc:
            if not started:
                await error_response(exc)(scope, receive, send_wrapper)
        except Exception as exc:
            log.error("unhandled error", exc_info=exc)
            if not started:
                await error_response(
                    ApiError(500, "internal_error", f"internal server error; request id {rid}")
                )(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - start
            path = scope.get("path", "")
            endpoint = path if path in self.known_paths() else "unmatched"
            labels = (endpoint, str(status))
            self.state.metrics.request_duration.labels(*labels).observe(duration)
            self.state.metrics.requests.labels(*labels).inc()
            level = logging.DEBUG if path in QUIET_PATHS and status < 500 else logging.INFO
            access_log.log(
                level,
                "%s %s %d",
                scope.get("method"),
                path,
                status,
                extra={
                    "fields": {
                        "method": scope.get("method"),
                        "path": path,
                        "status": status,
                        "duration_ms": round(duration * 1000, 3),
                        "bytes_in": received,
                        "client": (scope.get("client") or ("", 0))[0],
                    }
                },
            )
            request_id_var.reset(token)


# ---------------------------------------------------------------------------------------------
# Parameters and bodies


def parse_params(items: list[tuple[str, str]]) -> PredictParams:
    merged: dict[str, str] = {}
    for key, value in items:
        if key in merged:
            raise ApiError(422, "invalid_parameter", f"parameter {key!r} is given more than once")
        merged[key] = value
    try:
        return PredictParams.model_validate(merged)
    except ValidationError as exc:
        raise ApiError(422, "invalid_parameter", _validation_message(exc)) from None


def _validation_message(exc: ValidationError | RequestValidationError) -> str:
    known = ", ".join(PredictParams.model_fields)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown parameter {loc!r} (known: {known})")
        else:
            parts.append(f"{loc}: {err.get('msg')} (got {err.get('input')!r})")
    return "; ".join(parts) or "invalid parameters"


def classify_content_type(content_type: str, batch: bool) -> str:
    """``multipart`` or ``raw``; anything else is a 415."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return "multipart"
    if not batch and (media.startswith("image/") or media in _RAW_TYPES):
        return "raw"
    expected = (
        "multipart/form-data with one or more files in the field 'images'"
        if batch
        else "multipart/form-data with a file in the field 'image', or the image itself as "
        "the body with Content-Type image/*"
    )
    raise ApiError(
        415,
        "unsupported_media_type",
        f"unsupported Content-Type {media or '(none)'!r}: send {expected}",
    )


async def read_images(
    request: Request, kind: str, batch: bool, max_images: int
) -> tuple[list[bytes], list[tuple[str, str]]]:
    """The image bodies and the form's other fields."""
    if kind == "raw":
        body = b"".join([chunk async for chunk in request.stream()])
        if not body:
            raise ApiError(
                400,
                "empty_body",
                "the request body is empty: send the image as the "
                "body (Content-Type image/...) or as the multipart "
                "field 'image'",
            )
        return [body], []
    names = ("images", "image") if batch else ("image",)
    try:
        form = await request.form(max_files=max_images + 1, max_fields=64, max_part_size=64 * 1024)
    except StarletteHTTPException as exc:  # the multipart parser's complaints
        raise ApiError(400, "invalid_multipart", f"invalid multipart body: {exc.detail}") from None
    try:
        files: list[UploadFile] = []
        fields: list[tuple[str, str]] = []
        for key, value in form.multi_items():
            if key in names:
                if not isinstance(value, UploadFile):
                    raise ApiError(
                        422,
                        "invalid_field",
                        f"multipart field {key!r} must be a file (filename set)",
                    )
                files.append(value)
            elif isinstance(value, UploadFile):
                raise ApiError(
                    422,
                    "invalid_field",
                    f"unexpected file field {key!r}; images go in {names[0]!r}",
                )
            else:
                fields.append((key, value))
        if not files:
            raise ApiError(
                422, "missing_field", f"the multipart field {names[0]!r} (a file) is required"
            )
        if not batch and len(files) > 1:
            raise ApiError(
                422,
                "invalid_field",
                "one image per /predict request; send several to /predict/batch as 'images' fields",
            )
        if len(files) > max_images:
            raise ApiError(
                413,
                "too_many_images",
                f"{len(files)} images in one request; the limit is {max_images}",
            )
        return [await f.read() for f in files], fields
    finally:
        await form.close()


async def _wait_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


# ---------------------------------------------------------------------------------------------
# The app


def _request_body_doc(batch: bool) -> dict:
    params = {
        name: {k: v for k, v in schema.items() if k != "default"}
        for name, schema in PredictParams.model_json_schema()["properties"].items()
    }
    if batch:
        files = {
            "images": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "the images (JPEG, PNG, WebP, BMP, GIF, TIFF)",
            }
        }
        content = {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {**files, **params},
                }
            }
        }
    else:
        files = {
            "image": {
                "type": "string",
                "format": "binary",
                "description": "the image (JPEG, PNG, WebP, BMP, GIF, TIFF)",
            }
        }
        content = {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {**files, **params},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        }
    query = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": schema.get("description", ""),
        }
        for name, schema in params.items()
    ]
    return {"parameters": query, "requestBody": {"required": True, "content": content}}


def create_app(
    settings: Settings | None = None,
    *,
    opener: Callable[[Settings], Any] | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app for ``settings`` (default: from the environment). ``opener(settings) -> Backend``
    defaults to :func:`maskrt.server.backends.open_backend`; ``on_fatal(exc)`` is called when the
    model cannot be loaded (``maskrt serve`` then exits)."""
    settings = settings or Settings()
    if opener is None:
        from maskrt.server.backends import open_backend as opener
    state = ServerState(settings, opener, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.load_task = asyncio.get_running_loop().create_task(state.load(), name="maskrt-load")
        try:
            yield
        finally:
            await state.shutdown()

    app = FastAPI(
        title="maskrt",
        version=__version__,
        lifespan=lifespan,
        description="Mask R-CNN instance segmentation: boxes, classes, scores and COCO RLE masks.",
    )
    app.state.maskrt = state

    # -- security ------------------------------------------------------------------------------
    auth: list = []
    if state.keys.enabled:
        bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
        header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")

        async def require_key(request: Request, _b=Depends(bearer), _h=Depends(header)) -> None:
            state.keys.check(request.headers.get("authorization"), request.headers.get("x-api-key"))

        auth = [Depends(require_key)]

    # -- errors --------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = (
            f"no route {request.method} {request.url.path}"
            if exc.status_code == 404
            else str(exc.detail)
        )
        return _json(
            {"error": {"code": code, "message": message}}, exc.status_code, dict(exc.headers or {})
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _json(
            {"error": {"code": "invalid_parameter", "message": _validation_message(exc)}}, 422
        )

    # -- probes and metadata -------------------------------------------------------------------
    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": ErrorResponse}},
        summary="the process is alive",
    )
    async def healthz() -> Response:
        if state.batcher is not None and state.batcher.running_for() > state.stuck_after_s:
            return error_response(
                ApiError(
                    503,
                    "stuck",
                    f"a batch has been running for {state.batcher.running_for():.0f} s",
                )
            )
        return _json({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=Ready,
        responses={503: {"model": ErrorResponse}},
        summary="the model is loaded and warmed up",
    )
    async def readyz() -> Response:
        if state.status != "ready":
            return error_response(state.not_ready())
        return _json({"status": "ready"})

    @app.get(
        "/v1/model",
        response_model=ModelInfoResponse,
        dependencies=auth,
        responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]},
        summary="the served model",
    )
    async def model_info() -> Response:
        if not state.model_info:
            raise state.not_ready()
        return _json(state.model_info)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    # -- inference -----------------------------------------------------------------------------
    async def handle(request: Request, batch: bool) -> Response:
        state.require_ready()
        kind = classify_content_type(request.headers.get("content-type", ""), batch)
        loop = asyncio.get_running_loop()
        elapsed = time.perf_counter() - request.scope["state"]["start"]
        deadline = loop.time() + settings.request_timeout_s - elapsed
        batcher = state.batcher
        pipeline = state.pipeline
        rid = request.scope["state"]["request_id"]
        jobs: list[Job] = []
        state.metrics.inflight.inc()
        try:
            async with asyncio.timeout_at(deadline):
                with batcher.expecting():
                    datas, fields = await read_images(request, kind, batch, settings.max_queue)
                    params = parse_params(list(request.query_params.multi_items()) + fields)
                    decoded = await asyncio.gather(
                        *(
                            loop.run_in_executor(
                                state.decode_executor,
                                functools.partial(
                                    pipeline.decode,
                                    data,
                                    max_pixels=settings.max_image_pixels,
                                    name=f"images[{i}]" if batch else "image",
                                ),
                            )
                            for i, data in enumerate(datas)
                        )
                    )
                for d in decoded:
                    state.metrics.decode.observe(d.seconds)
                options = PostOptions(
                    settings.score_threshold
                    if params.score_threshold is None
                    else params.score_threshold,
                    params.max_detections,
                    params.masks == "rle",
                )
                try:
                    jobs = batcher.submit([Work(d.tensor, options) for d in decoded], rid)
                except QueueFull as exc:
                    raise ApiError(
                        503,
                        "queue_full",
                        f"the server is busy ({batcher.depth} images queued); retry "
                        f"in {exc.retry_after_s} s",
                        {"Retry-After": str(exc.retry_after_s)},
                    ) from None
                except BatcherClosed:
                    raise state.not_ready() from None
                results = await _wait_jobs(request, jobs)
        except TimeoutError:
            for job in jobs:
                job.drop("timeout")
            raise ApiError(
                504,
                "timeout",
                f"no answer within the request timeout of {settings.request_timeout_s:g} s",
            ) from None
        except BatchFailed:
            raise ApiError(
                500,
                "inference_failed",
                f"inference failed for this request's batch; request id {rid}",
            ) from None
        finally:
            state.metrics.inflight.dec()
        answers = [_answer(state.model_ref, d, job, r) for d, job, r in zip(decoded, jobs, results)]
        return _json({"results": answers} if batch else answers[0])

    async def _wait_jobs(request: Request, jobs: list[Job]) -> list[JobResult]:
        gathered = asyncio.gather(*(job.future for job in jobs))
        watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if gathered.done():
                return gathered.result()
            for job in jobs:
                job.drop("client disconnected")
            raise ClientDisconnected()
        finally:
            watcher.cancel()
            if not gathered.done():
                gathered.cancel()

    predict_doc = dict(
        response_model=PredictResponse,
        dependencies=auth,
        responses={k: v for k, v in ERROR_RESPONSES.items()},
        openapi_extra=_request_body_doc(False),
        summary="detect and segment the objects of one image",
    )

    @app.post("/predict", **predict_doc)
    async def predict(request: Request) -> Response:
        return await handle(request, batch=False)

    batch_doc = dict(
        response_model=BatchPredictResponse,
        dependencies=auth,
        responses={k: v for k, v in ERROR_RESPONSES.items()},
        openapi_extra=_request_body_doc(True),
        summary="several images in one request; results in order",
    )

    @app.post("/predict/batch", **batch_doc)
    async def predict_batch(request: Request) -> Response:
        return await handle(request, batch=True)

    # -- middleware ----------------------------------------------------------------------------
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    paths: set[str] = set()

    def known_paths() -> set[str]:
        if not paths:
            paths.update(getattr(r, "path", "") for r in app.routes)
        return paths

    app.add_middleware(RequestMiddleware, state=state, known_paths=known_paths)
    return app


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _answer(model_ref: dict, decoded: DecodedImage, job: Job, result: JobResult) -> dict:
    return {
        "model": model_ref,
        "width": decoded.width,
        "height": decoded.height,
        "detections": result.detections,
        "timings_ms": {
            "decode": _ms(decoded.seconds),
            "queue": _ms(job.queue_wait_s),
            "preprocess": _ms(result.preprocess_s),
            "inference": _ms(result.inference_s),
            "postprocess": _ms(result.postprocess_s),
        },
    }
