"""Configs build torchvision's own MaskRCNN layout: torchvision state dicts load key-for-key and
give the same outputs as torchvision's model."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

from maskrt.model.checkpoint import load_checkpoint
from maskrt.model.config import get_config

BUILDERS = {"resnet50_fpn": maskrcnn_resnet50_fpn, "resnet50_fpn_v2": maskrcnn_resnet50_fpn_v2}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_torchvision_state_dict_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    canvas = 320
    cfg = get_config(name).replace(canvas=canvas, score_threshold=0.0, max_detections=50)
    reference = BUILDERS[name](
        weights=None,
        weights_backbone=None,
        min_size=canvas,
        max_size=canvas,
        box_score_thresh=0.0,
        box_detections_per_img=50,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
    ).eval()
    with torch.no_grad():
        # spread the class scores so no two detections tie (ties may order either way), and give
        # BN non-trivial statistics so the test sees them
        reference.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5)
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)

    loaded = load_checkpoint(path, config=cfg)
    # float64: BatchNorm2d (torchvision without weights) and FrozenBatchNorm2d (torchvision's
    # pretrained layout, ours) round differently in float32, and a random R50 amplifies that
    image = [torch.rand(3, 240, 320, dtype=torch.float64)]
    with torch.no_grad():
        expected = reference.double()(image)[0]
        actual = loaded.model.double()(image)[0]
    assert len(expected["boxes"]) > 10  # detections forced by the zero threshold
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-6, atol=1e-6)


def test_shapes_config_is_small_enough_to_ship():
    from maskrt.model.build import build_model

    params = sum(p.numel() for p in build_model(get_config("shapes")).state_dict().values())
    assert params * 2 < 25e6  # fp16 storage under the 25 MB limit for files in git
