"""decode -> letterbox -> infer -> postprocess, as plain functions of a backend (no HTTP).

The data plane's batch worker calls :meth:`Pipeline.infer_batch` and :meth:`Pipeline.finish_batch`
(:mod:`maskrt.runtime.local`); the evaluation (``maskrt evaluate --backend ...``) and the load
benchmark call :meth:`Pipeline.predict` or :meth:`Pipeline.predictor` on a backend opened with
:func:`maskrt.runtime.backends.open_backend`, so what they measure is exactly what the server
answers::

    from maskrt.runtime.backends import open_backend
    from maskrt.runtime.options import RuntimeOptions
    from maskrt.runtime.pipeline import Pipeline

    pipeline = Pipeline(open_backend(RuntimeOptions(backend="onnxruntime")))
    detections = pipeline.predict([hwc_uint8_array], score_threshold=0.0)[0]
    # [{"box": [x1, y1, x2, y2], "score", "class_id", "label", "mask": {"size", "counts"}}, ...]
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from maskrt.model.deploy import DeployOutputs
from maskrt.model.letterbox import Letterbox, fill_colour
from maskrt.runtime.backends.base import Backend
from maskrt.runtime.decode import DecodedImage, decode_image
from maskrt.runtime.postprocess import Detection, postprocess_batch, recipes_for
from maskrt.runtime.preprocess import preprocess

if TYPE_CHECKING:
    from maskrt.model.evaluate import Predictions, Predictor

log = logging.getLogger("maskrt.runtime")


@dataclass(frozen=True)
class PostOptions:
    """What a request asks of post-processing (one per image of a batch), and its own deadline."""

    score_threshold: float = 0.0
    max_detections: int | None = None  # None: all the graph returns (K)
    want_masks: bool = True
    # seconds from its arrival the client waits (Triton's timeout); the shorter of this and
    # REQUEST_TIMEOUT_S holds
    timeout_s: float | None = None


@dataclass
class Inferred:
    """One image's detections and the seconds of each stage of the batch it ran in (``queue_s``:
    what it waited for that batch, which only the batch's caller knows)."""

    detections: list[Detection]
    queue_s: float
    preprocess_s: float
    inference_s: float
    postprocess_s: float


@dataclass
class BatchOutput:
    """Detections of each image of a batch and the batch's stage times (seconds)."""

    detections: list[list[Detection]]
    preprocess_s: float
    inference_s: float
    postprocess_s: float

    def per_image(self) -> list[Inferred]:
        """Each image's detections with the batch's stage times, not yet queued (``queue_s`` 0)."""
        times = (self.preprocess_s, self.inference_s, self.postprocess_s)
        return [Inferred(d, 0.0, *times) for d in self.detections]


@dataclass
class InferredBatch:
    """A batch between its stages: the backend's outputs (owned by this batch), each image's
    letterbox, the CUDA event recorded after its inference (``None`` on the CPU) and the times."""

    outputs: DeployOutputs
    letterboxes: list[Letterbox]
    ready: torch.cuda.Event | None
    preprocess_s: float
    inference_s: float


