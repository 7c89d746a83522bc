"""What every task needs: settings-driven stores, retry rules, artifact keys."""

from __future__ import annotations

import re
from typing import Any

from kmflow.config import get_settings
from kmflow.errors import SourceNotFoundError, StorageError, StoreNotFoundError
from kmflow.storage.fs import storage_options_for
from kmflow.storage.pixelstore import PixelStore
from kmflow.storage.registry import ModelRegistry

__all__ = ["artifact_key", "open_registry", "open_store", "retry_on_transient_io"]


def open_store(url: str) -> PixelStore:
    """The pixel store at ``url``, with storage options and chunking from the settings."""
    settings = get_settings()
    return PixelStore(
        url,
        storage_options=storage_options_for(url, settings.storage),
        chunk_pixels=settings.storage.chunk_pixels,
    )


def open_registry() -> ModelRegistry:
    """The model registry the settings point at (``KMFLOW_REGISTRY__URL``)."""
    settings = get_settings()
    url = settings.registry.url
    return ModelRegistry(url, storage_options=storage_options_for(url, settings.storage))


def retry_on_transient_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O failures, not bad input or missing data.

    A :class:`~kmflow.errors.StorageError` (network, permissions, object store hiccup) may
    pass on a retry; a missing source or store, invalid input or a bug will not.
    """
    try:
        state.result()
    except (SourceNotFoundError, StoreNotFoundError):
        return False
    except StorageError:
        return True
    except Exception:
        return False
    return False


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text."""
    text = "-".join(parts).lower()
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-") or "kmflow"
