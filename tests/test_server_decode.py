"""Image decoding (``maskrt.runtime.decode``): formats, modes, EXIF orientation, bad data, the
pixel guard (checked from the header, before any pixel is decoded) and nvJPEG on a GPU."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from server_harness import big_png

from maskrt.runtime.decode import apply_orientation, decode_image
from maskrt.runtime.errors import InferenceError, InvalidImage, TooLarge

LIMIT = 40_000_000
# decode.py wraps Pillow's read-only buffer without a copy (torch warns once per process)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def pattern(width: int = 37, height: int = 23, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


def decode(data: bytes, **kwargs):
    return decode_image(data, max_pixels=kwargs.pop("max_pixels", LIMIT), **kwargs)


def as_hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).cpu().numpy()


def test_rgb_png_is_exact():
    img = pattern()
    out = decode(encode(img, "PNG"))
    assert out.tensor.dtype == torch.uint8 and tuple(out.tensor.shape) == (3, 23, 37)
    assert (out.width, out.height, out.format, out.decoder) == (37, 23, "PNG", "pillow")
    np.testing.assert_array_equal(as_hwc(out.tensor), np.asarray(img))


def test_jpeg_matches_pillow():
    img = pattern(64, 48)
    data = encode(img, "JPEG", quality=90)
    np.testing.assert_array_equal(
        as_hwc(decode(data).tensor), np.asarray(Image.open(io.BytesIO(data)))
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(orientation):
    img = pattern(40, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "PNG", exif=exif)  # lossless, so pixels compare exactly
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    out = decode(data)
    np.testing.assert_array_equal(as_hwc(out.tensor), expected)
    if orientation >= 5:
        assert (out.width, out.height) == (20, 40)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tensor_orientation_matches_pillow(orientation):
    """The GPU path's orientation (on a CPU tensor here) equals Pillow's exif_transpose."""
    img = pattern(9, 5)
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = Image.open(io.BytesIO(encode(img, "PNG", exif=exif)))
    expected = np.asarray(ImageOps.exif_transpose(src).convert("RGB"))
    tensor = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)
    np.testing.assert_array_equal(as_hwc(apply_orientation(tensor, orientation)), expected)


def test_modes_to_rgb():
    gray = Image.fromarray(np.arange(0, 240, dtype=np.uint8).reshape(12, 20), "L")
    out = as_hwc(decode(encode(gray, "PNG")).tensor)
    assert out.shape == (12, 20, 3) and (out == np.asarray(gray)[:, :, None]).all()

    rgba = Image.new("RGBA", (4, 3), (200, 100, 50, 0))  # fully transparent -> white
    rgba.putpixel((0, 0), (10, 20, 30, 255))  # opaque -> itself
    out = as_hwc(decode(encode(rgba, "PNG")).tensor)
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[2, 3]) == (255, 255, 255)

    la = Image.new("LA", (2, 2), (0, 0))
    assert (as_hwc(decode(encode(la, "PNG")).tensor) == 255).all()

    pal = pattern(8, 8).convert("P")
    np.testing.assert_array_equal(
        as_hwc(decode(encode(pal, "PNG")).tensor), np.asarray(pal.convert("RGB"))
    )

    bw = Image.new("1", (5, 5), 1)
    assert (as_hwc(decode(encode(bw, "PNG")).tensor) == 255).all()

    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # red
    out = as_hwc(decode(encode(cmyk, "JPEG", quality=100)).tensor)
    assert out.shape == (4, 6, 3) and out[..., 0].min() > 240 and out[..., 1:].max() < 15


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # -> 0, 1, 128, 255
    img = Image.fromarray(values)
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = as_hwc(decode(data).tensor)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_float_tiff():
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    out = as_hwc(decode(encode(img, "TIFF")).tensor)
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = as_hwc(decode(buf.getvalue()).tensor)
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_one_pixel_image_is_valid():
    out = decode(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert tuple(out.tensor.shape) == (3, 1, 1) and out.tensor.flatten().tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", "empty_image"),
        (b"this is not an image at all", "invalid_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "invalid_image"),  # a PNG signature, broken header
    ],
)
def test_bad_bytes_are_400(data, code):
    with pytest.raises(InferenceError) as err:
        decode(data)
    assert (type(err.value), err.value.code) == (InvalidImage, code)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_400(fmt):
    data = encode(pattern(200, 150), fmt)
    with pytest.raises(InferenceError) as err:
        decode(data[: len(data) // 2])
    assert (type(err.value), err.value.code) == (InvalidImage, "invalid_image")
    assert "truncated" in err.value.message or "corrupt" in err.value.message


def test_svg_is_not_a_supported_format():
    with pytest.raises(InferenceError) as err:
        decode(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    assert isinstance(err.value, InvalidImage) and "supported format" in err.value.message


def test_pixel_guard_reads_only_the_header():
    data = big_png(20000, 20000)  # 4e8 pixels, ~60 kB on disk
    assert len(data) < 200_000
    started = time.perf_counter()
    with pytest.raises(InferenceError) as err:
        decode(data)
    assert time.perf_counter() - started < 0.5  # decoding 4e8 pixels would take seconds
    assert (type(err.value), err.value.code) == (TooLarge, "image_too_large")


def test_pixel_guard_uses_the_configured_limit():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode(data, max_pixels=10_000).width == 100
    with pytest.raises(InferenceError) as err:
        decode(data, max_pixels=9_999)
    assert isinstance(err.value, TooLarge) and "10000 pixels" in err.value.message


def gradients(width: int, height: int) -> Image.Image:
    """Smooth like a photo (red across, green down, blue along the diagonal), so decoders differ
    only by rounding; pixel noise would measure their chroma upsampling instead (nvJPEG and
    Pillow differed by 13 levels on average on 4:2:0 noise, seen on an H200)."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    array = np.stack([x, y, (x + y) / 2], axis=-1) * 255
    return Image.fromarray(array.round().astype(np.uint8), "RGB")


@pytest.mark.gpu
def test_nvjpeg_on_the_gpu_matches_pillow():
    device = torch.device("cuda")
    img = gradients(320, 240)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(img, "JPEG", quality=95, exif=exif)
    gpu = decode(data, device=device)
    cpu = decode(data)
    assert gpu.decoder == "nvjpeg" and gpu.tensor.device.type == "cuda"
    assert gpu.tensor.shape == cpu.tensor.shape == (3, 320, 240)
    diff = (gpu.tensor.cpu().int() - cpu.tensor.int()).abs()
    assert diff.float().mean() < 1.5 and diff.max() <= 16  # IDCT implementations differ slightly


@pytest.mark.gpu
def test_truncated_jpeg_on_the_gpu_is_400():
    data = encode(pattern(200, 150), "JPEG")
    with pytest.raises(InferenceError) as err:
        decode(data[: len(data) // 2], device=torch.device("cuda"))
    assert isinstance(err.value, InvalidImage)
