"""The simulator adapter: clocks, telemetry into a real Fleet, setpoints, dropouts, scale."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.base import ConnectionState, TelemetrySink
from adapters.sim import BatteryModel, SimAdapter
from vpp.clock import AcceleratedClock, Clock, ManualClock
from vpp.config.loader import load_park
from vpp.config.schema import Park
from vpp.domain import AssetKind, Availability, Measurement, Setpoint
from vpp.fleet import Fleet

START = datetime(2025, 6, 2, 4, 0, tzinfo=UTC)  # Monday noon in Shanghai


@pytest.fixture(scope="module")
def park() -> Park:
    return load_park("tests/fixtures/small_park.yaml", markets_dir="config/markets").park


def park_with(park: Park, **changes: Any) -> Park:
    """The park with fields of its first enterprise's assets changed (by asset id)."""
    data = park.model_dump(mode="json")
    for enterprise in data["enterprises"]:
        for asset in enterprise["assets"]:
            asset.update(changes.get(asset["id"], {}))
    return Park.model_validate(data)


def command(asset_id: str, power_kw: float, at: datetime, valid_s: float = 600.0) -> Setpoint:
    return Setpoint(asset_id, power_kw, at, at + timedelta(seconds=valid_s), f"{asset_id}-{at}")


@asynccontextmanager
async def running(adapter: SimAdapter, sink: TelemetrySink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(adapter.run(sink), name="sim")
    await asyncio.sleep(0)
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def advance(clock: ManualClock, seconds: float, step_s: float = 2.0) -> None:
    """Move manual time forward one telemetry period at a time, letting the adapter tick."""
    for _ in range(round(seconds / step_s)):
        await clock.advance(step_s)
        for _ in range(20):
            await asyncio.sleep(0)


class RecordingSink:
    """A sink that keeps every batch, to look at what the adapter delivers and when."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.batches: list[tuple[datetime, list[Measurement]]] = []

    def accept(self, adapter: str, measurements: Sequence[Measurement]) -> int:
        self.batches.append((self.clock.now(), list(measurements)))
        return len(measurements)

    def reject(self, adapter: str, reason: str, detail: str) -> None:
        raise AssertionError(f"unexpected reject {reason}: {detail}")

    def set_available(self, asset_id: str, available: bool, at: datetime) -> None:
        raise AssertionError("the simulator reports availability through telemetry only")


async def test_manual_clock_feeds_a_fleet(park: Park) -> None:
    clock = ManualClock(START)
    adapter = SimAdapter.from_park(park, clock, seed=1)
    fleet = Fleet(park, clock)
    assert adapter.asset_ids == frozenset(fleet.asset_ids)
    async with running(adapter, fleet):
        await advance(clock, 10)
        assert adapter.health().state is ConnectionState.CONNECTED
        assert adapter.health().last_message_at == clock.now()
        for asset_id in fleet.asset_ids:
            latest = fleet.latest(asset_id)
            assert latest is not None
            assert latest.timestamp == clock.now()
            assert fleet.availability(asset_id) is Availability.AVAILABLE
        aggregate = fleet.aggregate()
        assert aggregate.power_kw == pytest.approx(sum(m.power_kw for m in adapter.models.values()))
        assert aggregate.by_kind_kw[AssetKind.PV] < -100  # noon in June
        assert fleet.rejected == 0
        assert fleet.accepted == 6 * 7  # the first reading at start, then one every 2 s
    assert adapter.health().state is ConnectionState.DISCONNECTED


async def test_setpoint_moves_the_fleet_aggregate(park: Park) -> None:
    clock = ManualClock(START)
    adapter = SimAdapter.from_park(park, clock, seed=1)
    fleet = Fleet(park, clock)
    async with running(adapter, fleet):
        await advance(clock, 4)
        before = fleet.aggregate().by_kind_kw[AssetKind.BATTERY]
        assert before == 0.0
        ack = await adapter.send(command("bat-a", 400.0, clock.now()))
        assert ack.accepted
        assert ack.applied_power_kw == pytest.approx(400.0)
        assert ack.at == clock.now()
        await advance(clock, 2)
        # first-order lag of 2 s over one 2 s period
        first = fleet.aggregate().by_kind_kw[AssetKind.BATTERY]
        assert first == pytest.approx(400.0 * (1 - 0.36787944), rel=1e-6)
        await advance(clock, 20)
        assert fleet.aggregate().by_kind_kw[AssetKind.BATTERY] == pytest.approx(400.0, rel=1e-3)
        latest = fleet.latest("bat-a")
        assert latest is not None
        assert latest.soc_fraction is not None
        assert latest.soc_fraction > 0.5
        # a request beyond the rating is clamped, and the ack says so
        ack = await adapter.send(command("bat-a", -9000.0, clock.now()))
        assert ack.applied_power_kw == pytest.approx(-500.0)
        # curtail PV to 100 kW of injection
        ack = await adapter.send(command("pv-a", -100.0, clock.now()))
        assert ack.accepted
        await advance(clock, 20)
        assert fleet.aggregate().by_kind_kw[AssetKind.PV] == pytest.approx(-100.0, rel=1e-3)
        assert fleet.aggregate().by_kind_kw[AssetKind.BATTERY] == pytest.approx(-500.0, rel=1e-3)


async def test_accelerated_clock_runs_faster_than_real_time(park: Park) -> None:
    clock = AcceleratedClock(START, speed=200.0)
    adapter = SimAdapter.from_park(park, clock, seed=2)
    fleet = Fleet(park, clock)
    async with running(adapter, fleet):
        await adapter.send(command("bat-a", -300.0, clock.now(), valid_s=3600))
        await adapter.send(command("gen-b", -400.0, clock.now(), valid_s=3600))
        began = time.monotonic()
        await asyncio.sleep(0.5)  # 100 s of simulated time
        wall = time.monotonic() - began
        aggregate = fleet.aggregate()
    simulated = wall * 200
    assert adapter.stats().ticks >= 0.5 * simulated / 2
    assert fleet.rejected == 0
    assert aggregate.available == 7
    assert aggregate.by_kind_kw[AssetKind.BATTERY] == pytest.approx(-300.0, rel=1e-3)
    # the generator starts at min_kw and follows with a 2 s lag (no ramp limit)
    assert aggregate.by_kind_kw[AssetKind.GENERATOR] == pytest.approx(-400.0, rel=1e-3)
    battery = adapter.models["bat-a"]
    assert isinstance(battery, BatteryModel)
    assert battery.soc < 0.5


async def test_send_refuses_unknown_expired_and_dropped(park: Park) -> None:
    clock = ManualClock(START)
    adapter = SimAdapter.from_park(park, clock)
    fleet = Fleet(park, clock)
    async with running(adapter, fleet):
        await advance(clock, 2)
        unknown = await adapter.send(command("nope", 1.0, clock.now()))
        assert (unknown.accepted, unknown.reason) == (False, "unknown_asset")
        late = Setpoint("bat-a", 100.0, START, clock.now(), "late")
        expired = await adapter.send(late)
        assert (expired.accepted, expired.reason) == (False, "expired")
        adapter.drop("bat-a")
        dropped = await adapter.send(command("bat-a", 100.0, clock.now()))
        assert (dropped.accepted, dropped.reason) == (False, "timeout")
        await advance(clock, 40)  # past the fleet's 30 s staleness limit
        assert fleet.availability("bat-a") is Availability.STALE
        assert fleet.availability("pv-a") is Availability.AVAILABLE
        adapter.restore("bat-a")
        await advance(clock, 2)
        assert fleet.availability("bat-a") is Availability.AVAILABLE
        back = await adapter.send(command("bat-a", 100.0, clock.now()))
        assert back.accepted


async def test_dropped_device_keeps_its_setpoint_until_expiry(park: Park) -> None:
    clock = ManualClock(START)
    adapter = SimAdapter.from_park(park, clock)
    sink = RecordingSink(clock)
    async with running(adapter, sink):
        await advance(clock, 2)
        await adapter.send(command("bat-a", 200.0, clock.now(), valid_s=20))
        adapter.drop("bat-a")
        await advance(clock, 30)
        silent = [m for _, batch in sink.batches[-10:] for m in batch if m.asset_id == "bat-a"]
        assert silent == []
        model = adapter.models["bat-a"]
        assert model.setpoint is None  # expired while silent: local control (idle)
        assert model.power_kw == pytest.approx(0.0, abs=1.0)
        # valid for the 9 periods before the one ending at expiry, blurred by the 2 s lag
        assert model.imported_kwh == pytest.approx(200 * 18 / 3600, rel=0.05)


async def test_assets_with_other_connections_are_left_out(park: Park) -> None:
    changed = park_with(park, **{"pv-a": {"connection": {"adapter": "mqtt"}}})
    adapter = SimAdapter.from_park(changed, ManualClock(START))
    assert "pv-a" not in adapter.asset_ids
    assert len(adapter.asset_ids) == 6


async def test_each_asset_reports_at_its_own_period(park: Park) -> None:
    changed = park_with(park, **{"gen-b": {"connection": {"telemetry_period_s": 10}}})
    clock = ManualClock(START)
    adapter = SimAdapter.from_park(changed, clock)
    sink = RecordingSink(clock)
    async with running(adapter, sink):
        await advance(clock, 40)
    times = {
        asset: [at for at, batch in sink.batches for m in batch if m.asset_id == asset]
        for asset in ("gen-b", "bat-a")
    }
    assert len(times["bat-a"]) == 21
    assert len(times["gen-b"]) == 5
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times["gen-b"])}
    assert gaps == {10.0}


def test_runs_are_reproducible_by_seed(park: Park) -> None:
    def readings(seed: int) -> list[float]:
        adapter = SimAdapter.from_park(park, ManualClock(START), seed=seed)
        values: list[float] = []
        for k in range(1, 200):
            values.extend(
                m.power_kw for m in adapter.step_once(START + timedelta(seconds=2 * k), 2)
            )
        return values

    assert readings(5) == readings(5)
    assert readings(5) != readings(6)


def test_random_dropouts_from_the_connection_settings(park: Park) -> None:
    flaky = {"connection": {"dropout_probability_per_h": 1.0, "seed": 11}}
    changed = park_with(park, **{"bat-a": flaky})
    adapter = SimAdapter.from_park(changed, ManualClock(START), dropout_mean_s=60)
    seen = []
    for k in range(1, 6 * 360):  # 6 h in 10 s periods
        readings = adapter.step_once(START + timedelta(seconds=10 * k), 10)
        seen.append(any(m.asset_id == "bat-a" for m in readings))
        assert all(any(m.asset_id == a for m in readings) for a in ("pv-a", "gen-b"))
    # about one dropout an hour, a minute long on average: mostly online, sometimes not
    assert not all(seen)
    assert sum(seen) > 0.9 * len(seen)
    assert seen[-1] or seen[-100]


def test_thousands_of_assets_tick_well_within_the_period(park: Park) -> None:
    data = park.model_dump(mode="json")
    template = data["enterprises"]
    enterprises = []
    for copy in range(430):  # 430 × 7 = 3010 assets
        for enterprise in template:
            assets = [dict(a, id=f"{a['id']}-{copy}") for a in enterprise["assets"]]
            enterprises.append(dict(enterprise, id=f"{enterprise['id']}-{copy}", assets=assets))
    data["enterprises"] = enterprises
    big = Park.model_validate(data)
    adapter = SimAdapter.from_park(big, ManualClock(START))
    assert len(adapter.asset_ids) == 3010
    began = time.process_time()
    for k in range(1, 6):
        readings = adapter.step_once(START + timedelta(seconds=2 * k), 2.0)
        assert len(readings) == 3010
    per_tick = (time.process_time() - began) / 5
    # 30,000 assets in a 2 s period needs 3,000 in 0.2 s; allow for a busy shared machine
    assert per_tick < 0.5
    assert adapter.stats().steps == 5 * 3010
