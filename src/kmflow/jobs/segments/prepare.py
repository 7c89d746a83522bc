"""Which columns of a table are features, and the fitted map from raw records to features.

Two steps, in the spirit of scikit-learn's ``ColumnTransformer`` of numeric and categorical
steps, but planned and fitted with Dask over the whole table:

- :func:`plan_columns` reads the table once and decides each column's role (``id``,
  ``target``, ``feature``) and kind (``numeric``, ``flag``, ``categorical``), or leaves it
  out with a report line;
- :func:`fit_preprocessing` fits, on the training rows, the missing-value policy, the
  one-hot categories and the scaler, and returns a :class:`Preprocessing`: the part of a
  model that maps raw records (a dask or pandas DataFrame, dicts) to the space of its
  centers, stored as JSON plus float64 arrays (no pickle).

Inference rules (:func:`plan_columns`)
--------------------------------------
A cell is *blank* (missing) when it is NaN/None or its text, stripped, is one of ``""``,
``NA``, ``N/A``, ``NaN``, ``null`` (any case). For each column other than the id and
target and not excluded:

- numbers (a numeric dtype, or text whose every non-blank cell parses as a finite number,
  e.g. ``"1", "2", "", "4"``) are ``numeric``; text ``1``/``0`` is numeric too (the same
  0/1 values); a numeric column named like an identifier (``id``, ``customer_id``,
  ``CustomerID``, ``customer id``) is left out unless listed in `features`;
- booleans, and text whose values are all yes/no-like (``yes/no``, ``y/n``, ``true/false``,
  ``t/f``, any case), are ``flag`` (1 for yes, 0 for no); any other text column with exactly
  two distinct values is a flag too, its true value the second in sorted order (feature
  ``"sex=M"`` for ``F``/``M``): one 0/1 feature rather than two one-hot columns that
  carry the same information twice;
- other text with at most `max_levels` distinct values is ``categorical`` (one-hot);
  text with more is left out ("column 'name' left out: 1,843 distinct text values (more
  than 50); list it in features to use it"), unless listed in `features` or
  `categorical` (then up to `max_categorical_levels`, else an error);
- a column blank in every row is left out (an error if requested);
- a column of mostly numbers with some text (``"12", "7", "n/a?"``) is left out with a
  report line naming the first offending row and value; when requested as a feature it is
  an error (list it in `categorical` to treat it as text). A column of mostly text with a
  few numbers is text;
- other dtypes (dates, times, lists) are left out (an error if requested).

Distinct values are counted exactly over the whole table (every partition), up to 10,000;
beyond that the count is reported as "more than 10,000".

Rows are named by the frame's index: for a :class:`~kmflow.storage.tables.Table`, the global
0-based row number ``__row__``.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd

from kmflow.errors import InvalidInputError, TableError
from kmflow.kernels.split import holdout_rows
from kmflow.storage.tables import Table

__all__ = [
    "MISSING_LEVEL",
    "ColumnPlan",
    "ColumnSpec",
    "FitReport",
    "Holdout",
    "Preprocessing",
    "TransformReport",
    "fit_preprocessing",
    "plan_columns",
]

#: Level that missing cells of a categorical column get (when the training rows have any).
MISSING_LEVEL = "missing"

Role = Literal["id", "target", "feature"]
Kind = Literal["numeric", "flag", "categorical"]
MissingPolicy = Literal["error", "drop", "median"]
ScaleKind = Literal["standard", "robust", "minmax", "none"]

_BLANKS = frozenset({"", "na", "n/a", "nan", "null"})
_TRUE = ("t", "true", "y", "yes")
_FALSE = ("f", "false", "n", "no")
_DISTINCT_CAP = 10_000
_ID_NAME = re.compile(r"^id$|[_\s.\-]id$|^id[_\s.\-]", re.IGNORECASE)
_ID_CAMEL = re.compile(r"[a-z](Id|ID)$")
_SPEC_VERSION = 1


# --------------------------------------------------------------------------- cell parsing


def _text(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(stripped text as an object array, blank mask) of a column's cells."""
    isna = values.isna().to_numpy()
    text = values.astype(object).where(~isna, "").astype(str).str.strip()
    arr = text.to_numpy(dtype=object)
    blank = isna | text.str.lower().isin(_BLANKS).to_numpy()
    return arr, blank


def _numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values with NaN where blank or bad, blank mask, bad mask) of a column."""
    if pd.api.types.is_bool_dtype(values.dtype):
        values = values.astype(object)
    if pd.api.types.is_numeric_dtype(values.dtype):
        x = values.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        blank = np.isnan(x)
        bad = np.isinf(x)
        return np.where(bad, np.nan, x), blank, bad
    text, blank = _text(values)
    parsed = pd.to_numeric(pd.Series(np.where(blank, "0", text), dtype=object), errors="coerce")
    x = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~blank & ~np.isfinite(x)
    x = np.where(blank | bad, np.nan, x)
    return x, blank, bad


def _flags(
    values: pd.Series, true_values: Sequence[str], false_values: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(0/1 float64 with NaN where blank or unseen, blank mask, unseen mask)."""
    text, blank = _text(values)
    lower = pd.Series(text, dtype=object).str.lower()
    is_true = lower.isin([v.lower() for v in true_values]).to_numpy()
    is_false = lower.isin([v.lower() for v in false_values]).to_numpy()
    x = np.where(is_true, 1.0, np.where(is_false, 0.0, np.nan))
    unseen = ~blank & ~is_true & ~is_false
    return np.where(blank, np.nan, x), blank, unseen


def _looks_like_id(name: str) -> bool:
    return bool(_ID_NAME.search(name.strip()) or _ID_CAMEL.search(name.strip()))


