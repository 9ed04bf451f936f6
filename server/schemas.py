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
    "version": "f16d25e43c29",
    "model_version": "1",
    "backend": "onnxruntime",
    "device": "cpu",
}
EXAMPLE_MODEL_INFO: JsonDict = {
    **EXAMPLE_MODEL,
    "classes": ["__background__", "square", "circle", "triangle"],
    "canvas": 192,
    "mask_size": 28,
    "max_detections": 100,
    "max_batch": 8,
    "weights_verified": True,
    "fallback_reason": None,
}
EXAMPLE_ANSWER: JsonDict = {
    "model": EXAMPLE_MODEL,
    "width": 256,
    "height": 192,
    "detections": [
        {
            "box": [39.664581298828125, 105.11457824707031, 102.0516586303711, 161.25680541992188],
            "score": 0.999474823474884,
            "class_id": 3,
            "label": "triangle",
            "mask": {
                "size": [192, 256],
                "counts": "kd77h51N2O1M3O1N2O1N2O1O1N2O1M3O1N2O1M3O1O1N2N2N2O1N2N2N2M3O1O1001O1O001O3M"
                "2N1O3M1O2N1O3M1O2N2N2N2N1O2N1O3M2N1O1O2N2N1O3M003M1NSgl0",
            },
        },
        {
            "box": [125.76145935058594, 116.09786224365234, 175.2109832763672, 163.9188232421875],
            "score": 0.9993112087249756,
            "class_id": 2,
            "label": "circle",
            "mask": {
                "size": [192, 256],
                "counts": "Vbg0=a54L3M5L2N3M2M3O1N2N2M20001N2N101O000O1000000000000000000"
                "1O000000001N101O0O2N2O1N2N2N1N3N3M2M4M4K5KjQ?",
            },
        },
    ],
    "timings_ms": {
        "decode": 1.037,
        "queue": 0.0,
        "preprocess": 0.669,
        "inference": 40.828,
        "postprocess": 1.402,
    },
}


class ModelRef(BaseModel):
    """Which model answered (the same as ``GET /v1/model``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_MODEL]})

    name: str = Field(description="model config name", examples=["shapes"])
    version: str = Field(
        description="first 12 hex digits of the checkpoint's sha256", examples=["f16d25e43c29"]
    )
    model_version: str = Field(
        description="the version that answered: its model repository folder (1 for --model)",
        examples=["1"],
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
        examples=[[125.76145935058594, 116.09786224365234, 175.2109832763672, 163.9188232421875]],
    )
    score: float = Field(
        ge=0, le=1, description="confidence of the class", examples=[0.9993112087249756]
    )
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

    decode: float = Field(description="ms decoding the image", examples=[1.037])
    queue: float = Field(description="ms waiting in the batch queue", examples=[0.0])
    preprocess: float = Field(description="ms letterboxing the batch", examples=[0.669])
    inference: float = Field(description="ms running the batch", examples=[40.828])
    postprocess: float = Field(
        description="ms thresholding, pasting and RLE-encoding the batch's masks", examples=[1.402]
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

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_MODEL_INFO]})

    name: str = Field(description="model config name")
    version: str = Field(description="first 12 hex digits of the checkpoint's sha256")
    model_version: str = Field(description="its model repository version (1 for --model)")
    classes: list[str] = Field(
        description="class names; index = class_id of a detection; 0 is the background"
    )
    backend: str = Field(description="torch, onnxruntime or tensorrt")
    device: str = Field(description="cpu or cuda:N")
    canvas: int = Field(description="side of the square letterbox canvas the model sees")
    mask_size: int = Field(description="side of the model's square mask before pasting")
    max_detections: int = Field(description="most detections per image")
    max_batch: int = Field(description="largest batch the server forms")
    weights_verified: bool = Field(
        description="the checkpoint's tensors matched the digest maskrt recorded when it saved "
        "them; false for checkpoints from elsewhere, whose weights nothing could check"
    )
    fallback_reason: str | None = Field(
        description="null, unless backend=auto tried TensorRT on a GPU and it failed (not "
        "installed, the plugin library, the engine build or load): then why, and `backend` is "
        "the one serving instead (torch for a checkpoint, onnxruntime for an ONNX file) on the "
        "same device; maskrt_backend_fallback is 1",
        examples=[None, "the tensorrt backend failed: TensorRT is not installed here (...)"],
    )


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
    model: str | None = Field(
        None,
        max_length=128,
        description="the model to ask, by name (default: the server's default model)",
    )
    version: str | None = Field(
        None,
        max_length=16,
        description="the version of the model to ask (default: its newest ready version)",
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
    404: (
        "no such model or version loaded (the model and version parameters)",
        "unknown_model",
        "model 'cars' is not loaded; loaded: shapes",
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
