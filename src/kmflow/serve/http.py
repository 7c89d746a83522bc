"""HTTP plumbing of the service: problem answers, the body limit, API keys, Prometheus metrics.

Every error is a problem document (RFC 9457, ``application/problem+json``) with ``type``,
``title``, ``status`` and ``detail``; never a stack trace. The body limit is a pure ASGI
middleware: a declared ``Content-Length`` over the limit is refused before anything is read,
and a body sent without one (chunked) is counted while it is read and refused as soon as it
passes the limit.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from kmflow.errors import (
    ImageTooLargeError,
    InvalidInputError,
    KmflowError,
    ModelNotFoundError,
    StorageError,
)

__all__ = [
    "PROBLEM_JSON",
    "BodyLimit",
    "BodyTooLarge",
    "Instrument",
    "Metrics",
    "check_key",
    "install_problem_handlers",
    "problem",
]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def problem(
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem answer (RFC 9457): ``type`` is ``about:blank``, the title is the status'."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


class BodyTooLarge(HTTPException):
    """A request body over ``KMFLOW_SERVE__MAX_BODY_BYTES`` (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"request body is over the limit of {limit:,} bytes (KMFLOW_SERVE__MAX_BODY_BYTES)",
        )


def _status_of(exc: KmflowError) -> int:
    if isinstance(exc, ModelNotFoundError):
        return 404
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, InvalidInputError):
        return 422
    if isinstance(exc, StorageError):
        return 503
    return 500


def install_problem_handlers(app: Any) -> None:
    """Answer every error of `app` with a problem document."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))

    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", "")),
            }
            for error in exc.errors()[:20]
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"]) or "request"
        return problem(422, f"{where}: {first['msg']}", errors=errors)

    async def kmflow_error(request: Request, exc: KmflowError) -> JSONResponse:
        status = _status_of(exc)
        if status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc)
        return problem(status, str(exc))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return problem(500, "internal error; the service's log has the details")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(KmflowError, kmflow_error)
    app.add_exception_handler(Exception, unexpected)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, while they are read.

    A ``Content-Length`` over the limit is answered at once, nothing read; otherwise the
    bytes received are counted and :class:`BodyTooLarge` is raised from ``receive`` as soon
    as they pass the limit (FastAPI passes an HTTPException from body parsing through).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await problem(400, "Content-Length is not a number")(scope, receive, send)
                    return
                if declared > self.limit:
                    refusal = problem(413, BodyTooLarge(self.limit).detail)
                    await refusal(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kmflow_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.errors = Counter(
            "kmflow_http_errors",
            "HTTP requests answered with a 4xx or 5xx status.",
            ("route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "kmflow_http_request_duration_seconds",
            "Time from the request's arrival to the end of its answer.",
            ("method", "route"),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.version = Gauge(
            "kmflow_model_version_served",
            "The model version answering requests (the champion when it was last read).",
            ("model",),
            registry=self.registry,
        )
        self.rows = Counter(
            "kmflow_predicted_rows",
            "Rows (records, feature rows or pixels) assigned to a cluster.",
            ("model", "endpoint"),
            registry=self.registry,
        )
        self._served: set[str] = set()

    def set_versions(self, versions: Iterable[tuple[str, int]]) -> None:
        """The versions now in service (names no longer served are removed)."""
        wanted = dict(versions)
        for name in self._served - set(wanted):
            self.version.remove(name)
        for name, version in wanted.items():
            self.version.labels(model=name).set(version)
        self._served = set(wanted)


class Instrument:
    """Count every request and time it, labelled by its route template (bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()


def check_key(credentials: HTTPAuthorizationCredentials | None, keys: Iterable[bytes]) -> None:
    """Accept a request carrying one of `keys` as its bearer token; 401 otherwise.

    Every key is compared in constant time (and all of them, whatever matched), so the
    answer's timing says nothing about how much of a key was right.
    """
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(
            401, "missing API key: send 'Authorization: Bearer <key>'", headers=challenge
        )
    token = credentials.credentials.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    if not matched:
        raise HTTPException(401, "invalid API key", headers=challenge)
