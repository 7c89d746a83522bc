"""Compiled loops of the image job: one image's color histogram, error diffusion, and the
color math of its figures (sRGB to Lab, CIEDE2000, PSNR/ΔE of an image from its histogram).

Each runs inside a single task on one image in memory; ``nogil=True`` lets a threaded worker
run several side by side, ``cache=True`` keeps the machine code on disk. The scalar color
functions live here, next to every compiled loop that calls them: numba's cache notices a
change to a function's own file only.
"""

from __future__ import annotations

import math
import threading

import numba as nb
import numpy as np

__all__ = [
    "ciede2000_ufunc",
    "floyd_steinberg",
    "histogram_error_sums",
    "image_histogram",
    "lab_of_uint8",
]

_N_RGB = 1 << 24
_scratch = threading.local()


def _table() -> np.ndarray:
    """A zeroed int32 table with one slot per 24-bit color, one per thread (64 MiB).

    The histogram kernel clears exactly the slots it used before it returns, so the table is
    zero again for the next image without a 64 MiB memset.
    """
    table = getattr(_scratch, "table", None)
    if table is None:
        table = np.zeros(_N_RGB, dtype=np.int32)
        _scratch.table = table
    return table


@nb.njit(nogil=True, cache=True)
def _histogram(pixels, table, packed, counts, inverse):  # type: ignore[no-untyped-def]
    n = pixels.shape[0]
    u = 0
    for i in range(n):
        p = (np.int64(pixels[i, 0]) << 16) | (np.int64(pixels[i, 1]) << 8) | np.int64(pixels[i, 2])
        j = table[p]
        if j == 0:
            u += 1
            table[p] = u
            j = u
            packed[u - 1] = p
        counts[j - 1] += 1
        inverse[i] = j - 1
    for c in range(u):
        table[packed[c]] = 0
    return u


