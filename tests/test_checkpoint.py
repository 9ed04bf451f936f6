"""Checkpoints round-trip, and every bad file gives an error that names it."""

from __future__ import annotations

import pytest
import torch

from maskrt.errors import MaskrtError
from maskrt.model.build import build_model
from maskrt.model.checkpoint import load_checkpoint, save_checkpoint
from maskrt.model.config import get_config


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    cfg = get_config("shapes")
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "shapes.pt"
    save_checkpoint(path, model, cfg, {"dataset": "test"}, half=True)
    return path, model


def test_round_trip_keeps_config_weights_and_provenance(shapes_checkpoint):
    path, model = shapes_checkpoint
    loaded = load_checkpoint(path)
    assert loaded.config == get_config("shapes")
    assert loaded.meta["dataset"] == "test"
    assert len(loaded.sha256) == 64 and not loaded.model.training
    for key, value in model.state_dict().items():
        restored = loaded.model.state_dict()[key]
        assert restored.dtype == value.dtype
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        torch.testing.assert_close(restored, expected, rtol=0, atol=0)


def test_missing_file(tmp_path):
    with pytest.raises(MaskrtError, match=r"nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, not a checkpoint")
    with pytest.raises(MaskrtError, match=r"notes\.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_truncated_file(shapes_checkpoint, tmp_path):
    data = shapes_checkpoint[0].read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskrtError, match=r"truncated\.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_wrong_config_for_the_keys_names_them(shapes_checkpoint):
    with pytest.raises(MaskrtError) as info:
        load_checkpoint(shapes_checkpoint[0], config="resnet50_fpn")
    message = str(info.value)
    assert "shapes.pt: weights do not fit the model config" in message
    assert "missing keys (first: backbone.body.layer1.0.conv3.weight" in message
    assert "shape mismatches" in message


def test_bare_state_dict_layout_is_recognised_or_named(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(build_model(get_config("shapes")).state_dict(), path)
    assert load_checkpoint(path).config.name == "shapes"
    assert load_checkpoint(path, config="shapes").config.name == "shapes"
    other = tmp_path / "other.pth"
    torch.save(build_model(get_config("shapes").replace(fpn_channels=32)).state_dict(), other)
    with pytest.raises(
        MaskrtError, match=r"other\.pth: a bare state dict whose layout fits none of the known"
    ):
        load_checkpoint(other)


def test_partial_state_dict_is_refused(tmp_path):
    state = build_model(get_config("shapes")).state_dict()
    del state["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(MaskrtError) as info:
        load_checkpoint(path, config="shapes")
    assert "1 missing keys (first: roi_heads.mask_predictor.mask_fcn_logits.weight)" in str(
        info.value
    )
    assert "1 unexpected keys (first: extra.weight)" in str(info.value)


def test_unknown_config_lists_known_ones(shapes_checkpoint):
    with pytest.raises(
        MaskrtError, match="unknown model config 'r101'; known configs: resnet18_fpn, resnet50_fpn"
    ):
        load_checkpoint(shapes_checkpoint[0], config="r101")


def flip_a_weight_bit(source, out):
    """``source`` with one bit flipped inside the largest tensor's bytes (the zip entry's CRC is
    left as it was: torch.load does not check it)."""
    import zipfile

    with zipfile.ZipFile(source) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(source.read_bytes())
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[at] ^= 0x10
    out.write_bytes(bytes(data))
    return out


def test_a_flipped_bit_is_refused(shapes_checkpoint, tmp_path):
    loaded = load_checkpoint(shapes_checkpoint[0])
    assert loaded.weights_verified
    flipped = flip_a_weight_bit(shapes_checkpoint[0], tmp_path / "flipped.pt")
    with pytest.raises(MaskrtError, match=r"flipped\.pt: the weights do not match the digest"):
        load_checkpoint(flipped)


def test_foreign_checkpoints_are_not_verified(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(build_model(get_config("shapes")).state_dict(), path)
    assert not load_checkpoint(path, config="shapes").weights_verified


def test_the_server_refuses_a_flipped_checkpoint(shapes_checkpoint, tmp_path):
    from server_harness import Server

    flipped = flip_a_weight_bit(shapes_checkpoint[0], tmp_path / "flipped.pt")
    server = Server(tmp_path, {"model": flipped, "backend": "torch", "device": "cpu"})
    try:
        assert server.proc.wait(300) == 3
        assert "flipped.pt: the weights do not match the digest" in server.log()
    finally:
        server.stop()
