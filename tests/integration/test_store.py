"""The storage layer against a real SQLite file and the real PostgreSQL server on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.postgres import postgres_reachable, private_schema
from vpp.domain import Award, DrEvent, Interval, Measurement, Setpoint, SetpointAck
from vpp.store import MIGRATIONS, StorageError, Store, StoredSchedule

pytestmark = pytest.mark.integration

T0 = datetime(2026, 7, 15, 0, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'vpp.db'}")
        yield s
        s.close()
        return
    if not postgres_reachable():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    with private_schema() as url:
        s = Store(url)
        try:
            yield s
        finally:
            s.close()


def test_migrations_are_applied_once(store: Store) -> None:
    assert store.schema_version() == 0
    assert store.migrate() == len(MIGRATIONS)
    assert store.migrate() == len(MIGRATIONS)  # idempotent
    assert store.schema_version() == len(MIGRATIONS)


def test_telemetry_round_trip_and_duplicates(store: Store) -> None:
    store.migrate()
    batch = [
        Measurement(
            "bat-1", T0 + timedelta(seconds=2 * k), 100.0 + k, soc_fraction=0.5, available=True
        )
        for k in range(10)
    ]
    store.write_telemetry(batch)
    store.write_telemetry(batch[:3])  # replays are ignored, not duplicated
    stored = store.telemetry("bat-1", T0, T0 + timedelta(hours=1))
    assert stored == batch
    assert store.latest_telemetry() == [batch[-1]]


def test_downsampling_keeps_every_reading_counted(store: Store) -> None:
    store.migrate()
    readings = [Measurement("load-1", T0 + timedelta(minutes=k), float(k)) for k in range(60)]
    store.write_telemetry(readings)
    rolled = store.downsample(T0 + timedelta(minutes=30))
    assert rolled == 30
    rollups = store.rollups("load-1", T0, T0 + timedelta(hours=1))
    assert [(r.start, r.samples) for r in rollups] == [(T0, 15), (T0 + timedelta(minutes=15), 15)]
    assert rollups[0].mean_power_kw == pytest.approx(7.0)  # mean of 0..14
    assert rollups[1].mean_power_kw == pytest.approx(22.0)  # mean of 15..29
    assert len(store.telemetry("load-1", T0, T0 + timedelta(hours=1))) == 30
    # a late reading for a rolled-up bucket merges into the rollup by sample count
    store.write_telemetry([Measurement("load-1", T0 + timedelta(seconds=30), 100.0)])
    store.downsample(T0 + timedelta(minutes=30))
    first = store.rollups("load-1", T0, T0 + timedelta(minutes=15))[0]
    assert first.samples == 16
    assert first.mean_power_kw == pytest.approx((7.0 * 15 + 100.0) / 16)


def test_awards_replace_by_interval(store: Store) -> None:
    store.migrate()
    interval = Interval(T0, timedelta(minutes=15))
    store.save_awards([Award(interval, 1000.0, 350.0, "spot")], T0)
    store.save_awards([Award(interval, 1200.0, 360.0, "spot")], T0 + timedelta(minutes=1))
    assert store.awards(T0, T0 + timedelta(days=1)) == [Award(interval, 1200.0, 360.0, "spot")]
    # the replacement's receipt is kept: a restarted engine counts notice from it
    assert store.received_awards(T0, T0 + timedelta(days=1)) == [
        (Award(interval, 1200.0, 360.0, "spot"), T0 + timedelta(minutes=1))
    ]


def test_dr_events_and_settlements(store: Store) -> None:
    store.migrate()
    event = DrEvent(
        "ev-1",
        "cn_peak_valley_dr",
        T0 + timedelta(hours=10),
        T0 + timedelta(hours=12),
        T0,
        2000.0,
        3000.0,
    )
    store.save_dr_event(event)
    store.save_dr_event(dataclasses.replace(event, opted_in=False))
    stored = store.dr_events(T0, T0 + timedelta(days=1))
    assert len(stored) == 1
    assert stored[0].opted_in is False
    assert store.dr_events(T0 + timedelta(hours=13), T0 + timedelta(days=1)) == []
    store.save_settlement(T0, T0 + timedelta(days=1), "enterprise", "e1", {"payment": 123.5})
    store.save_settlement(T0, T0 + timedelta(days=1), "enterprise", "e2", {"payment": 7.0})
    assert [s["payment"] for s in store.settlements(T0, T0 + timedelta(days=1), "e1")] == [123.5]
    assert len(store.settlements(T0, T0 + timedelta(days=1))) == 2


def test_setpoint_audit(store: Store) -> None:
    store.migrate()
    sp = Setpoint("bat-1", -250.0, T0, T0 + timedelta(seconds=10), "c-1")
    store.audit_setpoints(
        [sp, Setpoint("bat-1", 0.0, T0 + timedelta(seconds=2), T0 + timedelta(seconds=12), "c-2")]
    )
    store.audit_acks([SetpointAck("c-1", "bat-1", True, T0 + timedelta(seconds=1), -250.0)])
    audit = store.setpoint_audit("bat-1", T0, T0 + timedelta(minutes=1))
    assert audit[0] == (
        sp,
        SetpointAck("c-1", "bat-1", True, T0 + timedelta(seconds=1), -250.0, ""),
    )
    assert audit[1][1] is None


def test_schedules_and_bids(store: Store) -> None:
    store.migrate()
    first = store.save_schedule(T0, T0, timedelta(minutes=15), "optimal", 12.5, {"rows": [1, 2]})
    second = store.save_schedule(T0, T0, timedelta(minutes=15), "optimal", 11.0, {"rows": [3]})
    assert second > first
    latest = store.latest_schedule()
    assert latest == StoredSchedule(T0, T0, timedelta(minutes=15), "optimal", 11.0, {"rows": [3]})
    assert store.save_bids(T0, "spot", "2026-07-16", {"curves": []}) >= 1


def test_naive_timestamps_are_refused(store: Store) -> None:
    store.migrate()
    with pytest.raises(ValueError, match="timezone-aware"):
        store.write_telemetry([Measurement("x", datetime(2026, 1, 1), 1.0)])  # noqa: DTZ001


def test_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="unsupported storage URL"):
        Store("mysql://nope")
    with pytest.raises(StorageError, match=r"postgresql://\*\*\*@127.0.0.1:1/x: cannot connect"):
        Store("postgresql://user:secret@127.0.0.1:1/x")
