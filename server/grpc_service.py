"""The gRPC front door: Triton's ``inference.GRPCInferenceService`` (the Open Inference Protocol
over gRPC) on ``grpcio``'s asyncio server, in the process and on the event loop of the HTTP app.

Every call goes through the same :class:`~maskrt.server.state.AppState` as ``/v2``: inference
through :meth:`DataPlane.infer <maskrt.runtime.dataplane.DataPlane.infer>` (the batcher, limits,
pixel budgets, the request timeout or the call's shorter deadline), the request parsed and the
answer encoded by :mod:`maskrt.server.oip`, the model and version chosen by
:meth:`ModelSet.get <maskrt.runtime.models.ModelSet.get>`, the configuration and statistics of
:mod:`maskrt.server.triton`, the repository calls the :class:`ModelSet
<maskrt.runtime.models.ModelSet>` operations of ``/v2/repository`` (a load's ``config`` parameter
read by :func:`~maskrt.server.routes.repository.load_config`). API keys come from the
``authorization`` or ``x-api-key`` metadata (the liveness, readiness and server metadata calls
are open, as ``/v2/health`` is); the request id from ``x-request-id`` metadata, sent back as
trailing metadata. Each call is counted in
``maskrt_request_duration_seconds`` with its method as ``endpoint`` and its gRPC status code as
``status``, and written to the access log. An error is the HTTP status the HTTP front door
answers, turned into a gRPC status code by :data:`CODES` (docs/server.md, "gRPC").

``ModelInfer`` takes the images as ``raw_input_contents`` (what ``tritonclient.grpc`` sends) or
as typed ``contents.bytes_contents``, and answers in the same form: ``raw_output_contents`` or
typed ``contents``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from maskrt.runtime.dataplane import EncodedImage, ServedModel
from maskrt.runtime.errors import ClientGone, InferenceError, Unavailable, UnknownModel
from maskrt.runtime.pipeline import PostOptions
from maskrt.server import oip, triton
from maskrt.server.errors import ApiError, from_runtime
from maskrt.server.inference import answering
from maskrt.server.logging import request_id_var
from maskrt.server.middleware import access_log, request_id
from maskrt.server.routes.repository import load_config
from maskrt.server.routes.v2 import model_metadata_of, request_options
from maskrt.server.state import AppState
from maskrt.server.triton_proto import grpc_service_pb2 as pb
from maskrt.server.triton_proto import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger("maskrt.grpc")
SERVICE = "inference.GRPCInferenceService"
# The gRPC status of each HTTP status the front doors answer with: the one table (docs/server.md)
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# typed contents of each datatype (InferTensorContents)
_CONTENTS = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "INT32": "int_contents"}
_OPEN = {"ServerLive", "ServerReady", "ServerMetadata"}  # no API key, as /v2/health and GET /v2
# the data plane gives up this long before a call's deadline, so that the client reads why
# (gRPC's own cancellation at the deadline says only "Deadline Exceeded")
DEADLINE_MARGIN_S = 0.05
_arrived: contextvars.ContextVar[float] = contextvars.ContextVar("maskrt_grpc_arrived")
# the model version that answers a ModelInfer call: its request metrics' model and version labels
# (None: empty labels, as for the other methods)
_model: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "maskrt_grpc_model", default=None
)

Reply = TypeVar("Reply", bound=Message)


def _parameters(params: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as plain values."""
    return {
        k: getattr(v, v.WhichOneof("parameter_choice") or "string_param") for k, v in params.items()
    }


