"""Schemathesis hooks (``SCHEMATHESIS_HOOKS``) of tests/test_server_openapi.py: a part of an image
media type is a real image of that type. A JSON schema cannot say "decodable image", so without
these a schema-valid upload is random bytes, which the server rightly refuses with 400."""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/gif": "GIF",
    "image/tiff": "TIFF",
}


def encoded(fmt: str, width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


for media_type, fmt in FORMATS.items():
    schemathesis.openapi.media_type(
        media_type,
        st.builds(
            encoded,
            st.just(fmt),
            st.integers(1, 96),
            st.integers(1, 96),
            st.integers(0, 2**16),
        ),
    )
