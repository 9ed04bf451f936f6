"""Multi-level RoIAlign as one registered PyTorch op: ``torch.ops.maskrt.multilevel_roi_align``.

One call pools the RoIs of every image of a batch from their FPN levels (the contract is
``plugins/roi_align/README.md``, which the TensorRT plugin implements): each RoI gets its level
from torchvision's ``LevelMapper``, then torchvision's ``roi_align`` pools it on that level's map.
With ``aligned=False`` and ``sampling_ratio=2`` (what torchvision's Mask R-CNN uses) the result
equals torchvision's ``MultiScaleRoIAlign``.

- CPU and CUDA: the same composite over ``torchvision.ops.roi_align``, one call per level on the RoIs
  of that level (no Python loop over boxes or images). Float16 (and bfloat16) features are pooled
  in float32 and the result is rounded once to their dtype (the contract's float32 accumulation).
  On CUDA the torch backend's ``cuda_roi_align`` setting swaps in maskrt's kernel
  (``maskrt.runtime.backends.cuda_ops``), which needs no host sync.
- A fake (meta) implementation gives the output shape, so ``torch.export`` / ONNX export can trace
  through the op; ``maskrt.export.onnx_ops`` translates each call into one ONNX node
  ``com.maskrt::MultiLevelRoIAlign`` backed by a local function of standard ONNX ops.
- A RoI whose area is NaN (one side inverted, or NaN coordinates) has no level and pools to zeros,
  as in torchvision, whose ``LevelMapper`` turns that NaN into an int64 matching no level.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

OP_NAME = "maskrt::multilevel_roi_align"
EPS = 1e-6  # torchvision's LevelMapper eps
# torchvision's LevelMapper defaults and the FPN level of the first map (P2): the op's, the ONNX
# node's and the TensorRT plugin's defaults
CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4
FIRST_LEVEL = 2


def roi_levels(
    rois: Tensor,
    num_levels: int,
    canonical_scale: int = CANONICAL_SCALE,
    canonical_level: int = CANONICAL_LEVEL,
    first_level: int = FIRST_LEVEL,
) -> Tensor:
    """0-based map index of each RoI (``rois`` [N, 4]), torchvision's ``LevelMapper`` in the same
    float32 arithmetic; ``num_levels`` (i.e. no level) for a RoI of NaN area."""
    if num_levels == 1:  # MultiScaleRoIAlign skips the mapper for one map
        return torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
    s = torch.sqrt(area)
    k = torch.floor(canonical_level + torch.log2(s / canonical_scale) + EPS)
    k = torch.clamp(k, min=first_level, max=first_level + num_levels - 1)
    k = torch.nan_to_num(k, nan=float(first_level + num_levels))
    return k.to(torch.int64) - first_level


def multilevel_roi_align_composite(
    rois: Tensor,
    features: list[Tensor],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: int = CANONICAL_SCALE,
    canonical_level: int = CANONICAL_LEVEL,
    first_level: int = FIRST_LEVEL,
) -> Tensor:
    """``rois`` float32 [B, R, 4] (x1 y1 x2 y2, canvas pixels; RoIs of image b read features[b]),
    ``features`` L maps [B, C, H_l, W_l] (map l is FPN level ``first_level + l``, spatial scale
    ``2 ** -(first_level + l)``), float32, float16 or bfloat16 -> [B, R, C, output_size,
    output_size] in the features' dtype. The registered op's implementation on every device
    unless a kernel is registered for it (``maskrt.runtime.backends.cuda_ops``)."""
    _check(rois, features)
    batch, num_rois = rois.shape[:2]
    channels, dtype, device = features[0].shape[1], features[0].dtype, features[0].device
    flat = rois.reshape(-1, 4).to(torch.float32)
    image = torch.arange(batch, device=device, dtype=torch.float32).repeat_interleave(num_rois)
    rois5 = torch.cat([image[:, None], flat], dim=1)
    levels = roi_levels(flat, len(features), canonical_scale, canonical_level, first_level)
    out = torch.zeros(
        (flat.shape[0], channels, output_size, output_size), dtype=dtype, device=device
    )
    for index, feature in enumerate(features):
        chosen = torch.nonzero(levels == index).squeeze(1)
        if chosen.numel() == 0:
            continue
        pooled = roi_align(
            feature.float(),
            rois5.index_select(0, chosen),
            output_size=output_size,
            spatial_scale=2.0 ** -(first_level + index),
            sampling_ratio=sampling_ratio,
            aligned=bool(aligned),
        )
        out.index_copy_(0, chosen, pooled.to(dtype))
    return out.reshape(batch, num_rois, channels, output_size, output_size)


multilevel_roi_align = torch.library.custom_op(
    OP_NAME, multilevel_roi_align_composite, mutates_args=()
)


@multilevel_roi_align.register_fake
def _multilevel_roi_align_fake(
    rois,
    features,
    output_size,
    sampling_ratio,
    aligned,
    canonical_scale=CANONICAL_SCALE,
    canonical_level=CANONICAL_LEVEL,
    first_level=FIRST_LEVEL,
):
    _check(rois, features)
    batch, num_rois = rois.shape[:2]
    return features[0].new_empty((batch, num_rois, features[0].shape[1], output_size, output_size))


def _check(rois: Tensor, features: list[Tensor]) -> None:
    torch._check(
        rois.dim() == 3 and rois.shape[-1] == 4,
        lambda: f"rois must be [B, R, 4], got {tuple(rois.shape)}",
    )
    torch._check(len(features) >= 1, lambda: "at least one feature map is needed")
    for f in features:
        torch._check(f.dim() == 4, lambda: "features must be [B, C, H, W]")
        torch._check(f.dtype == features[0].dtype, lambda: "all feature maps must have one dtype")


def pooler_params(pool) -> dict:
    """The op's attributes that reproduce a torchvision ``MultiScaleRoIAlign`` (box or mask pool),
    for a canvas whose side is a multiple of 32 (so map l has scale exactly 2^-(2 + l))."""
    size = pool.output_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    if isinstance(pool.output_size, (tuple, list)) and len(set(pool.output_size)) != 1:
        raise ValueError(f"square RoIAlign outputs only, got {pool.output_size}")
    return {
        "output_size": int(size),
        "sampling_ratio": int(pool.sampling_ratio),
        "aligned": False,  # MultiScaleRoIAlign always calls roi_align(aligned=False)
        "canonical_scale": int(getattr(pool, "canonical_scale", CANONICAL_SCALE)),
        "canonical_level": int(getattr(pool, "canonical_level", CANONICAL_LEVEL)),
        "first_level": FIRST_LEVEL,
    }
