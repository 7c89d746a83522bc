"""A classifier per segment, and one global classifier on the same rows, for a target column.

The study kmflow follows trained a random forest per cluster for churn. Here each segment's
training rows (the model's training split) fit a scikit-learn
``HistGradientBoostingClassifier``, one Dask task per segment (each task receives only its
segment's rows), and one global classifier is fitted on all training rows. Every model is
scored on the held-out rows: a segment's model on the held-out rows of its segment, the
global model on the same rows, so the two columns of the report compare like with like.

Scores: precision, recall and F1 (binary: of the positive class, the second class in sorted
order, e.g. ``1`` or ``yes``; multiclass: macro averages) and ROC AUC (binary, or one-vs-rest
macro for several classes; NaN when the held-out rows hold a single class).

A segment whose training rows hold one class gets a constant model (scikit-learn's
``DummyClassifier``); a segment with fewer than ``min_rows`` training rows gets none, and its
rows are scored with the global model (noted in the report).

Models are stored with the model version in the skops format (``skops.io``), never pickle,
and loaded only with the exact types a scikit-learn classifier of this kind needs
(:data:`TRUSTED_TYPES`); a file asking for anything else is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from kmflow.errors import ModelCorruptError

__all__ = [
    "TRUSTED_TYPES",
    "SegmentModels",
    "classifier_file",
    "fit_segment_models",
    "load_classifier",
]

#: The only types (besides scikit-learn's and NumPy's defaults that skops trusts) a stored
#: classifier may contain.
TRUSTED_TYPES = frozenset({"sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"})


def classifier_file(segment: int | None) -> str:
    """File name of a stored classifier in a model version (None: the global one)."""
    return "classifier.global.skops" if segment is None else f"classifier.segment-{segment}.skops"


def load_classifier(data: bytes, shown: str) -> Any:
    """A stored classifier, refusing any type outside :data:`TRUSTED_TYPES`."""
    import skops.io as sio

    try:
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as exc:  # a damaged archive
        raise ModelCorruptError(f"{shown} is not a readable skops file: {exc}") from exc
    extra = untrusted - TRUSTED_TYPES
    if extra:
        raise ModelCorruptError(
            f"{shown} asks for types kmflow does not load: {', '.join(sorted(extra))}"
        )
    return sio.loads(data, trusted=sorted(untrusted))


@dataclass(frozen=True)
class SegmentModels:
    """The classifiers of one segmentation and their held-out scores.

    Attributes
    ----------
    classes : list of str
        The target's classes, in the order of the models' columns.
    scores : dict
        ``{"segments": [{"segment", "n_train", "n_test", "model", precision, recall, f1,
        roc_auc, "global": {...the same four on the same rows...}}, ...],
        "overall": {"segmented": {...}, "global": {...}}}``: the per-segment models together
        against the global model on all held-out rows.
    files : dict of str to bytes
        The skops files to store with the model version.
    """

    classes: list[str]
    scores: dict[str, Any]
    files: dict[str, bytes] = field(repr=False)


def _scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    if len(y_true) == 0:
        return dict.fromkeys(("precision", "recall", "f1", "roc_auc"), math.nan)
    pred = proba.argmax(axis=1)
    if n_classes == 2:
        kw: dict[str, Any] = {"average": "binary", "pos_label": 1, "zero_division": 0}
    else:
        kw = {"average": "macro", "labels": list(range(n_classes)), "zero_division": 0}
    out = {
        "precision": float(precision_score(y_true, pred, **kw)),
        "recall": float(recall_score(y_true, pred, **kw)),
        "f1": float(f1_score(y_true, pred, **kw)),
    }
    present = np.unique(y_true)
    if len(present) < 2:
        out["roc_auc"] = math.nan
    elif n_classes == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
    elif len(present) == n_classes:
        out["roc_auc"] = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))
    else:
        out["roc_auc"] = math.nan
    return out


def _full_proba(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class (a model may have seen fewer)."""
    proba = np.zeros((len(x), n_classes))
    if len(x) == 0:
        return proba
    got = model.predict_proba(x)
    proba[:, np.asarray(model.classes_, dtype=np.int64)] = got
    return proba


def _fit(x: np.ndarray, y: np.ndarray, seed: int, max_iter: int) -> bytes:
    import skops.io as sio
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier

    if len(np.unique(y)) < 2:
        model: Any = DummyClassifier(strategy="most_frequent").fit(x, y)
    else:
        model = HistGradientBoostingClassifier(max_iter=max_iter, random_state=seed).fit(x, y)
    return bytes(sio.dumps(model))


