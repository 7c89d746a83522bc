"""Color math for pixel clustering: sRGB <-> CIE Lab (D65), CIEDE2000 and PSNR.

Pure numpy on arrays of shape (..., 3); apply them to dask arrays block by block.

References
----------
.. [1] IEC 61966-2-1:1999, sRGB.
.. [2] G. Sharma, W. Wu, E. N. Dalal. "The CIEDE2000 color-difference formula:
   implementation notes, supplementary test data, and mathematical observations".
   Color Research & Application 30(1), 2005.
"""

from __future__ import annotations

import numpy as np

from kmflow.jobs.palette._compiled import ciede2000_ufunc, lab_of_uint8

__all__ = ["ciede2000", "lab_to_srgb", "psnr", "srgb_to_lab"]

# Linear sRGB -> XYZ, D65 white (IEC 61966-2-1).
_XYZ_FROM_RGB = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = _XYZ_FROM_RGB.sum(axis=1)  # XYZ of RGB (1, 1, 1)
#: Linear sRGB -> XYZ over the white point: its rows sum to 1.
_RATIOS_FROM_RGB = _XYZ_FROM_RGB / _WHITE_D65[:, None]
_DELTA = 6.0 / 29.0


def _white_ratios(lin: np.ndarray) -> np.ndarray:
    """XYZ over the white point of linear sRGB ``(..., 3)``, written as green plus the red and
    blue differences to it: a gray's three ratios are then exactly equal, so its a* and b*
    are exactly 0 (CIEDE2000 is not continuous at zero chroma: a gray must not get a hue
    from rounding)."""
    g = lin[..., 1:2]
    red, blue = _RATIOS_FROM_RGB[:, 0], _RATIOS_FROM_RGB[:, 2]
    return g + (lin[..., 0:1] - g) * red + (lin[..., 2:3] - g) * blue


def _linearize(c: np.ndarray) -> np.ndarray:
    """sRGB companding undone: values in [0, 1] to linear light."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


_LINEAR_OF_UINT8 = _linearize(np.arange(256, dtype=np.float64) / 255.0)


def srgb_to_lab(rgb: np.ndarray, *, compiled: bool = False) -> np.ndarray:
    """sRGB to CIE L*a*b* (D65).

    Parameters
    ----------
    rgb : ndarray of shape (..., 3)
        ``uint8`` values in 0..255, or floats in 0..255.
    compiled : bool, default False
        For ``uint8`` input, compiled passes (several times faster) whose values differ from the
        default's in the last bits (below 1e-12): for measuring (ΔE), not for anything whose
        results must stay bit for bit the same (fits, assignments).

    Returns
    -------
    ndarray of float64, shape (..., 3)
        L* in [0, 100], a* and b* roughly in [-128, 127]; exactly 0 for a gray.
    """
    rgb = np.asarray(rgb)
    if compiled and rgb.dtype == np.uint8:
        out = lab_of_uint8(rgb.reshape(-1, 3), _LINEAR_OF_UINT8, _RATIOS_FROM_RGB)
        return out.reshape(rgb.shape)
    if rgb.dtype == np.uint8:  # 256 possible values: the same numbers from a table
        lin = _LINEAR_OF_UINT8[rgb]
    else:
        lin = _linearize(rgb.astype(np.float64) / 255.0)
    xyz = _white_ratios(lin)
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) to sRGB ``uint8`` (out-of-gamut colors are clipped).

    Parameters
    ----------
    lab : ndarray of shape (..., 3)

    Returns
    -------
    ndarray of uint8, shape (..., 3)
    """
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _WHITE_D65
    lin = np.clip(xyz @ _RGB_FROM_XYZ.T, 0.0, 1.0)
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 color difference ΔE00 between Lab colors (kL = kC = kH = 1) [2]_.

    Parameters
    ----------
    lab1, lab2 : ndarray of shape (..., 3), broadcastable

    Returns
    -------
    ndarray of float64, shape (...)

    Notes
    -----
    A compiled ufunc (the formula is evaluated per pair, without temporaries).
    """
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    return np.asarray(
        ciede2000_ufunc(
            lab1[..., 0], lab1[..., 1], lab1[..., 2], lab2[..., 0], lab2[..., 1], lab2[..., 2]
        )
    )


def psnr(mse: float, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB from a mean squared error (``inf`` when exact)."""
    if mse <= 0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / mse))
