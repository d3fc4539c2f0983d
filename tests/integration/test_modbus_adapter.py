"""Modbus adapter against a pymodbus server on loopback whose battery plant follows setpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from adapters import sunspec
from adapters.base import ConnectionState
from adapters.modbus import ModbusAdapter, ModbusDevice
from tests.emulators.modbus_plant import BatteryPlant, ModbusPlantServer
from tests.observe import rejected, wait_until
from vpp.clock import SystemClock
from vpp.config.schema import ModbusConnection, ModbusRegister
from vpp.domain import Availability, Setpoint
from vpp.fleet import Fleet
from vpp.metrics import Metrics

pytestmark = pytest.mark.integration

ASSET = "bat-a"  # a 500 kW battery in the small test park


def setpoint(power_kw: float, valid_s: float = 10.0, tag: str = "c1") -> Setpoint:
    now = datetime.now(UTC)
    return Setpoint(ASSET, power_kw, now, now + timedelta(seconds=valid_s), tag)


class Running:
    def __init__(self, adapter: ModbusAdapter, server: ModbusPlantServer, fleet: Fleet) -> None:
        self.adapter = adapter
        self.server = server
        self.fleet = fleet

    def power_kw(self) -> float | None:
        last = self.fleet.latest(ASSET)
        return None if last is None else last.power_kw


@contextlib.asynccontextmanager
async def running(
    server: ModbusPlantServer, fleet: Fleet, **connection: object
) -> AsyncIterator[Running]:
    settings: dict[str, object] = {
        "adapter": "modbus",
        "host": "127.0.0.1",
        "port": server.port,
        "poll_interval_s": 0.05,
        "timeout_s": 1.0,
        "ack_timeout_s": 2.0,
        "reconnect_max_s": 0.5,
    }
    settings.update(connection)
    conn = ModbusConnection.model_validate(settings)
    adapter = ModbusAdapter(
        "modbus", [ModbusDevice(ASSET, conn)], SystemClock(), reconnect_base_s=0.05
    )
    task = asyncio.create_task(adapter.run(fleet), name="modbus-under-test")
    try:
        await wait_until(lambda: fleet.latest(ASSET) is not None)
        yield Running(adapter, server, fleet)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
async def plant() -> BatteryPlant:
    return BatteryPlant(rating_kw=100.0, capacity_kwh=200.0, soc_fraction=0.5)


@pytest.fixture
async def sunspec_run(plant: BatteryPlant, fleet: Fleet) -> AsyncIterator[Running]:
    server = ModbusPlantServer(plant, w_sf=1, wset_sf=0)
    async with server, running(server, fleet) as run:
        yield run


async def test_discovers_sunspec_chain_and_reports_telemetry(sunspec_run: Running) -> None:
    last = sunspec_run.fleet.latest(ASSET)
    assert last is not None
    assert last.power_kw == 0.0
    assert last.soc_fraction == pytest.approx(0.5, abs=0.001)
    assert last.available
    assert sunspec_run.adapter.health().state == ConnectionState.CONNECTED
    assert sunspec_run.fleet.availability(ASSET) == Availability.AVAILABLE


async def test_plant_follows_setpoint_and_telemetry_follows(
    sunspec_run: Running, plant: BatteryPlant
) -> None:
    ack = await sunspec_run.adapter.send(setpoint(-60.0))
    assert ack.accepted, ack.reason
    assert ack.correlation_id == "c1"
    assert ack.applied_power_kw is not None and ack.applied_power_kw < 0.0
    assert plant.target_kw == -60.0
    # the setpoint sits in model 704 as WSet in W, discharge positive, enabled, in watts mode
    controls = sunspec.layout(704)
    start, count = controls.span("WSetEna", "WSetMod", "WSet")
    words = sunspec_run.server.register_words(sunspec_run.server.addr_704 + start, count)
    assert words == [1, 1, 0, 60000]
    await wait_until(lambda: sunspec_run.power_kw() == pytest.approx(-60.0, abs=0.01))

    ack = await sunspec_run.adapter.send(setpoint(35.0, tag="c2"))
    assert ack.accepted, ack.reason
    await wait_until(lambda: sunspec_run.power_kw() == pytest.approx(35.0, abs=0.01))
    assert plant.power_kw == pytest.approx(35.0)


async def test_refused_write_gives_refused_ack(sunspec_run: Running, plant: BatteryPlant) -> None:
    plant.refuse_writes = True
    ack = await sunspec_run.adapter.send(setpoint(-20.0))
    assert not ack.accepted
    assert ack.reason == "refused"
    assert plant.writes == 1
    assert plant.target_kw == 0.0
    # a refused write is the device's answer, not a broken link
    assert sunspec_run.adapter.health().state == ConnectionState.CONNECTED


async def test_write_beyond_rating_is_refused(sunspec_run: Running, plant: BatteryPlant) -> None:
    ack = await sunspec_run.adapter.send(setpoint(-150.0))
    assert (ack.accepted, ack.reason) == (False, "refused")
    assert plant.target_kw == 0.0


async def test_plant_not_moving_gives_not_following(plant: BatteryPlant, fleet: Fleet) -> None:
    plant.ramp_kw_per_s = 0.001
    server = ModbusPlantServer(plant)
    async with server, running(server, fleet, ack_timeout_s=0.4) as run:
        started = asyncio.get_running_loop().time()
        ack = await run.adapter.send(setpoint(-80.0))
        elapsed = asyncio.get_running_loop().time() - started
        assert (ack.accepted, ack.reason) == (False, "not_following")
        assert ack.applied_power_kw == pytest.approx(0.0, abs=0.01)
        assert plant.target_kw == -80.0  # written and read back, just not followed
        assert 0.35 <= elapsed < 1.5


async def test_expired_setpoint_is_never_written(sunspec_run: Running, plant: BatteryPlant) -> None:
    ack = await sunspec_run.adapter.send(setpoint(-10.0, valid_s=-1.0))
    assert (ack.accepted, ack.reason) == (False, "expired")
    assert plant.writes == 0


async def test_nan_marker_is_rejected_counted_and_survived(
    sunspec_run: Running, plant: BatteryPlant, metrics: Metrics
) -> None:
    plant.corrupt_power = True
    await wait_until(lambda: rejected(metrics, "modbus", "nan_marker") >= 3)
    assert sunspec_run.adapter.health().state == ConnectionState.CONNECTED
    plant.corrupt_power = False
    before = sunspec_run.fleet.latest(ASSET)
    assert before is not None
    await wait_until(
        lambda: (
            (last := sunspec_run.fleet.latest(ASSET)) is not None
            and last.timestamp > before.timestamp
        )
    )


async def test_server_restart_reconnects_with_backoff(
    sunspec_run: Running, plant: BatteryPlant
) -> None:
    adapter, server = sunspec_run.adapter, sunspec_run.server
    await server.stop()
    await wait_until(lambda: adapter.health().state != ConnectionState.CONNECTED)
    await wait_until(lambda: sunspec_run.fleet.availability(ASSET) == Availability.OFFLINE)
    ack = await adapter.send(setpoint(-10.0))
    assert (ack.accepted, ack.reason) == (False, "disconnected")
    await asyncio.sleep(0.3)  # several failed attempts while the server is away
    assert adapter.health().state != ConnectionState.CONNECTED
    assert adapter.health().last_error

    await server.start()
    await wait_until(lambda: adapter.health().state == ConnectionState.CONNECTED)
    assert adapter.health().reconnects == 1
    await wait_until(lambda: sunspec_run.fleet.availability(ASSET) == Availability.AVAILABLE)
    ack = await adapter.send(setpoint(-25.0))
    assert ack.accepted, ack.reason
    await wait_until(lambda: sunspec_run.power_kw() == pytest.approx(-25.0, abs=0.01))


async def test_register_map_device_follows_setpoint(
    plant: BatteryPlant, fleet: Fleet, metrics: Metrics
) -> None:
    registers = [
        ModbusRegister(name="power", address=100, type="int32", scale=0.1, word_order="little"),
        ModbusRegister(name="soc", address=102, type="uint16", scale=0.001),
        ModbusRegister(
            name="setpoint",
            address=110,
            type="float32",
            byte_order="little",
            word_order="little",
            writable=True,
        ),
        ModbusRegister(name="available", address=120, type="uint16"),
    ]
    server = ModbusPlantServer(plant, layout="map", registers=registers)
    async with server, running(server, fleet, sunspec=False, registers=registers) as run:
        last = fleet.latest(ASSET)
        assert last is not None and last.soc_fraction == pytest.approx(0.5)
        ack = await run.adapter.send(setpoint(42.5))
        assert ack.accepted, ack.reason
        assert plant.target_kw == pytest.approx(42.5)
        await wait_until(lambda: run.power_kw() == pytest.approx(42.5, abs=0.1))

        plant.corrupt_power = True
        await wait_until(lambda: rejected(metrics, "modbus", "nan_marker") >= 2)
        assert run.adapter.health().state == ConnectionState.CONNECTED


async def test_register_map_without_writable_setpoint_is_not_controllable(
    plant: BatteryPlant, fleet: Fleet
) -> None:
    registers = [ModbusRegister(name="power", address=0, type="int16", scale=1.0)]
    server = ModbusPlantServer(plant, layout="map", registers=registers)
    async with server, running(server, fleet, sunspec=False, registers=registers) as run:
        ack = await run.adapter.send(setpoint(10.0))
        assert (ack.accepted, ack.reason) == (False, "not_controllable")
        assert plant.writes == 0
