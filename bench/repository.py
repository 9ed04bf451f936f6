"""Model repository benchmark: issue #28's goals, against a ``maskrt serve --model-repository`` it
starts on 127.0.0.1 over a temporary repository of models ``a`` and ``b`` (copies of one
checkpoint, version ``1`` each).

1. swap: ``--swap-concurrency`` clients (8) post to model ``a`` for ``--swap-seconds`` (60); half
   way, a version folder ``a/2/`` is moved into place and ``POST /v2/repository/models/a/load``
   swaps it in while the load runs on. Version 2 holds new weights (the checkpoint with every
   weight nudged: its export is not cached, as a new version's is not), or with
   ``--same-weights`` a copy. Printed: failed requests (goal 0), p99 of the steady window (requests
   that ended between the warm-up and the load call) and of the swap window (those that ended
   from the load call to ``--swap-window-s`` (5) after it returned; the load runs on until that
   window has passed), their ratio (goal <= 2), and the version answering before and after.
2. unload RSS: the server's RSS (``VmRSS``) before model ``c`` is loaded, after its load and
   ``--rss-seconds`` of requests to it (``--mixed-concurrency`` clients), and after its unload;
   goal: after the unload within 10 % of before the load.
3. mixed: throughput of ``a`` alone, of ``b`` alone, each at ``--mixed-concurrency`` (4) for
   ``--mixed-seconds``, then of both at once at that concurrency each, ``--mixed-rounds`` times
   in turn (so that a shared machine's drifting load falls on all three alike); goal: each
   model's mixed throughput within 15 % of half its solo throughput.

Every request is the same image (``--image``, default a shapes sample) with the same
``--score-threshold``. Each phase prints its goal line (met / not met); ``--json`` writes the
figures. Exits 1 when a request failed (an answer other than 200), a repository call failed or the
server died; a goal not met is reported, not an error.

    maskrt bench repository
    maskrt bench repository --swap-seconds 10 --rss-seconds 2 --mixed-seconds 5 -- --backend torch

Flags after ``--`` go to ``maskrt serve``; ``MASKRT_*`` variables apply to it as usual.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from maskrt.bench.load import LevelResult, LoadClient, default_image, percentile, wait_ready
from maskrt.bench.resilience import Served, error_lines
from maskrt.errors import MaskrtError

SWAP_P99_GOAL = 2.0  # p99 during the swap / steady p99
RSS_GOAL = 0.10  # |RSS after the unload - before the load| / before the load
MIXED_GOAL = 0.15  # |mixed throughput - solo / 2| / (solo / 2), each model
MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".plan", ".engine")


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def add_version(
    root: Path, model_file: Path, name: str, version: int, retrained: bool = False
) -> Path:
    """Copy ``model_file`` to ``root/name/version/`` (the repository's layout); ``retrained``:
    a checkpoint of new weights instead (:func:`retrain`)."""
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    if retrained and model_file.suffix.lower() in (".pt", ".pth"):
        return retrain(model_file, folder / model_file.name)
    return Path(shutil.copy2(model_file, folder / model_file.name))


def retrain(checkpoint: Path, dest: Path) -> Path:
    """``checkpoint`` with every weight nudged by a seeded 0.1 %, saved to ``dest``: new weights
    as a week of training gives them (same layout, a new digest), so that the server pays what a
    real new version costs, its export and engine build included, which a copy finds cached."""
    import torch

    from maskrt.model.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in loaded.model.parameters():
            weight.mul_(1 + 1e-3 * torch.randn(weight.shape, generator=generator))
    provenance = {"retrained_by": "maskrt bench repository", "from": loaded.sha256}
    return save_checkpoint(dest, loaded.model, loaded.config, provenance)


class Repository:
    """The server's repository calls and the answering version, over one HTTP client."""

    def __init__(self, url: str, image: bytes, content_type: str, threshold: float) -> None:
        self.http = httpx.Client(base_url=url, timeout=600, trust_env=False)
        self.image = (image, content_type)
        self.threshold = threshold
        self.failures: list[str] = []

    def call(self, model: str, action: str) -> bool:
        """``POST /v2/repository/models/{model}/{action}``; False (and a failure noted) unless
        200."""
        r = self.http.post(f"/v2/repository/models/{model}/{action}")
        if r.status_code != 200:
            self.failures.append(f"{action} {model}: HTTP {r.status_code} {r.text[:300]}")
            print(f"  {self.failures[-1]}", flush=True)
        return r.status_code == 200

    def answering_version(self, model: str) -> str:
        """The repository version named by a ``/predict`` answer of ``model``."""
        files = {"image": ("image", *self.image)}
        params = {"model": model, "score_threshold": str(self.threshold)}
        r = self.http.post("/predict", files=files, params=params)
        if r.status_code != 200:
            self.failures.append(f"/predict?model={model}: HTTP {r.status_code} {r.text[:300]}")
            return f"HTTP {r.status_code}"
        return str(r.json()["model"]["model_version"])

    def versions(self, model: str) -> list[str]:
        """The versions of ``model`` the repository index lists as loaded."""
        rows = self.http.post("/v2/repository/index").json()
        return [r["version"] for r in rows if r["name"] == model and r.get("version")]


# ---------------------------------------------------------------------------------------------
# 1. A version swap under load


@dataclasses.dataclass
class SwapResult:
    concurrency: int
    seconds: float
    requests: int  # warm-up included
    failed: dict[str, int]  # by status, warm-up included
    steady_requests: int
    steady_p99_ms: float
    swap_requests: int
    swap_p99_ms: float
    swap_max_ms: float
    ratio: float  # swap p99 / steady p99
    load_s: float  # the load call, from request to answer
    loaded: bool  # the load call answered 200
    version_before: str
    version_after: str
    versions_after: list[str]  # loaded, per the repository index

    @property
    def met(self) -> bool:
        return (
            not self.failed
            and self.ratio <= SWAP_P99_GOAL
            and self.loaded
            and self.version_after == "2"
        )


Sample = tuple[float, float, int | str]  # end time, latency (s), status


async def _swap_load(
    client: LoadClient,
    concurrency: int,
    warmup_s: float,
    seconds: float,
    window_s: float,
    swap: Callable[[], Awaitable[bool]],
) -> tuple[list[Sample], float, float, float, bool]:
    """Clients post in a closed loop for ``warmup_s + seconds`` (at least until ``window_s``
    after the swap ended); ``swap`` is called half way. Returns the samples, the time the
    warm-up ended, the swap started and ended, and the swap's outcome."""
    measured = time.perf_counter() + warmup_s
    end = measured + seconds
    samples: list[Sample] = []
    marks: list[float] = []
    loaded = False

    async def worker(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < end:
            latency, status = await client.one(http)
            samples.append((time.perf_counter(), latency, status))

    async def swapper() -> None:
        nonlocal end, loaded
        await asyncio.sleep(warmup_s + seconds / 2)
        marks.append(time.perf_counter())
        loaded = await swap()
        marks.append(time.perf_counter())
        end = max(end, marks[1] + window_s)

    async with client.client(concurrency) as http:
        await asyncio.gather(swapper(), *(worker(http) for _ in range(concurrency)))
    return samples, measured, marks[0], marks[1], loaded


def swap(
    server: Served, repository: Repository, root: Path, model_file: Path, args: argparse.Namespace
) -> SwapResult:
    before = repository.answering_version("a")
    client = _client(server, repository, "a", args)
    # made before the load runs, moved into place at the swap (as docs/scaling.md publishes)
    staged = add_version(root / ".staging", model_file, "a", 2, retrained=not args.same_weights)

    async def load_version_2() -> bool:
        staged.parent.rename(root / "a" / "2")
        return await asyncio.to_thread(repository.call, "a", "load")

    samples, measured, t0, t1, loaded = asyncio.run(
        _swap_load(
            client,
            args.swap_concurrency,
            args.warmup,
            args.swap_seconds,
            args.swap_window_s,
            load_version_2,
        )
    )
    failed: dict[str, int] = {}
    for _, _, status in samples:
        if status != 200:
            failed[str(status)] = failed.get(str(status), 0) + 1

    def window(start: float, stop: float) -> list[float]:
        """Latencies (ms) of the requests answered between ``start`` and ``stop``."""
        return [lat * 1000 for end, lat, s in samples if s == 200 and start <= end < stop]

    steady, during = window(measured, t0), window(t0, t1 + args.swap_window_s)
    steady_p99, swap_p99 = percentile(steady, 99), percentile(during, 99)
    return SwapResult(
        args.swap_concurrency,
        args.swap_seconds,
        len(samples),
        failed,
        len(steady),
        steady_p99,
        len(during),
        swap_p99,
        max(during, default=math.nan),
        swap_p99 / steady_p99,
        t1 - t0,
        loaded,
        before,
        repository.answering_version("a"),
        repository.versions("a"),
    )


def print_swap(r: SwapResult, window_s: float) -> None:
    failed = sum(r.failed.values())
    print(
        f"  {r.requests} requests at concurrency {r.concurrency}, {failed} failed"
        f"{f' {r.failed}' if r.failed else ''}; load call {r.load_s:.2f} s"
        f"{'' if r.loaded else ' (FAILED)'}",
        flush=True,
    )
    print(
        f"  p99 steady {r.steady_p99_ms:.0f} ms ({r.steady_requests} requests), during the swap "
        f"{r.swap_p99_ms:.0f} ms ({r.swap_requests} requests to {window_s:g} s after the load "
        f"answered; max {r.swap_max_ms:.0f} ms)",
        flush=True,
    )
    print(
        f"  version answering: {r.version_before} before, {r.version_after} after; loaded "
        f"after: {', '.join(r.versions_after) or 'none'}",
        flush=True,
    )
    print(
        f"  goal: 0 failed and p99 during the swap <= {SWAP_P99_GOAL:g}x steady: "
        f"{failed} failed, {r.ratio:.2f}x: {met(r.met)}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# 2. RSS after an unload


@dataclasses.dataclass
class RssResult:
    before_load_mb: float
    after_load_mb: float
    after_requests_mb: float
    after_unload_mb: float
    requests: int
    failed: int
    change: float  # (after unload - before load) / before load
    returned: float  # share of what the load and the requests took that the unload gave back
    unloaded: bool

    @property
    def met(self) -> bool:
        return self.unloaded and abs(self.change) <= RSS_GOAL


def unload_rss(
    server: Served, repository: Repository, root: Path, model_file: Path, args
) -> RssResult:
    time.sleep(args.settle_s)
    before = server.rss_mb()
    add_version(root, model_file, "c", 1)
    loaded = repository.call("c", "load")
    after_load = server.rss_mb()
    client = _client(server, repository, "c", args)

    async def serve_c() -> list[tuple[float, int | str]]:
        async with client.client(args.mixed_concurrency) as http:
            return await client.closed_loop(http, args.mixed_concurrency, args.rss_seconds)

    samples = asyncio.run(serve_c()) if loaded else []
    after_requests = server.rss_mb()
    unloaded = repository.call("c", "unload")
    time.sleep(args.settle_s)
    after = server.rss_mb()
    took = after_requests - before
    return RssResult(
        before,
        after_load,
        after_requests,
        after,
        len(samples),
        sum(s != 200 for _, s in samples),
        (after - before) / before,
        (after_requests - after) / took if took > 0 else math.nan,
        loaded and unloaded,
    )


def print_rss(r: RssResult) -> None:
    print(
        f"  RSS {r.before_load_mb:.0f} MB before the load, {r.after_load_mb:.0f} MB after it, "
        f"{r.after_requests_mb:.0f} MB after {r.requests} requests ({r.failed} failed), "
        f"{r.after_unload_mb:.0f} MB after the unload (gave back {r.returned * 100:.0f} % of what "
        f"the model took)",
        flush=True,
    )
    print(
        f"  goal: after the unload within {RSS_GOAL * 100:.0f} % of before the load: "
        f"{r.change * 100:+.1f} %: {met(r.met)}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# 3. Two models under mixed load


@dataclasses.dataclass
class MixedResult:
    """Each round: ``a`` alone, ``b`` alone, both at once; per model and run, a level per
    round."""

    concurrency: int
    seconds: float
    solo: dict[str, list[LevelResult]]
    mixed: dict[str, list[LevelResult]]

    def share(self, name: str) -> float:
        """Mixed throughput / half the solo throughput, over all rounds."""
        return throughput(self.mixed[name]) / (throughput(self.solo[name]) / 2)

    @property
    def met(self) -> bool:
        return all(abs(self.share(n) - 1) <= MIXED_GOAL for n in self.solo)

    @property
    def failed(self) -> int:
        runs = [*self.solo.values(), *self.mixed.values()]
        return sum(sum(level.errors.values()) for levels in runs for level in levels)

    def as_dict(self) -> dict:
        def levels(run: dict[str, list[LevelResult]]) -> dict:
            return {n: [dataclasses.asdict(r) for r in rounds] for n, rounds in run.items()}

        return {
            "concurrency": self.concurrency,
            "seconds": self.seconds,
            "rounds": len(next(iter(self.solo.values()))),
            "solo": levels(self.solo),
            "mixed": levels(self.mixed),
            "solo_throughput": {n: throughput(r) for n, r in self.solo.items()},
            "mixed_throughput": {n: throughput(r) for n, r in self.mixed.items()},
            "share_of_half_solo": {n: self.share(n) for n in self.solo},
            "met": self.met,
        }


def throughput(levels: list[LevelResult]) -> float:
    """Answered requests per second over several runs."""
    return sum(level.ok for level in levels) / sum(level.seconds for level in levels)


def mixed(server: Served, repository: Repository, args: argparse.Namespace) -> MixedResult:
    """``--mixed-rounds`` rounds, so that the solo and mixed runs see the same drift of a shared
    machine's load."""
    clients = {n: _client(server, repository, n, args) for n in ("a", "b")}
    c, seconds, warmup = args.mixed_concurrency, args.mixed_seconds, args.warmup
    result = MixedResult(c, seconds, {n: [] for n in clients}, {n: [] for n in clients})

    async def both() -> list[LevelResult]:
        return await asyncio.gather(
            *(client.level(c, seconds, warmup) for client in clients.values())
        )

    for _ in range(args.mixed_rounds):
        for name, client in clients.items():
            result.solo[name].append(asyncio.run(client.level(c, seconds, warmup)))
        for name, level in zip(clients, asyncio.run(both())):
            result.mixed[name].append(level)
    return result


def print_mixed(r: MixedResult) -> None:
    for name in r.solo:
        solo, mix = r.solo[name], r.mixed[name]
        print(
            f"  {name}: alone {throughput(solo):.1f} req/s (rounds: "
            f"{', '.join(f'{x.throughput:.1f}' for x in solo)}), beside the other "
            f"{throughput(mix):.1f} req/s ({', '.join(f'{x.throughput:.1f}' for x in mix)}): "
            f"{r.share(name):.2f}x half its solo throughput",
            flush=True,
        )
    shares = ", ".join(f"{n} {r.share(n):.2f}x" for n in r.solo)
    print(
        f"  goal: each within {MIXED_GOAL * 100:.0f} % of half its solo throughput "
        f"({r.failed} failed): {shares}: {met(r.met)}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# Entry point


def _client(server: Served, repository: Repository, model: str, args) -> LoadClient:
    """The load generator for ``model``: the image and threshold every phase sends."""
    params = {"model": model, "score_threshold": str(args.score_threshold)}
    image, content_type = repository.image
    return LoadClient(
        server.url, image, content_type, params, {}, args.request_timeout, scrape_metrics=False
    )


def model_file(path: str | None) -> Path:
    """``--model``, else the bundled checkpoint."""
    if path is None:
        from maskrt.model.checkpoint import default_checkpoint

        return default_checkpoint()
    file = Path(path)
    if not file.is_file():
        raise MaskrtError(f"--model {file}: no such file")
    if file.suffix.lower() not in MODEL_SUFFIXES:
        raise MaskrtError(
            f"--model {file}: not a model file of a repository (one of {', '.join(MODEL_SUFFIXES)})"
        )
    return file


def read_image(path: str | None) -> tuple[bytes, str]:
    if path is None:
        return default_image()
    file = Path(path)
    if not file.is_file():
        raise MaskrtError(f"--image {file}: no such file")
    types = {".png": "image/png", ".webp": "image/webp"}
    return file.read_bytes(), types.get(file.suffix.lower(), "image/jpeg")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskrt bench repository",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", help="checkpoint or export to copy (default: the bundled model)")
    p.add_argument("--image", help="image file to send (default: a shapes sample as JPEG)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="sent with every request")
    p.add_argument("--swap-seconds", type=float, default=60.0, help="load of the swap phase")
    p.add_argument("--swap-concurrency", type=int, default=8, help="clients of the swap phase")
    p.add_argument(
        "--same-weights",
        action="store_true",
        help="version 2 a copy of version 1 (its export cached) rather than new weights",
    )
    p.add_argument(
        "--swap-window-s", type=float, default=5.0, help="the swap window after the load answers"
    )
    p.add_argument("--rss-seconds", type=float, default=10.0, help="requests to model c")
    p.add_argument("--mixed-seconds", type=float, default=10.0, help="each mixed-phase run")
    p.add_argument("--mixed-concurrency", type=int, default=4, help="clients per model")
    p.add_argument("--mixed-rounds", type=int, default=3, help="rounds of solo, solo, mixed")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured load before each run")
    p.add_argument("--settle-s", type=float, default=2.0, help="wait before reading RSS")
    p.add_argument("--request-timeout", type=float, default=120.0, help="client timeout (s)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="wait for /readyz")
    p.add_argument("--log", help="server log file (default: a temporary file, printed)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- flags for maskrt serve")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    source = model_file(args.model)
    image, content_type = read_image(args.image)
    serve_args = [a for a in args.serve_args if a != "--"]
    log_path = Path(args.log or tempfile.mkstemp(prefix="maskrt-repository-", suffix=".log")[1])
    with tempfile.TemporaryDirectory(prefix="maskrt-repository-") as folder:
        root = Path(folder)
        for name in ("a", "b"):
            add_version(root, source, name, 1)
        server = Served(
            [
                *("--model-repository", str(root), "--default-model", "a"),
                *("--grpc-port", "0", "--log-format", "json", *serve_args),
            ],
            log_path,
        )
        print(f"server log: {log_path}", flush=True)
        repository = Repository(server.url, image, content_type, args.score_threshold)
        report: dict = {"model_file": str(source), "image_bytes": len(image)}
        failed = 0
        try:
            model = wait_ready(server.url, {}, args.ready_timeout)
            print(
                f"server {server.url} (pid {server.proc.pid}): models a, b (copies of {source.name})"
                f" on {model['backend']}/{model['device']}, max batch {model['max_batch']}; RSS "
                f"{server.rss_mb():.0f} MB; image {len(image)} bytes",
                flush=True,
            )
            report["server"] = model
            weights = "a copy of a/1" if args.same_weights else "new weights"
            print(
                f"swap: a/2 ({weights}) loaded under concurrency {args.swap_concurrency}",
                flush=True,
            )
            s = swap(server, repository, root, source, args)
            print_swap(s, args.swap_window_s)
            report["swap"] = {**dataclasses.asdict(s), "met": s.met}
            failed += sum(s.failed.values())
            print("unload RSS: model c loaded, served, unloaded", flush=True)
            r = unload_rss(server, repository, root, source, args)
            print_rss(r)
            report["unload_rss"] = {**dataclasses.asdict(r), "met": r.met}
            failed += r.failed
            print(
                f"mixed: a alone, b alone, then both, {args.mixed_seconds:g} s each, "
                f"{args.mixed_rounds} rounds",
                flush=True,
            )
            m = mixed(server, repository, args)
            print_mixed(m)
            report["mixed"] = m.as_dict()
            failed += m.failed
        finally:
            alive = server.proc.poll() is None
            code = server.stop()
            repository.http.close()
    errors = error_lines(log_path)
    report.update(failed=failed, repository_failures=repository.failures, log_errors=errors)
    print(
        f"total: {failed} failed requests, {len(repository.failures)} failed repository calls, "
        f"{len(errors)} error lines in the server log; server "
        f"{'alive until stopped' if alive else 'DIED'}, exit {code}",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}", flush=True)
    return 0 if not failed and not repository.failures and alive and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
