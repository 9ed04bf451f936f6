"""Response (and parameter) models of the HTTP API; they are the schemas of the OpenAPI document
(``/openapi.json``, ``/docs``, ``/redoc``), with a described field and an example for every
answer. docs/server.md says the same in prose.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

# A real answer of the bundled shapes model for examples/shapes.png (max_detections=2).
EXAMPLE_MODEL: JsonDict = {
    "name": "shapes",
    "version": "5da77ec8b1d7",
    "backend": "onnxruntime",
    "device": "cpu",
}
EXAMPLE_ANSWER: JsonDict = {
    "model": EXAMPLE_MODEL,
    "width": 256,
    "height": 192,
    "detections": [
        {
            "box": [24.0076, 26.3429, 92.1468, 94.8038],
            "score": 0.99994,
            "class_id": 2,
            "label": "circle",
            "mask": {
                "size": [192, 256],
                "counts": "ba4f0X53L5M2N4K3N2M3N2N3M2N1O2N2N3N0O2O0O1O3N1O000O1O2O0000000000000000"
                "00000000000000000000O101O0O2O001N1O2O001N2N2N1O2N2N3M2N2M3O1N5J2O2M5K:@_`n0",
            },
        },
        {
            "box": [154.706, 30.9827, 208.9964, 85.1376],
            "score": 0.99994,
            "class_id": 1,
            "label": "square",
            "mask": {
                "size": [192, 256],
                "counts": "Pml0c0c0Ji3Y1N1O000000000000000000000000000000000000000000000000000000"
                "0000000000000000000000000000000000000000000001O1POgK6Ym8",
            },
        },
    ],
    "timings_ms": {
        "decode": 0.93,
        "queue": 0.05,
        "preprocess": 1.2,
        "inference": 160.4,
        "postprocess": 2.1,
    },
}


class ModelRef(BaseModel):
    """Which model answered (the same as ``GET /v1/model``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_MODEL]})

    name: str = Field(description="model config name", examples=["shapes"])
    version: str = Field(
        description="first 12 hex digits of the checkpoint's sha256", examples=["5da77ec8b1d7"]
    )
    backend: str = Field(description="torch, onnxruntime or tensorrt", examples=["onnxruntime"])
    device: str = Field(description="cpu or cuda:N", examples=["cpu"])


class Mask(BaseModel):
    """One instance's mask over the whole image, exactly as ``pycocotools.mask.encode`` gives it
    (``counts`` decoded to text): ``pycocotools.mask.decode({"size": size, "counts":
    counts.encode()})`` is the ``[height, width]`` uint8 mask."""

    size: tuple[int, int] = Field(
        description="[height, width] of the image (height first, as in COCO)", examples=[[192, 256]]
    )
    counts: str = Field(
        description="COCO compressed RLE: the lengths of alternating runs of 0s and 1s of the "
        "full-image binary mask, walked column-major (down each column, columns left to "
        "right), starting with a run of 0s (possibly empty); each length (from the fourth on, "
        "its difference from the length two before) is written in 5-bit groups, 0x20 set while "
        "more follow, plus 48, as pycocotools' rleToString does",
        examples=["Pml0c0c0Ji3Y1N1O00001O1POgK6Ym8"],
    )


class Detection(BaseModel):
    """One detected instance; the detections of an answer are in descending score order."""

    box: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2]: left, top, right and bottom edges in pixels of the "
        "original (upright) image; x to the right, y down, (0, 0) at its top-left corner, so "
        "x2 - x1 is the width",
        examples=[[24.0076, 26.3429, 92.1468, 94.8038]],
    )
    score: float = Field(ge=0, le=1, description="confidence of the class", examples=[0.99994])
    class_id: int = Field(
        ge=1,
        description="1-based index into GET /v1/model's classes (0 is the background and "
        "never returned); stable across releases of the same model",
        examples=[2],
    )
    label: str = Field(description="the class name: classes[class_id]", examples=["circle"])
    mask: Mask | None = Field(None, description="the instance mask; absent when masks=none")


class Timings(BaseModel):
    """Where the request's time went, in milliseconds (batch stages are the whole batch's)."""

    decode: float = Field(description="ms decoding the image", examples=[0.93])
    queue: float = Field(description="ms waiting in the batch queue", examples=[0.05])
    preprocess: float = Field(description="ms letterboxing the batch", examples=[1.2])
    inference: float = Field(description="ms running the batch", examples=[160.4])
    postprocess: float = Field(
        description="ms thresholding, pasting and RLE-encoding the batch's masks", examples=[2.1]
    )


class PredictResponse(BaseModel):
    """The answer for one image."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_ANSWER]})

    model: ModelRef
    width: int = Field(
        description="original image width in pixels (after EXIF orientation)", examples=[256]
    )
    height: int = Field(description="original image height in pixels", examples=[192])
    detections: list[Detection] = Field(description="in descending score order")
    timings_ms: Timings


class BatchPredictResponse(BaseModel):
    """The answers for several images."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"results": [EXAMPLE_ANSWER]}]})

    results: list[PredictResponse] = Field(description="one per image, in request order")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code", examples=["invalid_image"])
    message: str = Field(
        description="what went wrong, for people",
        examples=["image: not an image in a supported format (JPEG, PNG, WEBP, BMP, GIF, TIFF)"],
    )


class ErrorResponse(BaseModel):
    """Every error answer (4xx, 5xx)."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = Field(examples=["ok"])


class Ready(BaseModel):
    status: Literal["ready"] = Field(examples=["ready"])


class ModelInfoResponse(BaseModel):
    """The served model."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **EXAMPLE_MODEL,
                    "classes": ["__background__", "square", "circle", "triangle"],
                    "canvas": 192,
                    "mask_size": 28,
                    "max_detections": 100,
                    "max_batch": 8,
                }
            ]
        }
    )

    name: str = Field(description="model config name")
    version: str = Field(description="first 12 hex digits of the checkpoint's sha256")
    classes: list[str] = Field(
        description="class names; index = class_id of a detection; 0 is the background"
    )
    backend: str = Field(description="torch, onnxruntime or tensorrt")
    device: str = Field(description="cpu or cuda:N")
    canvas: int = Field(description="side of the square letterbox canvas the model sees")
    mask_size: int = Field(description="side of the model's square mask before pasting")
    max_detections: int = Field(description="most detections per image")
    max_batch: int = Field(description="largest batch the server forms")


class PredictParams(BaseModel):
    """Query or form parameters of ``/predict`` and ``/predict/batch``."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="keep detections scoring at least this (default: the "
        "server's score_threshold setting)",
    )
    max_detections: int | None = Field(
        None,
        ge=0,
        description="keep at most this many detections (default: all the model "
        "returns, at most its max_detections)",
    )
    masks: Literal["rle", "none"] = Field(
        "rle", description="rle: COCO RLE masks; none: boxes only"
    )


# status: (what, an example code and message)
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: (
        "undecodable image, empty body",
        "invalid_image",
        "image: not an image in a supported format (JPEG, PNG, WEBP, BMP, GIF, TIFF)",
    ),
    401: (
        "missing or wrong API key (when keys are configured)",
        "unauthorized",
        "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    ),
    413: (
        "body or pixel count over the limit",
        "image_too_large",
        "image: 20000x20000 = 400000000 pixels is over the limit of 40000000 pixels",
    ),
    415: (
        "unsupported content type",
        "unsupported_media_type",
        "unsupported Content-Type 'text/plain': send multipart/form-data with a file in the "
        "field 'image', or the image itself as the body with Content-Type image/*",
    ),
    422: (
        "bad parameter",
        "invalid_parameter",
        "score_threshold: Input should be less than or equal to 1 (got '2')",
    ),
    500: ("inference failed", "inference_failed", "inference failed for this request's batch"),
    503: (
        "queue full or not ready (Retry-After)",
        "not_ready",
        "the model is loading and warming up",
    ),
    504: (
        "the request waited longer than its timeout",
        "timeout",
        "no answer within the request timeout of 30 s",
    ),
}


def _error_doc(text: str, code: str, message: str) -> dict:
    example = {"error": {"code": code, "message": message}}
    return {
        "model": ErrorResponse,
        "description": text,
        "content": {"application/json": {"example": example}},
    }


ERROR_RESPONSES: dict[int | str, dict] = {
    status: _error_doc(*doc) for status, doc in _ERRORS.items()
}
HEALTH_RESPONSES: dict[int | str, dict] = {
    503: _error_doc(
        "a batch has been running for minutes", "stuck", "a batch has been running for 312 s"
    )
}
READY_RESPONSES: dict[int | str, dict] = {503: ERROR_RESPONSES[503]}
METRICS_RESPONSES: dict[int | str, dict] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {
            "text/plain": {
                "example": "# HELP maskrt_images_total images inferred\n"
                "# TYPE maskrt_images_total counter\n"
                "maskrt_images_total 42.0\n"
            }
        },
    }
}
