"""``maskrt predict``: overlay pictures and JSON answers for image files.

The model runs here, through :class:`~maskrt.server.pipeline.Pipeline` on any backend (the same
flags as ``maskrt serve``), or a running server answers (``--url``). For each ``IMAGE`` it writes
``OUT/<stem>.json`` (the ``POST /predict`` answer) and ``OUT/<stem>.png`` (``.jpg`` for a JPEG) with
the detections drawn by :func:`maskrt.server.overlay.draw_overlay`. An image that cannot be read or
decoded is reported with its file name; the others are still written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Settings the local run takes (``--url`` asks a server, which has its own).
LOCAL_SETTINGS = ("model", "backend", "device", "max_batch", "cache_dir", "engine_precision")
JPEG_FORMATS = ("JPEG", "MPO")


def register(sub: argparse._SubParsersAction) -> None:
    from maskrt.server.cli import add_settings_flags

    p = sub.add_parser(
        "predict",
        help="draw the detections of images (overlay pictures and JSON answers)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
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
    add_settings_flags(p, ("score_threshold", *LOCAL_SETTINGS))
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
        answerer = _remote(args)
    else:
        answerer = _local(args)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tqdm(total=len(args.images), unit="image", disable=len(args.images) < 2) as bar:
        for chunk in _chunks(args.images, answerer.batch):
            for path, result, image in answerer(list(_read(chunk))):
                if isinstance(result, str):
                    failed += 1
                    tqdm.write(f"maskrt: error: {result}", file=sys.stderr)
                else:
                    _write(args.out, path, result, image)
                bar.update()
    written = len(args.images) - failed
    print(f"{written} of {len(args.images)} images written to {args.out}/", file=sys.stderr)
    return 2 if failed else 0


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read(paths: list[Path]) -> Iterator[tuple[Path, bytes | str]]:
    for path in paths:
        try:
            yield path, path.read_bytes()
        except OSError as exc:
            yield path, f"{path}: {exc.strerror or exc}"


def _write(out: Path, path: Path, answer: dict, image) -> None:
    """``<stem>.json`` and the overlay, ``<stem>.jpg`` for a JPEG, else ``<stem>.png``."""
    from maskrt.server.overlay import draw_overlay

    (out / f"{path.stem}.json").write_text(json.dumps(answer, indent=1) + "\n")
    picture = draw_overlay(image.tensor.permute(1, 2, 0).cpu().numpy(), answer["detections"])
    if image.format in JPEG_FORMATS:
        picture.save(out / f"{path.stem}.jpg", quality=92)
    else:
        picture.save(out / f"{path.stem}.png", optimize=True)


def _decode(path: Path, data: bytes, decode) -> tuple[object | None, str | None]:
    from maskrt.server.errors import ApiError

    try:
        return decode(data, name=str(path)), None
    except ApiError as exc:
        return None, exc.message


class _local:
    """The model in this process: images in batches of ``--max-batch`` through the pipeline."""

    def __init__(self, args: argparse.Namespace) -> None:
        from maskrt.server.backends import open_backend
        from maskrt.server.cli import settings_from_args
        from maskrt.server.pipeline import Pipeline

        self.settings = settings_from_args(args)
        self.pipeline = Pipeline(open_backend(self.settings))
        self.batch = self.pipeline.max_batch

    def __call__(self, items):
        from maskrt.server.pipeline import PostOptions, answer

        decoded, failures = [], []
        for path, data in items:
            if isinstance(data, str):
                failures.append((path, data, None))
                continue
            image, problem = _decode(
                path,
                data,
                lambda d, name: self.pipeline.decode(
                    d, max_pixels=self.settings.max_image_pixels, name=name
                ),
            )
            if problem:
                failures.append((path, problem, None))
            else:
                decoded.append((path, image))
        yield from failures
        if not decoded:
            return
        out = self.pipeline.run_batch(
            [image.tensor for _, image in decoded], PostOptions(self.settings.score_threshold)
        )
        for (path, image), detections in zip(decoded, out.detections):
            yield path, answer(self.pipeline.model_ref, image, detections, 0.0, out), image


class _remote:
    """A running server: one ``POST /predict`` per image; the picture is decoded here as the
    server decodes it (Pillow, EXIF orientation applied)."""

    batch = 1

    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        from maskrt.errors import MaskrtError

        headers = {"X-API-Key": args.api_key} if args.api_key else {}
        self.url = args.url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=120)
        self.params = (
            {} if args.score_threshold is None else {"score_threshold": args.score_threshold}
        )
        try:
            self.client.get("/healthz").raise_for_status()
        except httpx.HTTPError as exc:
            raise MaskrtError(f"cannot reach the server at {self.url}: {exc}") from None

    def __call__(self, items):
        import httpx

        from maskrt.errors import MaskrtError
        from maskrt.server.decode import decode_image

        for path, data in items:
            if isinstance(data, str):
                yield path, data, None
                continue
            image, problem = _decode(
                path, data, lambda d, name: decode_image(d, max_pixels=1 << 62, name=name)
            )
            if problem:
                yield path, problem, None
                continue
            try:
                r = self.client.post(
                    "/predict", files={"image": (path.name, data)}, params=self.params
                )
            except httpx.HTTPError as exc:
                raise MaskrtError(f"{path}: no answer from {self.url}: {exc}") from None
            if r.status_code == 200:
                yield path, r.json(), image
            else:
                yield path, f"{path}: the server answered {r.status_code}: {_error_text(r)}", None


def _error_text(response) -> str:
    """``code: message`` of the server's error JSON, else the start of the body."""
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase
