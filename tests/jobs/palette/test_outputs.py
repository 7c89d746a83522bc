"""Output names never collide, and outputs never overwrite or pollute the sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmflow.errors import OutputConflictError
from kmflow.jobs.palette.outputs import check_outputs, output_names, output_urls
from kmflow.storage.images import discover_images


def test_names_keep_folder_and_stem() -> None:
    assert output_names(["a.jpg", "trip/day1/b.tif", "c"]) == ["a.png", "trip/day1/b.png", "c.png"]


def test_same_stem_keeps_the_extension() -> None:
    assert output_names(["a.jpg", "a.png", "b.png"]) == ["a.jpg.png", "a.png.png", "b.png"]
    assert output_names(["x/A.JPG", "x/a.png"]) == ["x/A.JPG.png", "x/a.png.png"]  # any case


def test_same_relpath_from_two_roots_is_numbered() -> None:
    assert output_names(["a.png", "a.png", "a.png"]) == ["a.png.png", "a.png.2.png", "a.png.3.png"]


def test_palette_swatch_name_is_never_an_image() -> None:
    assert output_names(["palette.jpg"]) == ["palette.jpg.png"]


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    pixels = np.zeros((4, 4, 3), np.uint8)
    Image.fromarray(pixels).save(src / "a.png")
    Image.fromarray(pixels).save(src / "sub" / "b.jpg")
    return src


def test_overwriting_a_source_is_refused_even_when_allowed(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    sources = discover_images(str(src))
    outputs = output_urls(str(src), [s.relpath for s in sources])
    with pytest.raises(OutputConflictError, match=r"overwrite the source image .*a\.png"):
        check_outputs(str(src), [str(src)], sources, outputs, allow_inside_sources=True)


def test_out_inside_a_source_folder_is_refused_unless_allowed(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    sources = discover_images(str(src))
    out = str(src / "quantized")
    outputs = output_urls(out, [s.relpath for s in sources])
    with pytest.raises(OutputConflictError, match="inside the source folder"):
        check_outputs(out, [str(src)], sources, outputs)
    check_outputs(out, [str(src)], sources, outputs, allow_inside_sources=True)
    # A pattern that would not pick the PNGs up again makes it harmless.
    jpgs = discover_images(str(src), pattern="*.jpg")
    check_outputs(
        out, [str(src)], jpgs, output_urls(out, [s.relpath for s in jpgs]), pattern="*.jpg"
    )


def test_out_beside_the_sources_is_fine(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    sources = discover_images(str(src))
    out = str(tmp_path / "out")
    check_outputs(out, [str(src)], sources, output_urls(out, [s.relpath for s in sources]))
    # A single file given as the source: its own folder is no source folder.
    one = discover_images(str(src / "a.png"))
    check_outputs(str(src / "q"), [str(src / "a.png")], one, [str(src / "q" / "a.png")])
