"""A user's own torchvision model through the CLI: the class count and the layout are read from the
weights, classes are named by --labels or by default, a pickled whole model is refused in one line
and converted on request, and fine-tuning (--init) on a COCO folder in the standard layout says
which weights it kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from maskrt.cli import main
from maskrt.model import shapes
from maskrt.model.build import build_model
from maskrt.model.config import COCO_CLASSES, get_config


def _convert(capsys, *args: str) -> dict:
    assert main(["convert", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _fails(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err  # one line, no terminal colour codes
    return err


def _shapes_layout(num_classes: int) -> dict:
    return build_model(get_config("shapes").replace(classes=("bg",) * num_classes)).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("builder", "config"),
    [
        (torchvision.models.detection.maskrcnn_resnet50_fpn, "resnet50_fpn"),
        (torchvision.models.detection.maskrcnn_resnet50_fpn_v2, "resnet50_fpn_v2"),
    ],
)
def test_torchvision_state_dicts_need_no_config(capsys, tmp_path, builder, config):
    for num_classes, names in [(91, list(COCO_CLASSES[1:])), (3, ["class_1", "class_2"])]:
        path = tmp_path / f"r50-{num_classes}.pth"
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes)
        torch.save(model.state_dict(), path)
        out = _convert(capsys, "--model", str(path), "--out", str(tmp_path / "c.pt"))
        assert (out["config"], out["classes"]) == (config, names)


def test_labels_name_the_classes_the_weights_have(capsys, tmp_path):
    path = tmp_path / "five.pth"
    torch.save(_shapes_layout(6), path)
    out = _convert(capsys, "--model", str(path), "--out", str(tmp_path / "c.pt"))
    assert out["classes"] == [f"class_{i}" for i in range(1, 6)]
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\nbee\n\ncat\ndog\neel\n")
    for given in ("ant,bee,cat,dog,eel", str(labels)):
        out = _convert(
            capsys, "--model", str(path), "--labels", given, "--out", str(tmp_path / "c.pt")
        )
        assert out["classes"] == ["ant", "bee", "cat", "dog", "eel"]
    err = _fails(capsys, "convert", "--model", str(path), "--labels", "a,b", "--out", "x.pt")
    assert "--labels names 2 classes; " in err and "five.pth has 5 (besides the background)" in err


def test_pickled_whole_model_is_refused_then_converted(capsys, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(build_model(get_config("shapes")), whole)
    err = _fails(capsys, "evaluate", "--model", str(whole), "--data", "shapes:1:0")
    assert "a pickled Python object" in err and "unpickling runs code from the file" in err
    assert "maskrt convert --model" in err and "--trust-pickle" in err
    converted = tmp_path / "converted.pt"
    out = _convert(capsys, "--model", str(whole), "--out", str(converted), "--trust-pickle")
    assert out["config"] == "shapes"
    assert main(["evaluate", "--model", str(converted), "--data", "shapes:1:0"]) == 0
    capsys.readouterr()


def _coco_folder(root: Path, split: str, count: int, seed: int) -> None:
    """A COCO folder in the standard layout (shapes drawn as JPEG files)."""
    coco, pixels = shapes.coco_dataset(count, seed)
    (root / split).mkdir(parents=True)
    for info, image in zip(coco["images"], pixels):
        info["file_name"] = info["file_name"].replace(".png", ".jpg")
        Image.fromarray(image).save(root / split / info["file_name"], quality=95)
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


@pytest.mark.slow
def test_fine_tuning_on_a_coco_folder(capsys, tmp_path):
    coco = tmp_path / "my_coco"
    _coco_folder(coco, "train2017", 4, 0)
    _coco_folder(coco, "val2017", 2, 1)
    r18 = torchvision.models.detection.MaskRCNN(
        torchvision.models.detection.backbone_utils.resnet_fpn_backbone(
            backbone_name="resnet18", weights=None
        ),
        num_classes=91,
    )
    torch.save(r18.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "runs"
    train = ["train", "--init", str(tmp_path / "r18.pth"), "--data", str(coco), "--out", str(out)]
    small = ["--canvas", "128", "--steps", "2", "--batch-size", "2", "--workers", "0"]
    assert main([*train, *small]) == 0
    err = capsys.readouterr().err
    assert "weights loaded; initialised afresh (no fitting weights): " in err
    assert "roi_heads.box_predictor.cls_score, roi_heads.mask_predictor.mask_fcn_logits" in err
    assert "train: 2/2 steps (100 %)" in err  # progress as lines where stderr is not a terminal

    assert main(["evaluate", "--model", str(out / "model.pt"), "--data", str(coco)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 2 and "AP" in result["segm"]  # the val2017 split
    assert main(["convert", "--model", str(out / "model.pt"), "--out", str(tmp_path / "c.pt")]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert (kept["config"], kept["classes"]) == ("resnet18_fpn", ["square", "circle", "triangle"])