def image_histogram(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique colors of one image, their counts, and each pixel's color index.

    Parameters
    ----------
    pixels : ndarray of uint8, shape (n_pixels, 3)

    Returns
    -------
    colors : ndarray of uint8, shape (n_colors, 3)
        In order of first appearance (a function of the image alone).
    counts : ndarray of int64, shape (n_colors,)
    inverse : ndarray of int32, shape (n_pixels,)
        ``colors[inverse]`` is ``pixels``.

    Notes
    -----
    O(n_pixels) with a direct 2**24-slot table (no sort): about 5 ms per megapixel.
    """
    px = np.ascontiguousarray(pixels, dtype=np.uint8)
    n = px.shape[0]
    cap = min(n, _N_RGB)
    packed = np.empty(cap, dtype=np.int64)
    counts = np.zeros(cap, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int32)
    u = _histogram(px, _table(), packed, counts, inverse)
    p = packed[:u]
    colors = np.empty((u, 3), dtype=np.uint8)
    colors[:, 0] = (p >> 16) & 0xFF
    colors[:, 1] = (p >> 8) & 0xFF
    colors[:, 2] = p & 0xFF
    return colors, counts[:u].copy(), inverse


@nb.njit(nogil=True, cache=True)
def _floyd_steinberg(image, palette, out):  # type: ignore[no-untyped-def]
    h, w = image.shape[0], image.shape[1]
    k = palette.shape[0]
    pal = palette.astype(np.float64)
    # Error carried to the current and the next row, with one pixel of padding each side.
    cur = np.zeros((w + 2, 3))
    nxt = np.zeros((w + 2, 3))
    for y in range(h):
        nxt[:, :] = 0.0
        forward = y % 2 == 0  # serpentine scan: fewer directional artifacts
        step = 1 if forward else -1
        x = 0 if forward else w - 1
        for _ in range(w):
            v0 = min(255.0, max(0.0, image[y, x, 0] + cur[x + 1, 0]))
            v1 = min(255.0, max(0.0, image[y, x, 1] + cur[x + 1, 1]))
            v2 = min(255.0, max(0.0, image[y, x, 2] + cur[x + 1, 2]))
            best = 0
            best_d = np.inf
            for j in range(k):
                t0 = v0 - pal[j, 0]
                t1 = v1 - pal[j, 1]
                t2 = v2 - pal[j, 2]
                d = t0 * t0 + t1 * t1 + t2 * t2
                if d < best_d:
                    best_d = d
                    best = j
            out[y, x] = best
            e0 = v0 - pal[best, 0]
            e1 = v1 - pal[best, 1]
            e2 = v2 - pal[best, 2]
            ahead = x + 1 + step
            behind = x + 1 - step
            cur[ahead, 0] += e0 * (7.0 / 16.0)
            cur[ahead, 1] += e1 * (7.0 / 16.0)
            cur[ahead, 2] += e2 * (7.0 / 16.0)
            nxt[behind, 0] += e0 * (3.0 / 16.0)
            nxt[behind, 1] += e1 * (3.0 / 16.0)
            nxt[behind, 2] += e2 * (3.0 / 16.0)
            nxt[x + 1, 0] += e0 * (5.0 / 16.0)
            nxt[x + 1, 1] += e1 * (5.0 / 16.0)
            nxt[x + 1, 2] += e2 * (5.0 / 16.0)
            nxt[ahead, 0] += e0 * (1.0 / 16.0)
            nxt[ahead, 1] += e1 * (1.0 / 16.0)
            nxt[ahead, 2] += e2 * (1.0 / 16.0)
            x += step
        cur, nxt = nxt, cur


def floyd_steinberg(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Floyd–Steinberg error diffusion of an RGB image onto a palette (serpentine scan).

    Parameters
    ----------
    image : ndarray of uint8, shape (height, width, 3)
    palette : ndarray of uint8, shape (k, 3)
        The output colors; each pixel takes the one nearest (in sRGB) to its color plus the
        error diffused from its already painted neighbours.

    Returns
    -------
    ndarray of int32, shape (height, width)
        Palette index of every pixel.
    """
    img = np.ascontiguousarray(image, dtype=np.uint8)
    out = np.empty(img.shape[:2], dtype=np.int32)
    _floyd_steinberg(img, np.ascontiguousarray(palette, dtype=np.uint8), out)
    return out


# --------------------------------------------------------------------------- color math

_DELTA = 6.0 / 29.0


@nb.njit(nogil=True, cache=True)
def _lab_of_rgb(r, g, b, m, white):  # type: ignore[no-untyped-def]
    """CIE Lab of one color given as linear-light R, G, B (``m``: linear sRGB -> XYZ)."""
    d3 = _DELTA**3
    k = 3 * _DELTA**2
    c4 = 4.0 / 29.0
    fx = (r * m[0, 0] + g * m[0, 1] + b * m[0, 2]) / white[0]
    fy = (r * m[1, 0] + g * m[1, 1] + b * m[1, 2]) / white[1]
    fz = (r * m[2, 0] + g * m[2, 1] + b * m[2, 2]) / white[2]
    fx = np.cbrt(fx) if fx > d3 else fx / k + c4
    fy = np.cbrt(fy) if fy > d3 else fy / k + c4
    fz = np.cbrt(fz) if fz > d3 else fz / k + c4
    return 116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)


@nb.njit(nogil=True, cache=True)
def _lab_of_uint8(rgb, lut, m, white, out):  # type: ignore[no-untyped-def]
    for i in range(rgb.shape[0]):
        L, a, b = _lab_of_rgb(lut[rgb[i, 0]], lut[rgb[i, 1]], lut[rgb[i, 2]], m, white)
        out[i, 0] = L
        out[i, 1] = a
        out[i, 2] = b


def lab_of_uint8(rgb: np.ndarray, lut: np.ndarray, m: np.ndarray, white: np.ndarray) -> np.ndarray:
    """CIE Lab of ``(n, 3)`` uint8 sRGB rows, in one compiled pass.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (n, 3)
    lut : ndarray of float64, shape (256,)
        Linear light of each 8-bit sRGB value.
    m : ndarray of float64, shape (3, 3)
        Linear sRGB to XYZ.
    white : ndarray of float64, shape (3,)
        XYZ of the white point.

    Returns
    -------
    ndarray of float64, shape (n, 3)
    """
    out = np.empty((rgb.shape[0], 3))
    _lab_of_uint8(np.ascontiguousarray(rgb, dtype=np.uint8), lut, m, white, out)
    return out


