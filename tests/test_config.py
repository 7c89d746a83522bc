"""Settings: environment parsing, defaults, bounds and cross-field rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kmflow.config import ClusterSettings, KubernetesSettings, Settings, get_settings


def test_defaults() -> None:
    cluster = get_settings().cluster
    assert cluster == ClusterSettings()
    assert cluster.mode == "local"
    assert cluster.address is None
    assert cluster.n_workers is None
    assert cluster.threads_per_worker == 1
    assert cluster.memory_limit == "auto"
    assert cluster.dashboard_address is None
    assert cluster.processes is True
    assert cluster.persist_fraction == 0.5
    assert cluster.connect_timeout == 5.0
    assert cluster.kubernetes == KubernetesSettings()


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("KMFLOW_CLUSTER__N_WORKERS", "2", "n_workers", 2),
        ("KMFLOW_CLUSTER__THREADS_PER_WORKER", "3", "threads_per_worker", 3),
        ("KMFLOW_CLUSTER__MEMORY_LIMIT", "4GiB", "memory_limit", "4GiB"),
        ("KMFLOW_CLUSTER__MEMORY_LIMIT", "0.25", "memory_limit", "0.25"),
        ("KMFLOW_CLUSTER__MEMORY_LIMIT", "AUTO", "memory_limit", "auto"),
        ("KMFLOW_CLUSTER__DASHBOARD_ADDRESS", ":8787", "dashboard_address", ":8787"),
        ("KMFLOW_CLUSTER__PROCESSES", "false", "processes", False),
        ("KMFLOW_CLUSTER__PERSIST_FRACTION", "0.25", "persist_fraction", 0.25),
        ("KMFLOW_CLUSTER__PERSIST_FRACTION", "1", "persist_fraction", 1.0),
        ("KMFLOW_CLUSTER__CONNECT_TIMEOUT", "2.5", "connect_timeout", 2.5),
        ("kmflow_cluster__n_workers", "7", "n_workers", 7),  # names are case-insensitive
    ],
)
def test_environment_variable_sets_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: Any
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(get_settings().cluster, field) == expected


def test_kubernetes_mode_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_CLUSTER__MODE", "kubernetes")
    monkeypatch.setenv("KMFLOW_CLUSTER__KUBERNETES__IMAGE", "registry.example.com/kmflow:0.1.0")
    cluster = get_settings().cluster
    assert cluster.mode == "kubernetes"
    assert cluster.kubernetes.image == "registry.example.com/kmflow:0.1.0"
    assert cluster.address is None


def test_address_mode_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_CLUSTER__MODE", "address")
    monkeypatch.setenv("KMFLOW_CLUSTER__ADDRESS", "tcp://10.0.0.5:8786")
    cluster = get_settings().cluster
    assert (cluster.mode, cluster.address) == ("address", "tcp://10.0.0.5:8786")


def test_whole_group_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_CLUSTER", '{"n_workers": 3, "processes": false}')
    cluster = get_settings().cluster
    assert (cluster.n_workers, cluster.processes) == (3, False)


def test_keyword_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_CLUSTER__N_WORKERS", "2")
    assert Settings(cluster=ClusterSettings(n_workers=5)).cluster.n_workers == 5


def test_get_settings_reads_environment_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_CLUSTER__N_WORKERS", "2")
    assert get_settings().cluster.n_workers == 2
    monkeypatch.setenv("KMFLOW_CLUSTER__N_WORKERS", "4")
    assert get_settings().cluster.n_workers == 4


def test_unrelated_kmflow_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_SOMETHING_ELSE", "1")
    assert get_settings() == Settings()


def test_typo_in_nested_variable_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMFLOW_CLUSTER__N_WORKER", "2")
    with pytest.raises(ValidationError, match="n_worker"):
        get_settings()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_workers", 0),
        ("n_workers", -1),
        ("threads_per_worker", 0),
        ("persist_fraction", 0.0),
        ("persist_fraction", -0.1),
        ("persist_fraction", 1.5),
        ("connect_timeout", 0),
        ("memory_limit", ""),
        ("memory_limit", "lots"),
        ("memory_limit", "-1GB"),
        ("memory_limit", "-0.5"),
        ("dashboard_address", ""),
        ("mode", "yarn"),
    ],
)
def test_out_of_bounds_value_is_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        ClusterSettings(**{field: value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KMFLOW_CLUSTER__N_WORKERS", "0"),
        ("KMFLOW_CLUSTER__N_WORKERS", "two"),
        ("KMFLOW_CLUSTER__PERSIST_FRACTION", "2"),
        ("KMFLOW_CLUSTER__PROCESSES", "maybe"),
        ("KMFLOW_CLUSTER__MEMORY_LIMIT", "4 potatoes"),
    ],
)
def test_out_of_bounds_environment_variable_is_rejected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        get_settings()


def test_memory_limit_error_shows_the_value() -> None:
    with pytest.raises(ValidationError, match="memory_limit='lots' is not 'auto'"):
        ClusterSettings(memory_limit="lots")


def test_address_mode_needs_an_address() -> None:
    with pytest.raises(ValidationError, match="mode='address' needs the scheduler address"):
        ClusterSettings(mode="address")


def test_address_without_address_mode_is_rejected() -> None:
    with pytest.raises(ValidationError, match="only used with mode='address'"):
        ClusterSettings(address="tcp://10.0.0.5:8786")


def test_settings_are_frozen() -> None:
    cluster = ClusterSettings()
    with pytest.raises(ValidationError, match="frozen"):
        cluster.n_workers = 3  # type: ignore[misc]


@pytest.mark.parametrize("model", [Settings, ClusterSettings, KubernetesSettings])
def test_every_field_is_described(
    model: type[Settings] | type[ClusterSettings] | type[KubernetesSettings],
) -> None:
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
