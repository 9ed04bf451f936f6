"""Float32 evaluation orders ("recipes") of bilinear interpolation, and their calibration.

A bilinear value can sit within an ulp of 0.5, so a paste equal to torchvision's needs the same
float32 arithmetic as ``F.interpolate`` on that device, and that differs by build and regime (see
:mod:`maskrt.runtime.postprocess`). :func:`bilinear_windows` evaluates a :class:`Recipe` for many
windows at once; :func:`recipes_for` finds, once per device, the recipe that matches
``F.interpolate`` bit for bit on a set of probes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from maskrt.runtime.postprocess.geometry import axis_tables

# torchvision's F.interpolate picks another CPU kernel when out_h + out_w <= 128.
SMALL_SUM = 128


@dataclass(frozen=True)
class Recipe:
    """One float32 evaluation order of bilinear interpolation.

    ``kind="separable"``: rows first, ``t = c0*b0 + c1*b1`` along x for the two source rows, then
    ``v = t0*a0 + t1*a1`` along y (ATen's generic CPU kernel; the CUDA kernel has the same shape).
    ``kind="chain"``: ``v = i00*w00 + i01*w01 + i10*w10 + i11*w11`` with ``w = a*b`` (ATen's CPU
    kernel for small outputs). ``mode``: ``plain`` rounds every operation; ``fma0`` fuses the
    first product into the sum, ``fma1`` the second (separable); for chains ``fma`` is
    ``fma(i11, w11, fma(i10, w10, fma(i00, w00, i01 * w01)))``.
    """

    kind: str
    src_fma: bool
    h_mode: str = "plain"
    v_mode: str = "plain"


_SEPARABLE_MODES = ("fma0", "plain", "fma1")
CANDIDATES: tuple[Recipe, ...] = (
    Recipe("separable", True, "fma0", "fma0"),  # CPU AVX2 / AVX-512 builds
    Recipe("separable", False, "plain", "plain"),  # CPU baseline build
    Recipe("chain", True, "fma", "fma"),  # CPU AVX2 / AVX-512 builds, h + w <= 128
    Recipe("chain", False, "plain", "plain"),  # CPU baseline build, h + w <= 128
    *(
        Recipe("separable", s, h, v)
        for s in (True, False)
        for h in _SEPARABLE_MODES
        for v in _SEPARABLE_MODES
        if not (h == v and (h, s) in (("fma0", True), ("plain", False)))
    ),
)


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 ``a * b + c`` with one rounding: the product is exact in float64, the sum is
    rounded once to float64 then to float32 (a double rounding that can only matter when
    ``a * b + c`` lies within 2^-53 relative of a float32 rounding midpoint)."""
    r = a.to(torch.float64) * b.to(torch.float64)
    r += c
    return r.to(torch.float32)


def _combine(p: Tensor, wp: Tensor, q: Tensor, wq: Tensor, mode: str) -> Tensor:
    if mode == "plain":
        r = p * wp
        r += q * wq
        return r
    if mode == "fma0":
        return _fma(p, wp, q * wq)
    if mode == "fma1":
        return _fma(q, wq, p * wp)
    raise ValueError(f"unknown combine mode {mode!r}")


def bilinear_windows(
    padded: Tensor, cols: tuple[Tensor, ...], rows: tuple[Tensor, ...], recipe: Recipe
) -> Tensor:
    """Bilinear values ``[n, Wc, Hr]`` (column-major windows) of padded masks ``[n, S, S]``.

    ``cols = (x0, x1, b0, b1)`` are ``[n, Wc]``, ``rows = (y0, y1, a0, a1)`` are ``[n, Hr]``
    (from :func:`~maskrt.runtime.postprocess.geometry.axis_tables`); zero weights give exact zeros.
    """
    n, s, _ = padded.shape
    x0, x1, b0, b1 = cols
    y0, y1, a0, a1 = rows
    wc, hr = x0.shape[1], y0.shape[1]
    if recipe.kind == "separable":  # along x for the two source rows, then along y
        mt = padded.transpose(1, 2)  # [n, x, y]
        c0 = torch.gather(mt, 1, x0[:, :, None].expand(n, wc, s))
        c1 = torch.gather(mt, 1, x1[:, :, None].expand(n, wc, s))
        hx = _combine(c0, b0[:, :, None], c1, b1[:, :, None], recipe.h_mode)  # [n, Wc, S]
        g0 = torch.gather(hx, 2, y0[:, None, :].expand(n, wc, hr))
        g1 = torch.gather(hx, 2, y1[:, None, :].expand(n, wc, hr))
        return _combine(g0, a0[:, None, :], g1, a1[:, None, :], recipe.v_mode)
    if recipe.kind == "chain":  # the four taps times their weight products, summed in order
        flat = padded.reshape(n, s * s)

        def tap(yi: Tensor, xi: Tensor) -> Tensor:
            idx = (yi[:, None, :] * s + xi[:, :, None]).reshape(n, wc * hr)
            return torch.gather(flat, 1, idx).view(n, wc, hr)

        taps = (tap(y0, x0), tap(y0, x1), tap(y1, x0), tap(y1, x1))
        weights = (
            a0[:, None, :] * b0[:, :, None],
            a0[:, None, :] * b1[:, :, None],
            a1[:, None, :] * b0[:, :, None],
            a1[:, None, :] * b1[:, :, None],
        )
        return _chain_sum(taps, weights, fused=recipe.h_mode == "fma")
    raise ValueError(f"unknown recipe kind {recipe.kind!r}")


def _chain_sum(taps: tuple[Tensor, ...], weights: tuple[Tensor, ...], fused: bool) -> Tensor:
    (i00, i01, i10, i11), (w00, w01, w10, w11) = taps, weights
    if fused:
        return _fma(i11, w11, _fma(i10, w10, _fma(i00, w00, i01 * w01)))
    r = i00 * w00
    r += i01 * w01
    r += i10 * w10
    r += i11 * w11
    return r


_CALIBRATED: dict[str, dict[str, Recipe | None]] = {}
_CALIBRATION_LOCK = threading.Lock()


def _probe_sizes() -> dict[str, list[tuple[int, int]]]:
    rng = np.random.default_rng(12345)
    small = [
        (1, 1),
        (1, 2),
        (2, 1),
        (3, 5),
        (7, 29),
        (29, 7),
        (30, 30),
        (31, 30),
        (30, 31),
        (28, 28),
        (33, 47),
        (60, 68),
        (64, 64),
        (100, 28),
        (127, 1),
        (1, 127),
        (13, 115),
    ]
    small += [
        (int(h), int(rng.integers(1, SMALL_SUM - h + 1))) for h in rng.integers(1, SMALL_SUM, 12)
    ]
    large = [
        (64, 65),
        (65, 64),
        (1, 128),
        (128, 1),
        (100, 100),
        (129, 30),
        (31, 400),
        (400, 31),
        (300, 200),
        (1, 700),
        (700, 2),
        (257, 513),
    ]
    large += [(int(h), int(w)) for h, w in rng.integers(30, 600, (8, 2))]
    return {"small": small, "large": large}


def _probe_masks(n: int, size: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(777)
    m = torch.rand(n, size, size, generator=g)
    noise = torch.randn(n, 1, 5, 5, generator=g) * 4
    smooth = torch.sigmoid(
        F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    )
    m[1::2] = smooth[1::2]
    m[2::5] = (m[2::5] > 0.5).float()
    return F.pad(m, (1, 1, 1, 1)).to(device)


def _recipe_exact(recipe: Recipe, padded: Tensor, sizes: list[tuple[int, int]]) -> bool:
    s = padded.shape[-1]
    for j, (h, w) in enumerate(sizes):
        m = padded[j : j + 1]
        ref = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        one = np.zeros(1, np.int64)
        cols = axis_tables(s, one + w, one, one + w, w, recipe.src_fma)
        rows = axis_tables(s, one + h, one, one + h, h, recipe.src_fma)
        ct = tuple(torch.from_numpy(t).to(padded.device) for t in cols)
        rt = tuple(torch.from_numpy(t).to(padded.device) for t in rows)
        v = bilinear_windows(m, ct, rt, recipe)[0].t()
        if not torch.equal(v, ref):
            return False
    return True


def recipes_for(device: torch.device | str, mask_size: int = 28) -> dict[str, Recipe | None]:
    """The recipe that reproduces ``F.interpolate`` on ``device`` for small (``h + w <= 128``)
    and large outputs, found once per device and padded size by probing; ``None`` = no recipe
    matched (that regime then calls ``F.interpolate`` per box). The first vectorised paste on a
    device calls it (tens to hundreds of milliseconds); a server calls it at warm-up."""
    device = torch.device(device)
    key = f"{device}/{mask_size}"
    with _CALIBRATION_LOCK:
        cached = _CALIBRATED.get(key)
        if cached is not None:
            return cached
        sizes = _probe_sizes()
        padded = _probe_masks(max(len(v) for v in sizes.values()), mask_size, device)
        found: dict[str, Recipe | None] = {}
        for regime, probe in sizes.items():
            found[regime] = next((r for r in CANDIDATES if _recipe_exact(r, padded, probe)), None)
        _CALIBRATED[key] = found
        return found
