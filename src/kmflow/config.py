"""Settings: *where and how* kmflow runs (cluster mode, addresses, limits).

Settings answer where and how; the parameters of a fit (``n_clusters``, seed, data) are
arguments, never settings. Values come from keyword arguments or from environment variables
prefixed ``KMFLOW_``, with ``__`` between a group and its field::

    KMFLOW_CLUSTER__MODE=address
    KMFLOW_CLUSTER__ADDRESS=tcp://scheduler:8786
    KMFLOW_CLUSTER__N_WORKERS=4
    KMFLOW_CLUSTER__MEMORY_LIMIT=4GiB
    KMFLOW_CLUSTER__MODE=kubernetes
    KMFLOW_CLUSTER__KUBERNETES__IMAGE=registry.example.com/kmflow:0.1.0

Examples
--------
>>> from kmflow.config import ClusterSettings, Settings
>>> Settings(cluster=ClusterSettings(n_workers=2)).cluster.n_workers
2
"""

from __future__ import annotations

import re
from typing import Any, Literal

from dask.utils import format_bytes, parse_bytes
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ClusterSettings",
    "KubernetesSettings",
    "RegistrySettings",
    "ServeSettings",
    "Settings",
    "StorageSettings",
    "get_settings",
]

ClusterMode = Literal["local", "address", "kubernetes"]

# Kubernetes names. A namespace is an RFC 1123 label. The cluster name also names the
# scheduler Service "<name>-scheduler", and Service names are RFC 1035 labels (a letter first,
# at most 63 characters), so the cluster name is one too, 10 characters shorter.
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_CLUSTER_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_CLUSTER_NAME_MAX = 53
_UNIQUE_SUFFIX_LENGTH = 9  # "-" and 8 hex digits, added per connection with unique_name
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes resource quantities as kmflow accepts them: plain or decimal-suffixed numbers
# ("1", "0.5", "500m" for CPU; "4Gi", "512Mi", "4G" for memory).
_CPU_QUANTITY = re.compile(r"^(?P<number>\d+(\.\d+)?|\.\d+)(?P<milli>m)?$")
_MEMORY_QUANTITY = re.compile(
    r"^(?P<number>\d+(\.\d+)?|\.\d+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
)
_MEMORY_FACTORS: dict[str | None, int] = {
    None: 1,
    **{suffix: 1024 ** (i + 1) for i, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{suffix: 1000 ** (i + 1) for i, suffix in enumerate(("k", "M", "G", "T", "P", "E"))},
}
_MIN_POD_MEMORY = 256 * 2**20
# Environment variable names as Kubernetes accepts them, less the two the operator sets.
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_OPERATOR_ENV = frozenset({"DASK_SCHEDULER_ADDRESS", "DASK_WORKER_NAME"})


def _check_cpu(value: str) -> str:
    """A positive CPU quantity such as '1', '0.5' or '500m', at most 1024 cores."""
    match = _CPU_QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a Kubernetes CPU quantity: write cores ('1', '0.5') or "
            "millicores ('500m')"
        )
    cores = float(match["number"]) / (1000 if match["milli"] else 1)
    if not 0 < cores <= 1024:
        raise ValueError(f"{value!r} is {cores:g} cores; give more than 0 and at most 1024")
    return value


def _check_memory(value: str) -> str:
    """A Kubernetes memory quantity of at least 256Mi, such as '4Gi', '512Mi' or '4G'."""
    match = _MEMORY_QUANTITY.fullmatch(value)
    if match is None:
        hint = ""
        if re.fullmatch(r"\d+(\.\d+)?\s*[KMGTPE]i?B", value, flags=re.IGNORECASE):
            hint = " (Kubernetes has no 'B' suffix: '4Gi' is 4 GiB, '4G' is 4e9 bytes)"
        raise ValueError(
            f"{value!r} is not a Kubernetes memory quantity such as '4Gi', '512Mi' or '4G'{hint}"
        )
    size = float(match["number"]) * _MEMORY_FACTORS[match["suffix"]]
    if size < _MIN_POD_MEMORY:
        raise ValueError(
            f"{value!r} is {format_bytes(int(size))}; a Dask scheduler or worker pod needs "
            "at least 256Mi"
        )
    return value


