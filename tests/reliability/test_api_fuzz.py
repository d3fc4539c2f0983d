"""The HTTP API fuzzed from its own OpenAPI document (schemathesis) while the engine runs.

The engine runs the small park (simulated assets, 60x clock, control loop on) in a thread
and serves its API on a free loopback port. Every operation of /openapi.json is called with
requests schemathesis generates from the document, valid ones and deliberately invalid ones
(wrong types, missing fields, unknown parameters), as an operator, as an enterprise and
without a token. Every response must be documented: no 5xx, a status code the document
lists for the operation, JSON whenever the document says JSON, and a body matching the
documented schema. The number of examples is bounded so that the run takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from adapters.sim import SimAdapter
from tests.reliability.conftest import MARKETS, SMALL_PARK
from vpp.api import TokenStore
from vpp.clock import AcceleratedClock
from vpp.config import load_park
from vpp.engine import Engine, EngineOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPERATOR = "reliability-operator-token-0001"
ENTERPRISE = "reliability-enterprise-token-01"
CALLERS = {
    "operator": {"Authorization": f"Bearer {OPERATOR}"},
    "enterprise": {"Authorization": f"Bearer {ENTERPRISE}"},
    "anonymous": {},
}
POSITIVE_EXAMPLES = 12
NEGATIVE_EXAMPLES = 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class RunningApi:
    base_url: str
    engine: Engine


@pytest.fixture(scope="module")
def running_api() -> Iterator[RunningApi]:
    loaded = load_park(SMALL_PARK, MARKETS)
    clock = AcceleratedClock(datetime(2026, 7, 15, 2, 0, tzinfo=UTC), 60.0)
    tokens = TokenStore.parse(f"{OPERATOR}:operator {ENTERPRISE}:enterprise:ent-b")
    options = EngineOptions(serve_api=True, listen="127.0.0.1:0", tokens=tokens)
    adapters = [SimAdapter.from_park(loaded.park, clock, seed=2)]
    started = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            engine = Engine(loaded, clock, adapters, options=options)
            holder["engine"] = engine
            holder["loop"] = asyncio.get_running_loop()
            runner = asyncio.create_task(engine.run(), name="engine")
            while engine.address is None and not runner.done():  # noqa: ASYNC110  (no event to wait on)
                await asyncio.sleep(0.01)
            started.set()
            holder["summary"] = await runner

        try:
            asyncio.run(main())
        finally:
            started.set()

    thread = threading.Thread(target=serve, name="engine-under-fuzz", daemon=True)
    thread.start()
    assert started.wait(30)
    engine: Engine = holder["engine"]
    assert engine.address is not None
    host, port = engine.address
    try:
        yield RunningApi(f"http://{host}:{port}", engine)
    finally:
        holder["loop"].call_soon_threadsafe(engine.stop, "fuzzing done")
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert holder["summary"].reason == "fuzzing done"  # the engine survived the fuzzing


def _schema(base_url: str) -> Any:
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        document = json.loads(response.read())
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json"), document


def test_every_operation_answers_as_documented(running_api: RunningApi) -> None:
    schema, document = _schema(running_api.base_url)
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {
        f"{m.upper()} {path}" for path, methods in document["paths"].items() for m in methods
    }
    # (schemathesis leaves out the document's own route: it was fetched and parsed above)
    assert {operation.label for operation in operations} == documented - {"GET /openapi.json"}
    calls = 0
    statuses: dict[int, int] = {}
    without_invalid: list[str] = []

    for operation in operations:
        for mode, examples in (
            (GenerationMode.POSITIVE, POSITIVE_EXAMPLES),
            (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
        ):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy, caller=st.sampled_from(sorted(CALLERS)))
            def call(case: Any, caller: str) -> None:
                nonlocal calls
                response = case.call(
                    base_url=running_api.base_url, headers=CALLERS[caller], timeout=10
                )
                calls += 1
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.path, case.method, response.text)
                case.validate_response(response, checks=CHECKS)

            try:
                call()
            except Unsatisfiable:
                # nothing to get wrong (no parameters, no body): no invalid request exists
                assert mode is GenerationMode.NEGATIVE, operation.label
                without_invalid.append(operation.label)
    assert calls >= len(operations) * 2
    assert not any(code >= 500 for code in statuses)
    print(
        f"\nAPI fuzzing: {len(operations)} operations, {calls} requests, statuses "
        f"{dict(sorted(statuses.items()))}; no invalid request possible for {len(without_invalid)}"
    )
