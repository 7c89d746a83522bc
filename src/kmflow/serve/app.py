"""The FastAPI application of ``kmflow serve``: champions over HTTP.

Routes
------
``GET /healthz``
    The process is up (no key).
``GET /readyz``
    Every served name has a model loaded (no key); 503 with the reasons otherwise.
``GET /v1/models``, ``GET /v1/models/{name}``
    What is served: version, kind, k, metrics, parent.
``POST /v1/models/{name}/predict``
    ``{"records": [...]}`` (raw table records of a segments model, its stored preprocessing
    applied) or ``{"rows": [[...], ...]}`` (rows already in the centers' space) →
    ``{"segments": [...], "distances": [...] (with "distances": true), "version": N}``.
``POST /v1/models/{name}/quantize``
    Multipart field ``file``: an image → the PNG painted with the model's palette, or with
    the image's own ``k``-color palette given ``?k=N``.
``GET /metrics``
    Prometheus text format.

Every answer about a model carries ``X-Model-Version``. The work of a request (preprocessing,
the nearest center, decoding and painting) runs in a worker thread under the request timeout,
on the :class:`~kmflow.serve.champions.Served` version taken when the request arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, TypeVar

import anyio
import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

from kmflow import __version__
from kmflow.config import Settings, get_settings
from kmflow.core.jsonable import json_ready
from kmflow.core.model import NAME_PATTERN, ModelRecord
from kmflow.errors import InvalidInputError
from kmflow.serve.champions import Champions, Served
from kmflow.serve.http import (
    PROBLEM_JSON,
    BodyLimit,
    Instrument,
    Metrics,
    check_key,
    install_problem_handlers,
    problem,
)
from kmflow.storage.fs import storage_options_for
from kmflow.storage.registry import ModelRegistry

__all__ = ["PredictRequest", "PredictResponse", "create_app"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Largest number of records or rows in one predict request.
MAX_ROWS = 100_000


class PredictRequest(BaseModel):
    """Inputs to assign: raw records (segments models) or prepared feature rows (any model)."""

    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=MAX_ROWS,
        description=(
            "Table records with the model's raw columns (segments models); its stored "
            "preprocessing (encoding, imputation, scaling) is applied."
        ),
    )
    rows: list[list[FiniteFloat]] | None = Field(
        default=None,
        max_length=MAX_ROWS,
        description="Rows already in the centers' space, n_features numbers each.",
    )
    distances: bool = Field(
        default=False, description="Also answer each row's distance to its center."
    )

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        if (self.records is None) == (self.rows is None):
            raise ValueError("give exactly one of 'records' and 'rows'")
        if not (self.records if self.records is not None else self.rows):
            raise ValueError("no records or rows to assign")
        return self


class PredictResponse(BaseModel):
    model: str
    version: int
    segments: list[int] = Field(description="Each input's cluster (segment), in input order.")
    distances: list[float] | None = Field(
        default=None, description="Euclidean distance of each input to its cluster's center."
    )


class ModelInfo(BaseModel):
    name: str
    version: int
    kind: str
    k: int
    n_features: int
    created_at: str
    parent: int | None
    metrics: dict[str, Any]


class ModelDetail(ModelInfo):
    params: dict[str, Any]
    preprocessing: dict[str, Any]
    inputs: str = Field(description="What predict takes for this model.")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str


_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": text}
    for status, text in (
        (401, "No API key, or not one of the service's."),
        (404, "No such model is served."),
        (413, "The body or the image is over the limit."),
        (415, "The body is not JSON."),
        (422, "The input does not fit the model."),
        (503, "The request took longer than the timeout, or storage is unreachable."),
    )
}

ModelName = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=128, description="A registered model's name.")
]


def _info(record: ModelRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "version": record.version,
        "kind": record.kind,
        "k": record.n_clusters,
        "n_features": record.n_features,
        "created_at": record.created_at.isoformat(),
        "parent": record.parent,
        "metrics": json_ready(record.metrics),
    }


def _inputs_of(kind: str, n_features: int) -> str:
    if kind == "segments":
        return (
            f'{{"records": [{{column: value, ...}}, ...]}} with the raw columns, or '
            f'{{"rows": [[{n_features} numbers], ...]}} already prepared'
        )
    return f'{{"rows": [[{n_features} numbers], ...]}} in the centers\' space'


#: The predict body as OpenAPI shows it: parsed by pydantic's own JSON parser in the route
#: (five times faster than json.loads and validation on 1,000 rows), not by FastAPI.
_PREDICT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
}


async def _predict_request(request: Request) -> PredictRequest:
    """The request's body as a :class:`PredictRequest`; 415 unless it is JSON, 422 if invalid."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise HTTPException(415, "send the body as JSON (Content-Type: application/json)")
    try:
        return PredictRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def _assign(served: Served, body: PredictRequest) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest centers (and distances) of the request's inputs, on the version it took."""
    from kmflow.kernels.dense import nearest

    model = served.model
    if body.records is not None:
        if model.kind != "segments":
            raise InvalidInputError(
                f"model {served.name!r} is a {model.kind!r} model: send 'rows' of "
                f"{model.record.n_features} numbers, not 'records'"
            )
        X = np.asarray(model.transform(body.records), dtype=np.float64)
        if len(X) != len(body.records):  # a model fitted with missing="drop" drops such rows
            raise InvalidInputError(
                f"{len(body.records) - len(X)} of {len(body.records)} records have missing "
                "values, which this model's preprocessing drops (missing='drop'): fill them, "
                "or send prepared rows, so that every record gets its segment"
            )
    else:
        rows = body.rows or []
        n = model.record.n_features
        bad = next((i for i, row in enumerate(rows) if len(row) != n), None)
        if bad is not None:
            raise InvalidInputError(
                f"rows must have {n} numbers each (the model's features); row {bad} has "
                f"{len(rows[bad])}"
            )
        X = np.asarray(rows, dtype=np.float64).reshape(len(rows), n)
    if len(X) == 0:
        raise InvalidInputError("no rows are left to assign after preprocessing")
    with np.errstate(over="ignore"):
        overflow = ~np.isfinite(np.einsum("ij,ij->i", X, X))
    if overflow.any():
        raise InvalidInputError(
            f"row {int(np.argmax(overflow))} is too large: its squared distances overflow "
            "float64 (values up to about 1e150 can be assigned)"
        )
    labels = nearest(X, model.centers)
    if not body.distances:
        return labels, None
    diff = X - model.centers[labels]
    return labels, np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _quantize(served: Served, data: bytes, k: int | None, max_pixels: int) -> tuple[bytes, Any]:
    """Decode, paint with the model's palette (or the image's own k colors), encode."""
    from kmflow.jobs.palette import palette_from_model
    from kmflow.jobs.palette.per_image import PerImageParams, fit_image_palette
    from kmflow.jobs.palette.render import ColorHistogram, paint
    from kmflow.storage.images import decode_image

    palette = palette_from_model(served.model)
    rgb = decode_image(data, max_pixels=max_pixels)
    height, width = rgb.shape[:2]
    hist = ColorHistogram.of(rgb.reshape(-1, 3))
    centers, colors = palette.centers, palette.rgb
    if k is not None:
        own = fit_image_palette(
            hist,
            PerImageParams(n_colors=k, color_space=palette.color_space),
            hashlib.sha256(data).hexdigest(),
        )
        centers, colors = own.centers, own.rgb
    painted = paint(hist, height, width, centers, colors, palette.color_space)
    return painted.png, painted


