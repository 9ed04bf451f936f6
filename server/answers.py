"""The native API's answer for one image (``POST /predict``; ``maskrt predict`` writes the same):
which model answered, the image's size, its detections and the time each stage took
(docs/architecture.md, "HTTP contract")."""

from __future__ import annotations

from typing import Any

from maskrt.runtime.dataplane import ImageResult


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def answer(model: dict[str, str], result: ImageResult) -> dict[str, Any]:
    """``model``: :meth:`~maskrt.runtime.dataplane.ServedModel.ref` of the model that answered."""
    image, inferred = result.image, result.inferred
    return {
        "model": model,
        "width": image.width,
        "height": image.height,
        "detections": inferred.detections,
        "timings_ms": {
            "decode": _ms(image.seconds),
            "queue": _ms(inferred.queue_s),
            "preprocess": _ms(inferred.preprocess_s),
            "inference": _ms(inferred.inference_s),
            "postprocess": _ms(inferred.postprocess_s),
        },
    }
