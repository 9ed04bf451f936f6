"""The model of the peers of ``maskrt bench peers`` (:mod:`maskrt.bench.peer_servers`,
:mod:`maskrt.bench.peer_litserve`): a checkpoint's torchvision ``MaskRCNN``, eager, as a user would
serve it with torchvision alone, answering in the ``POST /predict`` format."""

from __future__ import annotations

import io

import numpy as np
import torch


class EagerModel:
    """A checkpoint's torchvision ``MaskRCNN``, eager, answering in the ``/predict`` format."""

    def __init__(
        self, model: str | None, canvas: int | None, score_threshold: float, device: str = "cpu"
    ) -> None:
        from maskrt.model.checkpoint import default_checkpoint, load_checkpoint

        loaded = load_checkpoint(model or default_checkpoint())
        self.device = torch.device(device)
        self.model = loaded.model.eval().to(self.device)
        if canvas:
            self.model.transform.min_size = (canvas,)
            self.model.transform.max_size = canvas
        self.labels = loaded.config.classes
        self.score_threshold = score_threshold

    def decode(self, data: bytes) -> torch.Tensor:
        from PIL import Image, ImageOps
        from torchvision.transforms.functional import pil_to_tensor

        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        return pil_to_tensor(image).to(self.device).float() / 255.0

    @torch.inference_mode()
    def predict(self, images: list[torch.Tensor]) -> list[dict]:
        return [self.answer(image, out) for image, out in zip(images, self.model(images))]

    def answer(self, image: torch.Tensor, out: dict) -> dict:
        from pycocotools import mask as mask_utils

        height, width = image.shape[-2:]
        keep = out["scores"] >= self.score_threshold
        masks = (out["masks"][keep, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        return {
            "width": int(width),
            "height": int(height),
            "detections": [
                {
                    "box": box,
                    "score": score,
                    "class_id": label,
                    "label": self.labels[label],
                    "mask": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
                for box, score, label, rle in zip(
                    out["boxes"][keep].tolist(),
                    out["scores"][keep].tolist(),
                    out["labels"][keep].tolist(),
                    rles,
                )
            ],
        }
