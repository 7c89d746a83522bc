"""Files and URLs: storage options, reading, atomic writing, URL joining, error translation.

Also the :class:`~kmflow.config.StorageSettings` group (bounds, environment, secrets).
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from pydantic import SecretStr, ValidationError

from kmflow.config import Settings, StorageSettings, get_settings
from kmflow.errors import (
    InvalidInputError,
    KmflowError,
    SourceNotFoundError,
    StorageError,
)
from kmflow.storage.fs import (
    get_fs,
    join_url,
    read_bytes,
    redact_url,
    s3_attempts,
    storage_options_for,
    write_bytes_atomic,
)

# --------------------------------------------------------------------------- StorageSettings


def test_storage_settings_defaults() -> None:
    storage = get_settings().storage
    assert storage == StorageSettings()
    assert storage.options == {}
    assert storage.s3_endpoint_url is None
    assert storage.s3_key is None
    assert storage.s3_secret is None
    assert storage.max_image_pixels == 89_478_485
    assert storage.chunk_pixels == 2_097_152


def test_every_storage_field_has_a_description() -> None:
    for name, field in StorageSettings.model_fields.items():
        assert field.description, name
    assert Settings.model_fields["storage"].description


def test_storage_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_STORAGE__OPTIONS", '{"anon": false, "client_kwargs": {"a": 1}}')
    monkeypatch.setenv("KMFLOW_STORAGE__S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("KMFLOW_STORAGE__S3_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("KMFLOW_STORAGE__S3_SECRET", "wJalrXUtnFEMI")
    monkeypatch.setenv("KMFLOW_STORAGE__MAX_IMAGE_PIXELS", "1000")
    monkeypatch.setenv("KMFLOW_STORAGE__CHUNK_PIXELS", "65536")
    storage = get_settings().storage
    assert storage.options == {"anon": False, "client_kwargs": {"a": 1}}
    assert storage.s3_endpoint_url == "http://127.0.0.1:9000"
    assert storage.s3_key is not None
    assert storage.s3_key.get_secret_value() == "AKIDEXAMPLE"
    assert storage.s3_secret is not None
    assert storage.s3_secret.get_secret_value() == "wJalrXUtnFEMI"
    assert (storage.max_image_pixels, storage.chunk_pixels) == (1000, 65536)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_image_pixels": 0},
        {"chunk_pixels": 65_535},
        {"chunk_pixels": 16_777_217},
        {"s3_endpoint_url": "127.0.0.1:9000"},  # no scheme
        {"s3_endpoint_url": ""},
        {"s3_key": "AKID"},  # a key without its secret
        {"s3_secret": "secret"},
        {"unknown_field": 1},
    ],
)
def test_storage_settings_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        StorageSettings(**kwargs)


def test_storage_settings_bounds_are_inclusive() -> None:
    assert StorageSettings(chunk_pixels=65_536).chunk_pixels == 65_536
    assert StorageSettings(chunk_pixels=16_777_216).chunk_pixels == 16_777_216
    assert StorageSettings(max_image_pixels=1).max_image_pixels == 1


def test_secrets_never_in_repr_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_STORAGE__S3_KEY", "AKID-VISIBLE-NOT")
    monkeypatch.setenv("KMFLOW_STORAGE__S3_SECRET", "hunter2-secret")
    monkeypatch.setenv("KMFLOW_STORAGE__OPTIONS", '{"token": "opt-secret-token"}')
    settings = get_settings()
    shown = repr(settings) + str(settings) + repr(settings.storage)
    for secret in ("AKID-VISIBLE-NOT", "hunter2-secret", "opt-secret-token"):
        assert secret not in shown
    dumped = settings.storage.model_dump_json(exclude={"options"})
    assert "hunter2-secret" not in dumped
    assert "AKID-VISIBLE-NOT" not in dumped


# --------------------------------------------------------------------------- storage options


def test_storage_options_plain_paths_get_only_options() -> None:
    settings = StorageSettings(
        options={"auto_mkdir": True},
        s3_endpoint_url="http://127.0.0.1:9000",
        s3_key=SecretStr("k"),
        s3_secret=SecretStr("s"),
    )
    assert storage_options_for("/data/images", settings) == {"auto_mkdir": True}
    assert storage_options_for("memory://x/", settings) == {"auto_mkdir": True}


# 60 s of expected retry pauses (the default s3_retry_seconds) is 11 attempts, 5 s to connect.
DEFAULT_RETRIES = {
    "retries": {"mode": "standard", "total_max_attempts": 11},
    "connect_timeout": 5.0,
}


@pytest.mark.parametrize(
    ("seconds", "attempts"), [(0, 1), (0.5, 2), (1, 3), (7.5, 5), (15.5, 6), (60, 11), (120, 17)]
)
def test_s3_attempts_cover_the_retry_time(seconds: float, attempts: int) -> None:
    # botocore's standard mode pauses random() * min(2**i, 20) s before retry i: the expected
    # pauses are 0.5, 1, 2, 4, 8, then 10 s each.
    assert s3_attempts(seconds) == attempts


def test_s3_retry_settings_reach_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_STORAGE__S3_RETRY_SECONDS", "0")
    monkeypatch.setenv("KMFLOW_STORAGE__S3_CONNECT_TIMEOUT", "1.5")
    assert storage_options_for("s3://b/k")["config_kwargs"] == {
        "retries": {"mode": "standard", "total_max_attempts": 1},
        "connect_timeout": 1.5,
    }
    # An explicit botocore retry configuration in the options wins over the setting.
    monkeypatch.setenv(
        "KMFLOW_STORAGE__OPTIONS", '{"config_kwargs": {"retries": {"max_attempts": 2}}}'
    )
    assert storage_options_for("s3://b/k")["config_kwargs"] == {
        "retries": {"max_attempts": 2},
        "connect_timeout": 1.5,
    }
    assert storage_options_for("/local") == {"config_kwargs": {"retries": {"max_attempts": 2}}}


@pytest.mark.parametrize("url", ["s3://bucket/images/", "s3a://bucket/x.png", "S3://bucket"])
def test_storage_options_for_s3(url: str) -> None:
    settings = StorageSettings(
        options={"client_kwargs": {"verify": False}, "key": "from-options", "anon": False},
        s3_endpoint_url="http://127.0.0.1:9000",
        s3_key=SecretStr("the-key"),
        s3_secret=SecretStr("the-secret"),
    )
    assert storage_options_for(url, settings) == {
        "anon": False,
        "key": "the-key",
        "secret": "the-secret",
        "client_kwargs": {"verify": False, "endpoint_url": "http://127.0.0.1:9000"},
        "config_kwargs": DEFAULT_RETRIES,
    }
    # The settings' own dicts are not touched.
    assert settings.options["client_kwargs"] == {"verify": False}
    assert settings.options["key"] == "from-options"


def test_storage_options_never_sets_region_in_client_kwargs() -> None:
    settings = StorageSettings(s3_endpoint_url="http://127.0.0.1:9000")
    options = storage_options_for("s3://bucket", settings)
    assert options == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
        "config_kwargs": DEFAULT_RETRIES,
    }


def test_storage_options_without_s3_settings_is_a_copy() -> None:
    settings = StorageSettings(options={"client_kwargs": {"a": 1}})
    options = storage_options_for("s3://bucket", settings)
    options["client_kwargs"]["a"] = 2
    assert settings.options == {"client_kwargs": {"a": 1}}


def test_storage_options_default_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_STORAGE__S3_ENDPOINT_URL", "http://127.0.0.1:1234")
    assert storage_options_for("s3://b/k") == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1234"},
        "config_kwargs": DEFAULT_RETRIES,
    }
    assert storage_options_for("/local") == {}


# --------------------------------------------------------------------------- get_fs, redact


def test_get_fs_local_path_is_absolute(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = get_fs("photos/a.png")
    assert isinstance(fs, LocalFileSystem)
    assert path == f"{tmp_path.as_posix()}/photos/a.png"


def test_get_fs_memory() -> None:
    fs, path = get_fs("memory://bucket/x.png")
    assert "memory" in fs.protocol
    assert path == "/bucket/x.png"


def test_get_fs_unknown_protocol() -> None:
    with pytest.raises(InvalidInputError, match=r"nosuchproto://bucket/x\.png"):
        get_fs("nosuchproto://bucket/x.png")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://me:hunter2@host/a.png", "ftp://***@host/a.png"),
        ("s3://bucket/key@v1.png", "s3://bucket/key@v1.png"),  # '@' after the host is data
        ("/data/a@b.png", "/data/a@b.png"),
        ("https://token@example.com/x", "https://***@example.com/x"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_connection_failure_names_url_without_password() -> None:
    # Nothing listens on port 1: FTP connects when the filesystem is created.
    with pytest.raises(StorageError) as info:
        read_bytes("ftp://user:hunter2@127.0.0.1:1/x.png")
    message = str(info.value)
    assert "ftp://***@127.0.0.1:1/x.png" in message
    assert "hunter2" not in message


# --------------------------------------------------------------------------- read_bytes


def test_read_bytes_local_and_pathlike(tmp_path: Any) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"\x00\x01payload")
    assert read_bytes(str(target)) == b"\x00\x01payload"
    assert read_bytes(target) == b"\x00\x01payload"
    assert read_bytes(f"file://{target.as_posix()}") == b"\x00\x01payload"


def test_read_bytes_missing_file_names_it(tmp_path: Any) -> None:
    missing = tmp_path / "nope" / "a.png"
    with pytest.raises(SourceNotFoundError, match="not found") as info:
        read_bytes(str(missing))
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, KmflowError)


def test_read_bytes_directory(tmp_path: Any) -> None:
    with pytest.raises(StorageError, match="is a directory") as info:
        read_bytes(str(tmp_path))
    assert not isinstance(info.value, SourceNotFoundError)


def test_read_bytes_permission_denied(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root here, which reads files whatever their mode: make the filesystem
    # itself refuse, as a mode-000 file or a bucket policy would.
    import fsspec.implementations.local

    target = tmp_path / "secret.png"
    target.write_bytes(b"x")

    def refuse(self: Any, path: str, *args: Any, **kwargs: Any) -> bytes:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "cat_file", refuse)
    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "_open", refuse)
    with pytest.raises(StorageError, match="ermission denied") as info:
        read_bytes(str(target))
    assert str(target) in str(info.value)
    assert not isinstance(info.value, SourceNotFoundError)


# --------------------------------------------------------------------------- write_bytes_atomic


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh ``memory://`` folder, removed afterwards (the memory filesystem is global)."""
    root = f"/kmflow-test-{uuid.uuid4().hex[:12]}"
    yield f"memory://{root}"
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_write_bytes_atomic_local_creates_parents_and_replaces(tmp_path: Any) -> None:
    target = tmp_path / "out" / "deep" / "a.png"
    write_bytes_atomic(str(target), b"first")
    assert target.read_bytes() == b"first"
    write_bytes_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    # No temporary file is left behind.
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.png"]


