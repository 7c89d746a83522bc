"""Where quantized images go: names that never collide and never overwrite a source.

Naming rule, for the images of one run (in input order):

1. ``OUT/<relpath without its extension>.png`` (``photos/a.jpg`` -> ``OUT/a.png``);
2. when two images would get the same name (``a.jpg`` and ``a.png`` in one folder), each of
   them keeps its extension: ``OUT/a.jpg.png`` and ``OUT/a.png.png``;
3. when names still collide (the same relative path under two source folders), the second
   gets ``.2`` before ``.png``, the third ``.3``, and so on.

Names are compared case-insensitively (so that no two outputs clash on a case-insensitive
file system), and ``OUT/palette.png`` (the swatch of a shared palette) is never an image's.

:func:`check_outputs` refuses an output folder that would overwrite a source file, and one
inside a source folder where the next run would ingest the outputs as new images.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from typing import Any

from kmflow.errors import OutputConflictError
from kmflow.storage.fs import get_fs, join_url, redact_url
from kmflow.storage.images import ImageSource, image_matcher

__all__ = ["PALETTE_NAME", "check_outputs", "output_names", "output_urls"]

#: File name of the shared palette's swatch under the output folder.
PALETTE_NAME = "palette.png"


def _stem(relpath: str) -> str:
    head, name = posixpath.split(relpath)
    if "." in name.lstrip("."):
        name = name.rsplit(".", 1)[0]
    return posixpath.join(head, name) if head else name


def output_names(relpaths: Sequence[str]) -> list[str]:
    """Output file names (relative to the output folder) for images with these relpaths.

    Parameters
    ----------
    relpaths : sequence of str
        Each image's path relative to its source root, in input order.

    Returns
    -------
    list of str
        One unique ``.png`` name per input, by the rule in this module's docstring.
    """
    first = [_stem(r) + ".png" for r in relpaths]
    clash = Counter(n.lower() for n in first)
    clash[PALETTE_NAME] += 2  # never an image's name
    second = [
        r + ".png" if clash[n.lower()] > 1 else n for r, n in zip(relpaths, first, strict=True)
    ]
    taken: set[str] = {PALETTE_NAME}
    names: list[str] = []
    for name in second:
        candidate, i = name, 1
        while candidate.lower() in taken:
            i += 1
            candidate = f"{name[: -len('.png')]}.{i}.png"
        taken.add(candidate.lower())
        names.append(candidate)
    return names


def output_urls(out: str, relpaths: Sequence[str]) -> list[str]:
    """Full output URLs under ``out`` for images with these relpaths (:func:`output_names`)."""
    return [join_url(out, n) for n in output_names(relpaths)]


def _norm(url: str, storage_options: dict[str, Any] | None) -> tuple[str, str]:
    """(protocol, absolute path) of a URL or local path, for comparing locations."""
    fs, path = get_fs(url, storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return "file", os.path.realpath(path)
    return protocol, path.rstrip("/")


def _inside(child: tuple[str, str], parent: tuple[str, str]) -> bool:
    return child[0] == parent[0] and (
        child[1] == parent[1] or child[1].startswith(parent[1].rstrip("/") + "/")
    )


def check_outputs(
    out: str,
    source_roots: Sequence[str],
    sources: Sequence[ImageSource],
    outputs: Sequence[str],
    *,
    pattern: str | None = None,
    allow_inside_sources: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Refuse outputs that would destroy or pollute the sources.

    Parameters
    ----------
    out : str
        The output folder or URL.
    source_roots : sequence of str
        The sources as given (files, folders, globs).
    sources : sequence of ImageSource
        The images found in them.
    outputs : sequence of str
        Every URL the run will write (images, and the palette swatch if any).
    pattern : str, optional
        The discovery filter of the run: outputs it would not pick up are no concern.
    allow_inside_sources : bool, default False
        Allow ``out`` inside a source folder even though the next run would ingest the
        outputs (never allows overwriting a source file).
    storage_options : dict, optional

    Raises
    ------
    OutputConflictError
        An output is one of the source files; or ``out`` lies inside a source folder and
        the outputs match what that folder's discovery keeps.
    """
    source_paths = {_norm(s.url, storage_options): s.url for s in sources}
    for url in outputs:
        hit = source_paths.get(_norm(url, storage_options))
        if hit is not None:
            raise OutputConflictError(
                f"refusing to write {redact_url(url)}: it would overwrite the source image "
                f"{redact_url(hit)}; choose another --out"
            )
    if allow_inside_sources:
        return
    out_path = _norm(out, storage_options)
    matcher = image_matcher(pattern)
    for root in source_roots:
        fs, path = get_fs(root, storage_options)
        if not fs.isdir(path):
            continue
        root_path = _norm(root, storage_options)
        if not _inside(out_path, root_path):
            continue
        prefix = out_path[1][len(root_path[1]) :].strip("/")
        picked = [
            u
            for u in outputs
            if matcher.keep(
                posixpath.join(prefix, _norm(u, storage_options)[1][len(out_path[1]) :].strip("/")),
                from_glob=False,
            )
        ]
        if picked:
            raise OutputConflictError(
                f"--out {redact_url(out)} is inside the source folder {redact_url(root)}: the "
                "next run would ingest the quantized images as new ones; choose an --out "
                "outside it (or pass --out-inside-source to do it anyway)"
            )
