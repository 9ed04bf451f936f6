"""``maskrt serve``: the HTTP server (uvicorn) with flags named as the settings.

Every setting of :class:`~maskrt.server.settings.Settings` is a flag (``--max-batch 8``) and an
environment variable (``MASKRT_MAX_BATCH=8``); flags win. With no argument it serves the bundled
shapes model on whatever device exists.
"""

from __future__ import annotations

import argparse
import socket
import typing

_HELP_TYPES: dict[object, str] = {int: "N", float: "X"}


def register(sub: argparse._SubParsersAction) -> None:
    from maskrt.server.settings import Settings

    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (FastAPI + dynamic batching)",
        description="Serve a model over HTTP. Every flag is also an environment variable "
        "MASKRT_<NAME> (flags win).",
    )
    add_settings_flags(p, Settings.model_fields)
    p.set_defaults(func=_serve)


def add_settings_flags(p: argparse.ArgumentParser, names) -> None:
    """One flag per setting of ``names`` (``--max-batch``), its help naming the variable and
    the default."""
    from maskrt.server.settings import Settings, flag_name

    for name in names:
        field = Settings.model_fields[name]
        text = field.description or ""
        default = field.get_default(call_default_factory=True)
        if default not in (None, False, []) and "default:" not in text:
            text += f" (default: {default}; env MASKRT_{name.upper()})"
        else:
            text += f" (env MASKRT_{name.upper()})"
        kwargs: dict = {"dest": name, "default": None, "help": text}
        annotation = _without_none(field.annotation)
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = list(args)
        elif annotation is int or annotation is float:
            kwargs["type"] = annotation
            kwargs["metavar"] = _HELP_TYPES[annotation]
        elif annotation is bool:
            kwargs.update(action="store_const", const=True)
        p.add_argument(flag_name(name), **kwargs)


def _without_none(annotation: object) -> object:
    """``int`` for ``int | None``: the type a given flag has."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(annotation) else annotation


def settings_from_args(args: argparse.Namespace):
    """Settings from the flags given (over the environment, over the defaults)."""
    from pydantic import ValidationError

    from maskrt.errors import MaskrtError
    from maskrt.server.settings import Settings, flag_name

    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err.get("loc"):  # a rule between settings
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            name = str(err["loc"][0])
            where = flag_name(name) if name in given else f"MASKRT_{name.upper()}"
            problems.append(f"{where}: {err['msg']}")
        raise MaskrtError("invalid settings: " + "; ".join(problems)) from None


def serve_metrics(registry, host: str, port: int) -> None:
    """``/metrics`` of ``registry`` on its own port (a daemon thread of prometheus_client)."""
    from prometheus_client import start_http_server

    from maskrt.errors import MaskrtError

    try:
        start_http_server(port, host, registry=registry)
    except OSError as exc:
        raise MaskrtError(f"cannot serve metrics on {host}:{port}: {exc}") from None


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything slow starts: a port in use is a user error at
    once (exit status 2), not a failure after the model has loaded."""
    from maskrt.errors import MaskrtError

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MaskrtError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server may be using "
            f"it; choose another with --port or MASKRT_PORT)"
        ) from None
    return sock


def _serve(args: argparse.Namespace) -> int:
    import signal
    import sys

    import uvicorn
    from PIL import Image

    from maskrt.runtime.backends import check_model
    from maskrt.runtime.decode import ignore_expected_warnings
    from maskrt.server.app import create_app
    from maskrt.server.logging import configure_logging
    from maskrt.server.protocol import ConnectionLimits, protocol_factory, raise_open_file_limit

    settings = settings_from_args(args)
    configure_logging(settings.log_format, settings.log_level)
    ignore_expected_warnings()
    check_model(settings)  # a missing file or impossible combination fails now, not after start
    sock = listening_socket(settings.host, settings.port)
    # Pillow's own bomb check must not undercut ours (decode.py checks max_image_pixels first).
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, settings.max_image_pixels)

    exit_code = 0
    server: uvicorn.Server | None = None

    def fatal(exc: BaseException) -> None:
        nonlocal exit_code
        exit_code = 3
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=fatal)
    state = app.state.maskrt
    if settings.metrics_port is not None:
        serve_metrics(state.metrics.registry, settings.host, settings.metrics_port)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            state.begin_drain()  # /readyz 503 at once; queued requests still finish
            super().handle_exit(sig, frame)

    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        max_connections=raise_open_file_limit(settings.max_connections),
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_factory(limits),
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 10,
        lifespan="on",
    )
    server = Server(config)

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
