"""Named model configs.

A config fixes everything needed to rebuild a torchvision ``MaskRCNN`` key-for-key and to run it
as a static-shape deploy graph: architecture, canvas side, mask size, class names and the
inference settings (thresholds, RPN top-k, detections per image).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrt.errors import MaskrtError

# the bundled shapes model (a path only: reading it needs torch, naming it must not)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "shapes.pt"

# torchvision's COCO category names (index = contiguous label of its 91-way predictor).
COCO_CLASSES: tuple[str, ...] = (
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

SHAPES_CLASSES: tuple[str, ...] = ("__background__", "square", "circle", "triangle")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and inference settings of one model.

    ``classes[0]`` is the background; a class id is an index into ``classes``.
    """

    name: str
    backbone: str  # torchvision ResNet name ("resnet18", "resnet50", ...) or "resnet10"
    classes: tuple[str, ...]
    canvas: int  # side of the square letterbox canvas (multiple of 32)
    fpn_v2: bool = False  # layout of maskrcnn_resnet50_fpn_v2 (BN heads, 2-conv RPN head)
    frozen_bn: bool = True  # FrozenBatchNorm2d trunk, as torchvision's pretrained builders
    trainable_layers: int = 3
    fpn_channels: int = 256
    box_representation: int = 1024
    mask_layers: tuple[int, ...] = (256, 256, 256, 256)
    mask_size: int = 28
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # inference (also what the static deploy graph uses)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    max_detections: int = 100
    rpn_pre_nms_top_n: int = 1000  # per FPN level
    rpn_post_nms_top_n: int = 1000
    rpn_nms_threshold: float = 0.7
    # training
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    box_batch_size_per_image: int = 512

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def with_canvas(self, canvas: int | None) -> ModelConfig:
        """This config at another canvas side (``--canvas``); None keeps its own."""
        if canvas is None:
            return self
        if canvas < 32 or canvas % 32:
            raise MaskrtError(f"--canvas {canvas}: must be a positive multiple of 32")
        return self.replace(canvas=canvas)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise MaskrtError(f"unknown model config fields: {', '.join(unknown)}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**values)


CONFIGS: dict[str, ModelConfig] = {
    "resnet50_fpn": ModelConfig(
        name="resnet50_fpn", backbone="resnet50", classes=COCO_CLASSES, canvas=1344
    ),
    "resnet50_fpn_v2": ModelConfig(
        name="resnet50_fpn_v2",
        backbone="resnet50",
        classes=COCO_CLASSES,
        canvas=1344,
        fpn_v2=True,
        frozen_bn=False,
    ),
    # torchvision's MaskRCNN(resnet_fpn_backbone("resnet18", ...)): a small layout to try things on
    "resnet18_fpn": ModelConfig(
        name="resnet18_fpn", backbone="resnet18", classes=COCO_CLASSES, canvas=800
    ),
    "shapes": ModelConfig(
        name="shapes",
        backbone="resnet10",
        classes=SHAPES_CLASSES,
        canvas=192,
        frozen_bn=False,
        trainable_layers=5,
        fpn_channels=64,
        box_representation=256,
        mask_layers=(64, 64),
        anchor_sizes=(16, 32, 64, 128, 256),
        score_threshold=0.05,
        max_detections=100,
        rpn_pre_nms_top_n=500,
        rpn_post_nms_top_n=300,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        box_batch_size_per_image=128,
    ),
}


# torchvision's published weight enums, by the config that reproduces their layout
TORCHVISION_WEIGHTS = {
    "MaskRCNN_ResNet50_FPN_Weights": "resnet50_fpn",
    "MaskRCNN_ResNet50_FPN_V2_Weights": "resnet50_fpn_v2",
}


def torchvision_weights_config(name: str) -> str | None:
    """The config of torchvision weights named like ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``;
    ``None`` for any other name, or for an existing file of that name."""
    config = TORCHVISION_WEIGHTS.get(name.split(".")[0])
    return None if config is None or Path(name).exists() else config


def default_classes(count: int) -> tuple[str, ...]:
    """Names for a predictor with ``count`` outputs (background included): torchvision's COCO
    names for its 91, else ``class_1`` .. ``class_<count - 1>``."""
    if count == len(COCO_CLASSES):
        return COCO_CLASSES
    return ("__background__", *(f"class_{i}" for i in range(1, count)))


def parse_labels(value: str) -> tuple[str, ...]:
    """``--labels``: a file with one name per line, or a comma-separated list. A value that names
    a file (a path separator or a ``.txt`` suffix, no comma) must be one: taking a mistyped path
    for a single class name would serve a model with wrong names."""
    path = Path(value)
    if "," not in value and not path.is_file() and _looks_like_path(value):
        raise MaskrtError(
            f"{value}: no such labels file (give a file with one name per line, or a comma list)"
        )
    if path.is_file():
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise MaskrtError(f"{path}: cannot read the labels file ({exc})") from None
        names = [line.strip() for line in lines if line.strip()]
    else:
        names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise MaskrtError(f"{value!r}: no names (give a comma list, or a file of one per line)")
    return tuple(names)


def check_label_count(labels: tuple[str, ...], num_classes: int, source: str) -> None:
    """``--labels`` must name each class of the model but the background."""
    if len(labels) != num_classes - 1:
        raise MaskrtError(
            f"--labels names {len(labels)} classes; {source} has {num_classes - 1} (besides the "
            f"background): give one name per class"
        )


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(".txt")


def get_config(name: str) -> ModelConfig:
    """The named config; the error lists the known names."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise MaskrtError(
            f"unknown model config {name!r}; known configs: {', '.join(sorted(CONFIGS))}"
        ) from None
