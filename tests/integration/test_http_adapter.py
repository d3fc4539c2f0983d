"""The HTTP adapter against an energy-management system emulator served by aiohttp."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters import payloads
from adapters._retry import Backoff
from adapters.http import HttpAdapter, HttpEndpoint, http_adapters
from adapters.mqtt_device import DeviceModel, sim_models
from tests.brokers import free_port
from vpp.clock import SystemClock
from vpp.config.schema import Park
from vpp.domain import Availability, Setpoint, SetpointAck
from vpp.fleet import Fleet
from vpp.metrics import Metrics

pytestmark = pytest.mark.integration


def make_park(base_url: str, **http: Any) -> Park:
    connection = {"adapter": "http", "base_url": base_url, "poll_interval_s": 0.05, **http}
    return Park.model_validate(
        {
            "id": "p",
            "name": "HTTP test park",
            "location": {"latitude_deg": 31.2, "longitude_deg": 121.5},
            "grid_import_limit_kw": 5000,
            "market": {"rule_set": "cn_provincial_spot"},
            "enterprises": [
                {
                    "id": "ent-a",
                    "name": "A",
                    "connection_limit_kw": 3000,
                    "gateways": [{"id": "ems", "connection": connection}],
                    "assets": [
                        {
                            "id": "bat-a",
                            "kind": "battery",
                            "power_kw": 500,
                            "capacity_kwh": 1000,
                            "connection": {"gateway": "ems", "device_id": "BESS-1"},
                        },
                        {
                            "id": "gen-a",
                            "kind": "generator",
                            "min_kw": 100,
                            "max_kw": 500,
                            "fuel_cost_per_mwh": 900,
                            "emission_kg_per_kwh": 0.55,
                            "connection": {"gateway": "ems"},
                        },
                    ],
                }
            ],
        }
    )


class Ems:
    """An EMS on loopback: GET /telemetry, POST /setpoints, GET /setpoints/<id> (read-back)."""

    def __init__(self, devices: dict[str, DeviceModel]) -> None:
        self.devices = devices
        self.fail_polls = 0  # answer this many polls with HTTP 500
        self.defer_acks = False  # answer 202 and let the ack be read back
        self.refuse_with: str | None = None
        self.delay_s = 0.0
        self.deferred: dict[str, bytes] = {}
        self.polls = 0
        self.last_step: datetime | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/telemetry", self.telemetry)
        app.router.add_post("/setpoints", self.setpoint)
        app.router.add_get("/setpoints/{id}", self.read_back)
        return app

    async def telemetry(self, request: web.Request) -> web.Response:
        self.polls += 1
        if self.fail_polls > 0:
            self.fail_polls -= 1
            return web.Response(status=500, text="maintenance")
        now = datetime.now(UTC)
        dt_s = 0.0 if self.last_step is None else (now - self.last_step).total_seconds()
        self.last_step = now
        readings = []
        for device_id, model in self.devices.items():
            model.step(now, dt_s)
            readings.append((device_id, model.measure(now)))
        return web.Response(body=payloads.encode_batch(readings, at=now))

    async def setpoint(self, request: web.Request) -> web.Response:
        command = payloads.decode_setpoint(await request.read())
        await asyncio.sleep(self.delay_s)
        if self.refuse_with is not None:
            return web.json_response({"reason": self.refuse_with}, status=409)
        model = self.devices[command.device_id]
        applied = model.apply(
            Setpoint(
                model.asset_id,
                command.power_kw,
                command.issued_at,
                command.valid_until,
                command.correlation_id,
            )
        )
        ack = SetpointAck(command.correlation_id, model.asset_id, True, datetime.now(UTC), applied)
        body = payloads.encode_ack(ack, command.device_id)
        if self.defer_acks:
            self.deferred[command.correlation_id] = body
            return web.Response(status=202)
        return web.Response(body=body, content_type="application/json")

    async def read_back(self, request: web.Request) -> web.Response:
        body = self.deferred.get(request.match_info["id"])
        return web.Response(status=202) if body is None else web.Response(body=body)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running(*coroutines: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(c) for c in coroutines]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110  (polls state other tasks own)
            await asyncio.sleep(0.02)


def setpoint(asset_id: str, power_kw: float) -> Setpoint:
    now = datetime.now(UTC)
    return Setpoint(asset_id, power_kw, now, now + timedelta(seconds=30), uuid.uuid4().hex)


def ems_for(park: Park) -> Ems:
    return Ems(sim_models(park, {"bat-a": "BESS-1", "gen-a": "gen-a"}))


def test_endpoints_map_device_ids() -> None:
    (adapter,) = http_adapters(make_park("http://127.0.0.1:1"), SystemClock())
    assert adapter.asset_ids == {"bat-a", "gen-a"}
    assert adapter._devices == {"BESS-1": "bat-a", "gen-a": "gen-a"}


async def test_polled_telemetry_reaches_the_fleet_and_setpoints_are_acked() -> None:
    park = make_park("http://placeholder")
    ems = ems_for(park)
    metrics = Metrics()
    async with serving(ems.app()) as url:
        park = make_park(url)
        (adapter,) = http_adapters(park, SystemClock(), metrics)
        fleet = Fleet(park, SystemClock())
        async with running(adapter.run(fleet)):
            await eventually(lambda: all(fleet.latest(a) is not None for a in fleet.asset_ids))
            assert fleet.availability("bat-a") is Availability.AVAILABLE
            assert adapter.health().state.value == "connected"
            ack = await adapter.send(setpoint("bat-a", -250.0))
            ems.defer_acks = True
            deferred = await adapter.send(setpoint("gen-a", -300.0))
    assert ack.accepted and ack.asset_id == "bat-a"
    assert ack.applied_power_kw == pytest.approx(-250.0)
    assert deferred.accepted and deferred.applied_power_kw == pytest.approx(-300.0)
    assert not adapter.rejections
    # sends are counted by the control loop, not twice by the adapter
    assert (
        metrics.registry.get_sample_value("vpp_setpoints_acked_total", {"adapter": "http"}) is None
    )


async def test_refusals_timeouts_and_an_unreachable_ems_are_refused_acks() -> None:
    park = make_park("http://placeholder")
    ems = ems_for(park)
    async with serving(ems.app()) as url:
        park = make_park(url, timeout_s=0.3)
        (adapter,) = http_adapters(park, SystemClock())
        fleet = Fleet(park, SystemClock())
        async with running(adapter.run(fleet)):
            await eventually(lambda: adapter.health().state.value == "connected")
            ems.refuse_with = "local_override"
            refused = await adapter.send(setpoint("bat-a", 100.0))
            ems.refuse_with = None
            ems.delay_s = 1.0
            late = await adapter.send(setpoint("bat-a", 100.0))
            unknown = await adapter.send(setpoint("nobody", 1.0))
    gone = await adapter.send(setpoint("bat-a", 100.0))
    assert (refused.accepted, refused.reason) == (False, "local_override")
    assert (late.accepted, late.reason) == (False, "timeout")
    assert (unknown.accepted, unknown.reason) == (False, "unknown_asset")
    assert (gone.accepted, gone.reason) == (False, "disconnected")


async def test_ems_outage_is_reported_then_recovered() -> None:
    park = make_park("http://placeholder")
    ems = ems_for(park)
    ems.fail_polls = 3
    async with serving(ems.app()) as url:
        park = make_park(url)
        (adapter,) = http_adapters(park, SystemClock())
        adapter.backoff = Backoff(base_s=0.05, cap_s=0.1)
        fleet = Fleet(park, SystemClock())
        async with running(adapter.run(fleet)):
            await eventually(lambda: "HTTP 500" in adapter.health().last_error)
            assert adapter.health().state.value == "disconnected"
            await eventually(lambda: fleet.latest("gen-a") is not None)
            health = adapter.health()
    assert health.state.value == "connected"
    assert health.reconnects == 1
    assert ems.polls >= 4


async def test_pushed_batches_need_the_token_and_bad_ones_are_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VPP_TEST_EMS_TOKEN", "t0ken")
    port = free_port()
    park = make_park(
        "http://127.0.0.1:1",
        push=True,
        poll=False,
        push_listen=f"127.0.0.1:{port}",
        token_env="VPP_TEST_EMS_TOKEN",
    )
    metrics = Metrics()
    fleet = Fleet(park, SystemClock(), metrics=metrics)
    (adapter,) = http_adapters(park, SystemClock())
    now = datetime.now(UTC).timestamp()
    good = b'{"ts": %f, "readings": [{"id": "BESS-1", "power_kw": -40, "soc": 0.7}]}' % now
    url = f"http://127.0.0.1:{port}/telemetry"
    auth = {"Authorization": "Bearer t0ken"}
    async with running(adapter.run(fleet)):
        await eventually(lambda: adapter.push_port is not None)
        async with aiohttp.ClientSession() as client:
            async with client.post(url, data=good) as response:
                assert response.status == 401
            async with client.post(url, data=b"[{", headers=auth) as response:
                assert response.status == 400
            async with client.post(url, data=b'[{"id": "gen-a"}]', headers=auth) as response:
                assert response.status == 400
            async with client.post(url, data=good, headers=auth) as response:
                assert response.status == 202
                assert await response.json() == {"accepted": 1, "rejected": 0}
    latest = fleet.latest("bat-a")
    assert latest is not None and (latest.power_kw, latest.soc_fraction) == (-40.0, 0.7)
    assert adapter.rejections == {"malformed_json": 1, "missing_field": 1}
    assert adapter.pushes == 3


def test_direct_endpoint_construction() -> None:
    park = make_park("http://127.0.0.1:1")
    adapter = HttpAdapter(
        "ems",
        park.enterprises[0].gateways[0].connection,  # type: ignore[arg-type]
        [HttpEndpoint("bat-a", "B1")],
    )
    assert adapter.asset_ids == {"bat-a"}
