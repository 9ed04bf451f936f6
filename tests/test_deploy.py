"""The static-shape deploy graph gives torchvision's eager Mask R-CNN detections on the same weights
and input (the 28x28 masks torchvision computes before pasting), for every config."""

from __future__ import annotations

import pytest
import torch
from deploy_helpers import assert_outputs_match, eager, images, make_model, match

from maskrt.model.deploy import DeployGraph, grouped_nms


def assert_same_as_eager(graph, model, imgs, exact_order: bool = False):
    with torch.inference_mode():
        out = graph(imgs)
    refs = eager(model, imgs)
    k = graph.max_detections
    assert out.boxes.shape == (len(imgs), k, 4) and out.masks.shape[:2] == (len(imgs), k)
    assert out.num_detections.dtype == torch.int32 and out.classes.dtype == torch.int32
    total = 0
    for b, ref in enumerate(refs):
        pairs = match(out, b, ref)
        total += len(pairs)
        for i, j in pairs:
            assert abs(float(out.scores[b, i]) - float(ref["scores"][j])) <= 1e-5
            assert (out.boxes[b, i] - ref["boxes"][j]).abs().max() <= 1e-3
            assert (out.masks[b, i] - ref["masks"][j, 0]).abs().max() <= 1e-4
        if exact_order:
            assert [i for i, _ in pairs] == [j for _, j in pairs]
        n = int(out.num_detections[b])
        assert torch.all(out.scores[b, :n][:-1] >= out.scores[b, :n][1:])  # descending
        assert torch.all(out.classes[b, :n] >= 1)
        for t in (out.boxes, out.scores, out.classes, out.masks):  # padding is zeros
            assert not t[b, n:].any()
    return out, total


def test_shapes_equals_eager():
    model, cfg = make_model("shapes")
    graph = DeployGraph(model, cfg).eval()
    _, total = assert_same_as_eager(graph, model, images(2, cfg.canvas), exact_order=True)
    assert total == 2 * cfg.max_detections  # forced detections: K per image


def test_shapes_fewer_candidates_than_k_pads():
    # 40 proposals x 3 classes = 120 candidates per image before NMS, K = 150 > 120
    model, cfg = make_model("shapes", rpn_post_nms_top_n=40, max_detections=150)
    graph = DeployGraph(model, cfg).eval()
    out, _ = assert_same_as_eager(graph, model, images(2, cfg.canvas, seed=3))
    assert out.boxes.shape[1] == 150 and int(out.num_detections.max()) < 120


def test_threshold_leaves_padded_rows():
    model, cfg = make_model("shapes")
    imgs = images(2, cfg.canvas, seed=1)
    with torch.inference_mode():
        threshold = float(DeployGraph(model, cfg).eval()(imgs).scores[0, 30])
    cfg = cfg.replace(score_threshold=threshold)
    model.roi_heads.score_thresh = threshold
    graph = DeployGraph(model, cfg).eval()
    out, _ = assert_same_as_eager(graph, model, imgs)
    assert (
        int(out.num_detections[0]) <= 30 and 0 < int(out.num_detections.max()) < cfg.max_detections
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50_fpn", "resnet50_fpn_v2"])
def test_resnet50_equals_eager(name):
    model, cfg = make_model(
        name, canvas=256, max_detections=30, rpn_pre_nms_top_n=300, rpn_post_nms_top_n=200
    )
    graph = DeployGraph(model, cfg).eval()
    _, total = assert_same_as_eager(graph, model, images(1, 256))
    assert total == 30


def test_batch_images_are_independent():
    model, cfg = make_model("shapes")
    graph = DeployGraph(model, cfg).eval()
    imgs = images(3, cfg.canvas, seed=5)
    with torch.inference_mode():
        together = graph(imgs)
        alone = graph(imgs[1:2])
    for a, b in zip(together, alone):
        torch.testing.assert_close(
            a[1:2], b, rtol=1e-5, atol=1e-4
        )  # batched convs round differently


def test_graph_shares_the_model_weights():
    model, cfg = make_model("shapes")
    graph = DeployGraph(model, cfg)
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in graph.parameters()} == model_ptrs
    assert graph.canvas == cfg.canvas and graph.mask_size == cfg.mask_size
    with pytest.raises(ValueError, match="multiple of 32"):
        DeployGraph(model, cfg, canvas=200)


@pytest.mark.parametrize(
    "device, groups, n",
    [
        ("cpu", 6, 300),  # one nms call
        ("cpu", 6, 1000),  # one per group (> 4000 candidates)
        pytest.param("cuda", 6, 1000, marks=pytest.mark.gpu),
        pytest.param("cuda", 30, 1000, marks=pytest.mark.gpu),  # one per group (> 20000)
    ],
)
def test_grouped_nms_equals_torchvision_per_group(device, groups, n):
    import torchvision

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(groups, n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(groups, n, 2, generator=g) * 60], -1)
    scores = torch.rand(groups, n, generator=g)
    scores[:, ::7] = -1.0  # not candidates
    scores[2] = -1.0  # a group without any
    boxes, scores = boxes.to(device), scores.to(device)
    keep = grouped_nms(boxes, scores, 0.5, -0.5, n)
    for i in range(groups):
        cand = torch.where(scores[i] > -0.5)[0]
        expected = torch.zeros(n, dtype=torch.bool, device=device)
        expected[cand[torchvision.ops.nms(boxes[i, cand], scores[i, cand], 0.5)]] = True
        assert torch.equal(keep[i], expected)
    # at most max_per_group, the highest-scoring kept ones
    capped = grouped_nms(boxes, scores, 0.5, -0.5, 10)
    assert torch.all(capped.sum(1) == torch.clamp(keep.sum(1), max=10))
    for i in range(groups):
        kept = torch.where(keep[i], scores[i], torch.tensor(-9.0, device=device))
        top = kept.topk(min(10, int(keep[i].sum()))).indices
        assert set(torch.where(capped[i])[0].tolist()) == set(top.tolist())


@pytest.mark.gpu
def test_cuda_equals_cpu(exact_float32):
    model, cfg = make_model("shapes")
    graph = DeployGraph(model, cfg).eval()
    imgs = images(2, cfg.canvas)
    with torch.inference_mode():
        cpu = graph(imgs)
        gpu = graph.cuda()(imgs.cuda())
    # paired by class and box, not by row: rows of near-equal scores may swap places
    assert assert_outputs_match(gpu, cpu) == int(cpu.num_detections.sum()) > 0
