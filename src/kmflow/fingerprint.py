"""The data fingerprint: one identity for "the same items", whatever their order.

Every store, task and flow that says which data a model was trained on, or whether a derived
variable still describes its store, uses :func:`fingerprint`. It imports nothing of kmflow,
so every layer may import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["fingerprint"]


def fingerprint(item_hashes: Iterable[str]) -> str:
    """SHA-256 (hex) of the sorted item hashes joined by newlines.

    Exactly ``hashlib.sha256("\\n".join(sorted(item_hashes)).encode("utf-8")).hexdigest()``:
    independent of the order of the items, and equal to the fingerprint that pixel stores
    already hold (their items are images, their item hashes the images' sha256). No items
    gives ``hashlib.sha256(b"").hexdigest()``.

    Parameters
    ----------
    item_hashes : iterable of str
        One hash per item (hex digests in practice); duplicates count as often as they occur.

    Examples
    --------
    >>> fingerprint(["b", "a"]) == fingerprint(["a", "b"])
    True
    >>> fingerprint([]) == hashlib.sha256(b"").hexdigest()
    True
    """
    return hashlib.sha256("\n".join(sorted(item_hashes)).encode("utf-8")).hexdigest()
