"""Fleet state: acceptance checks, staleness, availability and aggregates."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vpp.clock import ManualClock
from vpp.config import load_park
from vpp.domain import AssetKind, Availability, Measurement
from vpp.fleet import Fleet
from vpp.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 7, 15, 2, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def fleet(clock: ManualClock) -> Fleet:
    park = load_park(ROOT / "tests/fixtures/small_park.yaml", ROOT / "config/markets").park
    return Fleet(park, clock, stale_after_s=30, metrics=Metrics())


def reading(asset_id: str, power_kw: float, at: datetime = T0, **extra: object) -> Measurement:
    return Measurement(asset_id, at, power_kw, **extra)  # type: ignore[arg-type]


def rejected(fleet: Fleet, reason: str) -> float:
    assert fleet.metrics is not None
    return fleet.metrics.telemetry_rejected.labels("test", reason)._value.get()  # type: ignore[no-any-return]


def test_every_enrolled_asset_starts_unknown(fleet: Fleet) -> None:
    assert len(fleet) == 7
    assert {fleet.availability(a) for a in fleet.asset_ids} == {Availability.UNKNOWN}
    agg = fleet.aggregate()
    assert (agg.assets, agg.unknown, agg.power_kw) == (7, 7, 0.0)


def test_accept_updates_latest_and_aggregates(fleet: Fleet) -> None:
    batch = [reading("bat-a", 200.0), reading("pv-a", -300.0), reading("load-a", 650.0)]
    assert fleet.accept("test", batch) == 3
    park = fleet.aggregate()
    assert park.power_kw == pytest.approx(550.0)
    assert park.available == 3
    assert park.by_kind_kw[AssetKind.PV] == pytest.approx(-300.0)
    assert fleet.aggregate("ent-a").power_kw == pytest.approx(550.0)
    assert fleet.aggregate("ent-b").power_kw == 0.0
    assert fleet.latest("bat-a") == batch[0]
    with pytest.raises(KeyError):
        fleet.aggregate("nobody")


@pytest.mark.parametrize(
    ("measurement", "reason"),
    [
        (reading("ghost", 1.0), "unknown_asset"),
        (reading("bat-a", 1.0, at=datetime(2026, 7, 15, 2, 0)), "naive_timestamp"),  # noqa: DTZ001
        (reading("bat-a", 1.0, at=T0 + timedelta(minutes=5)), "future_timestamp"),
        (reading("bat-a", 1.0, at=T0 - timedelta(minutes=5)), "stale_timestamp"),
        (reading("bat-a", math.nan), "out_of_range"),
        (reading("bat-a", math.inf), "out_of_range"),
        (reading("bat-a", 50_000.0), "out_of_range"),
        (reading("pv-a", 5_000.0), "out_of_range"),
        (reading("bat-a", 10.0, soc_fraction=1.5), "out_of_range"),
        (reading("cold-b", 10.0, temperature_c=999.0), "out_of_range"),
    ],
)
def test_bad_readings_are_rejected_by_reason(
    fleet: Fleet, measurement: Measurement, reason: str
) -> None:
    fleet.accept("test", [reading("bat-a", 100.0, at=T0 - timedelta(seconds=1))])
    before = fleet.latest("bat-a")
    assert fleet.accept("test", [measurement]) == 0
    assert rejected(fleet, reason) == 1
    assert fleet.latest("bat-a") == before  # nothing accepted is lost or overwritten


def test_out_of_order_reading_is_rejected(fleet: Fleet) -> None:
    fleet.accept("test", [reading("bat-a", 100.0, at=T0)])
    assert fleet.accept("test", [reading("bat-a", 999.0, at=T0 - timedelta(seconds=2))]) == 0
    assert rejected(fleet, "out_of_order") == 1
    assert fleet.latest("bat-a").power_kw == 100.0  # type: ignore[union-attr]


def test_mixed_batch_keeps_good_readings(fleet: Fleet) -> None:
    accepted = fleet.accept(
        "test", [reading("ghost", 1.0), reading("bat-a", 10.0), reading("pv-a", math.nan)]
    )
    assert accepted == 1
    assert fleet.accepted == 1
    assert fleet.rejected == 2


async def test_staleness_follows_the_clock(fleet: Fleet, clock: ManualClock) -> None:
    fleet.accept("test", [reading("bat-a", 100.0)])
    assert fleet.availability("bat-a") is Availability.AVAILABLE
    await clock.advance(29)
    assert fleet.fresh("bat-a") is not None
    await clock.advance(2)
    assert fleet.availability("bat-a") is Availability.STALE
    assert fleet.fresh("bat-a") is None
    assert fleet.aggregate().power_kw == 0.0  # stale power is not counted
    fleet.accept("test", [reading("bat-a", 50.0, at=clock.now())])
    assert fleet.availability("bat-a") is Availability.AVAILABLE


async def test_clock_stepped_back_beyond_the_future_tolerance(
    fleet: Fleet, clock: ManualClock
) -> None:
    # An NTP correction moves the engine clock back 10 minutes: the readings taken before
    # now lie in the future. They are no sign of life, and they order nothing.
    fleet.accept("test", [reading("bat-a", 100.0), reading("pv-a", -40.0)])
    await clock.advance(-600)
    assert fleet.availability("bat-a") is Availability.STALE
    assert fleet.fresh("bat-a") is None
    agg = fleet.aggregate()
    assert (agg.stale, agg.available, agg.power_kw) == (2, 0, 0.0)

    assert fleet.accept("test", [reading("bat-a", 80.0, at=clock.now())]) == 1
    assert rejected(fleet, "out_of_order") == 0
    assert fleet.latest("bat-a").power_kw == 80.0  # type: ignore[union-attr]
    assert fleet.availability("bat-a") is Availability.AVAILABLE
    assert fleet.aggregate().power_kw == pytest.approx(80.0)
    # from the new reading on, order is checked again
    later = clock.now() + timedelta(seconds=2)
    assert fleet.accept("test", [reading("bat-a", 70.0, at=later)]) == 1
    assert fleet.accept("test", [reading("bat-a", 60.0, at=clock.now())]) == 0
    assert rejected(fleet, "out_of_order") == 1


async def test_clock_stepped_back_within_the_future_tolerance(
    fleet: Fleet, clock: ManualClock
) -> None:
    # A step back shorter than the tolerance leaves the last reading fresh, and it still
    # orders the next ones: an older reading is refused until the clock has caught up.
    fleet.accept("test", [reading("bat-a", 100.0)])
    await clock.advance(-30)
    assert fleet.availability("bat-a") is Availability.AVAILABLE
    assert fleet.accept("test", [reading("bat-a", 80.0, at=clock.now())]) == 0
    assert rejected(fleet, "out_of_order") == 1
    await clock.advance(30)
    assert fleet.accept("test", [reading("bat-a", 80.0, at=clock.now())]) == 1


def test_offline_and_degraded(fleet: Fleet) -> None:
    fleet.accept("test", [reading("bat-a", 100.0), reading("gen-b", -200.0)])
    fleet.set_available("bat-a", False, T0)
    assert fleet.availability("bat-a") is Availability.OFFLINE
    fleet.set_available("bat-a", True, T0)
    assert fleet.availability("bat-a") is Availability.AVAILABLE
    fleet.accept("test", [reading("gen-b", 0.0, at=T0 + timedelta(seconds=1), available=False)])
    assert fleet.availability("gen-b") is Availability.OFFLINE
    fleet.mark_degraded("bat-a")
    agg = fleet.aggregate()
    assert (agg.degraded, agg.offline, agg.available) == (1, 1, 0)
    assert agg.power_kw == pytest.approx(100.0)  # degraded assets still report real power
    fleet.mark_degraded("bat-a", False)
    assert fleet.availability("bat-a") is Availability.AVAILABLE


def test_unknown_asset_status_is_counted(fleet: Fleet) -> None:
    fleet.set_available("ghost", True, T0)
    assert fleet.metrics is not None
    assert fleet.metrics.telemetry_rejected.labels("status", "unknown_asset")._value.get() == 1


def test_gauges(fleet: Fleet) -> None:
    fleet.accept("test", [reading("bat-a", 100.0), reading("pv-a", -40.0)])
    fleet.update_gauges()
    assert fleet.metrics is not None
    assert fleet.metrics.park_power._value.get() == pytest.approx(60.0)
    assert fleet.metrics.assets.labels("available")._value.get() == 2
    assert fleet.metrics.assets.labels("unknown")._value.get() == 5