def _fmt_value(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ColumnSpec:
    """One kept column of a :class:`ColumnPlan`.

    Attributes
    ----------
    name : str
        The column name as read.
    role : {"id", "target", "feature"}
    kind : {"numeric", "flag", "categorical"} or None
        How a feature is encoded; None for the id and the target.
    dtype : str
        The column's dtype as read (``"str"`` for every CSV column).
    n_missing : int
        Blank cells in the whole table.
    levels : tuple of str
        Categorical: the distinct non-blank values (stripped) in the whole table, sorted.
    true_values, false_values : tuple of str
        Flag: the texts (compared stripped, case-insensitively) read as 1 and 0.
    """

    name: str
    role: Role
    kind: Kind | None
    dtype: str
    n_missing: int = 0
    levels: tuple[str, ...] = ()
    true_values: tuple[str, ...] = ()
    false_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class ColumnPlan:
    """What :func:`plan_columns` decided for each column.

    Attributes
    ----------
    columns : tuple of ColumnSpec
        The kept columns in table order: the id, the target and the features.
    left_out : dict of str to str
        Columns not used, with the reason (one line each).
    report : tuple of str
        One line per decision worth telling the user (left-out columns, text treated as
        numbers with blanks, ...).
    n_rows : int
        Rows of the table.
    """

    columns: tuple[ColumnSpec, ...]
    left_out: dict[str, str]
    report: tuple[str, ...]
    n_rows: int

    @property
    def features(self) -> tuple[ColumnSpec, ...]:
        """The feature columns, in table order."""
        return tuple(c for c in self.columns if c.role == "feature")

    @property
    def id(self) -> str | None:
        """The id column's name, if any."""
        return next((c.name for c in self.columns if c.role == "id"), None)

    @property
    def target(self) -> str | None:
        """The target column's name, if any."""
        return next((c.name for c in self.columns if c.role == "target"), None)


@dataclass
class _Stats:
    """Per-column statistics of :func:`plan_columns`, mergeable across partitions."""

    n: int = 0
    n_blank: int = 0
    n_number: int = 0
    n_bad: int = 0
    first_bad: tuple[int, str] | None = None
    distinct: set[str] = field(default_factory=set)
    overflow: bool = False


def _partition_stats(
    pdf: pd.DataFrame, columns: tuple[str, ...], as_text: frozenset[str]
) -> dict[str, _Stats]:
    out: dict[str, _Stats] = {}
    rows = pdf.index.to_numpy()
    for name in columns:
        s = pdf[name]
        st = _Stats(n=len(s))
        if name in as_text and not _is_text_dtype(s.dtype):
            s = s.astype(object)
        if _is_number_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            x = s.astype(object) if pd.api.types.is_bool_dtype(s.dtype) else s
            x_isna = x.isna().to_numpy()
            st.n_blank = int(x_isna.sum())
            st.n_number = st.n - st.n_blank
            if pd.api.types.is_bool_dtype(s.dtype):
                st.distinct = {str(v).lower() for v in x[~x_isna].unique()}
        elif _is_text_dtype(s.dtype):
            x, blank, bad = _numbers(s)
            text, _ = _text(s)
            st.n_blank = int(blank.sum())
            st.n_bad = int(bad.sum())
            st.n_number = st.n - st.n_blank - st.n_bad
            if st.n_bad:
                i = int(np.flatnonzero(bad)[0])
                st.first_bad = (int(rows[i]), str(text[i]))
            if st.n_bad or name in as_text:
                uniq = pd.unique(text[~blank])
                st.overflow = len(uniq) > _DISTINCT_CAP
                st.distinct = set(uniq[: _DISTINCT_CAP + 1].tolist())
        else:
            st.n_blank = int(s.isna().sum())
        out[name] = st
    return out


def _merge_stats(a: dict[str, _Stats], b: dict[str, _Stats]) -> dict[str, _Stats]:
    out = {}
    for name, x in a.items():
        y = b[name]
        firsts = [f for f in (x.first_bad, y.first_bad) if f is not None]
        distinct = x.distinct | y.distinct
        overflow = x.overflow or y.overflow or len(distinct) > _DISTINCT_CAP
        if len(distinct) > _DISTINCT_CAP + 1:
            distinct = set(sorted(distinct)[: _DISTINCT_CAP + 1])
        out[name] = _Stats(
            n=x.n + y.n,
            n_blank=x.n_blank + y.n_blank,
            n_number=x.n_number + y.n_number,
            n_bad=x.n_bad + y.n_bad,
            first_bad=min(firsts) if firsts else None,
            distinct=distinct,
            overflow=overflow,
        )
    return out


def _is_number_dtype(dtype: Any) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _is_text_dtype(dtype: Any) -> bool:
    return (
        pd.api.types.is_string_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
    )


def _tree_reduce(items: list[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """Pairwise reduction of delayed values (depth log2(len(items)))."""
    layer = list(items)
    while len(layer) > 1:
        nxt = [dask.delayed(combine)(a, b) for a, b in zip(layer[::2], layer[1::2], strict=False)]
        if len(layer) % 2:
            nxt.append(layer[-1])
        layer = nxt
    return layer[0]


def check_names(names: Sequence[str], columns: Sequence[str], what: str) -> None:
    """InvalidInputError naming the first of `names` not among `columns`, with close names."""
    for name in names:
        if name not in columns:
            close = difflib.get_close_matches(name, list(columns), n=3, cutoff=0.5)
            hint = (
                f"; did you mean {' or '.join(map(repr, close))}?"
                if close
                else f"; the columns are {', '.join(map(repr, list(columns)[:20]))}"
                + (", ..." if len(columns) > 20 else "")
            )
            raise InvalidInputError(f"{what}: no column {name!r} in the table{hint}")


def plan_columns(
    table: Table | Any,
    *,
    id: str | None = None,
    target: str | None = None,
    features: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    max_levels: int = 50,
    max_categorical_levels: int = 1000,
) -> ColumnPlan:
    """Decide the role and kind of every column of a table (see the module's rules).

    Parameters
    ----------
    table : Table or dask.dataframe.DataFrame
        The table (:func:`kmflow.storage.tables.read_table`) or a frame (its index names the
        rows in messages).
    id : str, optional
        The record id column: kept, never a feature.
    target : str, optional
        A column kept for profiles and per-segment models, never a feature.
    features : sequence of str, optional
        The feature columns, exactly; inferred when None. A listed column must be usable:
        mixed numbers and text, all blank, an unsupported dtype or more than
        `max_categorical_levels` text values are errors.
    exclude : sequence of str, optional
        Columns never used (only with inferred features, or disjoint from `features`).
    categorical : sequence of str, optional
        Columns to encode one-hot whatever their values (codes such as ZIP codes); they
        are features (added to the inferred ones).
    max_levels : int, default 50
        Most distinct values of an inferred categorical column.
    max_categorical_levels : int, default 1000
        Most distinct values of any categorical column (requested ones included).

    Returns
    -------
    ColumnPlan

    Raises
    ------
    InvalidInputError
        A named column does not exist (the message suggests close names), a column has two
        roles, no feature is left, or a bound is below 1.
    TableError
        A requested feature cannot be used (mixed types: the first offending row and value;
        all blank; too many levels; unsupported dtype).

    Notes
    -----
    One compute over all partitions (counts and capped distinct values per column).
    """
    frame = table.frame if isinstance(table, Table) else table
    columns = [str(c) for c in frame.columns]
    if max_levels < 1 or max_categorical_levels < max_levels:
        raise InvalidInputError(
            f"max_levels={max_levels} must be at least 1 and at most "
            f"max_categorical_levels={max_categorical_levels}"
        )
    features_l = list(features) if features is not None else None
    exclude_l = list(exclude or [])
    categorical_l = list(categorical or [])
    for names, what in (
        ([id] if id is not None else [], "id"),
        ([target] if target is not None else [], "target"),
        (features_l or [], "features"),
        (exclude_l, "exclude"),
        (categorical_l, "categorical"),
    ):
        check_names(names, columns, what)
    if id is not None and id == target:
        raise InvalidInputError(f"column {id!r} cannot be both the id and the target")
    for role_name, col in (("id", id), ("target", target)):
        if col is not None and (col in (features_l or []) or col in categorical_l):
            raise InvalidInputError(f"column {col!r} is the {role_name}; it cannot be a feature")
    both = sorted(set(exclude_l) & (set(features_l or []) | set(categorical_l)))
    if both:
        raise InvalidInputError(f"column {both[0]!r} is both excluded and requested as a feature")
    if features_l is not None:
        requested = [c for c in columns if c in set(features_l) | set(categorical_l)]
    else:
        skip = {id, target, *exclude_l}
        requested = [c for c in columns if c not in skip]
    explicit = set(features_l or []) | set(categorical_l)

    parts = frame[requested].to_delayed() if requested else []
    if parts:
        stats: dict[str, _Stats] = dask.compute(
            _tree_reduce(
                [
                    dask.delayed(_partition_stats)(p, tuple(requested), frozenset(categorical_l))
                    for p in parts
                ],
                _merge_stats,
            )
        )[0]
        total = next(iter(stats.values())).n
    else:
        stats = {}
        total = table.n_rows if isinstance(table, Table) else len(frame)

    specs: dict[str, ColumnSpec] = {}
    left_out: dict[str, str] = {}
    report: list[str] = []
    for name in requested:
        spec, reason, note = _classify(
            name,
            str(frame[name].dtype),
            frame[name].dtype,
            stats[name],
            explicit=name in explicit,
            force_categorical=name in categorical_l,
            max_levels=max_levels,
            max_categorical_levels=max_categorical_levels,
        )
        if spec is not None:
            specs[name] = spec
        if reason is not None:
            left_out[name] = reason
            report.append(f"column {name!r} left out: {reason}")
        if note is not None:
            report.append(note)
    for role, col in (("id", id), ("target", target)):
        if col is not None:
            specs[col] = ColumnSpec(col, role, None, str(frame[col].dtype))  # type: ignore[arg-type]
    if not any(s.role == "feature" for s in specs.values()):
        raise InvalidInputError(
            "no feature column left"
            + (f" ({len(left_out)} left out: {'; '.join(report)})" if report else "")
        )
    ordered = tuple(specs[c] for c in columns if c in specs)
    return ColumnPlan(columns=ordered, left_out=left_out, report=tuple(report), n_rows=total)


def _classify(
    name: str,
    dtype_name: str,
    dtype: Any,
    st: _Stats,
    *,
    explicit: bool,
    force_categorical: bool,
    max_levels: int,
    max_categorical_levels: int,
) -> tuple[ColumnSpec | None, str | None, str | None]:
    """(spec or None, left-out reason or None, report note or None) for one column."""

    def refuse(reason: str) -> tuple[ColumnSpec | None, str | None, str | None]:
        if explicit:
            raise TableError(f"column {name!r} cannot be a feature: {reason}")
        return None, reason, None

    non_blank = st.n - st.n_blank
    if non_blank == 0:
        return refuse(f"blank in all {st.n:,} rows")
    if pd.api.types.is_bool_dtype(dtype):
        return (
            ColumnSpec(name, "feature", "flag", dtype_name, st.n_blank, (), _TRUE, _FALSE),
            None,
            None,
        )
    is_text = _is_text_dtype(dtype)
    if not is_text and not _is_number_dtype(dtype):
        return refuse(f"its type {dtype_name} is not numbers, flags or text")
    if not force_categorical and (not is_text or st.n_bad == 0):
        if not explicit and _looks_like_id(name):
            return None, "looks like an identifier (list it in features to use it)", None
        note = None
        if is_text and st.n_blank:
            note = f"column {name!r} read as numbers, {st.n_blank:,} blank cells counted missing"
        return ColumnSpec(name, "feature", "numeric", dtype_name, st.n_blank), None, note
    if st.n_bad and st.n_number >= st.n_bad and not force_categorical:
        row, value = st.first_bad or (-1, "")
        reason = (
            f"mixes numbers and text: row {row} has {_fmt_value(value)} "
            f"({st.n_bad:,} of {non_blank:,} values are not numbers)"
        )
        if explicit:
            raise TableError(
                f"column {name!r} {reason}; fix those cells or list the column in "
                "categorical to treat it as text"
            )
        return None, reason, None
    distinct = sorted(st.distinct)
    n_levels = len(distinct)
    lower = {v.lower() for v in distinct}
    if not force_categorical and not st.overflow:
        if lower <= set(_TRUE) | set(_FALSE):
            return (
                ColumnSpec(name, "feature", "flag", dtype_name, st.n_blank, (), _TRUE, _FALSE),
                None,
                None,
            )
        if n_levels == 2 and len(lower) == 2:
            return (
                ColumnSpec(
                    name,
                    "feature",
                    "flag",
                    dtype_name,
                    st.n_blank,
                    (),
                    (distinct[1],),
                    (distinct[0],),
                ),
                None,
                f"column {name!r} read as a flag: 1 for {distinct[1]!r}, 0 for {distinct[0]!r}",
            )
    shown = f"more than {_DISTINCT_CAP:,}" if st.overflow else f"{n_levels:,}"
    if st.overflow or n_levels > max_categorical_levels:
        if explicit:
            raise TableError(
                f"column {name!r} has {shown} distinct values; a categorical feature may have "
                f"at most {max_categorical_levels:,} (max_categorical_levels)"
            )
        return (
            None,
            f"{shown} distinct text values (more than {max_levels:,}); "
            "list it in features to force it",
            None,
        )
    if n_levels > max_levels and not explicit:
        return (
            None,
            f"{shown} distinct text values (more than {max_levels:,}); "
            "list it in features to force it",
            None,
        )
    return (
        ColumnSpec(name, "feature", "categorical", dtype_name, st.n_blank, tuple(distinct)),
        None,
        None,
    )


# --------------------------------------------------------------------------- exact quantiles

_HIST_BINS = 1024
_COLLECT_LIMIT = 1_000_000


def _interval_pass(
    block: np.ndarray, tasks: tuple[tuple[int, float, float, bool], ...]
) -> list[np.ndarray]:
    """Per task (column, lo, hi, collect): the values in [lo, hi), or their histogram."""
    out = []
    for j, lo, hi, collect in tasks:
        v = block[:, j]
        v = v[(v >= lo) & (v < hi)]
        if collect:
            out.append(v)
        else:
            edges = np.linspace(lo, hi, _HIST_BINS + 1)
            idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, _HIST_BINS - 1)
            out.append(np.bincount(idx, minlength=_HIST_BINS))
    return out


def _combine_pass(a: list[np.ndarray], b: list[np.ndarray]) -> list[np.ndarray]:
    return [
        np.concatenate([x, y]) if x.dtype == np.float64 else x + y
        for x, y in zip(a, b, strict=True)
    ]


def _order_statistics(X: da.Array, wanted: list[list[int]]) -> list[dict[int, float]]:
    """Exact order statistics: ``out[j][r]`` is the r-th smallest non-NaN value of column j.

    Histogram refinement: each pass counts, per wanted rank, the values of a shrinking
    interval in 1,024 bins (one compute), until the interval holds at most a million values,
    which one more pass gathers and sorts. Typically three computes.
    """
    blocks = [b for b in X.rechunk({1: -1}).to_delayed().ravel()]
    with warnings.catch_warnings():  # an all-NaN column: no rank is wanted of it
        warnings.simplefilter("ignore", RuntimeWarning)
        lo_hi = dask.compute(da.nanmin(X, axis=0), da.nanmax(X, axis=0), (~da.isnan(X)).sum(axis=0))
    mins, maxs, counts = (np.asarray(a) for a in lo_hi)
    # state per (j, r): [lo, hi, n_below_lo, n_in_interval]
    state = {
        (j, r): [float(mins[j]), float(np.nextafter(maxs[j], np.inf)), 0, int(counts[j])]
        for j, ranks in enumerate(wanted)
        for r in ranks
    }
    out: list[dict[int, float]] = [{} for _ in wanted]
    while state:
        keys = list(state)
        tasks = tuple(
            (j, state[(j, r)][0], state[(j, r)][1], state[(j, r)][3] <= _COLLECT_LIMIT)
            for j, r in keys
        )
        results = dask.compute(
            _tree_reduce([dask.delayed(_interval_pass)(b, tasks) for b in blocks], _combine_pass)
        )[0]
        for (j, r), task, res in zip(keys, tasks, results, strict=True):
            lo, hi, below, _ = state[(j, r)]
            if task[3]:
                k = int(r - below)
                out[j][r] = float(np.partition(np.asarray(res, dtype=np.float64), k)[k])
                del state[(j, r)]
                continue
            cum = below + np.cumsum(res)
            i = int(np.searchsorted(cum, r, side="right"))
            edges = np.linspace(lo, hi, _HIST_BINS + 1)
            new_lo, new_hi = float(edges[i]), float(edges[i + 1])
            new_below = int(cum[i - 1]) if i else below
            if np.nextafter(new_lo, np.inf) >= new_hi:  # one float left: every value is it
                out[j][r] = new_lo
                del state[(j, r)]
                continue
            state[(j, r)] = [new_lo, new_hi, new_below, int(res[i])]
    return out


def _exact_quantiles(X: da.Array, qs: Sequence[float]) -> np.ndarray:
    """``np.nanpercentile(X, 100 * qs, axis=0)`` (linear interpolation), exactly, for dask.

    Returns an array of shape (len(qs), n_columns); NaN for a column without values.
    """
    counts = np.asarray(dask.compute((~da.isnan(X)).sum(axis=0))[0])
    wanted: list[list[int]] = []
    for n in counts:
        ranks = set()
        for q in qs:
            pos = q * (int(n) - 1)
            ranks.update({math.floor(pos), math.ceil(pos)} if n else set())
        wanted.append(sorted(ranks))
    stats = _order_statistics(X, wanted)
    out = np.full((len(qs), len(counts)), np.nan)
    for j, n in enumerate(counts):
        if not n:
            continue
        for i, q in enumerate(qs):
            pos = q * (int(n) - 1)
            a, b = stats[j][math.floor(pos)], stats[j][math.ceil(pos)]
            t = pos - math.floor(pos)
            out[i, j] = a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)
    return out


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class Holdout:
    """A seeded split: a row is held out with probability `fraction`, by its row number.

    The same split as :func:`kmflow.kernels.split.holdout_rows` on the table's rows: row
    ``i``'s side depends only on ``(seed, i)``.
    """

    fraction: float
    seed: int


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit_preprocessing` saw on the training rows.

    Attributes
    ----------
    n_rows : int
        Rows of the table.
    n_train : int
        Training rows (before dropping).
    n_dropped : int
        Training rows dropped for a missing number or flag (``missing="drop"``).
    missing : dict of str to int
        Missing (blank, or unseen flag) cells per feature column in the training rows.
    """

    n_rows: int
    n_train: int
    n_dropped: int
    missing: dict[str, int]

    @property
    def n_used(self) -> int:
        """Training rows the scaler was fitted on."""
        return self.n_train - self.n_dropped


@dataclass(frozen=True)
class TransformReport:
    """What a transform found in its input.

    Attributes
    ----------
    n_rows : int
        Rows given.
    n_dropped : int
        Rows dropped for a missing number or flag (``missing="drop"``).
    missing : dict of str to int
        Missing cells per feature column (imputed, dropped, or the ``missing`` level).
    unseen : dict of str to int
        Cells per column with a value the fit never saw: an unknown category (encoded as
        all zeros in its one-hot block) or a flag value that is neither yes nor no
        (treated as missing).
    """

    n_rows: int
    n_dropped: int
    missing: dict[str, int]
    unseen: dict[str, int]


@dataclass(frozen=True)
class _Column:
    name: str
    role: Role
    kind: Kind | None
    dtype: str
    categories: tuple[str, ...] = ()
    true_values: tuple[str, ...] = ()
    false_values: tuple[str, ...] = ()
    impute: float | None = None

    def outputs(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in self.categories]
        if self.kind == "flag" and len(self.true_values) == 1:
            return [f"{self.name}={self.true_values[0]}"]
        if self.kind is None:
            return []
        return [self.name]


def _encode_partition(
    pdf: pd.DataFrame, columns: tuple[_Column, ...]
) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, int], tuple[int, str, int] | None]:
    """Raw encoded features (numbers and flags NaN where missing, one-hot 0/1), unscaled.

    Returns (Z, missing-number row mask, missing counts, unseen counts, first bad cell).
    """
    rows = pdf.index.to_numpy()
    n = len(pdf)
    blocks: list[np.ndarray] = []
    missing_rows = np.zeros(n, dtype=bool)
    missing: dict[str, int] = {}
    unseen: dict[str, int] = {}
    for col in columns:
        if col.kind is None:
            continue
        values = pdf[col.name]
        if col.kind == "numeric":
            x, blank, bad = _numbers(values)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise TableError(
                    f"column {col.name!r} must hold numbers: row {rows[i]} has "
                    f"{_fmt_value(values.iloc[i])}"
                )
            missing[col.name] = int(blank.sum())
            missing_rows |= blank
            blocks.append(x[:, None])
        elif col.kind == "flag":
            x, blank, odd = _flags(values, col.true_values, col.false_values)
            missing[col.name] = int(blank.sum())
            unseen[col.name] = int(odd.sum())
            missing_rows |= blank | odd
            blocks.append(x[:, None])
        else:
            text, blank = _text(
                values.astype(object) if not _is_text_dtype(values.dtype) else values
            )
            cats = pd.Index(col.categories)
            codes = cats.get_indexer(pd.Index(text.astype(str)))
            if MISSING_LEVEL in col.categories:
                codes = np.where(blank, cats.get_loc(MISSING_LEVEL), codes)
            else:
                codes = np.where(blank, -1, codes)
            missing[col.name] = int(blank.sum())
            unseen[col.name] = int(((codes < 0) & ~blank).sum())
            onehot = np.zeros((n, len(cats)), dtype=np.float64)
            known = codes >= 0
            onehot[np.flatnonzero(known), codes[known]] = 1.0
            blocks.append(onehot)
    Z = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))
    return Z, missing_rows, missing, unseen, None


def _train_rows_block(
    pdf: pd.DataFrame, mask: np.ndarray | None, columns: tuple[_Column, ...]
) -> pd.DataFrame:
    if mask is None:
        return pdf
    mask = np.asarray(mask, dtype=bool)
    if len(mask) != len(pdf):
        raise InvalidInputError(
            f"train_rows has {len(mask)} rows in a partition of {len(pdf)}: it must be aligned "
            "with the table's partitions"
        )
    return pdf[mask]


def _fit_stats(
    pdf: pd.DataFrame, mask: np.ndarray | None, columns: tuple[_Column, ...]
) -> dict[str, Any]:
    """Counts of one partition's training rows: missing per column, first missing row,
    rows with a missing number, and the category counts (all rows / complete rows)."""
    train = _train_rows_block(pdf, mask, columns)
    rows = train.index.to_numpy()
    _, missing_rows, missing, unseen, _ = _encode_partition(train, _numbers_only(columns))
    first: dict[str, int] = {}
    levels: dict[str, Counter[str]] = {}
    levels_complete: dict[str, Counter[str]] = {}
    for col in columns:
        values = train[col.name] if col.kind is not None else None
        if col.kind in ("numeric", "flag"):
            if col.kind == "numeric":
                _, blank, _ = _numbers(values)  # type: ignore[arg-type]
            else:
                x, _, _ = _flags(values, col.true_values, col.false_values)  # type: ignore[arg-type]
                blank = np.isnan(x)
            if blank.any():
                first[col.name] = int(rows[np.flatnonzero(blank)[0]])
        elif col.kind == "categorical":
            v = values if _is_text_dtype(values.dtype) else values.astype(object)  # type: ignore[union-attr]
            text, blank = _text(v)
            labels = np.where(blank, MISSING_LEVEL, text).astype(str)
            levels[col.name] = Counter(labels.tolist())
            levels_complete[col.name] = Counter(labels[~missing_rows].tolist())
            missing[col.name] = int(blank.sum())
            if blank.any():
                first[col.name] = int(rows[np.flatnonzero(blank)[0]])
    for name, k in unseen.items():
        missing[name] = missing.get(name, 0) + k
    return {
        "n": len(train),
        "n_missing_rows": int(missing_rows.sum()),
        "missing": missing,
        "first": first,
        "levels": levels,
        "levels_complete": levels_complete,
    }


def _merge_fit_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    first = dict(a["first"])
    for k, v in b["first"].items():
        first[k] = min(first.get(k, v), v)
    return {
        "n": a["n"] + b["n"],
        "n_missing_rows": a["n_missing_rows"] + b["n_missing_rows"],
        "missing": {k: a["missing"].get(k, 0) + b["missing"].get(k, 0) for k in a["missing"]},
        "first": first,
        "levels": {k: a["levels"][k] + b["levels"][k] for k in a["levels"]},
        "levels_complete": {
            k: a["levels_complete"][k] + b["levels_complete"][k] for k in a["levels_complete"]
        },
    }


def _numbers_only(columns: tuple[_Column, ...]) -> tuple[_Column, ...]:
    return tuple(c for c in columns if c.kind in ("numeric", "flag"))


def _train_matrix_block(
    pdf: pd.DataFrame, mask: np.ndarray | None, columns: tuple[_Column, ...], drop: bool
) -> np.ndarray:
    """Numbers and flags (NaN where missing) of one partition's training rows."""
    train = _train_rows_block(pdf, mask, columns)
    Z, missing_rows, _, _, _ = _encode_partition(train, columns)
    return Z[~missing_rows] if drop else Z


def _partition_lengths(table: Table | Any) -> tuple[int, ...]:
    if isinstance(table, Table):
        return table.partition_rows
    return tuple(int(n) for n in table.map_partitions(len).compute())


def _mask_blocks(train_rows: Any, frame: Any, lengths: tuple[int, ...]) -> list[Any]:
    """The training mask as one (delayed) bool array per partition, or Nones."""
    if train_rows is None:
        return [None] * len(lengths)
    if isinstance(train_rows, Holdout):
        dummy = da.empty((sum(lengths), 1), chunks=(lengths, 1))
        held = holdout_rows(dummy, train_rows.fraction, seed=train_rows.seed)
        return list((~held).to_delayed().ravel())
    if isinstance(train_rows, da.Array):
        if train_rows.shape != (sum(lengths),):
            raise InvalidInputError(
                f"train_rows has shape {train_rows.shape}; expected ({sum(lengths)},)"
            )
        return list(train_rows.astype(bool).rechunk((lengths,)).to_delayed().ravel())
    if hasattr(train_rows, "to_delayed"):  # a dask Series
        if train_rows.npartitions != len(lengths):
            raise InvalidInputError(
                f"train_rows has {train_rows.npartitions} partitions; the table has {len(lengths)}"
            )
        return list(train_rows.to_delayed())
    mask = np.asarray(train_rows)
    if mask.dtype != bool or mask.shape != (sum(lengths),):
        raise InvalidInputError(
            f"train_rows must be a bool array of shape ({sum(lengths)},); got {mask.dtype} "
            f"of shape {mask.shape}"
        )
    return np.split(mask, np.cumsum(lengths)[:-1])


def fit_preprocessing(
    table: Table | Any,
    plan: ColumnPlan,
    *,
    train_rows: Holdout | Any = None,
    missing: MissingPolicy = "median",
    scale: ScaleKind = "standard",
) -> Preprocessing:
    """Fit the map from raw records to features on the training rows.

    Parameters
    ----------
    table : Table or dask.dataframe.DataFrame
        The rows the plan was made on.
    plan : ColumnPlan
        From :func:`plan_columns`.
    train_rows : Holdout, bool array or bool dask Series, optional
        The training rows: a :class:`Holdout` (rows not held out), a numpy or dask bool
        array of one entry per row (table order), or a bool dask Series partitioned like
        the table. None: all rows.
    missing : {"median", "drop", "error"}, default "median"
        Missing numbers and flags in the training rows: imputed with the exact median of
        the column's training rows (the same value replaces missing cells in every later
        transform), dropped (the rows are counted in :attr:`Preprocessing.fit_report`;
        later transforms drop such rows too), or an error naming the column, the count and
        the first row. Missing categories are always a ``missing`` level (when the training
        rows have any).
    scale : {"standard", "robust", "minmax", "none"}, default "standard"
        Scaler of the numbers and flags (flags are 0/1 numbers and scaled like them):
        scikit-learn's StandardScaler (mean, population std), RobustScaler (median, the
        25-75 percentile range), MinMaxScaler (to 0..1), or none. One-hot columns are left
        0/1 (center 0, scale 1). A zero spread scales by 1.

    Returns
    -------
    Preprocessing

    Raises
    ------
    TableError
        ``missing="error"`` and a feature column has missing training values; a numeric
        column holds text; a column has no training value to take the median of; no
        training rows (left).
    InvalidInputError
        A bad policy or a `train_rows` that does not match the table.

    Notes
    -----
    Computes: one for the training counts and categories, then (median / robust) about
    three for exact order statistics (histogram refinement, no approximation: the
    medians and quartiles equal pandas' / numpy's on the training rows), then one for the
    scaler (dask-ml's StandardScaler / MinMaxScaler, whose fitted mean and std or min and
    range become the stored center and scale). dask-ml's RobustScaler is not used: its
    percentiles are approximate when the data has several chunks.
    """
    if missing not in ("error", "drop", "median"):
        raise InvalidInputError(f"missing={missing!r}; use 'error', 'drop' or 'median'")
    if scale not in ("standard", "robust", "minmax", "none"):
        raise InvalidInputError(f"scale={scale!r}; use 'standard', 'robust', 'minmax' or 'none'")
    frame = table.frame if isinstance(table, Table) else table
    lengths = _partition_lengths(table)
    masks = _mask_blocks(train_rows, frame, lengths)
    parts = frame[[c.name for c in plan.columns]].to_delayed()
    prelim = tuple(
        _Column(c.name, c.role, c.kind, c.dtype, c.levels, c.true_values, c.false_values)
        for c in plan.columns
    )
    feats = tuple(c for c in prelim if c.kind is not None)
    stats = dask.compute(
        _tree_reduce(
            [dask.delayed(_fit_stats)(p, m, feats) for p, m in zip(parts, masks, strict=True)],
            _merge_fit_stats,
        )
    )[0]
    if stats["n"] == 0:
        raise TableError("no training rows: train_rows selects none of the table's rows")
    numbers = _numbers_only(feats)
    if missing == "error":
        for col in numbers:
            if stats["missing"][col.name]:
                raise TableError(
                    f"column {col.name!r} has {stats['missing'][col.name]:,} missing values in "
                    f"the training rows (first: row {stats['first'][col.name]}); choose "
                    "missing='drop' or 'median'"
                )
    drop = missing == "drop"
    n_dropped = stats["n_missing_rows"] if drop else 0
    if stats["n"] - n_dropped == 0:
        raise TableError(
            f"all {stats['n']:,} training rows have a missing number or flag; none left to fit"
        )
    counts = stats["levels_complete"] if drop else stats["levels"]
    cats: dict[str, tuple[str, ...]] = {}
    for col in feats:
        if col.kind == "categorical":
            seen = sorted(k for k, v in counts[col.name].items() if v and k != MISSING_LEVEL)
            if counts[col.name].get(MISSING_LEVEL):
                seen.append(MISSING_LEVEL)
            cats[col.name] = tuple(seen)

    # The numbers and flags of the training rows, NaN where missing.
    n_num = len(numbers)
    impute = np.zeros(n_num)
    center = np.zeros(n_num)
    spread = np.ones(n_num)
    if n_num:
        blocks = [
            dask.delayed(_train_matrix_block)(p, m, numbers, drop)
            for p, m in zip(parts, masks, strict=True)
        ]
        sizes = _train_lengths(parts, masks, numbers, drop)
        R = da.concatenate(
            [
                da.from_delayed(b, shape=(n, n_num), dtype=np.float64)
                for b, n in zip(blocks, sizes, strict=True)
                if n
            ]
        )
        if missing == "median":
            impute = _exact_quantiles(R, [0.5])[0]
            empty = [c.name for c, v in zip(numbers, impute, strict=True) if np.isnan(v)]
            if empty:
                raise TableError(
                    f"column {empty[0]!r} has no value in the training rows to take the median of"
                )
            R = da.where(da.isnan(R), impute[None, :], R)
        center, spread = _fit_scaler(R, scale)
    feature_impute = dict(zip([c.name for c in numbers], impute.tolist(), strict=True))
    final = tuple(
        _Column(
            c.name,
            c.role,
            c.kind,
            c.dtype,
            cats.get(c.name, ()),
            c.true_values,
            c.false_values,
            feature_impute.get(c.name) if missing == "median" else None,
        )
        for c in prelim
    )
    n_out = sum(len(c.outputs()) for c in final)
    full_center = np.zeros(n_out)
    full_scale = np.ones(n_out)
    pos, k = 0, 0
    for c in final:
        width = len(c.outputs())
        if c.kind in ("numeric", "flag"):
            full_center[pos] = center[k]
            full_scale[pos] = spread[k]
            k += 1
        pos += width
    report = FitReport(
        n_rows=sum(lengths),
        n_train=int(stats["n"]),
        n_dropped=int(n_dropped),
        missing={c.name: int(stats["missing"][c.name]) for c in feats},
    )
    return Preprocessing(final, missing, scale, full_center, full_scale, report)


def _count_train(p: pd.DataFrame, m: Any, numbers: tuple[_Column, ...], drop: bool) -> int:
    train = _train_rows_block(p, m, numbers)
    return int((~_encode_partition(train, numbers)[1]).sum()) if drop else len(train)


def _train_lengths(
    parts: list[Any], masks: list[Any], numbers: tuple[_Column, ...], drop: bool
) -> list[int]:
    """Training rows (kept after dropping) per partition: one compute."""
    return list(
        dask.compute(
            [
                dask.delayed(_count_train)(p, m, numbers, drop)
                for p, m in zip(parts, masks, strict=True)
            ]
        )[0]
    )


def _fit_scaler(R: da.Array, scale: ScaleKind) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) of the training numbers: ``(x - center) / scale`` is the feature."""
    n = R.shape[1]
    if scale == "none":
        return np.zeros(n), np.ones(n)
    if scale == "standard":
        from dask_ml.preprocessing import StandardScaler

        fitted = StandardScaler().fit(R)
        center, spread = np.asarray(fitted.mean_), np.asarray(fitted.scale_)
    elif scale == "minmax":
        from dask_ml.preprocessing import MinMaxScaler

        fitted = MinMaxScaler().fit(R)
        center, spread = np.asarray(fitted.data_min_), np.asarray(fitted.data_range_)
    else:
        q = _exact_quantiles(R, [0.25, 0.5, 0.75])
        center, spread = q[1], q[2] - q[0]
    spread = np.where(spread < 10 * np.finfo(np.float64).eps, 1.0, spread)
    return center.astype(np.float64), spread.astype(np.float64)


# --------------------------------------------------------------------------- the fitted map


class Preprocessing:
    """The fitted map from raw records to features: part of a segments model.

    Built by :func:`fit_preprocessing`, stored as :meth:`to_json` plus :meth:`arrays` (no
    pickle) and rebuilt by :meth:`from_json`. Immutable.

    Each feature column becomes one or more output features, in table order: a number its
    value, a flag 1/0 (yes/no), a categorical column one 0/1 column per category
    (``"plan=gold"``; an unseen category is all zeros). Missing numbers and flags are
    imputed (``missing="median"``), dropped with their row (``"drop"``) or an error
    (``"error"``); missing categories go to the ``missing`` level when the fit saw one
    (otherwise they are all zeros). Then every output is ``(x - center) / scale``.

    Attributes
    ----------
    feature_names : tuple of str
        The output columns.
    input_columns : tuple of str
        The columns :meth:`transform` reads (the feature columns, in table order).
    id, target : str or None
        The id and target columns of the table (kept, not features).
    missing : {"median", "drop", "error"}
    scale_kind : {"standard", "robust", "minmax", "none"}
    fit_report : FitReport
    """

    def __init__(
        self,
        columns: tuple[_Column, ...],
        missing: MissingPolicy,
        scale_kind: ScaleKind,
        center: np.ndarray,
        scale: np.ndarray,
        fit_report: FitReport,
    ) -> None:
        columns = tuple(columns)
        features = tuple(c for c in columns if c.kind is not None)
        feature_names = tuple(name for c in features for name in c.outputs())
        center = np.array(center, dtype=np.float64)
        scale = np.array(scale, dtype=np.float64)
        if center.shape != (len(feature_names),) or scale.shape != (len(feature_names),):
            raise InvalidInputError(
                f"center and scale must have shape ({len(feature_names)},); got "
                f"{center.shape} and {scale.shape}"
            )
        if not (np.all(np.isfinite(center)) and np.all(scale > 0)):
            raise InvalidInputError("center must be finite and scale positive")
        center.flags.writeable = False
        scale.flags.writeable = False
        fields = {
            "_columns": columns,
            "_features": features,
            "_center": center,
            "_scale": scale,
            "missing": missing,
            "scale_kind": scale_kind,
            "fit_report": fit_report,
            "feature_names": feature_names,
            "input_columns": tuple(c.name for c in features),
            "id": next((c.name for c in columns if c.role == "id"), None),
            "target": next((c.name for c in columns if c.role == "target"), None),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    _columns: tuple[_Column, ...]
    _features: tuple[_Column, ...]
    _center: np.ndarray
    _scale: np.ndarray
    missing: MissingPolicy
    scale_kind: ScaleKind
    fit_report: FitReport
    feature_names: tuple[str, ...]
    input_columns: tuple[str, ...]
    id: str | None
    target: str | None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Preprocessing is immutable; cannot set {name!r}")

    def __repr__(self) -> str:
        return (
            f"Preprocessing({len(self.input_columns)} columns -> {self.n_features} features, "
            f"missing={self.missing!r}, scale={self.scale_kind!r})"
        )

    @property
    def n_features(self) -> int:
        """Number of output features."""
        return len(self.feature_names)

    def column_plan(self, *, roles: Sequence[str] = ("id", "target", "feature")) -> ColumnPlan:
        """The column plan this preprocessing was fitted with (the kept columns of `roles`)."""
        specs = tuple(
            ColumnSpec(
                name=c.name,
                role=c.role,
                kind=c.kind,
                dtype=c.dtype,
                levels=tuple(c.categories),
                true_values=tuple(c.true_values),
                false_values=tuple(c.false_values),
            )
            for c in self._columns
            if c.role in roles
        )
        return ColumnPlan(columns=specs, left_out={}, report=(), n_rows=self.fit_report.n_rows)

    # ------------------------------------------------------------------ storage

    def to_json(self) -> dict[str, Any]:
        """The JSON part: ``type`` ``"table"``, the columns with their role, kind and fit.

        Each column: ``name``, ``role`` (id, target, feature), ``kind`` (numeric, flag,
        categorical or null), ``dtype`` as read, ``categories`` (categorical),
        ``true_values`` / ``false_values`` (flag), ``impute`` (median policy) and
        ``outputs`` (its output feature names). Plus ``missing``, ``scale``,
        ``feature_names`` and ``fit`` (the :class:`FitReport`).
        """
        return {
            "type": "table",
            "version": _SPEC_VERSION,
            "missing": self.missing,
            "scale": self.scale_kind,
            "columns": [
                {
                    "name": c.name,
                    "role": c.role,
                    "kind": c.kind,
                    "dtype": c.dtype,
                    "categories": list(c.categories),
                    "true_values": list(c.true_values),
                    "false_values": list(c.false_values),
                    "impute": c.impute,
                    "outputs": c.outputs(),
                }
                for c in self._columns
            ],
            "feature_names": list(self.feature_names),
            "fit": {
                "n_rows": self.fit_report.n_rows,
                "n_train": self.fit_report.n_train,
                "n_dropped": self.fit_report.n_dropped,
                "missing": dict(self.fit_report.missing),
            },
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The array part: ``center`` and ``scale``, float64 of shape (n_features,)."""
        return {"center": self._center.copy(), "scale": self._scale.copy()}

    @classmethod
    def from_json(cls, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Preprocessing:
        """Rebuild from :meth:`to_json` and :meth:`arrays` (after a JSON round trip).

        Raises
        ------
        InvalidInputError
            Not a ``table`` spec, a newer version, missing or inconsistent parts.
        """
        try:
            if spec.get("type") != "table":
                raise InvalidInputError(f"not a table preprocessing: type={spec.get('type')!r}")
            if int(spec.get("version", 0)) > _SPEC_VERSION:
                raise InvalidInputError(
                    f"preprocessing version {spec['version']} is newer than this kmflow reads "
                    f"({_SPEC_VERSION})"
                )
            columns = tuple(
                _Column(
                    name=str(c["name"]),
                    role=c["role"],
                    kind=c["kind"],
                    dtype=str(c["dtype"]),
                    categories=tuple(map(str, c.get("categories", []))),
                    true_values=tuple(map(str, c.get("true_values", []))),
                    false_values=tuple(map(str, c.get("false_values", []))),
                    impute=None if c.get("impute") is None else float(c["impute"]),
                )
                for c in spec["columns"]
            )
            fit = spec.get("fit", {})
            report = FitReport(
                n_rows=int(fit.get("n_rows", 0)),
                n_train=int(fit.get("n_train", 0)),
                n_dropped=int(fit.get("n_dropped", 0)),
                missing={str(k): int(v) for k, v in fit.get("missing", {}).items()},
            )
            prep = cls(
                columns,
                spec["missing"],
                spec["scale"],
                np.asarray(arrays["center"], dtype=np.float64),
                np.asarray(arrays["scale"], dtype=np.float64),
                report,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError(f"invalid table preprocessing spec: {exc!r}") from exc
        if "feature_names" in spec and list(spec["feature_names"]) != list(prep.feature_names):
            raise InvalidInputError("the spec's feature_names do not match its columns")
        return prep

    # ------------------------------------------------------------------ applying

    def transform(self, data: Any, *, report: bool = False) -> Any:
        """Map raw records to features.

        Parameters
        ----------
        data : Table, dask DataFrame, pandas DataFrame, list of dicts or dict of lists
            Records with (at least) :attr:`input_columns`; other columns are ignored.
            Values may be text (as read from CSV) or numbers/booleans.
        report : bool, default False
            Also return a :class:`TransformReport` (for dask input: one compute).

        Returns
        -------
        X : numpy.ndarray or dask.array.Array of shape (n_rows, n_features), float64
            A dask array (row chunks = the partitions; known chunk sizes) for dask input,
            numpy otherwise. With ``missing="drop"``, rows with a missing number or flag
            are left out (dask: the chunk sizes are computed, one compute).
        report : TransformReport
            Only with ``report=True``.

        Raises
        ------
        InvalidInputError
            A required column is missing (close names suggested).
        TableError
            A number column holds text (column, row, value), or ``missing="error"`` and a
            number or flag is missing (column, count, first row); for dask input, raised
            when computed.
        """
        frame = data.frame if isinstance(data, Table) else data
        if hasattr(frame, "to_delayed") and hasattr(frame, "npartitions"):
            return self._transform_dask(data, frame, report=report)
        pdf = _as_pandas(frame)
        check_names(self.input_columns, [str(c) for c in pdf.columns], "transform")
        X, rep = _finish(pdf, self._features, self._center, self._scale, self.missing)
        return (X, rep) if report else X

    def check(self, data: Any) -> TransformReport:
        """Missing and unseen values in `data`, without keeping the features."""
        return self.transform(data, report=True)[1]  # type: ignore[no-any-return]

    def _transform_dask(self, data: Any, frame: Any, *, report: bool) -> Any:
        check_names(self.input_columns, [str(c) for c in frame.columns], "transform")
        lengths = _partition_lengths(data)
        parts = frame[list(self.input_columns)].to_delayed()
        pairs = [
            dask.delayed(_finish, nout=2)(
                p, self._features, self._center, self._scale, self.missing
            )
            for p in parts
        ]
        if self.missing == "drop":
            chunks: list[float] = [np.nan] * len(parts)
        else:
            chunks = list(lengths)
        X = da.concatenate(
            [
                da.from_delayed(x, shape=(n, self.n_features), dtype=np.float64)
                for (x, _), n in zip(pairs, chunks, strict=True)
            ]
        )
        if self.missing == "drop":
            X = X.compute_chunk_sizes()
        if not report:
            return X
        reports = dask.compute(_tree_reduce([r for _, r in pairs], _merge_reports))[0]
        return X, reports

    def inverse_centers(self, centers: Any) -> pd.DataFrame:
        """Centers in original units: numbers unscaled, flags and one-hot as shares.

        Parameters
        ----------
        centers : array-like of shape (n_clusters, n_features)

        Returns
        -------
        pandas.DataFrame of shape (n_clusters, n_features)
            Columns :attr:`feature_names`: a number's center in its own units, a flag's
            share of yes, a category's share of the segment (one-hot blocks sum to about 1).
        """
        C = np.asarray(centers, dtype=np.float64)
        if C.ndim != 2 or C.shape[1] != self.n_features:
            raise InvalidInputError(
                f"centers must have shape (k, {self.n_features}); got {C.shape}"
            )
        return pd.DataFrame(C * self._scale + self._center, columns=list(self.feature_names))


def _as_pandas(data: Any) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        try:
            return pd.DataFrame({k: list(v) for k, v in data.items()})
        except ValueError as exc:
            raise InvalidInputError(f"a dict of lists needs lists of one length: {exc}") from exc
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        if not all(isinstance(r, Mapping) for r in data):
            raise InvalidInputError("records must be a list of dicts (one per record)")
        return pd.DataFrame.from_records(list(data))
    raise InvalidInputError(
        f"cannot transform a {type(data).__name__}: give a DataFrame, a list of dicts or a "
        "dict of lists"
    )


def _finish(
    pdf: pd.DataFrame,
    features: tuple[_Column, ...],
    center: np.ndarray,
    scale: np.ndarray,
    missing: MissingPolicy,
) -> tuple[np.ndarray, TransformReport]:
    """Encode, impute or drop, scale: the whole transform of one partition."""
    Z, missing_rows, n_missing, unseen, _ = _encode_partition(pdf, features)
    rows = pdf.index.to_numpy()
    n_dropped = 0
    if missing_rows.any():
        if missing == "error":
            pos = 0
            for col in features:
                width = len(col.outputs())
                if col.kind in ("numeric", "flag"):
                    bad = np.isnan(Z[:, pos])
                    if bad.any():
                        raise TableError(
                            f"column {col.name!r} has {int(bad.sum()):,} missing values "
                            f"(first: row {rows[np.flatnonzero(bad)[0]]}) and the model's "
                            "missing policy is 'error'"
                        )
                pos += width
        elif missing == "drop":
            n_dropped = int(missing_rows.sum())
            Z = Z[~missing_rows]
        else:
            pos = 0
            for col in features:
                width = len(col.outputs())
                if col.kind in ("numeric", "flag"):
                    z = Z[:, pos]
                    z[np.isnan(z)] = col.impute if col.impute is not None else np.nan
                pos += width
    X = (Z - center) / scale
    rep = TransformReport(
        n_rows=len(pdf),
        n_dropped=n_dropped,
        missing={k: v for k, v in n_missing.items()},
        unseen={k: v for k, v in unseen.items()},
    )
    return X, rep


def _merge_reports(a: TransformReport, b: TransformReport) -> TransformReport:
    return TransformReport(
        n_rows=a.n_rows + b.n_rows,
        n_dropped=a.n_dropped + b.n_dropped,
        missing={k: a.missing.get(k, 0) + b.missing.get(k, 0) for k in a.missing | b.missing},
        unseen={k: a.unseen.get(k, 0) + b.unseen.get(k, 0) for k in a.unseen | b.unseen},
    )
