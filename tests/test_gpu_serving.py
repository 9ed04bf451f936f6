"""Serving on a GPU answers as on the CPU (issue #25's P2 checks, run by bench/gpu_session.sh).

float32 on both sides without TF32 (the in-process side through ``exact_float32``, a server through
``NVIDIA_TF32_OVERRIDE=0``): classes and RLE identical, boxes within 1e-3 px. nvJPEG and Pillow
decode a JPEG to slightly different pixels, so where the GPU side decodes with nvJPEG the rule is
the one for a different computation: every confident detection matched at box IoU >= 0.95 with the
same class. All skip without a CUDA device."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from server_harness import jpeg, png, serving_checkpoint, shapes_image, start_server

from maskrt.runtime.decode import decode_image
from maskrt.runtime.pipeline import Pipeline, PostOptions

pytestmark = pytest.mark.gpu
THRESHOLD = 0.3
CONFIDENT = 0.5  # the nvJPEG rule's detections: clear of the threshold, so none hangs on rounding


def pipeline(device: str, max_batch: int = 4) -> Pipeline:
    from maskrt.runtime.backends import open_backend
    from maskrt.runtime.options import RuntimeOptions

    options = RuntimeOptions(
        model=str(serving_checkpoint()), backend="torch", device=device, max_batch=max_batch
    )
    return Pipeline(open_backend(options))


def assert_same(got: list[dict], want: list[dict]) -> None:
    """The float32 rule: classes and RLE identical, boxes within 1e-3 px."""
    assert [d["class_id"] for d in got] == [d["class_id"] for d in want]
    assert [d["mask"]["counts"] for d in got] == [d["mask"]["counts"] for d in want]
    for a, b in zip(got, want):
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 1e-3, (a["box"], b["box"])


def box_iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def assert_matched(got: list[dict], want: list[dict]) -> None:
    """Each confident detection of either side has one of the other's, same class, IoU >= 0.95."""
    for ours, theirs in ((got, want), (want, got)):
        for d in (d for d in ours if d["score"] >= CONFIDENT):
            best = max(
                (box_iou(d["box"], e["box"]) for e in theirs if e["class_id"] == d["class_id"]),
                default=0.0,
            )
            assert best >= 0.95, (d, theirs)


def assert_same_all(got: list[list[dict]], want: list[list[dict]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_same(g, w)


def two_batches_in_flight(pipe: Pipeline, first: list, second: list) -> list[list[dict]]:
    """As the server's worker runs them: the second batch inferred while the first is
    post-processed on another thread."""
    options = PostOptions(score_threshold=THRESHOLD)
    inferred = pipe.infer_batch(first)
    out: dict[str, list] = {}
    finisher = threading.Thread(
        target=lambda: out.update(first=pipe.finish_batch(inferred, options).detections)
    )
    finisher.start()
    later = pipe.infer_batch(second)
    finisher.join()
    return out["first"] + pipe.finish_batch(later, options).detections


def test_pipeline_on_cuda_answers_as_on_the_cpu_from_jpeg_bytes(exact_float32):
    files = [jpeg(shapes_image(i)) for i in range(4)]
    cpu = pipeline("cpu")
    cuda = pipeline("cuda")
    want = cpu.predict(files, score_threshold=THRESHOLD)
    assert any(want), "the shapes model found nothing: no comparison"
    # Pillow's pixels on both sides: the float32 rule
    host = [decode_image(data, max_pixels=1 << 30).tensor for data in files]
    assert_same_all(two_batches_in_flight(cuda, host[:2], host[2:]), want)
    # nvJPEG on the GPU side, as the server decodes
    decoded = [cuda.decode(data) for data in files]
    assert all(d.tensor.is_cuda for d in decoded)
    images = [d.tensor for d in decoded]
    got = two_batches_in_flight(cuda, images[:2], images[2:])
    for g, w in zip(got, want, strict=True):
        assert_matched(g, w)


@pytest.fixture(scope="module")
def cuda_server(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    settings = {"backend": "torch", "device": "cuda", "model": serving_checkpoint(), "max_batch": 8}
    server = start_server(tmp_path_factory, "cuda_server", settings)
    yield server
    server.stop()
    patch.undo()


def test_serve_on_cuda_answers_as_the_cpu_pipeline(cuda_server, exact_float32):
    """PNG bodies: Pillow decodes them on both sides, so the float32 rule holds end to end."""
    files = [png(shapes_image(i)) for i in range(3)]
    with cuda_server.client() as client:
        model = client.get("/v1/model").json()
        answers = [
            client.post(
                "/predict",
                files={"image": ("x.png", data, "image/png")},
                data={"score_threshold": "0.3"},
            )
            for data in files
        ]
    assert (model["backend"], model["device"].split(":")[0]) == ("torch", "cuda")
    want = pipeline("cpu").predict(files, score_threshold=THRESHOLD, batch_size=1)
    assert any(want), "the shapes model found nothing: no comparison"
    for answer, w in zip(answers, want, strict=True):
        assert answer.status_code == 200, answer.text
        assert_same(answer.json()["detections"], w)


def test_32_concurrent_identical_posts_get_identical_answers(cuda_server):
    """Whatever batches the posts fall into (1 to 8 images), each answer is the same (by the
    float32 rule: a batch's size may change which kernels run)."""
    data = jpeg(shapes_image(5))

    def post(_: int) -> tuple[int, list]:
        with cuda_server.client() as client:
            r = client.post(
                "/predict",
                files={"image": ("x.jpg", data, "image/jpeg")},
                data={"score_threshold": "0.3"},
            )
            return r.status_code, r.json().get("detections", r.json())

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(post, range(32)))
    assert {status for status, _ in answers} == {200}, answers[0]
    first = answers[0][1]
    assert first, "nothing detected: the comparison would be empty"
    for _, detections in answers[1:]:
        assert_same(detections, first)