def test_write_bytes_atomic_respects_umask(tmp_path: Any) -> None:
    old = os.umask(0o022)
    try:
        target = tmp_path / "a.png"
        write_bytes_atomic(str(target), b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_bytes_atomic_failure_keeps_nothing_half_written(tmp_path: Any) -> None:
    # The destination is an existing non-empty folder: os.replace fails.
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    with pytest.raises(StorageError, match="taken"):
        write_bytes_atomic(str(target), b"data")
    assert (target / "inside").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_write_and_read_memory(memory_root: str) -> None:
    url = join_url(memory_root, "sub", "a.bin")
    write_bytes_atomic(url, b"abc")
    assert read_bytes(url) == b"abc"
    write_bytes_atomic(url, b"replaced")
    assert read_bytes(url) == b"replaced"


# --------------------------------------------------------------------------- join_url


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("/data/out", ("a.png",), "/data/out/a.png"),
        ("/data/out/", ("sub/a.png",), "/data/out/sub/a.png"),
        ("s3://bucket", ("out", "x.png"), "s3://bucket/out/x.png"),
        ("s3://bucket/", ("/out/", "", "x.png"), "s3://bucket/out/x.png"),
        ("memory://root", (), "memory://root"),
        ("file:///tmp/o", ("a/b/c.png",), "file:///tmp/o/a/b/c.png"),
        ("out", ("a.png",), "out/a.png"),
    ],
)
def test_join_url(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join_url(base, *parts) == expected


def test_join_url_rejects_parent_segments() -> None:
    with pytest.raises(InvalidInputError, match=r"'\.\.'"):
        join_url("s3://bucket/out", "../escape.png")


# --------------------------------------------------------------------------- S3 (loopback)


@pytest.mark.integration
def test_s3_write_read_roundtrip(s3_bucket: tuple[str, dict[str, Any]]) -> None:
    bucket_url, options = s3_bucket
    url = join_url(bucket_url, "models", "m", "champion.json")
    write_bytes_atomic(url, b'{"version": 1}', options)
    assert read_bytes(url, options) == b'{"version": 1}'
    write_bytes_atomic(url, b'{"version": 2}', options)
    assert read_bytes(url, options) == b'{"version": 2}'


@pytest.mark.integration
def test_s3_options_from_settings_reach_the_server(
    s3_bucket: tuple[str, dict[str, Any]], s3_endpoint: str
) -> None:
    bucket_url, fixture_options = s3_bucket
    settings = StorageSettings(
        s3_endpoint_url=s3_endpoint,
        s3_key=SecretStr(fixture_options["key"]),
        s3_secret=SecretStr(fixture_options["secret"]),
    )
    options = storage_options_for(bucket_url, settings)
    assert options == {**fixture_options, "config_kwargs": DEFAULT_RETRIES}
    write_bytes_atomic(join_url(bucket_url, "a.bin"), b"via settings", options)
    assert read_bytes(join_url(bucket_url, "a.bin"), fixture_options) == b"via settings"


@pytest.mark.integration
def test_s3_missing_key_and_bucket(s3_bucket: tuple[str, dict[str, Any]]) -> None:
    bucket_url, options = s3_bucket
    missing = join_url(bucket_url, "images", "missing.png")
    with pytest.raises(SourceNotFoundError, match=missing):
        read_bytes(missing, options)
    no_bucket = f"s3://kmflow-no-such-bucket-{uuid.uuid4().hex[:8]}/x.png"
    with pytest.raises(SourceNotFoundError, match=no_bucket):
        read_bytes(no_bucket, options)
    with pytest.raises(StorageError, match=no_bucket):
        write_bytes_atomic(no_bucket, b"x", options)
