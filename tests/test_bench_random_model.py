"""``python -m maskrt.bench.random_model``: the random-weight detector of ``maskrt bench peers
--model r50`` as a checkpoint file, with a trained detector's workload on a photo (realistic) or
``K`` objects in any image (worst)."""

from __future__ import annotations

import torch

from maskrt.bench.random_model import main, random_detector, workload_counts
from maskrt.model.checkpoint import load_checkpoint
from maskrt.model.photos import photo


def test_worst_case_checkpoint_finds_k_objects(tmp_path, capsys):
    out = tmp_path / "r18.pt"
    argv = ["--config", "resnet18_fpn", "--canvas", "128", "--workload", "worst", "--out", str(out)]
    assert main(argv) == 0
    assert "worst workload" in capsys.readouterr().out
    loaded = load_checkpoint(out)
    assert loaded.config.canvas == 128 and loaded.config.score_threshold == 0.0
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8).float() / 255
    with torch.inference_mode():
        found = loaded.model.eval()([image])[0]
    assert len(found["scores"]) == loaded.config.max_detections


def test_realistic_r50_on_photos_works_like_a_trained_detector():
    """On photos it never saw: a few thousand candidates above 0.05 before NMS, and 30-60
    detections after on average, as a trained COCO R50-FPN (the R50 layout at a small canvas: 2
    CPU cores; one photo may fall a little outside the band, as a trained detector's counts
    vary from photo to photo)."""
    model, cfg = random_detector("resnet50_fpn", 384, seed=0)
    assert cfg.score_threshold == 0.05
    counts = []
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"):
        image = torch.from_numpy(photo(name).copy()).permute(2, 0, 1).float() / 255
        candidates, detections = workload_counts(model, image)
        assert 1500 <= candidates <= 6000, (name, candidates)
        assert 20 <= detections <= 80, (name, detections)
        counts.append(detections)
    assert 30 <= sum(counts) / len(counts) <= 60, counts
    with torch.inference_mode():
        found = model([image])[0]
    assert len(found["scores"]) == detections  # under max_detections: NMS, not the cap, decides


def test_same_seed_same_weights():
    first, _ = random_detector("resnet18_fpn", 128, seed=3)
    again, _ = random_detector("resnet18_fpn", 128, seed=3)
    other, _ = random_detector("resnet18_fpn", 128, seed=4)
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
