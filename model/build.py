"""Build torchvision ``MaskRCNN`` models from a :class:`ModelConfig`.

The result is always torchvision's own class with torchvision's module names, so a state dict
saved from ``maskrcnn_resnet50_fpn`` (or ``_v2``) loads key-for-key, and ours load in torchvision.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from maskrt.errors import MaskrtError
from maskrt.model.config import ModelConfig

# torchvision ResNets with fewer basic blocks per stage: small enough to train on a CPU and ship.
_SMALL_TRUNKS = {"resnet10": [1, 1, 1, 1]}


def build_model(cfg: ModelConfig) -> MaskRCNN:
    """A randomly initialised ``MaskRCNN`` laid out as ``cfg`` says (no weights are downloaded)."""
    norm = misc_nn_ops.FrozenBatchNorm2d if cfg.frozen_bn else nn.BatchNorm2d
    if cfg.backbone in _SMALL_TRUNKS:
        trunk = resnet.ResNet(resnet.BasicBlock, _SMALL_TRUNKS[cfg.backbone], norm_layer=norm)
    elif cfg.backbone in resnet.__all__ and cfg.backbone.startswith(("resnet", "resnext", "wide_")):
        trunk = getattr(resnet, cfg.backbone)(weights=None, norm_layer=norm)
    else:
        raise MaskrtError(f"config {cfg.name!r}: unknown backbone {cfg.backbone!r}")
    backbone = _fpn_backbone(trunk, cfg)
    channels = backbone.out_channels

    anchors = AnchorGenerator(
        tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes)
    )
    num_anchors = anchors.num_anchors_per_location()[0]
    if cfg.fpn_v2:
        rpn_head = RPNHead(channels, num_anchors, conv_depth=2)
        box_head = FastRCNNConvFCHead(
            (channels, 7, 7),
            [256, 256, 256, 256],
            [cfg.box_representation],
            norm_layer=nn.BatchNorm2d,
        )
        mask_head = MaskRCNNHeads(channels, list(cfg.mask_layers), 1, norm_layer=nn.BatchNorm2d)
    else:
        rpn_head = RPNHead(channels, num_anchors)
        box_head = TwoMLPHead(channels * 7 * 7, cfg.box_representation)
        mask_head = MaskRCNNHeads(channels, list(cfg.mask_layers), 1)

    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.canvas,
        max_size=cfg.canvas,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
        rpn_nms_thresh=cfg.rpn_nms_threshold,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(cfg.box_representation, cfg.num_classes),
        box_score_thresh=cfg.score_threshold,
        box_nms_thresh=cfg.nms_threshold,
        box_detections_per_img=cfg.max_detections,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(cfg.mask_layers[-1], cfg.mask_layers[-1], cfg.num_classes),
    )


def _fpn_backbone(trunk: resnet.ResNet, cfg: ModelConfig) -> BackboneWithFPN:
    """torchvision's ``_resnet_fpn_extractor`` with a configurable FPN width (same module names)."""
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.trainable_layers]
    if cfg.trainable_layers == 5:
        layers.append("bn1")
    for name, parameter in trunk.named_parameters():
        if all(not name.startswith(layer) for layer in layers):
            parameter.requires_grad_(False)
    stage_channels = trunk.inplanes // 8  # layer1 width: 64 (basic blocks) or 256 (bottlenecks)
    return BackboneWithFPN(
        trunk,
        return_layers={f"layer{k}": str(k - 1) for k in range(1, 5)},
        in_channels_list=[stage_channels * 2 ** (k - 1) for k in range(1, 5)],
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=nn.BatchNorm2d if cfg.fpn_v2 else None,
    )