def create_app(
    settings: Settings | None = None,
    *,
    registry: ModelRegistry | None = None,
    models: Sequence[str] | None = None,
    auth: bool = True,
) -> FastAPI:
    """The service's ASGI application (also an app factory: ``uvicorn --factory``).

    Parameters
    ----------
    settings : Settings, optional
        Default: :func:`~kmflow.config.get_settings` (``KMFLOW_*`` variables).
    registry : ModelRegistry, optional
        Default: the registry of ``settings.registry.url``.
    models : sequence of str, optional
        The model names to serve; default ``settings.serve.models``, and when that is empty
        every name in the registry.
    auth : bool, default True
        Require one of ``settings.serve.api_keys`` on every ``/v1`` route and ``/metrics``.
        False must be asked for explicitly (``kmflow serve --no-auth``).

    Raises
    ------
    InvalidInputError
        If `auth` is on and no API key is configured.
    """
    settings = settings or get_settings()
    serve = settings.serve
    if registry is None:
        url = settings.registry.url
        registry = ModelRegistry(url, storage_options=storage_options_for(url, settings.storage))
    keys = tuple(key.get_secret_value().encode() for key in serve.api_keys)
    if auth and not keys:
        raise InvalidInputError(
            "no API keys: set KMFLOW_SERVE__API_KEYS to a JSON list of secrets, or start the "
            "service with --no-auth explicitly"
        )
    champions = Champions(registry, models or serve.models or None)
    metrics = Metrics()

    def refresh() -> None:
        champions.refresh()
        metrics.set_versions((name, s.version) for name, s in champions.served.items())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(refresh)

        async def follow() -> None:
            while True:
                await asyncio.sleep(serve.refresh_seconds)
                try:
                    await anyio.to_thread.run_sync(refresh)
                except Exception:  # keep following: the next refresh may succeed
                    logger.exception("refreshing the champions failed")

        task = asyncio.create_task(follow())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="kmflow",
        version=__version__,
        summary="The champion k-means models of a kmflow registry, over HTTP.",
        lifespan=lifespan,
    )
    app.state.champions = champions
    app.state.metrics = metrics
    install_problem_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="One of KMFLOW_SERVE__API_KEYS.")

    # A default, not Annotated: the annotation is a string (future annotations) and
    # `bearer` is local, so FastAPI could not resolve it.
    def require_key(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if auth:
            check_key(credentials, keys)

    Keyed = [Depends(require_key)]

    def served_or_404(name: str) -> Served:
        served = champions.get(name)
        if served is None:
            why = champions.problems.get(name, f"model {name!r} is not served here")
            raise HTTPException(404, why)
        return served

    async def compute(fn: Callable[[], _T]) -> _T:
        try:
            with anyio.fail_after(serve.request_timeout):
                return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
        except TimeoutError:
            raise HTTPException(
                503,
                f"the request took longer than {serve.request_timeout:g} s "
                "(KMFLOW_SERVE__REQUEST_TIMEOUT)",
            ) from None

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: _PROBLEMS[503]})
    async def readyz() -> Any:
        """Ready when every served name has a model loaded."""
        served = {name: s.version for name, s in champions.served.items()}
        wanted = champions.names or ()
        missing = [name for name in wanted if name not in served]
        if champions.refreshed_at is None or missing or not served:
            reasons = dict(champions.problems)
            detail = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no model is served"
            return problem(503, detail, models=served)
        return {"status": "ready", "models": served, "problems": dict(champions.problems)}

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=Keyed,
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
            401: _PROBLEMS[401],
        },
    )
    async def metrics_text() -> Response:
        """Prometheus metrics: requests, latency, errors, the versions served."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/models",
        tags=["models"],
        dependencies=Keyed,
        response_model=ModelList,
        responses={401: _PROBLEMS[401]},
    )
    async def list_models() -> dict[str, Any]:
        """Every model served and its version."""
        return {"models": [_info(s.model.record) for _, s in sorted(champions.served.items())]}

    @app.get(
        "/v1/models/{name}",
        tags=["models"],
        dependencies=Keyed,
        response_model=ModelDetail,
        responses={k: _PROBLEMS[k] for k in (401, 404)},
    )
    async def show_model(name: ModelName, response: Response) -> dict[str, Any]:
        """The served version of one model: record, metrics, what predict takes."""
        served = served_or_404(name)
        record = served.model.record
        response.headers["X-Model-Version"] = str(served.version)
        return {
            **_info(record),
            "params": json_ready(record.params),
            "preprocessing": json_ready(record.preprocessing),
            "inputs": _inputs_of(record.kind, record.n_features),
        }

    @app.post(
        "/v1/models/{name}/predict",
        tags=["models"],
        dependencies=Keyed,
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses={k: _PROBLEMS[k] for k in (401, 404, 413, 415, 422, 503)},
        openapi_extra={"requestBody": _PREDICT_BODY},
    )
    async def predict(name: ModelName, request: Request) -> Response:
        """The cluster (segment) of each record or row."""
        served = served_or_404(name)
        body = await _predict_request(request)
        labels, distances = await compute(lambda: _assign(served, body))
        metrics.rows.labels(name, "predict").inc(len(labels))
        answer = PredictResponse(
            model=name,
            version=served.version,
            segments=labels.tolist(),
            distances=None if distances is None else distances.tolist(),
        )
        return Response(
            answer.model_dump_json(exclude_none=True),
            media_type="application/json",
            headers={"X-Model-Version": str(served.version)},
        )

    @app.post(
        "/v1/models/{name}/quantize",
        tags=["models"],
        dependencies=Keyed,
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "The quantized image (PNG)."},
            **{k: _PROBLEMS[k] for k in (401, 404, 413, 422, 503)},
        },
    )
    async def quantize(
        name: ModelName,
        file: Annotated[UploadFile, File(description="The image (PNG, JPEG, WebP, ...).")],
        k: Annotated[
            int | None,
            Query(ge=1, le=256, description="Fit this many colors to the image itself."),
        ] = None,
    ) -> Response:
        """The image painted with the model's palette (or its own k colors), as PNG."""
        served = served_or_404(name)
        if served.model.kind != "palette":
            raise HTTPException(
                422,
                f"model {name!r} is a {served.model.kind!r} model; quantize needs a palette",
            )
        data = await file.read()
        max_pixels = settings.storage.max_image_pixels
        png, painted = await compute(lambda: _quantize(served, data, k, max_pixels))
        metrics.rows.labels(name, "quantize").inc(painted.n_pixels)
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Model-Version": str(served.version),
                "X-Palette": "image" if k is not None else "model",
                "X-PSNR-dB": f"{painted.psnr:.4f}",
                "X-DeltaE00": f"{painted.delta_e:.4f}",
            },
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            request_schema = PredictRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["PredictRequest"] = request_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=serve.max_body_bytes)
    app.add_middleware(Instrument, metrics=metrics)
    return app