@nb.njit(nogil=True, cache=True)
def _ciede2000_pair(L1, a1, b1, L2, a2, b2):  # type: ignore[no-untyped-def]
    """CIEDE2000 of one pair of Lab colors (kL = kC = kH = 1), after Sharma et al. (2005)."""
    C1 = math.hypot(a1, b1)
    C2 = math.hypot(a2, b2)
    Cbar = (C1 + C2) / 2.0
    Cbar2 = Cbar * Cbar
    Cbar7 = Cbar2 * Cbar2 * Cbar2 * Cbar
    G = 0.5 * (1.0 - math.sqrt(Cbar7 / (Cbar7 + 25.0**7)))
    a1p = (1.0 + G) * a1
    a2p = (1.0 + G) * a2
    C1p = math.hypot(a1p, b1)
    C2p = math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360.0
    dLp = L2 - L1
    dCp = C2p - C1p
    zero = C1p * C2p == 0.0
    dh = h2p - h1p
    if dh > 180.0:
        dh -= 360.0
    elif dh < -180.0:
        dh += 360.0
    if zero:
        dh = 0.0
    dHp = 2.0 * math.sqrt(C1p * C2p) * math.sin(math.radians(dh) / 2.0)
    Lbp = (L1 + L2) / 2.0
    Cbp = (C1p + C2p) / 2.0
    hsum = h1p + h2p
    if zero:
        hbp = hsum
    elif abs(h1p - h2p) <= 180.0:
        hbp = hsum / 2.0
    elif hsum < 360.0:
        hbp = (hsum + 360.0) / 2.0
    else:
        hbp = (hsum - 360.0) / 2.0
    T = (
        1.0
        - 0.17 * math.cos(math.radians(hbp - 30.0))
        + 0.24 * math.cos(math.radians(2.0 * hbp))
        + 0.32 * math.cos(math.radians(3.0 * hbp + 6.0))
        - 0.20 * math.cos(math.radians(4.0 * hbp - 63.0))
    )
    dtheta = 30.0 * math.exp(-(((hbp - 275.0) / 25.0) ** 2))
    Cbp2 = Cbp * Cbp
    Cbp7 = Cbp2 * Cbp2 * Cbp2 * Cbp
    Rc = 2.0 * math.sqrt(Cbp7 / (Cbp7 + 25.0**7))
    Sl = 1.0 + 0.015 * (Lbp - 50.0) ** 2 / math.sqrt(20.0 + (Lbp - 50.0) ** 2)
    Sc = 1.0 + 0.045 * Cbp
    Sh = 1.0 + 0.015 * Cbp * T
    Rt = -math.sin(math.radians(2.0 * dtheta)) * Rc
    return math.sqrt(
        (dLp / Sl) ** 2 + (dCp / Sc) ** 2 + (dHp / Sh) ** 2 + Rt * (dCp / Sc) * (dHp / Sh)
    )


# cos and sin of the angles in CIEDE2000's hue weighting T, in radians.
_C30, _S30 = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
_C6, _S6 = math.cos(math.radians(6.0)), math.sin(math.radians(6.0))
_C63, _S63 = math.cos(math.radians(63.0)), math.sin(math.radians(63.0))
#: Below this squared length of the sum of the two hue directions (hues within about 0.6° of
#: opposite), the mean hue is taken as the reference formula takes it, from the angles.
_OPPOSITE = 1e-4
#: Mean hues closer than this many degrees to 0° go through the reference formula too.
_WRAP = 1e-6