def _segment_rows(
    X: da.Array, y: da.Array, labels: da.Array, train: da.Array, segment: int | None, held: bool
) -> tuple[da.Array, da.Array]:
    mask = ~train if held else train
    if segment is not None:
        mask = mask & (labels == segment)
    return X[mask], y[mask]


def _evaluate(
    seg_model: bytes | None, global_model: bytes, x: np.ndarray, y: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = _full_proba(load_classifier(global_model, "global classifier"), x, n)
    s = g if seg_model is None else _full_proba(load_classifier(seg_model, "classifier"), x, n)
    return y, s, g


def fit_segment_models(
    X: da.Array,
    y: da.Array,
    classes: Sequence[str],
    labels: da.Array,
    train: da.Array,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    min_rows: int = 20,
) -> SegmentModels:
    """Fit a classifier per segment and a global one; score both on the held-out rows.

    Parameters
    ----------
    X : dask.array.Array of shape (n_rows, n_features)
        The prepared features.
    y : dask.array.Array of int, shape (n_rows,)
        Each row's class index into `classes` (negative: target missing, row not used).
    classes : sequence of str
        The target's classes.
    labels : dask.array.Array of int, shape (n_rows,)
        Each row's segment.
    train : dask.array.Array of bool, shape (n_rows,)
        True for training rows, False for held-out rows.
    k : int
        Number of segments.
    seed, max_iter, min_rows
        The classifiers' seed and boosting iterations; the fewest training rows a segment
        needs for a model of its own.
    """
    n_classes = len(classes)
    known = y >= 0
    train_known = train & known
    held_known = (~train) & known
    sizes = dask.compute(
        *[(train_known & (labels == s)).sum() for s in range(k)],
        *[(held_known & (labels == s)).sum() for s in range(k)],
    )
    n_train, n_test = [int(v) for v in sizes[:k]], [int(v) for v in sizes[k:]]
    gx, gy = X[train_known], y[train_known]
    fits: dict[int | None, Any] = {None: dask.delayed(_fit)(gx, gy, seed, max_iter)}
    for s in range(k):
        if n_train[s] >= min_rows:
            sx, sy = X[train_known & (labels == s)], y[train_known & (labels == s)]
            fits[s] = dask.delayed(_fit)(sx, sy, seed, max_iter)
    keys = list(fits)
    fitted = dict(zip(keys, dask.compute(*fits.values()), strict=True))
    evals = []
    for s in range(k):
        mask = held_known & (labels == s)
        evals.append(
            dask.delayed(_evaluate)(fitted.get(s), fitted[None], X[mask], y[mask], n_classes)
        )
    results = dask.compute(*evals)
    rows = []
    all_y, all_s, all_g = [], [], []
    for s, (yt, ps, pg) in enumerate(results):
        yt = np.asarray(yt, dtype=np.int64)
        entry: dict[str, Any] = {
            "segment": s,
            "n_train": n_train[s],
            "n_test": n_test[s],
            "model": ("own" if s in fitted else f"global (fewer than {min_rows} training rows)"),
        }
        entry.update(_scores(yt, ps, n_classes))
        entry["global"] = _scores(yt, pg, n_classes)
        rows.append(entry)
        all_y.append(yt)
        all_s.append(ps)
        all_g.append(pg)
    y_all = np.concatenate(all_y) if all_y else np.zeros(0, dtype=np.int64)
    overall = {
        "segmented": _scores(y_all, np.concatenate(all_s), n_classes),
        "global": _scores(y_all, np.concatenate(all_g), n_classes),
        "n_test": len(y_all),
    }
    files = {classifier_file(s): data for s, data in fitted.items()}
    return SegmentModels(
        classes=[str(c) for c in classes],
        scores={"segments": rows, "overall": overall},
        files=files,
    )


def predict_with(
    files: Mapping[str, bytes], X: np.ndarray, labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """Class probabilities of new rows from their segment's stored classifier (or the global
    one where the segment has none)."""
    glob = load_classifier(files[classifier_file(None)], classifier_file(None))
    out = np.zeros((len(X), n_classes))
    for s in np.unique(labels):
        rows = labels == s
        name = classifier_file(int(s))
        model = load_classifier(files[name], name) if name in files else glob
        out[rows] = _full_proba(model, X[rows], n_classes)
    return out
