"""``maskrt predict``: overlay pictures and JSON answers for image files.

The model runs here, through :class:`~maskrt.runtime.pipeline.Pipeline` on any backend (the same
flags as ``maskrt serve``), or a running server answers (``--url``). For each ``IMAGE`` it writes
``OUT/<stem>.json`` (the ``POST /predict`` answer) and ``OUT/<stem>.png`` (``.jpg`` for a JPEG) with
the detections drawn by :func:`maskrt.runtime.overlay.draw_overlay`. An image that cannot be read or
decoded is reported with its file name; the others are still written.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maskrt.runtime.decode import DecodedImage

# Settings the local run takes (``--url`` asks a server, which has its own).
LOCAL_SETTINGS = (
    "model",
    "config",
    "labels",
    "canvas",
    "trust_pickle",
    "backend",
    "device",
    "max_batch",
    "cache_dir",
    "engine_precision",
)
JPEG_FORMATS = ("JPEG", "MPO")


def register(sub: argparse._SubParsersAction) -> None:
    from maskrt.runtime.options import add_flags

    p = sub.add_parser(
        "predict",
        help="draw the detections of images (overlay pictures and JSON answers)",
        description="Write OUT/<name>.json (the POST /predict answer) and OUT/<name>.png "
        "(.jpg for a JPEG) with each detection's mask, outline, box and 'label score' drawn, "
        "for each IMAGE. The model runs here (the model flags of maskrt serve) or a running "
        "server answers (--url).",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument(
        "--out", type=Path, default=Path("predictions"), help="output folder (default predictions)"
    )
    p.add_argument("--url", help="ask the maskrt server at this URL instead of running the model")
    p.add_argument(
        "--api-key",
        default=os.environ.get("MASKRT_API_KEY"),
        help="API key for --url (env MASKRT_API_KEY)",
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        metavar="X",
        help="keep detections scoring at least this (default: MASKRT_SCORE_THRESHOLD or 0.5; "
        "with --url the server's setting)",
    )
    add_flags(p, LOCAL_SETTINGS)
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from maskrt.errors import MaskrtError

    stems: dict[str, Path] = {}
    for path in args.images:
        if path.stem in stems:
            raise MaskrtError(
                f"{path} and {stems[path.stem]} would both be written as {path.stem}.*; "
                "predict them into different --out folders"
            )
        stems[path.stem] = path
    if args.url:
        given = [f"--{n.replace('_', '-')}" for n in LOCAL_SETTINGS if getattr(args, n)]
        if given:
            raise MaskrtError(f"{', '.join(given)}: the local run's flags; --url asks a server")
    source = Remote(args) if args.url else Local(args)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tqdm(total=len(args.images), unit="image", disable=len(args.images) < 2) as bar:
        for start in range(0, len(args.images), source.batch):
            for path, result in source(args.images[start : start + source.batch]):
                if isinstance(result, str):
                    failed += 1
                    tqdm.write(f"maskrt: error: {result}", file=sys.stderr)
                else:
                    _write(args.out, path, *result)
                bar.update()
    written = len(args.images) - failed
    print(f"{written} of {len(args.images)} images written to {args.out}/", file=sys.stderr)
    return 2 if failed else 0


def _load(path: Path, decode: Callable[..., DecodedImage]) -> tuple[bytes, DecodedImage] | str:
    """The file's bytes and the decoded image, or what is wrong with it (naming the file)."""
    from maskrt.runtime.errors import InferenceError

    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    try:
        return data, decode(data, name=str(path))
    except InferenceError as exc:  # its message starts with the name
        return exc.message


def _write(out: Path, path: Path, answer: dict, image: DecodedImage) -> None:
    """``<stem>.json`` and the overlay, ``<stem>.jpg`` for a JPEG, else ``<stem>.png``."""
    from maskrt.runtime.overlay import draw_overlay

    (out / f"{path.stem}.json").write_text(json.dumps(answer, indent=1) + "\n")
    picture = draw_overlay(image.tensor.permute(1, 2, 0).cpu().numpy(), answer["detections"])
    if image.format in JPEG_FORMATS:
        picture.save(out / f"{path.stem}.jpg", quality=92)
    else:
        picture.save(out / f"{path.stem}.png", optimize=True)


class Local:
    """The model in this process: images in batches of ``--max-batch`` through the pipeline.
    Called with paths, it yields each path with its (answer, image) or its error message."""

    def __init__(self, args: argparse.Namespace) -> None:
        from maskrt.runtime.backends import open_backend
        from maskrt.runtime.dataplane import ServedModel
        from maskrt.runtime.options import RuntimeOptions, from_flags
        from maskrt.runtime.pipeline import Pipeline

        self.options = from_flags(args, RuntimeOptions)
        self.pipeline = Pipeline(open_backend(self.options))
        self.batch = self.pipeline.max_batch
        self.model = ServedModel.of(self.pipeline.backend, self.batch).ref()

    def _decode(self, data: bytes, name: str) -> DecodedImage:
        return self.pipeline.decode(data, max_pixels=self.options.max_image_pixels, name=name)

    def __call__(self, paths: list[Path]) -> Iterator[tuple[Path, tuple[dict, DecodedImage] | str]]:
        from maskrt.runtime.dataplane import ImageResult
        from maskrt.runtime.pipeline import PostOptions
        from maskrt.server.answers import answer

        decoded = []
        for path in paths:
            loaded = _load(path, self._decode)
            if isinstance(loaded, str):
                yield path, loaded
            else:
                decoded.append((path, loaded[1]))
        if not decoded:
            return
        out = self.pipeline.run_batch(
            [image.tensor for _, image in decoded], PostOptions(self.options.score_threshold)
        )
        for (path, image), inferred in zip(decoded, out.per_image()):
            yield path, (answer(self.model, ImageResult(image, inferred)), image)


class Remote:
    """A running server: one ``POST /predict`` per image; the picture is decoded here as the
    server decodes it (Pillow, EXIF orientation applied)."""

    batch = 1

    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        from maskrt.errors import MaskrtError

        headers = {"X-API-Key": args.api_key} if args.api_key else {}
        self.url = args.url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=120)
        threshold = args.score_threshold
        self.params = {} if threshold is None else {"score_threshold": threshold}
        try:
            self.client.get("/healthz").raise_for_status()
        except httpx.HTTPError as exc:
            raise MaskrtError(f"cannot reach the server at {self.url}: {exc}") from None

    def __call__(self, paths: list[Path]) -> Iterator[tuple[Path, tuple[dict, DecodedImage] | str]]:
        import httpx

        from maskrt.errors import MaskrtError
        from maskrt.runtime.decode import decode_image

        for path in paths:
            loaded = _load(path, functools.partial(decode_image, max_pixels=1 << 62))
            if isinstance(loaded, str):
                yield path, loaded
                continue
            data, image = loaded
            try:
                r = self.client.post(
                    "/predict", files={"image": (path.name, data)}, params=self.params
                )
            except httpx.HTTPError as exc:
                raise MaskrtError(f"{path}: no answer from {self.url}: {exc}") from None
            if r.status_code == 200:
                yield path, (r.json(), image)
            else:
                yield path, f"{path}: the server answered {r.status_code}: {_error_text(r)}"


def _error_text(response) -> str:
    """``code: message`` of the server's error JSON, else the start of the body."""
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase
