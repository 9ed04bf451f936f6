"""``maskrt serve``: the HTTP server (uvicorn) with flags named as the settings.

Every setting of :class:`~maskrt.server.settings.Settings` is a flag (``--max-batch 8``) and an
environment variable (``MASKRT_MAX_BATCH=8``); flags win. With no argument it serves the bundled
shapes model on whatever device exists.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator

from maskrt.errors import MaskrtError
from maskrt.runtime.options import add_flags, from_flags


def register(sub: argparse._SubParsersAction) -> None:
    from maskrt.server.settings import Settings

    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (FastAPI + dynamic batching)",
        description="Serve a model over HTTP. Every flag is also an environment variable "
        "MASKRT_<NAME> (flags win).",
    )
    add_flags(p, Settings.model_fields, Settings)
    p.set_defaults(func=_serve)


def listening_socket(host: str, port: int, setting: str = "port") -> socket.socket:
    """The server's socket (or that of the ``setting`` port), bound before anything slow starts: a
    port in use is a user error at once (exit status 2), not a failure after the model has
    loaded."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MaskrtError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server may be using "
            f"it; choose another with --{setting.replace('_', '-')} or MASKRT_{setting.upper()})"
        ) from None
    return sock


def _serve(args: argparse.Namespace) -> int:
    from maskrt.runtime.backends import check_model, check_model_file
    from maskrt.server.settings import Settings

    # the mistakes a flag can hold, before anything imports torch (exit 2 in well under a second):
    # values, names, files, ports; then what needs torch (the checkpoint's class count, the device)
    settings = from_flags(args, Settings)
    if settings.model_repository is not None:
        from maskrt.runtime.repository import scan

        scan(settings.model_repository)  # a folder that is not there; its models are checked later
    else:
        check_model_file(settings)
    sock = listening_socket(settings.host, settings.port)
    metrics_sock = None
    if settings.metrics_port is not None:
        metrics_sock = listening_socket(settings.host, settings.metrics_port, "metrics_port")
    if settings.grpc_port:  # in use is an error now; grpcio binds it itself, later
        listening_socket(settings.host, settings.grpc_port, "grpc_port").close()

    import asyncio
    import contextlib
    import signal
    import sys

    import uvicorn
    from grpc import aio as grpc_aio

    from maskrt.runtime.local import LocalDataPlane
    from maskrt.runtime.models import ModelSet
    from maskrt.runtime.statistics import Statistics
    from maskrt.server.app import create_app
    from maskrt.server.grpc_service import create_server
    from maskrt.server.logging import configure_logging
    from maskrt.server.protocol import ConnectionLimits, protocol_factory, raise_open_file_limit
    from maskrt.server.routes.probes import create_metrics_app

    configure_logging(settings.log_format, settings.log_level)
    if settings.model_repository is None:
        check_model(settings)  # the class count and the device, before the server starts

    exit_code = 0
    server: uvicorn.Server | None = None

    def fatal(exc: BaseException) -> None:
        nonlocal exit_code
        exit_code = 3
        if server is not None:
            server.should_exit = True

    def models(stats: Statistics) -> ModelSet:
        return ModelSet(settings, stats, on_fatal=fatal)

    def data_plane(stats: Statistics) -> LocalDataPlane:  # stats: its model's metrics
        return LocalDataPlane(settings, stats, on_fatal=fatal)

    if settings.model_repository is not None:
        app = create_app(settings, models=models)
    else:
        app = create_app(settings, data_plane=data_plane)
    state = app.state.maskrt
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        max_connections=raise_open_file_limit(settings.max_connections),
    )

    def config(app, **kwargs) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            http=protocol_factory(limits),
            log_config=None,
            access_log=False,
            # X-Forwarded-* only from the configured proxies (uvicorn's default believes 127.0.0.1)
            proxy_headers=bool(settings.forwarded_allow_ips),
            forwarded_allow_ips=settings.forwarded_allow_ips or "",
            server_header=False,
            **kwargs,
        )

    class MetricsServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the signals are the main server's, which stops this one once it has stopped

    # the metrics port: its own uvicorn server on the same event loop, with the same protocol
    metrics_server = MetricsServer(
        config(create_metrics_app(state), lifespan="off", timeout_graceful_shutdown=1)
    )

    class Server(uvicorn.Server):
        grpc: grpc_aio.Server | None = None

        def handle_exit(self, sig, frame) -> None:
            state.models.begin_drain()  # /readyz 503 at once; queued requests still finish
            super().handle_exit(sig, frame)

        async def serve(self, sockets=None) -> None:
            """The main port; the gRPC port and the metrics port beside it (bound before the
            model loads), until the main one has stopped."""
            if settings.grpc_port:
                self.grpc = create_server(state)
                host = f"[{settings.host}]" if ":" in settings.host else settings.host
                self.grpc.add_insecure_port(f"{host}:{settings.grpc_port}")
                await self.grpc.start()
            if metrics_sock is None:
                await super().serve(sockets)
                return
            beside = asyncio.create_task(metrics_server.serve([metrics_sock]))
            try:
                await super().serve(sockets)
            finally:
                metrics_server.should_exit = True
                await beside

        async def _wait_tasks_to_complete(self) -> None:
            """Once the HTTP requests are answered, the gRPC calls (their port took none since
            the drain began: the data plane answers UNAVAILABLE), before the model stops."""
            await super()._wait_tasks_to_complete()
            if self.grpc is not None:
                await self.grpc.stop(grace=settings.request_timeout_s)

    server = Server(
        config(
            app,
            timeout_graceful_shutdown=int(settings.request_timeout_s) + 10,
            lifespan="on",
        )
    )

    def exit_cleanly(sig, frame) -> None:  # uvicorn re-raises the signal once it has shut down
        raise SystemExit(exit_code)

    signal.signal(signal.SIGTERM, exit_cleanly)
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        return int(exc.code or 0)
    if not server.started and exit_code == 0:
        print("maskrt: error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return exit_code
