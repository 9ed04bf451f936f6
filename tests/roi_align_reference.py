"""torchvision-built reference of the multi-level RoIAlign op (the contract's semantics).

It is what the plugin's kernel is tested against: torchvision's ``LevelMapper`` picks each RoI's
level and ``torchvision.ops.roi_align`` pools it there, exactly as ``MultiScaleRoIAlign`` does, but
with the ``aligned`` flag exposed and the level scales given by ``first_level`` instead of inferred
from the map sizes. Slow (a Python loop over levels, data-dependent indexing): a reference only.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper


def multilevel_roi_align_reference(
    rois: Tensor,
    features: list[Tensor],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    first_level: int = 2,
) -> Tensor:
    """``rois`` float32 [B, R, 4] (x1 y1 x2 y2, canvas pixels), ``features`` L maps [B, C, H_l, W_l]
    (map l is FPN level ``first_level + l``); returns [B, R, C, output_size, output_size] in the
    features' dtype. RoIs whose level is undefined (NaN area) stay zero, as in torchvision."""
    if rois.dim() != 3 or rois.shape[-1] != 4:
        raise ValueError(f"rois must be [B, R, 4], got {tuple(rois.shape)}")
    batch, num_rois = rois.shape[:2]
    channels = features[0].shape[1]
    flat = rois.reshape(-1, 4)
    image = torch.arange(batch, device=rois.device, dtype=rois.dtype).repeat_interleave(num_rois)
    rois5 = torch.cat([image[:, None], flat], dim=1)
    num_levels = len(features)
    if num_levels == 1:  # torchvision skips the mapper for one level
        levels = torch.zeros(len(flat), dtype=torch.int64, device=rois.device)
    else:
        mapper = LevelMapper(
            first_level,
            first_level + num_levels - 1,
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
        )
        levels = mapper([flat])
    dtype = features[0].dtype
    result = torch.zeros(
        (len(flat), channels, output_size, output_size), dtype=dtype, device=rois.device
    )
    for index, feature in enumerate(features):
        chosen = torch.where(levels == index)[0]
        if len(chosen) == 0:
            continue
        result[chosen] = roi_align(
            feature,
            rois5[chosen].to(dtype),
            output_size=output_size,
            spatial_scale=2.0 ** -(first_level + index),
            sampling_ratio=sampling_ratio,
            aligned=aligned,
        )
    return result.reshape(batch, num_rois, channels, output_size, output_size)
