"""The figures of a model report, as PNG bytes with the values they show.

Each function draws one figure on its own :class:`~matplotlib.figure.Figure` with the Agg
canvas (never ``pyplot``) and returns a :class:`Picture`: the PNG, a title, a caption and
``data``, the values the figure marks, read back from the drawn artists (the k marked as
chosen is the x of the line drawn there), so tests check the picture, not only its inputs.

- :func:`sweep_figure`: inertia (the knee marked), Davies-Bouldin, Calinski-Harabasz and
  silhouette against k, the chosen k marked in every panel
- :func:`silhouette_figure`: mean silhouette per cluster on the evaluation sample
- :func:`pca_scatter`: a sample on its first two principal components, by cluster, with
  the centers
- :func:`rgb_cube`: a palette's pixel sample in the RGB cube, with the palette colors
- :func:`swatches_figure`: a palette's colors with their shares
- :func:`sizes_figure`: members per cluster
- :func:`centers_heatmap`: the centers standardised feature by feature
- :func:`drift_figure`: every drift statistic per checked batch against its threshold,
  new versions (retrains) and promotions marked
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from kmflow.errors import InvalidInputError

__all__ = [
    "MAX_HEATMAP_FEATURES",
    "Picture",
    "centers_heatmap",
    "cluster_colors",
    "drift_figure",
    "pca_scatter",
    "rgb_cube",
    "silhouette_figure",
    "sizes_figure",
    "swatches_figure",
    "sweep_figure",
]

#: The heatmap shows at most this many features (those that vary most across the centers).
MAX_HEATMAP_FEATURES = 40
_DPI = 100
_CHOSEN = "#d62728"
_KNEE = "#ff7f0e"


@dataclass(frozen=True)
class Picture:
    """One figure of a report.

    Attributes
    ----------
    name : str
        File stem (``sweep`` -> ``sweep.png``).
    title : str
        Heading shown above it.
    png : bytes
        The PNG file.
    caption : str
        What it shows and from which data.
    data : dict
        The values it marks (see each function).
    """

    name: str
    title: str
    png: bytes
    caption: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return buffer.getvalue()


def cluster_colors(k: int) -> np.ndarray:
    """``k`` distinct RGBA colors (tab10 up to 10 clusters, tab20 up to 20, then a ring)."""
    if k <= 10:
        return np.asarray(colormaps["tab10"](np.arange(k)))
    if k <= 20:
        return np.asarray(colormaps["tab20"](np.arange(k)))
    return np.asarray(colormaps["hsv"](np.linspace(0, 1, k, endpoint=False)))


def _finite(values: Sequence[Any]) -> np.ndarray:
    out = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return out


# --------------------------------------------------------------------------- sweep
_SWEEP_PANELS = (
    ("inertia", "inertia (sum of squared distances)", "lower is tighter"),
    ("davies_bouldin", "Davies-Bouldin", "lower is better"),
    ("calinski_harabasz", "Calinski-Harabasz", "higher is better"),
    ("silhouette", "silhouette (sample)", "higher is better"),
)


def sweep_figure(
    sweep: Sequence[Mapping[str, Any]],
    chosen_k: int,
    *,
    rule: str | None = None,
    knee: int | None = None,
) -> Picture:
    """Inertia, Davies-Bouldin, Calinski-Harabasz and silhouette against k.

    Parameters
    ----------
    sweep : sequence of mappings
        One per k: ``k``, ``inertia``, ``davies_bouldin``, ``calinski_harabasz``,
        ``silhouette`` (None or NaN where undefined).
    chosen_k : int
        The k the rule chose; a red dashed line in every panel and a red dot on each curve.
    rule : str, optional
        The rule's name, for the caption.
    knee : int, optional
        The knee of the inertia curve, marked with an orange diamond. Default: found by
        :func:`kmflow.core.sweep.choose_k` with the ``elbow`` rule.

    Returns
    -------
    Picture
        ``data``: ``ks``, ``chosen_k`` and ``knee`` as drawn (x of the marks).
    """
    from kmflow.core.sweep import choose_k

    rows = sorted((dict(r) for r in sweep), key=lambda r: int(r["k"]))
    if not rows:
        raise InvalidInputError("the sweep has no rows")
    ks = np.array([int(r["k"]) for r in rows])
    if int(chosen_k) not in set(ks.tolist()):
        raise InvalidInputError(f"chosen k={chosen_k} is not in the sweep (k={ks.tolist()})")
    if knee is None and len(rows) >= 3:
        knee = choose_k(rows, "elbow").k
    fig = _figure(10, 6.4)
    axes = fig.subplots(2, 2, sharex=True)
    marks: dict[str, Any] = {}
    for ax, (key, label, hint) in zip(axes.ravel(), _SWEEP_PANELS, strict=True):
        y = _finite([r.get(key) for r in rows])
        ax.plot(ks, y, marker="o", color="#1f77b4", lw=1.6, ms=4)
        line = ax.axvline(chosen_k, color=_CHOSEN, ls="--", lw=1.2, gid="chosen-k")
        marks.setdefault("chosen_k", int(line.get_xdata()[0]))
        at = int(np.flatnonzero(ks == chosen_k)[0])
        if math.isfinite(y[at]):
            ax.plot([chosen_k], [y[at]], "o", color=_CHOSEN, ms=8, zorder=3)
        if key == "inertia" and knee is not None and knee in set(ks.tolist()):
            j = int(np.flatnonzero(ks == knee)[0])
            (dot,) = ax.plot(
                [knee], [y[j]], "D", color=_KNEE, ms=9, mec="black", zorder=4, gid="knee"
            )
            marks["knee"] = int(dot.get_xdata()[0])
            ax.annotate(
                f"knee k={knee}",
                (knee, y[j]),
                xytext=(12, 12),
                textcoords="offset points",
                color=_KNEE,
                fontsize=9,
                fontweight="bold",
            )
        if not np.isfinite(y).any():
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{label}  ({hint})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_xticks(ks)
    for ax in axes[1]:
        ax.set_xlabel("k (number of clusters)")
    fig.suptitle(
        f"Sweep over k: k={chosen_k} chosen" + (f" by rule {rule!r}" if rule else ""),
        fontsize=12,
    )
    caption = (
        "Every k of the training sweep (the model record's metrics.sweep). Red dashed line: "
        f"the chosen k={chosen_k}" + (f" (rule {rule})" if rule else "")
    )
    if "knee" in marks:
        caption += (
            f"; orange diamond: the knee of the inertia curve, k={marks['knee']} (the elbow "
            "rule: Kneedle, else the largest distance below the chord)"
        )
    return Picture(
        "sweep",
        "Choosing k",
        _png(fig),
        caption + ".",
        {"ks": ks.tolist(), "chosen_k": marks["chosen_k"], "knee": marks.get("knee")},
    )


# --------------------------------------------------------------------------- silhouette
def silhouette_figure(
    values: np.ndarray,
    labels: np.ndarray,
    n_clusters: int,
    *,
    colors: np.ndarray | None = None,
    recorded: float | None = None,
) -> Picture:
    """Mean silhouette of each cluster's sampled members, as horizontal bars.

    Parameters
    ----------
    values : ndarray of shape (n,)
        Silhouette of each sampled row (:func:`sklearn.metrics.silhouette_samples`).
    labels : ndarray of int, shape (n,)
        Cluster of each row.
    n_clusters : int
    colors : ndarray of shape (n_clusters, 3 or 4), optional
        Bar colors in [0, 1] (default :func:`cluster_colors`).
    recorded : float, optional
        The silhouette the training run recorded (drawn as a gray dotted line).

    Returns
    -------
    Picture
        ``data``: ``per_cluster`` (cluster -> mean, None for a cluster with no sampled
        member), ``counts`` and ``mean`` (over the sample).
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels)
    colors = cluster_colors(n_clusters) if colors is None else np.asarray(colors)
    counts = np.bincount(labels, minlength=n_clusters)
    means = np.array(
        [values[labels == j].mean() if counts[j] else np.nan for j in range(n_clusters)]
    )
    fig = _figure(8, max(2.6, 0.32 * n_clusters + 1.6))
    ax = fig.add_subplot()
    y = np.arange(n_clusters)
    bars = ax.barh(y, np.nan_to_num(means), color=colors[:, :3], edgecolor="#333333", lw=0.5)
    for j, bar in enumerate(bars):
        text = "no member sampled" if not counts[j] else f"{means[j]:.2f}  (n={counts[j]})"
        x = bar.get_width() if counts[j] else 0.0
        ax.text(
            x + (0.01 if x >= 0 else -0.01),
            j,
            text,
            va="center",
            ha="left" if x >= 0 else "right",
            fontsize=8,
        )
    mean = float(values.mean()) if len(values) else math.nan
    ax.axvline(mean, color=_CHOSEN, ls="--", lw=1.2, label=f"sample mean {mean:.3f}")
    if recorded is not None and math.isfinite(recorded):
        ax.axvline(recorded, color="#555555", ls=":", lw=1.4, label=f"recorded {recorded:.3f}")
    ax.set_yticks(y, labels=[str(j) for j in y], fontsize=8 if n_clusters > 20 else 9)
    ax.invert_yaxis()
    low = min(0.0, float(np.nanmin(means)) - 0.1) if counts.any() else 0.0
    ax.set_xlim(max(-1.0, low), 1.1)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("mean silhouette of the cluster's sampled rows (-1 .. 1)")
    ax.set_ylabel("cluster")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Silhouette per cluster ({len(values)} sampled rows)", fontsize=11)
    return Picture(
        "silhouette",
        "Silhouette per cluster",
        _png(fig),
        f"Mean silhouette of each cluster's members in the evaluation sample stored with "
        f"the version ({len(values)} rows, labels = nearest center). Near 1: tight and well "
        "apart; near 0: on a border; below 0: closer to another cluster.",
        {
            "per_cluster": {
                j: (None if not counts[j] else float(means[j])) for j in range(n_clusters)
            },
            "counts": counts.tolist(),
            "mean": mean,
        },
    )


