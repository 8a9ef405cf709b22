"""Generated requests against the documented API: no request makes the server fail.

A real ``meterlog serve`` (SQLite, with an edge key registered and a few receipts logged, so
proofs, tiles, entries and finders have something to serve) gets requests that schemathesis
generates from the OpenAPI document -- ``log_server.openapi.OPENAPI``, which a test here
checks is exactly what the server serves at ``/openapi.json`` -- valid and invalid ones, for
every operation, the admin route included (with the operator's bearer token). The one check
is ``not_a_server_error``: whatever the request, the answer is never a 5xx. Bounded by
``max_examples`` per operation (schemathesis's coverage phase adds a bounded set of
boundary cases) and a per-request timeout.

schemathesis never sends an integer at its maximum *alone* (its coverage cases set the other
optional parameters too), which is how ``GET /v1/entries?start=2**63-2`` (default end past
the 64-bit range) slipped through it; a deterministic sweep of every documented integer query
parameter at its edges, one at a time, covers that.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from log_server.openapi import OPENAPI
from tests.log_server.conftest import EDGE_KEY
from tests.log_server.server_process import (
    ServerProcess,
    receipt,
    register_edge,
    running_server,
    submit,
)

MAX_EXAMPLES = 20
REQUEST_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def live_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("schemathesis") / "data") as server:
        register_edge(server, EDGE_KEY)
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            response = submit(client, server.url, [receipt(f"st-{i}", EDGE_KEY) for i in range(9)])
        assert response.status_code == 200, response.text
        yield server


# JSON Lines bodies are generated as strings (the schema says so) and sent as their UTF-8
# bytes; without a serializer schemathesis would skip them (and warn).
schemathesis.serializer.alias("application/jsonl", "text/plain")
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_the_server_serves_the_schema_under_test(live_log: ServerProcess) -> None:
    served = httpx.get(f"{live_log.url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(OPENAPI))


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_request_gets_a_server_error(
    case: schemathesis.Case[Any], live_log: ServerProcess
) -> None:
    case.call_and_validate(
        base_url=live_log.url,
        headers={"Authorization": f"Bearer {live_log.token}"},
        checks=[not_a_server_error],
        timeout=REQUEST_TIMEOUT_S,
    )


def _integer_query_parameters() -> list[tuple[str, str, int]]:
    """(path, name, maximum) of every integer query parameter of a GET operation."""
    found: list[tuple[str, str, int]] = []
    for path, item in OPENAPI["paths"].items():
        for parameter in item.get("get", {}).get("parameters", []):
            if parameter["in"] == "query" and parameter["schema"]["type"] == "integer":
                found.append((path, parameter["name"], parameter["schema"]["maximum"]))
    return found


INTEGER_PARAMETERS = _integer_query_parameters()


def _required(path: str) -> dict[str, str]:
    parameters = OPENAPI["paths"][path]["get"]["parameters"]
    return {p["name"]: "0" for p in parameters if p["in"] == "query" and p["required"]}


@pytest.mark.parametrize(
    ("path", "name", "maximum"),
    INTEGER_PARAMETERS,
    ids=[f"{p}?{n}" for p, n, _ in INTEGER_PARAMETERS],
)
def test_integer_parameters_at_their_bounds_alone(
    live_log: ServerProcess, path: str, name: str, maximum: int
) -> None:
    """Each documented integer at its edges, with every other optional parameter left out
    (the combination schemathesis's coverage phase does not send): still never a 5xx."""
    assert len(INTEGER_PARAMETERS) >= 10  # the sweep covers the API, not nothing
    finder = {"consumer": "consumer-0"} if path == "/v1/receipts" else {}
    with httpx.Client(base_url=live_log.url, timeout=REQUEST_TIMEOUT_S) as client:
        for value in (0, 1, maximum - 1000, maximum - 1, maximum):
            params = {**_required(path), **finder, name: str(value)}
            response = client.get(path, params=params)
            assert response.status_code < 500, (path, params, response.text)