class KubernetesSettings(BaseModel):
    """The Dask cluster kmflow creates in Kubernetes (cluster mode ``'kubernetes'``).

    Read from ``KMFLOW_CLUSTER__KUBERNETES__<FIELD>`` environment variables when built
    through :class:`Settings` / :func:`get_settings`; ``KMFLOW_CLUSTER__KUBERNETES__ENV``
    holds JSON, e.g. ``'{"AWS_DEFAULT_REGION": "eu-west-1"}'``. The cluster is a
    ``DaskCluster`` resource of the dask-kubernetes operator, which must be installed in the
    Kubernetes cluster; :func:`kmflow.cluster.kubernetes.cluster_spec` builds it from these
    settings.

    Scheduler and worker containers get the same value as request and limit for CPU and
    memory, so a worker's Dask memory limit (detected from its cgroup) is
    ``worker_memory`` and its thread count follows ``worker_cpu``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str = Field(
        default="kmflow:latest",
        min_length=1,
        max_length=1024,
        pattern=r"^\S+$",
        description=(
            "Container image of the scheduler and worker pods; it must contain kmflow and "
            "the same dask/distributed versions as the process that connects "
            "(deploy/Dockerfile builds it), e.g. 'registry.example.com/kmflow:0.1.0'."
        ),
    )
    namespace: str = Field(
        default="default",
        max_length=63,
        pattern=_DNS_LABEL,
        description="Kubernetes namespace the DaskCluster and its pods are created in.",
    )
    name: str = Field(
        default="kmflow",
        max_length=_CLUSTER_NAME_MAX,
        pattern=_CLUSTER_NAME,
        description=(
            "Name of the DaskCluster resource (its pods and the '<name>-scheduler' Service "
            "are named after it), or with unique_name its prefix: lower-case letters, "
            "digits and '-', a letter first, at most 53 characters (44 with unique_name)."
        ),
    )
    unique_name: bool = Field(
        default=True,
        description=(
            "Give each connection a cluster of its own, named '<name>-<8 hex digits>', so "
            "that concurrent flow runs (on one worker or several) never share, or delete, "
            "each other's cluster. False names it `name` exactly: a DaskCluster of that "
            "name already in the namespace is then connected to instead of created, e.g. "
            "one kept running across runs with shutdown_on_close=False (connect() still "
            "waits for n_workers workers: keep n_workers at that cluster's size)."
        ),
    )
    n_workers: int = Field(
        default=2,
        ge=0,
        le=1024,
        description=(
            "Worker pods of the cluster; connect() returns once this many workers have "
            "joined the scheduler."
        ),
    )
    worker_cpu: str = Field(
        default="1",
        description=(
            "CPU request and limit of each worker pod, e.g. '1', '0.5' or '500m'; the "
            "worker runs max(1, ceil(cores)) threads."
        ),
    )
    worker_memory: str = Field(
        default="4Gi",
        description=(
            "Memory request and limit of each worker pod, e.g. '4Gi' or '512Mi' (at least "
            "256Mi); it is also the worker's Dask memory limit."
        ),
    )
    scheduler_cpu: str = Field(
        default="1",
        description="CPU request and limit of the scheduler pod, e.g. '1' or '500m'.",
    )
    scheduler_memory: str = Field(
        default="2Gi",
        description="Memory request and limit of the scheduler pod, e.g. '2Gi' (at least 256Mi).",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra environment variables of the scheduler and worker containers (JSON in "
            "the environment variable). Values land in the DaskCluster resource in plain "
            "text: put credentials in the Secret named by `settings_from` instead."
        ),
    )
    settings_from: str | None = Field(
        default="kmflow-settings",
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description=(
            "Name of a ConfigMap and of a Secret in the namespace whose keys become "
            "environment variables of the scheduler and worker containers (envFrom, both "
            "optional: either may be absent). Put KMFLOW_STORAGE__* there so that code "
            "running on the workers reads the same storage settings and credentials as the "
            "flow. None or '' adds no envFrom."
        ),
    )
    idle_timeout: int = Field(
        default=0,
        ge=0,
        le=7 * 24 * 3600,
        description=(
            "Seconds of scheduler idleness after which the operator deletes the cluster; 0 "
            "never does. A safety net for clusters whose client died without closing them."
        ),
    )
    shutdown_on_close: bool = Field(
        default=True,
        description=(
            "Closing the client deletes the DaskCluster and its pods (True), or leaves it "
            "running for the next connection (False)."
        ),
    )
    resource_timeout: int = Field(
        default=60,
        ge=1,
        le=3600,
        description=(
            "Seconds to wait for the Kubernetes API to answer a request and for the "
            "operator to act on the DaskCluster resource (dask-kubernetes' resource_timeout)."
        ),
    )
    start_timeout: float = Field(
        default=600.0,
        gt=0,
        le=7200,
        description=(
            "Seconds connect() waits for the whole cluster: the resource created, the "
            "scheduler pod running (image pull included) and reachable, and n_workers "
            "workers joined. On expiry the cluster is closed (deleted if "
            "shutdown_on_close) and a ClusterError raised."
        ),
    )

    @field_validator("settings_from", mode="before")
    @classmethod
    def _empty_settings_from_is_none(cls, value: Any) -> Any:
        """An empty name (``KMFLOW_CLUSTER__KUBERNETES__SETTINGS_FROM=``) means none."""
        return None if value == "" else value

    @field_validator("worker_cpu", "scheduler_cpu")
    @classmethod
    def _check_cpu_quantity(cls, value: str) -> str:
        """Reject CPU quantities Kubernetes would refuse, or zero."""
        return _check_cpu(value)

    @field_validator("worker_memory", "scheduler_memory")
    @classmethod
    def _check_memory_quantity(cls, value: str) -> str:
        """Reject memory quantities Kubernetes would refuse, and pods too small for Dask."""
        return _check_memory(value)

    @field_validator("env")
    @classmethod
    def _check_env_names(cls, value: dict[str, str]) -> dict[str, str]:
        """Names Kubernetes accepts, and none of those the operator sets itself."""
        for name in value:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name in _OPERATOR_ENV:
                raise ValueError(
                    f"{name} is set by the dask-kubernetes operator on every pod; "
                    "leave it out of env"
                )
        return value

    @model_validator(mode="after")
    def _check_unique_name_fits(self) -> KubernetesSettings:
        """The unique suffix must still leave room for '-scheduler' in 63 characters."""
        if self.unique_name and len(self.name) > _CLUSTER_NAME_MAX - _UNIQUE_SUFFIX_LENGTH:
            raise ValueError(
                f"name={self.name!r} has {len(self.name)} characters; with unique_name the "
                f"cluster is named '<name>-<8 hex digits>', which must fit in "
                f"{_CLUSTER_NAME_MAX}: shorten the name to "
                f"{_CLUSTER_NAME_MAX - _UNIQUE_SUFFIX_LENGTH} or set unique_name=False"
            )
        return self


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
            "at `address`; 'kubernetes': create a Dask cluster in Kubernetes with the "
            "dask-kubernetes operator (a DaskCluster resource, see `kubernetes`) for the "
            "duration of the connection."
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
    small_job_bytes: int = Field(
        default=32 * 2**20,
        ge=0,
        description=(
            "In 'local' mode, a job whose local source files add up to at most this many "
            "bytes runs in this process on Dask's threads instead of starting a cluster "
            "(starting and stopping one costs seconds); 0 always starts one. Remote sources, "
            "--workers and --scheduler always use a cluster."
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
    kubernetes: KubernetesSettings = Field(
        default_factory=KubernetesSettings,
        description=(
            "The Dask cluster created in Kubernetes for mode='kubernetes' (image, namespace, "
            "worker count and size); KMFLOW_CLUSTER__KUBERNETES__<FIELD>."
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
    lease_timeout: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description=(
            "Seconds a writer of a pixel store (ingest, labels, histogram, palettes) waits "
            "for another writer's lease on the same store before failing with "
            "StoreBusyError; 0 fails at once."
        ),
    )
    lease_ttl: float = Field(
        default=60.0,
        ge=1,
        le=3_600,
        description=(
            "Seconds a pixel store's writer lease stays valid without renewal; a running "
            "writer renews it every third of this. A writer that crashed blocks the store "
            "for at most this long. Keep it well above any pause of a writing process."
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

    s3_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description=(
            "About how long an s3:// request keeps retrying transient failures (endpoint "
            "unreachable, connection reset, timeouts, throttling, 5xx) before the error is "
            "reported: botocore's 'standard' retry mode with jittered exponential backoff "
            "(pauses up to 20 s each), its attempt count chosen so that the expected total "
            "pause is about this long; the worst case is about twice as long. 0 disables "
            "retries. An explicit 'retries' in options['config_kwargs'] wins."
        ),
    )
    s3_connect_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description=(
            "Seconds to wait for a TCP connection to the S3 endpoint per attempt (botocore's "
            "default, 60, makes an unreachable endpoint hang a minute per attempt)."
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


class RegistrySettings(BaseModel):
    """Where the model registry lives (``KMFLOW_REGISTRY__<FIELD>``).

    Storage options and S3 credentials for the URL come from :class:`StorageSettings`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        default="kmflow-models",
        min_length=1,
        description=(
            "Local path or fsspec URL of the model registry, e.g. 's3://bucket/models'. "
            "Relative paths are relative to the working directory of the process."
        ),
    )