# --------------------------------------------------------------------------- scatter
def pca_scatter(
    X: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    *,
    colors: np.ndarray | None = None,
    space: str = "the centers' space",
) -> Picture:
    """The rows of `X` and the centers on the first two principal components of `X`.

    Returns
    -------
    Picture
        ``data``: ``explained`` (variance ratio of the two components), ``n`` (points),
        ``centers_2d`` (the centers' coordinates as drawn).
    """
    X = np.asarray(X, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    k = centers.shape[0]
    colors = cluster_colors(k) if colors is None else np.asarray(colors)
    mean = X.mean(axis=0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    n_comp = min(2, vt.shape[0])
    basis = vt[:n_comp]
    total = float((s**2).sum())
    explained = (s[:n_comp] ** 2 / total).tolist() if total > 0 else [0.0] * n_comp
    P = (X - mean) @ basis.T
    C = (centers - mean) @ basis.T
    if n_comp == 1:  # one feature: the second axis is zero
        P = np.column_stack([P[:, 0], np.zeros(len(P))])
        C = np.column_stack([C[:, 0], np.zeros(len(C))])
        explained.append(0.0)
    fig = _figure(7.5, 6)
    ax = fig.add_subplot()
    point_colors = colors[np.asarray(labels), :3]
    ax.scatter(P[:, 0], P[:, 1], c=point_colors, s=8, alpha=0.55, linewidths=0)
    ax.scatter(
        C[:, 0],
        C[:, 1],
        c=colors[:, :3],
        s=170,
        marker="X",
        edgecolors="black",
        linewidths=1.2,
        gid="centers",
    )
    if k <= 30:
        for j, (cx, cy) in enumerate(C):
            ax.annotate(str(j), (cx, cy), xytext=(6, 6), textcoords="offset points", fontsize=9)
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f} % of the variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f} % of the variance)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{len(X)} sampled rows and the {k} centers, first two components", fontsize=11)
    return Picture(
        "scatter",
        "Sample on its first two principal components",
        _png(fig),
        f"The evaluation sample stored with the version, in {space}, projected on its first "
        "two principal components; color = nearest center; crosses = the centers.",
        {"explained": explained, "n": len(X), "centers_2d": C.tolist()},
    )


