"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document: no 5xx, no schema violation.

Drives schemathesis' hypothesis strategies directly (its pytest plugin does not run under pytest 9).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from prewarm.client import PrewarmClient


def test_no_server_error_and_no_schema_violation(service: PrewarmClient) -> None:
    schema = schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/prewarm", "/summary", "/instances", "/healthz", "/reports/{name}"}
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=30)

        check()
    assert calls >= len(operations) * 5