class Pipeline:
    """The serving pipeline on one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        info = backend.info
        self.device = torch.device(backend.device)
        self.canvas = info.canvas
        self.fill = fill_colour(info.image_mean)
        self.labels = tuple(info.classes)
        self.max_batch = backend.max_batch
        self._local = threading.local()  # each thread's post-processing CUDA stream

    # -- stages ----------------------------------------------------------------------------------

    def decode(
        self, data: bytes, *, max_pixels: int = 40_000_000, name: str = "image"
    ) -> DecodedImage:
        """Bytes of an uploaded image to an upright uint8 RGB ``[3, H, W]`` tensor (nvJPEG on a
        CUDA backend's device, else Pillow on the host)."""
        return decode_image(data, max_pixels=max_pixels, device=self.device, name=name)

    def _sync(self) -> None:
        """Wait for the whole device: backends may run on streams of their own (ONNX Runtime's
        CUDA provider), so the outputs are only known complete after this."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def run_batch(
        self, images: Sequence[Tensor], options: Sequence[PostOptions] | PostOptions
    ) -> BatchOutput:
        """One batch (``1 <= len(images) <= max_batch``) of uint8 ``[3, H, W]`` images."""
        return self.finish_batch(self.infer_batch(images), options)

    @torch.inference_mode()
    def infer_batch(self, images: Sequence[Tensor]) -> InferredBatch:
        """The first stage of a batch: letterbox and infer. The outputs are the batch's own
        (every backend allocates them per call), so the next batch may run while these are
        post-processed."""
        if not 1 <= len(images) <= self.max_batch:
            raise ValueError(f"a batch holds 1 to {self.max_batch} images, got {len(images)}")
        t0 = time.perf_counter()
        batch, letterboxes = preprocess(images, self.canvas, self.fill, self.device)
        self._sync()
        t1 = time.perf_counter()
        outputs = self.backend.infer(batch)
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        self._sync()
        t2 = time.perf_counter()
        return InferredBatch(outputs, letterboxes, ready, t1 - t0, t2 - t1)

    @torch.inference_mode()
    def finish_batch(
        self, inferred: InferredBatch, options: Sequence[PostOptions] | PostOptions
    ) -> BatchOutput:
        """The second stage: paste and encode the masks. On CUDA it runs on the pipeline's own
        stream, after the batch's inference (its event), so it may overlap the next batch's."""
        if isinstance(options, PostOptions):
            options = [options] * len(inferred.letterboxes)
        t2 = time.perf_counter()
        with self._post_stream(inferred):
            detections = postprocess_batch(
                inferred.outputs,
                inferred.letterboxes,
                score_threshold=[o.score_threshold for o in options],
                max_detections=[o.max_detections for o in options],
                want_masks=[o.want_masks for o in options],
                labels=self.labels,
            )
        t3 = time.perf_counter()
        return BatchOutput(detections, inferred.preprocess_s, inferred.inference_s, t3 - t2)

    @contextlib.contextmanager
    def _post_stream(self, inferred: InferredBatch) -> Iterator[None]:
        """Post-processing's CUDA stream (created per thread, so the post-processing thread and
        a warm-up on the inference thread never share one); nothing on the CPU."""
        if inferred.ready is None:
            yield
            return
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
        stream.wait_event(inferred.ready)
        for tensor in inferred.outputs:
            if tensor.is_cuda:
                # the caching allocator must not give this memory to the next batch (allocated
                # on the inference stream) before this stream's kernels that read it have run
                tensor.record_stream(stream)
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()  # this stream only: the next batch's inference runs meanwhile

    # -- whole images ----------------------------------------------------------------------------

    def as_tensor(self, image: np.ndarray | Tensor | bytes) -> Tensor:
        """An HxWx3 uint8 array, a uint8 ``[3, H, W]`` tensor, or encoded image bytes."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            return self.decode(bytes(image), max_pixels=1 << 62).tensor
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected a uint8 HxWx3 array, got {image.dtype} {image.shape}")
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if isinstance(image, Tensor):
            return image
        raise TypeError(f"cannot make an image of {type(image).__name__}")

    def predict(
        self,
        images: Sequence[np.ndarray | Tensor | bytes],
        *,
        score_threshold: float = 0.0,
        max_detections: int | None = None,
        want_masks: bool = True,
        batch_size: int | None = None,
    ) -> list[list[Detection]]:
        """Detections of each image, in batches of ``batch_size`` (default ``max_batch``)."""
        size = min(batch_size or self.max_batch, self.max_batch)
        opts = PostOptions(score_threshold, max_detections, want_masks)
        out: list[list[Detection]] = []
        for start in range(0, len(images), size):
            chunk = [self.as_tensor(im) for im in images[start : start + size]]
            out.extend(self.run_batch(chunk, opts).detections)
        return out

    def predictor(self, score_threshold: float = 0.0, batch_size: int | None = None) -> Predictor:
        """A ``maskrt.model.evaluate.Predictor`` over this pipeline (HxWx3 uint8 images in)."""

        def predict(images: list[np.ndarray]) -> Predictions:
            results: Predictions = []
            for dets in self.predict(
                images, score_threshold=score_threshold, batch_size=batch_size
            ):
                boxes = np.array([d["box"] for d in dets], dtype=np.float32).reshape(-1, 4)
                scores = np.array([d["score"] for d in dets], dtype=np.float32)
                classes = np.array([d["class_id"] for d in dets], dtype=np.int64)
                results.append((boxes, scores, classes, [d["mask"] for d in dets]))
            return results

        return predict

    # -- warm-up ---------------------------------------------------------------------------------

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> dict[int, float]:
        """Run each batch size once (the whole pipeline, masks included; by default the sizes
        the backend needs, :meth:`Backend.warmup_batch_sizes`) so that no request pays for lazy
        initialisation; each step is logged with its time; returns seconds per batch size."""
        sizes = list(batch_sizes) if batch_sizes is not None else self.backend.warmup_batch_sizes()
        if self.device.type == "cuda":
            recipes_for(self.device, self.backend.info.mask_size)
            self._warm_nvjpeg()
        rng = np.random.default_rng(0)
        image = torch.from_numpy(rng.integers(0, 256, (3, 240, 320), dtype=np.uint8))
        seconds: dict[int, float] = {}
        for step, size in enumerate(sizes, 1):
            started = time.perf_counter()
            self.run_batch([image] * size, PostOptions(score_threshold=0.0))
            seconds[size] = time.perf_counter() - started
            log.info(
                "warm-up run",
                extra={
                    "fields": {
                        "step": f"{step}/{len(sizes)}",
                        "batch": size,
                        "seconds": round(seconds[size], 3),
                    }
                },
            )
        return seconds

    def _warm_nvjpeg(self) -> None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (128, 64, 32)).save(buf, format="JPEG")
        self.decode(buf.getvalue())
