"""The torch backend's CUDA fast path (``cuda_graphs``, ``torch_precision``, ``channels_last``,
``cuda_roi_align``, ``pinned_copies``, ``gpu_decode``): the settings and their checks, the batch
padding of the CUDA graphs, the ops' dispatch staying the composite on the CPU, channels_last and
bf16 on the CPU; on a GPU (``-m gpu``) each setting against the plain path.

Rules (issue #25): float32 answers equal the plain path's (classes identical, boxes within 1e-3 px);
fp16 and bf16 detections are matched at box IoU >= 0.95."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading

import pytest
import torch
from deploy_helpers import assert_same_detections, assert_top_found, images, loaded
from PIL import Image
from pydantic import ValidationError

from maskrt.errors import MaskrtError
from maskrt.model.deploy import grouped_nms_composite
from maskrt.model.roi_align import multilevel_roi_align_composite
from maskrt.runtime.backends import cuda_ops
from maskrt.runtime.backends.cuda_graphs import bucket, capture_sizes, first_rows, pad_batch
from maskrt.runtime.backends.torch import TorchBackend
from maskrt.runtime.decode import decode_batch, decode_image
from maskrt.runtime.errors import InvalidImage
from maskrt.runtime.options import RuntimeOptions, add_flags, from_flags

FAST_PATH = (
    "cuda_graphs",
    "torch_precision",
    "channels_last",
    "cuda_roi_align",
    "pinned_copies",
    "gpu_decode",
)


# -- settings --------------------------------------------------------------------------------------


def test_every_setting_is_off_by_default_and_read_from_env_and_flags(monkeypatch):
    for name in FAST_PATH:
        monkeypatch.delenv(f"MASKRT_{name.upper()}", raising=False)
    options = RuntimeOptions()
    assert options.torch_precision == "fp32"
    assert not any(getattr(options, n) for n in FAST_PATH if n != "torch_precision")
    monkeypatch.setenv("MASKRT_TORCH_PRECISION", "bf16")
    monkeypatch.setenv("MASKRT_CHANNELS_LAST", "true")
    parser = argparse.ArgumentParser()
    add_flags(parser, FAST_PATH)
    args = parser.parse_args(["--cuda-roi-align", "--cuda-graphs", "--gpu-decode"])
    options = from_flags(args, RuntimeOptions)
    assert (options.torch_precision, options.channels_last) == ("bf16", True)
    assert options.cuda_roi_align and options.cuda_graphs and options.gpu_decode
    assert not options.pinned_copies
    with pytest.raises(SystemExit):
        parser.parse_args(["--torch-precision", "fp8"])


def test_cuda_graphs_needs_the_kernels():
    with pytest.raises(ValidationError, match="needs MASKRT_CUDA_ROI_ALIGN"):
        RuntimeOptions(cuda_graphs=True)
    parser = argparse.ArgumentParser()
    add_flags(parser, FAST_PATH)
    with pytest.raises(MaskrtError, match=r"--cuda-graphs.*--cuda-roi-align"):
        from_flags(parser.parse_args(["--cuda-graphs"]), RuntimeOptions)
    with pytest.raises(MaskrtError, match="--cuda-roi-align"):
        TorchBackend(loaded("shapes"), "cpu", 1, cuda_graphs=True)


def test_cuda_settings_on_the_cpu_are_refused():
    options = RuntimeOptions(cuda_roi_align=True, pinned_copies=True, torch_precision="fp16")
    with pytest.raises(MaskrtError) as error:
        options.check_cuda_settings("cpu", "torch")
    assert str(error.value) == (
        "MASKRT_CUDA_ROI_ALIGN, MASKRT_PINNED_COPIES, MASKRT_TORCH_PRECISION=fp16 need a CUDA "
        "device (device is 'cpu')"
    )
    RuntimeOptions(channels_last=True, torch_precision="bf16").check_cuda_settings("cpu", "torch")
    RuntimeOptions(gpu_decode=True).check_cuda_settings("cuda", "onnxruntime")
    with pytest.raises(MaskrtError, match="MASKRT_CHANNELS_LAST apply to the torch backend"):
        RuntimeOptions(channels_last=True).check_cuda_settings("cpu", "onnxruntime")
    with pytest.raises(MaskrtError, match="fp16 autocast needs a CUDA device"):
        TorchBackend(loaded("shapes"), "cpu", 1, precision="fp16")
    with pytest.raises(MaskrtError, match="need a CUDA device"):
        TorchBackend(loaded("shapes"), "cpu", 1, cuda_roi_align=True)


def test_serve_refuses_a_cuda_setting_on_the_cpu_before_listening():
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskrt",
            "serve",
            "--device",
            "cpu",
            "--backend",
            "torch",
            "--cuda-roi-align",
            "--port",
            "9",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "MASKRT_CUDA_ROI_ALIGN need a CUDA device (device is 'cpu')" in run.stderr
    assert "Uvicorn running" not in run.stderr


def test_bench_deploy_gpu_checks_its_settings_flags(capsys):
    from maskrt.bench import deploy_gpu

    assert deploy_gpu.main(["--cuda-graphs"]) == 2
    assert (
        "MASKRT_CUDA_GRAPHS (--cuda-graphs) needs MASKRT_CUDA_ROI_ALIGN" in capsys.readouterr().err
    )


# -- CUDA graphs: batch sizes and padding ------------------------------------------------------------


def test_capture_sizes_and_buckets():
    assert capture_sizes(1) == [1]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert [bucket(b, capture_sizes(6)) for b in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    with pytest.raises(ValueError, match="larger than every captured size"):
        bucket(7, capture_sizes(6))


def test_padding_to_a_captured_size_leaves_the_real_rows_as_they_are():
    backend = TorchBackend(loaded("shapes"), "cpu", 4)
    imgs = images(3, 192, seed=5)
    padded = pad_batch(imgs, 4)
    assert padded.shape == (4, 3, 192, 192) and not padded[3].any()
    assert torch.equal(padded[:3], imgs) and pad_batch(imgs, 3) is imgs
    rows = first_rows(backend.infer(padded), 3)
    expected = backend.infer(imgs)
    for got, want in zip(rows, expected):
        assert torch.equal(got, want)
    assert rows.boxes.shape[0] == 3 and rows.boxes.is_contiguous()


# -- the custom ops' implementations ---------------------------------------------------------------


def test_the_ops_stay_the_composites_on_the_cpu_with_the_kernels_registered():
    cuda_ops.register()  # nothing is built: the CUDA implementations load the extension lazily
    g = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 4, s, s, generator=g) for s in (48, 24, 12, 6)]
    rois = torch.rand(2, 30, 4, generator=g) * 150
    rois[..., 2:] += rois[..., :2]
    boxes = torch.rand(6, 40, 4, generator=g) * 100
    boxes[..., 2:] += boxes[..., :2] + 1
    scores = torch.rand(6, 40, generator=g)
    with cuda_ops.use_kernels():
        assert cuda_ops.kernels_enabled()
        pooled = torch.ops.maskrt.multilevel_roi_align(rois, features, 7, 2, False)
        keep = torch.ops.maskrt.grouped_nms(boxes, scores, 0.5, 0.1, 5)
    assert torch.equal(pooled, multilevel_roi_align_composite(rois, features, 7, 2, False))
    assert torch.equal(keep, grouped_nms_composite(boxes, scores, 0.5, 0.1, 5))
    assert keep.sum(1).max() <= 5


def test_use_kernels_is_per_thread_and_restores():
    seen = []
    with cuda_ops.use_kernels():
        worker = threading.Thread(target=lambda: seen.append(cuda_ops.kernels_enabled()))
        worker.start()
        worker.join()
        with cuda_ops.use_kernels(False):
            assert not cuda_ops.kernels_enabled()
        assert cuda_ops.kernels_enabled()
    assert seen == [False] and not cuda_ops.kernels_enabled()


# -- channels_last and bf16 on the CPU -------------------------------------------------------------


def test_channels_last_on_the_cpu_gives_the_plain_answers():
    imgs = images(2, 192, seed=6)
    plain = TorchBackend(loaded("shapes"), "cpu", 2).infer(imgs)
    fast = TorchBackend(loaded("shapes"), "cpu", 2, channels_last=True)
    conv = fast.graph.model.backbone.body.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert_same_detections(fast.infer(imgs), plain)


def _bundled(device: str = "cpu", **settings) -> TorchBackend:
    """The bundled (trained) shapes model: reduced precision is judged on a real model's
    detections, which random weights on noise do not give."""
    from maskrt.model.checkpoint import default_checkpoint, load_model

    model = load_model(str(default_checkpoint()), RuntimeOptions().model_options())
    return TorchBackend(model, device, 4, **settings)


def _photos(backend: TorchBackend) -> torch.Tensor:
    """Four letterboxed shapes photos on the backend's device."""
    from maskrt.model.letterbox import fill_colour
    from maskrt.model.shapes import generate
    from maskrt.runtime.preprocess import preprocess

    photos = [torch.from_numpy(generate(7, i).image).permute(2, 0, 1) for i in range(4)]
    fill = fill_colour(backend.info.image_mean)
    return preprocess(photos, backend.info.canvas, fill, backend.device)[0]