_MIN_API_KEY_LENGTH = 16


class ServeSettings(BaseModel):
    """The HTTP service, ``kmflow serve`` (``KMFLOW_SERVE__<FIELD>``).

    ``KMFLOW_SERVE__API_KEYS`` holds JSON, e.g. ``'["key-of-at-least-16-chars"]'``; clients
    send one as ``Authorization: Bearer <key>``. Several keys let one be rotated out while
    the next is already in use.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_keys: tuple[SecretStr, ...] = Field(
        default=(),
        max_length=64,
        description=(
            "Secrets a client may present as 'Authorization: Bearer <key>', at least "
            f"{_MIN_API_KEY_LENGTH} characters each. Required unless the service is started "
            "with --no-auth; never logged."
        ),
    )
    models: tuple[str, ...] = Field(
        default=(),
        max_length=1024,
        description=(
            "Model names to serve (JSON list); empty serves every name in the registry, "
            "names registered later included."
        ),
    )
    max_body_bytes: int = Field(
        default=32 * 2**20,
        ge=1024,
        le=2**31,
        description=(
            "Largest request body in bytes (413 beyond it, counted while the body is read)."
        ),
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a predict or quantize request may compute before a 503 answer.",
    )
    refresh_seconds: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description=(
            "How often the champion pointers are read again: a promotion is served within "
            "about this long, without a restart."
        ),
    )

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for i, key in enumerate(value):
            if len(key.get_secret_value()) < _MIN_API_KEY_LENGTH:
                raise ValueError(
                    f"API key {i + 1} of {len(value)} is shorter than {_MIN_API_KEY_LENGTH} "
                    "characters"
                )
            if key.get_secret_value() != key.get_secret_value().strip():
                raise ValueError(f"API key {i + 1} of {len(value)} has surrounding spaces")
        return value


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
    registry: RegistrySettings = Field(
        default_factory=RegistrySettings,
        description="Where versioned models and champion pointers are kept.",
    )
    serve: ServeSettings = Field(
        default_factory=ServeSettings,
        description="The HTTP service: API keys, body limit, timeouts, champion refresh.",
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
