"""``python -m maskrt.bench.random_model``: the random-weight detector of ``maskrt bench peers
--model r50`` as a checkpoint file that loads and finds ``K`` objects in any image."""

from __future__ import annotations

import torch

from maskrt.bench.random_model import main
from maskrt.model.checkpoint import load_checkpoint


def test_writes_a_checkpoint_that_finds_k_objects(tmp_path, capsys):
    out = tmp_path / "r18.pt"
    assert main(["--config", "resnet18_fpn", "--canvas", "128", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = load_checkpoint(out)
    assert loaded.config.canvas == 128 and loaded.config.score_threshold == 0.0
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8).float() / 255
    with torch.inference_mode():
        found = loaded.model.eval()([image])[0]
    assert len(found["scores"]) == loaded.config.max_detections
