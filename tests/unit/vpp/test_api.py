"""HTTP API: every endpoint, the roles and tokens, and a JSON refusal for every bad request."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from dispatch.series import Horizon
from vpp import api
from vpp.api import (
    ENDPOINTS,
    Principal,
    Role,
    StateActions,
    TokenError,
    TokenStore,
    create_app,
    openapi_document,
    serve,
)
from vpp.carbon import GridEmissionFactor, MeteredPeriod, account, daily_trend, load_indicators
from vpp.clock import ManualClock
from vpp.config import load_park
from vpp.control import Controller
from vpp.domain import Award, BidCurve, BidStep, DrEvent, DrOffer, Interval, Measurement
from vpp.fleet import Fleet
from vpp.metrics import Metrics
from vpp.state import ControlCycleView, EngineState, SettlementLine
from vpp.targets import TargetBook

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "small_park.yaml"
MARKETS = ROOT / "config" / "markets"
SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = datetime(2026, 7, 15, tzinfo=SHANGHAI)  # a Wednesday
NOW = DAY + timedelta(hours=10)

OPERATOR = "op-token-0123456789"
VIEWER = "view-token-0123456789"
ENT_A = "ent-a-token-0123456789"
ENT_B = "ent-b-token-0123456789"
TOKENS = f"{OPERATOR}:operator, {VIEWER}:viewer\n{ENT_A}:enterprise:ent-a {ENT_B}:enterprise:ent-b"

POWER = {
    "bat-a": -200.0,
    "pv-a": -500.0,
    "load-a": 800.0,
    "shift-b": 200.0,
    "cold-b": 60.0,
    "ev-b": 120.0,
    "gen-b": 0.0,
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def populate(state: EngineState, now: datetime) -> None:
    """A day's worth of results for the small park, as the engine's loops would publish them."""
    quarter = timedelta(minutes=15)
    n = 96
    state.publish_schedule(
        computed_at=now,
        start=DAY,
        interval_min=15,
        status="optimal",
        asset_kw={a: [p] * n for a, p in POWER.items()},
        objective=12345.6,
        carbon_price_per_t=80.0,
    )
    total = sum(POWER.values())
    state.publish_envelope(
        computed_at=now,
        start=DAY,
        interval_min=15,
        expected_kw=[total] * n,
        min_kw=[total - 900] * n,
        max_kw=[total + 700] * n,
    )
    prices = [300.0 + 400.0 * (8 <= k // 4 < 20) for k in range(n)]
    state.publish_prices(
        start=DAY, interval_min=15, price_per_mwh=prices, kind="cleared", currency="CNY"
    )
    curves = [
        BidCurve(
            Interval(DAY + quarter * k, quarter),
            (BidStep(300, total + 500), BidStep(700, total), BidStep(1500, total - 800)),
        )
        for k in range(n)
    ]
    offers = [DrOffer(Interval(DAY + timedelta(hours=14), timedelta(hours=2)), 600.0, 1200.0)]
    state.publish_bids(now - timedelta(hours=20), curves, offers)
    state.publish_awards(
        Award(Interval(DAY + quarter * k, quarter), total + (200 if k % 2 else -100), p, "spot")
        for k, p in enumerate(prices)
    )
    state.publish_dr_event(
        DrEvent(
            "evt-1", "cn_peak_valley_dr", DAY + timedelta(hours=14), DAY + timedelta(hours=16),
            DAY + timedelta(hours=9), 600.0, 1200.0,
        )
    )  # fmt: skip
    state.publish_dr_event(
        DrEvent(
            "evt-0", "cn_peak_valley_dr", DAY + timedelta(hours=8), DAY + timedelta(hours=9),
            DAY - timedelta(hours=12), 400.0, 1100.0,
        )
    )  # fmt: skip
    start, end = DAY + timedelta(hours=8), DAY + timedelta(hours=9)
    state.publish_settlements(
        [
            SettlementLine("ent-a", "evt-0", start, end, 900, 500, 400, 300, 360.0, 0.0, "CNY"),
            SettlementLine("ent-b", "evt-0", start, end, 400, 350, 50, 100, 55.0, 9.5, "CNY"),
        ]
    )
    horizon = Horizon(DAY, quarter, 40)
    metered = MeteredPeriod(horizon, {a: np.full(40, p) for a, p in POWER.items()})
    indicators = load_indicators(ROOT / "config" / "indicators.yaml")
    result = account(state.park, metered, GridEmissionFactor(0.5306), indicators)
    state.publish_carbon(now, result, daily_trend(result.park, horizon, state.park.timezone))
    awarded = total - 100  # the award in force at 10:00, which the control loop follows
    for k in range(5):
        at = now - timedelta(seconds=2 * (4 - k))
        state.publish_control(ControlCycleView(at, awarded, awarded + k, 7, 1, 0.004))


@dataclass
class Api:
    client: TestClient[Any, Any]
    state: EngineState
    metrics: Metrics
    actions: StateActions
    clock: ManualClock

    async def get(
        self, path: str, token: str | None = OPERATOR, **kw: Any
    ) -> aiohttp.ClientResponse:
        headers = bearer(token) if token else {}
        return await self.client.get(path, headers=headers, **kw)

    async def post(
        self, path: str, token: str | None = OPERATOR, **kw: Any
    ) -> aiohttp.ClientResponse:
        headers = {**(bearer(token) if token else {}), **kw.pop("headers", {})}
        return await self.client.post(path, headers=headers, **kw)

    def rejected(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("vpp_api_rejected_total", {"reason": reason})
        return value or 0.0


@pytest.fixture
async def app_client() -> AsyncIterator[Api]:
    loaded = load_park(FIXTURE, MARKETS)
    clock = ManualClock(NOW)
    metrics = Metrics()
    fleet = Fleet(loaded.park, clock, metrics=metrics)
    fleet.accept(
        "sim",
        [
            Measurement(a, NOW, p, soc_fraction=0.5 if a == "bat-a" else None)
            for a, p in POWER.items()
        ],
    )
    state = EngineState(loaded.park, str(FIXTURE))
    populate(state, NOW)
    actions = StateActions(state, clock.now, FIXTURE, MARKETS)
    app = create_app(state, fleet, metrics, TokenStore.parse(TOKENS), actions)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, state, metrics, actions, clock)
    finally:
        await client.close()


GETS = [e for e in ENDPOINTS if e.method == "GET"]


def concrete(path: str) -> str:
    return path.replace("{enterprise_id}", "ent-a").replace("{asset_id}", "bat-a")


@pytest.mark.parametrize("endpoint", GETS, ids=[e.operation for e in GETS])
async def test_every_read_endpoint_answers_with_its_schema(app_client: Api, endpoint: Any) -> None:
    response = await app_client.get(concrete(endpoint.path))
    assert response.status == 200, await response.text()
    body = await response.json()
    model: type[BaseModel] = endpoint.response
    parsed = model.model_validate(body)
    # nothing read is empty: the fixture published every kind of result
    dumped = parsed.model_dump()
    for key in ("schedule", "envelope", "carbon", "latest", "prices", "computed_at"):
        assert dumped.get(key, "absent") is not None, key
    assert all(len(v) > 0 for v in dumped.values() if isinstance(v, list | dict))


async def test_read_contents_match_what_was_published(app_client: Api) -> None:
    park = await (await app_client.get("/api/v1/park")).json()
    assert park["id"] == "small"
    assert park["power_kw"] == pytest.approx(sum(POWER.values()))
    assert park["counts"]["available"] == 7
    # the target of the last control cycle: the award in force at 10:00 (interval 40, even)
    assert park["target_kw"] == pytest.approx(sum(POWER.values()) - 100)

    ent = await (await app_client.get("/api/v1/enterprises/ent-b")).json()
    assert ent["power_kw"] == pytest.approx(380.0)
    assert ent["by_kind_kw"]["ev_charging"] == 120.0

    assets = await (await app_client.get("/api/v1/assets?enterprise=ent-a&kind=battery")).json()
    assert [a["id"] for a in assets["assets"]] == ["bat-a"]
    assert assets["assets"][0]["soc_fraction"] == 0.5
    assert assets["assets"][0]["min_kw"] == -500.0

    schedule = (await (await app_client.get("/api/v1/schedule")).json())["schedule"]
    assert len(schedule["park_kw"]) == 96
    assert schedule["assets"]["pv-a"][0] == -500.0

    bids = await (await app_client.get("/api/v1/bids")).json()
    assert len(bids["curves"]) == 96
    assert bids["prices"]["price_per_mwh"][40] == 700.0
    assert bids["dr_offers"][0]["reduction_kw"] == 600.0

    events = (await (await app_client.get("/api/v1/dr-events")).json())["events"]
    assert [e["event_id"] for e in events] == ["evt-0", "evt-1"]

    settlements = await (await app_client.get("/api/v1/settlements")).json()
    assert settlements["by_enterprise"]["ent-b"]["penalty"] == 9.5
    assert settlements["lines"][0]["performance_ratio"] == pytest.approx(400 / 300)

    carbon = (await (await app_client.get("/api/v1/carbon")).json())["carbon"]
    # 10 h at 480 kW net import: 4800 kWh × 0.5306 kg/kWh
    assert carbon["park"]["emission_t"] == pytest.approx(4800 * 0.5306 / 1000)
    assert set(carbon["enterprises"]) == {"ent-a", "ent-b"}
    assert carbon["indicators"]["carbon_intensity_max_t_per_tce"] == 0.2

    control = await (await app_client.get("/api/v1/control?limit=3")).json()
    assert len(control["history"]) == 3
    assert control["latest"]["error_kw"] == pytest.approx(-4.0)


async def test_park_target_during_a_dr_event_is_the_one_the_control_loop_follows(
    app_client: Api,
) -> None:
    # The control loop's target book holds what the state holds: the awards and evt-1.
    state = app_client.state
    targets = TargetBook()
    for awarded in state.award_list():
        targets.add_award(awarded, NOW - timedelta(hours=20))
    for view in state.dr_event_list():
        targets.add_event(view.event)
    await app_client.clock.advance(4.5 * 3600)  # 14:30, evt-1 (600 kW) is active
    now = app_client.clock.now()
    fleet = Fleet(state.park, app_client.clock)
    controller = Controller(state.park, fleet, {}, app_client.clock, Metrics(), targets)
    report = controller.cycle()
    state.publish_control(  # as the engine copies every cycle into its read model
        ControlCycleView(report.at, report.target_kw, report.measured_kw, 0, 0, report.compute_s)
    )

    park = await (await app_client.get("/api/v1/park")).json()
    in_force = targets.target_at(now)
    award = targets.award_at(now)
    assert in_force is not None and award is not None
    assert in_force.power_kw == pytest.approx(award.power_kw - 600.0)
    assert park["target_kw"] == pytest.approx(in_force.power_kw)
    control = await (await app_client.get("/api/v1/control")).json()
    assert control["latest"]["target_kw"] == park["target_kw"]


async def test_openapi_document_covers_every_route(app_client: Api) -> None:
    response = await app_client.get("/openapi.json", token=None)
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"] == "3.1.0"
    for endpoint in ENDPOINTS:
        operation = doc["paths"][endpoint.path][endpoint.method.lower()]
        assert operation["operationId"] == endpoint.operation
        assert str(endpoint.status) in operation["responses"]
    assert {"/metrics", "/healthz", "/openapi.json"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    dangling = [r for r in refs(doc) if r.removeprefix("#/components/schemas/") not in schemas]
    assert dangling == []
    params = doc["paths"]["/api/v1/assets"]["get"]["parameters"]
    assert {p["name"] for p in params} == {"enterprise", "kind", "availability"}
    assert doc == openapi_document()


async def test_metrics_dashboard_and_health_are_public(app_client: Api) -> None:
    await app_client.get("/api/v1/park")
    metrics = await app_client.get("/metrics", token=None)
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = await metrics.text()
    assert 'vpp_api_requests_total{method="GET",route="/api/v1/park",status="200"} 1.0' in text
    page = await app_client.get("/", token=None)
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    for name in api.DASHBOARD_FILES:
        assert f"/static/{name}" in html
        asset = await app_client.get(f"/static/{name}", token=None)
        assert asset.status == 200
    health = await app_client.get("/healthz", token=None)
    assert (await health.json())["status"] == "ok"


# --- authentication and roles -----------------------------------------------------------------


async def test_missing_and_wrong_tokens_are_refused(app_client: Api) -> None:
    missing = await app_client.get("/api/v1/park", token=None)
    assert missing.status == 401
    assert (await missing.json()) == {"error": "missing bearer token"}
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await app_client.get("/api/v1/park", token="not-a-valid-token-at-all")
    assert wrong.status == 401
    assert "invalid bearer token" in (await wrong.json())["error"]
    basic = await app_client.client.get("/api/v1/park", headers={"Authorization": "Basic abc"})
    assert basic.status == 401
    assert app_client.rejected("unauthorized") == 3


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/enterprises/ent-b",
        "/api/v1/assets/gen-b",
        "/api/v1/assets?enterprise=ent-b",
        "/api/v1/schedule?enterprise=ent-b",
        "/api/v1/settlements?enterprise=ent-b",
        "/api/v1/carbon?enterprise=ent-b",
        "/api/v1/bids",
        "/api/v1/awards",
        "/api/v1/flexibility",
        "/api/v1/control",
    ],
)
async def test_enterprise_token_cannot_read_others_data(app_client: Api, path: str) -> None:
    response = await app_client.get(path, token=ENT_A)
    assert response.status == 403
    assert set(await response.json()) == {"error"}
    # the same read with a park-wide role goes through
    assert (await app_client.get(path, token=VIEWER)).status == 200


async def test_enterprise_token_sees_only_its_own(app_client: Api) -> None:
    enterprises = await (await app_client.get("/api/v1/enterprises", token=ENT_A)).json()
    assert [e["id"] for e in enterprises["enterprises"]] == ["ent-a"]
    assets = await (await app_client.get("/api/v1/assets", token=ENT_A)).json()
    assert {a["enterprise_id"] for a in assets["assets"]} == {"ent-a"}
    schedule = (await (await app_client.get("/api/v1/schedule", token=ENT_B)).json())["schedule"]
    assert set(schedule["assets"]) == {"shift-b", "cold-b", "ev-b", "gen-b"}
    assert schedule["park_kw"] is None
    settlements = await (await app_client.get("/api/v1/settlements", token=ENT_B)).json()
    assert {s["enterprise_id"] for s in settlements["lines"]} == {"ent-b"}
    carbon = (await (await app_client.get("/api/v1/carbon", token=ENT_B)).json())["carbon"]
    assert set(carbon["enterprises"]) == {"ent-b"}
    assert carbon["park"] is None
    own = await app_client.get("/api/v1/enterprises/ent-a", token=ENT_A)
    assert own.status == 200
    park = await (await app_client.get("/api/v1/park", token=ENT_A)).json()
    assert park["enterprises"] == ["ent-a"]


@pytest.mark.parametrize("token", [VIEWER, ENT_A])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/replan", {"reason": "test"}),
        ("/api/v1/dr-events/evt-1/acknowledge", {}),
        ("/api/v1/dr-events/evt-1/opt-out", {"reason": "maintenance"}),
        ("/api/v1/enrollment/reload", None),
        ("/api/v1/enrollment/validate", None),
    ],
)
async def test_only_the_operator_may_write(
    app_client: Api, token: str, path: str, body: dict[str, str] | None
) -> None:
    response = await app_client.post(path, token=token, json=body)
    assert response.status == 403
    assert "may not call" in (await response.json())["error"]
    assert app_client.state.dr_events["evt-1"].status.value == "notified"


# --- bad requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/v1/nowhere", 404, "no route /api/v1/nowhere"),
        ("/api/v1/enterprises/ent-z", 404, "no enterprise 'ent-z'"),
        ("/api/v1/assets/nope", 404, "no asset 'nope'"),
        ("/api/v1/settlements?enterprise=ent-z", 404, "no enterprise 'ent-z'"),
        ("/api/v1/assets?colour=red", 400, "query colour: unknown query parameter"),
        ("/api/v1/assets?kind=reactor", 400, "query kind: Input should be"),
        ("/api/v1/control?limit=0", 400, "query limit: Input should be greater than or equal to 1"),
        ("/api/v1/park?verbose=1", 400, "query verbose: unknown query parameter"),
        ("/api/v1/assets?enterprise=bad%20id", 400, "query enterprise: String should match"),
    ],
)
async def test_bad_reads_get_json_errors(
    app_client: Api, path: str, status: int, message: str
) -> None:
    response = await app_client.get(path)
    assert response.status == status
    body = await response.json()
    assert body["error"].startswith(message)
    assert "\n" not in body["error"]


async def test_wrong_method_is_405_with_allow(app_client: Api) -> None:
    response = await app_client.client.delete("/api/v1/park", headers=bearer(OPERATOR))
    assert response.status == 405
    assert "method DELETE not allowed" in (await response.json())["error"]
    assert response.headers["Allow"] == "GET"
    get_on_post = await app_client.get("/api/v1/replan")
    assert get_on_post.status == 405
    assert app_client.rejected("method_not_allowed") == 2


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "request body is not valid JSON"),
        ({"data": b"reason=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "expected application/json"),
        ({"json": {"reason": ""}}, 422, "body reason: String should have at least 1 character"),
        ({"json": {}}, 422, "body reason: Field required"),
        ({"json": {"reason": "x", "urgent": True}}, 422, "body urgent: unknown field"),
        ({"json": {"reason": "x", "carbon_price_per_t": -5}}, 422, "body carbon_price_per_t: Input should be greater"),
        ({"json": ["reason"]}, 422, "request body must be a JSON object"),
        ({"data": io.BytesIO(b"x" * (1024 * 1024 + 10)), "headers": {"Content-Type": "application/json"}}, 413, "request body over"),
    ],
)  # fmt: skip
async def test_bad_writes_get_json_errors(
    app_client: Api, kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = await app_client.post("/api/v1/replan", **kwargs)
    assert response.status == status
    assert (await response.json())["error"].startswith(message)
    assert app_client.state.replans == 0


async def test_body_on_a_bodiless_write_is_refused(app_client: Api) -> None:
    response = await app_client.post("/api/v1/enrollment/reload", json={"force": True})
    assert response.status == 400
    assert "takes no request body" in (await response.json())["error"]


# --- writes -----------------------------------------------------------------------------------


async def test_acknowledge_then_opt_out_then_conflicts(app_client: Api) -> None:
    ack = await app_client.post("/api/v1/dr-events/evt-1/acknowledge", json={"note": "ready"})
    assert ack.status == 200
    body = await ack.json()
    assert body["status"] == "acknowledged"
    assert body["changed_by"] == "operator#1"
    assert body["note"] == "ready"
    out = await app_client.post("/api/v1/dr-events/evt-1/opt-out", json={"reason": "line down"})
    assert out.status == 200
    assert (await out.json())["opted_in"] is False
    assert app_client.state.dr_events["evt-1"].event.opted_in is False
    again = await app_client.post("/api/v1/dr-events/evt-1/acknowledge", json={})
    assert again.status == 409
    assert "opted out" in (await again.json())["error"]
    twice = await app_client.post("/api/v1/dr-events/evt-1/opt-out", json={"reason": "still"})
    assert twice.status == 409


async def test_dr_event_rules(app_client: Api) -> None:
    started = await app_client.post("/api/v1/dr-events/evt-0/opt-out", json={"reason": "late"})
    assert started.status == 409  # evt-0 ran 08:00-09:00; it is 10:00
    over = await app_client.post("/api/v1/dr-events/evt-0/acknowledge", json={})
    assert over.status == 409
    unknown = await app_client.post("/api/v1/dr-events/evt-9/acknowledge", json={})
    assert unknown.status == 404
    assert (await unknown.json())["error"] == "no DR event 'evt-9'"


async def test_replan_is_queued_once(app_client: Api) -> None:
    first = await app_client.post(
        "/api/v1/replan", json={"reason": "PV forecast changed", "carbon_price_per_t": 100}
    )
    assert first.status == 202
    assert (await first.json()) == {"accepted": True, "ticket": "replan-1"}
    second = await app_client.post("/api/v1/replan", json={"reason": "again"})
    assert second.status == 409
    assert await app_client.actions.next_replan() == ("replan-1", "PV forecast changed", 100.0)
    third = await app_client.post("/api/v1/replan", json={"reason": "again"})
    assert third.status == 202
    control = await (await app_client.get("/api/v1/control")).json()
    assert control["replans"] == 1


async def test_validate_the_config_file_or_an_uploaded_enrollment(app_client: Api) -> None:
    own = await app_client.post("/api/v1/enrollment/validate")
    assert own.status == 200
    assert (await own.json())["park_id"] == "small"
    text = FIXTURE.read_text()
    uploaded = await app_client.post(
        "/api/v1/enrollment/validate", data=text, headers={"Content-Type": "application/yaml"}
    )
    assert uploaded.status == 200
    result = await uploaded.json()
    assert result == {
        "valid": True,
        "park_id": "small",
        "enterprises": 2,
        "assets": 7,
        "source": "(uploaded)",
        "applied": False,
    }
    broken = text.replace("power_kw: 500, capacity_kwh: 1000", "power_kw: -5, capacity_kwh: 1000")
    bad = await app_client.post(
        "/api/v1/enrollment/validate", data=broken, headers={"Content-Type": "application/yaml"}
    )
    assert bad.status == 422
    body = await bad.json()
    assert body["error"].startswith("invalid enrollment: enrollment.yaml:12: ")
    assert any("power_kw" in p for p in body["problems"])
    include = await app_client.post(
        "/api/v1/enrollment/validate",
        data="id: x\nenterprises:\n  - include: /etc/passwd\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert include.status == 422
    assert "include" in (await include.json())["error"]
    json_body = await app_client.post("/api/v1/enrollment/validate", json={"id": "x"})
    assert json_body.status == 415


async def test_reload_applies_the_config_file(app_client: Api) -> None:
    app_client.state.publish_schedule(
        computed_at=NOW, start=DAY, interval_min=15, status="optimal",
        asset_kw={"bat-a": [1.0], "retired": [2.0]},
    )  # fmt: skip
    response = await app_client.post("/api/v1/enrollment/reload")
    assert response.status == 200
    assert (await response.json())["applied"] is True
    assert app_client.state.schedule is not None
    assert set(app_client.state.schedule.asset_kw) == {"bat-a"}


# --- tokens and serving -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("short:operator", "at least 16"),
        ("0123456789abcdef:admin", "unknown role"),
        ("0123456789abcdef:enterprise", "enterprise id goes with role 'enterprise'"),
        ("0123456789abcdef:viewer:ent-a", "enterprise id goes with role 'enterprise'"),
        ("0123456789abcdef", "expected token:role"),
        ("0123456789abcdef:viewer 0123456789abcdef:operator", "listed twice"),
    ],
)
def test_bad_token_entries_never_echo_the_token(text: str, message: str) -> None:
    with pytest.raises(TokenError, match=message) as caught:
        TokenStore.parse(text)
    assert "0123456789abcdef" not in str(caught.value)


def test_tokens_from_environment_and_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# operators\n0123456789abcdef-op:operator\n")
    store = TokenStore.from_env(
        {"VPP_API_TOKENS": f"{ENT_A}:enterprise:ent-a", "VPP_API_TOKENS_FILE": str(file)}
    )
    assert store.authenticate("Bearer 0123456789abcdef-op").role is Role.OPERATOR
    assert store.authenticate(f"Bearer {ENT_A}") == Principal(
        "enterprise#1", Role.ENTERPRISE, "ent-a"
    )
    assert store.anonymous is None
    assert all("0123456789abcdef" not in key for key in store.principals)
    open_store = TokenStore.from_env({})
    assert open_store.authenticate(None).role is Role.VIEWER
    closed = TokenStore.from_env({"VPP_API_ANONYMOUS": "none"})
    with pytest.raises(api.ApiError):
        closed.authenticate(None)
    with pytest.raises(TokenError, match="cannot read"):
        TokenStore.from_env({"VPP_API_TOKENS_FILE": str(tmp_path / "missing")})


async def test_anonymous_viewer_reads_but_cannot_write(app_client: Api) -> None:
    store = TokenStore.from_env({})
    loaded = load_park(FIXTURE, MARKETS)
    state = EngineState(loaded.park)
    fleet = Fleet(loaded.park, app_client.clock)
    app = create_app(
        state, fleet, Metrics(), store, StateActions(state, app_client.clock.now, FIXTURE, MARKETS)
    )
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/api/v1/park")).status == 200
        assert (await client.get("/api/v1/schedule")).status == 200
        assert (await (await client.get("/api/v1/schedule")).json()) == {"schedule": None}
        assert (await client.post("/api/v1/replan", json={"reason": "x"})).status == 403


async def test_serve_binds_the_listen_address() -> None:
    loaded = load_park(FIXTURE, MARKETS)
    clock = ManualClock(NOW)
    state = EngineState(loaded.park)
    app = create_app(
        state,
        Fleet(loaded.park, clock),
        Metrics(),
        TokenStore.parse(TOKENS),
        StateActions(state, clock.now, FIXTURE, MARKETS),
    )
    async with serve(app, "127.0.0.1:0") as (host, port), aiohttp.ClientSession() as session:
        assert host == "127.0.0.1"
        assert port > 0
        async with session.get(f"http://{host}:{port}/api/v1/park", headers=bearer(VIEWER)) as r:
            assert r.status == 200
    with pytest.raises(ValueError, match="HOST:PORT"):
        api.parse_listen("localhost")
    assert api.parse_listen("[::1]:8080") == ("::1", 8080)
