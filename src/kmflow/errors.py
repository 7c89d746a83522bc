"""Every exception kmflow raises.

One root, :class:`KmflowError`; each subclass also inherits the builtin a caller would
naturally catch, so ``except ValueError`` keeps working around kmflow calls.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "InvalidInputError",
    "KmflowError",
    "ModelCorruptError",
    "ModelNotFoundError",
    "NotFittedError",
    "OrchestrationError",
    "OutputConflictError",
    "SourceNotFoundError",
    "StorageError",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreNotFoundError",
    "TableError",
    "TooFewDistinctPointsError",
]


class KmflowError(Exception):
    """Root of every error raised by kmflow."""


class InvalidInputError(KmflowError, ValueError):
    """Input data or parameters are malformed (shape, dtype, NaN/inf, bounds)."""


class TooFewDistinctPointsError(InvalidInputError):
    """More clusters were requested than the data has distinct (positively weighted) points."""

    def __init__(self, n_clusters: int, n_distinct: int) -> None:
        self.n_clusters = n_clusters
        self.n_distinct = n_distinct
        super().__init__(
            f"n_clusters={n_clusters} but only {n_distinct} distinct points "
            "(with positive weight) in X; lower n_clusters"
        )


class OutputConflictError(InvalidInputError):
    """An output would overwrite a source, or sit where the next run would ingest it."""


class NotFittedError(KmflowError, AttributeError):
    """A fitted attribute or method was used before ``fit``."""


class ClusterError(KmflowError, RuntimeError):
    """A Dask cluster could not be created or reached."""


class OrchestrationError(KmflowError, RuntimeError):
    """The Prefect API that ``PREFECT_API_URL`` names does not answer."""


class StorageError(KmflowError, OSError):
    """A file, folder or URL could not be read, listed or written (I/O, permissions, network).

    The message names the URL; it never contains credentials.
    """


class SourceNotFoundError(StorageError, FileNotFoundError):
    """A source file, folder, glob root or URL does not exist (or cannot be listed)."""


class ImageDecodeError(InvalidInputError):
    """Bytes that should be an image are not a usable one.

    Empty, not an image, truncated or corrupt, zero-size, an unsupported mode, or over the
    pixel limit; the message says which.
    """


class ImageTooLargeError(ImageDecodeError):
    """An image has more pixels than the limit (``KMFLOW_STORAGE__MAX_IMAGE_PIXELS``).

    Told apart from a corrupt file so that a service can answer 413 rather than 422.
    """


class TableError(InvalidInputError):
    """A table file (CSV, Parquet) or one of its columns is not usable as read.

    Empty file, header without rows, a malformed line, files with different columns or
    schemas, corrupt Parquet, a column of the wrong kind; the message is one line naming the
    file, and the column and row (or line) where that applies.
    """


class StoreNotFoundError(StorageError, FileNotFoundError):
    """No pixel store (or other kmflow store) exists at the given URL."""


class StoreBusyError(StorageError):
    """Another writer holds the store's writer lease (or took it over from this one).

    Raised after waiting the configured time (``KMFLOW_STORAGE__LEASE_TIMEOUT``) for the
    other writer; the message names the store and the holder: ``store <url> busy since
    <UTC time> by <command or flow run> (user U, pid N on host H); waited 30 s``.
    """


class StoreCorruptError(KmflowError, ValueError):
    """A store exists at the URL but its layout is not what kmflow wrote."""


class ModelNotFoundError(KmflowError, LookupError):
    """A model name, version or champion asked for is not in the registry.

    The message names the registry (URL with credentials masked), the model name and the
    versions that do exist.
    """


class ModelCorruptError(KmflowError, ValueError):
    """A registered model's files are missing or inconsistent.

    ``model.json`` unreadable or invalid, ``centers.npy`` missing or unreadable, centers of
    the wrong shape, non-finite or not matching the recorded sha256, or ``champion.json``
    unreadable or pointing at a version that does not exist; the message names the file and
    what is wrong with it.
    """
