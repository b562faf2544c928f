"""The negative cases through schemathesis: requests that break the API's own schema (wrong types, missing
fields, extra fields, bad query values), with a key and without one, and methods the schema does not list.

Each must be refused with a 4xx the operation documents (with the error body of the schema), never a 5xx,
never accepted. The examples per operation are bounded so that this stays cheap. schemathesis's pytest
loader does not run on this pytest, so the operations are driven with Hypothesis directly (as in
tests/tagging_platform/api/test_openapi.py, which sends the positive cases).
"""

from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

EXAMPLES_PER_OPERATION = 15
CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
]


def test_negative_cases_are_refused_as_documented(api, keys):
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    # 413 is a refusal of negative data too (too many images, a body over the limit).
    schema.config.checks.negative_data_rejection.expected_statuses = ["400", "401", "403", "404", "405", "413", "422"]
    raw = requests.get(f"{api.url}/openapi.json", timeout=30).json()["paths"]
    # An operation that takes no input (GET /healthz) has no negative case to generate.
    with_input = {
        f"{method.upper()} {path}"
        for path, ops in raw.items()
        for method, op in ops.items()
        if op.get("parameters") or op.get("requestBody")
    }
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [o for o in operations if o.label in with_input]
    assert len(operations) >= 4
    calls: list[tuple[str, int]] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def refused(case):
            with_key = case.call_and_validate(headers={"X-API-Key": keys["acme"]}, checks=CHECKS, timeout=60)
            # The same request without a key: refused at authentication, or at the body FastAPI parses before it (400, 422).
            without = case.call(headers={name: None for name in ("X-API-Key", "Authorization")}, timeout=60)
            calls.append((case.operation.label, with_key.status_code, without.status_code))

        refused()
    # Every operation that takes input got negative cases and refused them (negative_data_rejection judged
    # each answer: a case that is still valid, such as an unknown extra query parameter, may be answered 200).
    assert with_input == {label for label, _, _ in calls}
    for label in with_input:
        assert any(400 <= with_key < 500 for name, with_key, _ in calls if name == label), label
    odd = [call for call in calls if call[1] >= 500 or call[2] not in (400, 401, 422)]
    assert not odd, odd
    assert any(without == 401 for _, _, without in calls)
