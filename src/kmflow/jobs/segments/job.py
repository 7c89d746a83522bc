"""The records job, step by step: prepare a table, sweep k, fit, evaluate, profile, classify.

Each step is a library function; the ``segment`` flow (:mod:`kmflow.flows.segment`) calls
them in order through its tasks, and ``kmflow segment`` runs that flow. Steps pass small
handles (:class:`Prepared`, :class:`Fitted`): URLs, the fitted preprocessing, scores; the
prepared matrix itself stays in its row store.

1. :func:`prepare`: read the table (:func:`~kmflow.storage.tables.read_table`), plan its
   columns, fit the preprocessing on the training rows (the seeded split of the row
   numbers), and write the prepared matrix ``X(row, feature)`` with the row numbers to a
   row store (:class:`~kmflow.storage.rowstore.RowStore`) named by what it holds, so a
   re-run on the same table and options streams it again instead of parsing the table.
2. :func:`fit_segments`: the sweep over k on the training rows (one pass per Lloyd
   iteration serves every k still iterating), k chosen by the rule
   (:func:`kmflow.core.sweep.choose_k`), its held-out internal metrics, and external
   metrics against the target when there is one.
3. :func:`describe_segments`: labels for every row, ``segments.csv``, the profiles
   (:mod:`kmflow.jobs.segments.profile`) and, with a target, a classifier per segment
   (:mod:`kmflow.jobs.segments.classifiers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd

from kmflow.core.jsonable import json_ready
from kmflow.core.sweep import Choice, choose_k
from kmflow.errors import InvalidInputError, StoreCorruptError
from kmflow.jobs.segments.classifiers import SegmentModels, fit_segment_models
from kmflow.jobs.segments.prepare import (
    MISSING_LEVEL,
    ColumnPlan,
    FitReport,
    Holdout,
    Preprocessing,
    fit_preprocessing,
    plan_columns,
)
from kmflow.jobs.segments.profile import (
    Profiles,
    class_name,
    decode_partition,
    profile_segments,
    target_is_numeric,
)
from kmflow.kernels.lloyd import assign
from kmflow.kernels.metrics import external_metrics, internal_metrics
from kmflow.kernels.split import holdout_row_numbers
from kmflow.kernels.sweep import SweepInfo, SweepResult
from kmflow.params import SegmentParams
from kmflow.storage.fs import join_url, storage_options_for
from kmflow.storage.rowstore import RowStore
from kmflow.storage.tables import Table, read_table

__all__ = [
    "Assigned",
    "Described",
    "Fitted",
    "Prepared",
    "assign_records",
    "describe_segments",
    "evaluation_rows",
    "fit_segments",
    "prepare",
    "segment_labels",
]

logger = logging.getLogger(__name__)

#: The commit-record format of the records job's row stores.
STORE_FORMAT = "kmflow.segments"


# --------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class Prepared:
    """A prepared table: where its matrix is, and how it was made."""

    store: str
    key: str
    table_fingerprint: str
    files: list[str]
    n_rows: int
    n_prepared: int
    plan: ColumnPlan
    preprocessing: Preprocessing
    fit_report: FitReport
    missing: dict[str, int]
    report: tuple[str, ...]
    reused: bool

    @property
    def feature_names(self) -> list[str]:
        return list(self.preprocessing.feature_names)

    def open(self) -> RowStore:
        return _row_store(self.store)


def _row_store(url: str) -> RowStore:
    """The records job's row store at `url`, with the storage options of the settings."""
    return RowStore(url, storage_options=storage_options_for(url), format=STORE_FORMAT)


