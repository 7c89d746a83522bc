"""``kmflow serve``: the registry's champion models over HTTP (FastAPI on uvicorn).

Registered on the main application by :mod:`kmflow.cli`. Everything a user can get wrong (no
API key, a model that is not registered, a port in use, a bad ``KMFLOW_SERVE__*`` variable)
is one line and exit code 2 before the server starts.
"""

from __future__ import annotations

import errno
import socket
from typing import Annotated, Any

import typer

__all__ = ["register", "serve"]


def _base() -> Any:
    from kmflow import cli

    return cli


def _check_port(host: str, port: int) -> None:
    """Fail now, in one line, if `host`:`port` cannot be listened on."""
    from kmflow.errors import InvalidInputError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc})"
            raise InvalidInputError(f"{host}:{port} {why}: choose another --host/--port") from None


def serve(
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            "-m",
            help="Model names to serve (repeat, or separate with commas). Default: "
            "KMFLOW_SERVE__MODELS, or every model in the registry.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Serve without API keys (otherwise one of KMFLOW_SERVE__API_KEYS is "
            "required on /v1 and /metrics).",
        ),
    ] = False,
    registry: Annotated[
        str | None, typer.Option(help="Registry path or URL. Default: KMFLOW_REGISTRY__URL.")
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="uvicorn's log level: critical, error, warning, info, debug.")
    ] = "info",
) -> None:
    """Serve the champion of every model over HTTP; a promotion is served within seconds.

    Routes: /healthz and /readyz (no key), /v1/models, /v1/models/NAME,
    POST /v1/models/NAME/predict, POST /v1/models/NAME/quantize, /metrics, OpenAPI at /docs.
    Clients send 'Authorization: Bearer KEY' with a key of KMFLOW_SERVE__API_KEYS.
    """
    cli = _base()
    from kmflow.errors import KmflowError, ModelNotFoundError

    names = [n.strip() for item in models or () for n in item.split(",") if n.strip()]
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="'--log-level'")
    settings = cli._settings()
    try:
        if not no_auth and not settings.serve.api_keys:
            from kmflow.errors import InvalidInputError

            raise InvalidInputError(
                "no API keys: set KMFLOW_SERVE__API_KEYS to a JSON list of secrets (16 "
                "characters or more), or pass --no-auth explicitly"
            )
        reg = cli._registry(registry)
        for name in names or settings.serve.models:
            if not reg.versions(name):
                known = ", ".join(reg.names()) or "none"
                raise ModelNotFoundError(
                    f"model {name!r} is not in the registry {reg.url} (models there: {known})"
                )
        _check_port(host, port)
        import uvicorn

        from kmflow.serve import create_app

        app = create_app(settings, registry=reg, models=names or None, auth=not no_auth)
    except KmflowError as exc:
        cli._fail(exc)
    cli.console.print(
        f"kmflow serve: http://{host}:{port} ({'no auth' if no_auth else 'API keys required'}; "
        f"models: {', '.join(names) if names else 'every model in ' + reg.url})",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        server_header=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the main application."""
    app.command("serve")(serve)
