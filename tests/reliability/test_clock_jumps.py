"""The wall clock steps forward by hours and back by a minute under a running control loop.

`SteppedClock` behaves like the system clock under NTP: `now()` can jump, while sleeps keep
running on monotonic time. On 50 simulated assets following a target:

* forward by 3 h: every reading is stale at once, setpoints queued before the step expire
  and are dropped by the controller (never handed to an adapter), the loop keeps its
  cadence and steers again as soon as fresh telemetry arrives;
* back by 60 s: the loop does not wait the minute out, it goes on cycling every period.
  The simulated devices, whose telemetry schedule runs on the same clock, stay silent
  until it has caught up (any reading stamped earlier than the last one would be refused
  as out of order), and the readings from before the step still count as fresh; once the
  clock has caught up telemetry flows and tracking is back on target.

Throughout, `LimitGuard` checks every setpoint that reaches an adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from adapters.base import Adapter
from adapters.sim import SimAdapter
from tests.parks import generated_park
from tests.reliability.conftest import LimitGuard, RecordingFleet, Wrapped
from vpp.clock import AcceleratedClock
from vpp.control import Controller, ControlOptions
from vpp.domain import Availability, Setpoint, SetpointAck
from vpp.metrics import Metrics
from vpp.targets import TargetBook

pytestmark = pytest.mark.integration

START = datetime(2024, 6, 5, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
SPEED = 10.0
PERIOD_S = 2.0
WALL_PERIOD_S = PERIOD_S / SPEED


class SteppedClock(AcceleratedClock):
    """Accelerated time whose reading can be stepped; sleeps are unaffected (monotonic)."""

    def step(self, seconds: float) -> None:
        self.start += timedelta(seconds=seconds)


class GatedAdapter(Wrapped):
    """Holds every send until `gate` is set: setpoints wait in the controller's outbox."""

    def __init__(self, inner: Adapter) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, setpoint: Setpoint) -> SetpointAck:
        await self.gate.wait()
        return await self.inner.send(setpoint)


@dataclass
class Rig:
    clock: SteppedClock
    fleet: RecordingFleet
    guard: LimitGuard
    gated: GatedAdapter
    targets: TargetBook
    controller: Controller
    metrics: Metrics

    async def periods(self, count: float) -> int:
        """Let `count` control periods of wall time pass; returns the cycles run meanwhile."""
        before = self.controller.cycles_run
        await asyncio.sleep(count * WALL_PERIOD_S)
        return self.controller.cycles_run - before

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels or None) or 0.0


@contextlib.asynccontextmanager
async def rig() -> AsyncIterator[Rig]:
    park = generated_park(5)
    clock = SteppedClock(START, SPEED)
    metrics = Metrics()
    fleet = RecordingFleet(park, clock, metrics=metrics)
    sim = SimAdapter.from_park(park, clock, seed=3, cloudiness=0.0)
    gated = GatedAdapter(sim)
    guard = LimitGuard(gated, park, fleet)
    targets = TargetBook()
    # one send at a time, so that a closed gate leaves the rest queued in the outbox
    options = ControlOptions(max_in_flight_per_adapter=1, send_timeout_s=30.0)
    controller = Controller(
        park, fleet, dict.fromkeys(sim.asset_ids, guard), clock, metrics, targets, options=options
    )
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(guard.run(fleet), name="sim"),
            group.create_task(controller.run(), name="control"),
        ]
        try:
            yield Rig(clock, fleet, guard, gated, targets, controller, metrics)
        finally:
            for task in tasks:
                task.cancel()


async def test_forward_step_of_hours_marks_stale_drops_expired_and_keeps_cadence() -> None:
    async with rig() as r:
        await r.periods(3)
        now = r.clock.now()
        r.targets.set_override(r.fleet.aggregate().power_kw + 500.0, now, now + timedelta(hours=12))
        await r.periods(8)
        assert r.controller.last_report is not None and r.controller.last_report.setpoints >= 0

        # setpoints queue up behind a held send, then the clock steps 3 h ahead
        r.gated.gate.clear()
        now = r.clock.now()
        r.targets.set_override(r.fleet.aggregate().power_kw - 500.0, now, now + timedelta(hours=12))
        await asyncio.sleep(WALL_PERIOD_S / 2)
        queued = sum(len(o.pending) for o in r.controller._outboxes)
        assert queued > 0
        expired_before = r.controller.expired
        r.clock.step(3 * 3600)
        # at once, before any new reading: everything the fleet holds is stale
        states = [r.fleet.availability(a) for a in r.fleet.asset_ids]
        assert all(s is Availability.STALE for s in states)
        r.gated.gate.set()
        cycles = await r.periods(10)
        dropped = r.controller.expired - expired_before
        assert dropped >= queued  # every setpoint left in the outbox was dropped, none sent late
        assert r.sample("vpp_setpoints_expired_total") == r.controller.expired
        assert 8 <= cycles <= 12  # the cadence goes on across the step
        report = r.controller.last_report
        assert report is not None and report.stale == 0  # fresh telemetry again
        assert report.at >= START + timedelta(hours=3)
    assert r.guard.stats.violations == []
    print(
        f"\nforward 3 h: {queued} setpoints queued at the step, {dropped} dropped as expired, "
        f"{cycles} cycles in 10 periods after it, setpoints checked {r.guard.stats.sent}"
    )


async def test_backward_step_does_not_stall_the_loop() -> None:
    async with rig() as r:
        await r.periods(3)
        now = r.clock.now()
        target_kw = r.fleet.aggregate().power_kw + 500.0
        r.targets.set_override(target_kw, now - timedelta(hours=1), now + timedelta(hours=12))
        await r.periods(10)
        rejected_before = r.fleet.rejected
        began = time.monotonic()
        r.clock.step(-60.0)
        cycles = await r.periods(10)  # 20 s of clock time: still before the step's origin
        assert 8 <= cycles <= 12, cycles  # one cycle per period, not one minute of silence
        # a reading after the step would be older than the one before it: out of order
        out_of_order = r.fleet.rejected - rejected_before
        await r.periods(45)  # the clock passes its reading before the step again
        report = r.controller.last_report
        assert report is not None and report.stale == 0
        assert r.fleet.aggregate().available == len(r.fleet.asset_ids)
        error_kw = abs(report.measured_kw - target_kw)
        wall_s = time.monotonic() - began
    assert r.guard.stats.violations == []
    print(
        f"\nback 60 s: {cycles} cycles in the 10 periods after the step, {out_of_order} readings "
        f"refused as out of order meanwhile, tracking error {error_kw:.0f} kW after "
        f"{wall_s:.1f} s wall; setpoints checked {r.guard.stats.sent}"
    )
