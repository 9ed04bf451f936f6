"""A detector with random weights that still finds ``K`` objects in every image.

With random weights the features of a ResNet-50 are large, so the class scores saturate and tie;
scaling the box predictor's weights by the feature norm spreads them, and with a score threshold
of 0 every image gives ``max_detections`` detections with masks: the same work on every side of a
comparison, whatever the image.

The checkpoint ``maskrt bench peers --model r50`` makes, written to a file (for ``maskrt export
onnx --model`` and ``maskrt bench onnx-compare``):

    python -m maskrt.bench.random_model --canvas 640 --out r50.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.models.detection import MaskRCNN

from maskrt.model.build import build_model
from maskrt.model.config import ModelConfig, get_config


def random_detector(
    config: str, canvas: int, *, seed: int = 0, max_detections: int = 100
) -> tuple[MaskRCNN, ModelConfig]:
    """``config``'s layout at ``canvas``, score threshold 0, random weights from ``seed``."""
    torch.manual_seed(seed)
    cfg = get_config(config).replace(
        canvas=canvas, score_threshold=0.0, max_detections=max_detections
    )
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, canvas, canvas), dtype=torch.uint8, generator=g)
    with torch.inference_mode():
        seen = []
        predictor = model.roi_heads.box_predictor
        hook = predictor.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        model([image.float() / 255.0])
        hook.remove()
        norm = float(seen[0].norm(dim=1).mean())
        predictor.cls_score.weight.normal_(0, 2.0 / norm, generator=g)
        predictor.bbox_pred.weight.normal_(0, 1.0 / norm, generator=g)
    return model, cfg


def save_random_checkpoint(path: Path, config: str, canvas: int, *, seed: int = 0) -> Path:
    """:func:`random_detector`'s model written as a maskrt checkpoint at ``path``."""
    from maskrt.model.checkpoint import save_checkpoint

    model, cfg = random_detector(config, canvas, seed=seed)
    return save_checkpoint(path, model, cfg, {"source": f"bench: random weights, seed {seed}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="resnet50_fpn", help="the layout")
    parser.add_argument("--canvas", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    args = parser.parse_args(argv)
    save_random_checkpoint(args.out, args.config, args.canvas, seed=args.seed)
    print(
        f"wrote {args.out}: {args.config}, random weights (seed {args.seed}), canvas {args.canvas}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