@nb.njit(nogil=True, cache=True)
def _ciede2000_fast(L1, a1, b1, L2, a2, b2):  # type: ignore[no-untyped-def]
    """:func:`_ciede2000_pair` with one arctangent, one sine and one exponential.

    The hue terms come from the two colors' unit hue vectors instead of their angles: the
    mean hue of CIEDE2000 is the bisector of the shorter arc between the hues, i.e. the
    direction of the sum of the unit vectors; ``2 sin(Δh/2)`` is the length of their
    difference, signed by their cross product; ``T``'s four cosines of multiples of the mean
    hue follow from its cosine and sine by the angle-sum formulas. Agrees with the
    reference to rounding (below 1e-11). A zero chroma, hues (nearly) opposite and a mean
    hue at 0°, where the formula is discontinuous and the reference's conventions and
    rounding decide, go through the reference formula.
    """
    C1 = math.sqrt(a1 * a1 + b1 * b1)
    C2 = math.sqrt(a2 * a2 + b2 * b2)
    Cbar = (C1 + C2) / 2.0
    Cbar2 = Cbar * Cbar
    Cbar7 = Cbar2 * Cbar2 * Cbar2 * Cbar
    G = 1.0 + 0.5 * (1.0 - math.sqrt(Cbar7 / (Cbar7 + 25.0**7)))
    a1p = G * a1
    a2p = G * a2
    C1p = math.sqrt(a1p * a1p + b1 * b1)
    C2p = math.sqrt(a2p * a2p + b2 * b2)
    if C1p * C2p == 0.0:
        return _ciede2000_pair(L1, a1, b1, L2, a2, b2)
    x1, y1 = a1p / C1p, b1 / C1p  # unit hue vectors
    x2, y2 = a2p / C2p, b2 / C2p
    ux, uy = x1 + x2, y1 + y2
    u2 = ux * ux + uy * uy
    if u2 < _OPPOSITE:
        return _ciede2000_pair(L1, a1, b1, L2, a2, b2)
    dx, dy = x2 - x1, y2 - y1
    chord = math.sqrt(dx * dx + dy * dy)  # 2 sin(|Δh|/2)
    if x1 * y2 - y1 * x2 < 0.0:
        chord = -chord
    dHp = math.sqrt(C1p * C2p) * chord
    dLp = L2 - L1
    dCp = C2p - C1p
    Lbp = (L1 + L2) / 2.0
    Cbp = (C1p + C2p) / 2.0
    ulen = math.sqrt(u2)
    c1, s1 = ux / ulen, uy / ulen  # cos and sin of the mean hue
    c2, s2 = c1 * c1 - s1 * s1, 2.0 * s1 * c1
    c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
    c4, s4 = c2 * c2 - s2 * s2, 2.0 * s2 * c2
    T = (
        1.0
        - 0.17 * (c1 * _C30 + s1 * _S30)
        + 0.24 * c2
        + 0.32 * (c3 * _C6 - s3 * _S6)
        - 0.20 * (c4 * _C63 + s4 * _S63)
    )
    hbp = math.degrees(math.atan2(uy, ux))
    if hbp < 0.0:
        hbp += 360.0
    if hbp < _WRAP or hbp > 360.0 - _WRAP:
        # Mean hue at 0°: the rotation term (not periodic) jumps there; which side a pair
        # falls on is the reference's rounding of its angles.
        return _ciede2000_pair(L1, a1, b1, L2, a2, b2)
    dtheta = 30.0 * math.exp(-(((hbp - 275.0) / 25.0) ** 2))
    Cbp2 = Cbp * Cbp
    Cbp7 = Cbp2 * Cbp2 * Cbp2 * Cbp
    Rc = 2.0 * math.sqrt(Cbp7 / (Cbp7 + 25.0**7))
    Sl = 1.0 + 0.015 * (Lbp - 50.0) ** 2 / math.sqrt(20.0 + (Lbp - 50.0) ** 2)
    Sc = 1.0 + 0.045 * Cbp
    Sh = 1.0 + 0.015 * Cbp * T
    Rt = -math.sin(math.radians(2.0 * dtheta)) * Rc
    tl = dLp / Sl
    tc = dCp / Sc
    th = dHp / Sh
    return math.sqrt(tl * tl + tc * tc + th * th + Rt * tc * th)