def rgb_cube(rgb: np.ndarray, labels: np.ndarray, palette_rgb: np.ndarray) -> Picture:
    """Sampled pixels in the RGB cube (each in its own color) with the palette colors.

    Returns
    -------
    Picture
        ``data``: ``n`` (pixels drawn) and ``palette`` (the palette as drawn, 0-255).
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    palette = np.clip(np.asarray(palette_rgb, dtype=np.float64), 0, 255)
    fig = _figure(7.5, 6.5)
    ax = fig.add_subplot(projection="3d")
    ax.scatter(rgb[:, 0], rgb[:, 1], rgb[:, 2], c=rgb / 255.0, s=7, alpha=0.6, linewidths=0)
    ax.scatter(
        palette[:, 0],
        palette[:, 1],
        palette[:, 2],
        c=palette / 255.0,
        s=160,
        marker="o",
        edgecolors="black",
        linewidths=1.2,
        depthshade=False,
    )
    for axis in ("x", "y", "z"):
        getattr(ax, f"set_{axis}lim")(0, 255)
    ax.set_xlabel("R")
    ax.set_ylabel("G")
    ax.set_zlabel("B")
    ax.view_init(elev=22, azim=-58)
    ax.set_title(f"{len(rgb)} sampled pixels and the {len(palette)} palette colors", fontsize=11)
    return Picture(
        "rgb_cube",
        "Pixels in the RGB cube",
        _png(fig),
        "The pixel sample stored with the version, each dot in its own color; large circles "
        "(black edge): the palette colors.",
        {"n": len(rgb), "palette": palette.round().astype(int).tolist(), "labels": len(labels)},
    )


def _hex(color: Sequence[float]) -> str:
    r, g, b = (int(np.clip(round(float(v)), 0, 255)) for v in color)
    return f"#{r:02x}{g:02x}{b:02x}"


def swatches_figure(palette_rgb: np.ndarray, sizes: Sequence[float] | np.ndarray) -> Picture:
    """The palette's colors as bars as long as their shares, largest first.

    Returns
    -------
    Picture
        ``data``: ``order`` (colors, largest share first), ``shares`` (per color, in color
        order, summing to 1), ``hex``.
    """
    palette = np.clip(np.asarray(palette_rgb, dtype=np.float64), 0, 255)
    weights = np.asarray(sizes, dtype=np.float64)
    if len(weights) != len(palette):
        raise InvalidInputError(f"{len(weights)} sizes for {len(palette)} palette colors")
    total = weights.sum()
    shares = weights / total if total > 0 else np.zeros_like(weights)
    order = np.argsort(-shares, kind="stable")
    k = len(palette)
    fig = _figure(8, max(2.4, 0.3 * k + 1.2))
    ax = fig.add_subplot()
    y = np.arange(k)
    ax.barh(y, shares[order] * 100, color=palette[order] / 255.0, edgecolor="#333333", lw=0.6)
    labels = [f"{j}  {_hex(palette[j])}" for j in order]
    ax.set_yticks(y, labels=labels, fontsize=8 if k > 24 else 9, family="monospace")
    ax.invert_yaxis()
    for i, j in enumerate(order):
        ax.text(shares[j] * 100 + 0.3, i, f"{100 * shares[j]:.1f} %", va="center", fontsize=8)
    ax.set_xlim(0, max(5.0, float(shares.max()) * 100 * 1.18))
    ax.set_xlabel("share of the pixels (%)")
    ax.set_title(f"Palette of {k} colors by share", fontsize=11)
    return Picture(
        "swatches",
        "Palette colors and their shares",
        _png(fig),
        "Each palette color (index and hex code) as a bar as long as its share of the "
        "evaluated pixels (the record's metrics.sizes).",
        {
            "order": order.tolist(),
            "shares": shares.tolist(),
            "hex": [_hex(c) for c in palette],
        },
    )


def sizes_figure(
    sizes: Sequence[float] | np.ndarray,
    *,
    colors: np.ndarray | None = None,
    unit: str = "rows",
) -> Picture:
    """Members per cluster as bars, each with its share.

    Returns
    -------
    Picture
        ``data``: ``sizes`` (as drawn) and ``shares``.
    """
    counts = np.asarray(sizes, dtype=np.float64)
    k = len(counts)
    colors = cluster_colors(k) if colors is None else np.asarray(colors)
    total = counts.sum()
    fig = _figure(max(6.0, min(14.0, 0.45 * k + 3)), 4)
    ax = fig.add_subplot()
    bars = ax.bar(np.arange(k), counts, color=colors[:, :3], edgecolor="#333333", lw=0.5)
    if k <= 30:
        for bar, c in zip(bars, counts, strict=True):
            share = 100 * c / total if total else 0.0
            ax.annotate(
                f"{share:.0f} %",
                (bar.get_x() + bar.get_width() / 2, c),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    ax.set_xticks(np.arange(k), labels=[str(j) for j in range(k)], fontsize=8 if k > 20 else 9)
    ax.set_xlabel("cluster")
    ax.set_ylabel(unit)
    ax.margins(y=0.12)
    ax.set_title(f"Cluster sizes ({int(total):,} {unit})", fontsize=11)
    drawn = [float(b.get_height()) for b in bars]
    return Picture(
        "sizes",
        "Cluster sizes",
        _png(fig),
        f"{unit.capitalize()} per cluster, as recorded by the training run (metrics.sizes), "
        "with each cluster's share.",
        {"sizes": drawn, "shares": (counts / total if total else counts).tolist()},
    )


# --------------------------------------------------------------------------- heatmap
def centers_heatmap(
    centers: np.ndarray,
    feature_names: Sequence[str],
    *,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    basis: str = "the spread of the centers",
) -> Picture:
    """The centers standardised feature by feature: clusters in rows, features in columns.

    Parameters
    ----------
    centers : ndarray of shape (k, d)
    feature_names : sequence of str
        One per column (``f0``, ``f1``, ... when empty).
    mean, scale : ndarray of shape (d,), optional
        What each feature is standardised by (e.g. the evaluation sample's mean and
        standard deviation); default the mean and standard deviation of the centers.
    basis : str
        What `mean` and `scale` are, for the caption.

    Returns
    -------
    Picture
        ``data``: ``z`` (the standardised values drawn, clusters x features shown) and
        ``features`` (the names of the columns shown).
    """
    C = np.asarray(centers, dtype=np.float64)
    k, d = C.shape
    names = list(feature_names) if len(feature_names) else [f"f{j}" for j in range(d)]
    if len(names) != d:
        raise InvalidInputError(f"{len(names)} feature names for {d} features")
    mu = C.mean(axis=0) if mean is None else np.asarray(mean, dtype=np.float64)
    sd = C.std(axis=0) if scale is None else np.asarray(scale, dtype=np.float64)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z = (C - mu) / sd
    shown = np.arange(d)
    note = ""
    if d > MAX_HEATMAP_FEATURES:
        shown = np.sort(np.argsort(-Z.var(axis=0), kind="stable")[:MAX_HEATMAP_FEATURES])
        note = f" ({MAX_HEATMAP_FEATURES} of {d} features: those that vary most across clusters)"
    Z = Z[:, shown]
    cols = [names[j] for j in shown]
    width = min(16.0, max(5.5, 0.42 * len(cols) + 3.2))
    fig = _figure(width, max(2.6, 0.34 * k + 2.0))
    ax = fig.add_subplot()
    vmax = max(1.0, float(np.abs(Z).max()))
    image = ax.imshow(
        Z, cmap=colormaps["RdBu_r"], vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    if Z.size <= 400:
        for i in range(k):
            for j in range(len(cols)):
                value = Z[i, j]
                color = "white" if abs(value) > 0.6 * vmax else "black"
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(np.arange(len(cols)), labels=cols, fontsize=8)
    if len(cols) > 8 or max(len(c) for c in cols) > 4:
        ax.tick_params(axis="x", labelrotation=60)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_yticks(np.arange(k), labels=[str(j) for j in range(k)], fontsize=8)
    ax.set_ylabel("cluster")
    ax.set_title("Centers, standardised per feature" + note, fontsize=11)
    fig.colorbar(image, ax=ax, label="standard deviations from the mean", shrink=0.9)
    return Picture(
        "centers",
        "Cluster centers (standardised)",
        _png(fig),
        f"Each center's value of each feature, minus the feature's mean, divided by its "
        f"standard deviation ({basis}); red above the mean, blue below.{note}",
        {"z": Z.tolist(), "features": cols},
    )


# --------------------------------------------------------------------------- drift
def _time(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def drift_figure(
    checks: Sequence[Mapping[str, Any]],
    *,
    versions: Sequence[Mapping[str, Any]] = (),
    promotions: Sequence[Mapping[str, Any]] = (),
) -> Picture:
    """Every drift statistic per checked batch against its threshold, over time.

    Parameters
    ----------
    checks : sequence of mappings
        Drift events of the model's history: ``at`` (ISO 8601), ``version`` (the champion
        checked), ``drifted`` and ``statistics`` (name -> ``value``, ``threshold``,
        ``drifted``).
    versions : sequence of mappings
        ``version``, ``created_at`` and ``parent`` of each registered version: those after
        the first are retrains (orange dashed lines, labelled ``v<N>``).
    promotions : sequence of mappings
        ``version`` and ``at`` of each promotion (green lines, ``▲ v<N>``).

    Returns
    -------
    Picture
        ``data``: ``statistics`` (names, one panel each), ``checks`` (batches drawn),
        ``drifted`` (how many drifted), ``retrains`` and ``promotions`` (versions marked).
    """
    if not checks:
        raise InvalidInputError("no drift checks to draw")
    ordered = sorted(checks, key=lambda c: _time(c["at"]))
    names: list[str] = []
    for check in ordered:
        names += [n for n in check.get("statistics", {}) if n not in names]
    if not names:
        raise InvalidInputError("the drift checks hold no statistics")
    times = [_time(c["at"]) for c in ordered]
    retrains = [
        (int(v["version"]), _time(v["created_at"])) for v in versions if int(v["version"]) > 1
    ]
    promoted = [(int(p["version"]), _time(p["at"])) for p in promotions]
    # The whole story: every check, retrain and promotion.
    every = times + [t for _, t in retrains] + [t for _, t in promoted]
    span = max(every) - min(every)
    pad = max(span * 0.04, dt.timedelta(seconds=30))
    lo, hi = min(every) - pad, max(every) + pad
    fig = _figure(10, 1.9 * len(names) + 1.4)
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0])
    for ax, name in zip(axes, names, strict=True):
        stats = [c.get("statistics", {}).get(name) or {} for c in ordered]
        value = _finite([s.get("value") for s in stats])
        threshold = _finite([s.get("threshold") for s in stats])
        drifted = np.array([bool(s.get("drifted")) for s in stats])
        ax.plot(times, value, color="#1f77b4", lw=1.2, marker="o", ms=4, label="value")
        if drifted.any():
            ax.plot(
                [t for t, d in zip(times, drifted, strict=True) if d],
                value[drifted],
                "o",
                color=_CHOSEN,
                ms=7,
                label="drifted",
            )
        # A check's threshold holds from that check to the next (and before the first).
        ax.step(
            [lo, *times, hi],
            [threshold[0], *threshold, threshold[-1]],
            where="post",
            color="#555555",
            ls="--",
            lw=1.2,
            label="threshold",
        )
        for _, when in retrains:
            ax.axvline(when, color=_KNEE, ls="--", lw=1.0)
        for _, when in promoted:
            ax.axvline(when, color="#2ca02c", ls="-", lw=1.4, alpha=0.8)
        ax.set_ylabel(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(y=0.25)
    top = axes[0]
    transform = top.get_xaxis_transform()
    # Labels above the top panel; one close to the previous one goes a line higher.
    placed: list[tuple[float, int]] = []
    width = (hi - lo).total_seconds()
    marks = [(when, f"v{v}", _KNEE) for v, when in retrains]
    marks += [(when, f"▲ v{v}", "#2ca02c") for v, when in promoted]
    for when, text, color in sorted(marks, key=lambda m: m[0]):
        x = (when - lo).total_seconds() / width
        level = 0
        while any(abs(x - px) < 0.05 and pl == level for px, pl in placed) and level < 3:
            level += 1
        placed.append((x, level))
        top.text(when, 1.02 + 0.11 * level, text, color=color, fontsize=8, ha="center",
                 transform=transform)  # fmt: skip
    handles, labels = axes[0].get_legend_handles_labels()
    if retrains:
        handles.append(Line2D([], [], color=_KNEE, ls="--", lw=1.0))
        labels.append("new version (retrain)")
    if promoted:
        handles.append(Line2D([], [], color="#2ca02c", lw=1.4))
        labels.append("promotion")
    axes[0].legend(handles, labels, loc="upper left", fontsize=8, ncols=5)
    axes[-1].set_xlim(lo, hi)
    axes[-1].set_xlabel("checked at (UTC)")
    fig.autofmt_xdate()
    n_drifted = sum(bool(c.get("drifted")) for c in ordered)
    fig.suptitle(f"Drift history: {len(ordered)} checked batches, {n_drifted} drifted", fontsize=12)
    return Picture(
        "drift",
        "Drift history",
        _png(fig),
        "Each statistic of every checked batch (the model's drift log, one entry per batch "
        "the monitor flows checked) against its threshold (dashed); red dots: drifted. "
        "Orange dashed lines: a new version registered (retrain); green lines: a promotion.",
        {
            "statistics": names,
            "checks": len(ordered),
            "drifted": n_drifted,
            "retrains": [v for v, _ in retrains],
            "promotions": [v for v, _ in promoted],
        },
    )
