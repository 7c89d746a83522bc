"""What every task needs: settings-driven stores, retry rules, artifact keys."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError

from kmflow.config import get_settings
from kmflow.errors import SourceNotFoundError, StorageError, StoreNotFoundError
from kmflow.storage.fs import storage_options_for
from kmflow.storage.pixelstore import ImageRecord, PixelStore
from kmflow.storage.registry import ModelRegistry

__all__ = [
    "ProgressArtifact",
    "artifact_key",
    "open_registry",
    "open_store",
    "retry_on_transient_io",
    "run_logger",
    "window_images",
]


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


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a flow or task run; kmflow's own logger outside one.

    Outside a run is how tasks are unit-tested (``task.fn(...)``) and how the library is
    used from plain Python.
    """
    try:
        return get_run_logger()  # type: ignore[return-value]
    except MissingContextError:
        return logging.getLogger("kmflow.tasks")


class ProgressArtifact:
    """A Prefect progress artifact (0-100 %) that long work updates as it goes.

    Updates are API calls, so they are throttled to one per ``min_interval`` seconds;
    :meth:`done` always records 100 %. Outside a flow or task run (a task called as a plain
    function) there is nothing to attach an artifact to, and every call does nothing.
    """

    def __init__(self, key: str, description: str, *, min_interval: float = 0.5) -> None:
        self.id: UUID | None = None
        try:
            get_run_context()
        except MissingContextError:
            pass
        else:
            self.id = cast(UUID, create_progress_artifact(0.0, key=key, description=description))
        self.min_interval = min_interval
        self._last = 0.0

    def update(self, done: float, total: float) -> None:
        """Record ``done`` out of ``total`` (throttled)."""
        now = time.monotonic()
        if self.id is None or now - self._last < self.min_interval:
            return
        self._last = now
        update_progress_artifact(self.id, min(100.0, 100.0 * done / max(total, 1e-12)))

    def done(self) -> None:
        """Record 100 %."""
        if self.id is not None:
            update_progress_artifact(self.id, 100.0)


def window_images(store: PixelStore, window: int | None) -> list[ImageRecord] | None:
    """The most recent ``window`` images of the store (``None``: all, no selection)."""
    if window is None:
        return None
    return store.images()[-window:]
