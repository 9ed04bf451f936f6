"""The deploy graph replayed as CUDA graphs, one per batch size (the torch backend's ``cuda_graphs``).

Why it works, and what it needs:

- **Static shapes per batch size.** A CUDA graph replays fixed kernels on fixed addresses; the deploy
  graph has no data-dependent shape once its two custom ops run maskrt's CUDA kernels
  (:mod:`maskrt.runtime.backends.cuda_ops`: the composites read counts back to the host, which a
  capture refuses). Sizes are captured for the powers of two up to ``max_batch`` and ``max_batch``
  itself (:func:`capture_sizes`); a batch is padded with blank canvases to the next captured size
  (:func:`bucket`). Every image of the deploy graph is computed on its own (frozen batch norm, NMS
  per image, RoIs of an image read its own maps), so padding leaves the real rows' answers as they
  are.
- **Warm-up on a side stream.** Each size runs a few times on a side stream before its capture, as
  ``torch.cuda.graphs`` asks: lazy initialisation (cuBLAS handles, the kernels' first launch,
  autocast's casts) happens outside the graph.
- **Static input and output buffers.** A replay reads the input buffer it was captured with and
  writes the same output tensors; :meth:`GraphedDeploy.__call__` copies the batch into the input
  buffer and **clones the outputs out** right after the replay, because the next replay (the next
  batch, inferred while this one is post-processed) overwrites them.
- **One memory pool.** All sizes share one graph pool. That is safe here because replays never
  overlap (one inference stream, one batch at a time) and nothing of a graph's pool is read after
  another graph's replay: the input buffers are allocated outside the pool and the outputs are
  cloned out at once.

Autocast runs with its weight cache off (a cached cast would be freed memory at replay time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from maskrt.model.deploy import DeployOutputs

log = logging.getLogger("maskrt.backends.torch")

WARMUP_RUNS = 3  # runs on the side stream before a capture


def capture_sizes(max_batch: int) -> list[int]:
    """The batch sizes captured: powers of two below ``max_batch``, and ``max_batch``."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def bucket(batch: int, sizes: Sequence[int]) -> int:
    """The smallest captured size that holds ``batch`` images."""
    for size in sorted(sizes):
        if size >= batch:
            return size
    raise ValueError(f"a batch of {batch} is larger than every captured size {list(sizes)}")


def pad_batch(images: Tensor, size: int) -> Tensor:
    """``images`` [B, ...] with ``size - B`` zero rows appended (blank canvases)."""
    missing = size - images.shape[0]
    if missing < 0:
        raise ValueError(f"cannot pad a batch of {images.shape[0]} down to {size}")
    if missing == 0:
        return images
    return torch.cat((images, images.new_zeros((missing, *images.shape[1:]))))


def first_rows(outputs: Sequence[Tensor], batch: int) -> DeployOutputs:
    """The first ``batch`` images' rows of each output, as tensors of their own (clones)."""
    return DeployOutputs(*(t[:batch].clone() for t in outputs))


class GraphedDeploy:
    """``run`` (uint8 ``[B, 3, S, S]`` on a CUDA device -> :class:`DeployOutputs`) captured once per
    size of :func:`capture_sizes` and replayed per batch (module docstring)."""

    def __init__(
        self,
        run: Callable[[Tensor], DeployOutputs],
        image_shape: Sequence[int],
        max_batch: int,
        device: torch.device,
    ) -> None:
        self.sizes = capture_sizes(max_batch)
        self.device = device
        self._inputs: dict[int, Tensor] = {}
        self._outputs: dict[int, DeployOutputs] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        pool = None
        for size in self.sizes:
            static = torch.zeros((size, *image_shape), dtype=torch.uint8, device=device)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    run(static)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                self._outputs[size] = run(static)
            pool = graph.pool()
            self._inputs[size], self._graphs[size] = static, graph
        torch.cuda.synchronize(device)
        log.info("captured CUDA graphs for batch sizes %s", self.sizes)

    def __call__(self, images: Tensor) -> DeployOutputs:
        batch = images.shape[0]
        size = bucket(batch, self.sizes)
        self._inputs[size].copy_(pad_batch(images, size))
        self._graphs[size].replay()
        return first_rows(self._outputs[size], batch)