def _parse(
    request: pb.ModelInferRequest, max_images: int, default_threshold: float
) -> tuple[oip.InferRequest, dict[str, bool], PostOptions]:
    """The request as :func:`maskrt.server.oip.request_of` reads a ``/v2`` one: each input's
    bytes (raw, or its typed ``bytes_contents`` serialized) as binary tensor data."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ApiError(
            400,
            "invalid_request",
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs",
        )
    chunks = raw or [
        oip.serialize_bytes(np.array(list(t.contents.bytes_contents), dtype=np.object_))
        for t in request.inputs
    ]
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.shape),
            "parameters": {**_parameters(t.parameters), "binary_data_size": len(chunk)},
        }
        for t, chunk in zip(request.inputs, chunks)
    ]
    doc = {
        "inputs": inputs,
        "outputs": [{"name": o.name} for o in request.outputs],
        "parameters": _parameters(request.parameters),
    }
    parsed = oip.request_of(
        doc, memoryview(b"".join(chunks)), binary_output=bool(raw), max_images=max_images
    )
    parsed.id = request.id or None
    return (parsed, *request_options(parsed, [], default_threshold))


def _response(
    model: ServedModel, parsed: oip.InferRequest, outputs: dict[str, bool], results: Any
) -> Any:
    tensors = oip.output_tensors(results, list(outputs))
    reply = pb.ModelInferResponse(
        model_name=model.name, model_version=model.model_version, id=parsed.id or ""
    )
    for out, binary in outputs.items():
        datatype = oip.OUTPUTS[out][0]
        value = tensors[out]
        tensor = reply.outputs.add(name=out, datatype=datatype, shape=value.shape)
        if binary:
            reply.raw_output_contents.append(oip.raw_tensor(datatype, value))
        else:
            getattr(tensor.contents, _CONTENTS[datatype]).extend(value.ravel().tolist())
    return reply


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The calls of ``inference.GRPCInferenceService`` this server has; the others answer
    ``UNIMPLEMENTED`` (the generated base class)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.state.models.stuck_for() is None)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.state.models.ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return json_format.ParseDict(oip.server_metadata(), pb.ServerMetadataResponse())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``ready=false``, not an error, for a model not loaded or still loading, as Triton
        answers (``tritonclient.grpc``'s ``is_model_ready`` raises on an error)."""
        try:
            self.state.models.get(request.name, request.version or None)
        except (UnknownModel, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = model_metadata_of(self.state, request.name, request.version or None)
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        plane = self.state.models.get(request.name, request.version or None)
        config = triton.model_config(plane.served_model(), request.name, plane.options.max_delay_ms)
        return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        planes = self.state.models.statistics_planes(request.name or None, request.version or None)
        stats = triton.model_statistics(planes)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _one_repository(request.repository_name)
        rows = self.state.models.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**row.as_dict()) for row in rows]
        )

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _one_repository(request.repository_name)
        config = load_config(_parameters(request.parameters))
        await self.state.models.load(request.model_name, config)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _one_repository(request.repository_name)  # unload_dependents: there are no dependents
        await self.state.models.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        state = self.state
        plane = state.models.get(request.model_name, request.model_version or None)
        _model.set(answering(plane))
        got: tuple[oip.InferRequest, dict[str, bool], PostOptions] | None = None

        async def read() -> tuple[list[EncodedImage], PostOptions]:
            nonlocal got
            # on the loop: grpcio has deserialized the message already (there, too); what is
            # left is bookkeeping per image and one copy of its bytes, cheaper than a thread hop
            got = _parse(request, state.settings.max_queue, state.settings.score_threshold)
            images = [
                EncodedImage(data, f"{oip.INPUT}[{i}]") for i, data in enumerate(got[0].images)
            ]
            return images, _within(got[2], remaining)

        remaining = context.time_remaining()
        results = await plane.infer(
            read, request_id=request_id_var.get() or "", arrived=_arrived.get()
        )
        assert got is not None
        return _response(plane.served_model(), got[0], got[1], results)


def _one_repository(name: str) -> None:
    """The server has one repository: naming one is refused, as Triton refuses it, rather than
    answered from another."""
    if name:
        raise ApiError(
            400,
            "unsupported_parameter",
            f"repository_name {name!r}: this server has one repository; leave it empty",
        )


def _within(options: PostOptions, remaining: float | None) -> PostOptions:
    """``options`` with the gRPC deadline (``remaining`` seconds at arrival) as the request's
    own timeout where it is the sooner: the server answers DEADLINE_EXCEEDED itself, a margin
    before gRPC would cancel the call."""
    if remaining is None:
        return options
    deadline_s = max(0.0, remaining - DEADLINE_MARGIN_S)
    if options.timeout_s is not None and options.timeout_s <= deadline_s:
        return options
    return dataclasses.replace(options, timeout_s=deadline_s)


def _answered(
    state: AppState, method: str, call: Callable[[Any, Any], Awaitable[Reply]]
) -> Callable[[Any, Any], Awaitable[Reply]]:
    """``call`` with what the HTTP middleware and dependencies do around a route: the request
    id, the API key, errors as gRPC status codes, the metrics."""
    endpoint = f"/{SERVICE}/{method}"

    @functools.wraps(call)
    async def answer(request: Any, context: grpc.aio.ServicerContext) -> Reply:
        arrived = time.perf_counter()
        _arrived.set(arrived)
        _model.set(None)
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        rid = request_id(metadata.get("x-request-id", ""))
        token = request_id_var.set(rid)
        trailing = (("x-request-id", rid),)
        context.set_trailing_metadata(trailing)
        code = grpc.StatusCode.OK
        try:
            if method not in _OPEN:
                state.keys.check(metadata.get("authorization"), metadata.get("x-api-key"))
            return await call(request, context)
        except (ApiError, InferenceError) as exc:
            error = exc if isinstance(exc, ApiError) else from_runtime(exc)
            code = CODES.get(error.status, grpc.StatusCode.UNKNOWN)
            await context.abort(code, error.message, trailing)
        except (ClientGone, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            log.error("unhandled error", exc_info=exc)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, f"internal server error; request id {rid}", trailing)
        finally:
            duration = time.perf_counter() - arrived
            state.metrics.request_answered(endpoint, code.name, _model.get(), duration)
            access_log.info(
                "gRPC %s %s",
                endpoint,
                code.name,
                extra={
                    "fields": {
                        "method": "gRPC",
                        "path": endpoint,
                        "status": code.name,
                        "duration_ms": round(duration * 1000, 3),
                        "client": context.peer(),
                    }
                },
            )
            request_id_var.reset(token)
        raise AssertionError("unreachable: abort raises")

    return answer


def create_server(state: AppState) -> grpc.aio.Server:
    """The gRPC server of ``state``'s app (ports are added, and it is started, by the caller).
    The message size limits are the HTTP body's, ``MAX_UPLOAD_BYTES``."""
    service = InferenceService(state)
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name:
        own = getattr(type(service), method)
        if own is not getattr(pb_grpc.GRPCInferenceServiceServicer, method):
            setattr(service, method, _answered(state, method, getattr(service, method)))
    limit = state.settings.max_upload_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    return server
