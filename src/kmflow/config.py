"""Settings: *where and how* kmflow runs (cluster mode, addresses, limits).

Settings answer where and how; the parameters of a fit (``n_clusters``, seed, data) are
arguments, never settings. Values come from keyword arguments or from environment variables
prefixed ``KMFLOW_``, with ``__`` between a group and its field::

    KMFLOW_CLUSTER__MODE=address
    KMFLOW_CLUSTER__ADDRESS=tcp://scheduler:8786
    KMFLOW_CLUSTER__N_WORKERS=4
    KMFLOW_CLUSTER__MEMORY_LIMIT=4GiB

Examples
--------
>>> from kmflow.config import ClusterSettings, Settings
>>> Settings(cluster=ClusterSettings(n_workers=2)).cluster.n_workers
2
"""

from __future__ import annotations

from typing import Any, Literal

from dask.utils import parse_bytes
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ClusterSettings", "Settings", "StorageSettings", "get_settings"]

ClusterMode = Literal["local", "address", "kubernetes"]


class ClusterSettings(BaseModel):
    """Which Dask cluster kmflow computes on, and how it is sized.

    Read from ``KMFLOW_CLUSTER__<FIELD>`` environment variables when built through
    :class:`Settings` / :func:`get_settings`; building this class directly reads no
    environment.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ClusterMode = Field(
        default="local",
        description=(
            "'local': start a multi-process Dask LocalCluster on this machine for the "
            "duration of the connection; 'address': connect to an existing Dask scheduler "
            "at `address`; 'kubernetes': not available yet."
        ),
    )
    address: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Scheduler address for mode='address', e.g. 'tcp://10.0.0.5:8786'. "
            "Must be unset for the other modes."
        ),
    )
    connect_timeout: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description=(
            "Seconds to wait for the scheduler at `address` before giving up with a "
            "ClusterError (mode='address')."
        ),
    )
    n_workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Worker count of a local cluster; None means one worker per CPU core of this "
            "machine (as Dask counts them, respecting cgroup and affinity limits)."
        ),
    )
    threads_per_worker: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Threads per worker of a local cluster.",
    )
    memory_limit: str = Field(
        default="auto",
        min_length=1,
        description=(
            "Memory limit per worker of a local cluster, in Dask's syntax: 'auto' (the "
            "machine's memory split evenly over the threads), a size such as '4GiB' or "
            "'4e9', a fraction of the machine's memory such as '0.25', or '0' for no limit."
        ),
    )
    dashboard_address: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Address of a local cluster's dashboard, e.g. ':8787'; None turns the dashboard off."
        ),
    )
    processes: bool = Field(
        default=True,
        description=(
            "Local cluster workers are separate processes (True) or threads of this "
            "process (False)."
        ),
    )
    persist_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "Fraction of the workers' total memory an input array may take and still be "
            "persisted; larger inputs are streamed from their source each pass."
        ),
    )

    @field_validator("memory_limit")
    @classmethod
    def _check_memory_limit(cls, value: str) -> str:
        """Accept exactly what ``distributed`` accepts as a worker memory limit."""
        text = value.strip()
        if text.lower() == "auto":
            return "auto"
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if number < 0:
                raise ValueError(f"memory_limit={value!r} is negative")
            return text
        try:
            size = parse_bytes(text)
        except ValueError:
            raise ValueError(
                f"memory_limit={value!r} is not 'auto', a size such as '4GiB', a fraction "
                "such as '0.5', or '0'"
            ) from None
        if size <= 0:
            raise ValueError(f"memory_limit={value!r} must be a positive size")
        return text

    @model_validator(mode="after")
    def _check_address_matches_mode(self) -> ClusterSettings:
        """An address is required with mode='address' and meaningless without it."""
        if self.mode == "address" and self.address is None:
            raise ValueError(
                "mode='address' needs the scheduler address: set cluster.address "
                "(KMFLOW_CLUSTER__ADDRESS), e.g. 'tcp://10.0.0.5:8786'"
            )
        if self.mode != "address" and self.address is not None:
            raise ValueError(
                f"address={self.address!r} is only used with mode='address' but "
                f"mode={self.mode!r}; set KMFLOW_CLUSTER__MODE=address or unset the address"
            )
        return self


class StorageSettings(BaseModel):
    """How kmflow reaches files and URLs, and the limits it applies to what it reads.

    Read from ``KMFLOW_STORAGE__<FIELD>`` environment variables when built through
    :class:`Settings` / :func:`get_settings`; building this class directly reads no
    environment. ``KMFLOW_STORAGE__OPTIONS`` holds JSON, e.g. ``'{"anon": true}'``.

    Credentials (``s3_key``, ``s3_secret``) are :class:`~pydantic.SecretStr` and print as
    ``'**********'``; ``options`` may carry credentials too, so it is left out of the repr.
    Turn these settings into fsspec storage options with
    :func:`kmflow.storage.fs.storage_options_for`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    options: dict[str, Any] = Field(
        default_factory=dict,
        repr=False,
        description=(
            "Extra fsspec storage options passed to every filesystem kmflow opens (JSON in "
            'the environment variable), e.g. {"anon": true} or '
            '{"client_kwargs": {"verify": false}}. The s3_* fields below take precedence '
            "for s3:// URLs."
        ),
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^https?://",
        description=(
            "Endpoint of an S3-compatible server for s3:// URLs (MinIO, Ceph, a local moto "
            "server), e.g. 'http://127.0.0.1:9000'; None means AWS S3 itself."
        ),
    )
    s3_key: SecretStr | None = Field(
        default=None,
        description=(
            "Access key id for s3:// URLs; None lets s3fs/botocore find credentials "
            "themselves (AWS_* variables, ~/.aws, instance roles). Set with s3_secret."
        ),
    )
    s3_secret: SecretStr | None = Field(
        default=None,
        description="Secret access key for s3:// URLs. Set with s3_key.",
    )
    max_image_pixels: int = Field(
        default=89_478_485,
        ge=1,
        description=(
            "Largest image (width x height) kmflow decodes; larger ones are reported as "
            "bad input before any pixel is decoded. The default is Pillow's own "
            "decompression-bomb threshold. Pillow refuses images over twice its "
            "PIL.Image.MAX_IMAGE_PIXELS whatever this says."
        ),
    )
    chunk_pixels: int = Field(
        default=2_097_152,
        ge=65_536,
        le=16_777_216,
        description=(
            "Pixels per Zarr chunk of the pixel store (3 bytes each: the default is a 6 MiB "
            "chunk). Larger chunks mean fewer objects and tasks, smaller ones finer "
            "parallelism."
        ),
    )

    @model_validator(mode="after")
    def _check_key_pair(self) -> StorageSettings:
        """An S3 access key and its secret come together or not at all."""
        if (self.s3_key is None) != (self.s3_secret is None):
            pair = ("s3_key", "s3_secret")
            given, missing = pair if self.s3_secret is None else pair[::-1]
            raise ValueError(
                f"{given} is set but {missing} is not: set both "
                "(KMFLOW_STORAGE__S3_KEY and KMFLOW_STORAGE__S3_SECRET) or neither"
            )
        return self


class Settings(BaseSettings):
    """All kmflow settings, read from keyword arguments and ``KMFLOW_*`` variables.

    Keyword arguments win over environment variables, which win over defaults. Nested
    fields are set with ``__``: ``KMFLOW_CLUSTER__N_WORKERS=2``. Unknown fields inside a
    group (typos such as ``KMFLOW_CLUSTER__N_WORKER``) are rejected.
    """

    model_config = SettingsConfigDict(
        env_prefix="KMFLOW_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    cluster: ClusterSettings = Field(
        default_factory=ClusterSettings,
        description="Which Dask cluster to compute on and how it is sized.",
    )
    storage: StorageSettings = Field(
        default_factory=StorageSettings,
        description="How files and URLs are reached (fsspec/S3 options) and image limits.",
    )


def get_settings() -> Settings:
    """Return the settings in effect now.

    Returns
    -------
    Settings
        Built from the current environment (``KMFLOW_*`` variables) and defaults.

    Raises
    ------
    pydantic.ValidationError
        If an environment variable holds a value out of bounds or of the wrong type.

    Notes
    -----
    Nothing is cached: each call reads the environment again, so a changed variable takes
    effect at the next call.
    """
    return Settings()
