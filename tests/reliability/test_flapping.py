"""Devices that go silent and flap while the control loop follows a target on 150 assets.

The park is generated (15 enterprises x 10 simulated assets of every kind, 2 s lag, 2 s
telemetry); every setpoint passes through `LimitGuard` on its way to the simulator, which
checks it against the asset's static range and its dynamic limits for the state the loop
saw. Two scenarios:

* 10 % of the assets fall silent (no telemetry, no acks) on a manual clock, then come back:
  the tracking error returns to its band within a stated number of cycles each time.
* a fifth of the fleet flaps (each asset silent for a while, back, silent again) on an
  accelerated clock for 300 s of clock time: the loop keeps one cycle per period, no cycle
  overruns its period, and tracking recovers once the flapping stops.

In both, no setpoint leaves outside its limits, expired or non-finite.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from adapters.sim import SimAdapter
from tests.parks import generated_park
from tests.reliability.conftest import LimitGuard, RecordingFleet
from vpp.clock import AcceleratedClock, Clock, ManualClock
from vpp.config.schema import Park
from vpp.control import Controller, CycleReport
from vpp.domain import Availability
from vpp.metrics import Metrics
from vpp.targets import TargetBook

pytestmark = pytest.mark.integration

START = datetime(2024, 6, 5, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai on a Wednesday
PERIOD_S = 2.0
STEP_KW = 1500.0
# Stated figures (measured: see docs/reliability.md). A step settles within 3 % of its size
# in at most 8 cycles. When 10 % of the fleet falls silent (or comes back) its share is
# re-dispatched within 100 kW in at most 8 cycles and within 40 kW in at most 10 (measured:
# 7 going silent, 3 coming back): the integral term pauses while the measured sum changes
# which assets it holds, so it does not wind up on the jump.
STEP_BAND_KW = 0.03 * STEP_KW
OUTAGE_BAND_KW = 100.0
RECOVERY_CYCLES = 8
FINE_BAND_KW = 40.0
FINE_CYCLES = 10
# A fifth of the fleet flaps: two batteries, the EV depot and the process load of 8 enterprises.
FLAPPING = [f"e{e}-{kind}" for e in range(8) for kind in ("bat1", "bat2", "ev", "load")][:30]


@dataclass
class Rig:
    park: Park
    clock: Clock
    sim: SimAdapter
    guard: LimitGuard
    fleet: RecordingFleet
    targets: TargetBook
    controller: Controller
    metrics: Metrics

    def target(self, power_kw: float) -> None:
        now = self.clock.now()
        self.targets.set_override(power_kw, now, now + timedelta(hours=2))


@contextlib.asynccontextmanager
async def rig(park: Park, clock: Clock) -> AsyncIterator[Rig]:
    metrics = Metrics()
    fleet = RecordingFleet(park, clock, metrics=metrics)
    sim = SimAdapter.from_park(park, clock, seed=11, cloudiness=0.0)
    guard = LimitGuard(sim, park, fleet)
    targets = TargetBook()
    controller = Controller(
        park, fleet, dict.fromkeys(sim.asset_ids, guard), clock, metrics, targets
    )
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(guard.run(fleet), name="sim"),
            group.create_task(controller.run(), name="control"),
        ]
        await asyncio.sleep(0)
        try:
            yield Rig(park, clock, sim, guard, fleet, targets, controller, metrics)
        finally:
            for task in tasks:
                task.cancel()


async def manual_cycles(r: Rig, count: int) -> list[CycleReport]:
    """Advance the manual clock one period at a time; each advance runs exactly one cycle."""
    assert isinstance(r.clock, ManualClock)
    reports = []
    for _ in range(count):
        done = r.controller.cycles_run
        await r.clock.advance(PERIOD_S)
        reports.append(await asyncio.wait_for(r.controller.wait_cycle(done), 5))
        await asyncio.wait_for(r.controller.wait_idle(), 5)
        assert r.controller.cycles_run == done + 1  # the cadence: one cycle per period
    return reports


def settled_after(reports: list[CycleReport], target_kw: float, band_kw: float) -> int | None:
    """Cycles until the error entered the band for good (None: it never did)."""
    for k in range(len(reports)):
        if all(abs(r.measured_kw - target_kw) <= band_kw for r in reports[k:]):
            return k
    return None


def assert_no_violation(guard: LimitGuard) -> None:
    assert guard.stats.violations == [], guard.stats.violations[:5]
    assert guard.stats.sent > 0 and guard.stats.dynamic_checked > 0


def errors_of(reports: list[CycleReport], target_kw: float) -> list[int]:
    return [round(x.measured_kw - target_kw) for x in reports]


async def test_ten_percent_silent_then_back_tracking_recovers_within_limits() -> None:
    park = generated_park(15)
    silent = [f"e{e}-bat0" for e in range(8)] + [f"e{e}-ev" for e in range(8, 15)]  # 15 of 150
    async with rig(park, ManualClock(START)) as r:
        await manual_cycles(r, 3)  # telemetry flows, no target yet
        target_kw = r.fleet.aggregate().power_kw + STEP_KW
        done = r.controller.cycles_run
        r.target(target_kw)
        await asyncio.wait_for(r.controller.wait_cycle(done), 5)  # acted on at once
        step = await manual_cycles(r, 14)
        to_step = settled_after(step, target_kw, STEP_BAND_KW)
        assert to_step is not None and to_step <= RECOVERY_CYCLES, errors_of(step, target_kw)

        for asset_id in silent:
            r.sim.drop(asset_id)
        outage = await manual_cycles(r, 24)
        to_outage = settled_after(outage, target_kw, OUTAGE_BAND_KW)
        to_outage_fine = settled_after(outage, target_kw, FINE_BAND_KW)
        assert to_outage is not None and to_outage <= RECOVERY_CYCLES, errors_of(outage, target_kw)
        assert to_outage_fine is not None and to_outage_fine <= FINE_CYCLES, errors_of(
            outage, target_kw
        )
        for asset_id in silent:
            assert r.fleet.availability(asset_id) in (Availability.STALE, Availability.DEGRADED)
        assert outage[-1].stale == len(silent)

        for asset_id in silent:
            r.sim.restore(asset_id)
        back = await manual_cycles(r, 24)
        to_back = settled_after(back, target_kw, OUTAGE_BAND_KW)
        to_back_fine = settled_after(back, target_kw, FINE_BAND_KW)
        assert to_back is not None and to_back <= RECOVERY_CYCLES, errors_of(back, target_kw)
        assert to_back_fine is not None and to_back_fine <= FINE_CYCLES, errors_of(back, target_kw)
        assert back[-1].stale == 0
        assert all(r.fleet.availability(a) is not Availability.STALE for a in silent)
    assert_no_violation(r.guard)
    print(
        f"\n10% silent: step settled (±{STEP_BAND_KW:.0f} kW) in {to_step} cycles; outage "
        f"within ±{OUTAGE_BAND_KW:.0f} kW after {to_outage}, ±{FINE_BAND_KW:.0f} kW after "
        f"{to_outage_fine} (errors {errors_of(outage, target_kw)}); return within "
        f"±{OUTAGE_BAND_KW:.0f} kW after {to_back}, ±{FINE_BAND_KW:.0f} kW after {to_back_fine} "
        f"(errors {errors_of(back, target_kw)}); setpoints checked {r.guard.stats.sent} "
        f"(dynamic {r.guard.stats.dynamic_checked}), violations 0"
    )


@pytest.mark.slow
async def test_flapping_fleet_keeps_the_cadence_and_the_limits() -> None:
    park = generated_park(15)
    speed = 10.0
    clock = AcceleratedClock(START, speed)
    flappers = [park.asset(a).id for a in FLAPPING]
    rng = random.Random(5)
    async with rig(park, clock) as r:
        await asyncio.sleep(3 * PERIOD_S / speed)
        target_kw = r.fleet.aggregate().power_kw + STEP_KW
        r.target(target_kw)
        first_cycle = r.controller.cycles_run
        began_clock = clock.now()
        began_wall = time.monotonic()
        # 300 s of clock time: every 4 s a random half of the flappers swaps state
        silent: set[str] = set()
        while (clock.now() - began_clock).total_seconds() < 300:
            for asset_id in rng.sample(flappers, len(flappers) // 2):
                if asset_id in silent:
                    r.sim.restore(asset_id)
                    silent.discard(asset_id)
                else:
                    r.sim.drop(asset_id)
                    silent.add(asset_id)
            await clock.sleep(4.0)
        elapsed_s = (clock.now() - began_clock).total_seconds()
        cycles = r.controller.cycles_run - first_cycle
        wall_s = time.monotonic() - began_wall
        for asset_id in silent:
            r.sim.restore(asset_id)
        # once the flapping stops, tracking comes back within the outage band
        reports: list[CycleReport] = []
        deadline = clock.now() + timedelta(seconds=40 * PERIOD_S)
        while clock.now() < deadline:
            done = r.controller.cycles_run
            reports.append(await asyncio.wait_for(r.controller.wait_cycle(done), 5))
        recovered = settled_after(reports, target_kw, OUTAGE_BAND_KW)
    expected = elapsed_s / PERIOD_S
    overruns = r.metrics.registry.get_sample_value("vpp_control_cycle_overruns_total") or 0.0
    degraded = r.metrics.registry.get_sample_value("vpp_assets", {"availability": "degraded"})
    print(
        f"\nflapping {len(flappers)} of {sum(1 for _ in park.iter_assets())} assets for {elapsed_s:.0f} s clock "
        f"({wall_s:.1f} s wall, x{speed:g}): {cycles} cycles for {expected:.0f} periods, "
        f"overruns {overruns:.0f}, recovered in {recovered} cycles after the flapping stopped, "
        f"setpoints checked {r.guard.stats.sent} (dynamic {r.guard.stats.dynamic_checked}), "
        f"violations {len(r.guard.stats.violations)}, degraded at the end {degraded}"
    )
    assert_no_violation(r.guard)
    # one cycle per period, give or take the extra cycle a target change triggers
    assert expected - 3 <= cycles <= expected + 3
    assert overruns == 0.0
    assert recovered is not None and recovered <= 2 * RECOVERY_CYCLES, [
        round(x.measured_kw - target_kw) for x in reports
    ]
