"""OCPP central system against real `ocpp` charge-point clients (1.6 and 2.0.1) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from adapters.base import ConnectionState
from adapters.ocpp import (
    MeterReading,
    OcppCentralSystem,
    OcppStation,
    _StationTotals,
    decode_meter_value,
    profile_limit,
)
from tests.emulators.ocpp_station import StationBehaviour, StationEmulator
from tests.observe import rejected, wait_until
from vpp.clock import SystemClock
from vpp.config.schema import OcppConnection
from vpp.domain import Availability, Setpoint
from vpp.errors import PayloadError
from vpp.fleet import Fleet
from vpp.metrics import Metrics

pytestmark = pytest.mark.integration

ASSET = "ev-b"  # 10 chargers × 60 kW in the small test park
CP_ID = "CP-B1"


def setpoint(power_kw: float, valid_s: float = 30.0, tag: str = "c1") -> Setpoint:
    now = datetime.now(UTC)
    return Setpoint(ASSET, power_kw, now, now + timedelta(seconds=valid_s), tag)


@contextlib.asynccontextmanager
async def central(
    fleet: Fleet, version: str, **connection: object
) -> AsyncIterator[tuple[OcppCentralSystem, str]]:
    settings: dict[str, object] = {
        "adapter": "ocpp",
        "charge_point_id": CP_ID,
        "version": version,
        "timeout_s": 2.0,
    }
    settings.update(connection)
    conn = OcppConnection.model_validate(settings)
    csms = OcppCentralSystem("ocpp", [OcppStation(ASSET, conn)], SystemClock(), port=0)
    task = asyncio.create_task(csms.run(fleet), name="csms-under-test")
    try:
        async with asyncio.timeout(5):
            port = await csms.wait_listening()
        yield csms, f"ws://127.0.0.1:{port}"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture(params=["1.6", "2.0.1"])
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def csms(fleet: Fleet, version: str) -> AsyncIterator[tuple[OcppCentralSystem, str]]:
    async with central(fleet, version) as pair:
        yield pair


async def test_meter_values_reach_the_fleet(
    csms: tuple[OcppCentralSystem, str], version: str, fleet: Fleet
) -> None:
    adapter, url = csms
    behaviour = StationBehaviour(demand_w=7400.0, soc_percent=55.0, energy_wh=12345.0)
    async with StationEmulator(url, CP_ID, version, behaviour).running() as station:
        await wait_until(lambda: adapter.connected(ASSET))
        assert adapter.health().state == ConnectionState.CONNECTED
        await station.meter_values()
        await wait_until(lambda: fleet.latest(ASSET) is not None)
        last = fleet.latest(ASSET)
        assert last is not None
        assert last.power_kw == pytest.approx(7.4)
        assert last.soc_fraction == pytest.approx(0.55)
        assert last.energy_kwh == pytest.approx(12.345)
        assert fleet.availability(ASSET) == Availability.AVAILABLE
    await wait_until(lambda: fleet.availability(ASSET) == Availability.OFFLINE)
    assert adapter.health().state == ConnectionState.CONNECTING


async def test_setpoint_becomes_station_max_profile_and_is_accepted(
    csms: tuple[OcppCentralSystem, str], version: str, fleet: Fleet
) -> None:
    adapter, url = csms
    async with StationEmulator(url, CP_ID, version).running() as station:
        await wait_until(lambda: adapter.connected(ASSET))
        ack = await adapter.send(setpoint(3.5))
        assert ack.accepted, ack.reason
        assert ack.applied_power_kw == pytest.approx(3.5)
        assert len(station.behaviour.profiles) == 1
        profile = station.behaviour.profiles[0]
        if version == "1.6":
            assert profile["connector_id"] == 0
            assert profile["charging_profile_purpose"] == "ChargePointMaxProfile"
            schedule = profile["charging_schedule"]
        else:
            assert profile["evse_id"] == 0
            assert profile["charging_profile_purpose"] == "ChargingStationMaxProfile"
            schedule = profile["charging_schedule"][0]
        assert schedule["charging_rate_unit"] == "W"
        assert schedule["charging_schedule_period"][0]["limit"] == 3500.0
        # the station now draws at most the limit, and its telemetry says so
        await station.meter_values()
        await wait_until(
            lambda: (m := fleet.latest(ASSET)) is not None and m.power_kw == pytest.approx(3.5)
        )


async def test_limit_in_amperes(fleet: Fleet) -> None:
    async with (
        central(fleet, "2.0.1", charging_rate_unit="A", voltage_v=230.0, phases=3) as (
            adapter,
            url,
        ),
        StationEmulator(url, CP_ID, "2.0.1").running() as station,
    ):
        await wait_until(lambda: adapter.connected(ASSET))
        ack = await adapter.send(setpoint(3.5))
        assert ack.accepted, ack.reason
        schedule = station.behaviour.profiles[0]["charging_schedule"][0]
        assert schedule["charging_rate_unit"] == "A"
        assert schedule["charging_schedule_period"][0]["limit"] == 5.0  # 3500 W / 690 V, down
        assert ack.applied_power_kw == pytest.approx(5.0 * 690 / 1000)


async def test_rejecting_station_gives_refused_ack(
    csms: tuple[OcppCentralSystem, str], version: str
) -> None:
    adapter, url = csms
    behaviour = StationBehaviour(accept_profiles=False)
    async with StationEmulator(url, CP_ID, version, behaviour).running():
        await wait_until(lambda: adapter.connected(ASSET))
        ack = await adapter.send(setpoint(3.5))
        assert (ack.accepted, ack.reason) == (False, "rejected")
        assert behaviour.limit_w is None


async def test_silent_station_times_out(fleet: Fleet) -> None:
    async with central(fleet, "1.6", timeout_s=0.3) as (adapter, url):
        behaviour = StationBehaviour(answer_profiles=False)
        async with StationEmulator(url, CP_ID, "1.6", behaviour).running():
            await wait_until(lambda: adapter.connected(ASSET))
            started = asyncio.get_running_loop().time()
            ack = await adapter.send(setpoint(3.5))
            assert (ack.accepted, ack.reason) == (False, "timeout")
            assert asyncio.get_running_loop().time() - started < 1.5


async def test_send_without_connection_and_expired(fleet: Fleet) -> None:
    async with central(fleet, "1.6") as (adapter, _url):
        ack = await adapter.send(setpoint(3.5))
        assert (ack.accepted, ack.reason) == (False, "disconnected")
        ack = await adapter.send(setpoint(3.5, valid_s=-1.0))
        assert (ack.accepted, ack.reason) == (False, "expired")


async def test_garbage_and_bad_payloads_are_counted_and_survived(
    csms: tuple[OcppCentralSystem, str], version: str, fleet: Fleet, metrics: Metrics
) -> None:
    adapter, url = csms
    async with StationEmulator(url, CP_ID, version).running() as station:
        await wait_until(lambda: adapter.connected(ASSET))
        await station.send_raw("this is not OCPP")
        await station.send_raw(json.dumps([2, "x1"]))
        await wait_until(lambda: rejected(metrics, "ocpp", "malformed") == 2)

        # schema violation: the CSMS answers with a CALLERROR and counts it
        await station.send_raw(json.dumps([2, "m1", "MeterValues", {"meterValue": []}]))
        await wait_until(lambda: rejected(metrics, "ocpp", "invalid_payload") == 1)

        # well-formed frame, meaningless value
        sample = {"value": "lots", "measurand": "Power.Active.Import"}
        if version == "2.0.1":
            await station.meter_values([sample], validate=False)
            await wait_until(lambda: rejected(metrics, "ocpp", "invalid_payload") == 2)
        else:
            await station.meter_values([sample])
            await wait_until(lambda: rejected(metrics, "ocpp", "wrong_type") == 1)

        # a reading from the past is the fleet's to reject
        await station.meter_values(timestamp=datetime.now(UTC) - timedelta(hours=1))
        await wait_until(lambda: rejected(metrics, "ocpp", "stale_timestamp") == 1)
        assert fleet.latest(ASSET) is None

        # the connection survived all of it
        assert adapter.connected(ASSET)
        await station.meter_values()
        await wait_until(lambda: fleet.latest(ASSET) is not None)
        ack = await adapter.send(setpoint(10.0))
        assert ack.accepted, ack.reason


async def test_status_notification_sets_availability(
    csms: tuple[OcppCentralSystem, str], version: str, fleet: Fleet
) -> None:
    adapter, url = csms
    async with StationEmulator(url, CP_ID, version, connector_id=0).running() as station:
        await wait_until(lambda: adapter.connected(ASSET))
        await station.meter_values()
        await wait_until(lambda: fleet.availability(ASSET) == Availability.AVAILABLE)
        await station.status("Unavailable" if version == "2.0.1" else "Faulted")
        await wait_until(lambda: fleet.availability(ASSET) == Availability.OFFLINE)
        await station.status("Available")
        await wait_until(lambda: fleet.availability(ASSET) == Availability.AVAILABLE)


async def test_unknown_charge_point_is_refused_and_counted(
    csms: tuple[OcppCentralSystem, str], metrics: Metrics
) -> None:
    _adapter, url = csms
    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"{url}/NOBODY", subprotocols=[Subprotocol("ocpp1.6")]):
            pass
    assert caught.value.response.status_code == 404
    assert rejected(metrics, "ocpp", "unknown_asset") == 1


async def test_wrong_ocpp_version_is_closed(fleet: Fleet, metrics: Metrics) -> None:
    async with central(fleet, "2.0.1") as (adapter, url):
        async with connect(f"{url}/{CP_ID}", subprotocols=[Subprotocol("ocpp1.6")]) as ws:
            await ws.wait_closed()
        assert rejected(metrics, "ocpp", "wrong_version") == 1
        assert not adapter.connected(ASSET)


async def test_reconnecting_station_replaces_its_session(
    csms: tuple[OcppCentralSystem, str], version: str, fleet: Fleet
) -> None:
    adapter, url = csms
    async with StationEmulator(url, CP_ID, version).running():
        await wait_until(lambda: adapter.connected(ASSET))
    await wait_until(lambda: not adapter.connected(ASSET))
    async with StationEmulator(url, CP_ID, version).running() as again:
        await wait_until(lambda: adapter.connected(ASSET))
        assert adapter.health().reconnects == 1
        await again.meter_values()
        await wait_until(lambda: fleet.latest(ASSET) is not None)
        ack = await adapter.send(setpoint(20.0))
        assert ack.accepted, ack.reason


async def test_station_lost_during_a_call_answers_disconnected(fleet: Fleet) -> None:
    async with central(fleet, "1.6", timeout_s=5.0) as (adapter, url):
        behaviour = StationBehaviour(answer_profiles=False)
        async with StationEmulator(url, CP_ID, "1.6", behaviour).running():
            await wait_until(lambda: adapter.connected(ASSET))
            pending = asyncio.create_task(adapter.send(setpoint(3.5)), name="pending send")
            await wait_until(lambda: len(behaviour.profiles) == 1)
        started = asyncio.get_running_loop().time()
        ack = await pending
        assert (ack.accepted, ack.reason) == (False, "disconnected")
        assert asyncio.get_running_loop().time() - started < 1.0


# --- decoding and profile arithmetic, without a network -------------------------------------


def test_per_phase_power_is_summed_and_units_are_scaled() -> None:
    reading = decode_meter_value(
        {
            "timestamp": "2025-06-01T08:00:00Z",
            "sampled_value": [
                {"value": "1.5", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L1"},
                {"value": "1.5", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L2"},
                {"value": "2.0", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L3"},
                {"value": "230", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
                {"value": "3.25", "unit": "kWh"},  # no measurand: the energy register
            ],
        },
        "1.6",
    )
    assert reading.power_w == pytest.approx(5000.0)
    assert reading.energy_wh == pytest.approx(3250.0)
    assert reading.timestamp == datetime(2025, 6, 1, 8, tzinfo=UTC)


def test_export_is_subtracted_and_multiplier_applies() -> None:
    reading = decode_meter_value(
        {
            "timestamp": "2025-06-01T08:00:00+08:00",
            "sampled_value": [
                {
                    "value": 2,
                    "measurand": "Power.Active.Import",
                    "unit_of_measure": {"unit": "W", "multiplier": 3},
                },
                {"value": 500, "measurand": "Power.Active.Export"},
            ],
        },
        "2.0.1",
    )
    assert reading.power_w == pytest.approx(1500.0)


@pytest.mark.parametrize(
    ("meter_value", "reason"),
    [
        ({"timestamp": "yesterday", "sampled_value": [{"value": "1"}]}, "bad_timestamp"),
        (
            {"timestamp": "2025-06-01T08:00:00", "sampled_value": [{"value": "1"}]},
            "naive_timestamp",
        ),
        ({"timestamp": "2025-06-01T08:00:00Z", "sampled_value": []}, "malformed"),
        ({"timestamp": "2025-06-01T08:00:00Z", "sampled_value": [{"value": "NaN"}]}, "malformed"),
        (
            {
                "timestamp": "2025-06-01T08:00:00Z",
                "sampled_value": [{"value": "1", "unit": "A", "measurand": "SoC"}],
            },
            "unsupported_unit",
        ),
        ("not an object", "malformed"),
    ],
)
def test_bad_meter_values_name_their_reason(meter_value: object, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_meter_value(meter_value, "1.6")
    assert caught.value.reason == reason


def test_connectors_add_up_unless_the_station_meter_reports() -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)

    def reading(power_w: float | None) -> MeterReading:
        return MeterReading(now, power_w, None, None)

    totals = _StationTotals(connector_id=0)
    totals.update(1, reading(None))
    with pytest.raises(PayloadError) as caught:
        totals.measurement(ASSET, now)
    assert caught.value.reason == "no_power"
    totals.update(1, reading(7000.0))
    totals.update(2, reading(11000.0))
    assert totals.measurement(ASSET, now).power_kw == pytest.approx(18.0)
    totals.update(0, reading(17500.0))
    assert totals.measurement(ASSET, now).power_kw == pytest.approx(17.5)
    one = _StationTotals(connector_id=2)
    assert not one.update(1, reading(7000.0))
    assert one.update(2, reading(11000.0))
    assert one.measurement(ASSET, now).power_kw == pytest.approx(11.0)


@pytest.mark.parametrize(
    ("unit", "power_kw", "limit", "limit_kw"),
    [
        ("W", 3.5, 3500.0, 3.5),
        ("W", -20.0, 0.0, 0.0),  # a station maximum cannot ask for discharge
        ("A", 11.0, 15.9, 15.9 * 0.69),  # 11 kW / (230 V × 3): rounded down, never above
        ("A", 22.08, 32.0, 22.08),
    ],
)
def test_profile_limit(unit: str, power_kw: float, limit: float, limit_kw: float) -> None:
    conn = OcppConnection.model_validate(
        {"adapter": "ocpp", "charge_point_id": CP_ID, "charging_rate_unit": unit}
    )
    got_limit, got_kw = profile_limit(setpoint(power_kw), conn)
    assert got_limit == pytest.approx(limit)
    assert got_kw == pytest.approx(limit_kw)
    assert got_kw <= max(power_kw, 0.0) + 1e-9