def _key(table: Table, params: SegmentParams) -> str:
    spec = {
        "table": table.fingerprint,
        "options": params.model_dump(
            include={
                "id",
                "target",
                "features",
                "exclude",
                "categorical",
                "scale",
                "missing",
                "holdout",
                "seed",
                "max_levels",
            }
        ),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _row_numbers(pdf: pd.DataFrame, plan: ColumnPlan, prep: Preprocessing) -> np.ndarray:
    return decode_partition(pdf, plan, prep).index.to_numpy(dtype=np.int64)


def prepare(
    params: SegmentParams,
    *,
    storage_options: dict[str, Any] | None = None,
    by: str | None = None,
) -> Prepared:
    """Read, plan, fit the preprocessing on the training rows, and store the prepared matrix.

    Raises
    ------
    SourceNotFoundError, TableError, InvalidInputError
        A missing or malformed table, a column that does not exist, a column of mixed
        types, missing values under ``missing="error"``, no features left.
    """
    table = read_table(params.source, storage_options=storage_options)
    plan = plan_columns(
        table,
        id=params.id,
        target=params.target,
        features=params.features,
        exclude=params.exclude,
        categorical=params.categorical or None,
        max_levels=params.max_levels,
    )
    if not plan.features:
        raise InvalidInputError(
            "no feature columns left: "
            + ("; ".join(plan.report) if plan.report else "the table has no usable column")
        )
    train = Holdout(params.holdout, params.seed) if params.holdout > 0 else None
    prep = fit_preprocessing(
        table, plan, train_rows=train, missing=params.missing, scale=params.scale
    )
    key = _key(table, params)
    url = join_url(params.store, f"{key[:24]}.zarr")
    store = _row_store(url)
    X, transform_report = prep.transform(table, report=True)

    def holds_this() -> bool:
        return store.exists() and store.n_rows > 0 and store.meta.get("key") == key

    def seen_written() -> bool:
        # Without the lease another writer may be creating the store this moment (its
        # variables not all there yet): that is "not written yet", decided under the lease.
        try:
            return holds_this()
        except StoreCorruptError:
            return False

    reused = seen_written()
    if not reused:
        # Decided again under the writer lease: of two runs preparing the same table at
        # once, one writes the matrix and the other finds it written.
        with store.writing(by=by):
            reused = holds_this()
            if not reused:
                if store.exists() and store.n_rows > 0:
                    raise InvalidInputError(f"row store {url} holds other data; remove it first")
                parts = table.frame.to_delayed()
                ids = da.concatenate(
                    [
                        da.from_delayed(
                            dask.delayed(_row_numbers)(p, plan, prep),
                            shape=(n,),
                            dtype=np.int64,
                        )
                        for p, n in zip(parts, X.chunks[0], strict=True)
                    ]
                )
                meta = {
                    "key": key,
                    "table": table.fingerprint,
                    "files": table.files,
                    "features": list(prep.feature_names),
                }
                store.append(X, ids=ids.compute(), meta=meta, by=by)
    n_prepared = store.n_rows
    logger.info(
        "%s: %d rows, %d prepared as %d features in %s%s",
        ", ".join(table.files[:3]),
        table.n_rows,
        n_prepared,
        prep.n_features,
        url,
        " (reused)" if reused else "",
    )
    return Prepared(
        store=url,
        key=key,
        table_fingerprint=table.fingerprint,
        files=list(table.files),
        n_rows=table.n_rows,
        n_prepared=n_prepared,
        plan=plan,
        preprocessing=prep,
        fit_report=prep.fit_report,
        missing=dict(transform_report.missing),
        report=tuple(plan.report),
        reused=reused,
    )


# --------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class Fitted:
    """The sweep, the chosen k and its evaluation."""

    sweep: list[dict[str, Any]]
    choice: Choice
    centers: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    seed: int
    metrics: dict[str, Any]
    n_train: int
    n_test: int
    seconds: float

    @property
    def k(self) -> int:
        return self.choice.k


def _split(prepared: Prepared, params: SegmentParams) -> tuple[da.Array, da.Array, da.Array]:
    store = prepared.open()
    X = store.rows().astype(np.float64)
    ids = da.from_array(store.ids(), chunks=(X.chunks[0],))
    if params.holdout > 0:
        held = holdout_row_numbers(ids, params.holdout, seed=params.seed)
    else:
        held = da.zeros(X.shape[0], chunks=(X.chunks[0],), dtype=bool)
    return X, ids, held


def evaluation_rows(prepared: Prepared, params: SegmentParams) -> tuple[da.Array, da.Array | None]:
    """The prepared rows and the mask of those the segmentation is evaluated on (the
    held-out rows; ``None``: every row, when nothing is held out)."""
    X, _, held = _split(prepared, params)
    return X, (held if params.holdout > 0 else None)


def fit_segments(
    prepared: Prepared,
    params: SegmentParams,
    *,
    callback: Callable[[SweepInfo], None] | None = None,
) -> Fitted:
    """Sweep k on the training rows, choose k, evaluate it on the held-out rows."""
    from kmflow.cluster.sweep import sweep_fit

    t0 = time.perf_counter()
    ks = params.ks
    X, _, held = _split(prepared, params)
    train_x = X[~held]
    train_x = train_x.compute_chunk_sizes()
    test_x = X[held].compute_chunk_sizes()
    n_train, n_test = int(train_x.shape[0]), int(test_x.shape[0])
    if n_train == 0:
        raise InvalidInputError("no training rows: lower --holdout or give more rows")
    result: SweepResult = sweep_fit(
        train_x,
        ks,
        seed=params.seed,
        max_iter=params.max_iter,
        tol=params.tol,
        silhouette_sample_size=params.silhouette_sample_size,
        callback=callback,
    )
    table = [r.to_dict() for r in result.results.values()]
    choice = choose_k(table, params.select, min_k=params.min_k)
    chosen = result.results[choice.k]
    metrics: dict[str, Any] = {
        "train": {k: v for k, v in chosen.to_dict().items() if k != "seconds"},
        "chosen_k": choice.k,
        "rule": choice.rule,
        "runner_up": choice.runner_up,
    }
    if n_test:
        im = internal_metrics(test_x, chosen.centers, undefined="nan")
        metrics["held_out"] = {
            "n_rows": n_test,
            "inertia_per_row": im.inertia / n_test,
            "davies_bouldin": im.davies_bouldin,
            "calinski_harabasz": im.calinski_harabasz,
        }
    return Fitted(
        sweep=table,
        choice=choice,
        centers=np.asarray(chosen.centers),
        inertia=float(chosen.inertia),
        n_iter=int(chosen.n_iter),
        converged=bool(chosen.converged),
        seed=int(result.seed),
        metrics=metrics,
        n_train=n_train,
        n_test=n_test,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- describe


@dataclass(frozen=True)
class Described:
    """Labels, profiles and per-segment models of the chosen segmentation."""

    sizes: list[int]
    profiles: Profiles
    external: dict[str, Any] | None
    segment_models: SegmentModels | None
    outputs: dict[str, str] = field(default_factory=dict)


def segment_labels(X: da.Array, centers: np.ndarray) -> tuple[da.Array, da.Array]:
    """Each row's segment (persisted) and its Euclidean distance to the segment's center."""
    labels = assign(X, centers).persist()

    def dist(x: np.ndarray, lab: np.ndarray) -> np.ndarray:
        return np.sqrt(((x - centers[lab]) ** 2).sum(axis=1))

    distance = da.map_blocks(dist, X, labels, drop_axis=1, dtype=np.float64)
    return labels, distance


def _target_codes(
    frame: Any, plan: ColumnPlan, prep: Preprocessing, chunks: tuple[int, ...]
) -> tuple[da.Array, list[str]]:
    target = plan.target
    assert target is not None
    numeric = target_is_numeric(frame, target)
    meta = decode_partition(frame._meta, plan, prep, numeric)
    parts = [
        dask.delayed(decode_partition)(p, plan, prep, numeric)[target] for p in frame.to_delayed()
    ]
    values = dd.from_delayed(parts, meta=meta[target], verify_meta=False)
    found = values.dropna().unique().compute()
    classes = sorted({class_name(v) for v in found} - {MISSING_LEVEL})
    if numeric:
        classes = sorted(classes, key=float)
    lookup = {c: i for i, c in enumerate(classes)}

    def codes(s: pd.Series) -> np.ndarray:
        return np.array([lookup.get(class_name(v), -1) for v in s], dtype=np.int64)

    arrays = [
        da.from_delayed(dask.delayed(codes)(p), shape=(n,), dtype=np.int64)
        for p, n in zip(parts, chunks, strict=True)
    ]
    return da.concatenate(arrays), classes


def _write_segments_csv(
    url: str, frame: Any, plan: ColumnPlan, prep: Preprocessing, labels: da.Array, dist: da.Array
) -> None:
    id_col = plan.id

    def part(pdf: pd.DataFrame, lab: np.ndarray, d: np.ndarray) -> pd.DataFrame:
        rows = decode_partition(pdf, plan, prep).index
        first = pdf.loc[rows, id_col].to_numpy() if id_col is not None else rows.to_numpy(np.int64)
        return pd.DataFrame(
            {id_col if id_col is not None else "row": first, "segment": lab, "distance": d}
        )

    parts = [
        dask.delayed(part)(p, lb, db)
        for p, lb, db in zip(
            frame.to_delayed(),
            labels.to_delayed().ravel(),
            dist.to_delayed().ravel(),
            strict=True,
        )
    ]
    _stream_csv(url, parts)


def _stream_csv(url: str, parts: Sequence[Any]) -> None:
    """Write delayed DataFrames one after the other as one CSV at `url` (any fsspec URL).

    One partition at a time reaches this process; the file appears under its name only when
    complete (written as ``<url>.partial``, then moved).
    """
    from kmflow.storage.fs import get_fs

    fs, path = get_fs(url, storage_options_for(url))
    partial = path + ".partial"
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(partial, "wb") as f:
        for i, part in enumerate(parts):
            frame = dask.compute(part)[0]
            f.write(frame.to_csv(index=False, header=i == 0).encode("utf-8"))
    fs.mv(partial, path)


def describe_segments(
    prepared: Prepared,
    params: SegmentParams,
    centers: np.ndarray,
    *,
    out: str | None = None,
) -> Described:
    """Labels for every row, ``segments.csv``, profiles and the per-segment classifiers."""
    table = read_table(prepared.files)
    if table.fingerprint != prepared.table_fingerprint:
        raise InvalidInputError(
            "the table changed since it was prepared; run the segmentation again"
        )
    prep = prepared.preprocessing
    X, _, held = _split(prepared, params)
    X = X.rechunk((tuple(_partition_sizes(table, prepared)), X.shape[1]))
    k = int(centers.shape[0])
    labels, dist = segment_labels(X, centers)
    sizes = np.bincount(labels.compute(), minlength=k).tolist()
    profiles = profile_segments(table.frame, prepared.plan, prep, X, labels, k)
    external = None
    models = None
    if prepared.plan.target is not None:
        y, classes = _target_codes(table.frame, prepared.plan, prep, X.chunks[0])
        known = y >= 0
        ext = external_metrics(y[known], labels[known])
        external = ext.to_dict()
        if params.classifiers and len(classes) >= 2:
            models = fit_segment_models(
                X,
                y,
                classes,
                labels,
                ~held.rechunk((X.chunks[0],)),
                k,
                seed=params.seed,
            )
    outputs: dict[str, str] = {}
    if out is not None:
        seg_url = join_url(out, "segments.csv")
        prof_url = join_url(out, "profiles.csv")
        for url in (seg_url, prof_url):
            if url in table.files:
                raise InvalidInputError(f"{url} is one of the source files; choose another --out")
        _write_segments_csv(seg_url, table.frame, prepared.plan, prep, labels, dist)
        from kmflow.storage.fs import write_bytes_atomic

        write_bytes_atomic(
            prof_url,
            profiles.table().to_csv(index=False).encode("utf-8"),
            storage_options_for(prof_url),
        )
        outputs = {"segments": seg_url, "profiles": prof_url}
    return Described(
        sizes=sizes,
        profiles=profiles,
        external=external,
        segment_models=models,
        outputs=outputs,
    )


@dataclass(frozen=True)
class Assigned:
    """What :func:`assign_records` wrote and found."""

    out: str
    n_rows: int
    n_assigned: int
    sizes: list[int]
    missing: dict[str, int]
    unseen: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return json_ready(self.__dict__)  # type: ignore[no-any-return]


def assign_records(
    model: Any,
    source: Sequence[str],
    out: str,
    *,
    storage_options: dict[str, Any] | None = None,
) -> Assigned:
    """Segments of new records with a registered segment model, written as a CSV.

    The model's stored preprocessing is applied as in training: missing numbers imputed with
    the training medians (or the rows dropped, as the model's policy says), unseen
    categories encoded as all zeros; both are counted per column in the result.

    Raises
    ------
    InvalidInputError
        The model is not a segment model, a column the model needs is missing, or `out`
        is one of the source files.
    """
    if model.record.kind != "segments":
        raise InvalidInputError(
            f"model {model.record.name} v{model.record.version} is a {model.record.kind!r} "
            "model; kmflow assign labels table records with a 'segments' model"
        )
    table = read_table(source, storage_options=storage_options)
    if out in table.files:
        raise InvalidInputError(f"{out} is one of the source files; choose another --out")
    prep: Preprocessing = model.preprocessor
    X, report = prep.transform(table, report=True)
    if prep.missing == "drop":
        X = X.compute_chunk_sizes()
    centers = np.asarray(model.centers)
    labels, dist = segment_labels(X, centers)
    k = int(centers.shape[0])
    sizes = np.bincount(labels.compute(), minlength=k).tolist()
    roles = ("id", "feature") if prep.id in table.columns else ("feature",)
    plan = prep.column_plan(roles=roles)
    _write_segments_csv(out, table.frame, plan, prep, labels, dist)
    return Assigned(
        out=out,
        n_rows=table.n_rows,
        n_assigned=int(X.shape[0]),
        sizes=sizes,
        missing=dict(report.missing),
        unseen=dict(report.unseen),
    )


def _partition_sizes(table: Table, prepared: Prepared) -> list[int]:
    """Prepared rows per partition of the table (fewer than its rows under ``drop``)."""
    if prepared.preprocessing.missing != "drop":
        return list(table.partition_rows)
    ids = prepared.open().ids()
    starts = np.append(table.row_starts(), table.n_rows)
    return np.diff(np.searchsorted(ids, starts)).astype(int).tolist()
