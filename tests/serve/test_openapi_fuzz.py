"""The service's OpenAPI schema, fuzzed with schemathesis against the real uvicorn process:
whatever a client sends that the schema allows (and much it does not), no answer is a 5xx and
every answer matches the schema (status codes, content types, bodies)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.serve.conftest import API_KEY, Service

NAMES = ("blobs", "customers", "palette")


def _fuzz(operation, checks) -> set[int]:  # type: ignore[no-untyped-def]
    """Up to 60 generated requests to one operation; the status codes answered."""
    statuses: set[int] = set()

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), name=st.sampled_from((*NAMES, None)))
    def fuzz(case, name):  # type: ignore[no-untyped-def]
        if name is not None and "name" in (case.path_parameters or {}):
            case.path_parameters["name"] = name  # reach real models, not only 404s
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {API_KEY}"}, checks=checks, timeout=60
        )
        statuses.add(response.status_code)

    fuzz()
    return statuses


# Hypothesis warns when the global `random` state moves while it draws; in a long run other
# tests' leftover threads (Dask, Prefect) draw from it meanwhile, not these strategies.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_no_input_the_schema_allows_makes_a_server_error(service: Service) -> None:
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = sorted(op.label for op in operations)
    assert "POST /v1/models/{name}/predict" in labels
    assert "POST /v1/models/{name}/quantize" in labels
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    answered: dict[str, set[int]] = {}
    for operation in operations:
        answered[operation.label] = _fuzz(operation, checks)
    # the fuzzing reached the models, not only the 404 of unknown names
    assert 200 in answered["GET /v1/models/{name}"]
    assert 422 in answered["POST /v1/models/{name}/predict"]
    assert 422 in answered["POST /v1/models/{name}/quantize"]
    # and successful answers match the schema too (random rows rarely have a model's width)
    by_label = {op.label: op for op in operations}
    predict = by_label["POST /v1/models/{name}/predict"]
    for name, body in (
        ("blobs", {"rows": [[0, 0, 0, 0], [9, 1, 0, 0]], "distances": True}),
        ("customers", {"records": [{"spend": 80.0, "visits": 9, "roaming": "no", "plan": "plus"}]}),
    ):
        case = predict.Case(
            path_parameters={"name": name}, body=body, media_type="application/json"
        )
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {API_KEY}"}, checks=checks
        )
        assert response.status_code == 200, response.text
