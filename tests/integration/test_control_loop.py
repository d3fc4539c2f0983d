"""The control loop follows a stepped target with simulated assets, 10% of which drop out.

A generated park of 100 simulated assets (batteries, PV, process loads, cold stores, EV
depots, generators) runs on a manual clock with the simulator's physics, response lag and
under-delivery. The target steps up, then down; then 10 % of the assets drop out (no
telemetry, no acks). The test states the band the tracking error must return to and within
how many cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from adapters.sim import SimAdapter
from tests.parks import generated_park
from vpp.clock import ManualClock
from vpp.config.schema import Park
from vpp.control import Controller, CycleReport
from vpp.domain import Availability
from vpp.fleet import Fleet
from vpp.metrics import Metrics
from vpp.targets import TargetBook

pytestmark = pytest.mark.integration

# Wednesday 2024-06-05 10:00 in Shanghai: the sun is up.
START = datetime(2024, 6, 5, 2, 0, tzinfo=UTC)
PERIOD_S = 2.0
STEP_KW = 2000.0
# The stated figures. Devices answer with a 2 s first-order lag and report every 2 s, so a
# step cannot settle faster than about five cycles. After a step the error must be back
# within 3 % of the step within 8 cycles (16 s) and stay there.
STEP_BAND_FRACTION = 0.03
RECOVERY_CYCLES = 8
# When 10 % of the assets drop out, their last readings go stale after 6 s and the loop
# re-dispatches their share: back within 50 kW (2.5 % of the step) within 8 cycles.
DROPOUT_BAND_KW = 50.0
DROPOUT_RECOVERY_CYCLES = 8


@dataclass
class Run:
    clock: ManualClock
    sim: SimAdapter
    fleet: Fleet
    targets: TargetBook
    controller: Controller

    async def cycles(self, count: int) -> list[CycleReport]:
        reports = []
        for _ in range(count):
            done = self.controller.cycles_run
            await self.clock.advance(PERIOD_S)
            reports.append(await asyncio.wait_for(self.controller.wait_cycle(done), 5))
            await asyncio.wait_for(self.controller.wait_idle(), 5)
        return reports

    async def target(self, power_kw: float) -> None:
        """Set the target; the loop acts on it at once."""
        done = self.controller.cycles_run
        now = self.clock.now()
        self.targets.set_override(power_kw, now, now + timedelta(hours=1))
        await asyncio.wait_for(self.controller.wait_cycle(done), 5)
        await asyncio.wait_for(self.controller.wait_idle(), 5)


@contextlib.asynccontextmanager
async def running(park: Park) -> AsyncIterator[Run]:
    clock = ManualClock(START)
    metrics = Metrics()
    fleet = Fleet(park, clock, metrics=metrics)
    sim = SimAdapter.from_park(park, clock, seed=7, cloudiness=0.0)
    targets = TargetBook()
    controller = Controller(park, fleet, dict.fromkeys(sim.asset_ids, sim), clock, metrics, targets)
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(sim.run(fleet), name="sim"),
            group.create_task(controller.run(), name="control"),
        ]
        await asyncio.sleep(0)
        try:
            yield Run(clock, sim, fleet, targets, controller)
        finally:
            for task in tasks:
                task.cancel()


def first_settled(reports: list[CycleReport], target_kw: float, band_kw: float) -> int | None:
    """Index of the first report from which every error stays within the band."""
    for k in range(len(reports)):
        if all(abs(r.measured_kw - target_kw) <= band_kw for r in reports[k:]):
            return k
    return None


async def test_follows_stepped_target_and_recovers_from_a_10_percent_dropout() -> None:
    park = generated_park(10, control_period_s=PERIOD_S)
    async with running(park) as run:
        await run.cycles(3)  # telemetry flows; no target yet
        start_kw = run.fleet.aggregate().power_kw

        previous = start_kw
        for target_kw in (start_kw + STEP_KW, start_kw - STEP_KW):
            await run.target(target_kw)
            reports = await run.cycles(16)
            errors = [round(r.measured_kw - target_kw) for r in reports]
            band = STEP_BAND_FRACTION * abs(target_kw - previous)
            settled = first_settled(reports, target_kw, band)
            assert settled is not None, errors
            assert settled <= RECOVERY_CYCLES, errors
            assert reports[-1].error_ratio is not None
            previous = target_kw

        # 10 % of the assets drop out mid-run: half of them batteries carrying the target.
        dropped = [f"e{e}-bat0" for e in range(5)] + [f"e{e}-ev" for e in range(5, 10)]
        for asset_id in dropped:
            run.sim.drop(asset_id)
        reports = await run.cycles(20)
        errors = [round(r.measured_kw - target_kw) for r in reports]
        settled = first_settled(reports, target_kw, DROPOUT_BAND_KW)
        assert settled is not None, errors
        assert settled <= DROPOUT_RECOVERY_CYCLES, errors
        for asset_id in dropped:
            assert run.fleet.availability(asset_id) in (Availability.STALE, Availability.DEGRADED)
        # Nothing is sent to an asset whose telemetry went stale (default fallback: release).
        last = reports[-1]
        assert last.stale == len(dropped)
        assert last.controllable <= 100 - len(dropped)
        # Their last setpoints have expired on the devices: they are back on local control.
        still_commanded = [a for a in dropped if run.sim.models[a].setpoint is not None]
        assert still_commanded == []
