"""What a ``/predict`` request carries: its content type, the image bodies (multipart or raw), the
parameters (query and form fields), and the OpenAPI description of that body, which FastAPI cannot
infer because the routes read the body themselves (streamed, under the size limit).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header
from starlette.requests import Request

from maskrt.runtime.pipeline import PostOptions
from maskrt.server.errors import ApiError, unknown_parameter, validation_message
from maskrt.server.schemas import PredictParams

BodyKind = Literal["multipart", "raw"]
PARAMETERS = list(PredictParams.model_fields)
_RAW_TYPES = ("application/octet-stream",)
IMAGE_MEDIA_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/gif",
    "image/tiff",
)


def parse_params(items: list[tuple[str, Any]]) -> PredictParams:
    """Query and form fields (or ``/v2`` parameters) as :class:`PredictParams`; an unknown name
    or a name given twice is a 422 naming the first one (so that a million unknown keys cost one
    line, not a million)."""
    merged: dict[str, Any] = {}
    for key, value in items:
        if key not in PredictParams.model_fields:
            raise ApiError(422, "invalid_parameter", unknown_parameter(key, PARAMETERS))
        if key in merged:
            raise ApiError(422, "invalid_parameter", f"parameter {key!r} is given more than once")
        merged[key] = value
    try:
        return PredictParams.model_validate(merged)
    except ValidationError as exc:
        raise ApiError(422, "invalid_parameter", validation_message(exc, PARAMETERS)) from None


def post_options(params: PredictParams, default_score_threshold: float) -> PostOptions:
    """What post-processing does for a request's images."""
    threshold = params.score_threshold
    return PostOptions(
        default_score_threshold if threshold is None else threshold,
        params.max_detections,
        params.masks == "rle",
    )


def classify_content_type(content_type: str, batch: bool, has_body: bool = True) -> BodyKind:
    """``multipart`` or ``raw``; no body and no type is a 400 (nothing uploaded), anything else a
    415."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media and not has_body:
        raise _empty_body()
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
    request: Request, kind: BodyKind, batch: bool, max_images: int
) -> tuple[list[bytes], list[tuple[str, str]]]:
    """The image bodies and the form's other fields."""
    if kind == "raw":
        return [await read_raw_body(request)], []
    names = ("images", "image") if batch else ("image",)
    try:
        async with contextlib.aclosing(request.stream()) as stream:
            parser = CompleteMultiPartParser(
                request.headers,
                stream,
                max_files=max_images + 1,
                max_fields=64,
                max_part_size=64 * 1024,
                file_fields=names,
            )
            form = await parser.parse()
    except MultiPartException as exc:  # the multipart parser's complaints
        raise ApiError(400, "invalid_multipart", f"invalid multipart body: {exc.message}") from None
    if not form.multi_items():
        await form.close()
        raise ApiError(
            400, "invalid_multipart", "invalid multipart body: no parts (is the boundary right?)"
        )
    try:
        files: list[UploadFile] = []
        fields: list[tuple[str, str]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile) and key in names:
                files.append(value)
            elif isinstance(value, UploadFile):
                raise ApiError(
                    422,
                    "invalid_field",
                    f"unexpected file field {key!r}; images go in {names[0]!r}",
                )
            else:
                fields.append((key, value))
        _check_file_count(len(files), names[0], batch, max_images)
        return [await f.read() for f in files], fields
    finally:
        await form.close()


class CompleteMultiPartParser(MultiPartParser):
    """Starlette's multipart parser that also refuses a body cut before its closing boundary
    (python-multipart ends such a body quietly, without the part it was in), and takes a part
    named as an image field for a file even without a ``filename`` (OpenAPI cannot require one).
    """

    ended = False

    def __init__(self, *args: Any, file_fields: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file_fields = {name.encode() for name in file_fields}

    def on_headers_finished(self) -> None:
        part = self._current_part
        _, options = parse_options_header(part.content_disposition)
        name = options.get(b"name")
        if part.content_disposition and name in self.file_fields and b"filename" not in options:
            part.content_disposition += b'; filename="' + (name or b"") + b'"'
        super().on_headers_finished()

    def on_end(self) -> None:
        self.ended = True

    async def parse(self) -> FormData:
        form = await super().parse()
        if not self.ended:
            await form.close()
            raise MultiPartException("the body ends before the closing boundary")
        return form


async def read_raw_body(request: Request) -> bytes:
    """The whole body (the size limit applies as it streams in); an empty one is a 400."""
    body = b"".join([chunk async for chunk in request.stream()])
    if not body:
        raise _empty_body()
    return body


def has_body(request: Request) -> bool:
    """Whether the request declares a body (a non-zero Content-Length, or chunks)."""
    headers = request.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _empty_body() -> ApiError:
    return ApiError(
        400,
        "empty_body",
        "the request body is empty: send the image as the body (Content-Type image/...) "
        "or as the multipart field 'image'",
    )


def _check_file_count(count: int, field: str, batch: bool, max_images: int) -> None:
    if count == 0:
        raise ApiError(422, "missing_field", f"the multipart field {field!r} (a file) is required")
    if not batch and count > 1:
        raise ApiError(
            422,
            "invalid_field",
            "one image per /predict request; send several to /predict/batch as 'images' fields",
        )
    if count > max_images:
        raise ApiError(
            413, "too_many_images", f"{count} images in one request; the limit is {max_images}"
        )


def request_body_doc(batch: bool) -> dict[str, Any]:
    """OpenAPI ``parameters`` and ``requestBody`` of ``/predict`` (``batch``: ``/predict/batch``),
    no looser than the server: at least one image, none empty, and the parameters in the query
    only (form fields of the same names work too, but a name in both places is a 422, which a
    schema cannot say)."""
    params = {
        name: {k: v for k, v in schema.items() if k != "default"}
        for name, schema in PredictParams.model_json_schema()["properties"].items()
    }
    described = "(JPEG, PNG, WebP, BMP, GIF, TIFF)"
    binary = {"type": "string", "format": "binary", "minLength": 1}
    if batch:
        field = "images"
        files: dict[str, Any] = {
            field: {
                "type": "array",
                "items": binary,
                "minItems": 1,
                "description": f"the images {described}; at most MAX_QUEUE of them",
            }
        }
    else:
        field = "image"
        files = {field: {**binary, "description": f"the image {described}"}}
    multipart = {
        "type": "object",
        "required": [field],
        "properties": files,
        "additionalProperties": False,
    }
    encoding = {field: {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}}
    content: dict[str, Any] = {"multipart/form-data": {"schema": multipart, "encoding": encoding}}
    if not batch:
        content["image/*"] = {"schema": binary}
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
