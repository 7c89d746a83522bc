"""A user's mistakes: exit code 2 and one or two lines on stderr naming the culprit.

No traceback (that is what ``-v`` is for), and found before any Dask cluster or Prefect flow
starts: the flow commands are run as subprocesses of the installed ``kmflow`` entry point
with their own ``PREFECT_HOME``, which must still hold no Prefect database afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from kmflow.cli import app
from kmflow.storage.registry import ModelRegistry

KMFLOW = shutil.which("kmflow", path=str(Path(sys.executable).parent)) or "kmflow"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small images, a registry with one promoted model, a file, Zarr v2 and v3 groups."""
    root = tmp_path_factory.mktemp("cli-errors")
    rng = np.random.default_rng(0)
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(
            photos / f"p{i}.png"
        )
    registry = ModelRegistry(root / "models")
    record = registry.register(
        "palette",
        np.array([[10.0, 20.0, 30.0], [200.0, 100.0, 50.0]]),
        init="k-means||",
        seed=123456789,
        n_iter=3,
        converged=True,
        inertia=1.0,
        fingerprint="f" * 64,
        kind="palette",
        preprocessing={"type": "color", "color_space": "rgb"},
        params={"seed": 7},
    )
    registry.promote("palette", record.version)
    (root / "afile").write_text("not a store")
    zarr.open_group(str(root / "v2.zarr"), mode="w", zarr_format=2)
    zarr.open_group(str(root / "v3.zarr"), mode="w", zarr_format=3)
    (root / "empty").mkdir()
    return {
        "root": root,
        "photos": photos,
        "models": root / "models",
        "file": root / "afile",
        "v2": root / "v2.zarr",
        "v3": root / "v3.zarr",
        "empty": root / "empty",
    }


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_kmflow(
    *args: str, world: dict[str, Path], env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """The installed entry point, as a user runs it, with its own Prefect home."""
    home = world["root"] / "prefect-home"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KMFLOW_", "PREFECT_"))},
        "COLUMNS": "100",
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "KMFLOW_REGISTRY__URL": str(world["models"]),
        **(env or {}),
    }
    proc = subprocess.run(
        [KMFLOW, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=world["root"],
        check=False,
    )
    assert not list(home.glob("**/*.db")), "a Prefect server was started"
    return proc


def assert_one_clear_error(code: int, stderr: str, *culprits: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == 2, stderr
    assert 1 <= len(lines) <= 2, stderr
    assert lines[0].startswith("error: "), stderr
    for culprit in culprits:
        assert culprit in lines[0], (culprit, stderr)
    assert "Traceback" not in stderr


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "100", **(env or {})})
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------- flow commands


def test_mistyped_source_in_pipeline(world: dict[str, Path]) -> None:
    store = world["root"] / "new-store.zarr"
    proc = run_kmflow("pipeline", str(world["root"] / "photoz"), "--store", str(store), world=world)
    assert_one_clear_error(proc.returncode, proc.stderr, "photoz", "not found")
    assert not store.exists()  # nothing was written


def test_mistyped_source_in_monitor(world: dict[str, Path]) -> None:
    proc = run_kmflow(
        "monitor",
        str(world["photos"]),
        str(world["root"] / "incomming"),
        "--store",
        str(world["root"] / "m.zarr"),
        world=world,
    )
    assert_one_clear_error(proc.returncode, proc.stderr, "incomming")


@pytest.mark.parametrize("command", ["monitor", "retrain", "apply"])
def test_unknown_model_names_the_models_there(world: dict[str, Path], command: str) -> None:
    # A real store for retrain and apply, so that the model is what fails.
    store = world["root"] / "store.zarr"
    if not store.exists():
        from kmflow.storage.images import discover_images
        from kmflow.storage.pixelstore import PixelStore

        PixelStore(str(store)).ingest(discover_images(str(world["photos"])), max_pixels=10**6)
    args = {"monitor": [str(world["photos"])], "retrain": [], "apply": []}[command]
    proc = run_kmflow(command, *args, "--model", "palete", "--store", str(store), world=world)
    assert_one_clear_error(proc.returncode, proc.stderr, "'palete'", "models there: palette")


