"""Response (and parameter) models of the HTTP API, as DESIGN.md fixes them; they are the schemas
of the OpenAPI document (``/openapi.json``, ``/docs``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelRef(BaseModel):
    name: str = Field(description="model config name", examples=["shapes"])
    version: str = Field(description="first 12 hex digits of the checkpoint's sha256")
    backend: str = Field(examples=["onnxruntime"])
    device: str = Field(examples=["cpu"])


class Mask(BaseModel):
    size: tuple[int, int] = Field(description="[height, width] of the image")
    counts: str = Field(
        description="COCO compressed RLE (column-major), as pycocotools.mask.encode "
        "gives it, decoded to text"
    )


class Detection(BaseModel):
    box: tuple[float, float, float, float] = Field(
        description="x1, y1, x2, y2 in original-image pixels"
    )
    score: float = Field(ge=0, le=1)
    class_id: int = Field(ge=1, description="1-based contiguous class id")
    label: str
    mask: Mask | None = Field(None, description="absent when masks=none")


class Timings(BaseModel):
    decode: float = Field(description="ms decoding the image")
    queue: float = Field(description="ms waiting in the batch queue")
    preprocess: float = Field(description="ms letterboxing the batch")
    inference: float = Field(description="ms running the batch")
    postprocess: float = Field(description="ms post-processing the batch")


class PredictResponse(BaseModel):
    model: ModelRef
    width: int = Field(description="original image width (after EXIF orientation)")
    height: int
    detections: list[Detection]
    timings_ms: Timings


class BatchPredictResponse(BaseModel):
    results: list[PredictResponse] = Field(description="one per image, in request order")


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


class ModelInfoResponse(BaseModel):
    name: str
    version: str
    classes: list[str] = Field(description="index = class id; 0 is the background")
    backend: str
    device: str
    canvas: int = Field(description="side of the square letterbox canvas")
    mask_size: int
    max_detections: int
    max_batch: int
    weights_verified: bool = Field(
        description="the checkpoint's tensors matched the digest maskrt recorded when it saved "
        "them; false for checkpoints from elsewhere, whose weights nothing could check"
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


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "undecodable image, empty body",
        401: "missing or wrong API key (when keys are configured)",
        413: "body or pixel count over the limit",
        415: "unsupported content type",
        422: "bad parameter",
        500: "inference failed",
        503: "queue full or not ready (Retry-After)",
        504: "the request waited longer than its timeout",
    }.items()
}