def test_bf16_on_the_cpu_finds_the_float32_detections():
    plain = _bundled()
    imgs = _photos(plain)
    expected = plain.infer(imgs)
    half = _bundled(precision="bf16").infer(imgs)
    assert [t.dtype for t in half] == [t.dtype for t in expected]  # boxes, scores, masks float32
    assert int(expected.num_detections.sum()) > 0
    assert_top_found(half, expected, top=100)


# -- batched decoding (the gpu_decode code path, run by torchvision's CPU decoder here) --------------


def _jpeg(colour: tuple[int, int, int], size=(40, 30), orientation: int = 1) -> bytes:
    img = Image.new("RGB", size, colour)
    img.paste((255, 255, 255), (0, 0, 10, 5))  # a corner that shows the orientation
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_batch_decodes_the_jpegs_in_one_call_and_the_rest_one_by_one():
    items = [
        (_jpeg((200, 10, 10)), "a"),
        (_png((1, 2, 3)), "b"),
        (_jpeg((10, 200, 10), orientation=6), "c"),
    ]
    decoded = decode_batch(items, max_pixels=10_000, device=torch.device("cpu"))
    assert [d.decoder for d in decoded] == ["nvjpeg", "pillow", "nvjpeg"]
    assert [(d.width, d.height) for d in decoded] == [(40, 30), (20, 10), (30, 40)]
    for d, (data, name) in zip(decoded, items):
        one = decode_image(data, max_pixels=10_000, name=name)  # Pillow: upright, RGB
        assert (d.tensor.int() - one.tensor.int()).abs().max() <= 8  # two JPEG decoders
    with pytest.raises(InvalidImage, match="b: not an image"):
        decode_batch([items[0], (b"nonsense", "b")], max_pixels=10_000, device=torch.device("cpu"))