def test_unknown_model_in_models_show(world: dict[str, Path]) -> None:
    code, _, err = invoke("models", "show", "palete", "--registry", str(world["models"]))
    assert_one_clear_error(code, err, "'palete'", "models there: palette")
    code, _, err = invoke("models", "show", "palette", "--version", "9", "--registry",
                          str(world["models"]))  # fmt: skip
    assert_one_clear_error(code, err, "version 9", "[1]")


def test_retrain_without_a_store(world: dict[str, Path]) -> None:
    proc = run_kmflow("retrain", "--store", str(world["root"] / "nostore.zarr"), world=world)
    assert_one_clear_error(proc.returncode, proc.stderr, "no pixel store", "nostore.zarr")


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("file", ["regular file", "Zarr v3"]),
        ("v2", ["Zarr v2 group", "Zarr v3"]),
        ("v3", ["not a kmflow pixel store"]),
    ],
)
def test_store_that_is_something_else(
    world: dict[str, Path], what: str, expected: list[str]
) -> None:
    store = str(world[what])
    for args in (
        ["quantize", str(world["photos"]), "--out", str(world["root"] / f"q-{what}")],
        ["pipeline", str(world["photos"])],
    ):
        code, _, err = invoke(*args, "--store", store)
        assert_one_clear_error(code, err, store, *expected)
    assert not (world["root"] / f"q-{what}").exists()


def test_registry_that_is_a_file(world: dict[str, Path]) -> None:
    code, _, err = invoke("models", "list", "--registry", str(world["file"]))
    assert_one_clear_error(code, err, str(world["file"]), "regular file")


def test_out_that_is_a_file(world: dict[str, Path]) -> None:
    code, _, err = invoke("pipeline", str(world["photos"]), "--out", str(world["file"]))
    assert_one_clear_error(code, err, "--out", "regular file")


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["pipeline", "--seed", "-1"], "--seed"),
        (["quantize", "--seed", "-1"], "--seed"),
        (["quantize", "--k", "0"], "--k"),
        (["pipeline", "--max-iter", "0"], "--max-iter"),
        (["pipeline", "--holdout", "2"], "--holdout"),
        (["pipeline", "--holdout-by", "pixel"], "--holdout-by"),
        (["pipeline", "--color-space", "hsv"], "--color-space"),
        (["monitor", "x", "--psi", "0"], "--psi"),
        (["monitor", "x", "--sqdist-ratio", "1"], "--sqdist-ratio"),
        (["retrain", "--window", "1"], "--window"),
        (["apply", "--version", "0"], "--version"),
        (["models", "show", "palette", "--version", "newest"], "--version"),
    ],
)
def test_out_of_range_options_name_the_option(args: list[str], option: str) -> None:
    code, _, err = invoke(*args)
    assert_one_clear_error(code, err, option)
    assert "Try 'kmflow" in err  # the second line says where the help is


def test_unknown_command() -> None:
    code, _, err = invoke("pipline")
    assert_one_clear_error(code, err, "pipline")


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KMFLOW_CLUSTER__N_WORKERS", "abc", "KMFLOW_CLUSTER__N_WORKERS='abc'"),
        ("KMFLOW_CLUSTER__N_WORKER", "2", "KMFLOW_CLUSTER__N_WORKER is not a kmflow setting"),
        ("KMFLOW_STORAGE__OPTIONS", "{bad", "KMFLOW_STORAGE"),
        ("KMFLOW_CLUSTER__MODE", "address", "KMFLOW_CLUSTER__ADDRESS"),
        ("KMFLOW_STORAGE__CHUNK_PIXELS", "10", "KMFLOW_STORAGE__CHUNK_PIXELS='10'"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["quantize", "x"],
        ["pipeline"],
        ["monitor", "x"],
        ["retrain"],
        ["apply"],
        ["models", "list"],
        ["models", "show", "palette"],
        ["models", "promote", "palette", "1"],
    ],
)
def test_bad_setting_in_the_environment(
    command: list[str], variable: str, value: str, expected: str
) -> None:
    code, _, err = invoke(*command, env={variable: value})
    assert_one_clear_error(code, err, expected)


