"""The image job: color quantization of an image collection.

Two ways to quantize, one rendering path:

- a **palette per image** (:mod:`kmflow.jobs.palette.per_image`, the default of ``kmflow quantize``,
  as pngquant, Pillow and ImageMagick do): each image's own k colors, a weighted k-means on
  that image's color histogram, thousands of small fits batched over the Dask workers;
- one **shared palette** for a collection (:mod:`kmflow.jobs.palette.shared`): the model the
  registry versions and drift checks compare, fitted with the distributed estimator.

:mod:`kmflow.jobs.palette.render` paints an image with a palette in one pass (PNG, PSNR and ΔE
from the image's unique colors), :mod:`kmflow.jobs.palette.outputs` names the outputs so that
they never overwrite a source or each other, :mod:`kmflow.jobs.palette.dither` is the optional
Floyd–Steinberg error diffusion.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmflow.core.split import Split
    from kmflow.jobs.palette.per_image import (
        PerImageParams,
        PerImageReport,
        QuantizedImage,
        fit_image_palette,
        quantize_images,
    )
    from kmflow.jobs.palette.shared import (
        ApplyReport,
        Evaluation,
        ImageQuality,
        Palette,
        Selection,
        apply_palette,
        batch_drift,
        evaluate_palette,
        fit_palette,
        palette_from_centers,
        palette_from_model,
        palette_swatch,
        select,
    )

# Imported on first use: the per-image path (``kmflow quantize`` of a few photos) needs
# neither the distributed estimator nor scikit-learn.
_PER_IMAGE = (
    "PerImageParams",
    "PerImageReport",
    "QuantizedImage",
    "fit_image_palette",
    "quantize_images",
)

__all__ = [
    "ApplyReport",
    "Evaluation",
    "ImageQuality",
    "Palette",
    "PerImageParams",
    "PerImageReport",
    "QuantizedImage",
    "Selection",
    "Split",
    "apply_palette",
    "batch_drift",
    "evaluate_palette",
    "fit_image_palette",
    "fit_palette",
    "palette_from_centers",
    "palette_from_model",
    "palette_swatch",
    "quantize_images",
    "select",
]


def __getattr__(name: str) -> object:
    import importlib

    if name in __all__:
        module = "per_image" if name in _PER_IMAGE else "shared"
        value = getattr(importlib.import_module(f"kmflow.jobs.palette.{module}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kmflow.jobs.palette' has no attribute {name!r}")