# -- on a GPU: each setting against the plain path -------------------------------------------------


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """maskrt's CUDA extension, built for this GPU only."""
    patch = pytest.MonkeyPatch()
    major, minor = torch.cuda.get_device_capability()
    patch.setenv("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    try:
        cuda_ops.load(str(tmp_path_factory.mktemp("maskrt_ext")))
        yield
    finally:
        patch.undo()


def _nms_case(groups: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(groups, n, 2, generator=g) * 200
    size = torch.rand(groups, n, 2, generator=g) * 60 + 1
    boxes = torch.cat((centre - size / 2, centre + size / 2), -1)
    scores = torch.rand(groups, n, generator=g)
    scores[0] = -1.0  # a group without candidates
    scores[1, :5] = float("nan")
    return boxes.cuda(), scores.cuda()


@pytest.mark.gpu
@pytest.mark.parametrize(
    "groups,n,limit,threshold", [(12, 300, 300, 0.05), (90, 1000, 100, 0.8), (3, 70, 7, 0.05)]
)
def test_grouped_nms_kernel_equals_the_composite(kernels, groups, n, limit, threshold):
    """Under 20,000 candidates, where the composite's IoUs are float64 as the kernel's (above,
    its float32 ones may decide a pair within rounding of the threshold the other way)."""
    boxes, scores = _nms_case(groups, n, seed=groups)
    assert int((scores > threshold).sum()) < 20_000
    expected = grouped_nms_composite(boxes, scores, 0.5, threshold, limit)
    with cuda_ops.use_kernels():
        got = torch.ops.maskrt.grouped_nms(boxes, scores, 0.5, threshold, limit)
    assert got.is_cuda and torch.equal(got, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_roi_align_kernel_equals_the_composite(kernels, dtype):
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(2, 16, s, s, generator=g).cuda().to(dtype) for s in (200, 100, 50, 25)]
    rois = torch.rand(2, 500, 4, generator=g) * 600
    rois[..., 2:] += rois[..., :2] + torch.rand(2, 500, 2, generator=g) * 300
    rois = rois.cuda()
    expected = multilevel_roi_align_composite(rois, features, 7, 2, False)
    with cuda_ops.use_kernels():
        got = torch.ops.maskrt.multilevel_roi_align(rois, features, 7, 2, False)
    assert got.dtype == dtype
    tolerance = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "settings",
    [
        {"cuda_roi_align": True},
        {"channels_last": True},
        {"cuda_roi_align": True, "cuda_graphs": True},
        {"cuda_roi_align": True, "cuda_graphs": True, "channels_last": True},
    ],
    ids=["kernels", "channels_last", "graphs", "all"],
)
def test_fp32_settings_give_the_plain_answers(kernels, exact_float32, settings):
    plain, fast = _bundled("cuda"), _bundled("cuda", **settings)
    photos = _photos(plain)
    for batch in (1, 3, 4):
        assert_same_detections(fast.infer(photos[:batch]), plain.infer(photos[:batch]))


@pytest.mark.gpu
def test_graph_outputs_survive_the_next_replay(kernels, exact_float32):
    fast = _bundled("cuda", cuda_roi_align=True, cuda_graphs=True)
    photos = _photos(fast)
    first = fast.infer(photos[:2])
    kept = [t.clone() for t in first]
    fast.infer(photos[2:])
    for a, b in zip(first, kept):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_reduced_precision_finds_the_float32_detections(kernels, exact_float32, precision, graphs):
    plain = _bundled("cuda")
    fast = _bundled(
        "cuda", precision=precision, cuda_roi_align=graphs, cuda_graphs=graphs, channels_last=graphs
    )
    imgs = _photos(plain)
    got = fast.infer(imgs)
    assert got.boxes.dtype == got.scores.dtype == torch.float32
    assert_top_found(got, plain.infer(imgs), top=100)


@pytest.mark.gpu
def test_pipeline_on_the_fast_path_answers_as_the_plain_one(kernels, exact_float32):
    from maskrt.model.shapes import generate
    from maskrt.runtime.pipeline import Pipeline

    photos = [generate(7, i).image for i in range(5)]
    plain = Pipeline(_bundled("cuda")).predict(photos, score_threshold=0.0)
    fast = Pipeline(
        _bundled("cuda", cuda_roi_align=True, cuda_graphs=True, channels_last=True)
    ).predict(photos, score_threshold=0.0)
    for got, want in zip(fast, plain):
        assert [d["class_id"] for d in got] == [d["class_id"] for d in want]
        assert [d["mask"]["counts"] for d in got] == [d["mask"]["counts"] for d in want]
        for a, b in zip(got, want):
            assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 1e-3


@pytest.mark.gpu
def test_pinned_copies_put_the_pillow_image_on_the_gpu():
    data = _png((7, 8, 9))
    host = decode_image(data, max_pixels=10_000)
    copied = decode_image(data, max_pixels=10_000, device="cuda", pinned_copies=True)
    assert copied.decoder == "pillow" and copied.tensor.is_cuda
    assert torch.equal(copied.tensor.cpu(), host.tensor)


@pytest.mark.gpu
def test_gpu_decode_batch_equals_one_call_per_image():
    items = [(_jpeg((200, 10, 10)), "a"), (_jpeg((10, 200, 10), orientation=6), "b")]
    device = torch.device("cuda")
    batched = decode_batch(items, max_pixels=10_000, device=device)
    assert [d.decoder for d in batched] == ["nvjpeg", "nvjpeg"]
    for d, (data, name) in zip(batched, items):
        one = decode_image(data, max_pixels=10_000, device=device, name=name)
        assert d.tensor.is_cuda and torch.equal(d.tensor, one.tensor)


@pytest.mark.gpu
def test_serve_on_the_fast_path_answers_as_the_plain_pipeline(
    tmp_path_factory, monkeypatch, exact_float32
):
    """``maskrt serve`` with every float32 setting on, over HTTP, against the plain pipeline in
    process (the extension it builds at start-up: torch's cache, this GPU's architecture only).
    Both without TF32 (the server through NVIDIA_TF32_OVERRIDE), whose rounding would move boxes
    by more than the rule allows."""
    from server_harness import jpeg, png, serving_checkpoint, shapes_image, start_server

    from maskrt.runtime.pipeline import Pipeline

    major, minor = torch.cuda.get_device_capability()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    files = [jpeg(shapes_image(0)), jpeg(shapes_image(1)), png(shapes_image(2))]
    settings = {name: "true" for name in FAST_PATH if name != "torch_precision"}
    settings.update(backend="torch", device="cuda", model=serving_checkpoint(), max_batch=4)
    server = start_server(tmp_path_factory, "fast_path", settings)
    try:
        with server.client() as client:
            answer = client.post(
                "/predict/batch",
                files=[("images", (f"{i}", data)) for i, data in enumerate(files)],
                data={"score_threshold": "0.3"},
            )
            model = client.get("/v1/model").json()
    finally:
        server.stop()
    assert answer.status_code == 200, answer.text
    assert (model["backend"], model["device"].split(":")[0]) == ("torch", "cuda")
    expected = Pipeline(_bundled("cuda")).predict(files, score_threshold=0.3)
    for got, want in zip(answer.json()["results"], expected, strict=True):
        got = got["detections"]
        assert [d["class_id"] for d in got] == [d["class_id"] for d in want]
        assert [d["mask"]["counts"] for d in got] == [d["mask"]["counts"] for d in want]
        for a, b in zip(got, want):
            assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 1e-3
