"""The OpenAPI document describes the answer (box order, RLE layout, label vs class id) and has an
example for every answer of every route; the example answer is a real, decodable one."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils


@pytest.fixture(scope="module")
def spec() -> dict:
    from maskrt.server.app import create_app
    from maskrt.server.settings import Settings

    return create_app(Settings(api_keys=["docs-test-key"])).openapi()  # no model is loaded


def _resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_every_answer_of_every_route_has_an_example(spec):
    missing = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                for media, content in response.get("content", {}).items():
                    schema = _resolve(spec, content.get("schema", {}))
                    props = schema.get("properties", {})
                    if not (
                        "example" in content
                        or "examples" in schema
                        or (props and all("examples" in _resolve(spec, p) for p in props.values()))
                    ):
                        missing.append(f"{method.upper()} {path} {status} {media}")
    assert missing == []


def test_the_answer_fields_are_described(spec):
    schemas = spec["components"]["schemas"]
    box = schemas["Detection"]["properties"]["box"]["description"]
    assert "x1, y1, x2, y2" in box and "top-left" in box
    counts = schemas["Mask"]["properties"]["counts"]["description"]
    assert "column-major" in counts and "run" in counts
    assert "height, width" in schemas["Mask"]["properties"]["size"]["description"]
    class_id = schemas["Detection"]["properties"]["class_id"]["description"]
    assert "classes" in class_id and "background" in class_id
    assert "classes[class_id]" in schemas["Detection"]["properties"]["label"]["description"]


def test_the_example_answer_is_a_valid_decodable_answer():
    from maskrt.server.schemas import EXAMPLE_ANSWER, PredictResponse

    PredictResponse.model_validate(EXAMPLE_ANSWER)
    h, w = EXAMPLE_ANSWER["height"], EXAMPLE_ANSWER["width"]
    for det in EXAMPLE_ANSWER["detections"]:
        rle = {"size": det["mask"]["size"], "counts": det["mask"]["counts"].encode()}
        mask = mask_utils.decode(rle)
        assert mask.shape == (h, w) and mask.sum() > 100
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = det["box"]
        assert x1 - 1 <= xs.min() and xs.max() <= x2 + 1 and y1 - 1 <= ys.min() <= ys.max() <= y2
