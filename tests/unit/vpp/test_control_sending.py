"""What the control loop sends for large fleets: refreshes spread out, the fleet deadband, and
the outbox handing out setpoints in the order they were queued."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.vpp.test_control import PERIOD_S, battery, rig
from vpp.control import ControlOptions, _Batch, _Outbox

BATTERIES = [battery(f"b{i:02d}") for i in range(20)]  # 20 x ±100 kW: 4,000 kW of span


async def test_refreshes_after_one_step_are_spread_and_leave_before_expiry() -> None:
    validity_s = 60.0
    async with rig(BATTERIES, setpoint_validity_s=validity_s) as r:
        await r.override(1000.0)
        await r.cycles(35)  # 70 s: every asset is refreshed once
        issued: dict[str, list[datetime]] = defaultdict(list)
        for setpoint in r.plant.received:
            issued[setpoint.asset_id].append(setpoint.issued_at)
        assert set(issued) == {b["id"] for b in BATTERIES}
        gaps = [
            (times[1] - times[0]).total_seconds() for times in issued.values() if len(times) > 1
        ]
        assert len(gaps) == len(BATTERIES)
        # From half the validity on, no later than a queueing period, a sending period and
        # the send timeout before expiry (plus the cycle the refresh falls due in).
        latest_s = validity_s - 2 * PERIOD_S - ControlOptions().send_timeout_s
        assert min(gaps) >= validity_s / 2
        assert max(gaps) <= latest_s + PERIOD_S
        assert len(set(gaps)) >= 8  # spread over many cycles, not one burst
        assert r.controller.expired == 0


async def test_without_room_to_spread_refreshes_come_at_half_the_validity() -> None:
    async with rig(BATTERIES[:3], setpoint_validity_s=8) as r:
        await r.override(60.0)
        await r.cycles(6)
        issued = sorted({sp.issued_at for sp in r.plant.received})
        gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(issued)}
        assert gaps == {4.0}


async def test_fleet_deadband_holds_back_small_corrections_within_its_budget() -> None:
    options = ControlOptions(fleet_deadband_fraction=0.01)  # 40 kW of 4,000 kW
    async with rig(BATTERIES, options=options) as r:
        await r.override(1000.0)
        await r.cycles(2)
        assert len(r.plant.received) == len(BATTERIES)
        before = len(r.plant.received)
        await r.override(1010.0)  # 0.5 kW per battery: beyond each one's 0.4 kW deadband
        assert len(r.plant.received) == before  # 10 kW in all: within the fleet's 40 kW

        await r.override(1100.0)  # 5 kW per battery, 100 kW in all
        sent = r.plant.received[before:]
        assert len(sent) == 12  # 8 held back: 40 kW
        commanded = {sp.asset_id: 50.0 for sp in r.plant.received[:before]}
        commanded.update({sp.asset_id: sp.power_kw for sp in sent})
        assert 1100.0 - sum(commanded.values()) == pytest.approx(40.0, abs=0.01)


async def test_without_a_fleet_deadband_every_change_beyond_an_assets_deadband_is_sent() -> None:
    async with rig(BATTERIES) as r:
        await r.override(1000.0)
        await r.cycles(2)
        before = len(r.plant.received)
        await r.override(1010.0)
        assert len(r.plant.received) - before == len(BATTERIES)


def test_fleet_deadband_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="fleet_deadband_fraction"):
        ControlOptions(fleet_deadband_fraction=1.5)


def test_outbox_hands_out_the_oldest_setpoint_and_a_replacement_keeps_its_place() -> None:
    now = datetime(2024, 1, 3, 2, 0, tzinfo=UTC)
    first = _Batch(1, now, now + timedelta(seconds=10))
    second = _Batch(2, now, now + timedelta(seconds=10))
    outbox = _Outbox(adapter=None)  # type: ignore[arg-type]
    for index in (5, 3, 9):
        outbox.put(index, first, float(index))
    outbox.put(3, second, 33.0)
    taken = [outbox.take() for _ in range(3)]
    assert [(i, b.cycle, p) for i, b, p in taken] == [(5, 1, 5.0), (3, 2, 33.0), (9, 1, 9.0)]
    assert not outbox.pending
    with pytest.raises(IndexError):
        outbox.take()
