"""The planner's day-ahead submission: the spot market first, then only the DR capacity its
award leaves, so that a DR call on top of the award can be delivered."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from dispatch.series import FloatArray
from market.formats import AwardSet, Submission
from vpp.clock import ManualClock
from vpp.config import load_park
from vpp.fleet import Fleet
from vpp.metrics import Metrics
from vpp.planner import DayPlan, Planner, PriceSource, day_horizon, plan_day
from vpp.state import EngineState
from vpp.targets import TargetBook

ROOT = Path(__file__).resolve().parents[3]
DAY = date(2026, 11, 25)  # a day whose price peak draws a DR call over the spot award
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # before the gates close


def overcommitted_kw(
    plan: DayPlan, awarded: FloatArray, reductions: dict[int, float], needed: int
) -> float:
    """The most, over the `needed` intervals an offer must be held for from its start, by
    which the award's own reduction below the baseline plus the offered DR reduction exceeds
    the reduction the park can hold from there for that long (0 when every offer fits
    beside the award)."""
    held = plan.envelope.park_held_kw(needed, up=False)
    baseline = np.asarray(plan.envelope.park.baseline_kw)
    worst = 0.0
    for k, reduction in reductions.items():
        for j in range(k, min(k + needed, plan.horizon.intervals)):
            asked = max(baseline[j] - awarded[j], 0.0) + reduction
            worst = max(worst, asked - float(held[j]))
    return worst


async def test_dr_offers_leave_room_for_the_spot_award() -> None:
    loaded = load_park(ROOT / "config/park.yaml", ROOT / "config/markets")
    dr = loaded.dr
    assert dr is not None
    horizon = day_horizon(DAY, loaded)
    needed = math.ceil(dr.min_duration_min / (horizon.hours * 60))
    prices = PriceSource(seed=0)
    plan = plan_day(loaded, horizon, prices.on(horizon))
    assert plan.dr_offers

    clock = ManualClock(NOW)
    metrics = Metrics()
    state = EngineState(loaded.park, str(loaded.path))
    sent: list[Submission] = []
    cleared: list[AwardSet] = []
    planner: Planner

    def market(submission: Submission) -> AwardSet:
        sent.append(submission)
        cleared.append(planner.simulated_market(submission))
        return cleared[-1]

    planner = Planner(
        loaded,
        clock,
        Fleet(loaded.park, clock, metrics=metrics),
        TargetBook(),
        state,
        metrics,
        prices,
        market=market,
    )
    planner.commit(plan, DAY, day_ahead=True)

    assert [s.market for s in sent] == [loaded.spot.id, dr.id]
    index = {start: k for k, start in enumerate(horizon.starts())}
    assert plan.result.schedule is not None
    awarded = np.array(plan.result.schedule.park_kw, dtype=float)
    for award in cleared[0].awards:
        awarded[index[award.interval.start]] = award.power_kw
    offered = {index[o.interval.start]: o.reduction_kw for o in sent[1].dr_offers}
    planned = {index[o.interval.start]: o.reduction_kw for o in plan.dr_offers}
    # The plan's own offers would ask for more than the park can hold beside the award ...
    assert overcommitted_kw(plan, awarded, planned, needed) > 1000.0
    # ... the ones sent never do, and they are what the API shows.
    assert overcommitted_kw(plan, awarded, offered, needed) <= 1e-3
    assert 0 < len(offered) <= len(planned)
    assert state.bids is not None
    assert list(state.bids.dr_offers) == list(sent[1].dr_offers)
