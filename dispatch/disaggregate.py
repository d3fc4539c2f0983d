"""Disaggregation: split an award (the park's net power per interval) over the assets.

The result is the cost-minimal feasible per-asset schedule whose summed power meets the award;
where no schedule can, the closest one, with the shortfall per interval reported. This is the
day-ahead or intraday split; the real-time control loop re-splits with `dispatch.allocate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dispatch.problem import DispatchProblem
from dispatch.series import FloatArray, Horizon
from dispatch.solve import Method, Result, SolveOptions, solve
from vpp.domain import Award

#: A shortfall below this (kW) counts as meeting the award: solver tolerance, not a miss.
MET_TOLERANCE_KW = 1e-3


@dataclass(frozen=True, slots=True)
class Disaggregation:
    """Per-asset schedule for an award, what it delivers and what it misses.

    `shortfall_kw[k]` = target − delivered where a target is set (0 where free): positive
    means the park draws less than awarded, negative more.
    """

    result: Result
    target_kw: FloatArray
    delivered_kw: FloatArray
    shortfall_kw: FloatArray

    @property
    def met(self) -> bool:
        return self.result.ok and bool(np.all(np.abs(self.shortfall_kw) <= MET_TOLERANCE_KW))


def target_from_awards(horizon: Horizon, awards: Sequence[Award]) -> FloatArray:
    """The award per interval of `horizon` (NaN where nothing was awarded).

    An award longer than the horizon's intervals holds over each interval it covers.
    """
    target = np.full(horizon.intervals, np.nan)
    starts = horizon.starts()
    for award in awards:
        for k, start in enumerate(starts):
            if award.interval.start <= start < award.interval.end:
                target[k] = award.power_kw
    return target


def disaggregate(
    problem: DispatchProblem, target_kw: FloatArray, options: SolveOptions | None = None
) -> Disaggregation:
    """The cheapest schedule whose park power meets `target_kw` (NaN = free interval).

    Missing the target is a soft constraint priced above every other cost, so a feasible
    target is met exactly and an infeasible one as closely as the assets allow.
    """
    target = np.asarray(target_kw, dtype=np.float64)
    if target.shape != (problem.intervals,):
        raise ValueError(f"target needs {problem.intervals} values, got {target.size}")
    options = options or SolveOptions()
    # The target couples every asset at once, so it is solved as one model.
    monolithic = SolveOptions(
        time_limit_s=options.time_limit_s,
        mip_gap=options.mip_gap,
        backend=options.backend,
        method=Method.MONOLITHIC,
        diagnose=options.diagnose,
        threads=options.threads,
    )
    result = solve(problem.with_target(target), monolithic)
    if result.schedule is None:
        delivered = np.full(problem.intervals, np.nan)
        shortfall = np.where(np.isfinite(target), target, 0.0)
    else:
        delivered = result.schedule.park_kw + problem.enterprise_base_kw.sum(axis=0)
        shortfall = np.where(np.isfinite(target), target - delivered, 0.0)
    return Disaggregation(result, target, delivered, shortfall)
