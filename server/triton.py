"""Triton's model configuration and statistics extensions, in Triton's JSON form.

One form for every front door: ``GET /v2/models/{m}/config`` and ``/stats`` answer these dicts as
JSON, and the gRPC front door turns them into the ``ModelConfig`` and ``ModelStatistics``
messages with protobuf's ``json_format.ParseDict`` (the field names are the protocol's own). The
statistics are the data plane's :class:`~maskrt.runtime.statistics.Statistics`, counted in the
runtime, so ``/v2``, ``/predict`` and gRPC traffic are all in them: ``success``/``fail`` count
requests (arrival to answer); ``queue`` counts images (submitted to their batch's start);
``compute_input`` (letterbox), ``compute_infer`` (the deploy graph) and ``compute_output`` (masks
and RLE) count batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from maskrt.runtime.dataplane import DataPlane, ServedModel
from maskrt.runtime.statistics import Statistics, Tally
from maskrt.server import oip

# the protocol's datatypes as model_config.proto names them
_CONFIG_TYPE = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32"}


def _tensor(name: str, datatype: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """A tensor of :data:`~maskrt.server.oip.OUTPUTS` without its batch dimension (Triton's
    ``dims`` leave it out when ``max_batch_size`` > 0); one value per image is ``dims [1]``
    reshaped to a scalar, as Triton writes it."""
    dims = list(shape[1:])
    entry: dict[str, Any] = {
        "name": name,
        "data_type": _CONFIG_TYPE[datatype],
        "dims": dims or [1],
    }
    if not dims:
        entry["reshape"] = {"shape": []}
    return entry


def model_config(model: ServedModel, name: str, max_delay_ms: float) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``: the one input (an encoded image per batch element), the
    outputs, and the dynamic batcher with the server's real queue delay."""
    return {
        "name": name,
        "platform": f"maskrt_{model.backend}",
        "backend": model.backend,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": model.max_batch,
        "input": [_tensor(oip.INPUT, "BYTES", (-1,))],
        "output": [_tensor(n, datatype, shape) for n, (datatype, shape) in oip.OUTPUTS.items()],
        "dynamic_batching": {"max_queue_delay_microseconds": round(max_delay_ms * 1000)},
        "instance_group": [
            {
                "name": name,
                "kind": "KIND_CPU" if model.device == "cpu" else "KIND_GPU",
                "count": 1,
            }
        ],
        "parameters": {
            "canvas": {"string_value": str(model.canvas)},
            "max_detections": {"string_value": str(model.max_detections)},
        },
    }


def _duration(tally: Tally) -> dict[str, int]:
    return {"count": tally.count, "ns": round(tally.seconds * 1e9)}


def model_statistics(planes: Sequence[DataPlane]) -> dict[str, Any]:
    """``GET /v2/models/{name}[/versions/{v}]/stats`` (one version), ``/v2/models/stats`` (every
    loaded version)."""
    return {"model_stats": [_statistics(p.served_model(), p.statistics) for p in planes]}


def _statistics(model: ServedModel, stats: Statistics) -> dict[str, Any]:
    none = Tally()
    return {
        "name": model.name,
        "version": model.model_version,
        "last_inference": stats.last_answer_ms,
        "inference_count": stats.images,
        "execution_count": stats.inference.count,
        "inference_stats": {
            "success": _duration(stats.requests_ok),
            "fail": _duration(stats.requests_failed),
            "queue": _duration(stats.queue),
            "compute_input": _duration(stats.preprocess),
            "compute_infer": _duration(stats.inference),
            "compute_output": _duration(stats.postprocess),
            "cache_hit": _duration(none),
            "cache_miss": _duration(none),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(sized.preprocess),
                "compute_infer": _duration(sized.inference),
                "compute_output": _duration(sized.postprocess),
            }
            for size, sized in sorted(dict(stats.by_batch_size).items())  # a copy: threads add
        ],
    }