def test_a_secret_setting_is_never_shown() -> None:
    code, _, err = invoke("models", "list", env={"KMFLOW_STORAGE__S3_SECRET": "hunter2"})
    assert_one_clear_error(code, err, "s3_key")
    assert "hunter2" not in err


def test_help_works_whatever_the_settings() -> None:
    code, out, _ = invoke("quantize", "--help", env={"KMFLOW_CLUSTER__N_WORKERS": "abc"})
    assert code == 0
    assert "--seed" in out


# --------------------------------------------------------------------------- storage


@pytest.mark.parametrize(
    "args",
    [
        ["pipeline", "PHOTOS", "--store", "s3://bucket/store.zarr"],
        ["monitor", "s3://bucket/incoming/", "--store", "STORE"],
        ["models", "list", "--registry", "s3://bucket/models"],
        ["quantize", "PHOTOS", "--out", "s3://bucket/out"],
    ],
)
def test_unreachable_s3_endpoint(world: dict[str, Path], args: list[str]) -> None:
    port = closed_port()
    env = {
        "KMFLOW_STORAGE__S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "KMFLOW_STORAGE__S3_RETRY_SECONDS": "0",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "Zq9-not-shown",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    args = [
        {"PHOTOS": str(world["photos"]), "STORE": str(world["root"] / "s3.zarr")}.get(a, a)
        for a in args
    ]
    proc = run_kmflow(*args, world=world, env=env)
    assert_one_clear_error(proc.returncode, proc.stderr, "s3://bucket/", f"127.0.0.1:{port}")
    assert "Zq9-not-shown" not in proc.stderr  # no credentials


def test_a_prefect_api_that_does_not_answer(world: dict[str, Path]) -> None:
    """PREFECT_API_URL naming a server that is down: one line before any cluster starts
    (it used to be a 144-line httpx traceback after the flow had begun), nothing written."""
    port = closed_port()
    store = world["root"] / "prefect-down.zarr"
    proc = run_kmflow(
        "pipeline",
        str(world["photos"]),
        "--store",
        str(store),
        world=world,
        env={"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"},
    )
    assert_one_clear_error(
        proc.returncode, proc.stderr, "Prefect API", f"127.0.0.1:{port}", "PREFECT_API_URL"
    )
    assert not store.exists()


def test_verbose_shows_the_traceback(world: dict[str, Path]) -> None:
    code, _, err = invoke("-v", "models", "show", "palete", "--registry", str(world["models"]))
    assert code == 2
    assert "Traceback" in err
    assert "error: no model 'palete'" in err


def test_an_object_store_error_past_the_storage_layer_is_one_storage_error() -> None:
    from botocore.exceptions import EndpointConnectionError

    from kmflow.cli import _storage_failure
    from kmflow.errors import StorageError

    endpoint = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/store.zarr")
    try:
        try:
            raise endpoint
        except EndpointConnectionError as exc:
            raise RuntimeError("a task failed") from exc
    except RuntimeError as wrapped:
        failure = _storage_failure(wrapped)
    assert isinstance(failure, StorageError)
    assert str(failure) == (
        "storage failed: EndpointConnectionError: Could not connect to the endpoint URL: "
        '"http://127.0.0.1:9/bucket/store.zarr"'
    )
    assert _storage_failure(ValueError("a bug")) is None


def test_pipeline_on_a_folder_without_images_and_no_store(world: dict[str, Path]) -> None:
    store = world["root"] / "never.zarr"
    code, _, err = invoke("pipeline", str(world["empty"]), "--store", str(store))
    assert_one_clear_error(code, err, "no images found", str(world["empty"]))
    assert not store.exists()


def test_a_store_folder_holding_only_a_writer_lease_is_a_new_store(tmp_path: Path) -> None:
    """The first ingest takes the lease before it creates zarr.json (and may crash between)."""
    from kmflow.preflight import check_store
    from kmflow.storage.pixelstore import PixelStore

    url = str(tmp_path / "store.zarr")
    with PixelStore(url).writing(by="test"):
        pass
    assert (tmp_path / "store.zarr" / ".lease").is_dir()
    assert check_store(url) is False  # nothing stored yet: one will be created
    (tmp_path / "store.zarr" / "other.txt").write_text("x")
    with pytest.raises(Exception, match="folder of other files"):
        check_store(url)
