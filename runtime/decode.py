"""Image decoding: uploaded bytes to a uint8 RGB ``[3, H, W]`` tensor, upright.

Every image is first *opened* with Pillow, which reads only the header: the format is checked
against :data:`FORMATS` and ``width x height`` against the pixel limit before a single pixel is
decoded, so a decompression bomb (a small file declaring a huge image) costs nothing.

Then:

- on a CUDA device, a baseline/progressive RGB or grayscale JPEG that ends with its EOI marker is
  decoded on the GPU by nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``; with the
  ``gpu_decode`` setting the JPEGs of a request in one batched call, :func:`decode_batch`) and its
  EXIF orientation is applied on the GPU; any failure there falls back to Pillow;
- otherwise Pillow decodes it on the host: EXIF orientation applied (``ImageOps.exif_transpose``),
  the first frame of an animation, and every mode made RGB (see :func:`to_rgb`).

Truncated or corrupt data is an error (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off). A 1x1 image
is a valid image.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor

from maskrt.runtime.errors import InvalidImage, TooLarge

# What the server accepts (Pillow format names). MPO is what many cameras write for JPEG.
Image.init()  # register every plugin now (Pillow loads most lazily)
FORMATS: tuple[str, ...] = tuple(
    f for f in ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF") if f in Image.OPEN
)
_EXIF_ORIENTATION = 0x0112
_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}


@dataclass
class DecodedImage:
    """A decoded upright RGB image and how it was obtained."""

    tensor: Tensor  # uint8 [3, H, W], on ``device`` for nvJPEG, else on the host
    format: str  # Pillow's format name
    decoder: str  # "pillow" or "nvjpeg"
    seconds: float

    @property
    def width(self) -> int:
        return int(self.tensor.shape[2])

    @property
    def height(self) -> int:
        return int(self.tensor.shape[1])


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    device: torch.device | str | None = None,
    name: str = "image",
    pinned_copies: bool = False,
) -> DecodedImage:
    """Decode ``data``; ``device`` is the backend's (nvJPEG is used when it is a CUDA device).

    With ``pinned_copies`` an image Pillow decoded is copied to that CUDA device here, from pinned
    memory on this thread's own stream (:func:`~maskrt.runtime.preprocess.copy_to_device`), so
    the copy overlaps the batch being inferred.

    Raises :class:`~maskrt.runtime.errors.InvalidImage` (``empty_image``, ``invalid_image``) or
    :class:`~maskrt.runtime.errors.TooLarge` (``image_too_large``).
    ``name`` labels the image in messages (``images[2]`` of a batch).
    """
    started = time.perf_counter()
    img = open_image(data, max_pixels=max_pixels, name=name)
    fmt = img.format or "unknown"
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and _nvjpeg_eligible(img, data):
        try:
            tensor = _decode_nvjpeg(data, img, device)
        except Exception:  # nvJPEG refuses some valid files; Pillow decides
            pass
        else:
            return DecodedImage(tensor, fmt, "nvjpeg", time.perf_counter() - started)
    tensor = _decode_pillow(img, name)
    if pinned_copies and device is not None and device.type == "cuda":
        from maskrt.runtime.preprocess import copy_to_device

        tensor = copy_to_device(tensor, device)
    return DecodedImage(tensor, fmt, "pillow", time.perf_counter() - started)


def decode_batch(
    images: list[tuple[bytes, str]],
    *,
    max_pixels: int,
    device: torch.device,
    pinned_copies: bool = False,
) -> list[DecodedImage]:
    """``(data, name)`` pairs decoded as :func:`decode_image` would, except that the JPEGs nvJPEG
    takes are decoded in one batched call on the CUDA ``device`` (each gets an equal share of its
    seconds); the rest, or all of them when the batched call fails, one at a time."""
    started = time.perf_counter()
    opened = [open_image(data, max_pixels=max_pixels, name=name) for data, name in images]
    eligible = [
        i for i, (img, (data, _)) in enumerate(zip(opened, images)) if _nvjpeg_eligible(img, data)
    ]
    out: dict[int, DecodedImage] = {}
    if len(eligible) > 1:
        try:
            tensors = _decode_nvjpeg_batch(
                [images[i][0] for i in eligible], [opened[i] for i in eligible], device
            )
        except Exception:  # nvJPEG refuses some valid files; one at a time decides
            pass
        else:
            share = (time.perf_counter() - started) / len(eligible)
            for i, tensor in zip(eligible, tensors):
                out[i] = DecodedImage(tensor, opened[i].format or "unknown", "nvjpeg", share)
    for i, (data, name) in enumerate(images):
        if i not in out:
            out[i] = decode_image(
                data, max_pixels=max_pixels, device=device, name=name, pinned_copies=pinned_copies
            )
    return [out[i] for i in range(len(images))]


def admit_pixels(max_pixels: int) -> None:
    """Let Pillow open images of up to ``max_pixels``: its own decompression-bomb check must not
    refuse, with another message, what :func:`open_image` checks first (process-wide)."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)


