"""The static-shape deploy graph (docs/architecture.md, "The deploy graph"): what every backend runs.

:class:`DeployGraph` wraps a loaded torchvision ``MaskRCNN`` (sharing its modules and weights, no
copies) and maps uint8 letterboxed images ``[B, 3, S, S]`` to

    num_detections int32 [B], boxes float32 [B, K, 4], scores float32 [B, K],
    classes int32 [B, K], masks float32 [B, K, M, M]

with every shape fixed except the batch. It reproduces torchvision's inference
(``GeneralizedRCNN.forward`` in eval mode, minus the full-image mask pasting) step by step:

- normalisation inside the graph;
- RPN: per-level top ``rpn_pre_nms_top_n`` by objectness, decode (weights 1, 1, 1, 1), clip,
  remove boxes under 1e-3, score threshold (``>=`` 0), NMS per level, top ``rpn_post_nms_top_n``
  over all levels (a fixed count; missing proposals are padded and marked invalid);
- box head on those proposals through the multi-level RoIAlign op (``model/roi_align.py``);
- decode (weights 10, 10, 5, 5, torchvision's clamp), clip, one box per class, drop the background,
  score ``>`` ``score_threshold``, remove boxes under 1e-2, class-wise NMS, top ``K`` by score;
- mask head on the ``K`` kept boxes only; the mask of the detected class through a sigmoid.

Rows past ``num_detections`` are zeros. NMS is :func:`grouped_nms`, a registered op with a fixed-size
output (a keep mask): NMS on each group (image x level, image x class) in its own coordinates, as
torchvision's ``batched_nms``; it exports to ONNX ``NonMaxSuppression`` with one "batch" per group.
There is no Python loop over boxes or images and no data-dependent shape, so the graph exports to
ONNX (``maskrt.export.onnx``) as it is.

Where torchvision's own counts are not exceeded (fewer than ``K`` detections survive, fewer than
``rpn_post_nms_top_n`` proposals) the detections are torchvision's; otherwise they are the same top
ones torchvision keeps. Remaining differences are ties in score (either order is right) and IoUs
within float rounding of a threshold.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

import maskrt.model.roi_align  # noqa: F401  (registers torch.ops.maskrt.multilevel_roi_align)
from maskrt.model.config import ModelConfig
from maskrt.model.roi_align import pooler_params

RPN_MIN_SIZE = 1e-3  # torchvision RegionProposalNetwork.min_size
BOX_MIN_SIZE = 1e-2  # torchvision RoIHeads.postprocess_detections' remove_small_boxes
INVALID = -1.0  # score of a masked-out candidate; every real score is >= 0
NMS_CANDIDATE = -0.5  # grouped_nms(score_threshold=...): candidates are the scores above it


class DeployOutputs(NamedTuple):
    """The deploy graph's outputs (every backend returns them), padded to ``K`` rows past
    ``num_detections``."""

    num_detections: Tensor  # int32 [B]
    boxes: Tensor  # float32 [B, K, 4], x1 y1 x2 y2 in canvas pixels
    scores: Tensor  # float32 [B, K], descending
    classes: Tensor  # int32 [B, K], 1-based
    masks: Tensor  # float32 or float16 [B, K, M, M], probabilities


OUTPUT_NAMES: tuple[str, ...] = DeployOutputs._fields  # the ONNX and engine output names


# ---------------------------------------------------------------------------------------------
# NMS with a fixed-size output


def grouped_nms_composite(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_group: int
) -> Tensor:
    """NMS inside each of G groups: ``boxes`` [G, N, 4] (x1 y1 x2 y2), ``scores`` [G, N] ->
    bool [G, N], True for the boxes kept. Candidates are the boxes scoring above
    ``score_threshold``; a box is suppressed by a kept higher-scoring box of its group with IoU
    above ``iou_threshold`` (torchvision's ``nms``); at most ``max_per_group`` boxes per group are
    kept, the highest-scoring ones (greedy order, as ONNX ``NonMaxSuppression``).

    The registered op's implementation on every device (``torch.ops.maskrt.grouped_nms``); its
    candidate count sizes the work, so it waits for the device (a CUDA graph cannot capture it;
    the torch backend's ``cuda_roi_align`` setting puts a kernel without that wait in its place)."""
    groups, n = scores.shape
    flat_scores = scores.reshape(-1)
    keep = torch.zeros(groups * n, dtype=torch.bool, device=scores.device)
    candidates = torch.nonzero(flat_scores > score_threshold).squeeze(1)
    if candidates.numel() > 0:
        group = torch.div(candidates, n, rounding_mode="floor")
        b = boxes.reshape(-1, 4).index_select(0, candidates)
        s = flat_scores.index_select(0, candidates)
        if candidates.numel() <= (20000 if b.is_cuda else 4000):
            # one torchvision nms call for all groups: groups moved apart (torchvision's
            # batched_nms trick) in float64, where the shift is exact and boxes keep their sizes
            b = b.double()
            lo = b.min()
            b = b - lo + (group.double() * (b.max() - lo + 1.0))[:, None]
            kept = torchvision.ops.nms(b, s.double(), iou_threshold)
        else:
            # many candidates: one nms per non-empty group, as torchvision's _batched_nms_vanilla
            # (a single call would compare every pair of candidates across groups), each on its
            # run of the candidates sorted by group; the run lengths are read back once, where a
            # search per group made the GPU wait twice per group
            order = torch.argsort(group, stable=True)
            b, s = b.index_select(0, order), s.index_select(0, order)
            runs, start = [], 0
            for size in torch.bincount(group).tolist():
                if size:
                    end = start + size
                    runs.append(
                        torchvision.ops.nms(b[start:end], s[start:end], iou_threshold) + start
                    )
                    start = end
            kept = order.index_select(0, torch.cat(runs))
        keep[candidates.index_select(0, kept)] = True
    return limit_per_group(keep.reshape(groups, n), scores, max_per_group)


def limit_per_group(keep: Tensor, scores: Tensor, max_per_group: int) -> Tensor:
    """``keep`` [G, N] reduced to the ``max_per_group`` best-scoring kept boxes of each group."""
    if max_per_group >= keep.shape[1]:
        return keep
    masked = torch.where(keep, scores, torch.full_like(scores, -math.inf))
    values, index = masked.topk(max_per_group, dim=1)
    return torch.zeros_like(keep).scatter_(1, index, values > -math.inf)


grouped_nms = torch.library.custom_op("maskrt::grouped_nms", grouped_nms_composite, mutates_args=())


@grouped_nms.register_fake
def _grouped_nms_fake(boxes, scores, iou_threshold, score_threshold, max_per_group):
    torch._check(boxes.dim() == 3 and boxes.shape[-1] == 4, lambda: "boxes must be [G, N, 4]")
    torch._check(scores.dim() == 2, lambda: "scores must be [G, N]")
    return torch.empty_like(scores, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# torchvision's box arithmetic, elementwise on [..., 4] tensors (the same float32 operations)


def decode_boxes(
    codes: Tensor, reference: Tensor, weights: tuple[float, ...], clip: float
) -> Tensor:
    """torchvision ``BoxCoder.decode_single``: ``codes`` [..., 4] relative to ``reference`` [..., 4]."""
    widths = reference[..., 2] - reference[..., 0]
    heights = reference[..., 3] - reference[..., 1]
    ctr_x = reference[..., 0] + 0.5 * widths
    ctr_y = reference[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = codes[..., 0] / wx
    dy = codes[..., 1] / wy
    dw = torch.clamp(codes[..., 2] / ww, max=clip)
    dh = torch.clamp(codes[..., 3] / wh, max=clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    half_w = 0.5 * pred_w
    half_h = 0.5 * pred_h
    return torch.stack(
        (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), -1
    )


def clip_boxes(boxes: Tensor, size: int) -> Tensor:
    """torchvision ``clip_boxes_to_image`` for a square ``size`` x ``size`` image."""
    return boxes.clamp(min=0.0, max=float(size))


def big_enough(boxes: Tensor, min_size: float) -> Tensor:
    """torchvision ``remove_small_boxes`` as a mask."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= min_size
    )


def _gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """``values`` [B, N, D], ``index`` [B, k] -> [B, k, D]."""
    return torch.gather(values, 1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


# ---------------------------------------------------------------------------------------------


def feature_sizes(canvas: int, num_maps: int) -> list[int]:
    """Sides of the backbone's maps for a ResNet-FPN (P2, P3, ... then LastLevelMaxPool's P6): each
    stride-2 stage gives ceil(side / 2)."""
    side, sizes = canvas, []
    for level in range(1, 2 + num_maps):
        side = -(-side // 2)
        if level >= 2:
            sizes.append(side)
    return sizes


class DeployGraph(nn.Module):
    """uint8 ``[B, 3, S, S]`` -> :class:`DeployOutputs` with ``K`` rows per image (module
    docstring)."""

    mean: Tensor  # buffers [1, 3, 1, 1]
    std: Tensor

    def __init__(
        self,
        model: MaskRCNN,
        config: ModelConfig,
        *,
        canvas: int | None = None,
        max_detections: int | None = None,
        masks_on_detections: bool = False,
        upsample_as_conv: bool = False,
    ):
        super().__init__()
        heads, rpn = model.roi_heads, model.rpn
        if not heads.has_mask():
            raise ValueError("the deploy graph needs a Mask R-CNN (the model has no mask head)")
        self.model = model  # shared, not copied: the graph's parameters are the model's
        self.canvas = int(canvas or config.canvas)
        if self.canvas % 32:
            raise ValueError(f"the canvas side must be a multiple of 32, got {self.canvas}")
        self.score_threshold = float(config.score_threshold)
        self.nms_threshold = float(config.nms_threshold)
        self.max_detections = int(max_detections or config.max_detections)
        # the mask head on the first max(num_detections) rows only (a data-dependent shape inside
        # the graph, fine for ONNX Runtime, not for TensorRT); the outputs stay padded to K
        self.masks_on_detections = bool(masks_on_detections)
        # the mask predictor's 2x2 stride-2 ConvTranspose as a 1x1 Conv with 4x the channels, the
        # 2x2 rearrangement done on the one-channel logits: ONNX Runtime's CPU ConvTranspose is
        # slow and its int8 quantization runs it in float (the onnxruntime target only; the
        # tensorrt target keeps the ConvTranspose)
        self.upsample_as_conv = bool(upsample_as_conv) and _is_2x2_upsampling(
            getattr(heads.mask_predictor, "conv5_mask", None)
        )
        self.pre_nms_top_n = int(config.rpn_pre_nms_top_n)
        self.post_nms_top_n = int(config.rpn_post_nms_top_n)
        self.rpn_nms_threshold = float(config.rpn_nms_threshold)
        mean, std = config.image_mean, config.image_std
        self.rpn_score_threshold = float(rpn.score_thresh)
        self.rpn_weights = tuple(float(w) for w in rpn.box_coder.weights)
        self.rpn_clip = float(rpn.box_coder.bbox_xform_clip)
        self.box_weights = tuple(float(w) for w in heads.box_coder.weights)
        self.box_clip = float(heads.box_coder.bbox_xform_clip)
        self.box_pool = pooler_params(heads.box_roi_pool)
        self.mask_pool = pooler_params(heads.mask_roi_pool)
        self.roi_maps = list(heads.box_roi_pool.featmap_names)
        if list(heads.mask_roi_pool.featmap_names) != self.roi_maps:
            raise ValueError("box and mask poolers must read the same feature maps")
        self.num_classes = int(heads.box_predictor.cls_score.out_features)
        self.mask_size = 2 * self.mask_pool["output_size"]  # MaskRCNNPredictor's 2x upsampling
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

        # anchors depend only on the canvas: computed once, with torchvision's own generator
        generator = rpn.anchor_generator
        num_maps = len(generator.sizes)
        sizes = feature_sizes(self.canvas, num_maps)
        image = ImageList(torch.empty(1, 3, self.canvas, self.canvas), [(self.canvas, self.canvas)])
        anchors = generator(image, [torch.empty(1, 1, s, s) for s in sizes])[0]
        counts = [s * s * a for s, a in zip(sizes, generator.num_anchors_per_location())]
        self.num_anchor_maps = num_maps
        for index, level_anchors in enumerate(anchors.split(counts)):
            self.register_buffer(
                f"anchors_{index}", level_anchors.float().contiguous(), persistent=False
            )
        self.level_top_n = [min(self.pre_nms_top_n, c) for c in counts]
        self.num_proposals = min(self.post_nms_top_n, sum(self.level_top_n))

    @property
    def nms_boxes(self) -> dict[str, int]:
        """Boxes per NMS call (one image and FPN level in the RPN, one image and class after the
        box head), by the config field that sets them; each is also the ``topk`` that picks them.
        What TensorRT's limits are checked against (``maskrt.export.tensorrt_onnx``)."""
        return {
            "rpn_pre_nms_top_n": max(self.level_top_n),
            "rpn_post_nms_top_n": self.num_proposals,
        }

    # -----------------------------------------------------------------------------------------

    def forward(self, images: Tensor) -> DeployOutputs:
        batch = images.shape[0]
        x = (images.to(torch.float32) / 255.0 - self.mean) / self.std
        # a float16 model (``export onnx --fp16``) takes float16; box arithmetic stays float32
        features = self.model.backbone(x.to(next(self.model.backbone.parameters()).dtype))
        maps = list(features.values())
        if len(maps) != self.num_anchor_maps:
            raise ValueError(
                f"backbone gives {len(maps)} maps, the anchor generator {self.num_anchor_maps}"
            )
        roi_maps = [features[name] for name in self.roi_maps]
        proposals, proposal_ok = self._proposals(batch, maps)
        boxes, scores, labels, ok = self._detect(batch, roi_maps, proposals, proposal_ok)
        masks = self._masks(batch, roi_maps, boxes, labels, ok)
        return DeployOutputs(
            num_detections=ok.sum(1, dtype=torch.int32),
            boxes=boxes,
            scores=scores,
            classes=labels.to(torch.int32),
            masks=masks,
        )

    def _proposals(self, batch: int, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """RPN -> proposals [B, P, 4] (zeros where invalid) and their validity [B, P]."""
        objectness, deltas = self.model.rpn.head(maps)
        per_level_boxes, per_level_scores = [], []
        width = max(self.level_top_n)
        for index, (obj, delta) in enumerate(zip(objectness, deltas)):
            anchors = getattr(self, f"anchors_{index}")
            a, h, w = obj.shape[1], obj.shape[2], obj.shape[3]
            # torchvision's permute_and_flatten: [B, A*C, H, W] -> [B, H*W*A, C]
            obj = obj.float().permute(0, 2, 3, 1).reshape(batch, h * w * a)
            delta = (
                delta.float()
                .view(batch, a, 4, h, w)
                .permute(0, 3, 4, 1, 2)
                .reshape(batch, h * w * a, 4)
            )
            top, index_ = obj.topk(self.level_top_n[index], dim=1)
            boxes = decode_boxes(
                _gather_rows(delta, index_), anchors[index_], self.rpn_weights, self.rpn_clip
            )
            boxes = clip_boxes(boxes, self.canvas)
            prob = torch.sigmoid(top)
            ok = big_enough(boxes, RPN_MIN_SIZE) & (prob >= self.rpn_score_threshold)
            score = torch.where(ok, prob, torch.full_like(prob, INVALID))
            pad = width - self.level_top_n[index]
            if pad:
                boxes = nn.functional.pad(boxes, (0, 0, 0, pad))
                score = nn.functional.pad(score, (0, pad), value=INVALID)
            per_level_boxes.append(boxes)
            per_level_scores.append(score)
        levels = len(per_level_boxes)
        boxes = torch.stack(per_level_boxes, 1)  # [B, L, W, 4]
        scores = torch.stack(per_level_scores, 1)  # [B, L, W]
        keep = grouped_nms(
            boxes.reshape(batch * levels, width, 4),
            scores.reshape(batch * levels, width),
            self.rpn_nms_threshold,
            NMS_CANDIDATE,
            self.num_proposals,
        )
        scores = torch.where(
            keep.reshape(batch, levels, width), scores, torch.full_like(scores, INVALID)
        )
        top, order = scores.reshape(batch, levels * width).topk(self.num_proposals, dim=1)
        ok = top > NMS_CANDIDATE
        proposals = _gather_rows(boxes.reshape(batch, levels * width, 4), order)
        return torch.where(ok.unsqueeze(-1), proposals, torch.zeros_like(proposals)), ok

    def _detect(self, batch: int, roi_maps: list[Tensor], proposals: Tensor, proposal_ok: Tensor):
        """Box head + torchvision's postprocess_detections -> K boxes, scores, labels, validity."""
        heads = self.model.roi_heads
        n = proposals.shape[1]
        pooled = torch.ops.maskrt.multilevel_roi_align(proposals, roi_maps, **self.box_pool)
        features = heads.box_head(pooled.flatten(0, 1))
        class_logits, regression = heads.box_predictor(features)
        classes = self.num_classes
        codes = regression.float().reshape(batch, n, classes, 4)
        boxes = decode_boxes(codes, proposals.unsqueeze(2), self.box_weights, self.box_clip)
        boxes = clip_boxes(boxes, self.canvas)[:, :, 1:]  # [B, P, C-1, 4], background dropped
        scores = torch.softmax(class_logits.float(), -1).reshape(batch, n, classes)[:, :, 1:]
        ok = (
            (scores > self.score_threshold)
            & big_enough(boxes, BOX_MIN_SIZE)
            & proposal_ok.unsqueeze(-1)
        )
        scores = torch.where(ok, scores, torch.full_like(scores, INVALID))
        # one NMS group per (image, class), boxes in their own coordinates
        boxes = boxes.permute(0, 2, 1, 3)  # [B, C-1, P, 4]
        scores = scores.permute(0, 2, 1)  # [B, C-1, P]
        k = min(self.max_detections, (classes - 1) * n)
        keep = grouped_nms(
            boxes.reshape(batch * (classes - 1), n, 4),
            scores.reshape(batch * (classes - 1), n),
            self.nms_threshold,
            NMS_CANDIDATE,
            k,
        )
        scores = torch.where(
            keep.reshape(batch, classes - 1, n), scores, torch.full_like(scores, INVALID)
        )
        top, index = scores.reshape(batch, (classes - 1) * n).topk(k, dim=1)
        ok = top > NMS_CANDIDATE
        boxes = _gather_rows(boxes.reshape(batch, (classes - 1) * n, 4), index)
        labels = torch.div(index, n, rounding_mode="floor") + 1
        boxes = torch.where(ok.unsqueeze(-1), boxes, torch.zeros_like(boxes))
        top = torch.where(ok, top, torch.zeros_like(top))
        labels = torch.where(ok, labels, torch.zeros_like(labels))
        pad = self.max_detections - k
        if pad:  # fewer (class, proposal) pairs than K: pad to the fixed K
            boxes = nn.functional.pad(boxes, (0, 0, 0, pad))
            top = nn.functional.pad(top, (0, pad))
            labels = nn.functional.pad(labels, (0, pad))
            ok = nn.functional.pad(ok, (0, pad))
        return boxes, top, labels, ok

    def _masks(
        self, batch: int, roi_maps: list[Tensor], boxes: Tensor, labels: Tensor, ok: Tensor
    ) -> Tensor:
        """Mask head on the K kept boxes: sigmoid of the detected class's logits, [B, K, M, M].

        With ``masks_on_detections`` only the first ``n = max(num_detections, 1)`` rows of each
        image go through the head (valid rows come first, scores descending) and the masks are
        zero-padded back to ``K``: the same values with a fraction of the work when few objects
        are found."""
        k = boxes.shape[1]
        if self.masks_on_detections:
            n = cast(int, ok.sum(1).max().clamp(min=1).item())  # data-dependent: unbacked
            torch._check(n >= 1)
            torch._check(n <= k)
            masks = self._mask_head(batch, roi_maps, boxes[:, :n], labels[:, :n])
            pad = masks.new_zeros(batch, k - n, self.mask_size, self.mask_size)
            masks = torch.cat((masks, pad), 1)
        else:
            masks = self._mask_head(batch, roi_maps, boxes, labels)
        return torch.where(ok.reshape(batch, k, 1, 1), masks, torch.zeros_like(masks))

    def _mask_head(
        self, batch: int, roi_maps: list[Tensor], boxes: Tensor, labels: Tensor
    ) -> Tensor:
        heads = self.model.roi_heads
        k = boxes.shape[1]
        pooled = torch.ops.maskrt.multilevel_roi_align(boxes, roi_maps, **self.mask_pool)
        x = heads.mask_head(pooled.flatten(0, 1))
        predictor = heads.mask_predictor
        flat_labels = labels.reshape(-1)
        if isinstance(predictor, MaskRCNNPredictor):
            # only the detected class's 1x1 logits conv: C times less work than all classes
            conv = predictor.mask_fcn_logits
            weight = conv.weight.reshape(conv.out_channels, conv.in_channels)[
                flat_labels
            ]  # [BK, Cin]
            if self.upsample_as_conv:
                # [BK, C * 4, h, w]: channel c * 4 + 2 * a + b is pixel (2i + a, 2j + b) of c
                x = predictor.relu(_upsampling_conv(predictor.conv5_mask, x))
                h, w = x.shape[-2:]
                logits = torch.bmm(weight.unsqueeze(1), x.reshape(x.shape[0], -1, 4 * h * w))
                logits = logits.reshape(-1, 2, 2, h, w).permute(0, 3, 1, 4, 2)
            else:
                x = predictor.relu(predictor.conv5_mask(x))
                logits = torch.bmm(weight.unsqueeze(1), x.flatten(2))
            m = self.mask_size
            logits = logits.reshape(batch, k, m, m) + conv.bias[flat_labels].reshape(batch, k, 1, 1)
        else:
            all_logits = predictor(x)
            m = all_logits.shape[-1]
            logits = torch.gather(
                all_logits, 1, flat_labels.reshape(-1, 1, 1, 1).expand(-1, 1, m, m)
            )
            logits = logits.reshape(batch, k, m, m)
        return torch.sigmoid(logits.float())


def _is_2x2_upsampling(module: nn.Module | None) -> bool:
    """A ConvTranspose2d that writes each input pixel to its own 2x2 block (torchvision's
    ``conv5_mask``): kernel = stride = 2, no padding, dilation or groups."""
    return (
        isinstance(module, nn.ConvTranspose2d)
        and tuple(module.kernel_size) == tuple(module.stride) == (2, 2)
        and tuple(module.padding) == tuple(module.output_padding) == (0, 0)
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
    )


def _upsampling_conv(deconv: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """``deconv(x)`` before its 2x2 rearrangement: a 1x1 convolution to ``Cout * 4`` channels,
    output channel ``o * 4 + 2 * a + b`` holding output pixel ``(2i + a, 2j + b)`` of channel
    ``o`` (the same products and sums as the ConvTranspose)."""
    cin, cout = deconv.weight.shape[:2]
    weight = deconv.weight.permute(1, 2, 3, 0).reshape(cout * 4, cin, 1, 1)
    bias = None if deconv.bias is None else deconv.bias.repeat_interleave(4)
    return nn.functional.conv2d(x, weight, bias)


def deploy_graph(loaded, *, max_detections: int | None = None) -> DeployGraph:
    """The deploy graph of a ``LoadedModel`` (``.model``, ``.config``), in eval mode."""
    return DeployGraph(loaded.model.eval(), loaded.config, max_detections=max_detections).eval()
