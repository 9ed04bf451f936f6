"""Training lowers the loss, resumes, and evaluation scores what it is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrt.model.build import build_model
from maskrt.model.checkpoint import load_checkpoint
from maskrt.model.coco import open_dataset
from maskrt.model.config import get_config
from maskrt.model.evaluate import evaluate
from maskrt.model.train import TrainOptions, to_training_pair, train


def _loss(model, data) -> float:
    pairs = [to_training_pair(data[i], flip=False) for i in range(len(data))]
    images, targets = zip(*pairs)
    model.train()
    torch.manual_seed(123)  # same RPN / RoI sampling for every model measured
    with torch.no_grad():
        return float(sum(model(list(images), list(targets)).values()))


def test_a_few_steps_lower_the_loss_and_resume_continues(tmp_path):
    opts = TrainOptions(
        config="shapes",
        data="shapes:4:11",
        out=tmp_path,
        steps=12,
        batch_size=2,
        lr=0.01,
        warmup_steps=0,
        workers=0,
        seed=0,
    )
    data = open_dataset(opts.data)
    torch.manual_seed(opts.seed)  # train() builds its model right after seeding the same way
    before = _loss(build_model(get_config("shapes")), data)

    final = train(opts)
    after = _loss(load_checkpoint(tmp_path / "last.pt").model, data)
    assert after < 0.8 * before
    assert load_checkpoint(final).meta["steps"] == 12

    resumed = train(TrainOptions(**{**opts.__dict__, "steps": 14, "resume": tmp_path / "last.pt"}))
    assert load_checkpoint(resumed).meta["steps"] == 14


@pytest.mark.parametrize("score", [1.0, 0.4])
def test_evaluation_of_the_ground_truth_scores_one(score):
    """The ground truth has AP 1 at any score; a user at the server's threshold (0.5) sees all
    of it at score 1 and none of it at 0.4, which ``recall_at_0.5`` says."""
    data = open_dataset("shapes:12:5")

    def ground_truth(images):
        out = []
        for image in images:
            index = next(
                i
                for i, iid in enumerate(data.image_ids)
                if np.array_equal(data.load_image(iid), image)
            )
            sample = data[index]
            rles = [mask_utils.encode(np.asfortranarray(m)) for m in sample.masks]
            out.append((sample.boxes, np.full(len(rles), score), sample.labels, rles))
        return out

    metrics = evaluate(data, ground_truth, data.classes, batch_size=5)
    assert metrics["images"] == 12
    for iou_type in ("segm", "bbox"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["recall_at_0.5"] == (1.0 if score >= 0.5 else 0.0)
