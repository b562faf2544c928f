"""schemathesis against the API's own OpenAPI schema, over real HTTP: no input makes it answer with a 5xx
or with anything the schema does not document.

Each operation gets a bounded number of generated requests, sent with a valid key (requests without
one stop at authentication, which test_app.py covers). schemathesis's pytest loader does not run on
this pytest, so the operations are driven with Hypothesis directly.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 25
# No 5xx, and every answer is one the schema documents: its status, content type and body.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_input_makes_a_server_error(api, keys):
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    calls: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def no_server_error(case):
            case.call_and_validate(headers={"X-API-Key": keys["acme"]}, checks=CHECKS, timeout=60)
            calls.append(case.operation.label)

        no_server_error()
    # Every operation was exercised, most of them many times.
    assert {o.label for o in operations} == set(calls) and len(calls) > 3 * len(operations)


def test_docs_are_served(http):
    assert http("GET", "/docs", as_=None).status_code == 200
    paths = http("GET", "/openapi.json", as_=None).json()["paths"]
    assert {"/v1/batches", "/v1/batches/{batch_id}", "/v1/tag", "/v1/models", "/healthz"} <= set(paths)