@nb.vectorize(
    ["float64(float64, float64, float64, float64, float64, float64)"], nopython=True, cache=True
)
def ciede2000_ufunc(L1, a1, b1, L2, a2, b2):  # type: ignore[no-untyped-def]
    """CIEDE2000 as a ufunc of the six Lab coordinates of a pair (broadcasting)."""
    return _ciede2000_pair(L1, a1, b1, L2, a2, b2)


@nb.njit(nogil=True, cache=True)
def _histogram_error(colors, counts, labels, palette, palette_lab, colors_lab, lut, m, white):  # type: ignore[no-untyped-def]
    known = colors_lab.shape[0] > 0
    sse = 0.0
    de = 0.0
    total = 0.0
    for i in range(colors.shape[0]):
        j = labels[i]
        w = np.float64(counts[i])
        d0 = np.float64(colors[i, 0]) - np.float64(palette[j, 0])
        d1 = np.float64(colors[i, 1]) - np.float64(palette[j, 1])
        d2 = np.float64(colors[i, 2]) - np.float64(palette[j, 2])
        sse += w * (d0 * d0 + d1 * d1 + d2 * d2)
        if known:
            L, a, b = colors_lab[i, 0], colors_lab[i, 1], colors_lab[i, 2]
        else:
            L, a, b = _lab_of_rgb(lut[colors[i, 0]], lut[colors[i, 1]], lut[colors[i, 2]], m, white)
        de += w * _ciede2000_fast(L, a, b, palette_lab[j, 0], palette_lab[j, 1], palette_lab[j, 2])
        total += w
    return sse, de, total


def histogram_error_sums(
    colors: np.ndarray,
    counts: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    palette_lab: np.ndarray,
    colors_lab: np.ndarray | None,
    lut: np.ndarray,
    m: np.ndarray,
    white: np.ndarray,
) -> tuple[float, float, float]:
    """Count-weighted squared RGB error and ΔE00 of unique colors painted by label, fused.

    One pass over the colors, nothing allocated per color: each color's squared difference
    to its palette entry (float64), its Lab (from ``colors_lab``, else computed here as
    :func:`lab_of_uint8` does) and its CIEDE2000 to the entry's Lab.

    Parameters
    ----------
    colors : ndarray of uint8, shape (n, 3)
    counts : ndarray of int, shape (n,)
    labels : ndarray of int, shape (n,)
        Palette row of each color.
    palette : ndarray of uint8, shape (k, 3)
    palette_lab : ndarray of float64, shape (k, 3)
        The palette in Lab.
    colors_lab : ndarray of float64, shape (n, 3), or None
        The colors in Lab when already known.
    lut, m, white
        As :func:`lab_of_uint8` takes them.

    Returns
    -------
    sse : float
        Sum over the colors of ``count * |color - palette[label]|**2``.
    delta_e : float
        Sum over the colors of ``count * ΔE00(color, palette[label])``.
    total : float
        Sum of the counts.
    """
    colors = np.ascontiguousarray(colors, dtype=np.uint8)
    labels = np.ascontiguousarray(labels)
    n, k = colors.shape[0], palette.shape[0]
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or len(counts) != n:
        raise ValueError("need one integer label and one count per color")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must be palette rows in [0, {k})")
    if colors_lab is not None and np.shape(colors_lab) != (n, 3):
        raise ValueError(f"colors_lab must have shape ({n}, 3); got {np.shape(colors_lab)}")
    known = (
        np.empty((0, 3))
        if colors_lab is None
        else np.ascontiguousarray(colors_lab, dtype=np.float64)
    )
    sse, de, total = _histogram_error(
        colors,
        np.ascontiguousarray(counts, dtype=np.int64),
        labels,
        np.ascontiguousarray(palette, dtype=np.uint8),
        np.ascontiguousarray(palette_lab, dtype=np.float64),
        known,
        lut,
        m,
        white,
    )
    return float(sse), float(de), float(total)
