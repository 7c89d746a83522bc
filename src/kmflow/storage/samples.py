"""The sample photos that ship inside scikit-learn, as files kmflow can ingest.

``kmflow quantize`` with no source runs on these, so the main job works on a fresh machine
with nothing to download.
"""

from __future__ import annotations

import os
from pathlib import Path

from kmflow.storage.fs import write_bytes_atomic
from kmflow.storage.images import encode_png

__all__ = ["sample_images_dir"]

_NAMES = ("china.png", "flower.png")


def _cache_dir() -> Path:
    base = os.environ.get("KMFLOW_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return (root / "kmflow" if not os.environ.get("KMFLOW_CACHE_DIR") else root) / "samples"


def sample_images_dir() -> str:
    """Write scikit-learn's sample photos (china, flower) as PNG files; return their folder.

    The folder is ``$KMFLOW_CACHE_DIR/samples`` (default ``~/.cache/kmflow/samples``).
    Existing files are kept, so repeated runs ingest byte-identical images (and the pixel
    store's content hashes recognise them).
    """
    folder = _cache_dir()
    if all((folder / name).is_file() for name in _NAMES):
        return str(folder)  # written by an earlier run: no need to load scikit-learn
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    bunch = load_sample_images()
    for name, image in zip(bunch.filenames, bunch.images, strict=True):
        target = folder / (Path(name).stem + ".png")
        if not target.exists():
            write_bytes_atomic(str(target), encode_png(image), None)
    return str(folder)