def image_pixels(data: bytes, *, max_pixels: int, name: str = "image") -> int:
    """Width x height from the header, with the checks of :func:`open_image`; nothing decoded."""
    with open_image(data, max_pixels=max_pixels, name=name) as img:
        return img.width * img.height


def open_image(data: bytes, *, max_pixels: int, name: str = "image") -> Image.Image:
    """Pillow's lazy open (header only) with the format and pixel-count checks."""
    if not data:
        raise InvalidImage("empty_image", f"{name}: the image is empty (0 bytes)")
    supported = ", ".join(FORMATS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise TooLarge(
            "image_too_large",
            f"{name}: the image has more pixels than the limit of {max_pixels}",
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage(
            "invalid_image", f"{name}: not an image in a supported format ({supported})"
        ) from None
    except Exception as exc:  # broken headers make plugins raise all sorts of errors
        raise InvalidImage(
            "invalid_image", f"{name}: the image header is corrupt ({_reason(exc)})"
        ) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage("invalid_image", f"{name}: the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooLarge(
            "image_too_large",
            f"{name}: {width}x{height} = {width * height} pixels is over the limit of "
            f"{max_pixels} pixels",
        )
    return img


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


# ---------------------------------------------------------------------------------------------
# Pillow


def _decode_pillow(img: Image.Image, name: str) -> Tensor:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES, "truncated images must be errors"
    try:
        img.load()
        with contextlib.suppress(Exception):  # a corrupt EXIF block: keep the stored orientation
            img = ImageOps.exif_transpose(img)
        array = to_rgb(img)
    except (InvalidImage, TooLarge):
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(
            "invalid_image", f"{name}: the image data is truncated or corrupt ({_reason(exc)})"
        ) from None
    except Image.DecompressionBombError:
        raise TooLarge("image_too_large", f"{name}: the image has too many pixels") from None
    return torch.from_numpy(array).permute(2, 0, 1)


def to_rgb(img: Image.Image) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of any Pillow mode.

    Transparent images are composited over white (what viewers show); 16-bit images are scaled
    to 8 bits (``round(v * 255 / 65535)``), float images taken as 0..1 when their maximum is at
    most 1, else clipped to 0..255; CMYK, YCbCr, palette and the rest go through Pillow's
    ``convert("RGB")``.
    """
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in _HIGH_BIT_MODES:
        a = np.asarray(img)
        if mode == "F":
            a = a.astype(np.float64)
            a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
            gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        else:
            a = a.astype(np.int64)
            if mode == "I" and (a.size == 0 or a.max() <= 255) and a.min() >= 0:
                gray = a.astype(np.uint8)  # an 8-bit image stored as 32-bit integers
            else:
                a = np.clip(a, 0, 65535)
                gray = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or (mode in ("P", "L") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    if mode == "1":
        img = img.convert("L")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# nvJPEG


def _nvjpeg_eligible(img: Image.Image, data: bytes) -> bool:
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return False
    # nvJPEG may decode a truncated file without complaint; only complete files go to the GPU
    # (Pillow reports truncation as an error).
    return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def exif_orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(image: Tensor, orientation: int) -> Tensor:
    """``[C, H, W]`` turned upright for an EXIF orientation (1-8), as ``ImageOps.exif_transpose``
    (on any device)."""
    if orientation == 2:  # mirrored left-right
        return image.flip(-1)
    if orientation == 3:  # rotated 180
        return image.flip(-1).flip(-2)
    if orientation == 4:  # mirrored top-bottom
        return image.flip(-2)
    if orientation == 5:  # transposed
        return image.transpose(-1, -2)
    if orientation == 6:  # needs a clockwise quarter turn
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:  # transversed
        return image.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:  # needs a counter-clockwise quarter turn
        return torch.rot90(image, 1, (-2, -1))
    return image


def _decode_nvjpeg(data: bytes, img: Image.Image, device: torch.device) -> Tensor:
    return _decode_nvjpeg_batch([data], [img], device)[0]


def _decode_nvjpeg_batch(
    datas: list[bytes], imgs: list[Image.Image], device: torch.device
) -> list[Tensor]:
    """One ``decode_jpeg`` call for every file (batched nvJPEG), each turned upright."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.from_numpy(np.frombuffer(d, dtype=np.uint8)) for d in datas]  # no copies
    if len(raw) == 1:
        decoded = [decode_jpeg(raw[0], mode=ImageReadMode.RGB, device=device)]
    else:
        decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    return [
        apply_orientation(out, exif_orientation(img)).contiguous()
        for out, img in zip(decoded, imgs)
    ]
